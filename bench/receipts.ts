// Benchmark of the evidence work on a plane's hot path (issue 14). Part 1, micro: the request body's
// Content-Digest (RFC 9530) by body size, the answer's digest with the receipt that covers it, a receipt (RFC 9421 signature base and one Ed25519 signature), the
// receipt's verification (offline, for reference), and the audit log's cost per record (record() on the hot
// path; sealing, hashing, signing and fsync per batch in the flush). Part 2, the ingress: one process with
// receipts on and one with `--receipts off` (bench/ingress-host.ts, composed as `meridian plane` composes
// it) in front of the minimal upstream, driven by wrk, interleaved, in the same run. Run:
//   node --expose-gc --import tsx bench/receipts.ts
// BENCH_RECEIPT_N (micro iterations, default 10000), BENCH_RECEIPT_RUNS (wrk rounds, default 4),
// BENCH_RECEIPT_DURATION (seconds per wrk cell, default 2); BENCH_RECEIPT_HTTP=0 skips part 2.

import { createHash, generateKeyPairSync, sign } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { keyDirectory } from "../src/core/key-directory.ts";
import { receiptBase } from "../src/core/receipt.ts";
import { AuditLog, type AuditRecord } from "../src/gateway/audit.ts";
import {
  appendReceipt,
  ContentDigester,
  contentDigest,
  signReceipt,
  verifyReceipt,
} from "../src/lib/receipts.ts";
import type { IngressHostConfig } from "./ingress-host.ts";
import {
  type Child,
  cpuMicros,
  fmt,
  freePort,
  loadAverage,
  median as medianOf,
  runWrk,
  startTs,
  tempDir,
  until200,
  writeBody,
} from "./lib.ts";
import { BENCH_DOMAIN, BENCH_KEY, modelId } from "./snapshot.ts";

const N = Number(process.env["BENCH_RECEIPT_N"] ?? 10_000);
const RUNS = 5;

const { privateKey, publicKey } = generateKeyPairSync("ed25519");
const raw = publicKey.export({ format: "jwk" }).x!;
const key = {
  keyId: createHash("sha256").update(Buffer.from(raw, "base64url")).digest("hex").slice(0, 16),
  privateKey,
};
const headers = [
  "content-type",
  "application/json",
  "x-request-id",
  "0b7c9f3e-2a41-4d0e-9b8e-5f0c2d7a1e44",
  "x-meridian-region",
  "eu",
  "x-meridian-plane",
  "eu-1",
  "x-meridian-deployment-id",
  "d7k2p9q",
  "x-meridian-route",
  "eu-1",
];
const request = {
  method: "POST",
  authority: "model-aaaaaaa1-prod-eu.meridian.internal:8443",
  path: "/predict",
  contentDigest: contentDigest('{"text":"bonjour"}'),
};

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

/** CPU time per operation (process.cpuUsage: less disturbed than wall time on a shared machine) and wall. */
function measure(name: string, n: number, fn: (i: number) => void): void {
  const cpu: number[] = [];
  const wall: number[] = [];
  for (let i = 0; i < Math.min(2_000, n); i++) fn(i); // warm-up
  for (let r = 0; r < RUNS; r++) {
    const c = process.cpuUsage();
    const t = performance.now();
    for (let i = 0; i < n; i++) fn(i);
    wall.push(((performance.now() - t) * 1000) / n);
    const used = process.cpuUsage(c);
    cpu.push((used.user + used.system) / n);
  }
  console.log(
    `${name.padEnd(48)} ${median(cpu).toFixed(2).padStart(8)} µs CPU/op, ${median(wall).toFixed(2).padStart(8)} µs wall/op (median of ${RUNS} × ${n})`,
  );
}

console.log(`node ${process.version}; N = ${N}`);

for (const size of [0, 100, 1024, 64 * 1024, 1024 * 1024]) {
  const body = Buffer.alloc(size, 0x61);
  const n = size >= 64 * 1024 ? Math.max(200, Math.floor(N / (size / 4096))) : N;
  measure(`Content-Digest, ${size} B body`, n, () => contentDigest(body));
}
{
  const body = Buffer.alloc(1024 * 1024, 0x61);
  const chunks = Array.from({ length: 64 }, (_, i) => body.subarray(i * 16384, (i + 1) * 16384));
  measure("Content-Digest, 1 MiB streamed in 16 KiB chunks", 200, () => {
    const d = new ContentDigester();
    for (const c of chunks) d.update(c);
    d.digest();
  });
}

