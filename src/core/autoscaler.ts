// The autoscaler's decision for one environment's deployment: how many replicas it should run, why, and the
// decider's state for the next step. Pure and deterministic; the control plane calls it on a tick with the
// load its region's ingresses reported and applies the count through placement (docs/autoscaling.md).
//
// The shape follows Knative's Pod Autoscaler (KPA): a stable window (`autoscaling_window`) and a panic
// window of 10 % of it (at least 6 s), entered when the panic window's desire reaches twice the ready
// count; in panic the count only grows, and panic ends once a whole stable window passed below the threshold.
// Sources: knative.dev/docs/serving/autoscaling/kpa-specific ("Modes", "Stable window", "Panic window
// percentage", "Panic mode threshold") and knative/serving pkg/autoscaler/scaling/autoscaler.go `Scale`
// (`isOverPanicThreshold := dppc/readyPodsCount >= spec.PanicThreshold`, `maxPanicPods`, un-panicking after
// `panicTime.Add(spec.StableWindow)`). Comparing with the ready count, as KPA does, matters: the stable
// window's first reaction to a burst adds one replica that is not serving yet, and must not hide the burst.

import { type AutoscalingSettings, checkAutoscalingSettings } from "./autoscaling-settings.ts";

/** KPA's panic threshold: the panic window must desire at least this many times the ready count. */
export const PANIC_THRESHOLD = 2;
/** KPA's default panic window is 10 % of the stable window… */
export const PANIC_WINDOW_PERCENT = 10;
/** …and never shorter than KPA's default 6 s, so a handful of reports is averaged, not one. */
export const PANIC_WINDOW_MIN_SECONDS = 6;
/**
 * Hysteresis of scale-down (the tolerance of Kubernetes' HPA, 10 %): a replica is removed only when the
 * load would fit the smaller count with this much to spare. A load at a boundary, with noise smaller than
 * this, therefore never alternates up and down.
 */
export const SCALE_DOWN_TOLERANCE_PERCENT = 10;

/**
 * Load the region's ingresses measured over one interval, summed by the control plane: `request_ms` is the
 * integral of requests in flight over [from_ms, to_ms) (parked requests included), so 1 000 means one
 * request for a second, or ten for 100 ms. Each plane reports its own; intervals must not overlap.
 */
export interface LoadSample {
  from_ms: number;
  to_ms: number;
  request_ms: number;
}

export interface AutoscalerInput {
  settings: AutoscalingSettings;
  /** The deployment's replicas that exist (placed, not stopping): routable ones and ones still starting. */
  replicas: { ready: number; starting: number };
  /** Reported load, oldest first or not; intervals ending after `now_ms` are ignored. */
  samples: readonly LoadSample[];
  /** Requests received and not yet answered across the region's ingresses now, parked ones included. */
  in_flight: number;
  /** When any ingress of the region last received a request for the environment. */
  last_request_at_ms: number | null;
  /** An explicit wake (`POST …/wake`) arrived since the previous decision. */
  wake: boolean;
  /**
   * Replicas of this deployment its region can hold now: the slots its replicas take plus the free slots
   * of the planes it may use. The count is capped at it, never placed elsewhere.
   */
  capacity: number;
  now_ms: number;
  /** The previous decision's `state`, or null on the first decision (or after a control-plane restart). */
  state: AutoscalerState | null;
}

export type ScaleReason =
  /** The count follows the load of the stable window (up at once, down once delay and rate allow). */
  | "load"
  /** Panic mode: a burst in the panic window; the count grows and is held. */
  | "panic"
  /** An explicit wake started a replica with nothing running. */
  | "wake"
  /** Requests wait with no replica ready: sized by `concurrency_target`, at once. */
  | "from_zero"
  /** Raised to (or kept at) `min_replica`. */
  | "min"
  /** Held down to `max_replica`. */
  | "max"
  /** Held down to what the region can hold (`capped_by_capacity`). */
  | "capacity"
  /** The load is below the count, but not for `scale_down_delay` yet. */
  | "scale_down_delay"
  /** Scaling down, by at most `max_scale_down_rate` % per step and one step per `autoscaling_window`. */
  | "rate_limited"
  /** The last replica removed: `min_replica` is 0 and no request arrived for `scale_down_delay`. */
  | "idle_to_zero"
  /** The load fits the current count. */
  | "steady";

