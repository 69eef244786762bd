// The one catalog of Meridian's stable error codes: each code's HTTP status and default message.
// Codes are never reused or renamed; `docs/errors.md` is kept in step by `errors.test.ts`.
// The wire shape is the inference reference's ErrorResponse: {"error", "error_code", "detail"}.

export const ERRORS = {
  // Request shape (400, 404, 405, 408, 413, 415, 417, 431)
  invalid_request: { status: 400, message: "The request is not valid." },
  invalid_json: { status: 400, message: "The request body is not valid JSON." },
  invalid_environment_name: { status: 400, message: "The environment name is not valid." },
  invalid_model_id: { status: 400, message: "The model id is not valid." },
  invalid_model_package: { status: 400, message: "The model package is not valid." },
  invalid_secret_name: { status: 400, message: "The secret name is not valid." },
  invalid_secret_value: { status: 400, message: "The secret's value is empty or too large." },
  invalid_host: { status: 400, message: "The Host header does not name a Meridian endpoint." },
  unknown_host: { status: 404, message: "No endpoint is served at this hostname." },
  route_not_found: { status: 404, message: "No such route." },
  method_not_allowed: { status: 405, message: "This method is not allowed on this route." },
  request_timeout: { status: 408, message: "The request was not received in time." },
  payload_too_large: { status: 413, message: "The request body is too large." },
  expectation_failed: {
    status: 417,
    message: "The request's Expect header names an unsupported expectation.",
  },
  headers_too_large: { status: 431, message: "The request header fields are too large." },
  unsupported_media_type: { status: 415, message: "The request body's content type is not supported." },
  invalid_query: { status: 400, message: "The GraphQL request is not valid." },
  query_too_complex: { status: 400, message: "The GraphQL document exceeds a limit." },

  // Identity (401, 403)
  unauthorized: { status: 401, message: "A valid API key is required." },
  forbidden: { status: 403, message: "This API key may not perform this action." },
  environment_restricted: {
    status: 403,
    message: "Only the environment group's listed users and admins may manage this environment.",
  },
  standard_endpoint_denied: {
    status: 403,
    message: "This environment is regional; call its regional endpoint instead.",
  },
  hop_invalid: {
    status: 403,
    message: "The plane-to-plane hop is not valid.",
  },
  hop_replayed: {
    status: 403,
    message: "This plane-to-plane hop was received before; a hop is accepted once.",
  },
  key_region_forbidden: {
    status: 403,
    message: "This API key is bound to other regions; it may call inference only on planes of its regions.",
  },

  // Resources (404, 409)
  not_found: { status: 404, message: "Not found." },
  team_not_found: { status: 404, message: "Team not found." },
  user_not_found: { status: 404, message: "User not found." },
  model_not_found: { status: 404, message: "Model not found." },
  deployment_not_found: { status: 404, message: "Deployment not found." },
  environment_not_found: { status: 404, message: "Environment not found." },
  environment_group_not_found: { status: 404, message: "Environment group not found." },
  region_not_found: { status: 404, message: "Region not found." },
  plane_not_found: { status: 404, message: "Workload plane not found." },
  api_key_not_found: { status: 404, message: "API key not found." },
  artifact_not_found: { status: 404, message: "Artifact not found." },
  secret_not_found: { status: 404, message: "Secret not found." },
  replica_not_found: { status: 404, message: "Replica not found on this plane." },
  async_request_not_found: { status: 404, message: "No async request with this id exists for this model." },
  webhook_secret_not_found: { status: 404, message: "Webhook secret not found." },
  regional_path_not_allowed: {
    status: 404,
    message: "A regional hostname serves only POST /predict; path-based routes are refused here.",
  },
  environment_not_regional: {
    status: 404,
    message: "This environment has no region restriction, so it has no regional endpoint.",
  },
  conflict: { status: 409, message: "The request conflicts with the current state." },
  model_name_taken: { status: 409, message: "A model with this name already exists in the team." },
  environment_exists: { status: 409, message: "An environment with this name already exists on the model." },
  region_exists: { status: 409, message: "A region with this slug already exists." },
  plane_exists: { status: 409, message: "A workload plane with this name already exists." },
  promotion_in_progress: {
    status: 409,
    message: "A promotion into this environment is already in progress.",
  },
  no_promotion_in_progress: { status: 409, message: "No promotion into this environment is in progress." },
  environment_protected: { status: 409, message: "The production environment cannot be deleted." },
  deployment_in_use: { status: 409, message: "The deployment is serving an environment." },
  artifact_checksum_mismatch: { status: 409, message: "The uploaded artifact does not match its checksum." },
  artifact_missing: { status: 409, message: "The model archive has not been uploaded." },
  secret_in_use: { status: 409, message: "Deployments that run or may wake use this secret." },
  secret_missing: {
    status: 409,
    message: "The deployment names a secret its team does not have.",
  },
  plane_key_retired: {
    status: 409,
    message: "The plane reported a key that was retired; a retired key is never trusted again.",
  },

  // Serving (412, 421, 429, 5xx)
  model_definition_error: { status: 412, message: "The model does not meet the truss Model contract." },
  misdirected_request: {
    status: 421,
    message: "This plane does not serve this hostname's region; call an ingress of the environment's region.",
  },
  websocket_upgrade_required: {
    status: 426,
    message: "This route is a websocket: send GET with Upgrade: websocket (RFC 6455, version 13).",
  },
  rate_limited: { status: 429, message: "Too many requests." },
  backpressure_full: {
    status: 429,
    message:
      "The environment is at capacity: its ready replicas are full (REJECT_ON_FULL) or this ingress holds as many of its requests as it may; retry after Retry-After seconds.",
  },
  async_queue_full: { status: 429, message: "This plane's async queue is full; retry with backoff." },
  internal_error: { status: 500, message: "Internal error." },
  replica_failed: { status: 502, message: "The model replica failed while processing the request." },
  model_unavailable: { status: 503, message: "No replica is ready to serve this request." },
  service_unavailable: { status: 503, message: "The service is not available." },
  store_unavailable: {
    status: 503,
    message:
      "The control plane's database is unreachable; planes keep serving from their last configuration. Retry later.",
  },
  upstream_timeout: { status: 504, message: "The model did not answer in time." },
} as const satisfies Record<string, { status: number; message: string }>;

export type ErrorCode = keyof typeof ERRORS;

/** The JSON error body of every Meridian HTTP surface. */
export interface ErrorBody {
  error: string;
  error_code: ErrorCode;
  detail: unknown;
}

export function errorBody(code: ErrorCode, message?: string, detail: unknown = null): ErrorBody {
  return { error: message ?? ERRORS[code].message, error_code: code, detail };
}

export function errorStatus(code: ErrorCode): number {
  return ERRORS[code].status;
}

/**
 * An expected failure crossing a layer that cannot return an outcome (a fastify handler, a CLI action).
 * Domain functions return typed outcomes; the shell throws this and one handler maps it.
 */
export class MeridianError extends Error {
  readonly code: ErrorCode;
  readonly detail: unknown;

  constructor(code: ErrorCode, message?: string, detail: unknown = null) {
    super(message ?? ERRORS[code].message);
    this.name = "MeridianError";
    this.code = code;
    this.detail = detail;
  }

  get status(): number {
    return ERRORS[this.code].status;
  }

  toBody(): ErrorBody {
    return errorBody(this.code, this.message, this.detail);
  }
}
