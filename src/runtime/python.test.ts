// Interpreter discovery on this machine: Debian's /usr/bin/python3 (3.11.x, python3-venv installed) and
// whatever pyenv has under $HOME/.pyenv/versions (the image's `python3` is pyenv's 3.11.7); each probed
// for real. Then the choice among what was found, for the python_version values truss packages use.

import { existsSync, readdirSync } from "node:fs";
import { homedir } from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { choosePython } from "../core/python.ts";
import { discoverPythons, probePython, pythonCandidates, TRUSS_HOST_SCRIPT } from "./python.ts";

const HOME = homedir();
const PYENV_VERSIONS = path.join(HOME, ".pyenv", "versions");
const pyenv = existsSync(PYENV_VERSIONS)
  ? readdirSync(PYENV_VERSIONS).filter((v) => existsSync(path.join(PYENV_VERSIONS, v, "bin", "python3")))
  : [];

describe("discoverPythons", () => {
  it("finds Debian's python3 once (python3 and python3.11 are one interpreter), able to build virtualenvs", async () => {
    const { interpreters } = await discoverPythons({ searchDirs: ["/usr/bin"], pyenvRoot: null });
    const debian = interpreters.filter((i) => i.realpath.startsWith("/usr/bin/python3"));
    expect(debian).toHaveLength(1);
    expect(debian[0]).toMatchObject({
      path: "/usr/bin/python3",
      realpath: expect.stringMatching(/^\/usr\/bin\/python3\.\d+$/),
      version: [3, expect.any(Number), expect.any(Number)],
      implementation: "cpython",
      canCreateVenv: true,
      prefix: "/usr",
    });
    expect(TRUSS_HOST_SCRIPT).toMatch(/src\/runtime\/python\/truss_host\.py$/);
  });

  it("finds every pyenv version with its own prefix, and puts configured interpreters first", async () => {
    const configured = pyenv.length > 0 ? [path.join(PYENV_VERSIONS, pyenv[0]!, "bin", "python3")] : [];
    const { interpreters, skipped } = await discoverPythons({ configured, home: HOME });
    if (configured.length > 0) expect(interpreters[0]?.path).toBe(configured[0]);
    for (const version of pyenv) {
      const found = interpreters.find((i) => i.path === path.join(PYENV_VERSIONS, version, "bin", "python3"));
      // A Python 2 tree has no python3; anything else pyenv holds is a Python 3 found with its version.
      expect(found, version).toMatchObject({ prefix: path.join(PYENV_VERSIONS, version) });
      expect(found?.version.join("."), version).toBe(version);
    }
    expect(new Set(interpreters.map((i) => i.realpath)).size).toBe(interpreters.length);
    expect(skipped).toEqual([]);
  });

  it("skips what does not answer as a Python 3, with the reason", async () => {
    const { interpreters, skipped } = await discoverPythons({
      configured: ["/bin/sh", "/nonexistent/python3"],
      searchDirs: [],
      pyenvRoot: null,
    });
    expect(interpreters).toEqual([]);
    expect(skipped).toEqual([{ path: "/bin/sh", reason: expect.stringMatching(/^the probe failed: /) }]);
    expect(await pythonCandidates({ configured: ["/nonexistent/python3"], searchDirs: [] })).toEqual([]);
    expect(await probePython("/bin/true")).toEqual({ ok: false, reason: "the probe did not answer JSON" });
  });
});

describe("choosing among the interpreters found here", () => {
  it("fits each python_version present, refuses the others naming what is present", async () => {
    const { interpreters } = await discoverPythons({ home: HOME });
    const minors = new Set(interpreters.map((i) => i.version[1]));
    for (let minor = 8; minor <= 14; minor++) {
      const choice = choosePython(`py3${minor}`, interpreters, { venv: false });
      if (minors.has(minor)) {
        expect(choice, `py3${minor}`).toMatchObject({
          ok: true,
          interpreter: { version: [3, minor, expect.any(Number)] },
        });
        if (!choice.ok) continue;
        const newest = Math.max(
          ...interpreters.filter((i) => i.version[1] === minor).map((i) => i.version[2]),
        );
        expect(choice.interpreter.version[2]).toBe(newest);
      } else {
        expect(choice, `py3${minor}`).toMatchObject({
          ok: false,
          message: expect.stringContaining(`the package needs Python 3.${minor} (py3${minor}); present: `),
        });
      }
    }
  });
});
