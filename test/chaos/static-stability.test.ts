// Static stability (issue 15, DESIGN.md §2.7), the CI slice of `npm run chaos`: the control plane and its
// database (SQLite, inside the control process) down for 30 s under steady load on every endpoint of four
// regions. Requests keep succeeding from the planes' cached snapshots, none is answered out of region, a
// plane SIGKILLed and started again during the outage serves from its cached snapshot within 60 s, and a
// key revoked before the outage stays refused on every plane throughout. Before it, the SQLite file made
// unwritable under the running control plane (chattr +i) for 10 s. The 10-minute run is
// `npm run chaos -- --minutes 10` (RELIABILITY.md).

import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { expectServedThroughDatabaseFault } from "./checks.ts";
import { controlDown, sqliteUnwritable } from "./faults.ts";
import {
  auditOutOfRegion,
  count,
  duplicateExecutions,
  Load,
  sleep,
  startWorld,
  type World,
} from "./harness.ts";

const OUTAGE_S = 30;

describe("control plane and its database down under load", () => {
  let world: World;

  beforeAll(async () => {
    world = await startWorld({ timeoutS: 3 });
  }, 120_000);
  afterAll(async () => {
    await world?.cluster.stop();
  }, 60_000);

  it("serves on while the control plane's SQLite file refuses writes: reads go on, writes 503 store_unavailable and none half done, then writes again", async () => {
    const load = new Load(world, { concurrency: 2, pauseMs: 30 });
    const run = await sqliteUnwritable(world, 10);
    const results = await load.stop();
    console.log(JSON.stringify(run.extra, null, 1));
    expectServedThroughDatabaseFault(world, results, run);
    const e = run.extra;
    // Reads answer from the file as it is; every write is refused whole and typed.
    expect(String(e["management API reads during"])).toMatch(/^200: \d+$/);
    expect(String(e["management API writes during"])).toMatch(/^503 store_unavailable: \d+$/);
    expect(e["management API slowest during (ms)"]).toBeLessThan(10_000);
    expect(e["writes answered 200 but lost"]).toBe(0);
    expect(e["writes refused but applied"]).toBe(0);
    expect(e["management API write answered 200 again after (ms)"]).toBeGreaterThanOrEqual(0);
    expect(e["management API write answered 200 again after (ms)"]).toBeLessThan(30_000);
  }, 120_000);

  it(`serves on for ${OUTAGE_S} s from cached snapshots, restarts a plane from its cache, keeps a revocation`, async () => {
    const load = new Load(world, { concurrency: 2, pauseMs: 30 });
    const run = await controlDown(world, OUTAGE_S);
    await sleep(8_000);
    const results = await load.stop();

    // The uk endpoint's plane is the one the fault restarts: counted apart.
    const uk = "uk regional @uk-1";
    const others = count(
      results.filter((r) => r.target !== uk),
      world,
      run.startedAt,
      run.restoredAt,
    );
    expect(others.sent).toBeGreaterThan(200);
    expect(others.hung).toBe(0);
    expect(others.out_of_region).toBe(0);
    expect(others.ok / others.sent, JSON.stringify(others.codes)).toBeGreaterThanOrEqual(0.999);
    const ukCounts = count(
      results.filter((r) => r.target === uk),
      world,
      run.startedAt,
      run.restoredAt,
    );
    expect(ukCounts.hung).toBe(0);
    expect(ukCounts.untyped_error).toBe(0);

    const served = run.extra["uk-1 restarted during the outage served after (ms)"] as number;
    expect(served).toBeGreaterThan(0);
    expect(served).toBeLessThan(60_000);
    // The revoked key, tried against every plane during the outage (the restarted one included).
    expect(run.sideResults!.length).toBeGreaterThan(20);
    expect(run.sideResults!.filter((r) => r.outcome === "ok")).toEqual([]);
    expect(run.sideResults!.filter((r) => r.status === 401).length).toBeGreaterThan(
      run.sideResults!.length * 0.8,
    );
    // Once the control plane is back, every endpoint answers.
    const after = count(results, world, run.endedAt, Number.MAX_SAFE_INTEGER);
    expect(after.sent).toBeGreaterThan(20);
    expect(after.ok, JSON.stringify(after.codes)).toBe(after.sent);

    await world.cluster.stop();
    expect(duplicateExecutions(world.cluster)).toEqual([]);
    expect(auditOutOfRegion(world).outside).toEqual([]);
  }, 150_000);
});
