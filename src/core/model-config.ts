// A model package's config.yaml: the subset of truss's keys Meridian runs, parsed and validated without I/O.
// Keys truss knows but Meridian does not act on (resources, system_packages, ...) are reported, not refused.
// The same rules are applied by the Python host (src/runtime/python/_meridian_host/package.py), which reads
// config.yaml with its own parser of the YAML subset accepted here (no anchors, aliases, tags, directives
// or explicit keys); `packageEntryPoint` decides what a package runs.

import { CST, isScalar, Lexer, parseDocument, visit } from "yaml";
import { normalizeRequirements, parsePythonVersion } from "./python.ts";

/** A custom server started by `start_command` (truss's `docker_server`). */
export interface DockerServerConfig {
  start_command: string;
  server_port: number;
  predict_endpoint: string;
  readiness_endpoint: string;
  liveness_endpoint: string;
}

export interface ModelPackageConfig {
  model_name: string | null;
  environment_variables: Readonly<Record<string, string>>;
  runtime: { predict_concurrency: number };
  docker_server: DockerServerConfig | null;
  /** truss's Python model: where its class is, what it needs, and what it is given (truss's defaults). */
  python: TrussPythonConfig;
}

export interface TrussPythonConfig {
  /** `py311` and the like; null when the package does not say (any Python 3.8+ fits). */
  python_version: string | null;
  /** The `requirements` list, normalised (see normalizeRequirements); [] when there is none. */
  requirements: readonly string[];
  /** A pip requirements file inside the package; exclusive with `requirements`. */
  requirements_file: string | null;
  /**
   * Secret names the model reads. A value written in config.yaml is truss's placeholder and never kept: the
   * value comes from the team's secrets (DESIGN.md §2.8), so a real one typed there is not stored or sent.
   */
  secrets: Readonly<Record<string, string | null>>;
  model_module_dir: string;
  model_class_filename: string;
  model_class_name: string;
  bundled_packages_dir: string;
  data_dir: string;
  external_package_dirs: readonly string[];
}

export type ConfigOutcome =
  | { ok: true; config: ModelPackageConfig; ignored: string[] }
  | { ok: false; key: string; message: string };

export const DEFAULT_PREDICT_CONCURRENCY = 1;

/** The key named when the fault is the document as a whole (its syntax or its shape). */
export const DOCUMENT = "(document)";

/** Variables the runtime sets itself; a package may not override them. */
export const RESERVED_VARIABLE_PREFIX = "MERIDIAN_";

const PYTHON_DEFAULTS = {
  model_module_dir: "model",
  model_class_filename: "model.py",
  model_class_name: "Model",
  bundled_packages_dir: "packages",
  data_dir: "data",
} as const;
const PYTHON_KEYS = [
  "python_version",
  "requirements",
  "requirements_file",
  "secrets",
  "external_package_dirs",
  "model_metadata",
  "external_data",
  ...Object.keys(PYTHON_DEFAULTS),
];
const TOP_LEVEL_KEYS = new Set([
  "model_name",
  "environment_variables",
  "runtime",
  "docker_server",
  ...PYTHON_KEYS,
]);
// A secret is a file under the secrets directory, so its name is one safe path segment.
const SECRET_NAME = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;
const PYTHON_IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_]*$/;
const RUNTIME_KEYS = new Set(["predict_concurrency"]);
const DOCKER_SERVER_KEYS = [
  "start_command",
  "server_port",
  "predict_endpoint",
  "readiness_endpoint",
  "liveness_endpoint",
] as const;
// POSIX names for environment variables (IEEE Std 1003.1, Base Definitions §8.1).
const VARIABLE_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

class ConfigFault {
  constructor(
    readonly key: string,
    readonly message: string,
  ) {}
}

function fail(key: string, message: string): never {
  throw new ConfigFault(key, message);
}

/** Parses and validates the text of a config.yaml; a failure names the offending key. */
export function parseModelConfig(text: string): ConfigOutcome {
  const yaml = parseYamlSubset(text);
  if (!yaml.ok) return { ok: false, key: DOCUMENT, message: yaml.message };
  try {
    return validate(yaml.value);
  } catch (err) {
    if (err instanceof ConfigFault) return { ok: false, key: err.key, message: err.message };
    throw err;
  }
}

export type YamlOutcome = { ok: true; value: unknown } | { ok: false; message: string };

