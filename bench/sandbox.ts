// Section 6 of the benchmark: what the replica sandbox costs. A replica's start (spawn → readiness 200)
// through the real process driver, unsandboxed and in bubblewrap (TCP and Unix socket, with and without
// the prepared compile cache), and a request through a Meridian ingress to each, side by side.
// Runs on its own: `node --import tsx bench/sandbox.ts [--quick]` prints the section (markdown).

import { chmodSync, readdirSync, readFileSync } from "node:fs";
import { readdir, rm } from "node:fs/promises";
import { join } from "node:path";
import type { EgressPolicy } from "../src/core/domain.ts";
import type { PlaneRef } from "../src/core/snapshot.ts";
import { replicaSpec } from "../src/plane/agent.ts";
import type { ReplicaStatus } from "../src/plane/driver.ts";
import { ProcessDriver } from "../src/plane/process-driver.ts";
import { prepareSandbox, type ReplicaSandbox } from "../src/plane/sandbox.ts";
import type { IngressHostConfig } from "./ingress-host.ts";
import {
  type Child,
  cpuMicros,
  fmt,
  freePort,
  median,
  percentile,
  ROOT,
  removeTempDirs,
  runWrk,
  startTs,
  stopAllChildren,
  tempDir,
  until200,
  writeBody,
} from "./lib.ts";
import { BENCH_DOMAIN, BENCH_KEY, modelId } from "./snapshot.ts";

export interface SandboxBenchOptions {
  /** Starts measured per configuration (interleaved). */
  starts: number;
  /** wrk runs per request cell (interleaved), and their length. */
  runs: number;
  durationS: number;
}

export interface SandboxFigures {
  markdown: string;
  /** Median start added by the sandbox (bwrap, TCP, compile cache) over the unsandboxed start, ms. */
  addedStartMs: number;
}

type StartKind = "none" | "bwrap" | "bwrap-unix" | "bwrap-cold";

const START_ROWS: Record<StartKind, string> = {
  none: "unsandboxed (`--sandbox none`), TCP",
  bwrap: "bwrap, egress allow (TCP)",
  "bwrap-unix": "bwrap, egress deny (own network namespace, Unix socket)",
  "bwrap-cold": "bwrap, TCP, **without** the prepared compile cache",
};

const PACKAGE = join(ROOT, "examples", "hello-js");

/** A bench directory the sandbox uid can reach (mkdtemp makes 0700). */
function reachableDir(prefix: string): string {
  const dir = tempDir(prefix);
  chmodSync(dir, 0o711);
  return dir;
}

function desired(id: string, egress: EgressPolicy) {
  return {
    id,
    deployment_id: `dep-${id}`,
    model_id: "abcd1234",
    environment: "prod-eu",
    artifact: { key: id, sha256: "0".repeat(64), size: 1 },
    egress,
  };
}

/** Host pids of `pid` and every process under it (bwrap, the sandbox's PID 1, the runtime). */
function descendants(pid: number): number[] {
  const parents = new Map<number, number>();
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, "utf8");
      parents.set(Number(name), Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]));
    } catch {}
  }
  const found = [pid];
  for (let i = 0; i < found.length; i++) {
    for (const [child, parent] of parents) if (parent === found[i]) found.push(child);
  }
  return found;
}

class Plane {
  readonly driver: ProcessDriver;
  readonly #ready = new Map<string, { ok: (r: ReplicaStatus) => void; fail: (e: Error) => void }>();

  constructor(
    readonly dataDir: string,
    readonly sandbox: ReplicaSandbox,
  ) {
    // Readiness polled every 2 ms so that the figure is the replica's start, not the polling interval's.
    this.driver = new ProcessDriver({ dataDir, sandbox, readinessIntervalMs: 2, stopGraceMs: 5_000 });
    this.driver.subscribe((e) => {
      if (e.type !== "state") return;
      const waiter = this.#ready.get(e.replica.id);
      if (e.replica.state === "READY") waiter?.ok(e.replica);
      if (e.replica.state === "FAILED")
        waiter?.fail(new Error(`${e.replica.id} FAILED: ${e.replica.message}`));
    });
  }

