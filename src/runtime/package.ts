// A model package on disk: reads and validates config.yaml and decides how the model runs (a JavaScript
// `model/model.js` in this process, or a custom server started by `docker_server.start_command`).

import { readFile, stat } from "node:fs/promises";
import path from "node:path";
import { MeridianError } from "../core/errors.ts";
import {
  type ConfigOutcome,
  DOCUMENT,
  type DockerServerConfig,
  type ModelPackageConfig,
  parseModelConfig,
  RESERVED_VARIABLE_PREFIX,
} from "../core/model-config.ts";

export const CONFIG_FILE = "config.yaml";
export const MODEL_MODULE = path.join("model", "model.js");

export type ModelKind =
  | { type: "javascript"; module: string }
  | { type: "custom_server"; server: DockerServerConfig };

export interface ModelPackage {
  /** Absolute path of the package directory. */
  dir: string;
  config: ModelPackageConfig;
  kind: ModelKind;
  /** config.yaml keys that Meridian does not act on (truss keys such as `resources`). */
  ignoredKeys: string[];
}

/** Who a replica is serving for; each is null when the runtime runs on its own. */
export interface ReplicaIdentity {
  modelId: string | null;
  deploymentId: string | null;
  environment: string | null;
}

/** Reads a package directory; throws `invalid_model_package` naming the file and key at fault. */
export async function loadModelPackage(dir: string): Promise<ModelPackage> {
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
  return modelPackageFrom(root, parseModelConfig(text), await isFile(path.join(root, MODEL_MODULE)));
}

/** Decides how a package runs from its parsed config; pure so its rules are tested by table. */
export function modelPackageFrom(dir: string, parsed: ConfigOutcome, hasModelModule: boolean): ModelPackage {
  if (!parsed.ok) {
    const where = parsed.key === DOCUMENT ? CONFIG_FILE : `${CONFIG_FILE}: ${parsed.key}`;
    throw new MeridianError("invalid_model_package", `${where} ${parsed.message}`, {
      file: CONFIG_FILE,
      key: parsed.key,
    });
  }
  const { config, ignored } = parsed;
  if (config.docker_server !== null) {
    return {
      dir,
      config,
      kind: { type: "custom_server", server: config.docker_server },
      ignoredKeys: ignored,
    };
  }
  if (!hasModelModule) {
    throw new MeridianError(
      "invalid_model_package",
      `the package has neither ${MODEL_MODULE} nor docker_server.start_command in ${CONFIG_FILE}`,
      { file: MODEL_MODULE },
    );
  }
  return {
    dir,
    config,
    kind: { type: "javascript", module: path.join(dir, MODEL_MODULE) },
    ignoredKeys: ignored,
  };
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
