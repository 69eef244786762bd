// The virtualenv cache with real interpreters, real pip and no package index: wheels (and one hostile
// sdist) are built here with Python's zipfile and installed with `--no-index --find-links`. Covers the
// build and its log lines, the cache, one build for concurrent callers, pip's error on a failure that
// leaves nothing behind, no package code run on the plane, and the Python host running on the built
// virtualenv bound read-only at its own path. Debian's /usr/bin/python3 (python3-venv installed).

import { execFile, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseModelConfig } from "../core/model-config.ts";
import type { PythonInterpreter } from "../core/python.ts";
import { DEBIAN_PYTHON, predict, type Target, untilReady } from "../runtime/python/testing.ts";
import { probePython, TRUSS_HOST_SCRIPT } from "../runtime/python.ts";
import { type LogLine, waitFor, writePackage } from "../runtime/testing.ts";
import { type BuildLogLine, packageRequirements, pipErrors, VirtualenvCache } from "./python-env.ts";

const run = promisify(execFile);

const WHEEL = `
import base64, hashlib, os, sys, zipfile
name, version, module, source, out = sys.argv[1:6]
dist = f"{name}-{version}.dist-info"
files = {
    f"{module}.py": source.encode(),
    f"{dist}/METADATA": f"Metadata-Version: 2.1\\nName: {name}\\nVersion: {version}\\n".encode(),
    f"{dist}/WHEEL": b"Wheel-Version: 1.0\\nGenerator: meridian-test\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n",
}
def digest(data):
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
record = "".join(f"{p},{digest(b)},{len(b)}\\n" for p, b in files.items()) + f"{dist}/RECORD,,\\n"
with zipfile.ZipFile(os.path.join(out, f"{name}-{version}-py3-none-any.whl"), "w") as z:
    for p, b in files.items():
        z.writestr(p, b)
    z.writestr(f"{dist}/RECORD", record)
`;

// An sdist whose setup.py leaves a mark if it ever runs: what a hostile package would do at build time.
const SDIST = `
import io, os, sys, tarfile
out, marker = sys.argv[1:3]
setup = f"open({marker!r}, 'w').write('setup.py ran on the plane')\\nfrom setuptools import setup\\nsetup(name='meridian_evil', version='1.0')\\n"
info = "Metadata-Version: 2.1\\nName: meridian_evil\\nVersion: 1.0\\n"
with tarfile.open(os.path.join(out, "meridian_evil-1.0.tar.gz"), "w:gz") as t:
    for name, text in (("setup.py", setup), ("PKG-INFO", info)):
        data = text.encode()
        member = tarfile.TarInfo(f"meridian_evil-1.0/{name}")
        member.size = len(data)
        t.addfile(member, io.BytesIO(data))
`;

let work: string;
let wheels: string;
let python: PythonInterpreter;
let marker: string;

function cache(root: string, o: { allowSourceBuilds?: boolean } = {}): VirtualenvCache {
  return new VirtualenvCache({
    root,
    indexArgs: ["--no-index", "--find-links", wheels],
    // pip reads no configuration of this machine, and has a private HOME.
    env: { PATH: process.env["PATH"], HOME: work, PIP_CONFIG_FILE: "/dev/null" },
    ...o,
  });
}

function collect(): { lines: BuildLogLine[]; onLine: (l: BuildLogLine) => void } {
  const lines: BuildLogLine[] = [];
  return { lines, onLine: (l) => lines.push(l) };
}

beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), "meridian-venvs-"));
  wheels = path.join(work, "wheels");
  await mkdir(wheels);
  await run(DEBIAN_PYTHON, [
    "-c",
    WHEEL,
    "meridian_greeting",
    "1.0",
    "meridian_greeting",
    'WORD = "bonjour"\n',
    wheels,
  ]);
  await run(DEBIAN_PYTHON, ["-c", WHEEL, "meridian_other", "2.0", "meridian_other", "VALUE = 2\n", wheels]);
  marker = path.join(work, "setup-ran");
  await run(DEBIAN_PYTHON, ["-c", SDIST, wheels, marker]);
  const probed = await probePython(DEBIAN_PYTHON);
  if (!probed.ok) throw new Error(probed.reason);
  python = probed.interpreter;
  expect(python.canCreateVenv).toBe(true);
});

afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

