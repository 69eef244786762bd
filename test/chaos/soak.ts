// `npm run soak -- --minutes M --out DIR [--write]` (issue 15, item 5): M minutes of mixed traffic at a steady
// rate across four regions (predict, NDJSON streams, async requests with webhooks, websockets, wakes from
// zero) on real `meridian` processes on loopback, with a fault every few minutes (replica SIGKILL, plane
// SIGKILL and restart, control plane SIGSTOP, in turn; test/chaos/faults.ts), while every process's RSS,
// open fds and event-loop delay are sampled every 5 s. Writes DIR/samples.csv, DIR/requests.csv,
// DIR/soak-*.png (gnuplot) and DIR/soak.md; `--write` copies the PNGs to docs/reliability/ and puts soak.md
// in RELIABILITY.md's `## Soak` section.

import { once } from "node:events";
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { cpus, totalmem } from "node:os";
import { join, resolve } from "node:path";
import { monitorEventLoopDelay } from "node:perf_hooks";
import { parseArgs } from "node:util";
import { Agent, request, WebSocket } from "undici";
import { DOMAIN, eventually, startCluster } from "../support/cluster.ts";
import { EXAMPLES, packDirectory } from "../support/control.ts";
import { createModelFrom, packFiles, planeReplicas, processAlive, replicaPid } from "../support/planes.ts";
import { controlStall, type FaultRun, planeKill, replicaKills } from "./faults.ts";
import {
  auditOutOfRegion,
  call,
  duplicateExecutions,
  HUNG_MS,
  Load,
  type Result,
  recoveryMs,
  replicaProcess,
  sleep,
  type Target,
  type World,
} from "./harness.ts";
import {
  type FaultMark,
  type Kind,
  plot,
  processFigures,
  type Sample,
  type SoakOutcome,
  type SoakRequest,
  summary,
} from "./soak-report.ts";
import { chaosModel } from "./support.ts";

const REPO = resolve(import.meta.dirname, "../..");
const SAMPLE_MS = 5_000;
/** A wake from zero starts a replica before it answers: its client waits this long before calling it hung. */
const WAKE_HUNG_MS = 30_000;
/** An async request not delivered to the webhook this long after the run's end counts as hung. */
const ASYNC_GRACE_MS = 60_000;

const { values } = parseArgs({
  options: {
    minutes: { type: "string", default: "60" },
    out: { type: "string" },
    write: { type: "boolean", default: false },
    "fault-every": { type: "string" },
  },
});
const minutes = Number(values.minutes);
if (!Number.isFinite(minutes) || minutes < 2 || minutes > 180) {
  console.error("--minutes is a number of minutes, at least 2 and at most 180");
  process.exit(2);
}
if (!values.out) {
  console.error("--out DIR is required: where samples, charts and soak.md are written");
  process.exit(2);
}
const outDir = resolve(values.out);
// Every few minutes on an hour's run; on a short proof run, often enough that each fault comes once.
const faultEveryS = values["fault-every"]
  ? Number(values["fault-every"])
  : minutes >= 30
    ? 240
    : Math.max(30, Math.floor((minutes * 60 - 150) / 3));
if (!Number.isFinite(faultEveryS) || faultEveryS < 20) {
  console.error("--fault-every is a number of seconds, at least 20");
  process.exit(2);
}
const command = `npm run soak -- --minutes ${values.minutes} --out ${values.out}${values["fault-every"] ? ` --fault-every ${faultEveryS}` : ""}${values.write ? " --write" : ""}`;
mkdirSync(outDir, { recursive: true });
const log = (msg: string) => console.error(`[soak ${new Date().toISOString()}] ${msg}`);

// Event-loop delay of the Node processes: Meridian's /metrics carry prom-client's `nodejs_eventloop_lag_*`
// (checked below, on the live processes), but a scrape resets that histogram and cannot reach a stopped
// process, so its windows follow the sampler's phase. Each `meridian` process loads soak-eld.mjs, which
// measures with the same perf_hooks histogram in fixed 5 s windows and writes them to this directory.
const eldDir = join(outDir, "eld");
mkdirSync(eldDir, { recursive: true });
process.env["MERIDIAN_SOAK_ELD_DIR"] = eldDir;
process.env["NODE_OPTIONS"] = [
  process.env["NODE_OPTIONS"] ?? "",
  `--import ${join(import.meta.dirname, "soak-eld.mjs")}`,
]
  .join(" ")
  .trim();

// ---------------------------------------------------------------------------------------------- the world

interface SoakWorld {
  world: World;
  /** deployment id → model name, for labelling replica processes. */
  modelOf: Map<string, string>;
  ws: { host: string; plane: string };
  wake: { model: string; deployment: string; host: string; plane: string };
  async: { host: string; plane: string };
}

