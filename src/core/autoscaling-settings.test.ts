import { readFileSync } from "node:fs";
import { Ajv } from "ajv";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  AUTOSCALING_FIELDS,
  type AutoscalingSettings,
  admitRequest,
  applyAutoscalingUpdate,
  applyBackpressureUpdate,
  autoscalingWithDefaults,
  type BackpressurePolicy,
  checkAutoscalingSettings,
  checkBackpressureLimits,
  DEFAULT_AUTOSCALING,
  DEFAULT_BACKPRESSURE,
  DEFAULT_BACKPRESSURE_LIMITS,
  parkedToForward,
} from "./autoscaling-settings.ts";

const D: AutoscalingSettings = { ...DEFAULT_AUTOSCALING };

// The management reference as the control plane ships it (src/control/openapi.ts serves the same file).
const SCHEMAS = JSON.parse(
  readFileSync(new URL("../control/reference/baseten-management-api.subset.json", import.meta.url), "utf8"),
).components.schemas;
const ajv = new Ajv({ strict: false });
ajv.addSchema({ $id: "reference", components: { schemas: SCHEMAS } });
const isReferenceShape = (name: string, body: unknown) =>
  ajv.getSchema(`reference#/components/schemas/${name}`)!(body) as boolean;

describe("autoscaling settings: shape and defaults", () => {
  it("are Baseten's defaults: 0, 1, 60 s, 900 s, 1, 70 %, 50 %", () => {
    expect(DEFAULT_AUTOSCALING).toEqual({
      min_replica: 0,
      max_replica: 1,
      autoscaling_window: 60,
      scale_down_delay: 900,
      concurrency_target: 1,
      target_utilization_percentage: 70,
      target_in_flight_tokens: null,
      max_scale_down_rate: 50,
    });
    expect(checkAutoscalingSettings(D)).toEqual({ ok: true, settings: D, changed: false });
  });

  it("has every property of the reference's AutoscalingSettingsV1, and the defaults are an instance of it", () => {
    const props = Object.keys(SCHEMAS.AutoscalingSettingsV1.properties).sort();
    const update = Object.keys(SCHEMAS.UpdateAutoscalingSettingsV1.properties).sort();
    expect([...AUTOSCALING_FIELDS].sort()).toEqual(props);
    expect([...AUTOSCALING_FIELDS].sort()).toEqual(update);
    expect(isReferenceShape("AutoscalingSettingsV1", DEFAULT_AUTOSCALING)).toBe(true);
    // An accepted update body is also a valid UpdateAutoscalingSettingsV1, so clients built on the
    // reference can send everything Meridian accepts.
    expect(isReferenceShape("UpdateAutoscalingSettingsV1", { max_scale_down_rate: 50, min_replica: 0 })).toBe(
      true,
    );
  });

  it("fills settings stored in the nullable form with the defaults", () => {
    expect(
      autoscalingWithDefaults({
        min_replica: 1,
        max_replica: 3,
        max_scale_down_rate: null,
        scale_down_delay: 0,
      }),
    ).toEqual({ ...D, min_replica: 1, max_replica: 3, scale_down_delay: 0 });
  });
});

