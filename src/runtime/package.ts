// A model package on disk: reads and validates config.yaml and decides how the model runs (a JavaScript
// `model/model.js` in this process, a custom server started by `docker_server.start_command`, or truss's
// `model/model.py`, which the Python host serves: src/runtime/python/truss_host.py).

import { readFile, stat } from "node:fs/promises";
import path from "node:path";
import { MeridianError } from "../core/errors.ts";
import {
  type ConfigOutcome,
  DOCUMENT,
  type DockerServerConfig,
  JAVASCRIPT_MODULE,
  type ModelPackageConfig,
  packageEntryPoint,
  parseModelConfig,
  pythonModulePath,
  RESERVED_VARIABLE_PREFIX,
} from "../core/model-config.ts";

export const CONFIG_FILE = "config.yaml";
export const MODEL_MODULE = path.join("model", "model.js");

/** Every way a package runs. */
export type PackageKind =
  | { type: "javascript"; module: string }
  | { type: "custom_server"; server: DockerServerConfig }
  | { type: "python"; module: string; className: string };

/** What `meridian serve-model` runs itself; a Python package is served by the Python host instead. */
export type ModelKind = Exclude<PackageKind, { type: "python" }>;

export interface ModelPackage<Kind extends PackageKind = ModelKind> {
  /** Absolute path of the package directory. */
  dir: string;
  config: ModelPackageConfig;
  kind: Kind;
  /** config.yaml keys that Meridian does not act on (truss keys such as `resources`). */
  ignoredKeys: string[];
}

/** Who a replica is serving for; each is null when the runtime runs on its own. */
export interface ReplicaIdentity {
  modelId: string | null;
  deploymentId: string | null;
  environment: string | null;
}

/**
 * Reads a package directory for `meridian serve-model`; throws `invalid_model_package` naming the file and
 * key at fault, and for a truss Python package, which the Python host serves (see `loadPackage`).
 */
export async function loadModelPackage(dir: string): Promise<ModelPackage> {
  const pkg = await loadPackage(dir);
  if (pkg.kind.type === "python") {
    throw new MeridianError(
      "invalid_model_package",
      `${pkg.kind.module} is a truss Model class: it is served by the Python host (src/runtime/python/truss_host.py), not by meridian serve-model`,
      { file: pkg.kind.module },
    );
  }
  return pkg as ModelPackage;
}

/** Reads a package directory of any kind; throws `invalid_model_package` naming the file and key at fault. */
export async function loadPackage(dir: string): Promise<ModelPackage<PackageKind>> {
  const root = path.resolve(dir);
  if (!(await isDirectory(root))) {
    throw new MeridianError("invalid_model_package", `${root} is not a model package directory`, {
      dir: root,
    });
  }
  const configPath = path.join(root, CONFIG_FILE);
  let text: string;
  try {
    text = await readFile(configPath, "utf8");
  } catch {
    throw new MeridianError("invalid_model_package", `${configPath} is missing`, { file: CONFIG_FILE });
  }
  const parsed = parseModelConfig(text);
  const present = new Set<string>();
  if (parsed.ok) {
    for (const candidate of [JAVASCRIPT_MODULE, pythonModulePath(parsed.config)]) {
      if (await isFile(path.join(root, candidate))) present.add(candidate);
    }
  }
  return modelPackageFrom(root, parsed, present);
}

/**
 * Decides how a package runs from its parsed config and which entry files it has (paths relative to the
 * package); pure so its rules are tested by table.
 */
export function modelPackageFrom(
  dir: string,
  parsed: ConfigOutcome,
  files: ReadonlySet<string>,
): ModelPackage<PackageKind> {
  if (!parsed.ok) {
    const where = parsed.key === DOCUMENT ? CONFIG_FILE : `${CONFIG_FILE}: ${parsed.key}`;
    throw new MeridianError("invalid_model_package", `${where} ${parsed.message}`, {
      file: CONFIG_FILE,
      key: parsed.key,
    });
  }
  const { config, ignored } = parsed;
  const entry = packageEntryPoint(config, (p) => files.has(p));
  if (!entry.ok) {
    throw new MeridianError("invalid_model_package", lowerFirst(entry.message), { file: MODEL_MODULE });
  }
  const kind = entry.entry;
  switch (kind.type) {
    case "custom_server":
      return { dir, config, kind, ignoredKeys: ignored };
    case "javascript":
    case "python":
      return { dir, config, kind: { ...kind, module: path.join(dir, kind.module) }, ignoredKeys: ignored };
  }
}

function lowerFirst(text: string): string {
  return text.replace(/^The /, "the ").replace(/\.$/, "");
}

/**
 * The variables the model's process gets: the package's `environment_variables` plus the replica's
 * identity. Unset identity fields are left out.
 */
export function modelEnvironment(
  config: ModelPackageConfig,
  identity: ReplicaIdentity,
): Record<string, string> {
  const vars: Record<string, string> = { ...config.environment_variables };
  if (identity.modelId !== null) vars["MERIDIAN_MODEL_ID"] = identity.modelId;
  if (identity.deploymentId !== null) vars["MERIDIAN_DEPLOYMENT_ID"] = identity.deploymentId;
  if (identity.environment !== null) vars["MERIDIAN_ENVIRONMENT"] = identity.environment;
  return vars;
}

/**
 * The full environment of a child model process: the inherited one without Meridian's own variables
 * (a model never sees the plane's settings or credentials), plus `modelEnvironment`.
 */
export function childEnvironment(
  inherited: Readonly<Record<string, string | undefined>>,
  vars: Readonly<Record<string, string>>,
): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(inherited)) {
    if (v !== undefined && !k.startsWith(RESERVED_VARIABLE_PREFIX)) env[k] = v;
  }
  return { ...env, ...vars };
}

async function isDirectory(p: string): Promise<boolean> {
  return (await stat(p).catch(() => null))?.isDirectory() ?? false;
}

async function isFile(p: string): Promise<boolean> {
  return (await stat(p).catch(() => null))?.isFile() ?? false;
}