export interface AutoscalerState {
  decided_at_ms: number;
  /** Panic mode: when the panic threshold was last reached, and the highest count desired since. */
  panic: { over_at_ms: number; max_desired: number } | null;
  /** Since when the load has continuously asked for fewer replicas than run; null when it does not. */
  below_since_ms: number | null;
  last_scale_down_ms: number | null;
  /** The latest request or wake seen. */
  last_activity_ms: number | null;
  /** No replica was ready at this decision. */
  cold: boolean;
  /**
   * Load measured before this was taken while nothing was ready: parked requests whose wait would read as
   * load on replicas. Windows start no earlier.
   */
  window_start_ms: number | null;
  /**
   * The counts the load asked for during the last `scale_down_delay`, as decreasing maxima (a monotonic
   * deque): a scale-down goes no lower than the most any of them asked for (KPA's delay window).
   */
  recent: ReadonlyArray<{ at_ms: number; desired: number }>;
}

export interface ScaleDecision {
  desired: number;
  reason: ScaleReason;
  capped_by_capacity: boolean;
  panic: boolean;
  /** Mean requests in flight over each window (null: no report in it), for metrics and status. */
  observed: { stable: number | null; panic: number | null };
  state: AutoscalerState;
}

export function panicWindowSeconds(autoscalingWindow: number): number {
  return Math.max(PANIC_WINDOW_MIN_SECONDS, (autoscalingWindow * PANIC_WINDOW_PERCENT) / 100);
}

/** The one-line formula: replicas for a mean load, ceil(load / (concurrency_target × utilization)). */
export function replicasForLoad(settings: AutoscalingSettings, meanInFlight: number): number {
  const perReplica = (settings.concurrency_target * settings.target_utilization_percentage) / 100;
  return Math.ceil(meanInFlight / perReplica);
}

export function decideScale(input: AutoscalerInput): ScaleDecision {
  assertInput(input);
  const s = input.settings;
  const prev = input.state;
  // A wall clock stepped back is time standing still: windows and delays never run backwards.
  const now = Math.max(input.now_ms, prev?.decided_at_ms ?? input.now_ms);
  const { ready, starting } = input.replicas;
  const current = ready + starting;
  const lo = s.min_replica;
  const hi = s.max_replica;
  const delayMs = s.scale_down_delay * 1000;
  const cold = ready === 0;
  const activity = latest(prev?.last_activity_ms ?? null, input.last_request_at_ms, input.wake ? now : null);
  const windowStart = cold ? null : prev?.cold ? now : (prev?.window_start_ms ?? null);

  const load = cold ? coldLoad(input, current) : warmLoad(input, now, windowStart, prev);
  const upB = clamp(load.up, lo, hi);
  const downB = clamp(load.down, lo, hi);
  const panic = load.panic;

  let target = current;
  let reason: ScaleReason = "steady";
  let belowSince: number | null = null;
  let lastScaleDown = prev?.last_scale_down_ms ?? null;
  const recent = load.known ? remember(prev?.recent ?? [], now, delayMs, downB) : prev?.recent;

  if (current > hi) {
    // A lowered max_replica is a ceiling, applied at once rather than stepped down.
    target = hi;
    reason = "max";
  } else if (upB > current) {
    target = upB;
    if (load.up < lo) reason = "min";
    else if (load.up > hi) reason = "max";
    else if (panic) reason = "panic";
    else if (cold) reason = load.woken ? "wake" : "from_zero";
    else reason = "load";
  } else if (panic) {
    // KPA: "When using panic mode, the Revision will not scale down to avoid churn."
    reason = load.up > hi ? "max" : "panic";
  } else if (!load.known) {
    belowSince = prev?.below_since_ms ?? null;
  } else if (downB >= current) {
    reason = load.up > hi ? "max" : "steady";
  } else {
    ({ target, reason, belowSince, lastScaleDown } = stepDown(
      input,
      now,
      current,
      downB,
      load.down,
      recent,
      activity,
    ));
  }

  const capped = target > input.capacity;
  const desired = capped ? input.capacity : target;
  if (capped) reason = "capacity";

  return {
    desired,
    reason,
    capped_by_capacity: capped,
    panic,
    observed: load.observed,
    state: {
      decided_at_ms: now,
      panic: load.panicState,
      below_since_ms: belowSince,
      last_scale_down_ms: lastScaleDown,
      last_activity_ms: activity,
      cold,
      window_start_ms: windowStart,
      recent: recent ?? [],
    },
  };
}

