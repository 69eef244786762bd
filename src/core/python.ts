// Python for truss packages, without I/O: `python_version` (py39, py311, …) against the interpreters a
// plane has, the choice among them, a package's requirements normalised into the set a virtualenv is
// built and cached for, and the command line of the Python host (src/runtime/python/truss_host.py).

/** An interpreter found on a plane (src/runtime/python.ts probes them). */
export interface PythonInterpreter {
  /** The path it was found at, e.g. /usr/bin/python3.11. */
  path: string;
  /** The file it resolves to; two paths to one interpreter are one interpreter. */
  realpath: string;
  version: readonly [number, number, number];
  /** `sys.implementation.name`: "cpython", "pypy". */
  implementation: string;
  /** `venv` and `ensurepip` import, so it can build a virtualenv with pip (Debian: python3-venv). */
  canCreateVenv: boolean;
  /** `sys.base_prefix`: the tree a sandbox must bind read-only for the interpreter to run. */
  prefix: string;
}

export interface PythonVersion {
  major: 3;
  minor: number;
}

/** The oldest Python the host runs on (it uses nothing newer than 3.8's standard library). */
export const MIN_HOST_PYTHON: PythonVersion = { major: 3, minor: 8 };

const TRUSS_VERSION = /^py3(\d{1,2})$/;

export type PythonVersionOutcome = { ok: true; version: PythonVersion } | { ok: false; message: string };

/** truss's `python_version`: `py` and the version without its dot (py39, py310, py311, …). */
export function parsePythonVersion(value: string): PythonVersionOutcome {
  const match = TRUSS_VERSION.exec(value);
  if (match === null) {
    return { ok: false, message: `must name a Python 3 version such as py311, got ${JSON.stringify(value)}` };
  }
  return { ok: true, version: { major: 3, minor: Number(match[1]) } };
}

export function formatVersion(version: readonly number[]): string {
  return version.join(".");
}

export type PythonChoice =
  | { ok: true; interpreter: PythonInterpreter }
  | { ok: false; message: string; wanted: string | null; present: string[] };

/**
 * Picks the interpreter for a package: the same major.minor as `python_version` (a py311 package never
 * runs on 3.12), and among those the newest patch release; equal ones in `found`'s order, which puts an
 * operator's configured interpreters first. Without `python_version`, the first usable interpreter found.
 * With requirements to install (`needsVenv`), only an interpreter that can build a virtualenv fits.
 */
export function choosePython(
  wanted: string | null,
  found: readonly PythonInterpreter[],
  needs: { venv: boolean },
): PythonChoice {
  const present = found.map((i) => `${formatVersion(i.version)} (${i.path})`);
  const presentText = present.length === 0 ? "none" : present.join(", ");
  let version: PythonVersion | null = null;
  if (wanted !== null) {
    const parsed = parsePythonVersion(wanted);
    if (!parsed.ok) return { ok: false, message: `python_version ${parsed.message}`, wanted, present };
    version = parsed.version;
    if (version.minor < MIN_HOST_PYTHON.minor) {
      return {
        ok: false,
        message: `python_version ${wanted} is older than Python 3.${MIN_HOST_PYTHON.minor}, the oldest the Python host runs on.`,
        wanted,
        present,
      };
    }
  }
  const usable = found.filter((i) => i.version[0] === 3 && i.version[1] >= MIN_HOST_PYTHON.minor);
  const matching =
    version === null ? usable : usable.filter((i) => i.version[0] === 3 && i.version[1] === version.minor);
  const wantedText = version === null ? "a Python 3.8 or newer" : `Python 3.${version.minor} (${wanted})`;
  if (matching.length === 0) {
    return {
      ok: false,
      message: `No interpreter on this plane fits: the package needs ${wantedText}; present: ${presentText}.`,
      wanted,
      present,
    };
  }
  const fitting = needs.venv ? matching.filter((i) => i.canCreateVenv) : matching;
  if (fitting.length === 0) {
    const which = matching.map((i) => `${formatVersion(i.version)} (${i.path})`).join(", ");
    return {
      ok: false,
      message: `The package has requirements, but no interpreter for ${wantedText} can build a virtualenv: ${which} lacks venv/ensurepip (on Debian, install python3-venv).`,
      wanted,
      present,
    };
  }
  if (version === null) return { ok: true, interpreter: fitting[0]! };
  let best = fitting[0]!;
  for (const candidate of fitting) if (candidate.version[2] > best.version[2]) best = candidate;
  return { ok: true, interpreter: best };
}

