import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  downPlanes,
  type Hearing,
  judgePlanes,
  observeEveryMs,
  observeHearing,
  type PlaneHeard,
  silenceMs,
  stallMs,
  startHearing,
} from "./fail-static.ts";

const T = 15_000;
const S = { timeoutMs: T };
const START = 1_000_000;
const plane = (name: string, region: string, lastSeenMs: number | null, createdMs = 0): PlaneHeard => ({
  name,
  region,
  lastSeenMs,
  createdMs,
});
const verdict = (planes: PlaneHeard[], sinceMs: number, now: number) =>
  Object.fromEntries(
    judgePlanes(planes, { sinceMs }, now, S).map((v) => [
      v.name,
      v.state === "spared" ? `spared:${v.reason}` : v.state,
    ]),
  );

describe("judgePlanes", () => {
  const now = START + 60_000;
  it.each([
    {
      why: "a plane heard within the timeout is up",
      planes: [plane("eu-1", "eu", now - 1_000), plane("eu-2", "eu", now - T)],
      since: START,
      want: { "eu-1": "up", "eu-2": "up" },
    },
    {
      why: "a silent plane whose region peer was heard a timeout after it is down (in-region failover)",
      planes: [plane("eu-1", "eu", now - 20_000), plane("eu-2", "eu", now - 1_000)],
      since: START,
      want: { "eu-1": "down", "eu-2": "up" },
    },
    {
      why: "the only plane of a region is never down on silence alone",
      planes: [plane("us-1", "us", now - 500), plane("eu-1", "eu", now - 40_000)],
      since: START,
      want: { "us-1": "up", "eu-1": "spared:region_silent" },
    },
    {
      why: "a region whose planes all fell silent together keeps them all (a partition of the region)",
      planes: [
        plane("eu-1", "eu", now - 30_000),
        plane("eu-2", "eu", now - 29_000),
        plane("us-1", "us", now),
      ],
      since: START,
      want: { "eu-1": "spared:region_silent", "eu-2": "spared:region_silent", "us-1": "up" },
    },
    {
      why: "in a silent region a plane silent a timeout before the last one heard stays down",
      planes: [plane("eu-1", "eu", now - 50_000), plane("eu-2", "eu", now - 30_000)],
      since: START,
      want: { "eu-1": "down", "eu-2": "spared:region_silent" },
    },
    {
      why: "every plane of every region silent (the control plane was cut off): none is down",
      planes: [
        plane("us-1", "us", now - 25_000),
        plane("eu-1", "eu", now - 25_000),
        plane("eu-2", "eu", now - 26_000),
        plane("uk-1", "uk", now - 25_500),
        plane("au-1", "au", now - 24_000),
      ],
      since: START,
      want: {
        "us-1": "spared:region_silent",
        "eu-1": "spared:region_silent",
        "eu-2": "spared:region_silent",
        "uk-1": "spared:region_silent",
        "au-1": "spared:region_silent",
      },
    },
    {
      why: "after a stall of its own the control plane waits a full timeout for fresh reports",
      planes: [plane("eu-1", "eu", now - 25_000), plane("eu-2", "eu", now - 100)],
      since: now - 1_000,
      want: { "eu-1": "spared:waiting_for_reports", "eu-2": "up" },
    },
    {
      why: "a timeout after hearing again, a peer's report is evidence again",
      planes: [plane("eu-1", "eu", now - 40_000), plane("eu-2", "eu", now - 100)],
      since: now - 16_000,
      want: { "eu-1": "down", "eu-2": "up" },
    },
    {
      why: "a peer heard after the stall, but not a timeout after it, is no evidence",
      planes: [plane("eu-1", "eu", now - 40_000), plane("eu-2", "eu", now - 5_000)],
      since: now - 16_000,
      want: { "eu-1": "spared:region_silent", "eu-2": "up" },
    },
    {
      why: "a registered plane that never reported is down once its peers were heard a timeout later",
      planes: [plane("eu-1", "eu", null, now - 30_000), plane("eu-2", "eu", now - 100, now - 30_000)],
      since: START,
      want: { "eu-1": "down", "eu-2": "up" },
    },
    {
      why: "a plane registered moments ago is up",
      planes: [plane("eu-1", "eu", null, now - 1_000), plane("eu-2", "eu", now)],
      since: START,
      want: { "eu-1": "up", "eu-2": "up" },
    },
    {
      why: "a report from the future (the wall clock went back) is not silence",
      planes: [plane("eu-1", "eu", now + 3_600_000), plane("eu-2", "eu", now)],
      since: START,
      want: { "eu-1": "up", "eu-2": "up" },
    },
  ])("$why", ({ planes, since, want }) => {
    expect(verdict(planes, since, now)).toEqual(want);
  });

  it("a region coming back together: the first plane back is no witness against the slower one", () => {
    const planes = [plane("eu-1", "eu", now - 100), plane("eu-2", "eu", now - 25_000)];
    const judged = (returned: Record<string, number>) =>
      Object.fromEntries(
        judgePlanes(planes, { sinceMs: START, returned }, now, S).map((v) => [
          v.name,
          v.state === "spared" ? `spared:${v.reason}` : v.state,
        ]),
      );
    // eu-1 came back 2 s ago after being silent itself: eu-2 is spared.
    expect(judged({ "eu-1": now - 2_000 })).toEqual({ "eu-1": "up", "eu-2": "spared:region_silent" });
    // eu-1 has been heard for a full timeout since it came back: now it is evidence.
    expect(judged({ "eu-1": now - T - 1_000 })).toEqual({ "eu-1": "up", "eu-2": "down" });
    // eu-1 heard throughout (never returned): evidence, as in an ordinary failover.
    expect(judged({})).toEqual({ "eu-1": "up", "eu-2": "down" });
  });

  it("reports how long a judged plane has been silent", () => {
    const [v] = judgePlanes(
      [plane("eu-1", "eu", START), plane("eu-2", "eu", START + 40_000)],
      { sinceMs: 0 },
      START + 41_000,
      S,
    );
    expect(v).toEqual({ name: "eu-1", state: "down", silentMs: 41_000 });
  });
});

