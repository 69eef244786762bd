// Autoscaling end to end with real processes (issue 12): a control plane whose autoscaler decides every
// 250 ms, region eu with two planes of one replica slot each (capacity 2), and planes of us (the global
// ingress) and uk. A burst on the regional endpoint scales replicas up only on eu's planes, stops at the
// region's capacity, and scales back down to zero after scale_down_delay; from zero, the first requests
// are held at the eu ingress and answered by a replica started in eu, and concurrent ones that fit one
// replica's concurrency_target start exactly one. No replica and no request ever in another region
// (the planes' own replica lists and audit trails, and the control plane's placements, say so).

import { readFileSync } from "node:fs";
import { join } from "node:path";
import { request } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Cluster, DOMAIN, eventually, type PlaneHandle, startCluster } from "../support/cluster.ts";
import { createModelFrom, packFiles, planeReplicas, predict } from "../support/planes.ts";

/** A model that takes `ms` to answer: in-flight requests pile up under a burst. */
const SLEEPY = {
  "config.yaml": "model_name: sleepy\nruntime:\n  predict_concurrency: 4\n",
  "model/model.js": `export class Model {
  constructor({ environment }) { this.environment = environment?.name ?? null; }
  async predict(input) {
    await new Promise((r) => setTimeout(r, Number(input?.ms ?? 0)));
    return { environment: this.environment, deployment: process.env.MERIDIAN_DEPLOYMENT_ID, echo: input };
  }
}
`,
};

const EU = ["eu-1", "eu-2"];
const OTHERS = ["us-1", "uk-1"];

async function audit(p: PlaneHandle, query: string): Promise<any[]> {
  const res = await request(`http://${p.host}:${p.admin}/v1/audit?${query}`, {
    headers: { authorization: `Bearer ${p.token}` },
  });
  const body = (await res.body.json()) as { items: any[] };
  if (res.statusCode !== 200) throw new Error(`audit on ${p.name}: ${res.statusCode}`);
  return body.items;
}