export type RequirementsOutcome = { ok: true; requirements: string[] } | { ok: false; message: string };

/** pip options a package may put in its requirements; all name an index or change resolution only. */
const URL_OPTIONS = new Map([
  ["-i", "--index-url"],
  ["--index-url", "--index-url"],
  ["--extra-index-url", "--extra-index-url"],
  ["-f", "--find-links"],
  ["--find-links", "--find-links"],
]);
const FLAG_OPTIONS = new Set(["--pre", "--prefer-binary"]);
const MAX_REQUIREMENTS = 1000;
const MAX_LINE = 1000;
// PEP 508 names: letters, digits, and . _ - inside (PEP 503 normalises runs of them to one "-").
const NAME = /^([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)(.*)$/s;

/**
 * The lines of a pip requirements file (pip's format: comments, `\` continuations) as requirements.
 * Lines are checked by `normalizeRequirements`.
 */
export function requirementsFileLines(text: string): string[] {
  const lines: string[] = [];
  let pending = "";
  for (const raw of text.replace(/\r\n?/g, "\n").split("\n")) {
    const line = pending + raw;
    if (line.endsWith("\\")) {
      pending = line.slice(0, -1);
      continue;
    }
    pending = "";
    lines.push(line);
  }
  if (pending !== "") lines.push(pending);
  return lines;
}

/**
 * A package's requirements (the `requirements` list, or the lines of `requirements_file`) as the set a
 * virtualenv is built for: comments and blank lines dropped, whitespace collapsed, project names in
 * PEP 503 form, options first, then requirements sorted, each once. Lines that would make pip read the
 * plane's files (`-r`, `-c`, `-e`, local paths, `file:` URLs) are refused: a package is hostile code,
 * and its build runs on the plane.
 */
export function normalizeRequirements(lines: readonly string[], source: string): RequirementsOutcome {
  const options = new Set<string>();
  const requirements = new Set<string>();
  let count = 0;
  for (const [index, raw] of lines.entries()) {
    const where = `${source} line ${index + 1}`;
    if (raw.length > MAX_LINE)
      return { ok: false, message: `${where} is longer than ${MAX_LINE} characters.` };
    if (/[\0\n\r]/.test(raw)) return { ok: false, message: `${where} holds a control character.` };
    const line = stripComment(raw).replace(/\s+/g, " ").trim();
    if (line === "") continue;
    if (++count > MAX_REQUIREMENTS) {
      return { ok: false, message: `${source} has more than ${MAX_REQUIREMENTS} requirements.` };
    }
    if (line.startsWith("-")) {
      const option = normalizeOption(line);
      if (!option.ok) return { ok: false, message: `${where}: ${option.message}` };
      options.add(option.text);
      continue;
    }
    const requirement = normalizeRequirement(line);
    if (!requirement.ok) return { ok: false, message: `${where}: ${requirement.message}` };
    requirements.add(requirement.text);
  }
  return { ok: true, requirements: [...[...options].sort(), ...[...requirements].sort()] };
}

/** pip: a `#` at the start of a line or after whitespace starts a comment. */
function stripComment(line: string): string {
  const match = /(^|\s)#/.exec(line);
  return match === null ? line : line.slice(0, match.index);
}

type Normalized = { ok: true; text: string } | { ok: false; message: string };

function normalizeOption(line: string): Normalized {
  const match = /^(-{1,2}[A-Za-z][A-Za-z-]*)(?:[ =](.*))?$/.exec(line);
  if (match === null) return { ok: false, message: `not a pip option: ${line}` };
  const name = match[1]!;
  const value = (match[2] ?? "").trim();
  if (FLAG_OPTIONS.has(name)) {
    if (value !== "") return { ok: false, message: `${name} takes no value` };
    return { ok: true, text: name };
  }
  const canonical = URL_OPTIONS.get(name);
  if (canonical === undefined) {
    return {
      ok: false,
      message: `the pip option ${name} is not allowed in a package's requirements (allowed: --index-url, --extra-index-url, --find-links with an http(s) URL, --pre, --prefer-binary)`,
    };
  }
  if (!isHttpUrl(value))
    return { ok: false, message: `${name} needs an http(s) URL, got ${JSON.stringify(value)}` };
  return { ok: true, text: `${canonical} ${value}` };
}

function normalizeRequirement(line: string): Normalized {
  if (/^(\.{0,2}\/|~|[A-Za-z]:\\)/.test(line) || /^file:/i.test(line)) {
    return { ok: false, message: `local paths are not allowed in a package's requirements: ${line}` };
  }
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(line)) {
    if (!isHttpUrl(line.split(" ")[0]!)) {
      return { ok: false, message: `only http(s) URLs are allowed in a package's requirements: ${line}` };
    }
    return { ok: true, text: line };
  }
  const match = NAME.exec(line);
  if (match === null) return { ok: false, message: `not a requirement: ${line}` };
  const rest = match[2]!;
  const at = /^\s*(\[[^\]]*\])?\s*@\s*(\S+)/.exec(rest);
  if (at !== null && !isHttpUrl(at[2]!)) {
    return { ok: false, message: `a direct reference must be an http(s) URL: ${line}` };
  }
  return { ok: true, text: match[1]!.toLowerCase().replace(/[-_.]+/g, "-") + rest };
}

