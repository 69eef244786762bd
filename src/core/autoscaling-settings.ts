// An environment's (or deployment's) autoscaling and request-backpressure settings in the management
// reference's shapes (AutoscalingSettingsV1, RequestBackpressureSettingsV1), Baseten's defaults and ranges,
// and the rules a partial update must keep. Pure: the control plane answers 400 with the rule named here.

/**
 * AutoscalingSettingsV1. The reference lets `autoscaling_window`, `scale_down_delay`,
 * `target_utilization_percentage` and `max_scale_down_rate` be null; Meridian always stores and shows the
 * value in effect, so a caller reads what the autoscaler acts on instead of a null it must interpret.
 */
export interface AutoscalingSettings {
  min_replica: number;
  max_replica: number;
  /** Seconds of traffic averaged for a decision. */
  autoscaling_window: number;
  /** Seconds the load must stay below the current count before a replica is removed. */
  scale_down_delay: number;
  /** Requests in flight one replica is meant to hold. */
  concurrency_target: number;
  /** Share of `concurrency_target` the autoscaler aims for, leaving the rest as headroom. */
  target_utilization_percentage: number;
  /** "Early access only" in the reference; Meridian measures requests, not tokens, so only null. */
  target_in_flight_tokens: null;
  /** Most replicas removed per scale-down step, as a percentage of the current count. */
  max_scale_down_rate: number;
}

export type AutoscalingField = keyof AutoscalingSettings;

export const AUTOSCALING_FIELDS: readonly AutoscalingField[] = [
  "min_replica",
  "max_replica",
  "autoscaling_window",
  "scale_down_delay",
  "concurrency_target",
  "target_utilization_percentage",
  "target_in_flight_tokens",
  "max_scale_down_rate",
];

/** Baseten's defaults: a model sleeps (`min_replica: 0`) and wakes to one replica. */
export const DEFAULT_AUTOSCALING: Readonly<AutoscalingSettings> = Object.freeze({
  min_replica: 0,
  max_replica: 1,
  autoscaling_window: 60,
  scale_down_delay: 900,
  concurrency_target: 1,
  target_utilization_percentage: 70,
  target_in_flight_tokens: null,
  max_scale_down_rate: 50,
});

/** Baseten's published ranges (docs.baseten.co "Autoscaling"; `max_scale_down_rate` from the reference). */
export const AUTOSCALING_RANGES = Object.freeze({
  autoscaling_window: { min: 10, max: 3600 },
  scale_down_delay: { min: 0, max: 3600 },
  target_utilization_percentage: { min: 1, max: 100 },
  max_scale_down_rate: { min: 1, max: 50 },
});

export type AutoscalingRule =
  | "not_an_object"
  | "unknown_field"
  | "not_an_integer"
  | "min_replica_negative"
  | "max_replica_below_one"
  | "min_above_max"
  | "autoscaling_window_range"
  | "scale_down_delay_range"
  | "concurrency_target_below_one"
  | "target_utilization_range"
  | "max_scale_down_rate_range"
  | "target_in_flight_tokens_unsupported";

export type AutoscalingCheck =
  | { ok: true; settings: AutoscalingSettings; changed: boolean }
  | { ok: false; rule: AutoscalingRule; field: string | null; message: string };

const INTEGER_FIELDS = AUTOSCALING_FIELDS.filter((f) => f !== "target_in_flight_tokens");

/**
 * Applies a partial update (UpdateAutoscalingSettingsV1: "we only update ones passed in", so an absent or
 * null field keeps its value) over `current`, and checks the result. `update` is the caller's JSON as
 * parsed; null or undefined changes nothing. The first broken rule is named, fields before cross-field
 * rules, in `AUTOSCALING_FIELDS` order, so the same body always gets the same answer.
 */
export function applyAutoscalingUpdate(current: AutoscalingSettings, update: unknown): AutoscalingCheck {
  if (update === null || update === undefined) return checked(current, current);
  if (typeof update !== "object" || Array.isArray(update)) {
    return refuse("not_an_object", null, "autoscaling_settings must be a JSON object.");
  }
  const next: Record<string, unknown> = { ...current };
  for (const [field, value] of Object.entries(update)) {
    if (!(AUTOSCALING_FIELDS as readonly string[]).includes(field)) {
      return refuse(
        "unknown_field",
        field.slice(0, 64),
        `autoscaling_settings has no field '${field.slice(0, 64)}'; it has ${AUTOSCALING_FIELDS.join(", ")}.`,
      );
    }
    if (value === null || value === undefined) continue;
    if (field === "target_in_flight_tokens") {
      return refuse(
        "target_in_flight_tokens_unsupported",
        field,
        "target_in_flight_tokens is not supported: Meridian scales on requests in flight, not tokens; send null.",
      );
    }
    if (!Number.isSafeInteger(value)) {
      return refuse("not_an_integer", field, `autoscaling_settings.${field} must be an integer.`);
    }
    next[field] = value;
  }
  return checked(current, next as unknown as AutoscalingSettings);
}

