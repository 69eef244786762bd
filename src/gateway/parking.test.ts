// Held requests: released oldest first as room appears, a bounded queue under every policy, one wake in
// flight per deployment, a timeout, and a place freed when the client goes away.

import { describe, expect, it } from "vitest";
import { Parking } from "./parking.ts";

const SCALE = { wakeable: true, concurrency_target: 1, policy: null } as const;

function setup(limit = 3, timeoutMs = 5_000) {
  let room = 0;
  const wakes: string[] = [];
  let answerWake: (() => void) | null = null;
  const parking = new Parking({
    limits: { queue_per_environment: limit, retry_after_seconds: 7 },
    timeoutMs,
    room: () => room,
    wake: (id) => {
      wakes.push(id);
      return new Promise<boolean>((r) => {
        answerWake = () => r(true);
      });
    },
    pollMs: 5,
  });
  return {
    parking,
    wakes,
    setRoom: (n: number) => {
      room = n;
    },
    room: () => room,
    answer: () => answerWake?.(),
  };
}

describe("Parking", () => {
  it("holds requests while nothing is ready and releases them oldest first as room appears", async () => {
    const { parking, setRoom, wakes, room } = setup();
    const order: number[] = [];
    // A released request takes a slot at the replicas (room goes down as it is forwarded).
    const held = [0, 1, 2].map((i) =>
      parking.park({ i }, "dep1").then((o) => {
        order.push(i);
        setRoom(Math.max(0, room() - 1));
        return o;
      }),
    );
    expect(parking.parked("dep1")).toBe(3);
    // One wake in flight for all three.
    expect(wakes).toEqual(["dep1"]);
    await new Promise((r) => setTimeout(r, 30));
    expect(order).toEqual([]);
    setRoom(2);
    await new Promise((r) => setTimeout(r, 30));
    expect(order).toEqual([0, 1]);
    setRoom(1);
    expect(await Promise.all(held)).toEqual([{ kind: "go" }, { kind: "go" }, { kind: "go" }]);
    expect(order).toEqual([0, 1, 2]);
    expect(parking.parked("dep1")).toBe(0);
  });

  it("refuses beyond the bound with 429's Retry-After, under every policy, and frees a place when a client leaves", () => {
    const { parking } = setup(2);
    const a = {};
    void parking.park(a, "dep1");
    void parking.park({}, "dep1");
    for (const policy of [null, "QUEUE_ON_FULL", "REJECT_ON_FULL"] as const) {
      expect(parking.admit("dep1", { ...SCALE, policy }, 0, 0)).toEqual({
        action: "reject",
        rule: "queue_full",
        retry_after_seconds: 7,
      });
    }
    parking.forget(a);
    expect(parking.parked("dep1")).toBe(1);
    expect(parking.admit("dep1", SCALE, 0, 0)).toEqual({ action: "park" });
    parking.stop();
  });

  it("gives up at the timeout, and asks again once the first wake answered if more arrived", async () => {
    const { parking, wakes, answer } = setup(10, 60);
    const first = parking.park({}, "dep1");
    const second = parking.park({}, "dep1");
    expect(wakes).toHaveLength(1);
    answer();
    await new Promise((r) => setTimeout(r, 10));
    expect(wakes).toHaveLength(2);
    expect(await first).toEqual({ kind: "timeout" });
    expect(await second).toEqual({ kind: "timeout" });
    expect(parking.parked("dep1")).toBe(0);
  });

  it("fails held requests closed once no wake has been accepted for wakeGiveUpMs (control plane away)", async () => {
    let room = 0;
    const parking = new Parking({
      limits: { queue_per_environment: 10, retry_after_seconds: 1 },
      timeoutMs: 60_000,
      room: () => room,
      wake: async () => false,
      wakeGiveUpMs: 50,
      pollMs: 5,
    });
    const started = Date.now();
    expect(await parking.park({}, "dep1")).toEqual({ kind: "unwakeable" });
    expect(Date.now() - started).toBeLessThan(5_000);
    // An accepted wake keeps them waiting for the replica instead.
    const waiting = new Parking({
      limits: { queue_per_environment: 10, retry_after_seconds: 1 },
      timeoutMs: 60_000,
      room: () => room,
      wake: async () => true,
      wakeGiveUpMs: 50,
      pollMs: 5,
    });
    const held = waiting.park({}, "dep1");
    await new Promise((r) => setTimeout(r, 150));
    room = 1;
    expect(await held).toEqual({ kind: "go" });
  });
});
