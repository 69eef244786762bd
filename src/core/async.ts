// Async inference as the inference reference shapes it (`/async_predict`, `/async_request/{id}`,
// `/async_queue_status`): the request body's rules, the status vocabulary, request ids that name the plane
// holding the request, the retry schedule, and the webhook's payload and Baseten's signature over it. Pure:
// the queue that keeps requests on a plane of their region is src/plane/async-queue.ts.

import { createHash, createHmac, timingSafeEqual } from "node:crypto";

/** The reference's limit on an `/async_predict` body (AsyncPredictInput: "256 KiB"). */
export const ASYNC_MAX_INPUT_BYTES = 256 * 1024;

export const ASYNC_PRIORITIES = [0, 1, 2] as const;
export const MAX_TIME_IN_QUEUE = { min: 10, max: 259_200, default: 600 } as const;
export const RETRY_LIMITS = {
  max_attempts: { min: 1, max: 10, default: 3 },
  initial_delay_ms: { min: 0, max: 10_000, default: 1_000 },
  max_delay_ms: { min: 0, max: 60_000, default: 5_000 },
} as const;

/** AsyncRequestStatusResponse.status. */
export type AsyncStatus =
  | "QUEUED"
  | "IN_PROGRESS"
  | "SUCCEEDED"
  | "FAILED"
  | "EXPIRED"
  | "CANCELED"
  | "WEBHOOK_FAILED";

/** AsyncRequestStatusResponse.webhook_status. */
export type WebhookStatus = "PENDING" | "SUCCEEDED" | "FAILED" | "CANCELED" | "NO_WEBHOOK_PROVIDED";

/** AsyncRequestError.code. */
export type AsyncErrorCode =
  | "MODEL_PREDICT_ERROR"
  | "MODEL_PREDICT_TIMEOUT"
  | "MODEL_NOT_READY"
  | "MODEL_DOES_NOT_EXIST"
  | "MODEL_UNAVAILABLE"
  | "MODEL_INVALID_INPUT"
  | "ASYNC_REQUEST_NOT_SUPPORTED"
  | "INTERNAL_SERVER_ERROR";

export interface AsyncError {
  code: AsyncErrorCode;
  message: string;
}

export interface RetryConfig {
  max_attempts: number;
  initial_delay_ms: number;
  max_delay_ms: number;
}

/** An accepted `/async_predict` body, defaults applied. */
export interface AsyncPredictRequest {
  model_input: unknown;
  webhook_endpoint: string | null;
  priority: 0 | 1 | 2;
  max_time_in_queue_seconds: number;
  inference_retry_config: RetryConfig;
}

export type AsyncBodyCheck =
  | { ok: true; request: AsyncPredictRequest }
  | { ok: false; field: string; message: string };

const KNOWN_FIELDS = new Set([
  "model_input",
  "webhook_endpoint",
  "priority",
  "max_time_in_queue_seconds",
  "inference_retry_config",
]);

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function intIn(v: unknown, min: number, max: number): v is number {
  return typeof v === "number" && Number.isSafeInteger(v) && v >= min && v <= max;
}

function bad(field: string, message: string): AsyncBodyCheck {
  return { ok: false, field, message };
}

/**
 * Checks a parsed `/async_predict` body against AsyncPredictRequest. `model_input` is any JSON value (the
 * schema says object; truss models take lists and strings too, as the sync path does). Unknown fields are
 * refused, so a misspelt `webhook_endpont` is not silently dropped with its result.
 */
export function checkAsyncPredictBody(body: unknown): AsyncBodyCheck {
  if (!isObject(body)) return bad("", "The body must be a JSON object with model_input.");
  for (const k of Object.keys(body)) {
    if (!KNOWN_FIELDS.has(k)) return bad(k, `Unknown field ${JSON.stringify(k)}.`);
  }
  if (!("model_input" in body) || body["model_input"] === undefined) {
    return bad("model_input", "model_input is required.");
  }
  let webhook: string | null = null;
  const w = body["webhook_endpoint"];
  if (w !== undefined && w !== null) {
    if (typeof w !== "string") return bad("webhook_endpoint", "webhook_endpoint must be a URL string.");
    const parsed = parseWebhookUrl(w);
    if (!parsed.ok) return bad("webhook_endpoint", parsed.message);
    webhook = w;
  }
  const p = body["priority"] ?? 0;
  if (!intIn(p, 0, 2)) return bad("priority", "priority must be an integer from 0 to 2.");
  const q = body["max_time_in_queue_seconds"] ?? MAX_TIME_IN_QUEUE.default;
  if (!intIn(q, MAX_TIME_IN_QUEUE.min, MAX_TIME_IN_QUEUE.max)) {
    return bad(
      "max_time_in_queue_seconds",
      `max_time_in_queue_seconds must be an integer from ${MAX_TIME_IN_QUEUE.min} to ${MAX_TIME_IN_QUEUE.max}.`,
    );
  }
  const r = body["inference_retry_config"] ?? {};
  if (!isObject(r)) return bad("inference_retry_config", "inference_retry_config must be an object.");
  const retry: Record<string, number> = {};
  for (const k of Object.keys(r)) {
    if (!(k in RETRY_LIMITS))
      return bad(`inference_retry_config.${k}`, `Unknown field ${JSON.stringify(k)}.`);
  }
  for (const [k, lim] of Object.entries(RETRY_LIMITS)) {
    const v = r[k] ?? lim.default;
    if (!intIn(v, lim.min, lim.max)) {
      return bad(`inference_retry_config.${k}`, `${k} must be an integer from ${lim.min} to ${lim.max}.`);
    }
    retry[k] = v;
  }
  return {
    ok: true,
    request: {
      model_input: body["model_input"],
      webhook_endpoint: webhook,
      priority: p as 0 | 1 | 2,
      max_time_in_queue_seconds: q,
      inference_retry_config: retry as unknown as RetryConfig,
    },
  };
}

