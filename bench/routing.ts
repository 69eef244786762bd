// Section 2 of the benchmark: routing at scale. A real control plane (in this process, SQLite) seeded with
// 100,000 models × 3 environments builds the plane snapshot (buildPlaneSnapshot); the plane side parses and
// indexes it (indexSnapshot); then an ingress serving that snapshot is driven like one serving 10 routes.

import { createHash } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import pino from "pino";
import { request } from "undici";
import { buildPlaneSnapshot } from "../src/control/internal.ts";
import { startControl } from "../src/control/main.ts";
import { parseHost } from "../src/core/host.ts";
import { decideRoute, indexSnapshot } from "../src/core/routing.ts";
import type { PlaneRef, PlaneSnapshot } from "../src/core/snapshot.ts";
import type { IngressHostConfig } from "./ingress-host.ts";
import {
  type Child,
  cpuMicros,
  fmt,
  freePort,
  median,
  ratio,
  rssMiB,
  runWrk,
  sleep,
  startTs,
  tempDir,
  until200,
  writeBody,
} from "./lib.ts";
import { seedModels } from "./seed.ts";
import { BENCH_DOMAIN, modelId } from "./snapshot.ts";

export interface RoutingOptions {
  models: number;
  runs: number;
  durationS: number;
}

export interface RoutingFigures {
  markdown: string;
}

const ENVIRONMENTS = ["production", "staging", "prod-eu"];

function time<T>(fn: () => T): { value: T; ms: number } {
  const t = performance.now();
  const value = fn();
  return { value, ms: performance.now() - t };
}

