// The predict-slot limiter: grants up to its limit, queues in arrival order up to maxQueued, refuses the
// rest, hands a released slot to the next waiter, and drops waiters whose client went away.

import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { ConcurrencyLimiter, type Release } from "./limiter.ts";

describe("ConcurrencyLimiter", () => {
  it("grants up to the limit, queues up to maxQueued, then refuses", async () => {
    const limiter = new ConcurrencyLimiter(2, 1);
    const a = await limiter.acquire();
    const b = await limiter.acquire();
    const c = limiter.acquire();
    expect(c).not.toBeNull();
    expect(limiter.acquire()).toBeNull();
    expect([limiter.running, limiter.queued]).toEqual([2, 1]);

    let granted = false;
    void c!.then(() => {
      granted = true;
    });
    await Promise.resolve();
    expect(granted).toBe(false);
    a!();
    const release = await c!;
    expect(granted).toBe(true);
    expect([limiter.running, limiter.queued]).toEqual([2, 0]);
    b!();
    release();
    expect(limiter.running).toBe(0);
  });

  it("serves waiters in arrival order and ignores a second release", async () => {
    const limiter = new ConcurrencyLimiter(1, 3);
    const first = (await limiter.acquire())!;
    const order: number[] = [];
    const waiters = [1, 2, 3].map((n) =>
      limiter.acquire()!.then((release) => {
        order.push(n);
        return release;
      }),
    );
    first();
    first();
    const r1 = await waiters[0]!;
    expect(order).toEqual([1]);
    r1();
    (await waiters[1]!)();
    (await waiters[2]!)();
    expect(order).toEqual([1, 2, 3]);
    expect(limiter.running).toBe(0);
  });

  it("drops a waiter whose signal aborts", async () => {
    const limiter = new ConcurrencyLimiter(1, 2);
    const held = (await limiter.acquire())!;
    const gone = new AbortController();
    const leaving = limiter.acquire(gone.signal)!;
    const staying = limiter.acquire()!;
    gone.abort(new Error("client left"));
    await expect(leaving).rejects.toThrow("client left");
    expect(limiter.queued).toBe(1);
    held();
    (await staying)();
    expect(limiter.running).toBe(0);
  });

  it("never runs more than the limit, whatever the order of acquires and releases", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1, max: 4 }),
        fc.integer({ min: 0, max: 4 }),
        fc.array(fc.boolean(), { maxLength: 40 }),
        async (limit, maxQueued, steps) => {
          const limiter = new ConcurrencyLimiter(limit, maxQueued);
          const held: Release[] = [];
          for (const acquire of steps) {
            if (acquire) {
              const pending = limiter.acquire();
              if (pending === null && limiter.queued !== maxQueued) return false;
              void pending?.then((r) => held.push(r));
            } else {
              held.shift()?.();
            }
            await new Promise((r) => setImmediate(r));
            if (limiter.running > limit || limiter.queued > maxQueued) return false;
            if (limiter.running !== held.length) return false;
          }
          return true;
        },
      ),
    );
  });
});
