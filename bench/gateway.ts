// Section 1 of the benchmark: what the ingress adds to a request. The same upstream is called directly,
// through a Meridian ingress on the regional endpoint, and through nginx; plus the standard endpoint
// forwarded across two planes. Every cell is run several times, interleaved, and reported as the median.

import { join } from "node:path";
import type { PlaneRef } from "../src/core/snapshot.ts";
import type { IngressHostConfig } from "./ingress-host.ts";
import {
  BIN,
  type Child,
  cpuMicros,
  fmt,
  freePort,
  median,
  ratio,
  runWrk,
  startChild,
  startTs,
  tempDir,
  until200,
  type WrkResult,
  writeBody,
} from "./lib.ts";
import { type RunningNginx, startNginx } from "./nginx.ts";
import { largestProfile } from "./profile.ts";
import { BENCH_DOMAIN, BENCH_KEY, modelId } from "./snapshot.ts";

export interface GatewayOptions {
  runs: number;
  durationS: number;
  /** Write a CPU profile of the ingress under this directory (a separate run, after the measurements). */
  profileDir: string | null;
}

type Path = "direct" | "ingress" | "ingress-unsigned" | "ingress-http" | "nginx" | "forwarded";
type Upstream = "minimal" | "serve-model";

interface Cell {
  upstream: Upstream;
  path: Path;
  connections: number;
  body: "small" | "1 MB";
}

interface Sample extends WrkResult {
  /** CPU µs per request of the proxy process(es) on the path; NaN for direct calls. */
  cpuPerReq: number;
}

export interface GatewayFigures {
  cells: Array<{ cell: Cell; samples: Sample[] }>;
  markdown: string;
  targets: {
    throughputVsNginx: number;
    cpuPerReqUs: number;
    addedP50Us: number;
  };
  profile: string | null;
}

const key = (c: Cell) => `${c.upstream}|${c.path}|${c.connections}|${c.body}`;