/**
 * startWorld's installation (harness.ts: us-1 the global ingress, eu-1 and eu-2, uk-1, au-1; chaos models in
 * prod-eu ×2, prod-uk, prod-au and production), built here because the soak needs more of it: planes that
 * may deliver webhooks to loopback, examples/openai-js in prod-au for websockets, and a chaos model in prod-uk
 * that scales to zero for wakes.
 */
async function startSoakWorld(): Promise<SoakWorld> {
  const timeoutS = 3;
  const webhook = ["--webhook-allow-http", "--webhook-allow-private", "--async-concurrency", "2"];
  const cluster = await startCluster({
    planes: [
      { name: "us-1", region: "us", global: true, args: webhook },
      { name: "eu-1", region: "eu", args: webhook },
      { name: "eu-2", region: "eu", args: webhook },
      { name: "uk-1", region: "uk", args: webhook },
      { name: "au-1", region: "au", args: webhook },
    ],
    controlArgs: ["--plane-timeout", String(timeoutS), "--autoscaler-interval-ms", "500"],
  });
  try {
    const api = cluster.api;
    for (const region of ["eu", "uk", "au"]) {
      const r = await api.patch(`/v1/environment_groups/prod-${region}`, { region_restriction: { region } });
      if (r.status !== 200) throw new Error(`restrict prod-${region}: ${JSON.stringify(r.body)}`);
    }
    const created: Record<string, { model: string; deployment: string }> = {};
    const modelOf = new Map<string, string>();
    const make = async (key: string, name: string, archive: Buffer, env: string) => {
      const r = await createModelFrom(cluster, name, archive, { environment_name: env });
      if (r.status !== 200) throw new Error(`create ${name}: ${JSON.stringify(r.body)}`);
      created[key] = { model: r.body.model.id, deployment: r.body.deployment.id };
      modelOf.set(r.body.deployment.id, name);
    };
    for (const [key, env] of [
      ["eu", "prod-eu"],
      ["uk", "prod-uk"],
      ["au", "prod-au"],
      ["plain", "production"],
    ] as const) {
      await make(key, `chaos-${key}`, await packFiles(chaosModel(`chaos-${key}`)), env);
    }
    await make("ws", "soak-ws", await packDirectory(join(EXAMPLES, "openai-js")), "prod-au");
    await make("wake", "soak-wake", await packFiles(chaosModel("soak-wake")), "prod-uk");
    const m = (k: string) => created[k]!.model;
    const scaled = await api.patch(`/v1/models/${m("eu")}/environments/prod-eu`, {
      autoscaling_settings: { min_replica: 2, max_replica: 2 },
    });
    if (scaled.status !== 200) throw new Error(`scale prod-eu: ${JSON.stringify(scaled.body)}`);
    const sleepy = await api.patch(`/v1/models/${m("wake")}/environments/prod-uk`, {
      autoscaling_settings: { min_replica: 0, max_replica: 1, scale_down_delay: 5 },
    });
    if (sleepy.status !== 200) throw new Error(`scale-to-zero prod-uk: ${JSON.stringify(sleepy.body)}`);
    const regional = (k: string, env: string) => `model-${m(k)}-${env}.${DOMAIN}`;
    const targets: Target[] = [
      {
        name: "eu regional @eu-1",
        plane: "eu-1",
        host: regional("eu", "prod-eu"),
        path: "/predict",
        region: "eu",
      },
      {
        name: "eu regional @eu-2",
        plane: "eu-2",
        host: regional("eu", "prod-eu"),
        path: "/predict",
        region: "eu",
      },
      {
        name: "eu standard @us-1",
        plane: "us-1",
        host: `model-${m("eu")}.${DOMAIN}`,
        path: "/environments/prod-eu/predict",
        region: "eu",
      },
      {
        name: "uk regional @uk-1",
        plane: "uk-1",
        host: regional("uk", "prod-uk"),
        path: "/predict",
        region: "uk",
      },
      {
        name: "au regional @au-1",
        plane: "au-1",
        host: regional("au", "prod-au"),
        path: "/predict",
        region: "au",
      },
      {
        name: "us standard @us-1",
        plane: "us-1",
        host: `model-${m("plain")}.${DOMAIN}`,
        path: "/production/predict",
        region: null,
      },
    ];
    const world: World = {
      cluster,
      models: { eu: m("eu"), uk: m("uk"), au: m("au"), plain: m("plain") },
      deployments: {
        eu: created["eu"]!.deployment,
        uk: created["uk"]!.deployment,
        au: created["au"]!.deployment,
        plain: created["plain"]!.deployment,
      },
      targets,
      timeoutS,
    };
    await eventually(async () => {
      for (const plane of ["eu-1", "eu-2"]) {
        if ((await replicaProcess(world, plane, world.deployments.eu)) === null) return false;
      }
      return true;
    }, 90_000);
    for (const t of targets) {
      await eventually(
        async () => (await call(world, t, cluster.api.key!, `warm-${t.plane}`)).outcome === "ok",
        90_000,
      );
    }
    return {
      world,
      modelOf,
      ws: { host: regional("ws", "prod-au"), plane: "au-1" },
      wake: {
        model: m("wake"),
        deployment: created["wake"]!.deployment,
        host: regional("wake", "prod-uk"),
        plane: "uk-1",
      },
      async: { host: regional("uk", "prod-uk"), plane: "uk-1" },
    };
  } catch (err) {
    await cluster.stop();
    throw err;
  }
}

