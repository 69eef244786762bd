// What the truss CLI's push mutations and `truss_validation` carry, checked and translated without I/O: the
// arguments of `create_model_from_truss`, `create_model_version_from_truss` and `deploy_draft_truss` into
// the deployment payload the REST push takes (`../models.ts`), and a base64 JSON truss config judged by the
// package check's rules for config.yaml (`../../core/model-config.ts`), so validation says what the build will.

import { MeridianError } from "../../core/errors.ts";
import { parseModelConfig } from "../../core/model-config.ts";
import { parseSecretsConfig } from "../../core/secrets.ts";
import type { DeploymentPayload } from "../models.ts";

/** The arguments the three push mutations share (docs/truss-cli.md; the CLI's `truss/remote/baseten/api.py`). */
export interface TrussPushArgs {
  s3_key: string;
  config: string;
  semver_bump?: string | null;
  truss_user_env?: string | null;
  model_origin?: "BASETEN" | "CHAINS" | null;
  deploy_timeout_minutes?: number | null;
  /** The `JSONString` scalar, already parsed into the JSON value it holds. */
  user_deploy_metadata?: unknown;
  raw_config?: string | null;
  allow_truss_download?: boolean | null;
  environment_name?: string | null;
  preserve_env_instance_type?: boolean | null;
  scale_down_old_production?: boolean | null;
}

/** Which mutation: the deployment name is `version_name` on a new model and `name` on a new version. */
export type PushKind =
  | { kind: "new_model"; deployment_name: string | null | undefined }
  | { kind: "new_version"; deployment_name: string | null | undefined }
  | { kind: "development" };

export const SEMVER_BUMPS = ["MAJOR", "MINOR", "PATCH"] as const;
/** truss's bounds for `--deploy-timeout-minutes`, and Baseten's for `deploy_timeout_minutes`. */
export const DEPLOY_TIMEOUT_MINUTES = { min: 10, max: 1440 } as const;
/** The REST push's rule for deployment names (`../schemas.ts` `deploymentPayload`), and truss's. */
const DEPLOYMENT_NAME = /^[A-Za-z0-9._-]{1,255}$/;
const S3_KEY_MAX = 1024;
const USER_ENV_MAX = 64 * 1024;

function refuse(field: string, rule: string, message: string): never {
  throw new MeridianError("invalid_request", message, { field, rule });
}