export type WebhookUrlCheck = { ok: true; url: URL; https: boolean } | { ok: false; message: string };

/** A webhook URL: absolute http(s), no credentials, at most 2,048 characters. */
export function parseWebhookUrl(value: string): WebhookUrlCheck {
  if (value.length > 2048) return { ok: false, message: "webhook_endpoint is longer than 2048 characters." };
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    return { ok: false, message: "webhook_endpoint is not an absolute URL." };
  }
  if (url.protocol !== "https:" && url.protocol !== "http:") {
    return { ok: false, message: "webhook_endpoint must be an https URL." };
  }
  if (url.username !== "" || url.password !== "") {
    return { ok: false, message: "webhook_endpoint must not carry credentials." };
  }
  return { ok: true, url, https: url.protocol === "https:" };
}

/**
 * The delay before attempt `attempt` (the first retry is attempt 2): `initial_delay_ms` doubled per retry,
 * at most `max_delay_ms` (InferenceRetryConfig: "exponential backoff").
 */
export function retryDelayMs(config: RetryConfig, attempt: number): number {
  const exp = Math.max(0, attempt - 2);
  const delay = config.initial_delay_ms * 2 ** Math.min(exp, 30);
  // `initial_delay_ms` is the minimum between retries, so it wins over a smaller `max_delay_ms`.
  return Math.min(delay, Math.max(config.max_delay_ms, config.initial_delay_ms));
}

// Request ids: 32 lowercase hex digits like Baseten's, the first 8 the tag of the plane that holds the
// request. A status call entering at any plane is handed to that plane alone; the id names nothing else.
const REQUEST_ID = /^[0-9a-f]{32}$/;

/** The 8-hex tag of a plane in its requests' ids. */
export function planeTag(plane: string): string {
  return createHash("sha256").update(`meridian-async-plane:${plane}`).digest("hex").slice(0, 8);
}

/** A new request id held by `plane`; `random` is 12 random bytes. */
export function newAsyncRequestId(plane: string, random: Uint8Array): string {
  if (random.length !== 12) throw new RangeError("an async request id takes 12 random bytes");
  return planeTag(plane) + Buffer.from(random).toString("hex");
}

/** The plane tag of a well-formed request id, or null. */
export function requestIdTag(id: string): string | null {
  return REQUEST_ID.test(id) ? id.slice(0, 8) : null;
}

/** The webhook body: Baseten's async predict result. */
export interface WebhookPayload {
  request_id: string;
  model_id: string;
  deployment_id: string | null;
  type: "async_request_completed";
  /** When the result was made (ISO 8601, UTC): receivers compare it with their clock (replay window). */
  time: string;
  data: unknown;
  errors: AsyncError[];
}

/**
 * `X-BASETEN-SIGNATURE`: `v1=<hex HMAC-SHA256 of the body>` per active secret, newest first, joined by
 * commas, as Baseten sends it during a rotation (`v1=newsignature,v1=oldsignature`). Null with no secret.
 */
export function webhookSignature(secrets: readonly string[], body: string | Buffer): string | null {
  if (secrets.length === 0) return null;
  return secrets.map((s) => `v1=${createHmac("sha256", s).update(body).digest("hex")}`).join(",");
}

/** Whether `header` carries a valid `v1=` signature of `body` under `secret` (what a receiver checks). */
export function verifyWebhookSignature(header: string, secret: string, body: string | Buffer): boolean {
  const want = Buffer.from(createHmac("sha256", secret).update(body).digest("hex"));
  for (const part of header.split(",")) {
    const m = /^\s*v1=([0-9a-f]{64})\s*$/.exec(part);
    if (m === null) continue;
    const got = Buffer.from(m[1]!);
    if (got.length === want.length && timingSafeEqual(got, want)) return true;
  }
  return false;
}

/**
 * Whether an IP address is one a webhook must not reach unless the operator allows it: loopback, private
 * (RFC 1918, RFC 4193), link-local (cloud metadata lives there), shared (RFC 6598), unspecified, multicast
 * and reserved ranges, IPv4-mapped IPv6 judged as its IPv4. A webhook sent from a plane must not become a way
 * into the plane's own network (its operator listener, the control plane, a metadata service).
 */
export function isPrivateAddress(ip: string): boolean {
  const lower = ip.toLowerCase();
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/.exec(lower);
  if (mapped !== null) return isPrivateAddress(mapped[1]!);
  const v4 = /^(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(lower);
  if (v4 !== null) {
    const [a, b] = [Number(v4[1]), Number(v4[2])];
    return (
      a === 0 ||
      a === 10 ||
      a === 127 ||
      (a === 100 && b >= 64 && b <= 127) ||
      (a === 169 && b === 254) ||
      (a === 172 && b >= 16 && b <= 31) ||
      (a === 192 && b === 168) ||
      (a === 192 && b === 0) ||
      (a === 198 && (b === 18 || b === 19)) ||
      a >= 224
    );
  }
  if (lower === "::" || lower === "::1") return true;
  const first = Number.parseInt(lower.split(":")[0] || "0", 16);
  // fc00::/7 unique local, fe80::/10 link-local, ff00::/8 multicast.
  return (first & 0xfe00) === 0xfc00 || (first & 0xffc0) === 0xfe80 || (first & 0xff00) === 0xff00;
}