// ------------------------------------------------------------------------------------------- the traffic

const requests: SoakRequest[] = [];
let sequence = 0;
const nextId = (kind: string) => `soak-${kind}-${process.pid}-${++sequence}`;

function fromResult(kind: Kind, r: Result, want: string | null): SoakRequest {
  return {
    kind,
    target: r.target,
    id: r.id,
    startedAt: r.startedAt,
    latencyMs: r.latencyMs,
    outcome:
      r.outcome === "ok" || r.outcome === "typed_error" || r.outcome === "hung" ? r.outcome : "other_error",
    status: r.status,
    detail: r.outcome === "ok" ? null : r.errorCode,
    region: r.region,
    want,
  };
}

function errorCodeOf(text: string): string | null {
  try {
    return (JSON.parse(text) as { error_code?: string }).error_code ?? null;
  } catch {
    return null;
  }
}

const transportCode = (err: unknown) => (err as { code?: string }).code || String(err);
const hungCode = (code: string) => code === "UND_ERR_HEADERS_TIMEOUT" || code === "UND_ERR_BODY_TIMEOUT";

/** One NDJSON stream of the chaos model (a chunk every 100 ms for `ms`), read to its last chunk. */
async function streamOnce(sw: SoakWorld, t: Target, key: string): Promise<SoakRequest> {
  const p = sw.world.cluster.plane(t.plane);
  const id = nextId("stream");
  const startedAt = Date.now();
  const started = performance.now();
  const base = { kind: "stream" as const, target: t.name, id, startedAt, want: t.region };
  let status = 0;
  let region: string | null = null;
  try {
    const res = await request(`http://${p.host}:${p.port}${t.path}`, {
      method: "POST",
      headers: { host: t.host, authorization: `Api-Key ${key}`, "content-type": "application/json" },
      body: JSON.stringify({ id, stream: true, ms: 500 }),
      headersTimeout: HUNG_MS,
      bodyTimeout: HUNG_MS,
    });
    status = res.statusCode;
    const h = res.headers["x-meridian-region"];
    region = typeof h === "string" ? h : null;
    const text = await res.body.text();
    const latencyMs = performance.now() - started;
    if (status >= 400) {
      const code = errorCodeOf(text);
      return {
        ...base,
        latencyMs,
        outcome: code ? "typed_error" : "other_error",
        status,
        detail: code ?? "no error_code",
        region,
      };
    }
    const lines = text.split("\n").filter((l) => l.trim());
    let done = false;
    try {
      done = (JSON.parse(lines[lines.length - 1] ?? "{}") as { done?: boolean }).done === true;
    } catch {}
    return {
      ...base,
      latencyMs,
      outcome: done ? "ok" : "other_error",
      status,
      detail: done ? null : "stream ended before its last chunk",
      region,
    };
  } catch (err) {
    const code = transportCode(err);
    return {
      ...base,
      latencyMs: performance.now() - started,
      outcome: hungCode(code) ? "hung" : "other_error",
      status,
      detail: status ? `stream cut: ${code}` : code,
      region,
    };
  }
}