/** Checks complete settings (a stored row, or the decider's input) against every rule. */
export function checkAutoscalingSettings(s: AutoscalingSettings): AutoscalingCheck {
  return checked(s, s);
}

function checked(current: AutoscalingSettings, s: AutoscalingSettings): AutoscalingCheck {
  for (const field of INTEGER_FIELDS) {
    if (!Number.isSafeInteger(s[field])) {
      return refuse("not_an_integer", field, `autoscaling_settings.${field} must be an integer.`);
    }
  }
  if (s.target_in_flight_tokens !== null) {
    return refuse(
      "target_in_flight_tokens_unsupported",
      "target_in_flight_tokens",
      "target_in_flight_tokens is not supported: Meridian scales on requests in flight, not tokens.",
    );
  }
  if (s.min_replica < 0) {
    return refuse("min_replica_negative", "min_replica", "min_replica must be 0 or more (0 scales to zero).");
  }
  if (s.max_replica < 1) {
    return refuse("max_replica_below_one", "max_replica", "max_replica must be at least 1.");
  }
  const ranged: Array<[keyof typeof AUTOSCALING_RANGES, AutoscalingRule, string]> = [
    ["autoscaling_window", "autoscaling_window_range", " seconds"],
    ["scale_down_delay", "scale_down_delay_range", " seconds"],
    ["target_utilization_percentage", "target_utilization_range", " (percent)"],
    ["max_scale_down_rate", "max_scale_down_rate_range", " (percent of the replicas per step)"],
  ];
  for (const [field, rule, unit] of ranged) {
    const { min, max } = AUTOSCALING_RANGES[field];
    if (s[field] < min || s[field] > max) {
      return refuse(rule, field, `${field} must be between ${min} and ${max}${unit}; it is ${s[field]}.`);
    }
  }
  if (s.concurrency_target < 1) {
    return refuse(
      "concurrency_target_below_one",
      "concurrency_target",
      "concurrency_target must be at least 1.",
    );
  }
  if (s.min_replica > s.max_replica) {
    return refuse(
      "min_above_max",
      "min_replica",
      `min_replica (${s.min_replica}) cannot exceed max_replica (${s.max_replica}); change both in one update.`,
    );
  }
  const settings = pick(s);
  return { ok: true, settings, changed: AUTOSCALING_FIELDS.some((f) => settings[f] !== current[f]) };
}

/**
 * Settings stored before these rules existed (or in the reference's nullable form): every absent or null
 * field takes Baseten's default. The result still goes through `checkAutoscalingSettings`.
 */
export function autoscalingWithDefaults(
  stored: Partial<Record<AutoscalingField, number | null>>,
): AutoscalingSettings {
  const out: Record<string, unknown> = { ...DEFAULT_AUTOSCALING };
  for (const field of INTEGER_FIELDS) {
    const v = stored[field];
    if (v !== null && v !== undefined) out[field] = v;
  }
  return out as unknown as AutoscalingSettings;
}

function pick(s: AutoscalingSettings): AutoscalingSettings {
  return {
    min_replica: s.min_replica,
    max_replica: s.max_replica,
    autoscaling_window: s.autoscaling_window,
    scale_down_delay: s.scale_down_delay,
    concurrency_target: s.concurrency_target,
    target_utilization_percentage: s.target_utilization_percentage,
    target_in_flight_tokens: null,
    max_scale_down_rate: s.max_scale_down_rate,
  };
}

function refuse(rule: AutoscalingRule, field: string | null, message: string): AutoscalingCheck {
  return { ok: false, rule, field, message };
}

// ---------------------------------------------------------------------------------------------------------
// Request backpressure (RequestBackpressureSettingsV1): what an ingress does with a request when the
// environment's ready replicas already hold `concurrency_target` requests each.

export const BACKPRESSURE_POLICIES = ["QUEUE_ON_FULL", "REJECT_ON_FULL"] as const;
export type BackpressurePolicy = (typeof BACKPRESSURE_POLICIES)[number];

/** RequestBackpressureSettingsV1: the reference's only field. Null is "no policy". */
export interface RequestBackpressureSettings {
  policy: BackpressurePolicy | null;
}

export const DEFAULT_BACKPRESSURE: Readonly<RequestBackpressureSettings> = Object.freeze({ policy: null });

export type BackpressureRule = "not_an_object" | "unknown_field" | "unknown_policy";

export type BackpressureCheck =
  | { ok: true; settings: RequestBackpressureSettings; changed: boolean }
  | { ok: false; rule: BackpressureRule; field: string | null; message: string };

/**
 * Applies UpdateRequestBackpressureSettingsV1. An absent or null `request_backpressure_settings` keeps the
 * current one; an object replaces it, and there `policy` absent or null means no policy ("Null indicates no
 * policy (on update, clears an existing one)", with `default: null`).
 */