/**
 * A YAML document of the subset both runtimes read (the Python host parses config.yaml itself, with
 * src/runtime/python/_meridian_host/yaml_subset.py): YAML 1.2, core schema, one document, keys unique.
 */
export function parseYamlSubset(text: string): YamlOutcome {
  const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  const syntax = doc.errors[0];
  if (syntax) {
    const line = syntax.linePos?.[0]?.line;
    const where = line === undefined ? "" : ` (line ${line})`;
    return { ok: false, message: `is not valid YAML${where}: ${firstLine(syntax.message)}` };
  }
  const unsupported = unsupportedYaml(text, doc);
  if (unsupported !== null)
    return { ok: false, message: `uses YAML that Meridian does not accept: ${unsupported}` };
  return { ok: true, value: doc.toJS() as unknown };
}

function validate(raw: unknown): ConfigOutcome {
  if (raw === null || raw === undefined) raw = {};
  if (!isRecord(raw)) fail(DOCUMENT, `must be a mapping of keys, got ${describe(raw)}`);
  const ignored = Object.keys(raw).filter((k) => !TOP_LEVEL_KEYS.has(k));

  const runtimeRaw = raw["runtime"] ?? {};
  if (!isRecord(runtimeRaw)) fail("runtime", `must be a mapping, got ${describe(runtimeRaw)}`);
  for (const k of Object.keys(runtimeRaw)) if (!RUNTIME_KEYS.has(k)) ignored.push(`runtime.${k}`);

  const config: ModelPackageConfig = {
    model_name: modelName(raw["model_name"]),
    environment_variables: environmentVariables(raw["environment_variables"]),
    runtime: { predict_concurrency: predictConcurrency(runtimeRaw["predict_concurrency"]) },
    docker_server: dockerServer(raw["docker_server"]),
    python: pythonConfig(raw),
  };
  return { ok: true, config, ignored };
}

/**
 * What the Python host's parser does not read (see its yaml_subset.py): refused here so that a package
 * the control plane accepts reads the same on every plane. Null when the document is inside the subset.
 */
function unsupportedYaml(text: string, doc: ReturnType<typeof parseDocument>): string | null {
  for (const token of new Lexer().lex(text)) {
    const type = CST.tokenType(token);
    if (type === "directive-line") return "directives (%YAML, %TAG) are not supported";
    if (type === "explicit-key-ind") return "explicit keys (? key) are not supported";
  }
  let found: string | null = null;
  visit(doc, {
    Alias() {
      found ??= "aliases (*name) are not supported";
      return visit.BREAK;
    },
    Node(_key, node) {
      if (node.anchor) found ??= "anchors (&name) are not supported";
      else if (node.tag) found ??= "tags (!tag) are not supported";
      return found === null ? undefined : visit.BREAK;
    },
    Pair(_key, pair) {
      if (pair.key !== null && !isScalar(pair.key)) found ??= "collections as mapping keys are not supported";
      return found === null ? undefined : visit.BREAK;
    },
  });
  return found;
}

