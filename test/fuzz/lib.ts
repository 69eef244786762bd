// The fuzzing harness's machinery (issue 15 item 4): a target is a fast-check property run in batches of
// `batchCases` cases, each batch under its own seed so any batch can be replayed alone; network targets run
// several batches at once against one real server process started by `serve.ts`, whose RSS and open file
// descriptors are read from /proc before and after. `run.ts` (the npm script) and `fuzz.test.ts` (the CI
// slice) both drive targets through `runTarget`.

import { type ChildProcess, spawn } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { resolve } from "node:path";
import { createInterface } from "node:readline";
import fc from "fast-check";

/** What a server process announces on its first stdout line (see serve.ts). */
export type ServerInfo = Record<string, unknown> & { pid: number };

export interface ServerHandle {
  info: ServerInfo;
  child: ChildProcess;
  /** Non-null once the process has exited (a crash, if the harness did not stop it). */
  exited: () => { code: number | null; signal: NodeJS.Signals | null } | null;
  /** The last lines it wrote to stderr (for a crash report). */
  stderrTail: () => string;
  stop(): Promise<void>;
}

export interface ProcessStats {
  rssKiB: number;
  fds: number;
}

/** A target: the server it needs (if any) and, given it, a property over one generated case. */
export interface FuzzTarget<Case = unknown> {
  name: string;
  /** The `serve.ts` kind this target fuzzes over sockets; none for an in-process parser. */
  server?: string;
  /** Batches run at once (network targets overlap their I/O waits). */
  lanes: number;
  /** Shrink a failing case to a small one before reporting it. */
  shrink?: boolean;
  /** Cases per batch: one seed covers this many. */
  batchCases: number;
  /** Prepares what every case needs (clients, credentials); called once per run. */
  open(server: ServerHandle | null): Promise<FuzzSession<Case>>;
}

export interface FuzzSession<Case> {
  arbitrary: fc.Arbitrary<Case>;
  /** Checks one case; throws (an assertion) when the answer breaks a rule. */
  check(c: Case): Promise<void> | void;
  /** Outcome tallies the session keeps (statuses, rcodes, …), reported with the run. */
  tally: Map<string, number>;
  close(): Promise<void>;
}

export function bump(tally: Map<string, number>, key: string): void {
  tally.set(key, (tally.get(key) ?? 0) + 1);
}

/** RSS and open descriptors of a process; zeros once it has gone (a crash is reported on its own). */
export function procStats(pid: number): ProcessStats {
  try {
    const rss = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return { rssKiB: rss ? Number(rss[1]) : 0, fds: readdirSync(`/proc/${pid}/fd`).length };
  } catch {
    return { rssKiB: 0, fds: 0 };
  }
}

const SERVE = resolve(import.meta.dirname, "serve.ts");

/** Starts `serve.ts <kind>` as its own process and waits for its announcement. */
export async function startServer(kind: string): Promise<ServerHandle> {
  const child = spawn(process.execPath, ["--import", "tsx", "--expose-gc", SERVE, kind], {
    stdio: ["pipe", "pipe", "pipe"],
    env: { ...process.env, NODE_ENV: "production" },
  });
  let exit: { code: number | null; signal: NodeJS.Signals | null } | null = null;
  const tail: string[] = [];
  child.stderr!.setEncoding("utf8");
  child.stderr!.on("data", (s: string) => {
    tail.push(s);
    if (tail.length > 40) tail.shift();
  });
  const exited = new Promise<void>((r) =>
    child.once("exit", (code, signal) => {
      exit = { code, signal };
      r();
    }),
  );
  const lines = createInterface({ input: child.stdout! });
  const info = await new Promise<ServerInfo>((ok, fail) => {
    const timer = setTimeout(() => fail(new Error(`serve ${kind} did not start in 180 s`)), 180_000);
    lines.once("line", (line) => {
      clearTimeout(timer);
      ok({ ...JSON.parse(line), pid: child.pid! });
    });
    child.once("exit", () => fail(new Error(`serve ${kind} exited at start: ${tail.join("")}`)));
  });
  return {
    info,
    child,
    exited: () => exit,
    stderrTail: () => tail.join(""),
    async stop() {
      if (exit !== null) return;
      child.stdin!.end();
      child.kill("SIGTERM");
      const t = setTimeout(() => child.kill("SIGKILL"), 10_000);
      await exited;
      clearTimeout(t);
    },
  };
}

