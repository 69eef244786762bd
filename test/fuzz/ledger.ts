// The committed ledger of fuzz cases run (test/fuzz/ledger.json): per target, every run's seed range,
// count, failures and the server's RSS/fds, so the million per target accumulates over runs.

import { existsSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { resolve } from "node:path";
import type { ProcessStats } from "./lib.ts";

export const LEDGER = resolve(import.meta.dirname, "ledger.json");

export interface LedgerRun {
  at: string;
  command: string;
  seeds: [number, number];
  cases: number;
  seconds?: number;
  rate?: number;
  failures: Array<{ seed: number; cases: number; failure: string }>;
  server?: { warm: ProcessStats; end: ProcessStats };
  tally?: Record<string, number>;
  /** A checkpoint of a run still going (replaced by the next checkpoint or the final record). */
  partial?: boolean;
}

export interface Ledger {
  targets: Record<string, { cases: number; runs: LedgerRun[] }>;
}

export function readLedger(): Ledger {
  return existsSync(LEDGER) ? (JSON.parse(readFileSync(LEDGER, "utf8")) as Ledger) : { targets: {} };
}

export function writeLedger(ledger: Ledger): void {
  for (const t of Object.values(ledger.targets)) t.cases = t.runs.reduce((s, r) => s + r.cases, 0);
  // Runs of different targets share the file: write whole, then rename, so no reader sees half of it.
  const tmp = `${LEDGER}.${process.pid}.tmp`;
  writeFileSync(tmp, `${JSON.stringify(ledger, null, 2)}\n`);
  renameSync(tmp, LEDGER);
}

/** The first seed after every seed a target's runs used. */
export function nextSeed(ledger: Ledger, target: string): number {
  const runs = ledger.targets[target]?.runs ?? [];
  return runs.reduce((s, r) => Math.max(s, r.seeds[1] + 1), 1);
}

/** Appends `run`, replacing the checkpoint of the same run written earlier. */
export function appendRun(
  ledger: Ledger,
  target: string,
  run: LedgerRun,
  checkpoint: LedgerRun | null,
): void {
  const t = ledger.targets[target] ?? { cases: 0, runs: [] };
  ledger.targets[target] = t;
  if (checkpoint !== null) {
    const i = t.runs.findIndex(
      (r) => r.at === checkpoint.at && r.command === checkpoint.command && r.partial,
    );
    if (i >= 0) t.runs.splice(i, 1);
  }
  t.runs.push(run);
}