/** A websocket to examples/openai-js in prod-au through au-1's ingress: one message, its echo, close. */
function websocketOnce(sw: SoakWorld, dispatcher: Agent, key: string): Promise<SoakRequest> {
  const p = sw.world.cluster.plane(sw.ws.plane);
  const id = nextId("ws");
  const startedAt = Date.now();
  const started = performance.now();
  return new Promise((resolveRequest) => {
    let settled = false;
    const ws = new WebSocket(`ws://${sw.ws.host}:${p.port}/websocket`, {
      dispatcher,
      headers: { authorization: `Bearer ${key}` },
    } as ConstructorParameters<typeof WebSocket>[1]);
    const finish = (outcome: SoakOutcome, detail: string | null) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolveRequest({
        kind: "websocket",
        target: `prod-au websocket @${sw.ws.plane}`,
        id,
        startedAt,
        latencyMs: performance.now() - started,
        outcome,
        status: 0,
        detail,
        // The echo names the environment; the region is checked from the planes' audit trails.
        region: null,
        want: "au",
      });
      try {
        ws.close(1000);
      } catch {}
    };
    const timer = setTimeout(() => finish("hung", "no echo"), HUNG_MS);
    ws.addEventListener("open", () => ws.send(id));
    ws.addEventListener("message", (e) => {
      const text = String(e.data);
      finish(
        text === `prod-au: ${id}` ? "ok" : "other_error",
        text === `prod-au: ${id}` ? null : "wrong echo",
      );
    });
    ws.addEventListener("error", (e) =>
      finish("other_error", `websocket error: ${(e as { message?: string }).message ?? "?"}`),
    );
    ws.addEventListener("close", (e) =>
      finish("other_error", `closed ${(e as { code?: number }).code} before the echo`),
    );
  });
}

/** Pending async requests by request id, settled by the webhook or, at the end, as hung. */
const pendingAsync = new Map<string, SoakRequest>();

async function asyncOnce(sw: SoakWorld, key: string, hookUrl: string): Promise<void> {
  const p = sw.world.cluster.plane(sw.async.plane);
  const id = nextId("async");
  const startedAt = Date.now();
  const base = {
    kind: "async" as const,
    target: `prod-uk async @${sw.async.plane}`,
    id,
    startedAt,
    want: "uk",
  };
  try {
    const res = await request(`http://${p.host}:${p.port}/async_predict`, {
      method: "POST",
      headers: { host: sw.async.host, authorization: `Api-Key ${key}`, "content-type": "application/json" },
      body: JSON.stringify({ model_input: { id }, webhook_endpoint: hookUrl }),
      headersTimeout: HUNG_MS,
      bodyTimeout: HUNG_MS,
    });
    const text = await res.body.text();
    const h = res.headers["x-meridian-region"];
    const region = typeof h === "string" ? h : null;
    if (res.statusCode !== 201) {
      const code = errorCodeOf(text);
      requests.push({
        ...base,
        latencyMs: Date.now() - startedAt,
        outcome: code ? "typed_error" : "other_error",
        status: res.statusCode,
        detail: code ?? "no error_code",
        region,
      });
      return;
    }
    const requestId = (JSON.parse(text) as { request_id: string }).request_id;
    const r: SoakRequest = {
      ...base,
      latencyMs: 0,
      outcome: "hung",
      status: 201,
      detail: "no webhook",
      region,
    };
    pendingAsync.set(requestId, r);
    requests.push(r);
  } catch (err) {
    const code = transportCode(err);
    requests.push({
      ...base,
      latencyMs: Date.now() - startedAt,
      outcome: hungCode(code) ? "hung" : "other_error",
      status: 0,
      detail: code,
      region: null,
    });
  }
}

function startWebhook(): Promise<{ server: http.Server; url: string }> {
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      res.writeHead(200).end("ok");
      try {
        const body = JSON.parse(Buffer.concat(chunks).toString("utf8")) as {
          request_id: string;
          data: { id?: string } | null;
          errors: Array<{ code: string }>;
        };
        const r = pendingAsync.get(body.request_id);
        if (!r) return;
        pendingAsync.delete(body.request_id);
        r.latencyMs = Date.now() - r.startedAt;
        if (body.errors?.length) {
          r.outcome = "typed_error";
          r.detail = `webhook: ${body.errors[0]!.code}`;
        } else if (body.data?.id !== r.id) {
          r.outcome = "other_error";
          r.detail = "webhook: another request's result";
        } else {
          r.outcome = "ok";
          r.detail = null;
        }
      } catch {}
    });
  });
  return new Promise((ok) =>
    server.listen(0, "127.0.0.1", () =>
      ok({ server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook` }),
    ),
  );
}

/** Waits for the scale-to-zero environment to be asleep, then sends it one request: a wake from zero. */
async function wakeOnce(sw: SoakWorld, key: string, running: () => boolean): Promise<SoakRequest | null> {
  const api = sw.world.cluster.api;
  const deadline = Date.now() + 120_000;
  let asleep = false;
  while (running() && Date.now() < deadline) {
    try {
      const d = await api.get(`/v1/models/${sw.wake.model}/deployments/${sw.wake.deployment}`);
      if (d.status === 200 && d.body.status === "SCALED_TO_ZERO") {
        asleep = true;
        break;
      }
    } catch {}
    await sleep(500);
  }
  if (!running()) return null;
  const p = sw.world.cluster.plane(sw.wake.plane);
  const id = nextId("wake");
  const startedAt = Date.now();
  const started = performance.now();
  const base = {
    kind: "wake" as const,
    target: `prod-uk scale-to-zero @${sw.wake.plane}`,
    id,
    startedAt,
    want: "uk",
  };
  try {
    const res = await request(`http://${p.host}:${p.port}/predict`, {
      method: "POST",
      headers: { host: sw.wake.host, authorization: `Api-Key ${key}`, "content-type": "application/json" },
      body: JSON.stringify({ id }),
      headersTimeout: WAKE_HUNG_MS,
      bodyTimeout: WAKE_HUNG_MS,
    });
    const text = await res.body.text();
    const h = res.headers["x-meridian-region"];
    const code = res.statusCode >= 400 ? errorCodeOf(text) : null;
    return {
      ...base,
      latencyMs: performance.now() - started,
      outcome: res.statusCode < 400 ? "ok" : code ? "typed_error" : "other_error",
      status: res.statusCode,
      detail: res.statusCode < 400 ? (asleep ? null : "not asleep when sent") : (code ?? "no error_code"),
      region: typeof h === "string" ? h : null,
    };
  } catch (err) {
    const code = transportCode(err);
    return {
      ...base,
      latencyMs: performance.now() - started,
      outcome: hungCode(code) ? "hung" : "other_error",
      status: 0,
      detail: code,
      region: null,
    };
  }
}

