// The Python interpreters of a machine, as the TypeScript code sees them: where the Python host's script
// is, and which interpreters this machine has (Debian's /usr/bin/python3*, /usr/local/bin, pyenv's
// versions, and a configured list), each probed once for its version and whether it can build a
// virtualenv. Shared by the runtime's tests and the plane, which starts the host. Choosing among them is
// pure: choosePython in src/core/python.ts.

import { execFile } from "node:child_process";
import { readdir, realpath, stat } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";
import type { PythonInterpreter } from "../core/python.ts";

/** The Python host: `python3 TRUSS_HOST_SCRIPT DIR --listen …` (see its docstring and src/runtime/README.md). */
export const TRUSS_HOST_SCRIPT = path.resolve(
  import.meta.dirname,
  "..",
  "runtime",
  "python",
  "truss_host.py",
);

const run = promisify(execFile);

export interface DiscoveryOptions {
  /** Interpreters the operator names, tried first and so preferred among equals. */
  configured?: readonly string[];
  /** Directories searched for `python3` and `python3.N`; default /usr/local/bin then /usr/bin. */
  searchDirs?: readonly string[];
  /** pyenv's root (its `versions/<version>/bin/python3`); default `$HOME/.pyenv` when `home` is given. */
  pyenvRoot?: string | null;
  home?: string | null;
  /** How long one interpreter may take to answer its probe. Default 10 s. */
  probeTimeoutMs?: number;
}

export interface Discovery {
  interpreters: PythonInterpreter[];
  /** Candidates that exist but did not answer as a Python 3 (a Python 2, a broken pyenv shim, …). */
  skipped: { path: string; reason: string }[];
}

const NAME = /^python3(\.\d+)?$/;
// -I: the probe sees neither PYTHON* variables nor a user site; it prints one JSON line.
const PROBE = [
  "-I",
  "-c",
  [
    "import sys, json, importlib.util as u",
    "print(json.dumps({'version': list(sys.version_info[:3]), 'implementation': sys.implementation.name,",
    " 'venv': u.find_spec('venv') is not None and u.find_spec('ensurepip') is not None,",
    " 'prefix': sys.base_prefix, 'executable': sys.executable}))",
  ].join("\n"),
];

/** The candidates, in order of preference, before probing (paths that do not exist are left out). */
export async function pythonCandidates(o: DiscoveryOptions = {}): Promise<string[]> {
  const out: string[] = [...(o.configured ?? [])];
  for (const dir of o.searchDirs ?? ["/usr/local/bin", "/usr/bin"]) {
    const names = (await readdir(dir).catch(() => [] as string[])).filter((n) => NAME.test(n));
    // python3 first (the distribution's default), then the versioned names, newest first.
    names.sort((a, b) =>
      a === "python3" ? -1 : b === "python3" ? 1 : b.localeCompare(a, "en", { numeric: true }),
    );
    out.push(...names.map((n) => path.join(dir, n)));
  }
  const pyenv = o.pyenvRoot ?? (o.home ? path.join(o.home, ".pyenv") : null);
  if (pyenv) {
    const versions = await readdir(path.join(pyenv, "versions")).catch(() => [] as string[]);
    versions.sort((a, b) => b.localeCompare(a, "en", { numeric: true }));
    out.push(...versions.map((v) => path.join(pyenv, "versions", v, "bin", "python3")));
  }
  const present: string[] = [];
  for (const candidate of out) {
    if ((await stat(candidate).catch(() => null))?.isFile()) present.push(candidate);
  }
  return present;
}

/** Probes every candidate once; the same interpreter reached by two paths is listed once, first path. */
export async function discoverPythons(o: DiscoveryOptions = {}): Promise<Discovery> {
  const interpreters: PythonInterpreter[] = [];
  const skipped: Discovery["skipped"] = [];
  const seen = new Set<string>();
  for (const candidate of await pythonCandidates(o)) {
    const probed = await probePython(candidate, o.probeTimeoutMs ?? 10_000);
    if (!probed.ok) {
      skipped.push({ path: candidate, reason: probed.reason });
      continue;
    }
    if (seen.has(probed.interpreter.realpath)) continue;
    seen.add(probed.interpreter.realpath);
    interpreters.push(probed.interpreter);
  }
  return { interpreters, skipped };
}

export type ProbeOutcome = { ok: true; interpreter: PythonInterpreter } | { ok: false; reason: string };

export async function probePython(file: string, timeoutMs = 10_000): Promise<ProbeOutcome> {
  let stdout: string;
  try {
    ({ stdout } = await run(file, PROBE, { timeout: timeoutMs, env: { PATH: "/usr/bin:/bin" } }));
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: string };
    const detail = (e.stderr ?? "").trim().split("\n").pop() || e.code || e.message;
    return { ok: false, reason: `the probe failed: ${detail}` };
  }
  let answer: { version?: unknown; implementation?: unknown; venv?: unknown; prefix?: unknown };
  try {
    answer = JSON.parse(stdout.trim().split("\n").pop() ?? "") as typeof answer;
  } catch {
    return { ok: false, reason: "the probe did not answer JSON" };
  }
  const version = answer.version;
  if (
    !Array.isArray(version) ||
    version.length !== 3 ||
    !version.every((n) => Number.isInteger(n)) ||
    version[0] !== 3
  ) {
    return { ok: false, reason: `not a Python 3: ${JSON.stringify(version)}` };
  }
  return {
    ok: true,
    interpreter: {
      path: file,
      realpath: await realpath(file),
      version: [version[0], version[1], version[2]] as [number, number, number],
      implementation: String(answer.implementation),
      canCreateVenv: answer.venv === true,
      prefix: String(answer.prefix),
    },
  };
}
