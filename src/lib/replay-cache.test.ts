import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { ReplayCache } from "./replay-cache.ts";

const NOW = 1_700_000_000_000;

describe("replay cache", () => {
  it("accepts a message once within its window", () => {
    const c = new ReplayCache({ maxEntries: 10, windowMs: 30_000 });
    expect(c.check("a", NOW, NOW)).toBe("fresh");
    expect(c.check("a", NOW, NOW + 29_000)).toBe("replayed");
    expect(c.check("b", NOW, NOW + 29_000)).toBe("fresh");
  });

  it("refuses messages outside the window, and forgets entries past it", () => {
    const c = new ReplayCache({ maxEntries: 10, windowMs: 30_000 });
    expect(c.check("a", NOW - 30_001, NOW)).toBe("expired");
    expect(c.check("a", NOW + 30_001, NOW)).toBe("expired");
    expect(c.check("b", NOW, NOW)).toBe("fresh");
    expect(c.size).toBe(1);
    expect(c.check("c", NOW + 30_001, NOW + 30_001)).toBe("fresh");
    expect(c.size).toBe(1); // b is past its window: swept
    expect(c.check("b", NOW, NOW + 30_001)).toBe("expired");
  });

  it("at the bound, drops the oldest and refuses everything at or before its time", () => {
    const c = new ReplayCache({ maxEntries: 3, windowMs: 30_000 });
    for (const [k, t] of [
      ["a", NOW + 10],
      ["b", NOW + 5],
      ["c", NOW + 20],
    ] as const) {
      expect(c.check(k, t, NOW + 20)).toBe("fresh");
    }
    expect(c.check("d", NOW + 21, NOW + 21)).toBe("fresh"); // evicts a (time +10)
    expect(c.size).toBe(3);
    expect(c.check("a", NOW + 10, NOW + 22)).toBe("expired");
    // b (time +5) is still held but is at or before the horizon: refused either way.
    expect(c.check("b", NOW + 5, NOW + 22)).toBe("expired");
    expect(c.check("x", NOW + 9, NOW + 22)).toBe("expired");
    expect(c.check("y", NOW + 11, NOW + 22)).toBe("fresh");
  });

  it("never accepts a key twice, whatever the sequence, bound and clock", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 8 }),
        // Each message (a key) has its own time, as a replayed message carries the time it was signed at.
        fc.array(fc.integer({ min: 0, max: 100 }), { minLength: 10, maxLength: 10 }),
        fc.array(fc.tuple(fc.integer({ min: 0, max: 9 }), fc.integer({ min: 0, max: 5 })), { maxLength: 80 }),
        (max, times, events) => {
          const c = new ReplayCache({ maxEntries: max, windowMs: 30 });
          const accepted = new Set<number>();
          let now = 0;
          for (const [key, step] of events) {
            now += step;
            if (c.check(String(key), times[key]!, now) === "fresh") {
              expect(accepted.has(key)).toBe(false);
              accepted.add(key);
            }
            expect(c.size).toBeLessThanOrEqual(max);
          }
        },
      ),
    );
  });
});
