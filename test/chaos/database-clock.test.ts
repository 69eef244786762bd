// The control plane's database stopped, and clock jumps (issue 15 item 1), CI slices of `npm run chaos`.
// The control plane runs on a PostgreSQL cluster of the test's own (initdb in a temp directory, its own
// port and socket; never the machine's shared server), which is stopped with `pg_ctl stop -m fast` under
// steady load on every endpoint of four regions, then started again: serving holds from the planes'
// snapshots, the management API answers typed errors meanwhile and answers again after, no plane is judged
// down. Every process runs under libfaketime (Debian's `faketime`, installed by .ci/run) with its own
// clock file; the wall clocks of the control plane, a plane and the global ingress jump forward and back
// under load: no plane is judged down and every answer is a 2xx or a typed error.

import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { freePort } from "../support/cluster.ts";
import { PrivatePostgres } from "../support/private-postgres.ts";
import { expectServedThroughDatabaseFault } from "./checks.ts";
import { Clocks, clockJumps, databaseStop } from "./faults.ts";
import { auditOutOfRegion, count, Load, sleep, startWorld, type World } from "./harness.ts";

describe("the control plane's database stopped, and clock jumps, under load", () => {
  let pg: PrivatePostgres;
  let world: World;
  const clocks = new Clocks();

  beforeAll(async () => {
    pg = new PrivatePostgres(await freePort("127.0.0.1")).init();
    const planes = ["us-1", "eu-1", "eu-2", "uk-1", "au-1"];
    // The control plane inherits the test's environment: its clock file is set there for its start only.
    const saved = { ...process.env };
    Object.assign(process.env, clocks.env("control"));
    try {
      world = await startWorld({
        timeoutS: 3,
        databaseUrl: pg.url,
        planeEnv: Object.fromEntries(planes.map((n) => [n, clocks.env(n)])),
      });
    } finally {
      for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k];
      Object.assign(process.env, saved);
    }
  }, 150_000);
  afterAll(async () => {
    await world?.cluster.stop();
    pg?.destroy();
    clocks.remove();
  }, 60_000);

  it("wall clocks jumping forward and back judge no plane down; every answer 2xx or typed", async () => {
    const load = new Load(world, { concurrency: 2, pauseMs: 30 });
    const run = await clockJumps(world, clocks, load.results, 300, 6);
    const results = await load.stop();
    console.log(JSON.stringify(run.extra, null, 1));
    expect(run.extra["planes judged down"]).toBe("none");
    expect(run.extra["control plane still running"], world.cluster.control.output.slice(-20).join("\n")).toBe(
      true,
    );
    const c = count(results, world, run.startedAt, run.endedAt);
    expect(c.sent).toBeGreaterThan(100);
    expect(c.hung + c.untyped_error + c.out_of_region).toBe(0);
    // The clocks did move, as each process read them.
    const skews = Object.keys(run.extra).filter((k) => {
      const m = /\(clock read (-?\d+) s off\)/.exec(k);
      return m !== null && Math.abs(Number(m[1])) >= 250;
    });
    expect(skews.length, Object.keys(run.extra).join("\n")).toBeGreaterThanOrEqual(2);
  }, 120_000);

  it("serves on, the management API answers typed errors, and recovers once the database is back", async () => {
    const load = new Load(world, { concurrency: 2, pauseMs: 30 });
    const run = await databaseStop(world, pg, 10);
    await sleep(2_000);
    const results = await load.stop();
    console.log(JSON.stringify(run.extra, null, 1));
    expectServedThroughDatabaseFault(world, results, run);
    const e = run.extra;
    expect(e["management API calls during"]).toBeGreaterThan(5);
    // Every answer while the database was down: 503 store_unavailable (before the fix: 500, and at
    // first a crash of the control plane), or a 200 served before the stop reached the pool.
    for (const answer of String(e["management API answers during"]).split("; ")) {
      expect(answer).toMatch(/^(200|503 store_unavailable): \d+$/);
    }
    expect(e["management API slowest during (ms)"]).toBeLessThan(10_000);
    expect(e["management API answered 200 again after (ms)"]).toBeGreaterThanOrEqual(0);
    expect(e["management API answered 200 again after (ms)"]).toBeLessThan(30_000);
    await world.cluster.stop();
    expect(auditOutOfRegion(world).outside).toEqual([]);
  }, 120_000);
});
