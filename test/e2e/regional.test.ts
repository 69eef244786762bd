// End to end with real processes: a control plane and four planes (us, eu, uk, au) on their own loopback
// addresses. A regional environment only ever has replicas in its region and is served only there.

import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Cluster, DOMAIN, eventually, FOUR_REGIONS, startCluster } from "../support/cluster.ts";
import { predict } from "../support/planes.ts";

async function replicasByPlane(cluster: Cluster) {
  const res = await cluster.api.get("/v1/admin/planes");
  return Object.fromEntries(
    res.body.planes.map((p: { name: string; replicas: Record<string, number> }) => [p.name, p.replicas]),
  ) as Record<string, Record<string, number>>;
}

describe("regional environments end to end", () => {
  let cluster: Cluster;

  beforeAll(async () => {
    cluster = await startCluster({ planes: FOUR_REGIONS });
  }, 60_000);
  afterAll(async () => cluster?.stop(), 60_000);

  it("places a regional environment's replicas only in its region and serves it there", async () => {
    const api = cluster.api;
    expect(
      (await api.patch("/v1/environment_groups/prod-eu", { region_restriction: { region: "eu" } })).status,
    ).toBe(200);
    const created = await api.createModel("residency", "hello-js", { environment_name: "prod-eu" });
    expect(created.status, JSON.stringify(created.body)).toBe(200);
    const model = created.body.model;

    const env = await eventually(async () => {
      const e = await api.get(`/v1/models/${model.id}/environments/prod-eu`);
      return e.body.current_deployment?.status === "ACTIVE" ? e.body : null;
    }, 60_000);
    expect(env.current_deployment.region.slug).toBe("eu");
    const placed = await replicasByPlane(cluster);
    expect(placed["eu-1"]).toEqual({ READY: 1 });
    for (const other of ["us-1", "uk-1", "au-1"]) expect(placed[other]).toEqual({});

    const regionalHost = `model-${model.id}-prod-eu.${DOMAIN}`;
    const served = await eventually(async () => {
      const r = await predict(cluster, "eu-1", regionalHost, "/predict", { hello: "eu" });
      return r.status === 200 ? r : null;
    });
    expect(served.body.echo).toEqual({ hello: "eu" });
    expect(served.body.environment).toBe("prod-eu");
    expect(served.headers["x-meridian-region"]).toBe("eu");
    expect(served.headers["x-meridian-plane"]).toBe("eu-1");
  }, 90_000);
});
