// Assertions the chaos CI slices share (vitest only: the fault harness itself, `npm run chaos`, does not
// import this file).

import { expect } from "vitest";
import type { FaultRun } from "./faults.ts";
import { count, type Result, type World } from "./harness.ts";

/**
 * What a fault of the control plane's database must leave the inference path: under the steady load, every
 * call in the fault's window answered 2xx (the planes' snapshots), none hung, untyped or out of region; the
 * control plane still running and no plane judged down.
 */
export function expectServedThroughDatabaseFault(world: World, results: Result[], run: FaultRun): void {
  const c = count(results, world, run.startedAt, run.endedAt);
  expect(c.sent).toBeGreaterThan(100);
  expect(c.hung + c.untyped_error + c.out_of_region).toBe(0);
  expect(c.ok, JSON.stringify(c.codes)).toBe(c.sent);
  expect(run.extra["control plane still running"], world.cluster.control.output.slice(-20).join("\n")).toBe(
    true,
  );
  expect(run.extra["planes judged down"]).toBe("none");
}