/**
 * The load asks for fewer replicas than run. A step is due once it has asked for fewer for the whole
 * `scale_down_delay` and a window has passed since the last step; it goes to the most the load asked for
 * in the delay window, by at most `max_scale_down_rate` % of the count (at least one), and never below what
 * the requests in flight now need. The last replica goes only after `scale_down_delay` without a request.
 */
function stepDown(
  input: AutoscalerInput,
  now: number,
  current: number,
  downB: number,
  down: number,
  recent: AutoscalerState["recent"] | undefined,
  activity: number | null,
): { target: number; reason: ScaleReason; belowSince: number; lastScaleDown: number | null } {
  const s = input.settings;
  const belowSince = input.state?.below_since_ms ?? now;
  const lastScaleDown = input.state?.last_scale_down_ms ?? null;
  const hold = (reason: ScaleReason) => ({ target: current, reason, belowSince, lastScaleDown });
  let floor = Math.max(
    maxOf(recent ?? []),
    downB,
    clamp(ceilDiv(input.in_flight, s.concurrency_target), s.min_replica, s.max_replica),
  );
  const idle = activity === null || now - activity >= s.scale_down_delay * 1000;
  if (floor === 0 && !idle) floor = 1;
  if (now - belowSince < s.scale_down_delay * 1000 || floor >= current) return hold("scale_down_delay");
  // The reference's rate is "per autoscaling window": one step per window.
  if (lastScaleDown !== null && now - lastScaleDown < s.autoscaling_window * 1000)
    return hold("rate_limited");
  const step = Math.max(1, Math.floor((current * s.max_scale_down_rate) / 100));
  const target = Math.max(floor, current - step);
  let reason: ScaleReason = "load";
  if (target > floor) reason = "rate_limited";
  else if (target === 0) reason = "idle_to_zero";
  else if (floor === s.min_replica && down < s.min_replica) reason = "min";
  return { target, reason, belowSince, lastScaleDown: now };
}

interface Load {
  /** Replicas the load asks for when growing… */
  up: number;
  /** …and the fewest it allows when shrinking (≥ up: the tolerance). */
  down: number;
  /** False when no report covers the stable window: nothing is known, nothing changes. */
  known: boolean;
  panic: boolean;
  panicState: AutoscalerState["panic"];
  woken: boolean;
  observed: ScaleDecision["observed"];
}

/**
 * Nothing is ready: the requests waiting are all there is to go on. They are sized by `concurrency_target`
 * alone — the utilization headroom is for steady traffic, and replicas beyond what they need would not be
 * ready any sooner — so concurrent cold requests that fit one replica start exactly one.
 */
function coldLoad(input: AutoscalerInput, current: number): Load {
  const need = ceilDiv(input.in_flight, input.settings.concurrency_target);
  const woken = need === 0 && current === 0 && input.wake;
  const up = woken ? 1 : need;
  return {
    up,
    down: up,
    known: true,
    panic: false,
    panicState: null,
    woken,
    observed: { stable: null, panic: null },
  };
}

function warmLoad(
  input: AutoscalerInput,
  now: number,
  windowStart: number | null,
  prev: AutoscalerState | null,
): Load {
  const s = input.settings;
  const current = input.replicas.ready + input.replicas.starting;
  const stable = meanLoad(
    input.samples,
    Math.max(now - s.autoscaling_window * 1000, windowStart ?? -Infinity),
    now,
  );
  const short = meanLoad(
    input.samples,
    Math.max(now - panicWindowSeconds(s.autoscaling_window) * 1000, windowStart ?? -Infinity),
    now,
  );
  const observed = {
    stable: stable === null ? null : Number(stable.requestMs) / Number(stable.spanMs),
    panic: short === null ? null : Number(short.requestMs) / Number(short.spanMs),
  };
  const target = BigInt(s.concurrency_target) * BigInt(s.target_utilization_percentage);
  const up = stable === null ? current : toCount(ceilBig(stable.requestMs * 100n, stable.spanMs * target));
  const down =
    stable === null
      ? current
      : toCount(
          ceilBig(
            stable.requestMs * 100n * 100n,
            stable.spanMs * target * BigInt(100 - SCALE_DOWN_TOLERANCE_PERCENT),
          ),
        );
  const panicUp = short === null ? 0 : toCount(ceilBig(short.requestMs * 100n, short.spanMs * target));

  const over = panicUp >= PANIC_THRESHOLD * Math.max(1, input.replicas.ready);
  let panicState = prev?.panic ?? null;
  if (over) panicState = { over_at_ms: now, max_desired: panicState?.max_desired ?? 0 };
  else if (panicState && now - panicState.over_at_ms >= s.autoscaling_window * 1000) panicState = null;
  if (panicState === null) {
    return { up, down, known: stable !== null, panic: false, panicState, woken: false, observed };
  }
  // In panic the larger of the two windows counts (the stable one can be the larger, late in a surge), and
  // the count never falls below the most asked for since panic began.
  const want = clamp(
    Math.max(up, panicUp, panicState.max_desired, current),
    input.settings.min_replica,
    input.settings.max_replica,
  );
  return {
    up: Math.max(up, panicUp, panicState.max_desired),
    down: Math.max(down, want),
    known: true,
    panic: true,
    panicState: { over_at_ms: panicState.over_at_ms, max_desired: want },
    woken: false,
    observed,
  };
}

