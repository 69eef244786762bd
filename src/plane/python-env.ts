// A virtualenv per distinct requirement set of truss packages, cached on the plane by content hash (of
// the interpreter and the normalised requirements). Built atomically: in a temporary directory that is
// renamed into place once pip succeeded, so the cache holds only complete virtualenvs and a failed build
// leaves nothing; concurrent builds of one set in this process build once. pip's output reaches the
// caller line by line (the deployment's build logs), and its error is the failure's message.

import { type ChildProcess, spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import {
  lstat,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  realpath,
  rename,
  rm,
  stat,
  writeFile,
} from "node:fs/promises";
import path from "node:path";
import { StringDecoder } from "node:string_decoder";
import type { TrussPythonConfig } from "../core/model-config.ts";
import {
  choosePython,
  formatVersion,
  normalizeRequirements,
  type PythonInterpreter,
  type RequirementsOutcome,
  requirementsFileLines,
} from "../core/python.ts";

export interface BuildLogLine {
  /** pip's own streams, or `build` for the builder's lines about what it does. */
  stream: "stdout" | "stderr" | "build";
  line: string;
}

export interface VirtualenvCacheOptions {
  /** Where the virtualenvs live on this plane (one directory per requirement set). */
  root: string;
  /**
   * pip options naming where packages come from, part of the cache key: an internal index in production,
   * `["--no-index", "--find-links", dir]` in tests. Default: pip's own configuration (PyPI).
   */
  indexArgs?: readonly string[];
  /** The environment pip runs with (PATH, proxies, PIP_CONFIG_FILE, …); the plane's, passed in. */
  env: Readonly<Record<string, string | undefined>>;
  /**
   * Default false: wheels only (`--only-binary=:all:`), so no package code (setup.py) runs on the plane
   * while a virtualenv is built; a requirement with no wheel fails with pip's message.
   */
  allowSourceBuilds?: boolean;
  /** One build's time limit (venv and pip together). Default 15 minutes. */
  timeoutMs?: number;
  /** Builds of different sets running at once. Default 2. */
  maxParallel?: number;
}

export type VirtualenvOutcome =
  | {
      ok: true;
      /** The interpreter a replica runs the host with: the virtualenv's, or the base one without requirements. */
      python: string;
      /** The virtualenv's directory (bind it read-only at the same path), null without requirements. */
      dir: string | null;
      key: string | null;
      /** Whether this call built it (false: it was cached, or there was nothing to build). */
      built: boolean;
    }
  | { ok: false; message: string };

/** Marks a finished virtualenv; written last, before the rename, with what it was built from. */
const MARKER = "meridian-venv.json";
const FORMAT = 1;
const MAX_MESSAGE = 4000;
const MAX_REWRITE_BYTES = 1024 * 1024;

/** The requirement set a package declares: its `requirements`, or its `requirements_file`, read safely. */
export async function packageRequirements(
  packageDir: string,
  python: TrussPythonConfig,
): Promise<RequirementsOutcome> {
  if (python.requirements.length > 0 || python.requirements_file === null) {
    return { ok: true, requirements: [...python.requirements] };
  }
  const file = python.requirements_file;
  const root = await realpath(packageDir);
  let resolved: string;
  try {
    resolved = await realpath(path.join(root, file));
  } catch {
    return { ok: false, message: `requirements_file: the package has no ${file}.` };
  }
  // A symlink in a hostile package must not make the plane read (and log) its own files.
  if (!resolved.startsWith(root + path.sep)) {
    return { ok: false, message: `requirements_file: ${file} points outside the package.` };
  }
  const info = await stat(resolved);
  if (!info.isFile()) return { ok: false, message: `requirements_file: ${file} is not a file.` };
  if (info.size > MAX_REWRITE_BYTES)
    return { ok: false, message: `requirements_file: ${file} is larger than 1 MiB.` };
  return normalizeRequirements(requirementsFileLines(await readFile(resolved, "utf8")), file);
}

export class VirtualenvCache {
  readonly #o: VirtualenvCacheOptions;
  readonly #inFlight = new Map<string, Promise<VirtualenvOutcome>>();
  readonly #waiting: (() => void)[] = [];
  #building = 0;

  constructor(options: VirtualenvCacheOptions) {
    this.#o = options;
  }

  /**
   * Removes what builds of an earlier process left when it died mid-build (`.build-*` work directories,
   * `.stale-*` ones set aside): never a finished virtualenv, and nothing a running build uses.
   */
  async sweep(): Promise<void> {
    if (this.#inFlight.size > 0) return;
    for (const name of await readdir(this.#o.root).catch(() => [] as string[])) {
      if (name.startsWith(".build-") || name.startsWith(".stale-")) {
        await rm(path.join(this.#o.root, name), { recursive: true, force: true });
      }
    }
  }

  /** The cache key of a requirement set on an interpreter (sha256, hex). */
  key(interpreter: PythonInterpreter, requirements: readonly string[]): string {
    const material = {
      format: FORMAT,
      python: {
        realpath: interpreter.realpath,
        version: interpreter.version,
        implementation: interpreter.implementation,
      },
      requirements,
      index: this.#o.indexArgs ?? [],
      binary_only: !this.#o.allowSourceBuilds,
    };
    return createHash("sha256").update(JSON.stringify(material)).digest("hex");
  }

  /** The virtualenv's directory for a key; short enough for `#!` lines (Linux reads 255 bytes of one). */
  dirOf(key: string): string {
    return path.join(this.#o.root, key.slice(0, 32));
  }

  /**
   * A virtualenv with `requirements` (normalised: see normalizeRequirements) installed for `interpreter`,
   * built unless cached. `onLine` receives the build's output as it comes; `onBuilding` is called once the
   * set is known not to be cached (this call builds it, or waits for the build already running), never
   * for a cached one.
   */
  ensure(
    interpreter: PythonInterpreter,
    requirements: readonly string[],
    onLine: (line: BuildLogLine) => void = () => {},
    onBuilding: () => void = () => {},
  ): Promise<VirtualenvOutcome> {
    if (requirements.length === 0) {
      return Promise.resolve({ ok: true, python: interpreter.path, dir: null, key: null, built: false });
    }
    const key = this.key(interpreter, requirements);
    const running = this.#inFlight.get(key);
    if (running !== undefined) {
      onBuilding();
      onLine({
        stream: "build",
        line: `waiting for the build of the same requirements (${key.slice(0, 12)})`,
      });
      return running;
    }
    const build = this.#ensure(key, interpreter, requirements, onLine, onBuilding).finally(() =>
      this.#inFlight.delete(key),
    );
    this.#inFlight.set(key, build);
    return build;
  }

  async #ensure(
    key: string,
    interpreter: PythonInterpreter,
    requirements: readonly string[],
    onLine: (line: BuildLogLine) => void,
    onBuilding: () => void,
  ): Promise<VirtualenvOutcome> {
    const dir = this.dirOf(key);
    if (await usable(dir)) {
      onLine({ stream: "build", line: `using the cached virtualenv ${dir}` });
      return { ok: true, python: path.join(dir, "bin", "python"), dir, key, built: false };
    }
    onBuilding();
    await this.#slot();
    try {
      if (await usable(dir))
        return { ok: true, python: path.join(dir, "bin", "python"), dir, key, built: false };
      return await this.#build(key, dir, interpreter, requirements, onLine);
    } finally {
      this.#release();
    }
  }

  async #build(
    key: string,
    dir: string,
    interpreter: PythonInterpreter,
    requirements: readonly string[],
    onLine: (line: BuildLogLine) => void,
  ): Promise<VirtualenvOutcome> {
    await mkdir(this.#o.root, { recursive: true });
    // Left over from an interpreter that is gone (its bin/python dangles): moved aside, then rebuilt.
    if (await exists(dir)) await removeAside(dir);
    const work = await mkdtemp(path.join(this.#o.root, `.build-${key.slice(0, 12)}-`));
    const venv = path.join(work, "venv");
    const deadline = Date.now() + (this.#o.timeoutMs ?? 15 * 60_000);
    try {
      onLine({
        stream: "build",
        line: `creating a virtualenv with ${interpreter.path} (Python ${formatVersion(interpreter.version)})`,
      });
      const created = await this.#run(interpreter.path, ["-m", "venv", venv], deadline, onLine);
      if (!created.ok)
        return { ok: false, message: failure(`python -m venv failed (${created.how})`, created.tail) };

      const list = path.join(work, "requirements.txt");
      await writeFile(list, `${requirements.join("\n")}\n`);
      onLine({ stream: "build", line: `installing ${requirements.length} requirement line(s) with pip` });
      const pip = [
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
        "--no-cache-dir",
        "--progress-bar",
        "off",
        ...(this.#o.allowSourceBuilds ? [] : ["--only-binary=:all:"]),
        ...(this.#o.indexArgs ?? []),
        "-r",
        list,
      ];
      const installed = await this.#run(path.join(venv, "bin", "python"), pip, deadline, onLine);
      if (!installed.ok) {
        return {
          ok: false,
          message: failure(`pip could not install the requirements (${installed.how})`, installed.tail),
        };
      }
      await relocate(venv, dir);
      await writeFile(
        path.join(venv, MARKER),
        `${JSON.stringify({ key, python: interpreter.realpath, version: interpreter.version, requirements, built_at: new Date().toISOString() })}\n`,
      );
      try {
        await rename(venv, dir);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        // Another process renamed the same set into place first; theirs is as good as ours.
        if ((code !== "ENOTEMPTY" && code !== "EEXIST") || !(await usable(dir))) throw err;
      }
      onLine({ stream: "build", line: `virtualenv ready: ${dir}` });
      return { ok: true, python: path.join(dir, "bin", "python"), dir, key, built: true };
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  }

  /** Runs one build step, its output line by line to `onLine`; killed (its process group) at the deadline. */
  #run(
    file: string,
    args: string[],
    deadline: number,
    onLine: (line: BuildLogLine) => void,
  ): Promise<{ ok: true } | { ok: false; how: string; tail: string[] }> {
    const env = buildEnvironment(this.#o.env);
    return new Promise((resolve) => {
      let child: ChildProcess;
      try {
        child = spawn(file, args, { env, stdio: ["ignore", "pipe", "pipe"], detached: true });
      } catch (err) {
        resolve({ ok: false, how: (err as Error).message, tail: [] });
        return;
      }
      const stderr: string[] = [];
      const stdout: string[] = [];
      const collect = (stream: NodeJS.ReadableStream, name: "stdout" | "stderr", keep: string[]) => {
        const decoder = new StringDecoder("utf8");
        let pending = "";
        const push = (line: string) => {
          onLine({ stream: name, line });
          keep.push(line);
          if (keep.length > 400) keep.splice(0, keep.length - 200);
        };
        stream.on("data", (chunk: Buffer) => {
          pending += decoder.write(chunk);
          const lines = pending.split("\n");
          pending = lines.pop() ?? "";
          for (const line of lines) push(line.replace(/\r$/, ""));
        });
        stream.on("end", () => {
          pending += decoder.end();
          if (pending !== "") push(pending);
        });
      };
      collect(child.stdout!, "stdout", stdout);
      collect(child.stderr!, "stderr", stderr);
      let timedOut = false;
      const timer = setTimeout(
        () => {
          timedOut = true;
          try {
            process.kill(-child.pid!, "SIGKILL");
          } catch {
            child.kill("SIGKILL");
          }
        },
        Math.max(0, deadline - Date.now()),
      );
      child.once("error", (err) => {
        clearTimeout(timer);
        resolve({ ok: false, how: err.message, tail: [] });
      });
      child.once("close", (code, signal) => {
        clearTimeout(timer);
        if (code === 0) return resolve({ ok: true });
        const how = timedOut ? "timed out" : signal !== null ? `killed by ${signal}` : `exit code ${code}`;
        resolve({ ok: false, how, tail: pipErrors(stderr, stdout) });
      });
    });
  }

  async #slot(): Promise<void> {
    if (this.#building < (this.#o.maxParallel ?? 2)) {
      this.#building++;
      return;
    }
    await new Promise<void>((resolve) => this.#waiting.push(resolve));
  }

  #release(): void {
    const next = this.#waiting.shift();
    if (next !== undefined) next();
    else this.#building--;
  }
}

/** pip's `ERROR:` lines, or the last lines of its output when it wrote none. */
export function pipErrors(stderr: readonly string[], stdout: readonly string[]): string[] {
  const errors = stderr.filter((l) => l.startsWith("ERROR:"));
  if (errors.length > 0) return errors;
  const tail = stderr.filter((l) => l.trim() !== "");
  return (tail.length > 0 ? tail : stdout.filter((l) => l.trim() !== "")).slice(-20);
}

function failure(what: string, tail: readonly string[]): string {
  const text = tail.length === 0 ? `${what}.` : `${what}:\n${tail.join("\n")}`;
  return text.length > MAX_MESSAGE ? `${text.slice(0, MAX_MESSAGE)}…` : text;
}

/** pip's environment: the plane's, without what would point Python elsewhere, and never interactive. */
function buildEnvironment(env: Readonly<Record<string, string | undefined>>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(env)) {
    if (
      v === undefined ||
      k === "PYTHONPATH" ||
      k === "PYTHONHOME" ||
      k === "VIRTUAL_ENV" ||
      k.startsWith("MERIDIAN_")
    )
      continue;
    out[k] = v;
  }
  out["PIP_DISABLE_PIP_VERSION_CHECK"] = "1";
  out["PIP_NO_INPUT"] = "1";
  return out;
}

/**
 * A virtualenv records the directory it was created in: in its scripts' `#!` lines, its activate scripts
 * and pyvenv.cfg. Built under a temporary name, it is rewritten to the name it is renamed to. (Its
 * interpreter finds its prefix from where it runs, and compiled bytecode takes the source's path when
 * loaded, so nothing else needs it.)
 */
async function relocate(built: string, final: string): Promise<void> {
  const from = Buffer.from(built);
  const to = Buffer.from(final);
  const files = [path.join(built, "pyvenv.cfg")];
  for (const name of await readdir(path.join(built, "bin")).catch(() => [] as string[])) {
    files.push(path.join(built, "bin", name));
  }
  for (const file of files) {
    const info = await lstat(file).catch(() => null);
    if (info === null || !info.isFile() || info.size > MAX_REWRITE_BYTES) continue;
    const content = await readFile(file);
    if (content.indexOf(from) === -1) continue;
    await writeFile(file, replaceAll(content, from, to), { mode: info.mode });
  }
}

function replaceAll(content: Buffer, from: Buffer, to: Buffer): Buffer {
  const parts: Buffer[] = [];
  let start = 0;
  for (let at = content.indexOf(from); at !== -1; at = content.indexOf(from, start)) {
    parts.push(content.subarray(start, at), to);
    start = at + from.length;
  }
  parts.push(content.subarray(start));
  return Buffer.concat(parts);
}

async function usable(dir: string): Promise<boolean> {
  // stat follows bin/python to the base interpreter: a virtualenv whose interpreter is gone is not usable.
  const marker = await stat(path.join(dir, MARKER)).catch(() => null);
  const python = await stat(path.join(dir, "bin", "python")).catch(() => null);
  return marker?.isFile() === true && python?.isFile() === true;
}

async function exists(p: string): Promise<boolean> {
  return (await lstat(p).catch(() => null)) !== null;
}

async function removeAside(dir: string): Promise<void> {
  const aside = `${path.dirname(dir)}/.stale-${randomBytes(6).toString("hex")}`;
  await rename(dir, aside).catch(() => undefined);
  await rm(aside, { recursive: true, force: true });
}

export interface PlanePythonOptions {
  /** The interpreters of this plane, found once (src/lib/pythons.ts discoverPythons), in order of preference. */
  interpreters: () => Promise<readonly PythonInterpreter[]>;
  venvs: VirtualenvCache;
}

export type PreparedPython =
  | {
      ok: true;
      /** The interpreter itself, or (with requirements) the virtualenv's bin/python. */
      python: string;
      /** Host trees the replica reads: the interpreter's installation. */
      readOnly: string[];
      /** The virtualenv's directory; null without requirements. */
      venv: string | null;
    }
  | { ok: false; message: string };

/**
 * What a replica of a truss package runs on, on this plane: the interpreter `python_version` asks for
 * (choosePython; none fitting names the wanted version and those present) and, with requirements, a
 * virtualenv of them from the cache, built if need be with its output to `onLine`.
 */
export class PlanePython {
  readonly #o: PlanePythonOptions;

  constructor(options: PlanePythonOptions) {
    this.#o = options;
  }

  /** `onBuilding`: as VirtualenvCache.ensure's, when a virtualenv must be built (none is cached). */
  async prepare(
    wanted: { python_version: string | null; requirements: readonly string[] },
    onLine: (line: BuildLogLine) => void,
    onBuilding: () => void = () => {},
  ): Promise<PreparedPython> {
    const interpreters = await this.#o.interpreters();
    const choice = choosePython(wanted.python_version, interpreters, {
      venv: wanted.requirements.length > 0,
    });
    if (!choice.ok) return { ok: false, message: choice.message };
    const interpreter = choice.interpreter;
    onLine({
      stream: "build",
      line: `Python ${formatVersion(interpreter.version)} (${interpreter.path}) for python_version ${wanted.python_version ?? "(any)"}`,
    });
    const venv = await this.#o.venvs.ensure(interpreter, wanted.requirements, onLine, onBuilding);
    if (!venv.ok) return venv;
    return { ok: true, python: venv.python, readOnly: [interpreter.prefix], venv: venv.dir };
  }
}