// ------------------------------------------------------------------------------------------- the sampler

interface ProcRow {
  ppid: number;
  zombie: boolean;
}

function procTable(): Map<number, ProcRow> {
  const table = new Map<number, ProcRow>();
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, "utf8");
      // Fields after the parenthesised command name: state, ppid, …
      const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      table.set(Number(name), { ppid: Number(rest[1]), zombie: rest[0] === "Z" });
    } catch {}
  }
  return table;
}

function tree(root: number, table: Map<number, ProcRow>): number[] {
  const children = new Map<number, number[]>();
  for (const [pid, row] of table) {
    const list = children.get(row.ppid) ?? [];
    list.push(pid);
    children.set(row.ppid, list);
  }
  const out: number[] = [];
  const queue = [root];
  while (queue.length) {
    const pid = queue.shift()!;
    if (!table.has(pid) || table.get(pid)!.zombie) continue;
    out.push(pid);
    queue.push(...(children.get(pid) ?? []));
  }
  return out;
}

function rssMb(pid: number): number | null {
  try {
    const m = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) / 1024 : 0;
  } catch {
    return null;
  }
}

function fdCount(pid: number): number | null {
  try {
    return readdirSync(`/proc/${pid}/fd`).length;
  } catch {
    return null;
  }
}

/** How far each process's event-loop file has been read. */
const eldRead = new Map<number, number>();

/** The windows a process wrote since the last sample: the worst p99 and max of them, or null if none. */
function eldOf(pid: number): { p99: number; max: number } | null {
  let text: string;
  try {
    text = readFileSync(join(eldDir, `${pid}.jsonl`), "utf8");
  } catch {
    return null;
  }
  const from = eldRead.get(pid) ?? 0;
  const end = text.lastIndexOf("\n") + 1;
  if (end <= from) return null;
  eldRead.set(pid, end);
  let p99 = 0;
  let max = 0;
  for (const line of text.slice(from, end).split("\n")) {
    if (!line) continue;
    try {
      const r = JSON.parse(line) as { p99_ms: number; max_ms: number };
      p99 = Math.max(p99, r.p99_ms);
      max = Math.max(max, r.max_ms);
    } catch {}
  }
  return { p99, max };
}

/** Skips what every process wrote before the load started (its start-up, the world's set-up). */
function primeEld(): void {
  for (const name of readdirSync(eldDir)) {
    const m = /^(\d+)\.jsonl$/.exec(name);
    if (!m) continue;
    try {
      const text = readFileSync(join(eldDir, name), "utf8");
      eldRead.set(Number(m[1]), text.lastIndexOf("\n") + 1);
    } catch {}
  }
}

const driverEld = monitorEventLoopDelay({ resolution: 10 });
driverEld.enable();

const samples: Sample[] = [];
const samplesCsv = join(outDir, "samples.csv");
writeFileSync(samplesCsv, "time_ms,label,group,pid,rss_mb,fds,procs,eld_p99_ms,eld_max_ms\n");

