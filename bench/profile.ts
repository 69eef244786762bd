// Reads a V8 .cpuprofile (node --cpu-prof) and says where the time went: self time by function, and by
// layer (node:http and the rest of Node's JS, undici, the ingress's own code, logging/metrics, GC, idle).

import { readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

export interface ProfileSummary {
  totalMs: number;
  busyMs: number;
  layers: Array<{ layer: string; ms: number; share: number }>;
  functions: Array<{ name: string; where: string; layer: string; ms: number; share: number }>;
}

/**
 * The main thread's profile in a --cpu-prof directory: Node writes one file per thread, and tsx runs its
 * module hooks on a worker thread, so the largest file is the one that served requests.
 */
export function largestProfile(dir: string): string {
  const files = readdirSync(dir)
    .filter((f) => f.endsWith(".cpuprofile"))
    .map((f) => join(dir, f));
  if (files.length === 0) throw new Error(`no .cpuprofile in ${dir}`);
  return files.sort((a, b) => statSync(b).size - statSync(a).size)[0]!;
}

export function layerOf(url: string, fn: string): string {
  if (fn === "(idle)") return "idle";
  if (fn === "(garbage collector)") return "garbage collection";
  if (fn === "(program)") return "native (V8/libuv, syscalls)";
  if (url.includes("/node_modules/undici/")) return "undici (upstream client)";
  if (url.includes("/node_modules/pino") || url.includes("/node_modules/prom-client/"))
    return "metrics & logging libs";
  if (url.includes("/node_modules/tsx/") || url.includes("/node_modules/esbuild/")) return "tsx loader";
  if (url.includes("/src/gateway/audit.ts")) return "Meridian audit";
  if (url.includes("/src/gateway/metrics.ts")) return "Meridian metrics";
  if (url.includes("/src/gateway/") || url.includes("/src/core/")) return "Meridian ingress code";
  if (/^node:(_http|http|https)/.test(url)) return "node:http";
  if (url.startsWith("node:internal/http") || url.includes("_http_")) return "node:http";
  if (url.startsWith("node:internal/streams") || url.startsWith("node:stream")) return "node streams";
  if (url.startsWith("node:net") || url.startsWith("node:internal/stream_base")) return "node:net";
  if (url.startsWith("node:")) return "other Node internals";
  if (url === "" && fn !== "") return "native (builtins)";
  return "other";
}

export function summarizeProfile(file: string, top = 25): ProfileSummary {
  const p = JSON.parse(readFileSync(file, "utf8")) as CpuProfile;
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const selfUs = new Map<number, number>();
  for (let i = 0; i < p.samples.length; i++) {
    const id = p.samples[i]!;
    selfUs.set(id, (selfUs.get(id) ?? 0) + (p.timeDeltas[i] ?? 0));
  }
  const fns = new Map<string, { name: string; where: string; layer: string; us: number }>();
  const layers = new Map<string, number>();
  let total = 0;
  let idle = 0;
  for (const [id, us] of selfUs) {
    const n = byId.get(id)!;
    const { functionName, url, lineNumber } = n.callFrame;
    const layer = layerOf(url, functionName);
    total += us;
    if (layer === "idle") idle += us;
    layers.set(layer, (layers.get(layer) ?? 0) + us);
    const short = url.replace(/^.*\/(node_modules\/[^/]+|src)\//, "$1/").replace(/^file:\/\//, "");
    const where = url === "" ? "" : `${short}:${lineNumber + 1}`;
    const k = `${functionName}@${where}`;
    const f = fns.get(k) ?? { name: functionName || "(anonymous)", where, layer, us: 0 };
    f.us += us;
    fns.set(k, f);
  }
  const busy = total - idle;
  return {
    totalMs: total / 1000,
    busyMs: busy / 1000,
    layers: [...layers]
      .filter(([l]) => l !== "idle")
      .map(([layer, us]) => ({ layer, ms: us / 1000, share: us / busy }))
      .sort((a, b) => b.ms - a.ms),
    functions: [...fns.values()]
      .filter((f) => f.layer !== "idle")
      .sort((a, b) => b.us - a.us)
      .slice(0, top)
      .map((f) => ({ name: f.name, where: f.where, layer: f.layer, ms: f.us / 1000, share: f.us / busy })),
  };
}

export function renderProfile(s: ProfileSummary): string {
  const pct = (x: number) => `${(x * 100).toFixed(1)}%`;
  return [
    `Busy (non-idle) time: ${s.busyMs.toFixed(0)} ms of ${s.totalMs.toFixed(0)} ms sampled.`,
    "",
    "| layer | self time | share of busy |",
    "|---|---:|---:|",
    ...s.layers.map((l) => `| ${l.layer} | ${l.ms.toFixed(0)} ms | ${pct(l.share)} |`),
    "",
    "| function | where | layer | self | share |",
    "|---|---|---|---:|---:|",
    ...s.functions.map(
      (f) =>
        `| \`${f.name}\` | ${f.where || "(native)"} | ${f.layer} | ${f.ms.toFixed(0)} ms | ${pct(f.share)} |`,
    ),
  ].join("\n");
}

// `tsx bench/profile.ts FILE`: print the summary of one profile.
if (process.argv[1]?.endsWith("profile.ts") && process.argv[2]) {
  process.stdout.write(`${renderProfile(summarizeProfile(process.argv[2], 40))}\n`);
}

/** Inclusive time (self plus callees) of every function defined in files whose path contains `urlPart`. */
export function inclusiveTimes(file: string, urlPart: string): Array<{ name: string; ms: number }> {
  const p = JSON.parse(readFileSync(file, "utf8")) as CpuProfile;
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const selfUs = new Map<number, number>();
  for (let i = 0; i < p.samples.length; i++) {
    selfUs.set(p.samples[i]!, (selfUs.get(p.samples[i]!) ?? 0) + (p.timeDeltas[i] ?? 0));
  }
  const totals = new Map<string, number>();
  // Depth-first with the set of matching frames on the path, so recursion is not counted twice.
  const walk = (id: number, onPath: Set<string>): number => {
    const n = byId.get(id)!;
    let us = selfUs.get(id) ?? 0;
    const k = n.callFrame.url.includes(urlPart)
      ? `${n.callFrame.functionName || "(anonymous)"}:${n.callFrame.lineNumber + 1}`
      : null;
    const fresh = k !== null && !onPath.has(k);
    if (fresh) onPath.add(k!);
    for (const c of n.children ?? []) us += walk(c, onPath);
    if (fresh) {
      onPath.delete(k!);
      totals.set(k!, (totals.get(k!) ?? 0) + us);
    }
    return us;
  };
  const root = p.nodes[0]!;
  walk(root.id, new Set());
  return [...totals].map(([name, us]) => ({ name, ms: us / 1000 })).sort((a, b) => b.ms - a.ms);
}