describe("autoscaling settings: a partial update merged over the current settings", () => {
  it.each<[string, unknown, Partial<AutoscalingSettings>]>([
    ["nothing (null)", null, {}],
    ["nothing (absent)", undefined, {}],
    ["an empty object", {}, {}],
    ["nulls, which keep the current values", { min_replica: null, autoscaling_window: null }, {}],
    ["max_replica", { max_replica: 4 }, { max_replica: 4 }],
    ["both bounds at once", { min_replica: 2, max_replica: 2 }, { min_replica: 2, max_replica: 2 }],
    ["the window's lower edge", { autoscaling_window: 10 }, { autoscaling_window: 10 }],
    ["the window's upper edge", { autoscaling_window: 3600 }, { autoscaling_window: 3600 }],
    ["no scale-down delay", { scale_down_delay: 0 }, { scale_down_delay: 0 }],
    ["the longest delay", { scale_down_delay: 3600 }, { scale_down_delay: 3600 }],
    ["utilization 1 %", { target_utilization_percentage: 1 }, { target_utilization_percentage: 1 }],
    ["utilization 100 %", { target_utilization_percentage: 100 }, { target_utilization_percentage: 100 }],
    ["scale-down rate 1 %", { max_scale_down_rate: 1 }, { max_scale_down_rate: 1 }],
    ["a large concurrency target", { concurrency_target: 1000 }, { concurrency_target: 1000 }],
    ["target_in_flight_tokens null", { target_in_flight_tokens: null }, {}],
    ["an integral float (JSON 2.0 parses to 2)", JSON.parse('{"max_replica": 2.0}'), { max_replica: 2 }],
  ])("accepts %s", (_name, update, expected) => {
    const check = applyAutoscalingUpdate(D, update);
    expect(check).toEqual({
      ok: true,
      settings: { ...D, ...expected },
      changed: Object.keys(expected).some(
        (k) => expected[k as keyof AutoscalingSettings] !== D[k as keyof AutoscalingSettings],
      ),
    });
  });

  it.each<[string, unknown, string, string | null]>([
    ["an array", [1], "not_an_object", null],
    ["a string", "min_replica=0", "not_an_object", null],
    ["a number", 3, "not_an_object", null],
    ["an unknown field", { min_replicas: 1 }, "unknown_field", "min_replicas"],
    ["__proto__ as a field", JSON.parse('{"__proto__": {"max_replica": 9}}'), "unknown_field", "__proto__"],
    ["a fraction", { max_replica: 1.5 }, "not_an_integer", "max_replica"],
    ["a numeric string", { max_replica: "2" }, "not_an_integer", "max_replica"],
    ["a boolean", { concurrency_target: true }, "not_an_integer", "concurrency_target"],
    ["an object", { scale_down_delay: { seconds: 5 } }, "not_an_integer", "scale_down_delay"],
    ["an unsafe integer", { max_replica: 2 ** 60 }, "not_an_integer", "max_replica"],
    ["Infinity", { autoscaling_window: Number.POSITIVE_INFINITY }, "not_an_integer", "autoscaling_window"],
    ["NaN", { autoscaling_window: Number.NaN }, "not_an_integer", "autoscaling_window"],
    ["a negative min", { min_replica: -1 }, "min_replica_negative", "min_replica"],
    ["max 0", { max_replica: 0 }, "max_replica_below_one", "max_replica"],
    ["min above max", { min_replica: 2 }, "min_above_max", "min_replica"],
    ["a window of 9 s", { autoscaling_window: 9 }, "autoscaling_window_range", "autoscaling_window"],
    ["a window of 3601 s", { autoscaling_window: 3601 }, "autoscaling_window_range", "autoscaling_window"],
    ["a negative delay", { scale_down_delay: -1 }, "scale_down_delay_range", "scale_down_delay"],
    ["a delay of 3601 s", { scale_down_delay: 3601 }, "scale_down_delay_range", "scale_down_delay"],
    [
      "utilization 0",
      { target_utilization_percentage: 0 },
      "target_utilization_range",
      "target_utilization_percentage",
    ],
    [
      "utilization 101",
      { target_utilization_percentage: 101 },
      "target_utilization_range",
      "target_utilization_percentage",
    ],
    ["rate 0", { max_scale_down_rate: 0 }, "max_scale_down_rate_range", "max_scale_down_rate"],
    ["rate 51", { max_scale_down_rate: 51 }, "max_scale_down_rate_range", "max_scale_down_rate"],
    ["concurrency 0", { concurrency_target: 0 }, "concurrency_target_below_one", "concurrency_target"],
    [
      "in-flight tokens",
      { target_in_flight_tokens: 40000 },
      "target_in_flight_tokens_unsupported",
      "target_in_flight_tokens",
    ],
  ])("refuses %s, naming the rule", (_name, update, rule, field) => {
    const check = applyAutoscalingUpdate(D, update);
    expect(check.ok).toBe(false);
    if (check.ok) return;
    expect(check.rule).toBe(rule);
    expect(check.field).toBe(field);
    expect(check.message.length).toBeGreaterThan(15);
    if (field !== null) expect(check.message).toContain(field);
  });

  it("names at most 64 characters of an unknown field, however long the caller's name", () => {
    const name = "x".repeat(10_000);
    const check = applyAutoscalingUpdate(D, { [name]: 1 });
    expect(check.ok).toBe(false);
    if (check.ok) return;
    expect(check.field).toBe("x".repeat(64));
    expect(check.message.length).toBeLessThan(400);
  });

  it("names the same rule for the same body, whatever the order of its fields", () => {
    const a = applyAutoscalingUpdate(D, { autoscaling_window: 5, max_replica: 0 });
    const b = applyAutoscalingUpdate(D, { max_replica: 0, autoscaling_window: 5 });
    expect(a.ok || b.ok).toBe(false);
    if (!a.ok && !b.ok) expect(a.rule).toBe(b.rule);
  });

  it("checks the merged result, so a field valid alone can break a rule with the current ones", () => {
    const current = { ...D, min_replica: 2, max_replica: 4 };
    const check = applyAutoscalingUpdate(current, { max_replica: 1 });
    expect(check.ok).toBe(false);
    if (!check.ok) expect(check.rule).toBe("min_above_max");
    expect(applyAutoscalingUpdate(current, { max_replica: 2 }).ok).toBe(true);
  });

  // The oracle is the rule list of issue 12 written out once more, independently of the validator.
  // Mostly values near a field's own range (its edges included, which uniform integers rarely hit), so
  // that many generated bodies are valid and a rule moved by one is caught; some junk of every JSON type.
  const field = (lo: number, hi: number) =>
    fc.oneof(
      { arbitrary: fc.integer({ min: lo, max: hi }), weight: 6 },
      { arbitrary: fc.constantFrom(lo - 1, lo, lo + 1, hi - 1, hi, hi + 1), weight: 4 },
      { arbitrary: fc.constant(null), weight: 1 },
      { arbitrary: fc.double({ noInteger: true, noDefaultInfinity: true }), weight: 1 },
      { arbitrary: fc.oneof(fc.string({ maxLength: 3 }), fc.boolean()), weight: 1 },
    );
  const updateArb = fc.record(
    {
      min_replica: field(0, 6),
      max_replica: field(1, 6),
      autoscaling_window: field(10, 3600),
      scale_down_delay: field(0, 3600),
      concurrency_target: field(1, 64),
      target_utilization_percentage: field(1, 100),
      max_scale_down_rate: field(1, 50),
    },
    { requiredKeys: [] },
  );

  it("accepts an update exactly when every rule holds for the merged settings", () => {
    fc.assert(
      fc.property(updateArb, (update) => {
        const merged: Record<string, unknown> = { ...D };
        for (const [k, v] of Object.entries(update)) if (v !== null) merged[k] = v;
        const m = merged as Record<string, number>;
        const int = (k: string) => Number.isSafeInteger(merged[k]);
        const expected =
          AUTOSCALING_FIELDS.filter((f) => f !== "target_in_flight_tokens").every(int) &&
          m.min_replica! >= 0 &&
          m.max_replica! >= 1 &&
          m.min_replica! <= m.max_replica! &&
          m.autoscaling_window! >= 10 &&
          m.autoscaling_window! <= 3600 &&
          m.scale_down_delay! >= 0 &&
          m.scale_down_delay! <= 3600 &&
          m.concurrency_target! >= 1 &&
          m.target_utilization_percentage! >= 1 &&
          m.target_utilization_percentage! <= 100 &&
          m.max_scale_down_rate! >= 1 &&
          m.max_scale_down_rate! <= 50;
        const check = applyAutoscalingUpdate(D, update);
        expect(check.ok).toBe(expected);
        if (check.ok) {
          expect(check.settings).toEqual(merged);
          expect(checkAutoscalingSettings(check.settings).ok).toBe(true);
          expect(isReferenceShape("AutoscalingSettingsV1", check.settings)).toBe(true);
          expect(isReferenceShape("UpdateAutoscalingSettingsV1", update)).toBe(true);
        } else {
          expect(check.message.length).toBeGreaterThan(15);
        }
      }),
      { numRuns: 2000 },
    );
  });

  it("never changes the current settings object it was given", () => {
    fc.assert(
      fc.property(updateArb, (update) => {
        const current = { ...D };
        applyAutoscalingUpdate(current, update);
        expect(current).toEqual(D);
      }),
    );
  });

  it("refuses stored settings that break a rule (the decider never acts on them)", () => {
    expect(checkAutoscalingSettings({ ...D, autoscaling_window: 5 }).ok).toBe(false);
    expect(checkAutoscalingSettings({ ...D, max_scale_down_rate: null as unknown as number }).ok).toBe(false);
  });
});

