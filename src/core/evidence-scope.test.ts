import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  DEFAULT_EVIDENCE_RANGE_MS,
  EVIDENCE_FUTURE_SKEW_MS,
  evidenceQuery,
  parseEvidenceRange,
  parseEvidenceScope,
} from "./evidence-scope.ts";

const NOW = Date.UTC(2025, 5, 3, 8, 0, 0);
const iso = (ms: number) => new Date(ms).toISOString();

describe("parseEvidenceRange", () => {
  it.each([
    ["defaults: the day before now", {}, { from: iso(NOW - DEFAULT_EVIDENCE_RANGE_MS), to: iso(NOW) }],
    [
      "from alone: up to now",
      { from: "2025-06-02T12:00:00Z" },
      { from: "2025-06-02T12:00:00.000Z", to: iso(NOW) },
    ],
    [
      "to alone: the day before it",
      { to: "2025-06-02T00:00:00Z" },
      { from: "2025-06-01T00:00:00.000Z", to: "2025-06-02T00:00:00.000Z" },
    ],
    [
      "an offset is normalized to UTC",
      { from: "2025-06-02T02:00:00+02:00", to: "2025-06-02T03:30:00.5+02:00" },
      { from: "2025-06-02T00:00:00.000Z", to: "2025-06-02T01:30:00.500Z" },
    ],
    [
      "to within the clock skew ahead",
      { from: "2025-06-03T07:00:00Z", to: iso(NOW + EVIDENCE_FUTURE_SKEW_MS) },
      { from: "2025-06-03T07:00:00.000Z", to: iso(NOW + EVIDENCE_FUTURE_SKEW_MS) },
    ],
  ])("%s", (_name, input, want) => {
    expect(parseEvidenceRange(input, NOW)).toEqual({ ok: true, ...want });
  });

  it.each([
    ["a bare date", { from: "2025-06-02" }, "from"],
    ["epoch millis", { to: String(NOW) }, "to"],
    ["no zone", { from: "2025-06-02T00:00:00" }, "from"],
    ["not a real day", { from: "2025-02-29T00:00:00Z" }, "from"],
    ["not a real hour", { from: "2025-06-01T24:00:00Z" }, "from"],
    ["not a real zone", { from: "2025-06-01T12:00:00+24:00" }, "from"],
    ["garbage", { to: "yesterday" }, "to"],
    ["from after to", { from: "2025-06-02T12:00:00Z", to: "2025-06-02T11:00:00Z" }, "from"],
    ["an empty range", { from: "2025-06-02T12:00:00Z", to: "2025-06-02T12:00:00Z" }, "from"],
    ["longer than 366 days", { from: "2024-01-01T00:00:00Z", to: "2025-06-02T00:00:00Z" }, "from"],
    ["to in the future", { from: "2025-06-03T07:00:00Z", to: "2025-06-03T09:00:00Z" }, "to"],
  ])("refuses %s, naming the field", (_name, input, field) => {
    const r = parseEvidenceRange(input, NOW);
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.field).toBe(field);
  });

  it("accepts every past range within the limit, and keeps its bounds to the millisecond", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 365 * 86_400_000 }),
        fc.integer({ min: 1, max: 86_400_000 }),
        (ago, length) => {
          const to = NOW - ago;
          const r = parseEvidenceRange({ from: iso(to - length), to: iso(to) }, NOW);
          expect(r).toEqual({ ok: true, from: iso(to - length), to: iso(to) });
        },
      ),
    );
  });
});

describe("parseEvidenceScope", () => {
  const scope = {
    model_id: "x9cfgqhq",
    environment: "prod-eu",
    restricted_to: "eu",
    from: "2025-06-02T00:00:00.000Z",
    to: "2025-06-03T00:00:00.000Z",
  };

  it("reads back what evidenceQuery writes, with and without a region", () => {
    for (const s of [scope, { ...scope, restricted_to: null }]) {
      expect(parseEvidenceScope(new URLSearchParams(evidenceQuery(s)), NOW)).toEqual({ ok: true, scope: s });
    }
  });

  it.each([
    ["model_id", { model_id: "X9CFGQHQ" }],
    ["model_id", { model_id: "abc-defg" }],
    ["environment", { environment: "development" }],
    ["environment", { environment: "-eu" }],
    ["restricted_to", { restricted_to: "" }],
    ["restricted_to", { restricted_to: "EU" }],
    ["from", { from: "" }],
    ["to", { to: "2025-06-03T09:00:00Z" }],
    ["to", { to: "2025-06-02T24:00:00Z" }],
  ])("refuses a bad %s", (field, over) => {
    const q = new URLSearchParams(evidenceQuery(scope));
    for (const [k, v] of Object.entries(over)) q.set(k, v);
    const r = parseEvidenceScope(q, NOW);
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.field).toBe(field);
  });

  it("requires both bounds (the control plane always spells them out)", () => {
    const q = new URLSearchParams(evidenceQuery(scope));
    q.delete("to");
    expect(parseEvidenceScope(q, NOW)).toMatchObject({ ok: false, field: "to" });
  });
});