describe("autoscaling end to end", () => {
  let cluster: Cluster;
  let modelId: string;
  let deploymentId: string;
  let host: string;
  /** Every replica of the deployment any plane ever reported, by plane (sampled every 100 ms). */
  const seen = new Map<string, Set<string>>();
  let watching = true;
  let watcher: Promise<void>;

  beforeAll(async () => {
    cluster = await startCluster({
      planes: [
        { name: "us-1", region: "us", global: true },
        { name: "eu-1", region: "eu", capacity: 1 },
        { name: "eu-2", region: "eu", capacity: 1 },
        { name: "uk-1", region: "uk" },
      ],
      controlArgs: ["--autoscaler-interval-ms", "250"],
    });
    const api = cluster.api;
    expect(
      (await api.patch("/v1/environment_groups/prod-eu", { region_restriction: { region: "eu" } })).status,
    ).toBe(200);
    const created = await createModelFrom(cluster, "sleepy", await packFiles(SLEEPY), {
      environment_name: "prod-eu",
    });
    expect(created.status, JSON.stringify(created.body)).toBe(200);
    modelId = created.body.model.id;
    deploymentId = created.body.deployment.id;
    host = `model-${modelId}-prod-eu.${DOMAIN}`;
    await eventually(async () => {
      const e = await api.get(`/v1/models/${modelId}/environments/prod-eu`);
      return e.body.current_deployment?.status === "ACTIVE";
    }, 90_000);
    watcher = (async () => {
      while (watching) {
        for (const p of cluster.planes.values()) {
          const list = await planeReplicas(p).catch(() => null);
          for (const r of list ?? []) {
            if (r.deployment_id !== deploymentId) continue;
            const s = seen.get(p.name) ?? new Set<string>();
            s.add(r.id);
            seen.set(p.name, s);
          }
        }
        await new Promise((r) => setTimeout(r, 100));
      }
    })();
  }, 150_000);

  afterAll(async () => {
    watching = false;
    await watcher;
    await cluster?.stop();
  }, 60_000);

  const deployment = async () =>
    (await cluster.api.get(`/v1/models/${modelId}/deployments/${deploymentId}`)).body;
  const placed = async () => {
    const rows = (await cluster.api.get("/v1/admin/planes")).body.planes as Array<{
      name: string;
      replicas: Record<string, number>;
    }>;
    return Object.fromEntries(
      rows.map((p) => [p.name, Object.values(p.replicas).reduce((a, b) => a + b, 0)]),
    );
  };
  const settings = (autoscaling_settings: Record<string, unknown>, extra: Record<string, unknown> = {}) =>
    cluster.api.patch(`/v1/models/${modelId}/environments/prod-eu`, { autoscaling_settings, ...extra });

  it("scales a burst up only on the region's planes, stops at its capacity, and back down to zero after scale_down_delay", async () => {
    const patched = await settings({
      concurrency_target: 1,
      max_replica: 4,
      scale_down_delay: 3,
      autoscaling_window: 10,
    });
    expect(patched.status, JSON.stringify(patched.body)).toBe(200);
    // Eight callers in a loop, each request taking 400 ms, on both eu ingresses.
    let burst = true;
    const statuses: number[] = [];
    const callers = Array.from({ length: 8 }, (_, i) =>
      (async () => {
        while (burst) {
          const r = await predict(cluster, EU[i % 2]!, host, "/predict", { ms: 400 });
          statuses.push(r.status);
          if (r.status === 200) {
            expect(r.headers["x-meridian-region"]).toBe("eu");
            expect(EU).toContain(r.headers["x-meridian-plane"]);
          }
        }
      })(),
    );
    // The load asks for more than the region holds (8 in flight / 0.7 → 12, max_replica 4): two, one per
    // eu plane, and the deployment says it is capped.
    const capped = await eventually(async () => {
      const d = await deployment();
      const p = await placed();
      return p["eu-1"] === 1 && p["eu-2"] === 1 && d.status_message?.includes("Capped at 2 of 4") ? d : null;
    }, 30_000);
    expect(capped.status).toBe("ACTIVE");
    expect(capped.status_message).toContain("region 'eu'");
    // Held there while the burst goes on: never a third, never outside eu.
    await new Promise((r) => setTimeout(r, 3000));
    const during = await placed();
    expect(during["eu-1"]! + during["eu-2"]!).toBe(2);
    for (const o of OTHERS) expect(during[o]).toBe(0);
    burst = false;
    await Promise.all(callers);
    // Without a backpressure policy the excess waits at the replicas: every request answered.
    expect(statuses.length).toBeGreaterThan(16);
    expect(statuses.filter((s) => s !== 200)).toEqual([]);

    // Idle: after scale_down_delay the count steps down (one step per window), then to zero.
    const idleSince = Date.now();
    const asleep = await eventually(async () => {
      const d = await deployment();
      return d.status === "SCALED_TO_ZERO" ? d : null;
    }, 60_000);
    expect(Date.now() - idleSince).toBeGreaterThanOrEqual(3000);
    expect(asleep.active_replica_count).toBe(0);
    await eventually(async () => {
      const p = await placed();
      return Object.values(p).every((n) => n === 0);
    }, 30_000);
  }, 180_000);

  it("answers the first request to a sleeping regional environment 200 from a replica started in its region, starting exactly one for concurrent first requests that fit one", async () => {
    expect((await deployment()).status).toBe("SCALED_TO_ZERO");
    // Four concurrent first requests fit one replica at concurrency_target 4 (applied without a redeploy).
    expect((await settings({ concurrency_target: 4 })).status).toBe(200);
    const before = new Set([...seen.values()].flatMap((s) => [...s]));
    const statuses: string[] = [];
    const watch = (async () => {
      for (let i = 0; i < 100; i++) {
        const d = await deployment();
        if (!statuses.includes(d.status)) statuses.push(d.status);
        if (d.status === "ACTIVE") return;
        await new Promise((r) => setTimeout(r, 50));
      }
    })();
    const started = Date.now();
    const answers = await Promise.all(
      [0, 1, 2, 3].map((i) => predict(cluster, EU[i % 2]!, host, "/predict", { ms: 0, i })),
    );
    await watch;
    for (const a of answers) {
      expect(a.status, JSON.stringify(a.body)).toBe(200);
      expect(a.headers["x-meridian-region"]).toBe("eu");
      expect(a.body.echo.ms).toBe(0);
    }
    expect(Date.now() - started).toBeLessThan(15_000);
    expect(statuses).toContain("WAKING_UP");
    // Exactly one replica was started for them, in eu.
    await new Promise((r) => setTimeout(r, 1500));
    const woken = [...seen.entries()].flatMap(([plane, ids]) =>
      [...ids].filter((id) => !before.has(id)).map((id) => ({ plane, id })),
    );
    // On a failure, what the control plane decided and placed, and what the eu planes did with replicas.
    const story = () =>
      [cluster.control, ...EU.map((n) => cluster.plane(n).process)]
        .flatMap((p) => p?.output ?? [])
        .filter((l) => /scale decision|replicas placed|replica|plane (down|up)|moved/i.test(l))
        .slice(-40)
        .join("\n");
    expect(woken, story()).toHaveLength(1);
    expect(EU).toContain(woken[0]!.plane);
    const p = await placed();
    expect(p["eu-1"]! + p["eu-2"]!).toBe(1);

    // The control plane's own /metrics saw it: the decision that woke it, the wake through to a ready
    // replica, and the replica ready in eu. An org admin's key only.
    const url = `${cluster.controlUrl}/metrics`;
    expect((await request(url)).statusCode).toBe(401);
    const adminKey = readFileSync(join(cluster.dir, "control", "admin.key"), "utf8").trim();
    const res = await request(url, { headers: { authorization: `Bearer ${adminKey}` } });
    expect(res.statusCode).toBe(200);
    const metrics = await res.body.text();
    const wakes = /^meridian_control_wake_duration_seconds_count (\d+)$/m.exec(metrics);
    expect(Number(wakes?.[1] ?? 0)).toBeGreaterThanOrEqual(1);
    expect(metrics).toMatch(
      /^meridian_control_scale_decisions_total\{reason="(wake|from_zero)",direction="up"\} [1-9]/m,
    );
    expect(metrics).toContain(
      `meridian_control_ready_replicas{model_id="${modelId}",environment="prod-eu",region="eu"} 1`,
    );
    expect(metrics).not.toMatch(/meridian_control_ready_replicas\{[^}]*region="(us|uk|au)"/);
    // Beside them, the control process's own health, as prom-client names it.
    expect(metrics).toMatch(/^process_resident_memory_bytes [1-9]/m);
    expect(metrics).toMatch(/^nodejs_eventloop_lag_p99_seconds \d/m);
    // And the eu planes' /metrics: the cold start each held request waited, released to the replica.
    let released = 0;
    for (const name of EU) {
      const plane = cluster.plane(name);
      const text = await (await request(`http://${plane.host}:${plane.admin}/metrics`)).body.text();
      expect(text).toMatch(/^process_open_fds [1-9]/m);
      expect(text).toMatch(/^nodejs_eventloop_lag_p99_seconds \d/m);
      released += Number(
        /^meridian_ingress_held_seconds_count\{outcome="released"\} (\d+)$/m.exec(text)?.[1] ?? 0,
      );
    }
    expect(released).toBeGreaterThanOrEqual(4);
  }, 90_000);

  it("answers 429 with Retry-After under REJECT_ON_FULL once the region's replicas are full", async () => {
    const patched = await settings(
      { concurrency_target: 1, max_replica: 1, min_replica: 1 },
      { request_backpressure_settings: { policy: "REJECT_ON_FULL" } },
    );
    expect(patched.status, JSON.stringify(patched.body)).toBe(200);
    const ready = await eventually(async () => {
      const p = await placed();
      const d = await deployment();
      return d.status === "ACTIVE" && p["eu-1"]! + p["eu-2"]! === 1 ? p : null;
    }, 60_000);
    const plane = ready["eu-1"] === 1 ? "eu-1" : "eu-2";
    // Give the plane the new policy's snapshot.
    await new Promise((r) => setTimeout(r, 1000));
    const answers = await Promise.all(
      Array.from({ length: 6 }, () => predict(cluster, plane, host, "/predict", { ms: 1500 })),
    );
    const rejected = answers.filter((a) => a.status === 429);
    expect(answers.filter((a) => a.status === 200).length).toBeGreaterThanOrEqual(1);
    expect(rejected.length).toBeGreaterThanOrEqual(1);
    for (const r of rejected) {
      expect(r.body.error_code).toBe("backpressure_full");
      expect(r.headers["retry-after"]).toBe("1");
      expect(r.headers["x-meridian-region"]).toBe("eu");
    }
    await settings({ min_replica: 0 }, { request_backpressure_settings: {} });
  }, 90_000);

  it("wakes a sleeping environment on POST /wake (202), in its region only, also from the global ingress", async () => {
    const sleep = async () => {
      await eventually(async () => (await deployment()).status === "SCALED_TO_ZERO", 60_000);
      await eventually(async () => Object.values(await placed()).every((n) => n === 0), 30_000);
    };
    expect((await settings({ min_replica: 0, max_replica: 1, scale_down_delay: 0 })).status).toBe(200);
    await sleep();
    // Another region's ingress knows nothing of the regional environment (its snapshot holds only what its
    // region needs), and wakes nothing.
    const misdirected = await predict(cluster, "uk-1", host, "/wake", {});
    expect(misdirected.status).toBe(404);
    expect(misdirected.body.error_code).toBe("model_not_found");
    await new Promise((r) => setTimeout(r, 1500));
    expect((await deployment()).status).toBe("SCALED_TO_ZERO");

    const woke = await predict(cluster, "eu-2", host, "/wake", {});
    expect(woke.status, JSON.stringify(woke.body)).toBe(202);
    expect(woke.body).toEqual({ deployment_id: deploymentId, waking: true });
    await eventually(async () => (await deployment()).status === "ACTIVE", 30_000);
    const p = await placed();
    expect(p["eu-1"]! + p["eu-2"]!).toBe(1);
    // Awake: accepted, nothing to do.
    const again = await predict(cluster, "eu-1", host, "/wake", {});
    expect(again.status).toBe(202);
    expect(again.body.waking).toBe(false);

    // The standard endpoint at the global ingress (us) wakes it too; the replica still starts in eu.
    await sleep();
    const standard = await predict(
      cluster,
      "us-1",
      `model-${modelId}.${DOMAIN}`,
      "/environments/prod-eu/wake",
      {},
    );
    expect(standard.status, JSON.stringify(standard.body)).toBe(202);
    expect(standard.body.waking).toBe(true);
    await eventually(async () => (await deployment()).status === "ACTIVE", 30_000);
    const q = await placed();
    expect(q["eu-1"]! + q["eu-2"]!).toBe(1);
    for (const o of OTHERS) expect(q[o]).toBe(0);
  }, 150_000);

  it("refuses a wake from a plane outside the deployment's region", async () => {
    const uk = cluster.plane("uk-1");
    const res = await request(`${cluster.controlUrl}/v1/internal/planes/uk-1/wake`, {
      method: "POST",
      headers: { authorization: `Bearer ${uk.token}`, "content-type": "application/json" },
      body: JSON.stringify({
        deployment_id: deploymentId,
        load: { epoch: new Date().toISOString(), at: new Date().toISOString(), deployments: [] },
      }),
    });
    const body = (await res.body.json()) as { error_code: string };
    expect(res.statusCode).toBe(403);
    expect(body.error_code).toBe("forbidden");
    // Nor may one plane wake in another's name.
    const impersonating = await request(`${cluster.controlUrl}/v1/internal/planes/eu-1/wake`, {
      method: "POST",
      headers: { authorization: `Bearer ${uk.token}`, "content-type": "application/json" },
      body: JSON.stringify({
        deployment_id: deploymentId,
        load: { epoch: new Date().toISOString(), at: new Date().toISOString(), deployments: [] },
      }),
    });
    await impersonating.body.dump();
    expect(impersonating.statusCode).toBe(403);
  });

  it("never had a replica or a request of the regional environment outside its region", async () => {
    for (const o of OTHERS) expect(seen.get(o) ?? new Set()).toEqual(new Set());
    expect([...(seen.get("eu-1") ?? []), ...(seen.get("eu-2") ?? [])].length).toBeGreaterThanOrEqual(2);
    // Outside eu only what this test sent there on purpose: the standard-endpoint wake at the global
    // ingress (answered there, processed nowhere). uk's refusal named no model (it knows none of eu's).
    const us = await eventually(async () => {
      const r = await audit(cluster.plane("us-1"), `model_id=${modelId}`);
      return r.length >= 1 ? r : null;
    }, 20_000);
    for (const o of OTHERS) {
      const records = o === "us-1" ? us : await audit(cluster.plane(o), `model_id=${modelId}`);
      for (const r of records) {
        expect(r.processed_by, JSON.stringify(r)).toBeNull();
        expect(r.hostname_form).toBe("standard");
        expect(r.status).toBe(202);
      }
    }
    const inEu = await eventually(async () => {
      const records = (
        await Promise.all(EU.map((p) => audit(cluster.plane(p), `model_id=${modelId}&limit=10000`)))
      ).flat();
      return records.length > 16 ? records : null;
    }, 30_000);
    for (const r of inEu) expect(r.region).toBe("eu");
  });
});
