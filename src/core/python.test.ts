// Python for truss packages, the pure parts: python_version, the choice of interpreter (tables of the
// interpreters a plane may have), requirements normalised into a cache key's set (and the lines refused
// because they would make pip read the plane's files), and the host's command line.

import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  choosePython,
  normalizeRequirements,
  type PythonInterpreter,
  parsePythonVersion,
  requirementsFileLines,
  trussHostCommand,
} from "./python.ts";

function interpreter(
  path: string,
  version: [number, number, number],
  o: Partial<PythonInterpreter> = {},
): PythonInterpreter {
  return {
    path,
    realpath: path,
    version,
    implementation: "cpython",
    canCreateVenv: true,
    prefix: "/usr",
    ...o,
  };
}

const DEBIAN = interpreter("/usr/bin/python3", [3, 11, 2]);
const PYENV_311 = interpreter("/root/.pyenv/versions/3.11.7/bin/python3", [3, 11, 7], {
  prefix: "/root/.pyenv/versions/3.11.7",
});
const PYENV_312 = interpreter("/root/.pyenv/versions/3.12.1/bin/python3", [3, 12, 1]);
const PYENV_37 = interpreter("/root/.pyenv/versions/3.7.16/bin/python3", [3, 7, 16]);
const NO_VENV_310 = interpreter("/usr/local/bin/python3.10", [3, 10, 4], { canCreateVenv: false });

describe("parsePythonVersion", () => {
  it.each([
    ["py39", 9],
    ["py310", 10],
    ["py311", 11],
    ["py313", 13],
  ])("reads %s", (text, minor) => {
    expect(parsePythonVersion(text)).toEqual({ ok: true, version: { major: 3, minor } });
  });

  it.each(["3.11", "py3", "py2", "python3.11", "py3111", "PY311", " py311", ""])("refuses %j", (text) => {
    expect(parsePythonVersion(text)).toMatchObject({
      ok: false,
      message: expect.stringMatching(/such as py311/),
    });
  });
});

describe("choosePython", () => {
  const found = [DEBIAN, PYENV_312, PYENV_311, PYENV_37, NO_VENV_310];

  it("takes the same minor version, the newest patch release of it", () => {
    expect(choosePython("py311", found, { venv: false })).toEqual({ ok: true, interpreter: PYENV_311 });
    expect(choosePython("py312", found, { venv: true })).toEqual({ ok: true, interpreter: PYENV_312 });
  });

  it("prefers the earlier of equal versions (configured interpreters come first)", () => {
    const twin = interpreter("/opt/python/bin/python3.11", [3, 11, 7]);
    expect(choosePython("py311", [twin, PYENV_311], { venv: false })).toEqual({
      ok: true,
      interpreter: twin,
    });
  });

  it("takes the first usable interpreter when the package names no version", () => {
    expect(choosePython(null, [PYENV_37, DEBIAN, PYENV_312], { venv: false })).toEqual({
      ok: true,
      interpreter: DEBIAN,
    });
  });

  it("never runs a package on another minor version, and names what is there", () => {
    const choice = choosePython("py39", found, { venv: false });
    expect(choice.ok).toBe(false);
    if (choice.ok) return;
    expect(choice.message).toBe(
      "No interpreter on this plane fits: the package needs Python 3.9 (py39); present: 3.11.2 (/usr/bin/python3), 3.12.1 (/root/.pyenv/versions/3.12.1/bin/python3), 3.11.7 (/root/.pyenv/versions/3.11.7/bin/python3), 3.7.16 (/root/.pyenv/versions/3.7.16/bin/python3), 3.10.4 (/usr/local/bin/python3.10).",
    );
    expect(choice.wanted).toBe("py39");
    expect(choice.present).toHaveLength(5);
    expect(choosePython("py311", [], { venv: false })).toMatchObject({
      ok: false,
      message: expect.stringMatching(/present: none\.$/),
    });
  });

  it("with requirements, only takes an interpreter that can build a virtualenv, and says how to get one", () => {
    expect(choosePython("py310", found, { venv: false })).toEqual({ ok: true, interpreter: NO_VENV_310 });
    expect(choosePython("py310", found, { venv: true })).toMatchObject({
      ok: false,
      message: expect.stringMatching(
        /3\.10\.4 \(\/usr\/local\/bin\/python3\.10\) lacks venv\/ensurepip \(on Debian, install python3-venv\)/,
      ),
    });
  });

  it("refuses versions older than the host runs on, and ones it cannot read", () => {
    expect(choosePython("py37", found, { venv: false })).toMatchObject({
      ok: false,
      message: expect.stringMatching(/older than Python 3\.8/),
    });
    expect(choosePython(null, [PYENV_37], { venv: false })).toMatchObject({ ok: false });
    expect(choosePython("3.11", found, { venv: false })).toMatchObject({
      ok: false,
      message: expect.stringMatching(/^python_version must name a Python 3 version/),
    });
  });
});

