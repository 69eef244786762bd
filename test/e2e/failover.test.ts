// A plane that goes silent is down: its replicas are placed again on the other planes of their region —
// never in another region — and the regional endpoint serves again from the survivor.

import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Cluster, DOMAIN, eventually, startCluster } from "../support/cluster.ts";
import { deploymentsRestrictedTo, PlacementWatch, planeReplicas, predict } from "../support/planes.ts";

describe("in-region failover when a plane goes down", () => {
  let cluster: Cluster;
  let watch: PlacementWatch;

  beforeAll(async () => {
    cluster = await startCluster({
      planes: [
        { name: "us-1", region: "us", global: true },
        { name: "eu-1", region: "eu" },
        { name: "eu-2", region: "eu" },
      ],
      controlArgs: ["--plane-timeout", "3"],
    });
    watch = new PlacementWatch(cluster).start();
  }, 60_000);
  afterAll(async () => {
    watch?.stop();
    await cluster?.stop();
  }, 60_000);

  it("moves a regional environment's replica to the other eu plane, and never to us", async () => {
    const api = cluster.api;
    await api.patch("/v1/environment_groups/prod-eu", { region_restriction: { region: "eu" } });
    const { model, deployment } = (
      await api.createModel("failover", "hello-js", { environment_name: "prod-eu" })
    ).body;
    const host = `model-${model.id}-prod-eu.${DOMAIN}`;

    const first = await eventually(async () => {
      for (const name of ["eu-1", "eu-2"]) {
        const rs = (await planeReplicas(cluster.plane(name))) ?? [];
        if (rs.some((r) => r.deployment_id === deployment.id && r.state === "READY")) return name;
      }
      return null;
    }, 30_000);
    const survivor = first === "eu-1" ? "eu-2" : "eu-1";

    await cluster.plane(first).stop("SIGKILL");
    const served = await eventually(async () => {
      const r = await predict(cluster, survivor, host, "/predict");
      return r.status === 200 ? r : null;
    }, 30_000);
    expect(served.headers["x-meridian-plane"]).toBe(survivor);
    expect(served.headers["x-meridian-region"]).toBe("eu");

    // Back again, the old plane does not take its replica back: the survivor keeps serving.
    await cluster.plane(first).start();
    await eventually(async () => {
      const rs = await planeReplicas(cluster.plane(first));
      return rs !== null && !rs.some((r) => r.deployment_id === deployment.id);
    }, 20_000);
    const after = await predict(cluster, survivor, host, "/predict");
    expect(after.status).toBe(200);

    await watch.sample();
    expect(watch.outside(await deploymentsRestrictedTo(cluster, "eu"), "eu")).toEqual([]);
    expect(watch.seen.get(deployment.id)?.has("us-1") ?? false).toBe(false);
  }, 120_000);
});