export function applyBackpressureUpdate(
  current: RequestBackpressureSettings,
  update: unknown,
): BackpressureCheck {
  if (update === null || update === undefined) return { ok: true, settings: current, changed: false };
  if (typeof update !== "object" || Array.isArray(update)) {
    return bpRefuse("not_an_object", null, "request_backpressure_settings must be a JSON object.");
  }
  for (const field of Object.keys(update)) {
    if (field !== "policy") {
      return bpRefuse(
        "unknown_field",
        field.slice(0, 64),
        `request_backpressure_settings has no field '${field.slice(0, 64)}'; it has policy.`,
      );
    }
  }
  const policy = (update as { policy?: unknown }).policy ?? null;
  if (policy !== null && !(BACKPRESSURE_POLICIES as readonly unknown[]).includes(policy)) {
    return bpRefuse(
      "unknown_policy",
      "policy",
      `request_backpressure_settings.policy must be one of ${BACKPRESSURE_POLICIES.join(", ")} or null.`,
    );
  }
  const settings = { policy: policy as BackpressurePolicy | null };
  return { ok: true, settings, changed: settings.policy !== current.policy };
}

function bpRefuse(rule: BackpressureRule, field: string | null, message: string): BackpressureCheck {
  return { ok: false, rule, field, message };
}

/**
 * The parameters of backpressure. The reference has none (its object holds only `policy`), so they are
 * Meridian's, set by the operator per plane: the bound of the queue of parked requests an ingress keeps per
 * environment (cold starts and QUEUE_ON_FULL share it), and the Retry-After of a 429.
 */
export interface BackpressureLimits {
  queue_per_environment: number;
  retry_after_seconds: number;
}

export const DEFAULT_BACKPRESSURE_LIMITS: Readonly<BackpressureLimits> = Object.freeze({
  queue_per_environment: 64,
  retry_after_seconds: 1,
});

export const BACKPRESSURE_LIMIT_RANGES = Object.freeze({
  queue_per_environment: { min: 1, max: 100_000 },
  retry_after_seconds: { min: 1, max: 3600 },
});

export type BackpressureLimitsCheck =
  | { ok: true; limits: BackpressureLimits }
  | { ok: false; rule: "not_an_integer" | "out_of_range"; field: keyof BackpressureLimits; message: string };

export function checkBackpressureLimits(limits: BackpressureLimits): BackpressureLimitsCheck {
  for (const field of ["queue_per_environment", "retry_after_seconds"] as const) {
    const v = limits[field];
    const { min, max } = BACKPRESSURE_LIMIT_RANGES[field];
    if (!Number.isSafeInteger(v)) {
      return { ok: false, rule: "not_an_integer", field, message: `${field} must be an integer.` };
    }
    if (v < min || v > max) {
      return {
        ok: false,
        rule: "out_of_range",
        field,
        message: `${field} must be between ${min} and ${max}.`,
      };
    }
  }
  return { ok: true, limits: { ...limits } };
}

/** What one ingress knows about one environment when a request arrives. */
export interface AdmissionInput {
  policy: BackpressurePolicy | null;
  concurrency_target: number;
  /** Ready replicas this ingress may route the environment's requests to (all in its region). */
  ready: number;
  /** The environment's requests this ingress has at replicas now. */
  forwarded: number;
  /** The environment's requests parked at this ingress now. */
  parked: number;
  limits: BackpressureLimits;
}

export type Admission =
  | { action: "forward" }
  | { action: "park" }
  | { action: "reject"; rule: "queue_full" | "replicas_full"; retry_after_seconds: number };

/**
 * Admits one arriving request:
 * - no ready replica (asleep or waking): park, whatever the policy — it is the wake, not a full
 *   environment — up to the queue bound;
 * - no policy: forward (the replica's own `predict_concurrency` queue holds the excess, Baseten's default);
 * - QUEUE_ON_FULL: forward while the ready replicas hold fewer than `concurrency_target` each and nobody is
 *   parked (parked requests go first), otherwise park up to the queue bound;
 * - REJECT_ON_FULL: 429 once forwarded and parked requests fill the ready replicas' targets.
 * A full queue is a 429 with Retry-After under every policy: memory at the ingress stays bounded, whoever
 * the caller is.
 */
export function admitRequest(input: AdmissionInput): Admission {
  const queueFull = input.parked >= input.limits.queue_per_environment;
  const reject = (rule: "queue_full" | "replicas_full"): Admission => ({
    action: "reject",
    rule,
    retry_after_seconds: input.limits.retry_after_seconds,
  });
  if (input.ready === 0) return queueFull ? reject("queue_full") : { action: "park" };
  if (input.policy === null) return { action: "forward" };
  const room = input.ready * input.concurrency_target - input.forwarded - input.parked;
  if (input.policy === "REJECT_ON_FULL") {
    if (room <= 0) return reject("replicas_full");
    if (input.parked === 0) return { action: "forward" };
    return queueFull ? reject("queue_full") : { action: "park" };
  }
  if (room > 0 && input.parked === 0) return { action: "forward" };
  return queueFull ? reject("queue_full") : { action: "park" };
}

/** How many parked requests (oldest first) the ingress may forward now. */
export function parkedToForward(input: Omit<AdmissionInput, "limits">): number {
  if (input.ready === 0) return 0;
  if (input.policy === null) return input.parked;
  const slots = input.ready * input.concurrency_target - input.forwarded;
  return Math.max(0, Math.min(input.parked, slots));
}
