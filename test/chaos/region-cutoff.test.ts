// A region cut off (issue 15): every plane of eu stopped at once. Its regional endpoint fails closed (a
// connection error at the client; 503 `model_unavailable` on the standard endpoint through the global
// ingress), the other regions keep answering 200 throughout, nothing of eu is placed or served outside eu,
// and the control plane — fail-static — does not judge the silent region down, so when eu's planes start
// again they serve their replicas where they were.

import { Agent, request } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Cluster, DOMAIN, eventually, startCluster } from "../support/cluster.ts";
import { PlacementWatch, planeReplicas, predict, Traffic } from "../support/planes.ts";

const TIMEOUT_S = 3;

describe("a region cut off", () => {
  let cluster: Cluster;
  let watch: PlacementWatch;
  let eu: { model: string; deployment: string };
  let uk: { model: string; deployment: string };
  let plain: string;
  const regional = (model: string, env: string) => `model-${model}-${env}.${DOMAIN}`;

  beforeAll(async () => {
    cluster = await startCluster({
      planes: [
        { name: "us-1", region: "us", global: true },
        { name: "eu-1", region: "eu" },
        { name: "eu-2", region: "eu" },
        { name: "uk-1", region: "uk" },
      ],
      controlArgs: ["--plane-timeout", String(TIMEOUT_S)],
    });
    watch = new PlacementWatch(cluster).start();
    const api = cluster.api;
    for (const [group, region] of [
      ["prod-eu", "eu"],
      ["prod-uk", "uk"],
    ]) {
      expect(
        (await api.patch(`/v1/environment_groups/${group}`, { region_restriction: { region } })).status,
      ).toBe(200);
    }
    const e = (await api.createModel("cut-eu", "hello-js", { environment_name: "prod-eu" })).body;
    const u = (await api.createModel("cut-uk", "hello-js", { environment_name: "prod-uk" })).body;
    const p = (await api.createModel("cut-plain", "hello-js", { environment_name: "production" })).body;
    eu = { model: e.model.id, deployment: e.deployment.id };
    uk = { model: u.model.id, deployment: u.deployment.id };
    plain = p.model.id;
    for (const [plane, host, path] of [
      ["eu-1", regional(eu.model, "prod-eu"), "/predict"],
      ["eu-2", regional(eu.model, "prod-eu"), "/predict"],
      ["us-1", `model-${eu.model}.${DOMAIN}`, "/environments/prod-eu/predict"],
      ["uk-1", regional(uk.model, "prod-uk"), "/predict"],
      ["us-1", `model-${plain}.${DOMAIN}`, "/production/predict"],
    ] as const) {
      await eventually(async () => (await predict(cluster, plane, host, path)).status === 200, 40_000);
    }
  }, 120_000);

  afterAll(async () => {
    watch?.stop();
    await cluster?.stop();
  }, 60_000);

  it("fails closed in eu, other regions unaffected, nothing out of region, and eu serves again in place", async () => {
    const replicasBefore = Object.fromEntries(
      await Promise.all(
        ["eu-1", "eu-2"].map(
          async (n) => [n, ((await planeReplicas(cluster.plane(n))) ?? []).map((r) => r.id).sort()] as const,
        ),
      ),
    );
    const others = [
      new Traffic(() => predict(cluster, "uk-1", regional(uk.model, "prod-uk"), "/predict"), 50),
      new Traffic(() => predict(cluster, "us-1", `model-${plain}.${DOMAIN}`, "/production/predict"), 50),
    ];
    const standardEu = new Traffic(
      () => predict(cluster, "us-1", `model-${eu.model}.${DOMAIN}`, "/environments/prod-eu/predict"),
      100,
    );
    await new Promise((r) => setTimeout(r, 1_000));
    const mark = cluster.control.output.length;
    const cutAt = Date.now();
    await Promise.all(["eu-1", "eu-2"].map((n) => cluster.plane(n).stop("SIGKILL")));

    // The regional endpoint: nothing listens at eu's ingresses any more — a connection error, at once.
    for (const n of ["eu-1", "eu-2"]) {
      const p = cluster.plane(n);
      const started = Date.now();
      // A connection of its own: one kept alive from before the kill would fail as closed (UND_ERR_SOCKET),
      // which says nothing of whether anything still listens.
      const fresh = new Agent();
      const err = await request(`http://${p.host}:${p.port}/predict`, {
        method: "POST",
        headers: { host: regional(eu.model, "prod-eu") },
        body: "{}",
        headersTimeout: 10_000,
        dispatcher: fresh,
      })
        .then(
          () => null,
          (e: NodeJS.ErrnoException) => e.code ?? String(e),
        )
        .finally(() => fresh.close());
      expect(err).toBe("ECONNREFUSED");
      expect(Date.now() - started).toBeLessThan(1_000);
    }
    // Several plane timeouts with the region silent.
    await new Promise((r) => setTimeout(r, TIMEOUT_S * 4 * 1000));
    await standardEu.stop();
    const during = standardEu.results.filter((r) => r.at > cutAt + 500);
    expect(during.length).toBeGreaterThan(10);
    for (const r of during) {
      // Through the global ingress the standard endpoint is refused, typed, by the us plane: never served.
      expect(r.status, JSON.stringify(r.body)).toBe(503);
      expect(r.body.error_code).toBe("model_unavailable");
      expect(r.headers["x-meridian-region"]).toBe("us");
    }

    // The control plane spared the silent region and judged no plane down.
    const logs = cluster.control.output
      .slice(mark)
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l) as Record<string, any>);
    expect(logs.filter((l) => l["msg"] === "plane health changed")).toEqual([]);
    const spared = logs.filter((l) => l["msg"] === "silent planes not judged down").at(-1);
    expect(
      spared?.["spared"].map((s: { plane: string; reason: string }) => `${s.plane}:${s.reason}`).sort(),
    ).toEqual(["eu-1:region_silent", "eu-2:region_silent"]);

    // eu comes back: its planes start their replicas again, in place, and serve.
    const backAt = Date.now();
    await Promise.all(["eu-1", "eu-2"].map((n) => cluster.plane(n).start()));
    await eventually(
      async () => (await predict(cluster, "eu-1", regional(eu.model, "prod-eu"), "/predict")).status === 200,
      30_000,
    );
    const recoveryMs = Date.now() - backAt;
    expect(recoveryMs).toBeLessThan(30_000);
    for (const n of ["eu-1", "eu-2"]) {
      const ids = ((await planeReplicas(cluster.plane(n))) ?? []).map((r) => r.id).sort();
      expect(ids, n).toEqual(replicasBefore[n]);
    }

    for (const t of others) await t.stop();
    for (const t of others) {
      expect(t.results.length).toBeGreaterThan(50);
      expect(t.failures()).toEqual([]);
    }
    await watch.sample();
    expect(watch.planesOf(eu.deployment).every((p) => p.startsWith("eu-"))).toBe(true);
    expect(watch.planesOf(uk.deployment)).toEqual(["uk-1"]);
  }, 90_000);
});
