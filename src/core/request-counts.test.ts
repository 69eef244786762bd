import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { type RequestCount, resolveRequestCounts, UNKNOWN_MODEL } from "./request-counts.ts";

const known = new Map([["aaaaaaa1", new Set(["production", "prod-eu"])]]);
const lookup = (id: string) => known.get(id);
const c = (model_id: string, environment: string | null, count = 1, status_class = "2xx"): RequestCount => ({
  model_id,
  environment,
  status_class,
  count,
});

describe("resolveRequestCounts", () => {
  it.each<[string, RequestCount[], RequestCount[]]>([
    ["keeps names that exist", [c("aaaaaaa1", "prod-eu", 3)], [c("aaaaaaa1", "prod-eu", 3)]],
    ["keeps a count without environment", [c("aaaaaaa1", null, 2)], [c("aaaaaaa1", null, 2)]],
    ["an unknown environment becomes none", [c("aaaaaaa1", "guess", 2)], [c("aaaaaaa1", null, 2)]],
    ["an unknown model becomes the fixed name", [c("zzzzzzz9", "x", 4)], [c(UNKNOWN_MODEL, null, 4)]],
    [
      "what falls together is merged",
      [c("aaaaaaa1", "g1"), c("aaaaaaa1", "g2"), c("aaaaaaa1", null), c("q1", "a"), c("q2", "b")],
      [c("aaaaaaa1", null, 3), c(UNKNOWN_MODEL, null, 2)],
    ],
    [
      "status classes stay apart",
      [c("q1", null, 1, "4xx"), c("q2", null, 1, "2xx")],
      [c(UNKNOWN_MODEL, null, 1, "4xx"), c(UNKNOWN_MODEL, null, 1, "2xx")],
    ],
    ["empty counts are dropped", [c("aaaaaaa1", "prod-eu", 0)], []],
  ])("%s", (_, input, want) => {
    expect(resolveRequestCounts(input, lookup)).toEqual(want);
  });

  it("never yields more rows than known names allow, and keeps every request", () => {
    const count = fc.record({
      model_id: fc.oneof(fc.constant("aaaaaaa1"), fc.string()),
      environment: fc.option(fc.oneof(fc.constantFrom("production", "prod-eu"), fc.string())),
      status_class: fc.constantFrom("2xx", "4xx", "5xx"),
      count: fc.integer({ min: 1, max: 1000 }),
    });
    fc.assert(
      fc.property(fc.array(count, { maxLength: 200 }), (counts) => {
        const out = resolveRequestCounts(counts, lookup);
        // (aaaaaaa1 × {production, prod-eu, none} + unknown) × 3 classes
        expect(out.length).toBeLessThanOrEqual((3 + 1) * 3);
        const total = (xs: RequestCount[]) => xs.reduce((n, x) => n + x.count, 0);
        expect(total(out)).toBe(total(counts));
      }),
    );
  });
});
