// A model package's config.yaml: the subset of truss's keys Meridian runs, parsed and validated without I/O.
// Keys truss knows but Meridian does not act on (resources, requirements, ...) are reported, not refused.

import { parseDocument } from "yaml";

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
}

export type ConfigOutcome =
  | { ok: true; config: ModelPackageConfig; ignored: string[] }
  | { ok: false; key: string; message: string };

export const DEFAULT_PREDICT_CONCURRENCY = 1;

/** The key named when the fault is the document as a whole (its syntax or its shape). */
export const DOCUMENT = "(document)";

/** Variables the runtime sets itself; a package may not override them. */
export const RESERVED_VARIABLE_PREFIX = "MERIDIAN_";

const TOP_LEVEL_KEYS = new Set(["model_name", "environment_variables", "runtime", "docker_server"]);
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
  const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  const syntax = doc.errors[0];
  if (syntax) {
    const line = syntax.linePos?.[0]?.line;
    const where = line === undefined ? "" : ` (line ${line})`;
    return { ok: false, key: DOCUMENT, message: `is not valid YAML${where}: ${firstLine(syntax.message)}` };
  }
  try {
    return validate(doc.toJS() as unknown);
  } catch (err) {
    if (err instanceof ConfigFault) return { ok: false, key: err.key, message: err.message };
    throw err;
  }
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
  };
  return { ok: true, config, ignored };
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