describe("observeHearing", () => {
  const tick = observeEveryMs(S);
  const step = (h: Hearing, wallDelta: number, monoDelta: number, latestReportMs?: number | null) =>
    observeHearing(
      h,
      {
        wallMs: h.lastWallMs + wallDelta,
        monoMs: h.lastMonoMs + monoDelta,
        ...(latestReportMs !== undefined ? { planes: [{ name: "p", lastSeenMs: latestReportMs }] } : {}),
      },
      S,
    );

  it("ordinary ticks with reports arriving leave the hearing alone", () => {
    let h = startHearing(START, 10);
    for (let i = 0; i < 100; i++) h = step(h, tick, tick, h.lastWallMs + tick - 300);
    expect(h.sinceMs).toBe(START);
    expect(h.deaf).toBe(false);
  });

  it("a monotonic gap longer than the stall threshold (SIGSTOP) restarts the wait", () => {
    const h = step(startHearing(START, 10), 25_000, 25_000);
    expect(h).toMatchObject({ sinceMs: START + 25_000, cause: "stalled" });
    // A gap just under the threshold is an ordinary slow tick.
    expect(step(startHearing(START, 10), stallMs(S), stallMs(S)).sinceMs).toBe(START);
  });

  it("a wall clock that jumps, forward or back, restarts the wait", () => {
    const forward = step(startHearing(START, 10), 3_600_000 + tick, tick);
    expect(forward).toMatchObject({ sinceMs: START + 3_600_000 + tick, cause: "clock_jumped" });
    const back = step(startHearing(START, 10), -3_600_000, tick);
    expect(back).toMatchObject({ sinceMs: START - 3_600_000, cause: "clock_jumped" });
  });

  it("the first report after every plane fell silent (a partition of its own) restarts the wait", () => {
    let h = startHearing(START, 10);
    const lastReport = START + 500;
    // Ticks go on (no stall), but nothing is heard for 20 s.
    for (let t = tick; t <= 20_000; t += tick) h = step(h, tick, tick, lastReport);
    expect(h.deaf).toBe(true);
    expect(h.sinceMs).toBe(START);
    h = step(h, tick, tick, h.lastWallMs + tick - 10);
    expect(h).toMatchObject({ deaf: false, sinceMs: h.lastWallMs, cause: "heard_again" });
  });

  it("a silence of everyone shorter than a few report intervals is ordinary", () => {
    let h = startHearing(START, 10);
    const lastReport = START;
    for (let t = tick; t < silenceMs(S); t += tick) h = step(h, tick, tick, lastReport);
    h = step(h, tick, tick, h.lastWallMs);
    expect(h.sinceMs).toBe(START);
  });

  it("a plane reporting after a silence longer than the timeout has come back, and stays noted as such", () => {
    let h = startHearing(START, 10);
    const obs = (planes: Array<{ name: string; lastSeenMs: number | null }>) => {
      h = observeHearing(h, { wallMs: h.lastWallMs + tick, monoMs: h.lastMonoMs + tick, planes }, S);
      return h;
    };
    obs([
      { name: "eu-1", lastSeenMs: START },
      { name: "eu-2", lastSeenMs: START },
    ]);
    obs([
      { name: "eu-1", lastSeenMs: START + 2_000 },
      { name: "eu-2", lastSeenMs: START + T + 5_000 },
    ]);
    expect(h.returned).toEqual({ "eu-2": START + T + 5_000 });
    obs([
      { name: "eu-1", lastSeenMs: START + 4_000 },
      { name: "eu-2", lastSeenMs: START + T + 7_000 },
    ]);
    expect(h.returned).toEqual({ "eu-2": START + T + 5_000 });
    expect(h.lastSeen).toEqual({ "eu-1": START + 4_000, "eu-2": START + T + 7_000 });
  });

  it("observations that do not look at the reports keep the deafness as it was", () => {
    const deaf = { ...startHearing(START, 10), deaf: true };
    expect(step(deaf, tick, tick).deaf).toBe(true);
  });
});

