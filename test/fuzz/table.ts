// `node --import tsx test/fuzz/table.ts`: the case-count table of RELIABILITY.md ("Case counts"), from the
// ledger (test/fuzz/ledger.json). Cases in clean runs are those of runs with no failing batch, checkpoints
// of runs stopped on the way included (they count only the batches that finished).

import { readLedger } from "./ledger.ts";
import { TARGETS } from "./targets/index.ts";

const n = (x: number) => x.toLocaleString("en-US");
const mib = (kib: number) => Math.round(kib / 1024);
const ledger = readLedger();
const rows = [
  "| target | cases run | in clean runs | seed ranges | failing batches | RSS / fds (warm-up → end, clean finished runs) |",
  "|---|---|---|---|---|---|",
];
for (const name of Object.keys(TARGETS)) {
  const runs = ledger.targets[name]?.runs ?? [];
  const all = runs.reduce((s, r) => s + r.cases, 0);
  const clean = runs.filter((r) => r.failures.length === 0).reduce((s, r) => s + r.cases, 0);
  const seeds = runs.map((r) =>
    r.seeds[0] === r.seeds[1] ? `${r.seeds[0]}` : `${r.seeds[0]}–${r.seeds[1]}`,
  );
  const failing = runs.reduce((s, r) => s + r.failures.length, 0);
  const memory = runs
    .filter((r) => r.failures.length === 0 && r.server !== undefined)
    .map((r) => {
      const { warm, end } = r.server!;
      return `${mib(warm.rssKiB)}→${mib(end.rssKiB)} MiB / ${warm.fds}→${end.fds}`;
    });
  rows.push(
    `| ${name} | ${n(all)} | ${n(clean)} | ${seeds.join(", ") || "—"} | ${failing} | ${memory.join("; ") || "—"} |`,
  );
}
process.stdout.write(`${rows.join("\n")}\n`);