  /**
   * ensure() → READY, in ms; the CPU time its processes used to get there (bwrap and the sandbox's
   * PID 1 included), which the machine's load disturbs far less than the wall time; the replica.
   */
  async start(
    id: string,
    egress: EgressPolicy,
  ): Promise<{ ms: number; cpuMs: number; replica: ReplicaStatus }> {
    const ready = new Promise<ReplicaStatus>((ok, fail) => this.#ready.set(id, { ok, fail }));
    const t0 = performance.now();
    await this.driver.ensure(replicaSpec(desired(id, egress), PACKAGE));
    const replica = await ready;
    const ms = performance.now() - t0;
    this.#ready.delete(id);
    const run = JSON.parse(readFileSync(join(this.dataDir, "run", `${id}.json`), "utf8")) as { pid: number };
    let cpu = 0;
    for (const pid of descendants(run.pid)) {
      try {
        cpu += cpuMicros(pid);
      } catch {}
    }
    return { ms, cpuMs: cpu / 1000, replica };
  }
}

export async function runSandbox(o: SandboxBenchOptions, log: (m: string) => void): Promise<SandboxFigures> {
  const planeEnv = { LANG: process.env["LANG"] ?? "C.UTF-8" };
  const noneDir = reachableDir("meridian-bench-none-");
  const bwrapDir = reachableDir("meridian-bench-bwrap-");
  const coldDir = reachableDir("meridian-bench-cold-");
  log("  preparing the sandboxes (self-test and compile cache)");
  const selfTest: number[] = [];
  const prepare = async (dataDir: string) => {
    const t0 = performance.now();
    const s = await prepareSandbox("bwrap", { dataDir, planeEnv });
    selfTest.push(performance.now() - t0);
    if (s.report.mode !== "bwrap") throw new Error(`no sandbox: ${s.report.detail}`);
    return s;
  };
  const none = new Plane(noneDir, await prepareSandbox("none", { dataDir: noneDir, planeEnv }));
  const bwrap = new Plane(bwrapDir, await prepare(bwrapDir));
  const cold = new Plane(coldDir, await prepare(coldDir));
  // The cold plane's replicas find an empty compile cache: each compiles the runtime from scratch.
  const cache = join(coldDir, "sandbox", "compile-cache");
  for (const f of await readdir(cache)) await rm(join(cache, f), { recursive: true, force: true });
  const planes: Record<StartKind, { plane: Plane; egress: EgressPolicy }> = {
    none: { plane: none, egress: "allow" },
    bwrap: { plane: bwrap, egress: "allow" },
    "bwrap-unix": { plane: bwrap, egress: "deny" },
    "bwrap-cold": { plane: cold, egress: "allow" },
  };
  const started: Child[] = [];
  try {
    for (const p of [none, bwrap, cold]) await p.driver.start();

    // —— starts ——
    const starts = new Map<StartKind, number[]>(Object.keys(START_ROWS).map((k) => [k as StartKind, []]));
    const startCpu = new Map<StartKind, number[]>(Object.keys(START_ROWS).map((k) => [k as StartKind, []]));
    log(`  starts: ${o.starts} per configuration, interleaved`);
    for (let i = -1; i < o.starts; i++) {
      for (const kind of Object.keys(START_ROWS) as StartKind[]) {
        const { plane, egress } = planes[kind];
        const id = `start-${kind}-${i + 1}`;
        const { ms, cpuMs } = await plane.start(id, egress);
        // Round -1 warms the OS's page cache; it is not counted.
        if (i >= 0) {
          starts.get(kind)!.push(ms);
          startCpu.get(kind)!.push(cpuMs);
        }
        await plane.driver.remove(id);
      }
    }

    // —— requests, through one ingress to a replica of each kind ——
    log("  requests through the ingress");
    const targets: Array<{
      kind: "none" | "bwrap" | "bwrap-unix";
      model: string;
      endpoint: string;
      /** The replica's processes (bwrap, PID 1, the runtime; or the runtime alone). */
      pids: number[];
    }> = [];
    for (const [i, kind] of (["none", "bwrap", "bwrap-unix"] as const).entries()) {
      const { plane, egress } = planes[kind];
      const id = `serve-${kind}`;
      const { replica } = await plane.start(id, egress);
      const run = JSON.parse(readFileSync(join(plane.dataDir, "run", `${id}.json`), "utf8")) as {
        pid: number;
      };
      targets.push({ kind, model: modelId(i), endpoint: replica.endpoint!, pids: descendants(run.pid) });
    }
    const cpuOf = (pids: number[]) => pids.reduce((sum, pid) => sum + cpuMicros(pid), 0);
    const dir = tempDir();
    const body = writeBody(dir, "small.json", null);
    const port = await freePort();
    const eu: PlaneRef = {
      name: "eu-1",
      region: "eu",
      ingress: [`127.0.0.1:${port}`],
      global_ingress: false,
    };
    const config: IngressHostConfig = {
      plane: eu,
      planes: [eu],
      listen: { host: "127.0.0.1", port },
      auditDir: join(dir, "audit"),
      upstream: targets[0]!.endpoint,
      routes: Object.fromEntries(targets.map((t) => [`${t.model}d0`, t.endpoint])),
      models: targets.length,
      environments: ["prod-eu"],
      readyPlanes: ["eu-1"],
    };
    const ingress = startTs("ingress eu-1", "bench/ingress-host.ts", {
      BENCH_INGRESS: JSON.stringify(config),
    });
    started.push(ingress);
    await ingress.waitFor((l) => l.includes("bench ingress ready"));
    const host = (model: string) => `model-${model}-prod-eu.${BENCH_DOMAIN}`;
    const headers = { authorization: `Api-Key ${BENCH_KEY}`, "content-type": "application/json" };
    for (const t of targets) {
      await until200(
        `http://127.0.0.1:${port}/predict`,
        { ...headers, host: host(t.model) },
        '{"x":1}',
        30_000,
      );
    }
    // Through the ingress (the real path; the only way to a Unix socket), and the TCP replicas called
    // directly too, where nothing but the replica is measured.
    const cells = [
      ...targets.flatMap((t) => [1, 16].map((c) => ({ ...t, connections: c, via: "ingress" as const }))),
      ...targets
        .filter((t) => t.kind !== "bwrap-unix")
        .flatMap((t) => [1, 16].map((c) => ({ ...t, connections: c, via: "direct" as const }))),
    ];
    const samples = new Map<
      string,
      Array<{ rps: number; p50us: number; p99us: number; cpu: number; replicaCpu: number }>
    >();
    const cellKey = (c: (typeof cells)[number]) => `${c.via}|${c.kind}|${c.connections}`;
    for (const c of cells) samples.set(cellKey(c), []);
    for (let run = 0; run <= o.runs; run++) {
      for (const c of cells) {
        const before = cpuMicros(ingress.proc.pid!);
        const replicaBefore = cpuOf(c.pids);
        const r = await runWrk({
          ...(c.via === "ingress"
            ? { url: `http://127.0.0.1:${port}/predict`, host: host(c.model) }
            : { url: `http://${c.endpoint}/v1/models/model:predict` }),
          headers: { Authorization: `Api-Key ${BENCH_KEY}` },
          bodyFile: body,
          connections: c.connections,
          threads: 1,
          durationS: run === 0 ? 1 : o.durationS,
        });
        if (r.errors > 0 || r.non2xx > 0)
          log(`  warning: ${cellKey(c)}: ${r.errors} errors, ${r.non2xx} non-2xx`);
        // Run 0 is the warm-up.
        if (run > 0) {
          const cpu = (cpuMicros(ingress.proc.pid!) - before) / r.requests;
          const replicaCpu = (cpuOf(c.pids) - replicaBefore) / r.requests;
          samples.get(cellKey(c))!.push({ rps: r.rps, p50us: r.p50us, p99us: r.p99us, cpu, replicaCpu });
        }
      }
    }

    const base = median(starts.get("none")!);
    const baseCpu = median(startCpu.get("none")!);
    const addedStartMs = median(starts.get("bwrap")!) - base;
    const startTable = [
      "| replica (examples/hello-js, the real runtime) | median | p90 | min | added (median) | CPU to READY (median) | CPU added |",
      "|---|---:|---:|---:|---:|---:|---:|",
      ...(Object.keys(START_ROWS) as StartKind[]).map((k) => {
        const xs = starts.get(k)!;
        const cpu = median(startCpu.get(k)!);
        const added = k === "none" ? "—" : `${fmt(median(xs) - base, 0)} ms`;
        const cpuAdded = k === "none" ? "—" : `${fmt(cpu - baseCpu, 0)} ms`;
        return `| ${START_ROWS[k]} | ${fmt(median(xs), 0)} ms | ${fmt(percentile(xs, 90), 0)} ms | ${fmt(Math.min(...xs), 0)} ms | ${added} | ${fmt(cpu, 0)} ms | ${cpuAdded} |`;
      }),
    ];
    const label = { none: "unsandboxed, TCP", bwrap: "bwrap, TCP", "bwrap-unix": "bwrap, Unix socket" };
    const requestTable = [
      "| replica | path | c | req/s | p50 | p99 | replica CPU per request | ingress CPU per request |",
      "|---|---|---:|---:|---:|---:|---:|---:|",
      ...cells.map((c) => {
        const s = samples.get(cellKey(c))!;
        const m = (f: (x: (typeof s)[number]) => number) => median(s.map(f));
        const ingressCpu =
          c.via === "ingress"
            ? `${fmt(
                m((x) => x.cpu),
                1,
              )} µs`
            : "—";
        const cells = [
          label[c.kind],
          c.via,
          String(c.connections),
          fmt(
            m((x) => x.rps),
            0,
          ),
          `${fmt(
            m((x) => x.p50us),
            0,
          )} µs`,
          `${fmt(
            m((x) => x.p99us),
            0,
          )} µs`,
          `${fmt(
            m((x) => x.replicaCpu),
            1,
          )} µs`,
          ingressCpu,
        ];
        return `| ${cells.join(" | ")} |`;
      }),
    ];
    const markdown = [
      `A replica's start is \`driver.ensure()\` → READY (the driver's readiness probe, polled every 2 ms, answered 200) through the real process driver and \`replicaSpec\` — the command a plane runs — for \`examples/hello-js\`; ${o.starts} starts per row, interleaved, after one uncounted round. CPU is utime+stime of every process of the replica (for a sandbox: bwrap, its PID 1 and the runtime) when it became READY. Each plane's start-up self-test (which also prepares the compile cache) took ${selfTest.map((x) => `${fmt(x, 0)} ms`).join(" and ")}; it runs once per plane start, not per replica.`,
      "",
      ...startTable,
      "",
      `Target: ≤ 50 ms added per start — **${addedStartMs <= 50 ? "met" : "not met"}** (${fmt(addedStartMs, 0)} ms). The cold row is what a private TMPDIR would cost without the read-only compile cache the plane prepares: tsx compiles the runtime from scratch on every start.`,
      "",
      `Requests: \`wrk -t1 -c{1|16} -d${o.durationS}s\`, small JSON body, through one Meridian ingress (wire transport) on the regional endpoint to a replica of each kind, and to the TCP replicas directly; ${o.runs} runs interleaved after a warm-up, medians. The replica is the real runtime (\`predict_concurrency\` 4), so c=16 queues in it. CPU per request is utime+stime from /proc over the run divided by the requests wrk completed: for the replica, all of its processes (a sandbox's bwrap and PID 1 included); it is what the machine's load disturbs least.`,
      "",
      ...requestTable,
      "",
    ].join("\n");
    return { markdown, addedStartMs };
  } finally {
    for (const c of started.reverse()) await c.stop();
    for (const p of [none, bwrap, cold]) await p.driver.stop();
  }
}

// Run on its own: print the section.
if (process.argv[1] !== undefined && import.meta.filename === process.argv[1]) {
  const quick = process.argv.includes("--quick");
  const log = (m: string) => process.stderr.write(`${m}\n`);
  try {
    const figures = await runSandbox(
      quick ? { starts: 3, runs: 1, durationS: 1 } : { starts: 15, runs: 5, durationS: 2 },
      log,
    );
    process.stdout.write(`## 6. Sandbox\n\n${figures.markdown}`);
  } finally {
    await stopAllChildren();
    removeTempDirs();
  }
}