export async function runGateway(o: GatewayOptions, log: (m: string) => void): Promise<GatewayFigures> {
  const dir = tempDir();
  const small = writeBody(dir, "small.json", null);
  const big = writeBody(dir, "big.json", 1024 * 1024);
  const started: Array<Child | RunningNginx> = [];
  try {
    // —— upstreams ——
    const minimal = startTs("upstream", "bench/upstream.ts");
    started.push(minimal);
    const minimalPort = Number((await minimal.waitFor((l) => l.startsWith("listening"))).split(" ")[1]);
    const minimalEp = `127.0.0.1:${minimalPort}`;
    const replicaPort = await freePort();
    const replica = startChild(
      "serve-model",
      process.execPath,
      [BIN, "serve-model", "examples/hello-js", "--listen", `127.0.0.1:${replicaPort}`],
      { MERIDIAN_ENVIRONMENT: "prod-eu" },
    );
    started.push(replica);
    const replicaEp = `127.0.0.1:${replicaPort}`;

    // —— two ingresses: eu-1 serves locally, us-1 (the global ingress) forwards to eu-1 ——
    const euPort = await freePort();
    const usPort = await freePort("127.0.0.2");
    const eu: PlaneRef = {
      name: "eu-1",
      region: "eu",
      ingress: [`127.0.0.1:${euPort}`],
      global_ingress: false,
    };
    const us: PlaneRef = {
      name: "us-1",
      region: "us",
      ingress: [`127.0.0.2:${usPort}`],
      global_ingress: true,
    };
    const minimalModel = modelId(0);
    const replicaModel = modelId(1);
    const hostConfig = (plane: PlaneRef, port: number, upstream: string | null): IngressHostConfig => ({
      plane,
      planes: [us, eu],
      listen: { host: plane.ingress[0]!.split(":")[0]!, port },
      auditDir: join(dir, `audit-${plane.name}`),
      upstream,
      routes: { [`${replicaModel}d0`]: replicaEp },
      models: 10,
      environments: ["prod-eu"],
      readyPlanes: ["eu-1"],
    });
    const euHost = startTs("ingress eu-1", "bench/ingress-host.ts", {
      BENCH_INGRESS: JSON.stringify(hostConfig(eu, euPort, minimalEp)),
    });
    started.push(euHost);
    const usHost = startTs("ingress us-1", "bench/ingress-host.ts", {
      BENCH_INGRESS: JSON.stringify(hostConfig(us, usPort, null)),
    });
    started.push(usHost);
    // The same eu-1 ingress on the node:http + undici fallback transport, for comparison.
    const euHttpPort = await freePort();
    const euHttpHost = startTs("ingress eu-1 (http transport)", "bench/ingress-host.ts", {
      BENCH_INGRESS: JSON.stringify({
        ...hostConfig(eu, euHttpPort, minimalEp),
        auditDir: join(dir, "audit-eu-1-http"),
        transport: "http",
      }),
    });
    started.push(euHttpHost);
    // And with receipts off (`meridian plane --receipts off`): what signing every response costs.
    const euUnsignedPort = await freePort();
    const euUnsignedHost = startTs("ingress eu-1 (receipts off)", "bench/ingress-host.ts", {
      BENCH_INGRESS: JSON.stringify({
        ...hostConfig(eu, euUnsignedPort, minimalEp),
        auditDir: join(dir, "audit-eu-1-unsigned"),
        receipts: false,
      }),
    });
    started.push(euUnsignedHost);
    await euUnsignedHost.waitFor((l) => l.includes("bench ingress ready"));
    await euHost.waitFor((l) => l.includes("bench ingress ready"));
    await usHost.waitFor((l) => l.includes("bench ingress ready"));
    await euHttpHost.waitFor((l) => l.includes("bench ingress ready"));

    const nginxPort = await freePort();
    const nginx = await startNginx(nginxPort, [
      { serverName: regional(minimalModel), upstream: minimalEp, upstreamPath: "/v1/models/model:predict" },
      { serverName: regional(replicaModel), upstream: replicaEp, upstreamPath: "/v1/models/model:predict" },
    ]);
    started.push(nginx);

    const auth = { authorization: `Api-Key ${BENCH_KEY}`, "content-type": "application/json" };
    const targets = (c: Cell) => {
      const model = c.upstream === "minimal" ? minimalModel : replicaModel;
      const upstreamEp = c.upstream === "minimal" ? minimalEp : replicaEp;
      switch (c.path) {
        case "direct":
          return { url: `http://${upstreamEp}/v1/models/model:predict`, host: undefined, pids: [] };
        case "ingress":
          return {
            url: `http://127.0.0.1:${euPort}/predict`,
            host: regional(model),
            pids: [euHost.proc.pid!],
          };
        case "ingress-unsigned":
          return {
            url: `http://127.0.0.1:${euUnsignedPort}/predict`,
            host: regional(model),
            pids: [euUnsignedHost.proc.pid!],
          };
        case "ingress-http":
          return {
            url: `http://127.0.0.1:${euHttpPort}/predict`,
            host: regional(model),
            pids: [euHttpHost.proc.pid!],
          };
        case "nginx":
          return {
            url: `http://127.0.0.1:${nginxPort}/predict`,
            host: regional(model),
            pids: [nginx.workerPid],
          };
        case "forwarded":
          return {
            url: `http://127.0.0.2:${usPort}/environments/prod-eu/predict`,
            host: `model-${model}.${BENCH_DOMAIN}`,
            pids: [usHost.proc.pid!, euHost.proc.pid!],
          };
      }
    };

    const cells: Cell[] = [];
    for (const body of ["small", "1 MB"] as const) {
      for (const connections of [1, 64]) {
        for (const path of ["direct", "ingress", "nginx"] as const) {
          cells.push({ upstream: "minimal", path, connections, body });
        }
        if (body === "small") {
          cells.push({ upstream: "minimal", path: "forwarded", connections, body });
          cells.push({ upstream: "minimal", path: "ingress-http", connections, body });
          cells.push({ upstream: "minimal", path: "ingress-unsigned", connections, body });
        }
      }
    }
    for (const connections of [1, 64]) {
      for (const path of ["direct", "ingress", "nginx"] as const) {
        cells.push({ upstream: "serve-model", path, connections, body: "small" });
      }
    }

    // Every path answers 200 before anything is measured.
    for (const c of cells) {
      const t = targets(c);
      await until200(t.url, { ...auth, ...(t.host ? { host: t.host } : {}) }, '{"x":1}', 30_000);
    }
    const measure = async (c: Cell, durationS: number): Promise<Sample> => {
      const t = targets(c);
      const before = t.pids.map(cpuMicros);
      const r = await runWrk({
        url: t.url,
        ...(t.host ? { host: t.host } : {}),
        headers: { Authorization: `Api-Key ${BENCH_KEY}` },
        bodyFile: c.body === "small" ? small : big,
        connections: c.connections,
        threads: 1,
        durationS,
      });
      const cpu = t.pids.reduce((s, pid, i) => s + cpuMicros(pid) - before[i]!, 0);
      if (r.errors > 0 || r.non2xx > 0) {
        log(`  warning: ${key(c)}: ${r.errors} socket errors, ${r.non2xx} non-2xx of ${r.requests}`);
      }
      return { ...r, cpuPerReq: t.pids.length === 0 ? Number.NaN : cpu / r.requests };
    };
    log("  warm-up");
    for (const c of cells) if (c.connections === 64) await measure(c, 1);

    const samples = new Map<string, Sample[]>(cells.map((c) => [key(c), []]));
    for (let run = 1; run <= o.runs; run++) {
      log(`  run ${run}/${o.runs}`);
      for (const c of cells) samples.get(key(c))!.push(await measure(c, o.durationS));
    }

    let profile: string | null = null;
    if (o.profileDir !== null) {
      log("  profiling the ingress (--cpu-prof)");
      profile = await profileIngress(
        o.profileDir,
        hostConfig(eu, await freePort(), minimalEp),
        small,
        o.durationS,
      );
    }

    const figures = cells.map((cell) => ({ cell, samples: samples.get(key(cell))! }));
    return { cells: figures, ...render(figures), profile };
  } finally {
    for (const s of started.reverse()) await ("child" in s ? s.stop() : s.stop());
  }
}

