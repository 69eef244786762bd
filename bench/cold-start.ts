// Cold start from zero (issue 12): a request sent to a sleeping regional environment (`prod-eu`, min_replica
// 0) → its answer, on a real installation (test/support/cluster.ts: `meridian control`, `meridian plane`s on
// 127.0.N.1, bubblewrap replicas), repeated over several models so each wake is a real one (the previous
// replica gone); and how the time splits, read from the processes' own JSON logs (one host clock):
//   placement   request sent → the control plane placed the replica (the plane's wake, the decision, the
//               scheduler's transaction);
//   propagation → the plane's agent starts it (long-poll wake-up, snapshot fetch and check, package cache);
//   start       → the model server inside the sandbox logs "loading model" (bwrap, node, the runtime);
//   load        → "model ready" (the model's load());
//   readiness   → the answer (the driver's readiness probe, the report, the held request released and
//               forwarded, predict).
// Baseline, same run: a warm request to the same replica right after. Bounded: --wakes (default 24) and
// 100 s of wakes at most.
// Runs on its own: `node --import tsx bench/cold-start.ts [--wakes N] [--example hello-js]`.

import { request } from "undici";
import { type Cluster, DOMAIN, eventually, type PlaneHandle, startCluster } from "../test/support/cluster.ts";
import { packExample } from "../test/support/control.ts";
import { fmt, loadAverage, median, percentile } from "./lib.ts";

interface Wake {
  model: string;
  totalMs: number;
  warmMs: number;
  split: { placement: number; propagation: number; start: number; load: number; readiness: number } | null;
}

const args = process.argv.slice(2);
const flag = (name: string, fallback: string) => {
  const i = args.indexOf(name);
  return i >= 0 && args[i + 1] !== undefined ? args[i + 1]! : fallback;
};
const WAKES = Number(flag("--wakes", "24"));
const EXAMPLE = flag("--example", "hello-js");
const MODELS = 6;
const BUDGET_MS = 100_000;

function logTime(
  lines: readonly string[],
  msg: string,
  match: (l: Record<string, unknown>) => boolean,
  after: number,
) {
  for (const line of lines) {
    if (!line.startsWith("{") || !line.includes(`"msg":"${msg}"`)) continue;
    try {
      const l = JSON.parse(line) as Record<string, unknown>;
      if (typeof l["time"] === "number" && l["time"] >= after && match(l)) return l["time"];
    } catch {}
  }
  return null;
}

async function predict(plane: PlaneHandle, host: string, key: string): Promise<number> {
  const res = await request(`http://${plane.host}:${plane.port}/predict`, {
    method: "POST",
    headers: { host, authorization: `Api-Key ${key}`, "content-type": "application/json" },
    body: JSON.stringify({ hello: "cold" }),
    headersTimeout: 60_000,
    bodyTimeout: 60_000,
  });
  await res.body.dump();
  return res.statusCode;
}

async function replicaLogTimes(plane: PlaneHandle, replica: string) {
  const res = await request(`http://${plane.host}:${plane.admin}/v1/replicas/${replica}/logs?limit=200`, {
    headers: { authorization: `Bearer ${plane.token}` },
  });
  const body = (await res.body.json()) as { lines?: Array<{ line: string }> };
  const lines = (body.lines ?? []).map((l) => l.line);
  return {
    loading: logTime(lines, "loading model", () => true, 0),
    ready: logTime(lines, "model ready", () => true, 0),
  };
}

