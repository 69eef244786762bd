// The ingress's load counters: in flight, the integral in request·ms, the last arrival; idempotent per
// exchange, and exact however rarely they are read.

import { describe, expect, it } from "vitest";
import { LoadMeter } from "./load.ts";

describe("LoadMeter", () => {
  it("integrates requests in flight over time, exactly, between arbitrary reads", () => {
    let t = 1_000_000;
    const m = new LoadMeter(() => t);
    const a = {};
    const b = {};
    m.begin(a, "dep1");
    t += 50;
    m.begin(b, "dep1");
    t += 100;
    m.end(a);
    // a: 150 ms, b: 100 ms so far.
    expect(m.report().deployments).toEqual([
      {
        deployment_id: "dep1",
        in_flight: 1,
        request_ms: 250,
        last_request_at: new Date(1_000_050).toISOString(),
      },
    ]);
    t += 1000;
    m.end(b);
    t += 5000;
    const r = m.report();
    expect(r.deployments[0]).toMatchObject({ in_flight: 0, request_ms: 1250 });
    expect(r.epoch).toBe(new Date(1_000_000).toISOString());
  });

  it("counts an exchange once, and ignores the end of one it never counted", () => {
    let t = 0;
    const m = new LoadMeter(() => t);
    const ex = {};
    m.begin(ex, "dep1");
    m.begin(ex, "dep1");
    expect(m.inFlight("dep1")).toBe(1);
    m.end({});
    m.end(ex);
    m.end(ex);
    t += 10;
    expect(m.inFlight("dep1")).toBe(0);
    expect(m.report().deployments[0]!.request_ms).toBe(0);
  });

  it("never lets a clock stepped back subtract from the counter", () => {
    let t = 10_000;
    const m = new LoadMeter(() => t);
    const ex = {};
    m.begin(ex, "d");
    t = 5_000;
    m.end(ex);
    t = 20_000;
    expect(m.report().deployments[0]!.request_ms).toBe(0);
  });
});