/** Asks the server process to collect garbage (it runs with --expose-gc) so RSS readings compare. */
export async function settle(server: ServerHandle | null): Promise<void> {
  if (server === null) {
    (globalThis as { gc?: () => void }).gc?.();
    await new Promise((r) => setTimeout(r, 200));
    return;
  }
  server.child.stdin!.write("gc\n");
  await new Promise((r) => setTimeout(r, 1_000));
}

export interface BatchResult {
  seed: number;
  cases: number;
  failure: string | null;
}

export interface RunReport {
  target: string;
  seeds: [number, number];
  cases: number;
  batches: BatchResult[];
  failures: BatchResult[];
  seconds: number;
  rate: number;
  /** The server process (or this one, for in-process targets) after a warm-up batch, and at the end. */
  warm: ProcessStats;
  end: ProcessStats;
  tally: Record<string, number>;
  crashed: string | null;
}

export interface RunOptions {
  seed: number;
  cases: number;
  /** Cases per batch; the target's own by default. */
  batchCases?: number;
  /** Stop at the first failing batch (the full runs do, so a finding is fixed before the count goes on). */
  stopOnFailure?: boolean;
  /** Called after every batch (progress, ledger checkpoints). */
  onBatch?: (b: BatchResult, done: number) => void;
  log?: (msg: string) => void;
}

/**
 * Runs `cases` cases of `target` as batches with seeds `seed`, `seed + 1`, …: the first batch warms the
 * server up and is followed by the first RSS/fd reading, the rest run `lanes` at a time.
 */
export async function runTarget(target: FuzzTarget, o: RunOptions): Promise<RunReport> {
  const log = o.log ?? (() => {});
  const batchCases = Math.min(o.batchCases ?? target.batchCases, o.cases);
  const batches = Math.ceil(o.cases / batchCases);
  const server = target.server ? await startServer(target.server) : null;
  const pid = server?.info.pid ?? process.pid;
  const session = await target.open(server);
  const results: BatchResult[] = [];
  const started = performance.now();
  let warm: ProcessStats = procStats(pid);
  let crashed: string | null = null;
  try {
    const runBatch = async (i: number): Promise<BatchResult> => {
      const seed = o.seed + i;
      const n = i === batches - 1 ? o.cases - batchCases * (batches - 1) : batchCases;
      let failure: string | null = null;
      try {
        await fc.assert(
          fc.asyncProperty(session.arbitrary, async (c) => {
            await session.check(c);
          }),
          // Shrinking re-runs a failing case many times: cheap in process, and worth its time over sockets
          // only when a target asks (the counterexample is printed either way).
          { seed, numRuns: n, endOnFailure: target.shrink !== true, includeErrorInReport: true },
        );
      } catch (err) {
        failure = String((err as Error).message ?? err).slice(0, 4_000);
      }
      const exit = server?.exited() ?? null;
      if (exit !== null && crashed === null) {
        // The first batch to see the exit carries the crash report, whatever its own error was (a
        // refused connection says only that the server has gone).
        crashed = `server exited (${exit.code ?? exit.signal}): ${server!.stderrTail().slice(-2_000)}`;
        failure = failure === null ? crashed : `${crashed}\n${failure}`;
        log(crashed);
      }
      // A failing batch ran only up to its failing case.
      const ran = failure === null ? n : Number(/failed after (\d+) tests/.exec(failure)?.[1] ?? n);
      const r = { seed, cases: ran, failure };
      results.push(r);
      o.onBatch?.(r, results.length);
      return r;
    };
    // The warm-up: the first round of batches, one per lane; the first reading follows it.
    const round = Math.min(target.lanes, batches);
    const firsts = await Promise.all(Array.from({ length: round }, (_, i) => runBatch(i)));
    await settle(server);
    warm = procStats(pid);
    log(`${target.name}: warm-up (${round} batches) done, rss ${warm.rssKiB} KiB, fds ${warm.fds}`);
    let next = round;
    let stop = firsts.some((f) => f.failure !== null) && o.stopOnFailure === true;
    const lane = async () => {
      while (!stop && crashed === null && next < batches) {
        const r = await runBatch(next++);
        if (r.failure !== null && o.stopOnFailure) stop = true;
      }
    };
    await Promise.all(Array.from({ length: target.lanes }, lane));
  } finally {
    await settle(server).catch(() => {});
  }
  const end = server === null || server.exited() === null ? procStats(pid) : { rssKiB: 0, fds: 0 };
  await session.close();
  await server?.stop();
  const seconds = (performance.now() - started) / 1000;
  const cases = results.reduce((s, r) => s + r.cases, 0);
  results.sort((a, b) => a.seed - b.seed);
  return {
    target: target.name,
    seeds: [o.seed, results.length === 0 ? o.seed : Math.max(...results.map((r) => r.seed))],
    cases,
    batches: results,
    failures: results.filter((r) => r.failure !== null),
    seconds,
    rate: cases / seconds,
    warm,
    end,
    tally: Object.fromEntries([...session.tally.entries()].sort((a, b) => b[1] - a[1])),
    crashed,
  };
}

