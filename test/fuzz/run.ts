// `npm run fuzz -- [--target T] [--cases N] [--seed S] [--batch B]`: the full fuzzing count (issue 15 item 4).
// Runs N cases of each target (all by default) as batches of B under seeds S, S+1, … (by default the first
// seed no earlier run of that target used), prints the report, and appends the run to the ledger
// (test/fuzz/ledger.json) after every few batches, so a run stopped halfway still counts what it ran.
// A batch is replayed alone with `--target T --seed <its seed> --cases <its size>`.

import { parseArgs } from "node:util";
import { appendRun, type LedgerRun, nextSeed, readLedger, writeLedger } from "./ledger.ts";
import { runTarget } from "./lib.ts";
import { TARGETS } from "./targets/index.ts";

const { values } = parseArgs({
  options: {
    target: { type: "string", multiple: true },
    cases: { type: "string", default: "1000000" },
    seed: { type: "string" },
    batch: { type: "string" },
    "no-ledger": { type: "boolean", default: false },
  },
});
const names = values.target ?? Object.keys(TARGETS);
const cases = Number(values.cases);
if (!Number.isSafeInteger(cases) || cases < 1) {
  console.error("--cases is a positive integer");
  process.exit(2);
}
/** What a failure report needs: the error fast-check caught and the start of the counterexample. */
function summary(failure: string): string {
  const error = /Got (?:error|\w*Error): .*/.exec(failure)?.[0] ?? "";
  const example = /Counterexample: .*/.exec(failure)?.[0] ?? failure;
  // A crash report (lib.ts puts it first) is the one thing a refused connection cannot explain.
  const crash = failure.startsWith("server exited")
    ? `${failure.split("\nProperty failed")[0]!.slice(0, 2_000)} | `
    : "";
  return `${crash}${error.slice(0, 1_200)} | ${example.slice(0, 400)}`;
}
const log = (msg: string) => console.error(`[fuzz ${new Date().toISOString()}] ${msg}`);
let failed = false;
for (const name of names) {
  const target = TARGETS[name];
  if (target === undefined) {
    console.error(`unknown target '${name}'; targets: ${Object.keys(TARGETS).join(", ")}`);
    process.exit(2);
  }
  const seed = values.seed !== undefined ? Number(values.seed) : nextSeed(readLedger(), name);
  const batchCases = values.batch !== undefined ? Number(values.batch) : undefined;
  const command = `npm run fuzz -- --target ${name} --cases ${cases} --seed ${seed}${batchCases ? ` --batch ${batchCases}` : ""}`;
  log(`${command}`);
  const started = new Date().toISOString();
  let ran = 0;
  let lastSeed = seed - 1;
  let checkpoint: LedgerRun | null = null;
  const failures: LedgerRun["failures"] = [];
  const record = (done: LedgerRun) => {
    if (values["no-ledger"]) return;
    const ledger = readLedger();
    appendRun(ledger, name, done, checkpoint);
    writeLedger(ledger);
    checkpoint = done;
  };
  const report = await runTarget(target, {
    seed,
    cases,
    ...(batchCases !== undefined ? { batchCases } : {}),
    stopOnFailure: true,
    log,
    onBatch: (b, n) => {
      ran += b.cases;
      lastSeed = Math.max(lastSeed, b.seed);
      if (b.failure !== null) {
        log(`${name}: batch seed ${b.seed} FAILED: ${summary(b.failure)}`);
        failures.push({ seed: b.seed, cases: b.cases, failure: summary(b.failure) });
      }
      if (n % 5 === 0) {
        log(`${name}: ${ran} cases (${n} batches)`);
        record({
          at: started,
          command,
          seeds: [seed, lastSeed],
          cases: ran,
          failures: [...failures],
          partial: true,
        });
      }
    },
  });
  const run: LedgerRun = {
    at: started,
    command,
    seeds: report.seeds,
    cases: report.cases,
    seconds: Math.round(report.seconds),
    rate: Math.round(report.rate),
    failures: report.failures.map((f) => ({ seed: f.seed, cases: f.cases, failure: summary(f.failure!) })),
    server: { warm: report.warm, end: report.end },
    tally: report.tally,
  };
  record(run);
  console.log(JSON.stringify({ ...run, crashed: report.crashed }, null, 2));
  if (report.failures.length > 0) failed = true;
}
process.exit(failed ? 1 : 0);