async function sampleOnce(sw: SoakWorld): Promise<void> {
  const now = Date.now();
  const table = procTable();
  const rows: Sample[] = [];
  const add = (
    label: string,
    group: Sample["group"],
    pids: number[],
    eld: { p99: number; max: number } | null,
  ) => {
    let rss = 0;
    let fds = 0;
    let procs = 0;
    for (const pid of pids) {
      const r = rssMb(pid);
      const f = fdCount(pid);
      if (r === null || f === null) continue;
      rss += r;
      fds += f;
      procs++;
    }
    if (procs === 0) return;
    rows.push({
      t: now,
      label,
      group,
      pid: pids[0]!,
      rssMb: rss,
      fds,
      procs,
      eldP99Ms: eld?.p99 ?? null,
      eldMaxMs: eld?.max ?? null,
    });
  };
  const { cluster } = sw.world;
  const control = cluster.control.child.pid;
  if (control && processAlive(control)) add("control", "control", [control], eldOf(control));
  add("soak driver", "driver", [process.pid], {
    p99: driverEld.percentile(99) / 1e6,
    max: driverEld.max / 1e6,
  });
  driverEld.reset();
  await Promise.all(
    [...cluster.planes.values()].map(async (p) => {
      const pid = p.process?.child.pid;
      if (!pid || !processAlive(pid)) return;
      add(`plane ${p.name}`, "plane", [pid], eldOf(pid));
      const replicas = (await planeReplicas(p)) ?? [];
      const seen = new Map<string, number>();
      for (const r of replicas.sort((a, b) => a.id.localeCompare(b.id))) {
        const rpid = replicaPid(p, r.id);
        if (rpid === null || !processAlive(rpid)) continue;
        const name = sw.modelOf.get(r.deployment_id) ?? r.deployment_id;
        const n = (seen.get(name) ?? 0) + 1;
        seen.set(name, n);
        add(`replica ${name}@${p.name}${n > 1 ? ` #${n}` : ""}`, "replica", tree(rpid, table), null);
      }
    }),
  );
  samples.push(...rows);
  writeFileSync(
    samplesCsv,
    rows
      .map(
        (s) =>
          `${s.t},"${s.label}",${s.group},${s.pid},${s.rssMb.toFixed(2)},${s.fds},${s.procs},${s.eldP99Ms?.toFixed(2) ?? ""},${s.eldMaxMs?.toFixed(2) ?? ""}\n`,
      )
      .join(""),
    { flag: "a" },
  );
}

/** Whether `/metrics` of the control plane and of a plane carries prom-client's event-loop metrics. */
async function eldOnMetrics(sw: SoakWorld): Promise<string> {
  const { cluster } = sw.world;
  const p = cluster.plane("eu-1");
  const text = async (url: string, headers: Record<string, string> = {}) => {
    try {
      const res = await request(url, { headers, headersTimeout: 5_000, bodyTimeout: 5_000 });
      return `${res.statusCode} ${await res.body.text()}`;
    } catch (err) {
      return String(err);
    }
  };
  const plane = await text(`http://${p.host}:${p.admin}/metrics`);
  const control = await text(`${cluster.controlUrl}/metrics`, { authorization: `Bearer ${cluster.api.key}` });
  const has = (t: string) => (t.includes("nodejs_eventloop_lag") ? "exposes" : "does not expose");
  return (
    `Event-loop delay: the plane's admin /metrics ${has(plane)} and the control plane's /metrics (org admin key) ${has(control)} ` +
    "prom-client's `nodejs_eventloop_lag_*`; each scrape resets that histogram and a stopped process cannot be scraped, so for fixed windows every `meridian` process also loads " +
    "test/chaos/soak-eld.mjs (NODE_OPTIONS=--import), which measures it with perf_hooks.monitorEventLoopDelay at 10 ms " +
    "resolution, the histogram prom-client uses, in 5 s windows (a sample takes the worst window written since the one before); it times the interval between 10 ms ticks, so an idle loop reads about 10 ms (prom-client reports the same raw values). Replica processes are not measured (the plane " +
    "passes them only LANG and TZ of its environment; JS replicas get no preload and Python has no such metric): RSS and fds only."
  );
}

// ---------------------------------------------------------------------------------------------- the run

log(`starting: ${command} (faults every ${faultEveryS} s)`);
const sw = await startSoakWorld();
const { world } = sw;
const { cluster } = world;
const key = cluster.api.key!;
const hook = await startWebhook();
const dispatcher = new Agent({
  connect: {
    // The websocket's regional hostname resolves to au-1's ingress, as Meridian's DNS answers it.
    lookup: (_host: string, opts: { all?: boolean }, cb: (...a: unknown[]) => void) => {
      const address = cluster.plane(sw.ws.plane).host;
      if (opts.all) cb(null, [{ address, family: 4 }]);
      else cb(null, address, 4);
    },
  } as object,
});
// The control plane's judgements of plane health, kept whole: the process handle keeps only its last 5000
// output lines, which an hour outgrows, and faults.ts reads "planes judged down" from that window.
const judgements: Array<{ t: number; down: string[] }> = [];
for (const stream of [cluster.control.child.stdout!, cluster.control.child.stderr!]) {
  let buf = "";
  stream.on("data", (chunk: string | Buffer) => {
    buf += String(chunk);
    let i = buf.indexOf("\n");
    while (i >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      i = buf.indexOf("\n");
      if (!line.includes('"plane health changed"')) continue;
      try {
        judgements.push({ t: Date.now(), down: (JSON.parse(line) as { down?: string[] }).down ?? [] });
      } catch {}
    }
  });
}
const judgedDown = (from: number, to: number) =>
  [...new Set(judgements.filter((j) => j.t >= from && j.t <= to).flatMap((j) => j.down))].sort().join(" ") ||
  "none";
const eldSource = await eldOnMetrics(sw);
log(eldSource);

let running = true;
primeEld();
driverEld.reset();
const runStart = Date.now();
const runEndAt = runStart + minutes * 60_000;
const warmUntil = runStart + Math.min(5 * 60_000, Math.max(60_000, minutes * 6_000));
const predict = new Load(world, { concurrency: 2, pauseMs: 100, idPrefix: "soak-predict" });
const loops: Promise<void>[] = [];
const loop = (fn: () => Promise<void>) => {
  loops.push(
    (async () => {
      while (running) await fn();
    })(),
  );
};
const streamTargets = world.targets.filter((t) => t.name.startsWith("eu regional"));
let streamN = 0;
loop(async () => {
  requests.push(await streamOnce(sw, streamTargets[streamN++ % streamTargets.length]!, key));
  await sleep(500);
});
loop(async () => {
  await asyncOnce(sw, key, hook.url);
  await sleep(2_000);
});
loop(async () => {
  requests.push(await websocketOnce(sw, dispatcher, key));
  await sleep(1_000);
});
loop(async () => {
  const r = await wakeOnce(sw, key, () => running);
  if (r) requests.push(r);
  await sleep(1_000);
});
const sampler = (async () => {
  while (running) {
    const next = Date.now() + SAMPLE_MS;
    await sampleOnce(sw).catch((err) => log(`sample failed: ${err}`));
    await sleep(Math.max(0, next - Date.now()));
  }
})();

const faults: FaultMark[] = [];
const cycle: Array<[string, () => Promise<FaultRun>]> = [
  ["replica SIGKILL", () => replicaKills(world, 2, 5)],
  ["plane SIGKILL and restart", () => planeKill(world, 8)],
  ["control plane paused", () => controlStall(world)],
];
try {
  // The first fault after a minute of clean load; a fault is started only if it can end before the run does.
  for (let i = 0; ; i++) {
    const at = runStart + 60_000 + i * faultEveryS * 1000;
    if (at + 90_000 > runEndAt) break;
    await sleep(Math.max(0, at - Date.now()));
    const [name, run] = cycle[i % cycle.length]!;
    log(`fault ${i + 1}: ${name}`);
    const startedAt = Date.now();
    try {
      const f = await run();
      faults.push({
        name: f.name,
        startedAt: f.startedAt,
        restoredAt: f.restoredAt,
        endedAt: f.endedAt,
        extra:
          "planes judged down" in f.extra
            ? { ...f.extra, "planes judged down": judgedDown(f.startedAt, f.endedAt) }
            : f.extra,
        recoveryMs: recoveryMs(predict.results, f.restoredAt, f.endedAt),
      });
      log(`fault ${i + 1} over after ${((f.endedAt - f.startedAt) / 1000).toFixed(0)} s`);
    } catch (err) {
      // A fault whose recovery wait ran out (faults.ts waits 60 s for eu's replicas): recorded, and the
      // soak goes on, so an hour's samples are not lost to one slow recovery.
      const endedAt = Date.now();
      faults.push({
        name: `${name} (recovery wait ran out)`,
        startedAt,
        restoredAt: startedAt,
        endedAt,
        extra: { error: String(err).split("\n")[0]!.slice(0, 200) },
        recoveryMs: null,
      });
      log(`fault ${i + 1} failed: ${err}`);
    }
  }
  await sleep(Math.max(0, runEndAt - Date.now()));
} finally {
  running = false;
  log("load stopping");
  const predicted = await predict.stop();
  await Promise.all(loops);
  const graceEnd = Date.now() + ASYNC_GRACE_MS;
  while (pendingAsync.size > 0 && Date.now() < graceEnd) await sleep(500);
  await sampler;
  const regionOf = new Map(world.targets.map((t) => [t.name, t.region]));
  requests.push(...predicted.map((r) => fromResult("predict", r, regionOf.get(r.target) ?? null)));
  // SIGTERM: the planes flush their audit trails before the counts are read from them.
  await cluster.stop();
  await dispatcher.close();
  hook.server.close();
  await once(hook.server, "close").catch(() => {});
}
const runEnd = runEndAt;
const duplicates = duplicateExecutions(cluster);
const audit = auditOutOfRegion(world);
// The installation's data (replica logs, audit trails) is read; the counts and samples are in DIR.
rmSync(cluster.dir, { recursive: true, force: true });
writeFileSync(
  join(outDir, "requests.csv"),
  `kind,target,id,started_ms,latency_ms,outcome,status,detail,region,want\n${requests
    .map(
      (r) =>
        `${r.kind},"${r.target}",${r.id},${r.startedAt},${r.latencyMs.toFixed(1)},${r.outcome},${r.status},"${(r.detail ?? "").replace(/"/g, "'")}",${r.region ?? ""},${r.want ?? ""}`,
    )
    .join("\n")}\n`,
);
const processes = processFigures(samples, runStart, runEnd, warmUntil);
const plotted = plot(outDir, samples, runStart, SAMPLE_MS, faults);
const pngPrefix = "docs/reliability/";
const md = summary({
  command,
  minutes,
  runStart,
  runEnd,
  warmUntil,
  requests,
  faults,
  processes,
  duplicates,
  audit,
  eldSource,
  pngs: "pngs" in plotted ? plotted.pngs : null,
  plotError: "error" in plotted ? plotted.error : null,
  pngPrefix,
  world:
    "Installation: `meridian control` (SQLite, --plane-timeout 3) and five `meridian plane` processes on loopback: us-1 " +
    "(us, the global ingress), eu-1 and eu-2 (eu), uk-1 (uk), au-1 (au); prod-eu, prod-uk and prod-au restricted to their " +
    "regions. Replicas run in bubblewrap. Faults cycle every " +
    `${faultEveryS} s after the first minute: an eu replica SIGKILLed twice 5 s apart; eu-1 SIGKILLed and restarted after 8 s; ` +
    "the control plane SIGSTOPped for 8 s (longer than --plane-timeout) and resumed.",
  traffic: {
    predict:
      "2 clients, 100 ms apart, over 6 endpoints (regional eu ×2, uk, au; standard prod-eu and production at us-1)",
    stream: "1 client, 500 ms apart: 0.5 s NDJSON stream from prod-eu at eu-1 / eu-2, read to its last chunk",
    async:
      "1 client, 2 s apart: POST /async_predict to prod-uk at uk-1, settled by its webhook (hung: none within 60 s of the end)",
    websocket:
      "1 client, 1 s apart: websocket to examples/openai-js in prod-au at au-1, one message and its echo",
    wake: "1 client: waits for prod-uk's scale-to-zero model (scale_down_delay 5 s) to be SCALED_TO_ZERO, then one predict (hung after 30 s)",
  },
  machine: `${cpus().length} cores, ${Math.round(totalmem() / 2 ** 30)} GiB, shared`,
});
writeFileSync(join(outDir, "soak.md"), md);
writeFileSync(join(outDir, "faults.json"), JSON.stringify(faults, null, 2));
log(
  `wrote ${join(outDir, "soak.md")}${"pngs" in plotted ? ` and ${plotted.pngs.length} charts` : `; ${plotted.error}`}`,
);
if (values.write) {
  const docs = join(REPO, "docs", "reliability");
  mkdirSync(docs, { recursive: true });
  if ("pngs" in plotted) for (const png of plotted.pngs) copyFileSync(png, join(docs, png.split("/").pop()!));
  const file = join(REPO, "RELIABILITY.md");
  const current = existsSync(file) ? readFileSync(file, "utf8") : "# Reliability\n";
  const start = current.search(/^## Soak$/m);
  let next: string;
  if (start < 0) next = `${current.trimEnd()}\n\n${md}`;
  else {
    const after = current.slice(start + 1).search(/^## /m);
    const end = after < 0 ? current.length : start + 1 + after;
    next = `${current.slice(0, start)}${md}${after < 0 ? "" : `\n${current.slice(end)}`}`;
  }
  writeFileSync(file, next);
  log("RELIABILITY.md's ## Soak section and docs/reliability/soak-*.png updated");
}
console.log(md);
const hung = requests.filter((r) => r.outcome === "hung").length;
const outside = requests.filter(
  (r) => r.outcome === "ok" && r.want && r.region && r.region !== r.want,
).length;
process.exit(hung > 0 || outside > 0 || audit.outside.length > 0 || duplicates.length > 0 ? 1 : 0);
