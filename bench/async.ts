// Async inference on one plane (issue 13): accepted/s and completed/s of the plane's async service (the
// durable journal with its fdatasync per batch, the worker, the webhook with its signature), against the
// same requests sent as synchronous predicts straight to the replica in the same run; and queue latency,
// from the 201 to the replica receiving the request, on an idle queue and behind a backlog. The replica
// stand-in is a separate process (this file with --upstream): a bare node:http server that answers small
// JSON and prints when each request arrived. The ingress in front (measured in §1) is not included. Run:
//   npx tsx bench/async.ts            (≈ 40 s on 2 cores; BENCH_ASYNC_N=2000, BENCH_ASYNC_RUNS=3)

import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import pino from "pino";
import { Agent, Pool, request } from "undici";
import { ASYNC_CONTEXT_HEADER, type AsyncContext } from "../src/gateway/async.ts";
import { AsyncService } from "../src/plane/async-service.ts";

const now = () => performance.timeOrigin + performance.now();

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
}
const median = (xs: number[]) => pct(xs, 50);
const fmt = (x: number, d = 0) =>
  x.toLocaleString("en-US", { maximumFractionDigits: d, minimumFractionDigits: d });

async function main(): Promise<void> {
  const N = Number(process.env["BENCH_ASYNC_N"] ?? 2000);
  const RUNS = Number(process.env["BENCH_ASYNC_RUNS"] ?? 3);
  /** Requests the replica runs at once (async: the worker's bound; sync: the client's connections). */
  const C = 8;
  /** Clients submitting at once. */
  const SUBMITTERS = 32;
  const loadStart = (await import("node:os"))
    .loadavg()
    .map((l) => l.toFixed(2))
    .join(" ");

  const arrivals = new Map<string, number>();
  const upstream: ChildProcess = spawn(
    process.execPath,
    ["--import", "tsx", import.meta.filename, "--upstream"],
    {
      stdio: ["ignore", "pipe", "inherit"],
    },
  );
  const port = await new Promise<number>((ok) => {
    let buf = "";
    upstream.stdout!.setEncoding("utf8");
    upstream.stdout!.on("data", (chunk: string) => {
      buf += chunk;
      let i = buf.indexOf("\n");
      while (i >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        if (line.startsWith("listening ")) ok(Number(line.slice(10)));
        else if (line.startsWith("t ")) {
          const [, id, at] = line.split(" ");
          arrivals.set(id!, Number(at));
        }
        i = buf.indexOf("\n");
      }
    });
  });
  const replica = `127.0.0.1:${port}`;

  const delivered = new Map<string, number>();
  const hook = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      const id = (JSON.parse(Buffer.concat(chunks).toString("utf8")) as { request_id: string }).request_id;
      delivered.set(id, now());
      res.writeHead(204).end();
    });
  });
  await new Promise<void>((ok) => hook.listen(0, "127.0.0.1", ok));
  const hookUrl = `http://127.0.0.1:${(hook.address() as AddressInfo).port}/hook`;

  const rows: Array<Record<string, number>> = [];
  process.once("exit", () => upstream.kill("SIGKILL"));
  for (let run = 0; run < RUNS; run++) {
    // (a) the baseline: the same number of predicts, synchronous, straight to the replica, C at a time.
    const pool = new Pool(`http://${replica}`, { connections: C });
    const syncLat: number[] = [];
    let next = 0;
    const t0 = now();
    await Promise.all(
      Array.from({ length: C }, async () => {
        while (next < N) {
          next++;
          const s = now();
          const res = await pool.request({
            path: "/v1/models/model:predict",
            method: "POST",
            headers: { "content-type": "application/json" },
            body: '{"text":"bonjour"}',
          });
          await res.body.text();
          syncLat.push(now() - s);
        }
      }),
    );
    const syncPerSec = N / ((now() - t0) / 1000);
    await pool.close();

    // (b) async: a fresh queue on disk, the service on its socket, C at a time on the one replica.
    const dir = mkdtempSync(join(tmpdir(), "meridian-bench-async-"));
    const token = "bench-token";
    const service = new AsyncService({
      plane: "eu-1",
      dir: join(dir, "async"),
      socketPath: join(dir, "async", "s.sock"),
      token,
      maxLive: N + 1000,
      worker: {
        replicas: () => [replica],
        resolve: () => ({ ok: true, deploymentId: "d1" }),
        webhookSecrets: async () => ["whsec_bench"],
        concurrency: C,
        webhook: { allowHttp: true, allowPrivate: true },
      },
      logger: pino({ level: "silent" }),
    });
    await service.start();
    const client = new Agent({
      connect: { socketPath: join(dir, "async", "s.sock") },
      connections: SUBMITTERS,
    });
    const ctx: AsyncContext = {
      token,
      op: "predict",
      request_id: null,
      form: "regional",
      model_id: "aaaaaaa1",
      team_id: "t1",
      environment: "prod-eu",
      deployment_id: "d1",
      region: "eu",
      target: { kind: "environment", name: "prod-eu" },
    };
    const header = Buffer.from(JSON.stringify(ctx)).toString("base64url");
    const accepted = new Map<string, number>();
    const acceptLat: number[] = [];
    const submit = async () => {
      const s = now();
      const res = await request("http://localhost/async_predict", {
        method: "POST",
        dispatcher: client,
        headers: { "content-type": "application/json", [ASYNC_CONTEXT_HEADER]: header },
        body: JSON.stringify({ model_input: { text: "bonjour" }, webhook_endpoint: hookUrl }),
      });
      const body = (await res.body.json()) as { request_id: string };
      if (res.statusCode !== 201) throw new Error(`async_predict answered ${res.statusCode}`);
      const t = now();
      accepted.set(body.request_id, t);
      acceptLat.push(t - s);
    };
    // Idle: one at a time, each waits for its webhook; what the queue adds when there is no backlog.
    const idle: number[] = [];
    for (let i = 0; i < 100; i++) {
      const before = new Set(accepted.keys());
      await submit();
      const id = [...accepted.keys()].find((k) => !before.has(k))!;
      while (!delivered.has(id)) await new Promise((r) => setTimeout(r, 1));
      idle.push(arrivals.get(id)! - accepted.get(id)!);
    }
    accepted.clear();
    acceptLat.length = 0;
    // Backlog: N submitted by SUBMITTERS clients at once, while the worker drains them.
    let left = N;
    const a0 = now();
    await Promise.all(
      Array.from({ length: SUBMITTERS }, async () => {
        while (left > 0) {
          left--;
          await submit();
        }
      }),
    );
    const a1 = now();
    const ids = [...accepted.keys()];
    while (ids.some((id) => !delivered.has(id))) await new Promise((r) => setTimeout(r, 5));
    const c1 = Math.max(...ids.map((id) => delivered.get(id)!));
    const queueLat = ids.map((id) => arrivals.get(id)! - accepted.get(id)!);
    await client.close();
    await service.stop();
    rmSync(dir, { recursive: true, force: true });

    rows.push({
      syncPerSec,
      syncP50: median(syncLat),
      acceptedPerSec: N / ((a1 - a0) / 1000),
      acceptP50: median(acceptLat),
      acceptP99: pct(acceptLat, 99),
      completedPerSec: N / ((c1 - a0) / 1000),
      idleP50: median(idle),
      idleP99: pct(idle, 99),
      backlogP50: median(queueLat),
      backlogP99: pct(queueLat, 99),
    });
  }
  upstream.kill("SIGTERM");
  await new Promise<void>((ok) => hook.close(() => ok()));
  const loadEnd = (await import("node:os"))
    .loadavg()
    .map((l) => l.toFixed(2))
    .join(" ");

  const m = (k: string) => median(rows.map((r) => r[k]!));
  const out = [
    `N = ${N} requests per run, ${RUNS} runs, medians; replica concurrency ${C}; ${SUBMITTERS} submitting clients.`,
    `Load average (1, 5, 15 min) at start: ${loadStart}; at end: ${loadEnd}.`,
    "",
    "| measure | value | vs baseline |",
    "|---|---:|---:|",
    `| (a) baseline: sync predicts straight to the replica, req/s | ${fmt(m("syncPerSec"))} | 1.00× |`,
    `| (b) async accepted/s (201 after fdatasync), backlog building | ${fmt(m("acceptedPerSec"))} | ${(m("acceptedPerSec") / m("syncPerSec")).toFixed(2)}× |`,
    `| (b) async completed/s (first 201 to last webhook received) | ${fmt(m("completedPerSec"))} | ${(m("completedPerSec") / m("syncPerSec")).toFixed(2)}× |`,
    `| accept latency p50 / p99 (ms) | ${fmt(m("acceptP50"), 2)} / ${fmt(m("acceptP99"), 2)} | sync p50 ${fmt(m("syncP50"), 2)} ms |`,
    `| queue latency, idle queue: 201 → replica, p50 / p99 (ms) | ${fmt(m("idleP50"), 2)} / ${fmt(m("idleP99"), 2)} | |`,
    `| queue latency behind a ${N}-request backlog, p50 / p99 (ms) | ${fmt(m("backlogP50"))} / ${fmt(m("backlogP99"))} | |`,
  ].join("\n");
  process.stdout.write(`${out}\n`);
}

if (process.argv.includes("--upstream")) {
  const server = http.createServer({ keepAliveTimeout: 65_000 }, (req, res) => {
    const at = now();
    const id = String(req.headers["x-request-id"] ?? "");
    req.resume();
    req.on("end", () => {
      if (id.length === 32) process.stdout.write(`t ${id} ${at}\n`);
      const body = '{"ok":true}';
      res.writeHead(200, ["content-type", "application/json", "content-length", String(body.length)]);
      res.end(body);
    });
  });
  server.listen(0, "127.0.0.1", () =>
    process.stdout.write(`listening ${(server.address() as AddressInfo).port}\n`),
  );
  process.on("SIGTERM", () => process.exit(0));
} else {
  await main();
}
