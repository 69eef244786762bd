// Micro-benchmark of the evidence work on a plane's hot path (issue 14): the request body's Content-Digest
// (RFC 9530) by body size, a receipt (RFC 9421 signature base and one Ed25519 signature), the receipt's
// verification (offline, for reference), and the audit log's cost per record (record() on the hot path;
// sealing, hashing, signing and fsync per batch in the flush). Run:
//   node --expose-gc --import tsx bench/receipts.ts

import { createHash, generateKeyPairSync, sign } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { keyDirectory } from "../src/core/key-directory.ts";
import { receiptBase } from "../src/core/receipt.ts";
import { AuditLog, type AuditRecord } from "../src/gateway/audit.ts";
import { ContentDigester, contentDigest, signReceipt, verifyReceipt } from "../src/lib/receipts.ts";

const N = Number(process.env["BENCH_RECEIPT_N"] ?? 20_000);
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