/** Strict RFC 4648 §4 base64 (the alphabet, padding, a length that is a multiple of four), decoded. */
export function decodeBase64(value: string): Buffer | null {
  if (value.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(value)) return null;
  return Buffer.from(value, "base64");
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

export type ConfigDecode =
  | { ok: true; config: Record<string, unknown>; json: string }
  | { ok: false; rule: "base64" | "json" | "object"; message: string };

/** `config` as the CLI sends it: the base64 of `json.dumps(config.to_dict())`. */
export function decodeTrussConfig(value: string): ConfigDecode {
  const bytes = decodeBase64(value);
  if (bytes === null) return { ok: false, rule: "base64", message: "config is not base64 (RFC 4648)." };
  const json = bytes.toString("utf8");
  let parsed: unknown;
  try {
    parsed = JSON.parse(json);
  } catch {
    return { ok: false, rule: "json", message: "config is base64, but not of a JSON document." };
  }
  if (!isPlainObject(parsed)) {
    return {
      ok: false,
      rule: "object",
      message: "config must be the base64 of a JSON object (truss's config).",
    };
  }
  return { ok: true, config: parsed, json };
}

/**
 * The deployment payload of a truss push, with every argument checked. Arguments Meridian has nothing to
 * do with are checked and then dropped: `semver_bump` (deployments have no semantic version),
 * `allow_truss_download` (there is no package download API to gate), `preserve_env_instance_type` (every
 * replica runs in the one `meridian-cpu` slot), `deploy_timeout_minutes` (as on the REST push).
 */
export function pushPayload(args: TrussPushArgs, which: PushKind): DeploymentPayload {
  if (args.s3_key.length === 0 || args.s3_key.length > S3_KEY_MAX) {
    refuse("s3_key", "length", `s3_key must be 1 to ${S3_KEY_MAX} characters: the key of an upload.`);
  }
  const config = decodeTrussConfig(args.config);
  if (!config.ok) refuse("config", config.rule, config.message);
  if (args.model_origin === "CHAINS") {
    refuse("model_origin", "chains", "Chains are not supported by Meridian: push the models one by one.");
  }
  if (
    args.semver_bump !== undefined &&
    args.semver_bump !== null &&
    !(SEMVER_BUMPS as readonly string[]).includes(args.semver_bump)
  ) {
    refuse("semver_bump", "enum", `semver_bump is one of ${SEMVER_BUMPS.join(", ")}.`);
  }
  const timeout = args.deploy_timeout_minutes;
  if (timeout !== undefined && timeout !== null) {
    if (timeout < DEPLOY_TIMEOUT_MINUTES.min || timeout > DEPLOY_TIMEOUT_MINUTES.max) {
      refuse(
        "deploy_timeout_minutes",
        "range",
        `deploy_timeout_minutes must be from ${DEPLOY_TIMEOUT_MINUTES.min} to ${DEPLOY_TIMEOUT_MINUTES.max}.`,
      );
    }
  }
  if (args.truss_user_env !== undefined && args.truss_user_env !== null) {
    let env: unknown = null;
    try {
      env = args.truss_user_env.length <= USER_ENV_MAX ? JSON.parse(args.truss_user_env) : null;
    } catch {}
    if (!isPlainObject(env)) {
      refuse(
        "truss_user_env",
        "json_object",
        `truss_user_env must be a JSON object of at most ${USER_ENV_MAX} bytes.`,
      );
    }
  }
  const labels = args.user_deploy_metadata;
  if (labels !== undefined && labels !== null && !isPlainObject(labels)) {
    refuse("user_deploy_metadata", "object", "user_deploy_metadata (--labels) must be a JSON object.");
  }
  // Baseten keeps raw_config best-effort ("invalid raw configs are logged and dropped"); the package's own
  // config.yaml is what a deployment runs, so an unreadable one is dropped, never a failure.
  const raw = args.raw_config ? decodeBase64(args.raw_config) : null;
  const payload: DeploymentPayload = {
    config: config.config,
    raw_config: raw === null ? null : raw.toString("utf8"),
    labels: isPlainObject(labels) ? labels : null,
  };
  if (which.kind === "development") return { ...payload, is_development: true };
  const name = which.deployment_name;
  if (name !== undefined && name !== null && !DEPLOYMENT_NAME.test(name)) {
    refuse(
      which.kind === "new_model" ? "version_name" : "name",
      "pattern",
      "A deployment name is 1 to 255 letters, digits, '.', '_' and '-'.",
    );
  }
  return {
    ...payload,
    environment_name: args.environment_name ?? null,
    deployment_name: name ?? null,
    // `--preserve-previous-production-deployment` sends false: the environment's previous deployment is
    // kept running (cleanup KEEP) instead of the environment's promotion_cleanup_strategy.
    ...(args.scale_down_old_production === false ? { scale_down_previous: false } : {}),
  };
}

/**
 * truss's defaults for the keys its `TrussConfig.to_dict()` always sends and Meridian does not act on. A
 * key left at its default says nothing, so it is not warned about; one that differs is.
 */
const TRUSS_DEFAULTS: Record<string, unknown> = {
  description: null,
  examples_filename: "examples.yaml",
  base_image: null,
  system_packages: [],
  resources: { cpu: "1", memory: "2Gi", accelerator: null, use_gpu: false },
  build: { model_server: "TrussServer", arguments: {}, secret_to_path_mapping: {}, no_cache: false },
  build_commands: [],
  model_cache: [],
  weights: [],
  trt_llm: null,
  training_checkpoints: null,
  bis_llm: null,
  input_type: "Any",
  model_framework: "custom",
  model_type: "Model",
  use_local_src: false,
  cache_internal: [],
  live_reload: false,
  apply_library_patches: true,
  spec_version: "2.0",
  hf_cache: null,
  "runtime.streaming_read_timeout": 60,
  "runtime.enable_tracing_data": false,
  "runtime.enable_debug_logs": false,
  "runtime.transport": { kind: "http" },
  "runtime.is_websocket_endpoint": false,
  "runtime.health_checks": {
    restart_check_delay_seconds: null,
    restart_threshold_seconds: null,
    stop_traffic_threshold_seconds: null,
    startup_threshold_seconds: null,
  },
  "runtime.oidc": { enabled: null },
  "runtime.remote_ssh": { enabled: false },
  "runtime.egress_restrictions": null,
  "runtime.truss_server_version_override": null,
};

/** Why a key that differs from truss's default is ignored, where there is more to say than that. */
const IGNORED_BECAUSE: Record<string, string> = {
  resources:
    "every replica runs in one slot of a plane (instance type meridian-cpu); requested CPU, memory and GPUs are not applied",
  system_packages: "Meridian builds no image, so system packages are not installed",
  base_image: "Meridian builds no image; replicas run on the plane's own interpreter",
  build_commands: "Meridian builds no image, so build commands are not run",
  model_cache: "Meridian downloads nothing at build or serving time; put files under data/ in the package",
  weights: "Meridian downloads nothing at build or serving time; put files under data/ in the package",
  trt_llm: "TensorRT-LLM engines are not supported",
  bis_llm: "Baseten's inference stack for LLMs is not supported",
  "runtime.transport": "only HTTP is served",
};

function sameJson(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (Array.isArray(a) || Array.isArray(b)) {
    return (
      Array.isArray(a) && Array.isArray(b) && a.length === b.length && a.every((x, i) => sameJson(x, b[i]))
    );
  }
  if (!isPlainObject(a) || !isPlainObject(b)) return false;
  const keys = Object.keys(a);
  return keys.length === Object.keys(b).length && keys.every((k) => k in b && sameJson(a[k], b[k]));
}

/** What an empty value of a key looks like: nothing worth a warning when truss has no default for it. */
function isEmpty(value: unknown): boolean {
  if (value === null || value === false || value === "") return true;
  if (Array.isArray(value)) return value.length === 0;
  return isPlainObject(value) && Object.keys(value).length === 0;
}

export interface TrussValidation {
  success: boolean;
  errors: string[];
  warnings: string[];
}

/**
 * `truss_validation`: the config (base64 JSON) judged by the rules the push's package check applies to
 * config.yaml; every fault is an error (the CLI then aborts), and every key Meridian ignores that is not
 * at truss's default is a warning (the CLI prints it and pushes).
 */
export function validateTrussConfig(encoded: string | null | undefined): TrussValidation {
  if (encoded === undefined || encoded === null || encoded === "") {
    return {
      success: false,
      errors: ["config is required: the base64 of the truss config as JSON."],
      warnings: [],
    };
  }
  const decoded = decodeTrussConfig(encoded);
  if (!decoded.ok) return { success: false, errors: [decoded.message], warnings: [] };
  // JSON is YAML 1.2 (§1.3), inside the subset config.yaml is parsed with: one parser, one set of rules.
  const parsed = parseModelConfig(decoded.json);
  if (!parsed.ok) return { success: false, errors: [`${parsed.key}: ${parsed.message}`], warnings: [] };
  const secrets = parseSecretsConfig(decoded.config["secrets"]);
  if (!secrets.ok) return { success: false, errors: [`${secrets.key}: ${secrets.message}`], warnings: [] };
  const runtime = isPlainObject(decoded.config["runtime"]) ? decoded.config["runtime"] : {};
  const warnings: string[] = [];
  for (const key of parsed.ignored) {
    const value = key.startsWith("runtime.") ? runtime[key.slice("runtime.".length)] : decoded.config[key];
    const unchanged = key in TRUSS_DEFAULTS ? sameJson(value, TRUSS_DEFAULTS[key]) : isEmpty(value);
    if (unchanged) continue;
    const why = IGNORED_BECAUSE[key] ?? "Meridian does not act on it";
    warnings.push(`${key} is ignored: ${why}.`);
  }
  return { success: true, errors: [], warnings };
}