const proof = ["0b7c9f3e-2a41-4d0e-9b8e-5f0c2d7a1e44", "eu", "eu-1", "d7k2p9q", "eu-1"];
measure("receipt signature base (hot path, no signature)", N, (i) => {
  if (!receiptBase(key.keyId, 1_750_000_000 + i, 200, proof, request).ok) throw new Error("unsignable");
});
const base = Buffer.from(
  receiptBase(key.keyId, 1_750_000_000, 200, proof, request).ok ? "x".repeat(638) : "",
);
measure("Ed25519 signature of a 638-byte base alone", N, () => sign(null, base, privateKey));
let now = Date.now();
measure("appendReceipt (the ingress's path)", N, () => {
  const out: string[] = [];
  if (appendReceipt(out, key, 200, proof, request, now++) !== null) throw new Error("unsignable");
});
// The answer's body covered (docs/evidence.md#receipts): its digest, then the receipt that covers it. A
// small answer arrives in one chunk (no copy); a larger one in several is joined once before the digest.
for (const size of [40, 1024, 64 * 1024]) {
  const answer = Buffer.alloc(size, 0x62);
  measure(`appendReceipt + the answer's digest, ${size} B answer`, N, () => {
    const out: string[] = [];
    if (appendReceipt(out, key, 200, proof, request, now++, "receipt", contentDigest(answer)) !== null)
      throw new Error("unsignable");
  });
}
{
  const answer = Buffer.alloc(1024 * 1024, 0x62);
  const pieces = Array.from({ length: 64 }, (_, i) => answer.subarray(i * 16384, (i + 1) * 16384));
  measure("appendReceipt + digest, 1 MiB answer held in 16 KiB chunks", 200, () => {
    const whole = Buffer.concat(pieces, answer.length);
    const out: string[] = [];
    if (appendReceipt(out, key, 200, proof, request, now++, "receipt", contentDigest(whole)) !== null)
      throw new Error("unsignable");
  });
}
measure("signReceipt (base, Ed25519, headers)", N, () => {
  const r = signReceipt(key, { status: 200, headers, request, now: now++ });
  if (!r.ok) throw new Error(r.reason);
});

const signed = signReceipt(key, { status: 200, headers, request, now: Date.now() });
if (!signed.ok) throw new Error(signed.reason);
const all = [...headers, ...signed.headers];
const fields: Array<[string, string]> = [];
for (let i = 0; i < all.length; i += 2) fields.push([all[i]!, all[i + 1]!]);
const directory = keyDirectory(
  [
    {
      key_id: key.keyId,
      plane: "eu-1",
      region: "eu",
      alg: "ed25519",
      public_key: raw,
      valid_from: "2025-01-01T00:00:00.000Z",
      retired_at: null,
    },
  ],
  new Date(),
);
measure("verifyReceipt (offline, for reference)", Math.floor(N / 4), () => {
  if (!verifyReceipt({ status: 200, fields }, directory).ok) throw new Error("did not verify");
});

// The audit log: record() is on the ingress's hot path; the flush (seal, CRC, sha-256, Ed25519, write,
// fdatasync) runs every 100 ms or 5 000 records.
const dir = mkdtempSync(join(tmpdir(), "meridian-bench-audit-"));
const log = new AuditLog({
  dir,
  plane: { name: "eu-1", region: "eu" },
  signingKey: key,
  flushIntervalMs: 3_600_000,
  maxBufferedRecords: Number.MAX_SAFE_INTEGER,
});
await log.start();
const rec: AuditRecord = {
  time: new Date().toISOString(),
  request_id: "0b7c9f3e-2a41-4d0e-9b8e-5f0c2d7a1e44",
  model_id: "aaaaaaa1",
  environment: "prod-eu",
  deployment_id: "d7k2p9q",
  hostname_form: "regional",
  route: ["eu-1"],
  status: 200,
  latency_ms: 3.881,
  plane: "eu-1",
  region: "eu",
  processed_by: "eu-1",
  forwarded_from: null,
  error_code: null,
  aborted: false,
};
measure("AuditLog.record (hot path, buffered)", N, () => log.record(rec));
await log.flush();
for (const batch of [100, 1_000, 5_000]) {
  const cpu: number[] = [];
  const wall: number[] = [];
  for (let r = 0; r < RUNS; r++) {
    for (let i = 0; i < batch; i++) log.record(rec);
    const c = process.cpuUsage();
    const t = performance.now();
    await log.flush();
    wall.push(((performance.now() - t) * 1000) / batch);
    const used = process.cpuUsage(c);
    cpu.push((used.user + used.system) / batch);
  }
  console.log(
    `${`AuditLog flush, per record, batches of ${batch}`.padEnd(48)} ${median(cpu).toFixed(2).padStart(8)} µs CPU/op, ${median(wall).toFixed(2).padStart(8)} µs wall/op (median of ${RUNS}; wall includes fdatasync)`,
  );
}
await log.stop();
rmSync(dir, { recursive: true, force: true });

// —— Part 2: the ingress's throughput and CPU per request, receipts on and off, in the same run ——

if (process.env["BENCH_RECEIPT_HTTP"] !== "0") await ingressThroughput();

