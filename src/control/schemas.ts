// JSON schemas of the management API's request bodies and parameters. Field names follow the reference;
// unlike it, unknown fields are refused (`additionalProperties: false`) so a typo is an error, not a no-op.

import { BACKPRESSURE_POLICIES } from "../core/autoscaling-settings.ts";
import { METRIC_MODES } from "../core/deployment-metrics.ts";
import {
  API_KEY_CATEGORIES,
  DEPLOYMENT_STATUSES,
  EGRESS_POLICIES,
  PROMOTION_CLEANUP_STRATEGIES,
  PROMOTION_STATUSES,
  REPLICA_STATES,
  STANDARD_ENDPOINT_POLICIES,
} from "../core/domain.ts";
import {
  LOG_LEVELS,
  MAX_LOG_FILTER_LENGTH,
  MAX_LOG_LIMIT,
  MAX_LOG_SUBSTRINGS,
  SORT_ORDERS,
} from "../core/log-query.ts";

/** `schema` or null; generic so the types derived from a schema (json-schema-to-ts) keep its shape. */
const nullable = <const S extends object>(schema: S) => ({ anyOf: [schema, { type: "null" }] }) as const;
const int = { type: "integer" } as const;
const str = { type: "string" } as const;
const bool = { type: "boolean" } as const;

// Types only: the ranges are checked by src/core/autoscaling-settings.ts, whose 400 names the rule broken.
export const autoscalingUpdate = {
  type: "object",
  additionalProperties: false,
  properties: {
    min_replica: nullable(int),
    max_replica: nullable(int),
    autoscaling_window: nullable(int),
    scale_down_delay: nullable(int),
    concurrency_target: nullable(int),
    target_utilization_percentage: nullable(int),
    target_in_flight_tokens: nullable(int),
    max_scale_down_rate: nullable(int),
  },
} as const;

export const promotionSettingsUpdate = {
  type: "object",
  additionalProperties: false,
  properties: {
    redeploy_on_promotion: nullable(bool),
    rolling_deploy: nullable(bool),
    promotion_cleanup_strategy: nullable({ type: "string", enum: PROMOTION_CLEANUP_STRATEGIES }),
    rolling_deploy_config: { type: "null" },
    ramp_up_while_promoting: nullable(bool),
    ramp_up_duration_seconds: nullable(int),
  },
} as const;

// UpdateRequestBackpressureSettingsV1: `policy` absent or null clears it (docs/autoscaling.md).
const backpressureUpdate = {
  type: "object",
  additionalProperties: false,
  properties: { policy: nullable({ type: "string", enum: BACKPRESSURE_POLICIES }) },
} as const;

export const createEnvironmentBody = {
  type: "object",
  additionalProperties: false,
  required: ["name"],
  properties: {
    name: str,
    autoscaling_settings: nullable(autoscalingUpdate),
    promotion_settings: nullable(promotionSettingsUpdate),
    request_backpressure_settings: nullable(backpressureUpdate),
  },
} as const;

export const updateEnvironmentBody = {
  type: "object",
  additionalProperties: false,
  properties: {
    autoscaling_settings: nullable(autoscalingUpdate),
    promotion_settings: nullable(promotionSettingsUpdate),
    request_backpressure_settings: nullable(backpressureUpdate),
  },
} as const;

export const promoteToEnvironmentBody = {
  type: "object",
  additionalProperties: false,
  required: ["deployment_id"],
  properties: {
    deployment_id: { type: "string", minLength: 1 },
    scale_down_previous_deployment: bool,
    preserve_env_instance_type: bool,
    // Meridian's extension: answer what the promotion would do (PromotionDryRunV1), changing nothing.
    dry_run: bool,
  },
} as const;

export const promoteBody = {
  type: "object",
  additionalProperties: false,
  properties: { scale_down_previous_production: bool, preserve_env_instance_type: bool, dry_run: bool },
} as const;

const deploymentPayload = {
  type: "object",
  additionalProperties: false,
  required: ["config"],
  properties: {
    config: { type: "object" },
    raw_config: nullable(str),
    user_env: nullable({ type: "object" }),
    environment_name: nullable(str),
    preserve_env_instance_type: bool,
    deploy_timeout_minutes: nullable({ type: "integer", minimum: 10, maximum: 1440 }),
    deployment_name: nullable({ type: "string", minLength: 1, maxLength: 255, pattern: "^[A-Za-z0-9._-]+$" }),
    labels: nullable({ type: "object" }),
    is_development: bool,
  },
} as const;