export async function runRouting(o: RoutingOptions, log: (m: string) => void): Promise<RoutingFigures> {
  const dir = tempDir();
  const control = await startControl({
    dataDir: join(dir, "control"),
    host: "127.0.0.1",
    port: 0,
    databaseUrl: null,
    domain: BENCH_DOMAIN,
    publicUrl: null,
    logger: pino({ level: "silent" }),
    // The planes registered here never run. With the default 15 s they would be judged down mid-section
    // and all 300,000 routes placed again in this process, which starves the measurement.
    planeTimeoutMs: 24 * 3_600_000,
  });
  const started: Child[] = [];
  try {
    const admin = control.adminKey!;
    const api = async (method: "POST" | "PATCH", path: string, body: unknown) => {
      const res = await request(`${control.url}${path}`, {
        method,
        headers: { authorization: `Api-Key ${admin}`, "content-type": "application/json" },
        body: JSON.stringify(body),
      });
      const text = await res.body.text();
      if (res.statusCode !== 200) throw new Error(`${method} ${path}: ${res.statusCode} ${text}`);
    };
    const euPort = await freePort();
    await api("POST", "/v1/admin/planes", {
      name: "us-1",
      region: "us",
      ingress: ["127.0.0.2:80"],
      capacity: 8,
      global_ingress: true,
    });
    await api("POST", "/v1/admin/planes", {
      name: "eu-1",
      region: "eu",
      ingress: [`127.0.0.1:${euPort}`],
      capacity: 8,
      global_ingress: false,
    });
    await api("PATCH", "/v1/environment_groups/prod-eu", { region_restriction: { region: "eu" } });

    log(`  seeding ${fmt(o.models)} models × ${ENVIRONMENTS.length} environments through the store`);
    const seed = performance.now();
    await seedModels(control.ctx.store.db, { count: o.models, environments: ENVIRONMENTS });
    const seedMs = performance.now() - seed;

    const db = control.ctx.store.db;
    const planes = await db.selectFrom("planes").selectAll().orderBy("name").execute();
    const eu = planes.find((p) => p.name === "eu-1")!;
    const us = planes.find((p) => p.name === "us-1")!;
    const build: Record<string, number[]> = { "eu-1": [], "us-1": [] };
    const parse: number[] = [];
    const index: number[] = [];
    let snapshot: PlaneSnapshot | null = null;
    let json = "";
    for (let i = 0; i < o.runs; i++) {
      for (const plane of [eu, us]) {
        const t = performance.now();
        const s = await buildPlaneSnapshot(control.ctx, db, plane);
        build[plane.name]!.push(performance.now() - t);
        if (plane === eu) snapshot = s;
      }
      const ser = time(() => JSON.stringify(snapshot));
      json = ser.value;
      const p = time(() => JSON.parse(json) as PlaneSnapshot);
      parse.push(p.ms);
      index.push(time(() => indexSnapshot(p.value)).ms);
    }
    const snapFile = join(dir, "snapshot-eu-1.json");
    writeFileSync(snapFile, json);
    const routes = snapshot!.models.reduce((n, m) => n + m.environments.length, 0);

    // Route lookups in-process: the pure decision on the big index and on a 10-route one.
    const bigIndex = indexSnapshot(snapshot!);
    const keyHash = createHash("sha256").update(admin).digest("hex");
    const lookup = (idx: ReturnType<typeof indexSnapshot>, count: number) => {
      const n = 200_000;
      const t = performance.now();
      for (let i = 0; i < n; i++) {
        const parsed = parseHost(`model-${modelId(i % count)}-prod-eu.${BENCH_DOMAIN}`, idx.domain);
        if (!parsed.ok) throw new Error("bad host");
        decideRoute(idx, {
          host: parsed.host,
          method: "POST",
          path: "/predict",
          keyHash,
          forwardedFrom: null,
          localReady: { has: () => true },
          scheme: "http",
        });
      }
      return ((performance.now() - t) * 1000) / n;
    };
    const smallSnap: PlaneSnapshot = { ...snapshot!, models: snapshot!.models.slice(0, 10) };
    const smallIndex = indexSnapshot(smallSnap);
    lookup(bigIndex, o.models);
    const lookupBig = lookup(bigIndex, o.models);
    const lookupSmall = lookup(smallIndex, 10);

    // Two ingresses, one per snapshot, driven in turn.
    log("  ingress throughput and memory: 10 routes vs the big snapshot");
    const upstream = startTs("upstream", "bench/upstream.ts");
    started.push(upstream);
    const upPort = Number((await upstream.waitFor((l) => l.startsWith("listening"))).split(" ")[1]);
    const smallFile = join(dir, "snapshot-small.json");
    writeFileSync(smallFile, JSON.stringify(smallSnap));
    const planeRef: PlaneRef = snapshot!.plane;
    const hosts: Record<string, { child: Child; port: number }> = {};
    for (const [name, file] of [
      ["10 routes", smallFile],
      [`${fmt(routes)} routes`, snapFile],
    ] as const) {
      const port = await freePort();
      const config: IngressHostConfig = {
        plane: planeRef,
        planes: snapshot!.planes,
        listen: { host: "127.0.0.1", port },
        auditDir: join(dir, `audit-${port}`),
        upstream: `127.0.0.1:${upPort}`,
        snapshotFile: file,
      };
      const child = startTs(`ingress ${name}`, "bench/ingress-host.ts", {
        BENCH_INGRESS: JSON.stringify(config),
      });
      started.push(child);
      await child.waitFor((l) => l.includes("bench ingress ready"), 60_000);
      hosts[name] = { child, port };
    }
    const body = writeBody(dir, "small.json", null);
    const host = `model-${modelId(0)}-prod-eu.${BENCH_DOMAIN}`;
    const auth = `Api-Key ${admin}`;
    for (const h of Object.values(hosts)) {
      await until200(`http://127.0.0.1:${h.port}/predict`, { host, authorization: auth }, "{}", 60_000);
    }
    const rssIdle: Record<string, number> = {};
    await sleep(500);
    for (const [name, h] of Object.entries(hosts)) rssIdle[name] = rssMiB(h.child.proc.pid!);
    const samples: Record<string, Array<{ rps: number; p50: number; p99: number; cpu: number }>> = {};
    const drive = async (name: string, durationS: number) => {
      const h = hosts[name]!;
      const before = cpuMicros(h.child.proc.pid!);
      const r = await runWrk({
        url: `http://127.0.0.1:${h.port}/predict`,
        host,
        headers: { Authorization: auth },
        bodyFile: body,
        connections: 64,
        threads: 1,
        durationS,
      });
      if (r.non2xx > 0 || r.errors > 0) log(`  warning: ${name}: ${r.non2xx} non-2xx, ${r.errors} errors`);
      return {
        rps: r.rps,
        p50: r.p50us,
        p99: r.p99us,
        cpu: (cpuMicros(h.child.proc.pid!) - before) / r.requests,
      };
    };
    for (const name of Object.keys(hosts)) await drive(name, 1);
    for (let i = 0; i < o.runs; i++) {
      for (const name of Object.keys(hosts)) {
        samples[name] = samples[name] ?? [];
        samples[name].push(await drive(name, o.durationS));
      }
    }
    const rssLoaded: Record<string, number> = {};
    for (const [name, h] of Object.entries(hosts)) rssLoaded[name] = rssMiB(h.child.proc.pid!);

    const names = Object.keys(hosts);
    const baseRps = median(samples[names[0]!]!.map((s) => s.rps));
    const lines = [
      `Seeded in ${fmt(seedMs / 1000, 1)} s: ${fmt(o.models)} models × ${ENVIRONMENTS.join(", ")} (prod-eu restricted to eu), one deployment per environment; the eu-1 snapshot holds ${fmt(routes)} routes and ${fmt(snapshot!.models.reduce((n, m) => n + m.deployments.length, 0))} deployments, ${fmt(json.length / 1024 / 1024, 1)} MiB of JSON.`,
      "",
      `| step (median of ${o.runs}) | time |`,
      "|---|---:|",
      `| control: \`buildPlaneSnapshot\` for eu-1 (regional plane) | ${fmt(median(build["eu-1"]!))} ms |`,
      `| control: \`buildPlaneSnapshot\` for us-1 (global ingress) | ${fmt(median(build["us-1"]!))} ms |`,
      `| plane: \`JSON.parse\` of the snapshot body | ${fmt(median(parse))} ms |`,
      `| plane: \`indexSnapshot\` (apply) | ${fmt(median(index))} ms |`,
      `| one route decision (\`parseHost\` + \`decideRoute\`), ${fmt(o.models)}-model index | ${fmt(lookupBig, 2)} µs |`,
      `| one route decision (\`parseHost\` + \`decideRoute\`), 10-model index | ${fmt(lookupSmall, 2)} µs |`,
      "",
      "Ingress (minimal upstream, small body, c=64):",
      "",
      "| snapshot | req/s | vs 10 routes | p50 µs | p99 µs | CPU µs/req | RSS idle | RSS after load |",
      "|---|---:|---:|---:|---:|---:|---:|---:|",
      ...names.map((name) => {
        const s = samples[name]!;
        const rps = median(s.map((x) => x.rps));
        return `| ${name} | ${fmt(rps)} | ${ratio(rps, baseRps)} | ${fmt(median(s.map((x) => x.p50)))} | ${fmt(median(s.map((x) => x.p99)))} | ${fmt(median(s.map((x) => x.cpu)), 1)} | ${fmt(rssIdle[name]!)} MiB | ${fmt(rssLoaded[name]!)} MiB |`;
      }),
    ];
    return { markdown: lines.join("\n") };
  } finally {
    for (const c of started.reverse()) await c.stop();
    await control.stop();
  }
}
