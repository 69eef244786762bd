// Micro-benchmark of what a signed plane-to-plane hop costs (issue 10 item 4): the forwarder's
// `signHop` (one Ed25519 signature), the receiver's `HopVerifier.verify` (parse, key lookup, one Ed25519
// verification, the replay memory), and the replay memory alone. Run: `npx tsx bench/hop-signature.ts`.

import { performance } from "node:perf_hooks";
import type { PlaneRef } from "../src/core/snapshot.ts";
import { type HopClaims, HopVerifier, signHop } from "../src/gateway/hop.ts";
import { generateSigningKey } from "../src/lib/keys.ts";
import { ReplayCache } from "../src/lib/replay-cache.ts";

const N = Number(process.env["BENCH_HOP_N"] ?? 20_000);
const RUNS = 5;
const from = generateSigningKey();
const ref = (name: string): PlaneRef => ({
  name,
  region: "eu",
  ingress: ["127.0.0.1:1"],
  global_ingress: false,
});
const trust = {
  planes: new Map([
    ["us-1", ref("us-1")],
    ["eu-1", ref("eu-1")],
  ]),
  planeKeys: new Map([
    ["us-1", [{ plane: "us-1", key_id: from.keyId, public_key: from.publicKey, retired_at: null }]],
  ]),
};
const request = {
  requestId: "0b7c9f3e-2a41-4d0e-9b8e-5f0c2d7a1e44",
  method: "POST",
  authority: "model-aaaaaaa1.meridian.internal:8443",
  target: "/environments/prod-eu/predict",
};

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

/** `fn` gets a running index: every call of a measurement sees a new one (hops are accepted once). */
function measure(name: string, fn: (i: number) => void): void {
  const samples: number[] = [];
  let k = 0;
  for (let i = 0; i < 2_000; i++) fn(k++); // warm-up
  for (let r = 0; r < RUNS; r++) {
    const t = performance.now();
    for (let i = 0; i < N; i++) fn(k++);
    samples.push(((performance.now() - t) * 1000) / N);
  }
  console.log(
    `${name.padEnd(44)} ${median(samples).toFixed(1).padStart(7)} µs/op (median of ${RUNS} × ${N})`,
  );
}

const now = Date.now();
const claims = (): HopClaims => ({ from: "us-1", to: "eu-1", ms: now, ...request });
measure("signHop (forwarder, per attempt)", () => {
  signHop(from, claims());
});
const headers = Array.from({ length: (RUNS + 1) * N + 2_000 }, () => signHop(from, claims()));
const verifier = new HopVerifier({ self: "eu-1", replayEntries: 1_000_000 });
measure("HopVerifier.verify (receiver, per hop)", (i) => {
  const check = verifier.verify(headers[i]!, request, trust, now);
  if (!check.ok) throw new Error(`refused: ${check.reason}`);
});
const cache = new ReplayCache({ maxEntries: 200_000, windowMs: 30_000 });
let t = now;
measure("ReplayCache.check (full at 200,000 entries)", (i) => {
  cache.check(`us-1 ${i}`, ++t, t);
});
const before = process.memoryUsage().heapUsed;
const big = new ReplayCache({ maxEntries: 200_000, windowMs: 30_000 });
for (let i = 0; i < 200_000; i++)
  big.check(`us-1 ${headers[i % headers.length]!.split(";")[5]}${i}`, now, now);
globalThis.gc?.();
console.log(
  `replay memory at its bound (200,000 hops)            ≈ ${((process.memoryUsage().heapUsed - before) / 1024 / 1024).toFixed(0)} MiB heap`,
);