export const createModelBody = {
  type: "object",
  additionalProperties: false,
  required: ["source"],
  properties: {
    source: {
      type: "object",
      additionalProperties: false,
      required: ["kind", "name", "deployment"],
      properties: {
        kind: { const: "model_archive" },
        name: { type: "string", minLength: 1, maxLength: 255 },
        deployment: deploymentPayload,
        s3_key: nullable(str),
        disable_archive_download: bool,
      },
    },
  },
} as const;

export const createDeploymentBody = {
  type: "object",
  additionalProperties: false,
  required: ["source"],
  properties: {
    source: {
      type: "object",
      additionalProperties: false,
      required: ["kind", "deployment"],
      properties: { kind: { const: "model_archive" }, deployment: deploymentPayload, s3_key: nullable(str) },
    },
  },
} as const;

export const updateDeploymentBody = {
  type: "object",
  additionalProperties: false,
  properties: {
    name: nullable({ type: "string", minLength: 1, maxLength: 255, pattern: "^[A-Za-z0-9._-]+$" }),
  },
} as const;

/**
 * PrepareModelUploadRequestV1: `deployment` as at commit, and exactly one of `name` (a new model, in
 * `team_id` or the default team) or `model_id` (a new deployment); that rule is checked by the handler, so
 * its refusal can name it.
 */
export const prepareUploadBody = {
  type: "object",
  additionalProperties: false,
  required: ["deployment"],
  properties: {
    deployment: deploymentPayload,
    name: nullable({ type: "string", minLength: 1, maxLength: 255 }),
    team_id: nullable(str),
    model_id: nullable(str),
    dry_run: bool,
  },
} as const;

export const updateGroupBody = {
  type: "object",
  additionalProperties: false,
  properties: {
    manage_access: nullable({
      type: "object",
      additionalProperties: false,
      required: ["is_restricted"],
      properties: { is_restricted: bool, user_ids: { type: "array", items: str, maxItems: 1000 } },
    }),
    region_restriction: nullable({
      type: "object",
      additionalProperties: false,
      required: ["region"],
      properties: {
        region: str,
        standard_endpoint_policy: { type: "string", enum: STANDARD_ENDPOINT_POLICIES },
      },
    }),
    // Meridian's extension: `deny` seals the group's replicas off the network (DESIGN.md §2.8).
    egress: { type: "string", enum: EGRESS_POLICIES },
  },
} as const;

export const createApiKeyBody = {
  type: "object",
  additionalProperties: false,
  required: ["type"],
  properties: {
    name: nullable({ type: "string", maxLength: 200 }),
    type: { type: "string", enum: API_KEY_CATEGORIES },
    model_ids: nullable({ type: "array", items: str, maxItems: 1000 }),
    // Meridian's extension: the regions whose planes may authenticate the key for inference.
    regions: nullable({ type: "array", items: str, maxItems: 100 }),
  },
} as const;

export const createRegionBody = {
  type: "object",
  additionalProperties: false,
  required: ["slug", "display_name"],
  properties: {
    slug: { type: "string", maxLength: 32 },
    display_name: { type: "string", minLength: 1, maxLength: 100 },
  },
} as const;

export const registerPlaneBody = {
  type: "object",
  additionalProperties: false,
  required: ["name", "region", "ingress", "capacity"],
  properties: {
    name: { type: "string", maxLength: 32 },
    region: str,
    ingress: { type: "array", items: str, minItems: 1, maxItems: 16 },
    capacity: { type: "integer", minimum: 0, maximum: 100000 },
    global_ingress: bool,
  },
} as const;

export const updatePlaneBody = {
  type: "object",
  additionalProperties: false,
  properties: {
    ingress: { type: "array", items: str, minItems: 1, maxItems: 16 },
    capacity: { type: "integer", minimum: 0, maximum: 100000 },
    global_ingress: bool,
  },
} as const;

export const createTeamBody = {
  type: "object",
  additionalProperties: false,
  required: ["name"],
  properties: { name: { type: "string", minLength: 1, maxLength: 100 } },
} as const;

export const createUserBody = {
  type: "object",
  additionalProperties: false,
  required: ["email"],
  properties: {
    email: { type: "string", minLength: 3, maxLength: 254, pattern: "^[^@\\s]+@[^@\\s]+$" },
    name: nullable({ type: "string", maxLength: 200 }),
    is_org_admin: bool,
    teams: {
      type: "array",
      maxItems: 100,
      items: {
        type: "object",
        additionalProperties: false,
        required: ["team_id", "role"],
        properties: { team_id: str, role: { type: "string", enum: ["TEAM_ADMIN", "MEMBER"] } },
      },
    },
  },
} as const;

