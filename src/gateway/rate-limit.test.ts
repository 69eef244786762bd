// The async routes' token bucket (rate-limit.ts) on an explicit clock.
import { describe, expect, it } from "vitest";
import { RateLimiter } from "./rate-limit.ts";

describe("RateLimiter", () => {
  it("allows a one-second burst, then refills at the rate", () => {
    const l = new RateLimiter(20);
    const t0 = 1_000_000;
    for (let i = 0; i < 20; i++) expect(l.take("k", t0)).toBe(true);
    expect(l.take("k", t0)).toBe(false);
    expect(l.retryAfterSeconds("k")).toBe(1);
    expect(l.take("k", t0 + 49)).toBe(false); // 0.98 of a token
    expect(l.take("k", t0 + 50)).toBe(true); // one token after 1/20 s
    expect(l.take("k", t0 + 50)).toBe(false);
    // Never more than a full bucket, however long the wait.
    for (let i = 0; i < 20; i++) expect(l.take("k", t0 + 3_600_000)).toBe(true);
    expect(l.take("k", t0 + 3_600_000)).toBe(false);
  });

  it("keeps keys apart, and a clock that goes back refills nothing", () => {
    const l = new RateLimiter(2);
    expect([l.take("a", 10_000), l.take("a", 10_000), l.take("a", 10_000)]).toEqual([true, true, false]);
    expect(l.take("b", 10_000)).toBe(true);
    expect(l.take("a", 5_000)).toBe(false);
    expect(l.take("a", 10_499)).toBe(false);
    expect(l.take("a", 10_500)).toBe(true);
  });

  it("is bounded: past maxKeys the oldest key is forgotten (and starts full again); 0 is no limit", () => {
    const l = new RateLimiter(1, 2);
    expect(l.take("a", 0)).toBe(true);
    expect(l.take("a", 0)).toBe(false);
    expect(l.take("b", 0)).toBe(true);
    expect(l.take("c", 0)).toBe(true); // "a" forgotten
    expect(l.take("a", 0)).toBe(true);
    const off = new RateLimiter(0);
    for (let i = 0; i < 100; i++) expect(off.take("k", 0)).toBe(true);
  });
});