/** Races a promise against a bound; a case that outlives it is a hang. */
export async function within<T>(ms: number, what: string, p: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, fail) => {
        timer = setTimeout(() => fail(new Error(`hang: ${what} not answered within ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Byte-level mutation, shared by the wire targets

export type Mutation =
  | { kind: "flip"; at: number; bit: number }
  | { kind: "set"; at: number; byte: number }
  | { kind: "insert"; at: number; bytes: number[] }
  | { kind: "delete"; at: number; length: number }
  | { kind: "truncate"; at: number }
  | { kind: "duplicate"; at: number; length: number };

/** Positions are fractions of the length, so a mutation applies to any input. */
export const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({
    kind: fc.constant("flip" as const),
    at: fc.double({ min: 0, max: 1, noNaN: true }),
    bit: fc.nat(7),
  }),
  fc.record({
    kind: fc.constant("set" as const),
    at: fc.double({ min: 0, max: 1, noNaN: true }),
    byte: fc.nat(255),
  }),
  fc.record({
    kind: fc.constant("insert" as const),
    at: fc.double({ min: 0, max: 1, noNaN: true }),
    bytes: fc.array(fc.oneof(fc.nat(255), fc.constantFrom(0, 9, 10, 13, 32, 58, 0x7f, 0xff)), {
      minLength: 1,
      maxLength: 8,
    }),
  }),
  fc.record({
    kind: fc.constant("delete" as const),
    at: fc.double({ min: 0, max: 1, noNaN: true }),
    length: fc.integer({ min: 1, max: 16 }),
  }),
  fc.record({ kind: fc.constant("truncate" as const), at: fc.double({ min: 0, max: 1, noNaN: true }) }),
  fc.record({
    kind: fc.constant("duplicate" as const),
    at: fc.double({ min: 0, max: 1, noNaN: true }),
    length: fc.integer({ min: 1, max: 64 }),
  }),
);

export function mutate(input: Buffer, mutations: readonly Mutation[]): Buffer {
  let b = Buffer.from(input);
  for (const m of mutations) {
    const at = Math.min(b.length, Math.floor(m.at * (b.length + 1)));
    switch (m.kind) {
      case "flip":
        if (at < b.length) b[at] = (b[at] ?? 0) ^ (1 << m.bit);
        break;
      case "set":
        if (at < b.length) b[at] = m.byte;
        break;
      case "insert":
        b = Buffer.concat([b.subarray(0, at), Buffer.from(m.bytes), b.subarray(at)]);
        break;
      case "delete":
        b = Buffer.concat([b.subarray(0, at), b.subarray(at + m.length)]);
        break;
      case "truncate":
        b = b.subarray(0, at);
        break;
      case "duplicate":
        b = Buffer.concat([b.subarray(0, at + m.length), b.subarray(at)]);
        break;
    }
  }
  return b;
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** The shortest of `n` timings of `f`, in ms: a bound on work that scheduling noise cannot break. */
export function fastestOf(n: number, f: () => unknown): number {
  let best = Number.POSITIVE_INFINITY;
  for (let i = 0; i < n; i++) {
    const t = performance.now();
    f();
    best = Math.min(best, performance.now() - t);
    if (best < 1) break;
  }
  return best;
}