describe("fail-static properties", () => {
  const arbPlanes = fc
    .array(
      fc.record({
        region: fc.constantFrom("us", "eu", "uk", "au"),
        lastSeenMs: fc.option(fc.integer({ min: 0, max: 200_000 }), { nil: null }),
        createdMs: fc.integer({ min: 0, max: 100_000 }),
      }),
      { minLength: 1, maxLength: 12 },
    )
    .map((ps) =>
      ps.map((p, i) => ({
        ...p,
        name: `p${i}`,
        lastSeenMs: p.lastSeenMs === null ? null : Math.max(p.lastSeenMs, p.createdMs),
      })),
    );
  const arbNow = fc.integer({ min: 0, max: 400_000 });
  const arbSince = fc.integer({ min: 0, max: 400_000 });
  const arbTimeout = fc.integer({ min: 1_000, max: 60_000 });

  it("every region keeps at least one plane that is not down", () => {
    fc.assert(
      fc.property(arbPlanes, arbSince, arbNow, arbTimeout, (planes, sinceMs, now, timeoutMs) => {
        const down = new Set(downPlanes(judgePlanes(planes, { sinceMs }, now, { timeoutMs })));
        for (const region of new Set(planes.map((p) => p.region))) {
          const inRegion = planes.filter((p) => p.region === region);
          expect(inRegion.some((p) => !down.has(p.name))).toBe(true);
        }
      }),
    );
  });

  it("no plane is down within a timeout of the control plane hearing again", () => {
    fc.assert(
      fc.property(
        arbPlanes,
        arbSince,
        arbTimeout,
        fc.integer({ min: 0, max: 60_000 }),
        (planes, sinceMs, timeoutMs, after) => {
          const now = sinceMs + Math.min(after, timeoutMs);
          expect(downPlanes(judgePlanes(planes, { sinceMs }, now, { timeoutMs }))).toEqual([]);
        },
      ),
    );
  });

  it("a down plane was silent for a timeout, and a peer of its region was heard a timeout after it and after its own return", () => {
    fc.assert(
      fc.property(
        arbPlanes,
        arbSince,
        arbNow,
        arbTimeout,
        fc.array(fc.integer({ min: 0, max: 200_000 }), { maxLength: 12 }),
        (planes, sinceMs, now, timeoutMs, backs) => {
          const returned = Object.fromEntries(
            backs.slice(0, planes.length).map((t, i) => [planes[i]!.name, t]),
          );
          for (const name of downPlanes(judgePlanes(planes, { sinceMs, returned }, now, { timeoutMs }))) {
            const p = planes.find((x) => x.name === name)!;
            const heard = Math.max(p.lastSeenMs ?? p.createdMs, p.createdMs, sinceMs);
            expect(now - heard).toBeGreaterThan(timeoutMs);
            const witness = planes.some(
              (q) =>
                q.region === p.region &&
                q.lastSeenMs !== null &&
                q.lastSeenMs - heard > timeoutMs &&
                q.lastSeenMs - (returned[q.name] ?? Number.NEGATIVE_INFINITY) > timeoutMs,
            );
            expect(witness).toBe(true);
          }
        },
      ),
    );
  });

  it("every region keeps a plane that is not down, whatever planes came back when", () => {
    fc.assert(
      fc.property(
        arbPlanes,
        arbSince,
        arbNow,
        arbTimeout,
        fc.array(fc.integer({ min: 0, max: 200_000 }), { maxLength: 12 }),
        (planes, sinceMs, now, timeoutMs, backs) => {
          const returned = Object.fromEntries(
            backs.slice(0, planes.length).map((t, i) => [planes[i]!.name, t]),
          );
          const down = new Set(downPlanes(judgePlanes(planes, { sinceMs, returned }, now, { timeoutMs })));
          for (const region of new Set(planes.map((p) => p.region))) {
            expect(planes.some((p) => p.region === region && !down.has(p.name))).toBe(true);
          }
        },
      ),
    );
  });

  it("a fresh report never turns an up plane down (judgement is monotonic in reports)", () => {
    fc.assert(
      fc.property(
        arbPlanes,
        arbSince,
        arbNow,
        arbTimeout,
        fc.nat(),
        (planes, sinceMs, now, timeoutMs, pick) => {
          const before = new Set(downPlanes(judgePlanes(planes, { sinceMs }, now, { timeoutMs })));
          const i = pick % planes.length;
          const heardNow = planes.map((p, j) =>
            j === i ? { ...p, lastSeenMs: Math.max(now, p.createdMs) } : p,
          );
          const after = downPlanes(judgePlanes(heardNow, { sinceMs }, now, { timeoutMs }));
          expect(after.includes(planes[i]!.name)).toBe(false);
          // The fresh report may be a witness against a silent peer; it never spares anyone who was down.
          for (const name of before) if (name !== planes[i]!.name) expect(after).toContain(name);
        },
      ),
    );
  });

  it("stall threshold, silence threshold and observation period keep their order", () => {
    fc.assert(
      fc.property(arbTimeout, (timeoutMs) => {
        const s = { timeoutMs };
        expect(observeEveryMs(s) * 2).toBeLessThan(stallMs(s));
        expect(stallMs(s)).toBeLessThan(timeoutMs);
        expect(silenceMs(s)).toBeGreaterThan(stallMs(s));
      }),
    );
  });
});
