// The time range and scope of an evidence export as callers give them (the control plane's
// `GET …/evidence?from=&to=`, a plane's `GET /v1/evidence`): parsed once, into the `EvidenceScope` every
// plane signs, naming the field that is wrong. Pure.

import type { EvidenceScope } from "./evidence.ts";
import { isEnvironmentName, isModelId, isSlug } from "./names.ts";

/** The range a caller gets when it names none: the day before now. */
export const DEFAULT_EVIDENCE_RANGE_MS = 24 * 3600 * 1000;
/** The longest range one document covers: more than any retention an audit keeps by default. */
export const MAX_EVIDENCE_RANGE_MS = 366 * 24 * 3600 * 1000;
/**
 * How far `to` may lie ahead of the asking clock: the planes' clocks stamp the records, and are not that
 * clock. Further than this, the document would claim a range whose end has not happened.
 */
export const EVIDENCE_FUTURE_SKEW_MS = 5 * 60 * 1000;

export type RangeParse =
  | { ok: true; from: string; to: string }
  | { ok: false; field: string; message: string };

// An RFC 3339 date-time (§5.6) with a zone: what `Date.prototype.toISOString` writes, and what a person
// types (`2025-06-02T00:00:00Z`, `…+02:00`). A bare date or an epoch number is refused, not guessed at.
const TIME = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2})(?:\.\d{1,9})?)?(?:Z|[+-](\d{2}):(\d{2}))$/i;

/** One bound of a range, in unix ms. Fields out of range (February 30th, 24:00) are refused, not rolled over. */
export function parseEvidenceTime(
  value: string,
  field: string,
): { ok: true; ms: number } | { ok: false; message: string } {
  const m = TIME.exec(value);
  if (m === null) {
    return {
      ok: false,
      message: `${field} is an RFC 3339 time with a zone (2025-06-02T00:00:00Z), got '${value}'`,
    };
  }
  const [year, month, day, hour, minute, second, zh, zm] = m.slice(1).map((v) => Number(v ?? 0));
  const days = new Date(Date.UTC(year!, month!, 0)).getUTCDate();
  const ms = Date.parse(value);
  if (
    month! < 1 ||
    month! > 12 ||
    day! < 1 ||
    day! > days ||
    hour! > 23 ||
    minute! > 59 ||
    second! > 59 ||
    zh! > 23 ||
    zm! > 59 ||
    !Number.isFinite(ms)
  ) {
    return { ok: false, message: `${field} is not a real time: '${value}'` };
  }
  return { ok: true, ms };
}

/**
 * `from` (inclusive) and `to` (exclusive), normalized to `toISOString` form. Defaults: `to` now, `from` a
 * day before `to`. `from` must come before `to`, the range may not pass MAX_EVIDENCE_RANGE_MS, and `to` may
 * not lie in the future (beyond the skew): a document for a range not yet over would be incomplete.
 */
export function parseEvidenceRange(
  input: { from?: string | undefined; to?: string | undefined },
  nowMs: number,
): RangeParse {
  let toMs = nowMs;
  if (input.to !== undefined) {
    const t = parseEvidenceTime(input.to, "to");
    if (!t.ok) return { ok: false, field: "to", message: t.message };
    toMs = t.ms;
  }
  let fromMs = toMs - DEFAULT_EVIDENCE_RANGE_MS;
  if (input.from !== undefined) {
    const f = parseEvidenceTime(input.from, "from");
    if (!f.ok) return { ok: false, field: "from", message: f.message };
    fromMs = f.ms;
  }
  if (fromMs >= toMs) return { ok: false, field: "from", message: "from must be earlier than to" };
  if (toMs - fromMs > MAX_EVIDENCE_RANGE_MS) {
    return { ok: false, field: "from", message: "the range is longer than 366 days" };
  }
  if (toMs > nowMs + EVIDENCE_FUTURE_SKEW_MS) {
    return { ok: false, field: "to", message: `to (${new Date(toMs).toISOString()}) is in the future` };
  }
  return { ok: true, from: new Date(fromMs).toISOString(), to: new Date(toMs).toISOString() };
}

export type ScopeParse = { ok: true; scope: EvidenceScope } | { ok: false; field: string; message: string };

/**
 * A plane's `GET /v1/evidence` query: the whole scope, spelled out by the control plane (the plane knows
 * no environment groups). `restricted_to` absent means the environment is not restricted.
 */
export function parseEvidenceScope(
  q: {
    get(name: string): string | null;
  },
  nowMs: number,
): ScopeParse {
  const model = q.get("model_id");
  if (model === null || !isModelId(model)) {
    return { ok: false, field: "model_id", message: "model_id is a model id (8 lowercase alphanumerics)" };
  }
  const environment = q.get("environment");
  if (environment === null || !isEnvironmentName(environment)) {
    return { ok: false, field: "environment", message: "environment is an environment name" };
  }
  const region = q.get("restricted_to");
  if (region !== null && !isSlug(region)) {
    return { ok: false, field: "restricted_to", message: "restricted_to is a region slug" };
  }
  const from = q.get("from");
  const to = q.get("to");
  if (from === null || to === null) {
    return { ok: false, field: from === null ? "from" : "to", message: "from and to are both required" };
  }
  const range = parseEvidenceRange({ from, to }, nowMs);
  if (!range.ok) return range;
  return {
    ok: true,
    scope: { model_id: model, environment, restricted_to: region, from: range.from, to: range.to },
  };
}

/** The query string a plane's `GET /v1/evidence` takes for `scope` (what the control plane signs). */
export function evidenceQuery(scope: EvidenceScope): string {
  const q = new URLSearchParams({ model_id: scope.model_id, environment: scope.environment });
  if (scope.restricted_to !== null) q.set("restricted_to", scope.restricted_to);
  q.set("from", scope.from);
  q.set("to", scope.to);
  return q.toString();
}