const planeLoad = {
  type: "object",
  additionalProperties: false,
  required: ["epoch", "at", "deployments"],
  properties: {
    epoch: { type: "string", maxLength: 40, pattern: "^\\d{4}-\\d{2}-\\d{2}T[0-9:.]+Z$" },
    at: { type: "string", maxLength: 40, pattern: "^\\d{4}-\\d{2}-\\d{2}T[0-9:.]+Z$" },
    deployments: {
      type: "array",
      maxItems: 100000,
      items: {
        type: "object",
        additionalProperties: false,
        required: ["deployment_id", "in_flight", "request_ms", "last_request_at"],
        properties: {
          deployment_id: { type: "string", maxLength: 64 },
          in_flight: { type: "integer", minimum: 0, maximum: 1e9 },
          request_ms: { type: "integer", minimum: 0, maximum: Number.MAX_SAFE_INTEGER },
          last_request_at: nullable({ type: "string", maxLength: 40 }),
        },
      },
    },
  },
} as const;

export const planeReportBody = {
  type: "object",
  additionalProperties: false,
  required: ["revision", "replicas", "request_counts"],
  properties: {
    revision: { type: "integer", minimum: 0 },
    admin_url: nullable({ type: "string", maxLength: 2048, pattern: "^https?://[^/?#\\s]+$" }),
    // The plane's raw Ed25519 public key, base64url: 32 bytes, so the last character carries 2 bits.
    public_key: { type: "string", pattern: "^[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]$" },
    // When the plane first had that key: an RFC 3339 UTC time, as toISOString writes it.
    key_created_at: {
      type: "string",
      maxLength: 40,
      pattern: "^\\d{4}-\\d{2}-\\d{2}T\\d{2}:\\d{2}:\\d{2}(\\.\\d{1,9})?Z$",
    },
    sandbox: {
      type: "object",
      additionalProperties: false,
      required: ["mode", "detail"],
      properties: {
        mode: { type: "string", enum: ["bwrap", "none", "unavailable"] },
        detail: nullable({ type: "string", maxLength: 4096 }),
      },
    },
    replicas: {
      type: "array",
      maxItems: 100000,
      items: {
        type: "object",
        additionalProperties: false,
        required: ["id", "deployment_id", "state", "message", "restarts"],
        properties: {
          id: str,
          deployment_id: str,
          // A superset of what older planes report: their reports still validate.
          state: { type: "string", enum: REPLICA_STATES },
          message: nullable({ type: "string", maxLength: 8192 }),
          restarts: { type: "integer", minimum: 0 },
        },
      },
    },
    load: planeLoad,
    request_counts: {
      type: "array",
      maxItems: 100000,
      items: {
        type: "object",
        additionalProperties: false,
        required: ["model_id", "environment", "status_class", "count"],
        properties: {
          model_id: str,
          environment: nullable(str),
          status_class: { type: "string", pattern: "^[1-5]xx$" },
          count: { type: "integer", minimum: 0 },
        },
      },
    },
  },
} as const;

export const planeWakeBody = {
  type: "object",
  additionalProperties: false,
  required: ["deployment_id", "load"],
  properties: {
    deployment_id: { type: "string", minLength: 1, maxLength: 64 },
    load: planeLoad,
  },
} as const;

export const longPollQuery = {
  type: "object",
  additionalProperties: false,
  properties: {
    after: { type: "string", pattern: "^[0-9]{1,15}$" },
    wait: { type: "string", pattern: "^[0-9]{1,3}$" },
  },
} as const;

export const auditQuery = {
  type: "object",
  additionalProperties: false,
  properties: {
    limit: { type: "string", pattern: "^[0-9]{1,4}$" },
    cursor: { type: "string", pattern: "^[0-9]{1,15}$" },
  },
} as const;

export const modelsQuery = {
  type: "object",
  additionalProperties: false,
  properties: { name: str },
} as const;

// —— replica logs and deployment metrics (Baseten's GetDeploymentLogsRequestV1 and the routes' queries) ——

/** Epoch milliseconds in a query string: digits only (the app coerces nothing). */
const epochDigits = { type: "string", pattern: "^[0-9]{1,15}$" } as const;
const logFilter = { type: "string", maxLength: MAX_LOG_FILTER_LENGTH } as const;
const substrings = { type: "array", maxItems: MAX_LOG_SUBSTRINGS, items: str } as const;
/** A query key given once is a string, given several times an array. */
const oneOrMany = <const S extends object, const A extends object>(one: S, many: A) =>
  ({ anyOf: [one, many] }) as const;