async function main(): Promise<void> {
  const started = Date.now();
  const cluster: Cluster = await startCluster({
    planes: [
      { name: "us-1", region: "us", global: true },
      { name: "eu-1", region: "eu", capacity: 8 },
    ],
  });
  try {
    const api = cluster.api;
    const eu = cluster.plane("eu-1");
    await api.patch("/v1/environment_groups/prod-eu", { region_restriction: { region: "eu" } });
    const archive = await packExample(EXAMPLE);
    const models: Array<{ id: string; deployment: string }> = [];
    for (let i = 0; i < MODELS; i++) {
      const s3_key = await api.upload(archive, { name: `cold-${i}`, deployment: { config: {} } });
      const created = await api.post("/v1/models", {
        source: {
          kind: "model_archive",
          name: `cold-${i}`,
          s3_key,
          deployment: { config: { model_name: `cold-${i}` }, environment_name: "prod-eu" },
        },
      });
      if (created.status !== 200) throw new Error(JSON.stringify(created.body));
      models.push({ id: created.body.model.id, deployment: created.body.deployment.id });
    }
    for (const m of models) {
      await eventually(async () => {
        const e = await api.get(`/v1/models/${m.id}/environments/prod-eu`);
        return e.body.current_deployment?.status === "ACTIVE";
      }, 120_000);
      // Sleep as soon as idle: Baseten's ranges allow a delay of 0 (the window's minimum is 10 s).
      await api.patch(`/v1/models/${m.id}/environments/prod-eu`, {
        autoscaling_settings: { scale_down_delay: 0, autoscaling_window: 10 },
      });
    }
    const asleep = async (m: { id: string; deployment: string }) => {
      const d = await api.get(`/v1/models/${m.id}/deployments/${m.deployment}`);
      if (d.body.status !== "SCALED_TO_ZERO") return false;
      const res = await request(`http://${eu.host}:${eu.admin}/v1/replicas`, {
        headers: { authorization: `Bearer ${eu.token}` },
      });
      const list = ((await res.body.json()) as { replicas: Array<{ deployment_id: string }> }).replicas;
      return !list.some((r) => r.deployment_id === m.deployment);
    };
    const wakes: Wake[] = [];
    const t0 = Date.now();
    let i = 0;
    while (wakes.length < WAKES && Date.now() - t0 < BUDGET_MS) {
      const m = models[i++ % MODELS]!;
      await eventually(() => asleep(m), 60_000);
      const host = `model-${m.id}-prod-eu.${DOMAIN}`;
      const sent = Date.now();
      const status = await predict(eu, host, api.key!);
      const answered = Date.now();
      if (status !== 200) throw new Error(`cold request answered ${status}`);
      const warmStart = performance.now();
      for (let k = 0; k < 5; k++) await predict(eu, host, api.key!);
      const warmMs = (performance.now() - warmStart) / 5;
      const placed = logTime(
        cluster.control.output,
        "replicas placed",
        (l) => l["deployment"] === m.deployment,
        sent,
      );
      let replica: string | null = null;
      const startingAt = logTime(
        eu.process!.output,
        "starting replica",
        (l) => {
          if (l["deployment"] !== m.deployment) return false;
          replica = String(l["replica"]);
          return true;
        },
        sent,
      );
      let split: Wake["split"] = null;
      if (placed !== null && startingAt !== null && replica !== null) {
        const r = await replicaLogTimes(eu, replica);
        if (r.loading !== null && r.ready !== null) {
          split = {
            placement: placed - sent,
            propagation: startingAt - placed,
            start: r.loading - startingAt,
            load: r.ready - r.loading,
            readiness: answered - r.ready,
          };
        }
      }
      wakes.push({ model: m.id, totalMs: answered - sent, warmMs, split });
    }
    report(wakes, Date.now() - started);
  } finally {
    await cluster.stop();
  }
}

function report(wakes: Wake[], elapsedMs: number): void {
  const totals = wakes.map((w) => w.totalMs);
  const warm = wakes.map((w) => w.warmMs);
  const splits = wakes.map((w) => w.split).filter((s) => s !== null);
  const part = (k: keyof NonNullable<Wake["split"]>) => splits.map((s) => s[k]);
  const row = (name: string, xs: number[]) =>
    `| ${name} | ${fmt(median(xs))} | ${fmt(percentile(xs, 99))} | ${fmt(Math.min(...xs))} | ${fmt(Math.max(...xs))} |`;
  const lines = [
    `### Cold start from zero: ${EXAMPLE}, regional environment (${wakes.length} wakes, ${splits.length} split)`,
    "",
    `Machine load (uptime): ${loadAverage()}; run took ${fmt(elapsedMs / 1000)} s.`,
    "",
    "| ms | p50 | p99 | min | max |",
    "|---|---:|---:|---:|---:|",
    row("**request sent → answer, from zero**", totals),
    row("baseline: warm request, same replica", warm),
    row("placement (wake → replica placed)", part("placement")),
    row("snapshot propagation (→ agent starts it)", part("propagation")),
    row("sandbox + process start (→ 'loading model')", part("start")),
    row("load (→ 'model ready')", part("load")),
    row("readiness + release + predict (→ answer)", part("readiness")),
    "",
    `Cold / warm (p50): ${fmt(median(totals) / Math.max(0.001, median(warm)), 1)}×.`,
  ];
  process.stdout.write(`${lines.join("\n")}\n`);
}

await main();
process.exit(0);