function pythonConfig(raw: Record<string, unknown>): TrussPythonConfig {
  const externalData = raw["external_data"];
  if (
    externalData !== undefined &&
    externalData !== null &&
    !(Array.isArray(externalData) && externalData.length === 0)
  ) {
    fail(
      "external_data",
      "is not supported: Meridian does not download files at serving time; put them under data/ in the package",
    );
  }
  const metadata = raw["model_metadata"];
  if (metadata !== undefined && metadata !== null && !isRecord(metadata)) {
    fail("model_metadata", `must be a mapping, got ${describe(metadata)}`);
  }
  const version = raw["python_version"];
  let python_version: string | null = null;
  if (version !== undefined && version !== null) {
    if (typeof version !== "string")
      fail("python_version", `must be a string such as py311, got ${describe(version)}`);
    const parsed = parsePythonVersion(version);
    if (!parsed.ok) fail("python_version", parsed.message);
    python_version = version;
  }
  const listed = raw["requirements"];
  const file = raw["requirements_file"];
  let requirements: string[] = [];
  if (listed !== undefined && listed !== null) {
    if (!Array.isArray(listed) || !listed.every((r) => typeof r === "string")) {
      fail("requirements", `must be a list of pip requirements, got ${describe(listed)}`);
    }
    const normalized = normalizeRequirements(listed as string[], "requirements");
    if (!normalized.ok) fail("requirements", normalized.message.replace(/^requirements /, ""));
    requirements = normalized.requirements;
  }
  let requirements_file: string | null = null;
  if (file !== undefined && file !== null) {
    requirements_file = packagePath(file, "requirements_file");
    if (/\.(toml|lock)$/i.test(requirements_file)) {
      fail(
        "requirements_file",
        "must be a pip requirements file; pyproject.toml and uv.lock are not supported by Meridian",
      );
    }
    if (requirements.length > 0) fail("requirements_file", "cannot be used together with requirements");
  }
  const secrets: Record<string, string | null> = {};
  const declared = raw["secrets"];
  if (declared !== undefined && declared !== null) {
    if (!isRecord(declared))
      fail("secrets", `must be a mapping of secret names to null, got ${describe(declared)}`);
    for (const [name, value] of Object.entries(declared)) {
      if (!SECRET_NAME.test(name)) {
        fail(
          `secrets.${name}`,
          "is not a valid secret name (letters, digits, '_', '-' and '.', at most 128)",
        );
      }
      if (value !== null && value !== undefined && typeof value !== "string") {
        fail(`secrets.${name}`, `must be null (a placeholder) or a string, got ${describe(value)}`);
      }
      secrets[name] = null;
    }
  }
  const external = raw["external_package_dirs"] ?? [];
  if (!Array.isArray(external) || !external.every((d) => typeof d === "string" && d !== "")) {
    fail("external_package_dirs", "must be a list of directory paths");
  }
  const filename = stringKey(raw, "model_class_filename");
  if (filename.includes("/") || filename === "." || filename === ".." || !filename.endsWith(".py")) {
    fail("model_class_filename", `must be a file name ending in .py, got ${describe(filename)}`);
  }
  const className = stringKey(raw, "model_class_name");
  if (!PYTHON_IDENTIFIER.test(className)) {
    fail("model_class_name", `must be a Python class name, got ${describe(className)}`);
  }
  return {
    python_version,
    requirements,
    requirements_file,
    secrets,
    model_module_dir: packagePath(
      raw["model_module_dir"] ?? PYTHON_DEFAULTS.model_module_dir,
      "model_module_dir",
    ),
    model_class_filename: filename,
    model_class_name: className,
    bundled_packages_dir: packagePath(
      raw["bundled_packages_dir"] ?? PYTHON_DEFAULTS.bundled_packages_dir,
      "bundled_packages_dir",
    ),
    data_dir: packagePath(raw["data_dir"] ?? PYTHON_DEFAULTS.data_dir, "data_dir"),
    external_package_dirs: external as string[],
  };
}

function stringKey(raw: Record<string, unknown>, key: keyof typeof PYTHON_DEFAULTS): string {
  const value = raw[key] ?? PYTHON_DEFAULTS[key];
  if (typeof value !== "string" || value === "")
    fail(key, `must be a non-empty string, got ${describe(value)}`);
  return value;
}

/** A path inside the package: relative, without `..`, in POSIX form (normalised: `./model/` is `model`). */
function packagePath(value: unknown, key: string): string {
  if (typeof value !== "string" || value === "")
    fail(key, `must be a non-empty string, got ${describe(value)}`);
  const parts: string[] = [];
  for (const part of value.split("/")) {
    if (part === "" || part === ".") continue;
    if (part === "..") {
      if (parts.length === 0) fail(key, `must be a path inside the package, got ${describe(value)}`);
      parts.pop();
    } else parts.push(part);
  }
  if (value.startsWith("/") || value.includes("\\") || value.includes("\0")) {
    fail(key, `must be a path inside the package, got ${describe(value)}`);
  }
  return parts.length === 0 ? "." : parts.join("/");
}

/** What a package runs, decided from its config and which of its files exist (`has`: a relative path). */
export type PackageEntryPoint =
  | { type: "custom_server"; server: DockerServerConfig }
  | { type: "python"; module: string; className: string }
  | { type: "javascript"; module: string };

export type EntryPointOutcome = { ok: true; entry: PackageEntryPoint } | { ok: false; message: string };

export const JAVASCRIPT_MODULE = "model/model.js";

/** Where a package's truss Model class is, relative to the package: `model/model.py` by default. */
export function pythonModulePath(config: ModelPackageConfig): string {
  const { model_module_dir: dir, model_class_filename: file } = config.python;
  return dir === "." ? file : `${dir}/${file}`;
}