function regional(model: string): string {
  return `model-${model}-prod-eu.${BENCH_DOMAIN}`;
}

/** A separate ingress process run under --cpu-prof at concurrency 64; returns the .cpuprofile path. */
async function profileIngress(
  dir: string,
  config: IngressHostConfig,
  bodyFile: string,
  durationS: number,
): Promise<string> {
  const host = startTs(
    "ingress (profiled)",
    "bench/ingress-host.ts",
    { BENCH_INGRESS: JSON.stringify(config) },
    ["--cpu-prof", "--cpu-prof-dir", dir],
  );
  await host.waitFor((l) => l.includes("bench ingress ready"));
  const url = `http://${config.listen.host}:${config.listen.port}/predict`;
  const h = regional(modelId(0));
  await until200(url, { host: h, authorization: `Api-Key ${BENCH_KEY}` });
  await runWrk({
    url,
    host: h,
    headers: { Authorization: `Api-Key ${BENCH_KEY}` },
    bodyFile,
    connections: 64,
    threads: 1,
    durationS: Math.max(durationS, 3),
  });
  await host.stop();
  return largestProfile(dir);
}

function render(
  figures: Array<{ cell: Cell; samples: Sample[] }>,
): Pick<GatewayFigures, "markdown" | "targets"> {
  const get = (c: Cell) => figures.find((f) => key(f.cell) === key(c))?.samples ?? [];
  const med = (c: Cell, f: (s: Sample) => number) => median(get(c).map(f));
  const lines: string[] = [];
  const groups: Array<{ upstream: Upstream; body: "small" | "1 MB" }> = [
    { upstream: "minimal", body: "small" },
    { upstream: "minimal", body: "1 MB" },
    { upstream: "serve-model", body: "small" },
  ];
  for (const g of groups) {
    lines.push(
      "",
      `**Upstream: ${g.upstream === "minimal" ? "minimal node:http server (bench/upstream.ts)" : "`meridian serve-model examples/hello-js`"}, body: ${g.body === "small" ? "small JSON (45 bytes)" : "1 MiB JSON"}**`,
      "",
      "| conc. | path | req/s | p50 µs | p99 µs | CPU µs/req (proxy) | req/s vs direct | req/s vs nginx | p50 added vs direct |",
      "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    );
    for (const connections of [1, 64]) {
      const base = { upstream: g.upstream, connections, body: g.body } as const;
      const direct = { ...base, path: "direct" as const };
      const nginx = { ...base, path: "nginx" as const };
      const paths: Path[] = ["direct", "ingress", "nginx"];
      if (g.upstream === "minimal" && g.body === "small")
        paths.push("ingress-unsigned", "ingress-http", "forwarded");
      for (const path of paths) {
        const c = { ...base, path };
        const rps = med(c, (s) => s.rps);
        const p50 = med(c, (s) => s.p50us);
        const label =
          path === "direct"
            ? "(a) direct"
            : path === "ingress"
              ? "(b) Meridian ingress, regional"
              : path === "ingress-unsigned"
                ? "(b″) the same with `--receipts off`"
                : path === "ingress-http"
                  ? "(b′) the same, on the node:http + undici fallback transport"
                  : path === "nginx"
                    ? "(c) nginx"
                    : "Meridian standard endpoint, us-1 → eu-1 hop";
        lines.push(
          `| ${connections} | ${label} | ${fmt(rps)} | ${fmt(p50)} | ${fmt(med(c, (s) => s.p99us))} | ${fmt(
            med(c, (s) => s.cpuPerReq),
            1,
          )} | ${
            path === "direct"
              ? "1.00×"
              : ratio(
                  rps,
                  med(direct, (s) => s.rps),
                )
          } | ${
            path === "nginx"
              ? "1.00×"
              : ratio(
                  rps,
                  med(nginx, (s) => s.rps),
                )
          } | ${path === "direct" ? "—" : `${fmt(p50 - med(direct, (s) => s.p50us))} µs`} |`,
        );
      }
    }
  }
  const ingress64 = { upstream: "minimal", path: "ingress", connections: 64, body: "small" } as const;
  const nginx64 = { ...ingress64, path: "nginx" } as const;
  const ingress1 = { ...ingress64, connections: 1 } as const;
  const direct1 = { ...ingress1, path: "direct" } as const;
  // Per-run ratios, then their median: each ratio is within one interleaved round.
  const perRun = (a: Cell, b: Cell, f: (s: Sample) => number, op: (x: number, y: number) => number) =>
    median(get(a).map((s, i) => op(f(s), f(get(b)[i]!))));
  const runs = get(ingress64).length;
  const table = get(ingress64).map((s, i) => {
    const n = get(nginx64)[i]!;
    const d = get(direct1)[i]!;
    const one = get(ingress1)[i]!;
    return `| ${i + 1} | ${fmt(s.rps)} | ${fmt(n.rps)} | ${ratio(s.rps, n.rps)} | ${fmt(s.cpuPerReq, 1)} | ${fmt(n.cpuPerReq, 1)} | ${fmt(one.p50us - d.p50us)} |`;
  });
  lines.push(
    "",
    `Per-run figures behind the targets (minimal upstream, small body; ${runs} interleaved runs):`,
    "",
    "| run | ingress req/s c=64 | nginx req/s c=64 | ratio | ingress CPU µs/req | nginx worker CPU µs/req | p50 added at c=1 (µs) |",
    "|---:|---:|---:|---:|---:|---:|---:|",
    ...table,
  );
  return {
    markdown: lines.join("\n"),
    targets: {
      throughputVsNginx: perRun(
        ingress64,
        nginx64,
        (s) => s.rps,
        (x, y) => x / y,
      ),
      cpuPerReqUs: med(ingress64, (s) => s.cpuPerReq),
      addedP50Us: perRun(
        ingress1,
        direct1,
        (s) => s.p50us,
        (x, y) => x - y,
      ),
    },
  };
}