async function ingressThroughput(): Promise<void> {
  const rounds = Number(process.env["BENCH_RECEIPT_RUNS"] ?? 4);
  const durationS = Number(process.env["BENCH_RECEIPT_DURATION"] ?? 2);
  const work = tempDir();
  const bodies = {
    small: writeBody(work, "small.json", null),
    "1 MiB": writeBody(work, "big.json", 1 << 20),
  };
  const started: Child[] = [];
  try {
    const upstream = startTs("upstream", "bench/upstream.ts");
    started.push(upstream);
    const upstreamPort = Number((await upstream.waitFor((l) => l.startsWith("listening"))).split(" ")[1]);
    const hosts = new Map<"on" | "off", { child: Child; url: string }>();
    for (const mode of ["on", "off"] as const) {
      const port = await freePort();
      const plane = { name: "eu-1", region: "eu", ingress: [`127.0.0.1:${port}`], global_ingress: false };
      const config: IngressHostConfig = {
        plane,
        planes: [plane],
        listen: { host: "127.0.0.1", port },
        auditDir: join(work, `audit-${mode}`),
        upstream: `127.0.0.1:${upstreamPort}`,
        models: 10,
        environments: ["prod-eu"],
        readyPlanes: ["eu-1"],
        receipts: mode === "on",
      };
      const child = startTs(`ingress receipts ${mode}`, "bench/ingress-host.ts", {
        BENCH_INGRESS: JSON.stringify(config),
      });
      started.push(child);
      await child.waitFor((l) => l.includes("bench ingress ready"));
      hosts.set(mode, { child, url: `http://127.0.0.1:${port}/predict` });
    }
    const host = `model-${modelId(0)}-prod-eu.${BENCH_DOMAIN}`;
    const auth = { Authorization: `Api-Key ${BENCH_KEY}` };
    for (const h of hosts.values()) await until200(h.url, { ...auth, host }, '{"x":1}');

    type Cell = { mode: "on" | "off"; connections: number; body: keyof typeof bodies };
    const cells: Cell[] = [];
    for (const body of ["small", "1 MiB"] as const)
      for (const connections of [1, 64])
        for (const mode of ["on", "off"] as const) cells.push({ mode, connections, body });
    const id = (c: Cell) => `${c.mode}|${c.connections}|${c.body}`;
    const samples = new Map<string, Array<{ rps: number; p50: number; p99: number; cpu: number }>>();
    const measure = async (c: Cell, seconds: number) => {
      const h = hosts.get(c.mode)!;
      const pid = h.child.proc.pid!;
      const before = cpuMicros(pid);
      const r = await runWrk({
        url: h.url,
        host,
        headers: auth,
        bodyFile: bodies[c.body],
        connections: c.connections,
        threads: 1,
        durationS: seconds,
      });
      if (r.errors > 0 || r.non2xx > 0)
        console.log(`  warning ${id(c)}: ${r.errors} errors, ${r.non2xx} non-2xx`);
      return { rps: r.rps, p50: r.p50us, p99: r.p99us, cpu: (cpuMicros(pid) - before) / r.requests };
    };
    const loadBefore = loadAverage();
    for (const c of cells) await measure(c, 1); // warm-up
    for (let round = 0; round < rounds; round++) {
      for (const c of cells) {
        const list = samples.get(id(c)) ?? [];
        list.push(await measure(c, durationS));
        samples.set(id(c), list);
      }
    }
    const loadAfter = loadAverage();
    const med = (c: Cell, f: (s: { rps: number; p50: number; p99: number; cpu: number }) => number) =>
      medianOf(samples.get(id(c))!.map(f));
    // Per-round ratios (each within one interleaved round), then their median.
    const perRound = (
      a: Cell,
      b: Cell,
      f: (s: { rps: number; cpu: number }) => number,
      op: (x: number, y: number) => number,
    ) => medianOf(samples.get(id(a))!.map((s, i) => op(f(s), f(samples.get(id(b))![i]!))));
    console.log("");
    console.log(
      `wrk -t1 -c{1|64} -d${durationS}s, POST /predict (regional endpoint) to the minimal upstream; ${rounds} rounds interleaved after a 1 s warm-up per cell, medians; load average ${loadBefore} at start, ${loadAfter} at end`,
    );
    console.log("");
    console.log(
      "| body | conc. | receipts | req/s | p50 µs | p99 µs | ingress CPU µs/req | req/s on/off | CPU µs/req on − off |",
    );
    console.log("|---|---:|---|---:|---:|---:|---:|---:|---:|");
    for (const body of ["small", "1 MiB"] as const) {
      for (const connections of [1, 64]) {
        for (const mode of ["on", "off"] as const) {
          const c = { mode, connections, body };
          const off = { ...c, mode: "off" as const };
          const vs =
            mode === "on"
              ? `${perRound(
                  c,
                  off,
                  (s) => s.rps,
                  (x, y) => x / y,
                ).toFixed(2)}×`
              : "1.00×";
          const extra =
            mode === "on"
              ? `${fmt(
                  perRound(
                    c,
                    off,
                    (s) => s.cpu,
                    (x, y) => x - y,
                  ),
                  1,
                )}`
              : "—";
          console.log(
            `| ${body} | ${connections} | ${mode} | ${fmt(med(c, (s) => s.rps))} | ${fmt(med(c, (s) => s.p50))} | ${fmt(med(c, (s) => s.p99))} | ${fmt(
              med(c, (s) => s.cpu),
              1,
            )} | ${vs} | ${extra} |`,
          );
        }
      }
    }
  } finally {
    for (const c of started.reverse()) await c.stop();
  }
}
