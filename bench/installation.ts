// Sections 3 and 4 of the benchmark, on a whole installation of real processes (test/support/cluster.ts:
// `meridian control`, four `meridian plane`s on 127.0.N.1, `meridian dns`): how long a management API change
// takes to reach every plane and the DNS responder, and the lifecycle times a user waits for.

import dgram from "node:dgram";
import { mkdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import dnsPacket from "dns-packet";
import { Pool } from "undici";
import {
  type Cluster,
  DOMAIN,
  eventually,
  type ManagedProcess,
  startCluster,
  startProcess,
} from "../test/support/cluster.ts";
import { packExample } from "../test/support/control.ts";
import { fmt, median, percentile, sleep } from "./lib.ts";

export interface InstallationOptions {
  /** Changes of each kind measured for propagation. */
  changes: number;
  /** Repetitions of push and promotion. */
  lifecycleRuns: number;
  /** Environments moved by the forced redeploy. */
  migrate: number;
}

export interface InstallationFigures {
  propagation: string;
  lifecycle: string;
  /** p99 over every change, to every plane and the DNS responder where it acts. */
  propagationP99Ms: number;
}

const PLANES = [
  { name: "us-1", region: "us", global: true, capacity: 120 },
  { name: "eu-1", region: "eu", capacity: 120 },
  { name: "uk-1", region: "uk", capacity: 120 },
  { name: "au-1", region: "au", capacity: 120 },
];

interface Answer {
  status: number;
  code: string | null;
  deployment: string | null;
}

/** A keep-alive client per plane ingress, sending a Host as a client that resolved it would. */
class Ingresses {
  readonly pools = new Map<string, Pool>();
  constructor(cluster: Cluster) {
    for (const p of cluster.planes.values()) {
      this.pools.set(p.name, new Pool(`http://${p.host}:${p.port}`, { connections: 4 }));
    }
  }
  async call(plane: string, host: string, path: string, key: string): Promise<Answer> {
    const res = await this.pools.get(plane)!.request({
      method: "POST",
      path,
      headers: { host, authorization: `Api-Key ${key}`, "content-type": "application/json" },
      body: '{"x":1}',
      headersTimeout: 10_000,
      bodyTimeout: 10_000,
    });
    const text = await res.body.text();
    let code: string | null = null;
    try {
      code = (JSON.parse(text) as { error_code?: string }).error_code ?? null;
    } catch {}
    const d = res.headers["x-meridian-deployment-id"];
    return { status: res.statusCode, code, deployment: typeof d === "string" ? d : null };
  }
  async close() {
    await Promise.all([...this.pools.values()].map((p) => p.close()));
  }
}

/** One A query over UDP; resolves with the sorted addresses, or "NXDOMAIN". */
function resolveA(port: number, name: string): Promise<string> {
  const socket = dgram.createSocket("udp4");
  const id = Math.floor(Math.random() * 65535) + 1;
  const message = dnsPacket.encode({ type: "query", id, questions: [{ type: "A", name, class: "IN" }] });
  return new Promise<string>((ok, fail) => {
    const timer = setTimeout(() => fail(new Error("dns timeout")), 1000);
    socket.on("message", (msg) => {
      const p = dnsPacket.decode(msg) as dnsPacket.Packet & { rcode?: string };
      if (p.id !== id) return;
      clearTimeout(timer);
      if (p.rcode === "NXDOMAIN") ok("NXDOMAIN");
      else
        ok(
          (p.answers ?? [])
            .filter((a) => a.type === "A")
            .map((a) => (a as { data: string }).data)
            .sort()
            .join(","),
        );
    });
    socket.send(message, port, "127.0.0.1");
  }).finally(() => socket.close());
}

/** Polls `probe` until `done(value)`; resolves with the elapsed ms since `t0` at the first success. */
async function waitUntil<T>(
  t0: number,
  probe: () => Promise<T>,
  done: (v: T) => boolean,
  timeoutMs = 20_000,
) {
  for (;;) {
    const v = await probe().catch(() => null);
    if (v !== null && done(v)) return performance.now() - t0;
    if (performance.now() - t0 > timeoutMs)
      throw new Error(`not propagated within ${timeoutMs} ms: ${JSON.stringify(v)}`);
    await sleep(2);
  }
}

export async function runInstallation(
  o: InstallationOptions,
  log: (m: string) => void,
): Promise<InstallationFigures> {
  log("  starting control, four planes and DNS");
  const cluster = await startCluster({ planes: PLANES });
  let dns: ManagedProcess | null = null;
  const ingress = new Ingresses(cluster);
  try {
    const api = cluster.api;
    const dnsDir = join(cluster.dir, "dns");
    mkdirSync(dnsDir, { recursive: true });
    dns = startProcess([
      "dns",
      "--control-url",
      cluster.controlUrl,
      "--token-file",
      join(cluster.dir, "planes", "uk-1.token"),
      "--listen",
      "127.0.0.1:0",
      "--domain",
      DOMAIN,
      "--data-dir",
      dnsDir,
    ]);
    const dnsPort = (await dns.waitForLog("dns listening")).port as number;
    const ok = (r: { status: number; body: unknown }, what: string) => {
      if (r.status !== 200) throw new Error(`${what}: ${r.status} ${JSON.stringify(r.body)}`);
      // biome-ignore lint/suspicious/noExplicitAny: API bodies are read loosely here, as in test/support.
      return r.body as any;
    };

    // —— a model every plane's snapshot carries: one environment restricted to each region ——
    const archive = await packExample("hello-js");
    const upload = () => api.upload(archive);
    const created = ok(
      await api.post("/v1/models", {
        source: {
          kind: "model_archive",
          name: "prop",
          s3_key: await upload(),
          deployment: { config: {}, environment_name: "production" },
        },
      }),
      "create model",
    );
    const model = created.model.id as string;
    const d1 = created.deployment.id as string;
    for (const p of PLANES) {
      ok(await api.post(`/v1/models/${model}/environments`, { name: `r-${p.region}` }), "create env");
      ok(
        await api.patch(`/v1/environment_groups/r-${p.region}`, { region_restriction: { region: p.region } }),
        "restrict",
      );
    }
    ok(await api.post(`/v1/models/${model}/environments`, { name: "bench-prop" }), "create env");
    ok(
      await api.patch(`/v1/models/${model}/environments/production`, {
        promotion_settings: { promotion_cleanup_strategy: "KEEP", redeploy_on_promotion: false },
      }),
      "promotion settings",
    );
    const d2 = ok(
      await api.post(`/v1/models/${model}/deployments`, {
        source: { kind: "model_archive", s3_key: await upload(), deployment: { config: {} } },
      }),
      "second deployment",
    ).deployment.id as string;
    const active = async (id: string) => {
      let last: unknown = null;
      await eventually(async () => {
        last = (await api.get(`/v1/models/${model}/deployments/${id}`)).body;
        return (last as { status?: string }).status === "ACTIVE";
      }, 60_000).catch((err) => {
        throw new Error(`deployment ${id} not ACTIVE: ${JSON.stringify(last)}`, { cause: err });
      });
    };
    await active(d1);
    await active(d2);
    const standard = `model-${model}.${DOMAIN}`;
    const key = api.key!;
    // Every plane serves production (locally or over one hop) before measuring.
    for (const p of PLANES) {
      await eventually(
        async () => (await ingress.call(p.name, standard, "/production/predict", key)).status === 200,
        30_000,
      );
    }

    // —— propagation ——
    const results: Record<string, { planes: number[]; dns: number[]; all: number[] }> = {
      "promotion switch": { planes: [], dns: [], all: [] },
      "region restriction": { planes: [], dns: [], all: [] },
      "new API key": { planes: [], dns: [], all: [] },
    };
    log(`  propagation: ${o.changes} changes of each kind`);
    let serving = d1;
    const restrictions = ["eu", "uk", "au", "us"];
    for (let i = 0; i < o.changes; i++) {
      // Promotion switch: the deployment is ACTIVE and unbound, so the environment switches at once.
      {
        const next = serving === d1 ? d2 : d1;
        const t0 = performance.now();
        ok(
          await api.post(`/v1/models/${model}/environments/production/promote`, {
            deployment_id: next,
            scale_down_previous_deployment: false,
          }),
          "promote",
        );
        const planes = await Promise.all(
          PLANES.map((p) =>
            waitUntil(
              t0,
              () => ingress.call(p.name, standard, "/production/predict", key),
              (a) => a.status === 200 && a.deployment === next,
            ),
          ),
        );
        serving = next;
        results["promotion switch"]!.planes.push(...planes);
        results["promotion switch"]!.all.push(Math.max(...planes));
      }
      // Region restriction: alternately on (a region in turn) and off for group bench-prop.
      {
        const region = i % 2 === 0 ? restrictions[(i / 2) % restrictions.length]! : null;
        const host = `model-${model}-bench-prop.${DOMAIN}`;
        const t0 = performance.now();
        ok(
          await api.patch("/v1/environment_groups/bench-prop", {
            region_restriction: region === null ? null : { region },
          }),
          "restriction",
        );
        const expect = (plane: (typeof PLANES)[number]) => (a: Answer) =>
          region === null
            ? a.code === "environment_not_regional"
            : plane.region === region
              ? a.code === "deployment_not_found"
              : a.code === "misdirected_request";
        const wantDns =
          region === null ? "NXDOMAIN" : cluster.plane(PLANES.find((p) => p.region === region)!.name).host;
        const [planes, dnsMs] = await Promise.all([
          Promise.all(
            PLANES.map((p) => waitUntil(t0, () => ingress.call(p.name, host, "/predict", key), expect(p))),
          ),
          waitUntil(
            t0,
            () => resolveA(dnsPort, host),
            (a) => a === wantDns,
          ),
        ]);
        results["region restriction"]!.planes.push(...planes);
        results["region restriction"]!.dns.push(dnsMs);
        results["region restriction"]!.all.push(Math.max(...planes, dnsMs));
      }
      // New API key: every plane stops answering 401 for it.
      {
        const t0 = performance.now();
        const fresh = ok(
          await api.post("/v1/api_keys", { type: "WORKSPACE_INVOKE", name: `bench-${i}` }),
          "api key",
        ).api_key as string;
        const planes = await Promise.all(
          PLANES.map((p) =>
            waitUntil(
              t0,
              () => ingress.call(p.name, standard, "/production/predict", fresh),
              (a) => a.status !== 401,
            ),
          ),
        );
        results["new API key"]!.planes.push(...planes);
        results["new API key"]!.all.push(Math.max(...planes));
      }
    }
    const everything = Object.values(results).flatMap((r) => r.all);
    const row = (name: string, xs: number[]) =>
      xs.length === 0
        ? []
        : [
            `| ${name} | ${xs.length} | ${fmt(median(xs))} | ${fmt(percentile(xs, 99))} | ${fmt(Math.max(...xs))} |`,
          ];
    const propagation = [
      `${o.changes} changes of each kind, one after another; after each, every plane's ingress (and for region restrictions the DNS responder) is polled every ~2 ms until its answer shows the change. Times are from sending the API request, so they include the API call itself.`,
      "",
      "| change | observed on | samples | p50 ms | p99 ms | max ms |",
      "|---|---|---:|---:|---:|---:|",
      ...Object.entries(results).flatMap(([name, r]) => [
        ...row(`${name}`, r.planes).map((l) => l.replace(`| ${name} |`, `| ${name} | each plane |`)),
        ...row(`${name}`, r.dns).map((l) => l.replace(`| ${name} |`, `| ${name} | DNS responder |`)),
        ...row(`${name}`, r.all).map((l) =>
          l.replace(`| ${name} |`, `| ${name} | **all 4 planes${r.dns.length ? " + DNS" : ""}** |`),
        ),
      ]),
      `| **every change** | **all planes (+ DNS)** | ${everything.length} | ${fmt(median(everything))} | **${fmt(percentile(everything, 99))}** | ${fmt(Math.max(...everything))} |`,
    ].join("\n");

    // —— lifecycle ——
    log(
      `  lifecycle: push ×${o.lifecycleRuns}, promotion ×${o.lifecycleRuns}, migration of ${o.migrate} environments`,
    );
    const pushMs: number[] = [];
    const promoteMs: number[] = [];
    for (let i = 0; i < o.lifecycleRuns; i++) {
      // Push: upload the package and create the model into production, then call it until it answers.
      const t0 = performance.now();
      const m = ok(
        await api.post("/v1/models", {
          source: {
            kind: "model_archive",
            name: `push-${i}`,
            s3_key: await upload(),
            deployment: { config: {}, environment_name: "production" },
          },
        }),
        "push",
      );
      pushMs.push(
        await waitUntil(
          t0,
          () => ingress.call("us-1", `model-${m.model.id}.${DOMAIN}`, "/production/predict", key),
          (a) => a.status === 200,
          60_000,
        ),
      );
      // Promotion: production's deployment into staging is copied (bound elsewhere); traffic moves when ready.
      ok(await api.post(`/v1/models/${m.model.id}/environments`, { name: "staging" }), "staging");
      const t1 = performance.now();
      const candidate = ok(
        await api.post(`/v1/models/${m.model.id}/environments/staging/promote`, {
          deployment_id: m.deployment.id,
        }),
        "promote",
      ).id as string;
      promoteMs.push(
        await waitUntil(
          t1,
          () => ingress.call("us-1", `model-${m.model.id}.${DOMAIN}`, "/environments/staging/predict", key),
          (a) => a.status === 200 && a.deployment === candidate,
          60_000,
        ),
      );
    }

    // Migration: a group of N environments serving traffic is restricted to eu (forced redeploy).
    const ids: string[] = [];
    const olds: string[] = [];
    await Promise.all(
      Array.from({ length: o.migrate }, async (_, i) => {
        const m = ok(
          await api.post("/v1/models", {
            source: {
              kind: "model_archive",
              name: `mig-${i}`,
              s3_key: await upload(),
              deployment: { config: {}, environment_name: "mig" },
            },
          }),
          "migration model",
        );
        ids[i] = m.model.id;
        olds[i] = m.deployment.id;
      }),
    );
    await Promise.all(
      ids.map((id) =>
        eventually(
          async () =>
            (await ingress.call("us-1", `model-${id}.${DOMAIN}`, "/environments/mig/predict", key)).status ===
            200,
          120_000,
          250,
        ),
      ),
    );
    // Traffic on the standard endpoint of a few environments all along: a migration must not drop requests.
    let running = true;
    let sent = 0;
    let failed = 0;
    const failures = new Map<string, number>();
    const watched = ids.slice(0, 5);
    const traffic = Promise.all(
      watched.map(async (id) => {
        while (running) {
          const a = await ingress
            .call("us-1", `model-${id}.${DOMAIN}`, "/environments/mig/predict", key)
            .catch(() => null);
          sent++;
          if (a === null || a.status !== 200) {
            failed++;
            const what = a === null ? "connection error" : `${a.status} ${a.code ?? ""}`.trim();
            failures.set(what, (failures.get(what) ?? 0) + 1);
          }
          await sleep(20);
        }
      }),
    );
    const t2 = performance.now();
    ok(
      await api.patch("/v1/environment_groups/mig", { region_restriction: { region: "eu" } }),
      "restrict mig",
    );
    const moved = await Promise.all(
      ids.map((id, i) =>
        waitUntil(
          t2,
          () => ingress.call("eu-1", `model-${id}-mig.${DOMAIN}`, "/predict", key),
          (a) => a.status === 200 && a.deployment !== olds[i],
          240_000,
        ),
      ),
    );
    running = false;
    await traffic;
    const lifecycle = [
      "| step | runs | median | min | max |",
      "|---|---:|---:|---:|---:|",
      `| push (upload + create model into production) → first 200 from the global ingress | ${pushMs.length} | ${fmt(median(pushMs))} ms | ${fmt(Math.min(...pushMs))} ms | ${fmt(Math.max(...pushMs))} ms |`,
      `| promotion request (copy: the deployment is bound to production) → first 200 served by the candidate | ${promoteMs.length} | ${fmt(median(promoteMs))} ms | ${fmt(Math.min(...promoteMs))} ms | ${fmt(Math.max(...promoteMs))} ms |`,
      `| region restriction of a group of ${o.migrate} serving environments → each served by its new deployment in eu (regional endpoint) | ${moved.length} environments | ${fmt(median(moved))} ms | ${fmt(Math.min(...moved))} ms | **${fmt(Math.max(...moved))} ms** (all moved) |`,
      "",
      `During the migration, ${fmt(sent)} requests (one every ~20 ms per environment, entering at us-1) on the standard endpoints of ${watched.length} of the migrating environments: ${fmt(failed)} not answered 200${failed > 0 ? ` (${[...failures].map(([k, n]) => `${n}× ${k}`).join(", ")})` : ""}.`,
    ].join("\n");
    return { propagation, lifecycle, propagationP99Ms: percentile(everything, 99) };
  } finally {
    await ingress.close();
    await dns?.stop();
    await cluster.stop();
    rmSync(cluster.dir, { recursive: true, force: true });
  }
}