describe("request backpressure settings", () => {
  it("default to no policy, as the reference's RequestBackpressureSettingsV1", () => {
    expect(DEFAULT_BACKPRESSURE).toEqual({ policy: null });
    expect(Object.keys(SCHEMAS.RequestBackpressureSettingsV1.properties)).toEqual(["policy"]);
    expect([...SCHEMAS.RequestBackpressurePolicyV1.enum].sort()).toEqual(["QUEUE_ON_FULL", "REJECT_ON_FULL"]);
    for (const policy of [null, "QUEUE_ON_FULL", "REJECT_ON_FULL"]) {
      expect(isReferenceShape("RequestBackpressureSettingsV1", { policy })).toBe(true);
      expect(isReferenceShape("UpdateRequestBackpressureSettingsV1", { policy })).toBe(true);
    }
  });

  it.each<[string, unknown, BackpressurePolicy | null, boolean]>([
    ["null keeps the current policy", null, "QUEUE_ON_FULL", false],
    ["absent keeps the current policy", undefined, "QUEUE_ON_FULL", false],
    ["REJECT_ON_FULL", { policy: "REJECT_ON_FULL" }, "REJECT_ON_FULL", true],
    ["QUEUE_ON_FULL again", { policy: "QUEUE_ON_FULL" }, "QUEUE_ON_FULL", false],
    ["policy null clears it", { policy: null }, null, true],
    ["an empty object clears it (policy defaults to null)", {}, null, true],
  ])("%s", (_name, update, policy, changed) => {
    expect(applyBackpressureUpdate({ policy: "QUEUE_ON_FULL" }, update)).toEqual({
      ok: true,
      settings: { policy },
      changed,
    });
  });

  it.each<[unknown, string]>([
    [[], "not_an_object"],
    ["REJECT_ON_FULL", "not_an_object"],
    [{ policy: "reject_on_full" }, "unknown_policy"],
    [{ policy: "DROP" }, "unknown_policy"],
    [{ policy: 1 }, "unknown_policy"],
    [{ policy: "REJECT_ON_FULL", queue_size: 10 }, "unknown_field"],
    [JSON.parse('{"__proto__": {"policy": "REJECT_ON_FULL"}}'), "unknown_field"],
  ])("refuses %j (%s)", (update, rule) => {
    const check = applyBackpressureUpdate(DEFAULT_BACKPRESSURE, update);
    expect(check.ok).toBe(false);
    if (!check.ok) expect(check.rule).toBe(rule);
  });

  it("checks the operator's limits", () => {
    expect(checkBackpressureLimits(DEFAULT_BACKPRESSURE_LIMITS).ok).toBe(true);
    expect(checkBackpressureLimits({ queue_per_environment: 0, retry_after_seconds: 1 })).toMatchObject({
      ok: false,
      rule: "out_of_range",
      field: "queue_per_environment",
    });
    expect(checkBackpressureLimits({ queue_per_environment: 8, retry_after_seconds: 0.5 })).toMatchObject({
      ok: false,
      rule: "not_an_integer",
      field: "retry_after_seconds",
    });
  });
});