describe("normalizeRequirements", () => {
  it("drops comments and blanks, collapses spaces, normalises names (PEP 503), sorts, dedupes; options first", () => {
    expect(
      normalizeRequirements(
        [
          "# the model's dependencies",
          "",
          "Torch_Vision  >=  0.15   # vision",
          "numpy==1.26.*",
          "torch.vision>=0.15",
          "  --extra-index-url   https://download.pytorch.org/whl/cu118",
          "requests[socks]>=2; python_version >= '3.8'",
          "pkg @ https://example.com/pkg-1.0-py3-none-any.whl",
          "https://example.com/other-1.0-py3-none-any.whl",
          "numpy==1.26.*",
          "--pre",
        ],
        "requirements",
      ),
    ).toEqual({
      ok: true,
      requirements: [
        "--extra-index-url https://download.pytorch.org/whl/cu118",
        "--pre",
        "https://example.com/other-1.0-py3-none-any.whl",
        "numpy==1.26.*",
        "pkg @ https://example.com/pkg-1.0-py3-none-any.whl",
        "requests[socks]>=2; python_version >= '3.8'",
        "torch-vision >= 0.15",
        "torch-vision>=0.15",
      ],
    });
  });

  it.each([
    ["-r other.txt", /the pip option -r is not allowed/],
    ["--requirement=/etc/passwd", /--requirement is not allowed/],
    ["-c constraints.txt", /-c is not allowed/],
    ["-e .", /-e is not allowed/],
    ["--editable=git+https://h/x", /--editable is not allowed/],
    ["--find-links /srv/wheels", /--find-links needs an http\(s\) URL/],
    ["-f file:///srv/wheels", /-f needs an http\(s\) URL/],
    ["--index-url", /--index-url needs an http\(s\) URL/],
    ["--pre now", /--pre takes no value/],
    ["./local-package", /local paths are not allowed/],
    ["../up/pkg", /local paths are not allowed/],
    ["/abs/pkg.whl", /local paths are not allowed/],
    ["~/pkg", /local paths are not allowed/],
    ["file:///etc/passwd", /local paths are not allowed/],
    ["pkg @ file:///srv/pkg.whl", /direct reference must be an http\(s\) URL/],
    ["git+ssh://git@h/x.git", /only http\(s\) URLs/],
    ["!!!", /not a requirement/],
    [`a${"b".repeat(1000)}`, /longer than 1000 characters/],
  ])("refuses %j", (line, message) => {
    const outcome = normalizeRequirements(["numpy", line], "requirements.txt");
    expect(outcome).toMatchObject({ ok: false, message: expect.stringMatching(/^requirements\.txt line 2/) });
    if (!outcome.ok) expect(outcome.message).toMatch(message);
  });

  it("refuses more than 1000 requirements", () => {
    const many = Array.from({ length: 1001 }, (_, i) => `pkg${i}`);
    expect(normalizeRequirements(many, "requirements")).toMatchObject({
      ok: false,
      message: expect.stringMatching(/more than 1000/),
    });
  });

  it("is idempotent, and order-insensitive for requirements (property)", () => {
    const name = fc.stringMatching(/^[A-Za-z][A-Za-z0-9._-]{0,10}[A-Za-z0-9]$/);
    const spec = fc.constantFrom("", "==1.0", ">=2", " >= 2, <3", "[extra]", "; python_version<'3.12'");
    fc.assert(
      fc.property(fc.array(fc.tuple(name, spec), { maxLength: 12 }), (entries) => {
        const lines = entries.map(([n, s]) => n + s);
        const once = normalizeRequirements(lines, "r");
        if (!once.ok) return false;
        const twice = normalizeRequirements(once.requirements, "r");
        const reversed = normalizeRequirements([...lines].reverse(), "r");
        return (
          twice.ok &&
          reversed.ok &&
          JSON.stringify(twice.requirements) === JSON.stringify(once.requirements) &&
          JSON.stringify(reversed.requirements) === JSON.stringify(once.requirements)
        );
      }),
    );
  });
});

describe("requirementsFileLines", () => {
  it("joins backslash continuations and reads CRLF files", () => {
    expect(requirementsFileLines("numpy \\\n  ==1.26\r\ntorch\r\n\\")).toEqual(["numpy   ==1.26", "torch"]);
  });
});

describe("trussHostCommand", () => {
  it("runs the host without bytecode or a user site, with the replica's identity", () => {
    expect(
      trussHostCommand({
        python: "/venvs/abc/bin/python",
        script: "/opt/meridian/src/runtime/python/truss_host.py",
        packageDir: "/app",
        listen: "{host}:{port}",
        modelId: "abcd1234",
        deploymentId: "dep1",
        environment: "prod-eu",
        secretsDir: "/secrets",
        maxQueued: 32,
      }),
    ).toEqual({
      argv: [
        "/venvs/abc/bin/python",
        "-B",
        "-s",
        "/opt/meridian/src/runtime/python/truss_host.py",
        "/app",
        "--listen",
        "{host}:{port}",
        "--model-id",
        "abcd1234",
        "--deployment-id",
        "dep1",
        "--environment",
        "prod-eu",
        "--secrets-dir",
        "/secrets",
        "--max-queued",
        "32",
      ],
      env: { PYTHONDONTWRITEBYTECODE: "1", PYTHONUNBUFFERED: "1" },
    });
    expect(
      trussHostCommand({
        python: "python3",
        script: "h.py",
        packageDir: "/app",
        listen: "unix:/run/m.sock",
        environment: null,
      }).argv,
    ).toEqual(["python3", "-B", "-s", "h.py", "/app", "--listen", "unix:/run/m.sock"]);
  });
});