function isHttpUrl(text: string): boolean {
  return /^https?:\/\/[^\s/?#]+/i.test(text);
}

/** How the Python host is started for one replica; the plane fills in the listen address. */
export interface TrussHostCommandOptions {
  /** The interpreter: a virtualenv's `bin/python` when the package has requirements. */
  python: string;
  /** src/runtime/python/truss_host.py, as installed. */
  script: string;
  packageDir: string;
  /** `HOST:PORT` (port 0: a free one; the process driver's `{host}:{port}` passes through) or `unix:/path`. */
  listen: string;
  modelId?: string | null;
  deploymentId?: string | null;
  environment?: string | null;
  /** One file per secret, as truss mounts them; default /secrets. */
  secretsDir?: string;
  maxQueued?: number;
}

/**
 * The host's argv and the variables it needs. `-B` and PYTHONDONTWRITEBYTECODE keep bytecode out of the
 * (read-only) package for the host and any Python the model starts; `-s` keeps a user site-packages
 * (HOME is private in the sandbox, but a stray one would shadow the virtualenv) off sys.path.
 */
export function trussHostCommand(o: TrussHostCommandOptions): {
  argv: string[];
  env: Record<string, string>;
} {
  const argv = [o.python, "-B", "-s", o.script, o.packageDir, "--listen", o.listen];
  if (o.modelId) argv.push("--model-id", o.modelId);
  if (o.deploymentId) argv.push("--deployment-id", o.deploymentId);
  if (o.environment) argv.push("--environment", o.environment);
  if (o.secretsDir !== undefined) argv.push("--secrets-dir", o.secretsDir);
  if (o.maxQueued !== undefined) argv.push("--max-queued", String(o.maxQueued));
  return { argv, env: { PYTHONDONTWRITEBYTECODE: "1", PYTHONUNBUFFERED: "1" } };
}