describe("admission at an ingress", () => {
  const limits = { queue_per_environment: 3, retry_after_seconds: 2 };
  const base = { concurrency_target: 2, ready: 2, forwarded: 0, parked: 0, limits };

  it.each<[string, Partial<typeof base> & { policy: BackpressurePolicy | null }, string]>([
    ["asleep: a request parks (it is the wake)", { policy: "REJECT_ON_FULL", ready: 0 }, "park"],
    ["asleep with a full queue: 429", { policy: null, ready: 0, parked: 3 }, "queue_full"],
    ["no policy forwards past the target", { policy: null, forwarded: 40 }, "forward"],
    ["QUEUE_ON_FULL with room forwards", { policy: "QUEUE_ON_FULL", forwarded: 3 }, "forward"],
    ["QUEUE_ON_FULL when full parks", { policy: "QUEUE_ON_FULL", forwarded: 4 }, "park"],
    ["QUEUE_ON_FULL keeps the queue's order", { policy: "QUEUE_ON_FULL", forwarded: 1, parked: 1 }, "park"],
    [
      "QUEUE_ON_FULL with a full queue: 429",
      { policy: "QUEUE_ON_FULL", forwarded: 4, parked: 3 },
      "queue_full",
    ],
    ["REJECT_ON_FULL with room forwards", { policy: "REJECT_ON_FULL", forwarded: 3 }, "forward"],
    ["REJECT_ON_FULL when full: 429", { policy: "REJECT_ON_FULL", forwarded: 4 }, "replicas_full"],
    [
      "REJECT_ON_FULL counts the parked",
      { policy: "REJECT_ON_FULL", forwarded: 2, parked: 2 },
      "replicas_full",
    ],
  ])("%s", (_name, over, expected) => {
    const a = admitRequest({ ...base, ...over });
    expect(a.action === "reject" ? a.rule : a.action).toBe(expected);
    if (a.action === "reject") expect(a.retry_after_seconds).toBe(2);
  });

  it("keeps what an ingress holds bounded, whatever the arrivals (QUEUE_ON_FULL and REJECT_ON_FULL)", () => {
    // A simulation of one ingress: arrivals admitted one by one, completions freeing slots, the queue
    // drained oldest first. Under a limiting policy no replica is ever past its target, and the queue
    // never grows past its bound.
    fc.assert(
      fc.property(
        fc.constantFrom<BackpressurePolicy>("QUEUE_ON_FULL", "REJECT_ON_FULL"),
        fc.integer({ min: 0, max: 4 }),
        fc.integer({ min: 1, max: 4 }),
        fc.array(fc.constantFrom("arrive", "arrive", "complete", "ready_up", "ready_down"), {
          maxLength: 200,
        }),
        (policy, ready0, ct, events) => {
          let ready = ready0;
          let forwarded = 0;
          let parked = 0;
          const drain = () => {
            const n = parkedToForward({ policy, concurrency_target: ct, ready, forwarded, parked });
            parked -= n;
            forwarded += n;
          };
          for (const e of events) {
            if (e === "arrive") {
              const a = admitRequest({ policy, concurrency_target: ct, ready, forwarded, parked, limits });
              if (a.action === "forward") {
                expect(forwarded).toBeLessThan(ready * ct);
                forwarded++;
              }
              if (a.action === "park") parked++;
            } else if (e === "complete" && forwarded > 0) forwarded--;
            else if (e === "ready_up") ready++;
            else if (e === "ready_down" && ready > 0) ready--;
            const before = forwarded;
            drain();
            // A replica that went away leaves its requests counted until they end; the queue adds none then.
            expect(forwarded).toBeLessThanOrEqual(Math.max(before, ready * ct));
            expect(parked).toBeLessThanOrEqual(limits.queue_per_environment);
          }
        },
      ),
    );
  });
});