/** Mean requests in flight over the reports that lie wholly within [from, to], as an exact fraction. */
function meanLoad(
  samples: readonly LoadSample[],
  from: number,
  to: number,
): { requestMs: bigint; spanMs: bigint } | null {
  // Sums of safe integers stay exact in a double up to 2^53 (hours of millions in flight); past that the
  // slower exact path takes over.
  let requestMs = 0;
  let spanMs = 0;
  for (const x of samples) {
    if (x.from_ms < from || x.to_ms > to) continue;
    requestMs += x.request_ms;
    spanMs += x.to_ms - x.from_ms;
  }
  if (spanMs === 0) return null;
  if (Number.isSafeInteger(requestMs) && Number.isSafeInteger(spanMs)) {
    return { requestMs: BigInt(requestMs), spanMs: BigInt(spanMs) };
  }
  let big = 0n;
  let span = 0n;
  for (const x of samples) {
    if (x.from_ms < from || x.to_ms > to) continue;
    big += BigInt(x.request_ms);
    span += BigInt(x.to_ms - x.from_ms);
  }
  return { requestMs: big, spanMs: span };
}

/** Appends a desire to the delay window's decreasing maxima and drops what fell out of the window. */
function remember(
  recent: AutoscalerState["recent"],
  now: number,
  delayMs: number,
  desired: number,
): AutoscalerState["recent"] {
  const kept = recent.filter((r) => r.at_ms > now - delayMs && r.at_ms <= now);
  while (kept.length > 0 && kept[kept.length - 1]!.desired <= desired) kept.pop();
  kept.push({ at_ms: now, desired });
  return kept;
}

function maxOf(recent: AutoscalerState["recent"]): number {
  return recent.reduce((m, r) => Math.max(m, r.desired), 0);
}

function latest(...times: Array<number | null>): number | null {
  const known = times.filter((t): t is number => t !== null);
  return known.length === 0 ? null : Math.max(...known);
}

function clamp(n: number, lo: number, hi: number): number {
  return Math.min(hi, Math.max(lo, n));
}

function ceilDiv(a: number, b: number): number {
  return Math.ceil(a / b);
}

function ceilBig(a: bigint, b: bigint): bigint {
  return (a + b - 1n) / b;
}

function toCount(n: bigint): number {
  return n > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(n);
}

/** Inputs come from the control plane's own bookkeeping, so a malformed one is a bug, not a caller's error. */
function assertInput(input: AutoscalerInput): void {
  const check = checkAutoscalingSettings(input.settings);
  if (!check.ok) throw new RangeError(`autoscaler: invalid settings (${check.rule}): ${check.message}`);
  const counts: Array<[string, number]> = [
    ["replicas.ready", input.replicas.ready],
    ["replicas.starting", input.replicas.starting],
    ["in_flight", input.in_flight],
    ["capacity", input.capacity],
  ];
  for (const [name, v] of counts) {
    if (!Number.isSafeInteger(v) || v < 0)
      throw new RangeError(`autoscaler: ${name} must be a count, got ${v}`);
  }
  if (!Number.isSafeInteger(input.now_ms))
    throw new RangeError("autoscaler: now_ms must be integer milliseconds");
  if (input.last_request_at_ms !== null && !Number.isSafeInteger(input.last_request_at_ms)) {
    throw new RangeError("autoscaler: last_request_at_ms must be integer milliseconds or null");
  }
  for (const x of input.samples) {
    if (
      !Number.isSafeInteger(x.from_ms) ||
      !Number.isSafeInteger(x.to_ms) ||
      x.to_ms <= x.from_ms ||
      !Number.isSafeInteger(x.request_ms) ||
      x.request_ms < 0
    ) {
      throw new RangeError(`autoscaler: bad load sample ${JSON.stringify(x)}`);
    }
  }
}
