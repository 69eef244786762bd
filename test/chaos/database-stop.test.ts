// The control plane's database stopped (issue 15 item 1), the CI slice of `npm run chaos`: the control
// plane runs on a PostgreSQL cluster of the test's own (initdb in a temp directory, its own port and
// socket; never the machine's shared server), which is stopped with `pg_ctl stop -m fast` under steady
// load on every endpoint of four regions, then started again. Serving holds from the planes' snapshots,
// the management API answers typed errors meanwhile and answers again after, no plane is judged down.

import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { freePort } from "../support/cluster.ts";
import { databaseStop, PrivatePostgres } from "./faults.ts";
import { auditOutOfRegion, count, Load, sleep, startWorld, type World } from "./harness.ts";

describe("the control plane's database stopped under load", () => {
  let pg: PrivatePostgres;
  let world: World;

  beforeAll(async () => {
    pg = new PrivatePostgres(await freePort("127.0.0.1")).init();
    world = await startWorld({ timeoutS: 3, databaseUrl: pg.url });
  }, 150_000);
  afterAll(async () => {
    await world?.cluster.stop();
    pg?.destroy();
  }, 60_000);

  it("serves on, the management API answers typed errors, and recovers once the database is back", async () => {
    const load = new Load(world, { concurrency: 2, pauseMs: 30 });
    const run = await databaseStop(world, pg, 10);
    await sleep(2_000);
    const results = await load.stop();
    const c = count(results, world, run.startedAt, run.endedAt);
    expect(c.sent).toBeGreaterThan(100);
    expect(c.hung + c.untyped_error + c.out_of_region).toBe(0);
    expect(c.ok, JSON.stringify(c.codes)).toBe(c.sent);
    const e = run.extra;
    expect(e["control plane still running"]).toBe(true);
    expect(e["planes judged down"]).toBe("none");
    expect(e["management API calls during"]).toBeGreaterThan(5);
    // Every answer while the database was down: a typed 5xx (or a 200 a pool connection still served).
    for (const answer of String(e["management API answers during"]).split("; ")) {
      expect(answer).toMatch(/^(200|50[0-9] [a-z_]+): \d+$/);
    }
    expect(e["management API slowest during (ms)"]).toBeLessThan(10_000);
    expect(e["management API answered 200 again after (ms)"]).toBeGreaterThanOrEqual(0);
    expect(e["management API answered 200 again after (ms)"]).toBeLessThan(30_000);
    await world.cluster.stop();
    expect(auditOutOfRegion(world).outside).toEqual([]);
  }, 120_000);
});