/**
 * `docker_server` runs a custom server; otherwise truss's `model/model.py` (at `model_module_dir` /
 * `model_class_filename`) or Meridian's `model/model.js`. A package with both model files is refused
 * rather than guessed at.
 */
export function packageEntryPoint(
  config: ModelPackageConfig,
  has: (path: string) => boolean,
): EntryPointOutcome {
  if (config.docker_server !== null)
    return { ok: true, entry: { type: "custom_server", server: config.docker_server } };
  const python = config.python;
  const module = pythonModulePath(config);
  const hasPython = has(module);
  const hasJavaScript = has(JAVASCRIPT_MODULE);
  if (hasPython && hasJavaScript) {
    return {
      ok: false,
      message: `The model package has both ${module} and ${JAVASCRIPT_MODULE}; keep the one it should run.`,
    };
  }
  if (hasPython) return { ok: true, entry: { type: "python", module, className: python.model_class_name } };
  if (hasJavaScript) return { ok: true, entry: { type: "javascript", module: JAVASCRIPT_MODULE } };
  return {
    ok: false,
    message: `The model package has neither ${module} (a truss Model class), ${JAVASCRIPT_MODULE} nor docker_server.start_command in config.yaml.`,
  };
}

function modelName(value: unknown): string | null {
  if (value === undefined || value === null) return null;
  if (typeof value !== "string" || value.trim() === "") {
    fail("model_name", `must be a non-empty string, got ${describe(value)}`);
  }
  return value;
}

function environmentVariables(value: unknown): Record<string, string> {
  if (value === undefined || value === null) return {};
  if (!isRecord(value))
    fail("environment_variables", `must be a mapping of names to values, got ${describe(value)}`);
  const out: Record<string, string> = {};
  for (const [name, v] of Object.entries(value)) {
    const key = `environment_variables.${name}`;
    if (!VARIABLE_NAME.test(name)) fail(key, "is not a valid environment variable name");
    if (name.startsWith(RESERVED_VARIABLE_PREFIX)) {
      fail(key, `names starting with ${RESERVED_VARIABLE_PREFIX} are set by the runtime`);
    }
    if (typeof v === "string") out[name] = v;
    else if (typeof v === "number" || typeof v === "boolean") out[name] = String(v);
    else fail(key, `must be a string, number or boolean, got ${describe(v)}`);
  }
  return out;
}

function predictConcurrency(value: unknown): number {
  if (value === undefined || value === null) return DEFAULT_PREDICT_CONCURRENCY;
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < 1) {
    fail("runtime.predict_concurrency", `must be a positive integer, got ${describe(value)}`);
  }
  return value;
}

function dockerServer(value: unknown): DockerServerConfig | null {
  if (value === undefined || value === null) return null;
  if (!isRecord(value)) fail("docker_server", `must be a mapping, got ${describe(value)}`);
  for (const k of DOCKER_SERVER_KEYS) {
    if (value[k] === undefined || value[k] === null) fail(`docker_server.${k}`, "is required");
  }
  const start = value["start_command"];
  if (typeof start !== "string" || start.trim() === "") {
    fail("docker_server.start_command", `must be a non-empty string, got ${describe(start)}`);
  }
  const port = value["server_port"];
  if (typeof port !== "number" || !Number.isInteger(port) || port < 1 || port > 65535) {
    fail("docker_server.server_port", `must be a port number from 1 to 65535, got ${describe(port)}`);
  }
  return {
    start_command: start,
    server_port: port,
    predict_endpoint: endpoint(value, "predict_endpoint"),
    readiness_endpoint: endpoint(value, "readiness_endpoint"),
    liveness_endpoint: endpoint(value, "liveness_endpoint"),
  };
}

function endpoint(server: Record<string, unknown>, key: string): string {
  const value = server[key];
  // An origin-form request target (RFC 9112 §3.2.1): an absolute path, optionally with a query.
  if (typeof value !== "string" || !value.startsWith("/") || /[\s#]/.test(value)) {
    fail(`docker_server.${key}`, `must be a path starting with "/", got ${describe(value)}`);
  }
  return value;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function describe(value: unknown): string {
  if (value === null || value === undefined) return "nothing";
  if (Array.isArray(value)) return "a list";
  if (typeof value === "object") return "a mapping";
  return JSON.stringify(value);
}

function firstLine(text: string): string {
  return text.split("\n")[0] ?? text;
}
