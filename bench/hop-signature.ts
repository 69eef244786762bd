// Micro-benchmark of what a signed plane-to-plane hop costs (issue 10 item 4): the forwarder's
// `signHop` (one Ed25519 signature), the receiver's `HopVerifier.verify` (parse, key lookup, one Ed25519
// verification, the replay memory), and the replay memory alone. Run: `node --expose-gc --import tsx bench/hop-signature.ts`.

import { performance } from "node:perf_hooks";
import type { PlaneRef } from "../src/core/snapshot.ts";
import { HOP_REPLAY_ENTRIES, type HopClaims, HopVerifier, signHop } from "../src/gateway/hop.ts";
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

/**
 * `fn` gets a running index: every call of a measurement sees a new one (hops are accepted once). Reports
 * CPU time per operation (process.cpuUsage: less disturbed than wall time on a shared machine) and wall.
 */
function measure(name: string, fn: (i: number) => void): void {
  const cpu: number[] = [];
  const wall: number[] = [];
  let k = 0;
  for (let i = 0; i < 2_000; i++) fn(k++); // warm-up
  for (let r = 0; r < RUNS; r++) {
    const c = process.cpuUsage();
    const t = performance.now();
    for (let i = 0; i < N; i++) fn(k++);
    wall.push(((performance.now() - t) * 1000) / N);
    const used = process.cpuUsage(c);
    cpu.push((used.user + used.system) / N);
  }
  console.log(
    `${name.padEnd(44)} ${median(cpu).toFixed(1).padStart(7)} µs CPU/op, ${median(wall).toFixed(1).padStart(7)} µs wall/op (median of ${RUNS} × ${N})`,
  );
}

const now = Date.now();

// First, before anything else is allocated: what the replay memory holds at its bound.
{
  const gc = () => {
    for (let i = 0; i < 3; i++) globalThis.gc?.();
  };
  const memory = () => process.memoryUsage().heapUsed + process.memoryUsage().arrayBuffers;
  gc();
  const before = memory();
  const big = new ReplayCache({ maxEntries: HOP_REPLAY_ENTRIES, windowMs: 30_000 });
  // Keys as the verifier builds them: source plane, a space, the hop's 22-character nonce.
  for (let i = 0; i < HOP_REPLAY_ENTRIES; i++)
    big.check(`us-1 ${i.toString(36).padStart(22, "_")}`, now, now);
  gc();
  const bytes = memory() - before;
  console.log(
    `replay memory at its bound (${big.size} hops): ${(bytes / 1024 / 1024).toFixed(1)} MiB, ${Math.round(bytes / big.size)} bytes/hop${globalThis.gc ? "" : " (run with node --expose-gc for a steady figure)"}`,
  );
}

const claims = (): HopClaims => ({ from: "us-1", to: "eu-1", ms: now, ...request });
measure("signHop (forwarder, per attempt)", () => {
  signHop(from, claims());
});
const headers = Array.from({ length: (RUNS + 1) * N + 2_000 }, () => signHop(from, claims()));
// Every hop here carries the same time: a memory larger than the run keeps the bound out of this figure
// (ReplayCache.check at its bound is measured on its own below).
const verifier = new HopVerifier({ self: "eu-1", replayEntries: headers.length });
measure("HopVerifier.verify (receiver, per hop)", (i) => {
  const check = verifier.verify(headers[i]!, request, trust, now);
  if (!check.ok) throw new Error(`refused: ${check.reason}`);
});
const cache = new ReplayCache({ maxEntries: HOP_REPLAY_ENTRIES, windowMs: 30_000 });
let t = now;
measure("ReplayCache.check (at its bound)", (i) => {
  cache.check(`us-1 ${i}`, ++t, t);
});
