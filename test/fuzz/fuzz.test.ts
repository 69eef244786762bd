// The CI slice of the fuzzing harness (issue 15 item 4): every target, a fixed seed, a few hundred to a few
// thousand cases, against the same real servers (their own processes, real sockets) as the full count
// (`npm run fuzz`, which keeps test/fuzz/ledger.json). A failing case prints its seed and counterexample;
// `npm run fuzz -- --target T --seed S --cases N` replays its batch. No ledger is written from here.

import { describe, expect, it } from "vitest";
import { type RunReport, runTarget } from "./lib.ts";
import { TARGETS } from "./targets/index.ts";

/** Cases per target in CI, sized so the whole slice stays near a minute on two loaded cores. */
const SLICE: Record<string, { cases: number; batch: number }> = {
  host: { cases: 20_000, batch: 20_000 },
  snapshot: { cases: 4_000, batch: 4_000 },
  dns: { cases: 1_600, batch: 200 },
  "http-wire": { cases: 480, batch: 20 },
  "http-node": { cases: 480, batch: 20 },
  api: { cases: 640, batch: 40 },
  graphql: { cases: 480, batch: 30 },
  s3: { cases: 480, batch: 30 },
};
/** The fixed seed of the slice (the full runs start at 1 and go up, so the slice is a seed of its own). */
const SEED = 424_242;
/** Growth of the server's RSS from after the warm-up to the end that counts as a leak, in KiB. */
const RSS_BOUND_KIB = 64 * 1024;

describe("fuzz slice (fixed seed)", () => {
  it("covers every target", () => {
    expect(Object.keys(SLICE).sort()).toEqual(Object.keys(TARGETS).sort());
  });

  for (const [name, { cases, batch }] of Object.entries(SLICE)) {
    it(`${name}: ${cases} cases, every one answered, no crash, no leak`, { timeout: 180_000 }, async () => {
      const report: RunReport = await runTarget(TARGETS[name]!, { seed: SEED, cases, batchCases: batch });
      const failures = report.failures.map((f) => `seed ${f.seed}: ${f.failure}`);
      expect(failures, failures.join("\n\n")).toEqual([]);
      expect(report.crashed).toBeNull();
      expect(report.cases).toBe(cases);
      expect(report.end.rssKiB - report.warm.rssKiB).toBeLessThan(RSS_BOUND_KIB);
      // Every connection a case opened is closed again: the server holds what it held after the warm-up.
      expect(report.end.fds).toBeLessThanOrEqual(report.warm.fds + 2);
      console.info(
        `${name}: ${report.cases} cases in ${report.seconds.toFixed(1)} s; rss ${report.warm.rssKiB} → ${report.end.rssKiB} KiB, fds ${report.warm.fds} → ${report.end.fds}`,
      );
    });
  }
});