export const logsQuery = {
  type: "object",
  additionalProperties: false,
  properties: {
    start_epoch_millis: epochDigits,
    end_epoch_millis: epochDigits,
    direction: { type: "string", enum: SORT_ORDERS },
    limit: { type: "string", pattern: "^[0-9]{1,4}$" },
    min_level: { type: "string", enum: LOG_LEVELS },
    replica: logFilter,
    request_id: logFilter,
    component: logFilter,
    search_pattern: logFilter,
    includes: oneOrMany(str, substrings),
    excludes: oneOrMany(str, substrings),
  },
} as const;

/** The POST form's body: the same fields as JSON, null meaning absent. */
export const deploymentLogsBody = {
  type: "object",
  additionalProperties: false,
  properties: {
    start_epoch_millis: nullable({ type: "integer", minimum: 0, maximum: 8_640_000_000_000_000 }),
    end_epoch_millis: nullable({ type: "integer", minimum: 0, maximum: 8_640_000_000_000_000 }),
    direction: nullable({ type: "string", enum: SORT_ORDERS }),
    limit: nullable({ type: "integer", minimum: 1, maximum: MAX_LOG_LIMIT }),
    min_level: nullable({ type: "string", enum: LOG_LEVELS }),
    replica: nullable(logFilter),
    request_id: nullable(logFilter),
    component: nullable(logFilter),
    search_pattern: nullable(logFilter),
    includes: substrings,
    excludes: substrings,
  },
} as const;

const metricName = { type: "string", minLength: 1, maxLength: 128 } as const;

export const metricsQuery = {
  type: "object",
  additionalProperties: false,
  properties: {
    mode: { type: "string", enum: METRIC_MODES },
    start_epoch_millis: epochDigits,
    end_epoch_millis: epochDigits,
    metrics: oneOrMany(metricName, { type: "array", maxItems: 16, items: metricName }),
  },
} as const;

/**
 * UpsertSecretRequestV1. The name's rule and the value's size are checked by the handler
 * (src/core/secrets.ts), so each gets its own error code and message.
 */
export const upsertSecretBody = {
  type: "object",
  additionalProperties: false,
  required: ["name", "value"],
  properties: { name: str, value: str },
} as const;

// —— answers of Meridian's own shape ——

const COPY_REASONS = ["region", "egress", "bound_elsewhere", "redeploy_on_promotion", "development"] as const;
/** An object whose every field is present (null where it does not apply), and no other. */
const required = <const P extends Record<string, object>>(properties: P) =>
  ({
    type: "object",
    additionalProperties: false,
    required: Object.keys(properties) as Array<keyof P & string>,
    properties,
  }) as const;

/**
 * The answer to a promote route with `dry_run: true` (Meridian's extension; the promote routes answer the
 * reference's DeploymentV1 otherwise). Published as a component of /v1/spec and checked against answers
 * by the tests.
 */
export const promotionDryRunSchema = required({
  dry_run: { const: true },
  model_id: str,
  environment: str,
  /** The deployment named (an alias resolved), as it is now. */
  source: { $ref: "#/components/schemas/DeploymentV1" },
  outcome: { type: "string", enum: ["promote", "already_current", "refused"] },
  message: str,
  refusal: nullable(
    required({ error_code: { type: "string", enum: ["promotion_in_progress", "conflict"] }, error: str }),
  ),
  in_flight_promotion: nullable(
    required({
      id: str,
      status: { type: "string", enum: PROMOTION_STATUSES },
      source_deployment_id: str,
      candidate_deployment_id: str,
      created_at: str,
    }),
  ),
  candidate: nullable(
    required({
      kind: { type: "string", enum: ["reuse", "copy"] },
      reason: { type: "string", enum: ["reuse", ...COPY_REASONS] },
      reasons: { type: "array", items: { type: "string", enum: COPY_REASONS } },
      deployment_id: nullable(str),
      name: str,
      copied_from: nullable(str),
      region: nullable(str),
      egress: { type: "string", enum: EGRESS_POLICIES },
      wakes: bool,
      status: { type: "string", enum: DEPLOYMENT_STATUSES },
      status_message: nullable(str),
      bound_environments: { type: "array", items: str },
    }),
  ),
  placement: nullable(
    required({
      region: nullable(str),
      replicas: int,
      planes: {
        type: "array",
        items: required({ name: str, region: str, replicas: int }),
      },
      unplaced: int,
      has_capacity: bool,
    }),
  ),
  switches: nullable({ type: "string", enum: ["at_once", "when_ready"] }),
  previous_deployment: nullable(
    required({
      id: str,
      fate: { type: "string", enum: ["keep", "scale_to_zero", "deactivate"] },
      cleanup_strategy: { type: "string", enum: PROMOTION_CLEANUP_STRATEGIES },
    }),
  ),
});
