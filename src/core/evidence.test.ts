import { describe, expect, it } from "vitest";
import type { AuditRecord } from "./audit-record.ts";
import { canonicalJson } from "./canonical-json.ts";
import { type EvidenceScope, mergeCounts, processedRegion, Summarizer } from "./evidence.ts";

const scope: EvidenceScope = {
  model_id: "m1",
  environment: "prod-eu",
  restricted_to: "eu",
  from: "2025-01-01T00:00:00.000Z",
  to: "2025-01-02T00:00:00.000Z",
};
const r = (over: Partial<AuditRecord>): AuditRecord => ({
  time: "2025-01-01T12:00:00.000Z",
  request_id: "x",
  model_id: "m1",
  environment: "prod-eu",
  deployment_id: "d",
  hostname_form: "regional",
  route: ["eu-1"],
  status: 200,
  latency_ms: 1,
  plane: "eu-1",
  region: "eu",
  processed_by: "eu-1",
  forwarded_from: null,
  error_code: null,
  aborted: false,
  ...over,
});
const regions: Record<string, string> = { "eu-1": "eu", "eu-2": "eu", "us-1": "us" };
const regionOf = (p: string) => regions[p];

describe("evidence summary", () => {
  it("tells where each record's request was processed, failing closed on an unknown plane", () => {
    const cases: Array<[Partial<AuditRecord>, string | null]> = [
      [{}, "eu"],
      [{ processed_by: null }, null],
      [{ processed_by: "eu-2" }, "eu"],
      [{ plane: "us-1", region: "us", processed_by: "us-1" }, "us"],
      [{ processed_by: "ghost-9" }, null],
    ];
    for (const [over, region] of cases)
      expect(processedRegion(r(over), regionOf), JSON.stringify(over)).toBe(region);
  });

  it("counts the scope's records only, and lists every one processed outside the region", () => {
    const s = new Summarizer(scope, regionOf);
    const records: Array<[Partial<AuditRecord>, boolean]> = [
      [{}, true],
      [{}, true],
      [{ processed_by: null, status: 503 }, true],
      [{ forwarded_from: "us-1", hostname_form: "standard" }, true],
      [{ request_id: "bad", processed_by: "us-1" }, true],
      [{ request_id: "ghost", processed_by: "ghost-9" }, true],
      [{ model_id: "m2" }, false],
      [{ environment: "prod-us" }, false],
      [{ time: "2025-01-02T00:00:00.000Z" }, false], // `to` is exclusive
      [{ time: "2024-12-31T23:59:59.999Z" }, false],
    ];
    for (const [over] of records) s.add(r(over));
    const out = s.result();
    expect(out.requests).toBe(records.filter(([, counted]) => counted).length);
    expect(out.out_of_region.map((x) => x.request_id)).toEqual(["bad", "ghost"]);
    expect(out.counts).toEqual(
      expect.arrayContaining([
        {
          processed_region: "eu",
          processed_by: "eu-1",
          hostname_form: "regional",
          forwarded_from: null,
          count: 2,
        },
        {
          processed_region: null,
          processed_by: null,
          hostname_form: "regional",
          forwarded_from: null,
          count: 1,
        },
        {
          processed_region: "eu",
          processed_by: "eu-1",
          hostname_form: "standard",
          forwarded_from: "us-1",
          count: 1,
        },
        {
          processed_region: "us",
          processed_by: "us-1",
          hostname_form: "regional",
          forwarded_from: null,
          count: 1,
        },
        {
          processed_region: null,
          processed_by: "ghost-9",
          hostname_form: "regional",
          forwarded_from: null,
          count: 1,
        },
      ]),
    );
    expect(mergeCounts([out.counts, out.counts]).reduce((n, c) => n + c.count, 0)).toBe(2 * out.requests);
  });
});

describe("canonical JSON (RFC 8785)", () => {
  it("sorts members by UTF-16 code units and writes no whitespace", () => {
    expect(
      canonicalJson({ b: [1, { z: true, a: null }], a: "é\n", "\u20ac": 1, "\ud83d\ude00": 2, "1": 1.5e-7 }),
    ).toBe('{"1":1.5e-7,"a":"é\\n","b":[1,{"a":null,"z":true}],"€":1,"😀":2}');
    expect(canonicalJson({ a: undefined, b: 1 })).toBe('{"b":1}');
    expect(() => canonicalJson({ a: Number.NaN })).toThrow(TypeError);
  });
});