describe("VirtualenvCache", () => {
  let root: string;
  let built: Awaited<ReturnType<VirtualenvCache["ensure"]>>;

  beforeAll(async () => {
    root = path.join(work, "cache-a");
  });

  it("builds a virtualenv for a requirement set from a local wheel directory, logging pip line by line", async () => {
    const { lines, onLine } = collect();
    built = await cache(root).ensure(python, ["meridian-greeting==1.0"], onLine);
    expect(built).toMatchObject({ ok: true, built: true });
    if (!built.ok) return;
    expect(built.dir).toBe(path.join(root, built.key!.slice(0, 32)));
    expect(built.python).toBe(path.join(built.dir!, "bin", "python"));
    const { stdout } = await run(built.python, [
      "-c",
      "import meridian_greeting, sys; print(meridian_greeting.WORD, sys.prefix)",
    ]);
    expect(stdout.trim()).toBe(`bonjour ${built.dir}`);
    expect(lines[0]).toEqual({
      stream: "build",
      line: `creating a virtualenv with ${DEBIAN_PYTHON} (Python ${python.version.join(".")})`,
    });
    expect(
      lines.some(
        (l) => l.stream === "stdout" && /Successfully installed meridian-greeting-1\.0/.test(l.line),
      ),
    ).toBe(true);
    expect(lines.at(-1)).toEqual({ stream: "build", line: `virtualenv ready: ${built.dir}` });
    // Only the finished virtualenv is left: no build directory.
    expect(await readdir(root)).toEqual([path.basename(built.dir!)]);
    // Its scripts name the directory it lives in, not the one it was built in.
    const shebang = (await readFile(path.join(built.dir!, "bin", "pip"), "utf8")).split("\n")[0]!;
    expect([`#!${built.dir}/bin/python`, `#!${built.dir}/bin/python3`]).toContain(shebang);
  }, 180_000);

  it("reuses the cached virtualenv for the same set on the same interpreter", async () => {
    const { lines, onLine } = collect();
    const again = await cache(root).ensure(python, ["meridian-greeting==1.0"], onLine);
    expect(again).toEqual({ ...built, built: false });
    expect(lines).toEqual([
      { stream: "build", line: `using the cached virtualenv ${built.ok ? built.dir : ""}` },
    ]);
    const other = cache(root);
    expect(other.key(python, ["meridian-greeting==1.0"])).not.toBe(other.key(python, ["meridian-greeting"]));
    expect(other.key(python, ["a"])).not.toBe(
      other.key({ ...python, realpath: "/usr/bin/python3.12" }, ["a"]),
    );
  });

  it("sweeps what a build cut short left (a .build-* work directory, a .stale-* one), never a finished virtualenv", async () => {
    const half = path.join(root, ".build-0123456789ab-x1y2z3");
    await mkdir(path.join(half, "venv", "bin"), { recursive: true });
    // A half-made virtualenv looks usable to nothing: it has no marker and is not at a key's name.
    await writeFile(path.join(half, "venv", "bin", "python"), "");
    await mkdir(path.join(root, ".stale-abcdef"), { recursive: true });
    await cache(root).sweep();
    expect(await readdir(root)).toEqual([path.basename(built.ok ? built.dir! : "")]);
    const { lines, onLine } = collect();
    expect(await cache(root).ensure(python, ["meridian-greeting==1.0"], onLine)).toMatchObject({
      ok: true,
      built: false,
    });
    expect(lines).toHaveLength(1);
  });

  it("needs no virtualenv for a package without requirements", async () => {
    expect(await cache(root).ensure(python, [])).toEqual({
      ok: true,
      python: DEBIAN_PYTHON,
      dir: null,
      key: null,
      built: false,
    });
  });

  it("builds once when several deployments ask for the same set at once", async () => {
    const shared = cache(path.join(work, "cache-b"));
    const first = collect();
    const second = collect();
    const [a, b] = await Promise.all([
      shared.ensure(python, ["meridian-other==2.0"], first.onLine),
      shared.ensure(python, ["meridian-other==2.0"], second.onLine),
    ]);
    expect(a).toMatchObject({ ok: true, built: true });
    expect(b).toEqual(a);
    const creations = [...first.lines, ...second.lines].filter((l) =>
      l.line.startsWith("creating a virtualenv"),
    );
    expect(creations).toHaveLength(1);
    expect(second.lines[0]?.line).toMatch(/^waiting for the build of the same requirements/);
  }, 180_000);

  it("fails with pip's error when a requirement cannot be found, and leaves nothing behind", async () => {
    const failing = path.join(work, "cache-c");
    const { lines, onLine } = collect();
    const outcome = await cache(failing).ensure(
      python,
      ["meridian-greeting==1.0", "meridian-missing>=1"],
      onLine,
    );
    expect(outcome.ok).toBe(false);
    if (outcome.ok) return;
    expect(outcome.message).toMatch(/^pip could not install the requirements \(exit code 1\):\n/);
    expect(outcome.message).toContain(
      "ERROR: Could not find a version that satisfies the requirement meridian-missing>=1",
    );
    expect(outcome.message).toContain("ERROR: No matching distribution found for meridian-missing>=1");
    expect(lines.some((l) => l.stream === "stderr" && l.line.startsWith("ERROR:"))).toBe(true);
    expect(await readdir(failing)).toEqual([]);
  }, 180_000);

  it("never runs a package's setup.py on the plane: without a wheel the requirement fails", async () => {
    const outcome = await cache(path.join(work, "cache-d")).ensure(python, ["meridian-evil==1.0"]);
    expect(outcome).toMatchObject({ ok: false, message: expect.stringContaining("meridian-evil==1.0") });
    expect(existsSync(marker)).toBe(false);
  }, 180_000);
});

describe("the Python host on a built virtualenv", () => {
  it("imports the requirement from the virtualenv bound read-only at its own path, in a sandbox", async () => {
    const venvs = path.join(work, "cache-e");
    const outcome = await cache(venvs).ensure(python, ["meridian-greeting==1.0"]);
    if (!outcome.ok) throw new Error(outcome.message);
    const dir = await writePackage({
      "config.yaml": "model_name: with-requirements\nrequirements:\n  - meridian-greeting==1.0\n",
      "model/model.py": `
import sys
import meridian_greeting

class Model:
    def predict(self, model_input):
        return {"word": meridian_greeting.WORD, "prefix": sys.prefix}
`,
    });
    const sockets = path.join(work, "sockets");
    await mkdir(sockets, { recursive: true });
    const socketPath = path.join(sockets, "venv.sock");
    const child = spawn(
      "bwrap",
      [
        // /tmp first: the binds below may lie under it (a checkout or a cache in /tmp).
        ...["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"],
        ...["/usr", "/bin", "/lib", "/lib64", "/etc"].flatMap((p) => ["--ro-bind-try", p, p]),
        ...["--ro-bind", path.dirname(TRUSS_HOST_SCRIPT), path.dirname(TRUSS_HOST_SCRIPT)],
        ...["--ro-bind", outcome.dir!, outcome.dir!],
        ...["--ro-bind", dir, "/app"],
        ...["--bind", sockets, sockets],
        ...["--unshare-all", "--die-with-parent", "--clearenv", "--setenv", "HOME", "/tmp"],
        ...[outcome.python, "-B", "-s", TRUSS_HOST_SCRIPT, "/app", "--listen", `unix:${socketPath}`],
      ],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    const lines: LogLine[] = [];
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (t: string) => {
      for (const l of t.split("\n")) if (l.startsWith("{")) lines.push(JSON.parse(l) as LogLine);
    });
    child.stderr.setEncoding("utf8").on("data", (t: string) => {
      stderr += t;
    });
    try {
      await waitFor(() => {
        if (child.exitCode !== null) throw new Error(`the sandboxed host exited: ${stderr}`);
        return lines.find((l) => l.msg === "listening");
      }, "listening");
      const target: Target = { socketPath };
      await untilReady(target);
      expect((await predict(target, {})).json()).toEqual({ word: "bonjour", prefix: outcome.dir });
      expect(lines.find((l) => l.msg === "loading model")).toMatchObject({ executable: outcome.python });
    } finally {
      child.kill("SIGKILL");
    }
  }, 180_000);
});

describe("packageRequirements", () => {
  const python = (text: string) => {
    const parsed = parseModelConfig(text);
    if (!parsed.ok) throw new Error(parsed.message);
    return parsed.config.python;
  };

  it("takes the requirements list, or reads and normalises requirements_file", async () => {
    const dir = await writePackage({
      "reqs/requirements.txt": "Numpy==1.26 \\\n  ; python_version>'3'\n# c\ntorch\n",
    });
    expect(await packageRequirements(dir, python("requirements: [b, a]\n"))).toEqual({
      ok: true,
      requirements: ["a", "b"],
    });
    expect(await packageRequirements(dir, python("requirements_file: reqs/requirements.txt\n"))).toEqual({
      ok: true,
      requirements: ["numpy==1.26 ; python_version>'3'", "torch"],
    });
    expect(await packageRequirements(dir, python(""))).toEqual({ ok: true, requirements: [] });
  });

  it("refuses a requirements_file that is missing, or a symlink out of the package", async () => {
    const dir = await writePackage({ "model/model.py": "" });
    expect(await packageRequirements(dir, python("requirements_file: nope.txt\n"))).toEqual({
      ok: false,
      message: "requirements_file: the package has no nope.txt.",
    });
    await symlink("/etc/passwd", path.join(dir, "requirements.txt"));
    expect(await packageRequirements(dir, python("requirements_file: requirements.txt\n"))).toEqual({
      ok: false,
      message: "requirements_file: requirements.txt points outside the package.",
    });
    await writeFile(path.join(dir, "bad.txt"), "-e /srv/checkout\n");
    expect(await packageRequirements(dir, python("requirements_file: bad.txt\n"))).toMatchObject({
      ok: false,
      message: expect.stringMatching(/^bad\.txt line 1: the pip option -e is not allowed/),
    });
  });
});

describe("pipErrors", () => {
  it("keeps pip's ERROR lines, else the last lines it wrote", () => {
    expect(pipErrors(["Collecting x", "ERROR: one", "  detail", "ERROR: two"], [])).toEqual([
      "ERROR: one",
      "ERROR: two",
    ]);
    expect(pipErrors(["Traceback", "OSError: disk full", ""], ["Collecting x"])).toEqual([
      "Traceback",
      "OSError: disk full",
    ]);
    expect(pipErrors([], ["only stdout"])).toEqual(["only stdout"]);
  });
});
