// Placement end to end (DESIGN.md §2.1, §2.4, §2.5; issue 3): real `meridian control` and planes in us,
// eu, uk and au. An environment restricted to `eu` only ever has replicas on `eu` planes — through push,
// promotion, forced redeploy, migration of a group that serves traffic, replica crash, plane restart and a
// full `eu` plane. A watch samples every plane's driver all along, so a replica that lands in the wrong
// region even for a moment fails the file.

import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Cluster, DOMAIN, eventually, FOUR_REGIONS, startCluster } from "../support/cluster.ts";
import {
  deploymentsRestrictedTo,
  PlacementWatch,
  planeReplicas,
  predict,
  processAlive,
  replicaPid,
  Traffic,
} from "../support/planes.ts";

describe("placement of a regional environment", () => {
  let cluster: Cluster;
  let watch: PlacementWatch;
  /** The model pushed into prod-eu by the first test; later tests crash and restart its replica. */
  let modelId = "";

  const api = () => cluster.api;

  async function environment(model: string, env: string) {
    const e = await api().get(`/v1/models/${model}/environments/${env}`);
    expect(e.status, JSON.stringify(e.body)).toBe(200);
    return e.body;
  }

  async function activeIn(model: string, env: string, timeoutMs = 30_000) {
    let last: unknown = null;
    try {
      return await eventually(async () => {
        const e = await environment(model, env);
        last = e;
        return e.current_deployment?.status === "ACTIVE" && e.in_progress_promotion === null ? e : null;
      }, timeoutMs);
    } catch (err) {
      // Say what the control plane had of the environment, the model's deployments and its last words.
      const deployments = (await api().get(`/v1/models/${model}/deployments`)).body.deployments as Array<{
        id: string;
        status: string;
      }>;
      throw new Error(
        `${(err as Error).message}\nenvironment: ${JSON.stringify(last)}\ndeployments: ${deployments
          .map((d) => `${d.id} ${d.status}`)
          .join(", ")}\ncontrol plane:\n${cluster.control.output.slice(-60).join("\n")}`,
      );
    }
  }

  /** Every deployment the control plane holds to `eu` ran only on eu planes, as the planes saw it. */
  async function expectResidency() {
    await watch.sample();
    const restricted = await deploymentsRestrictedTo(cluster, "eu");
    expect(watch.outside(restricted, "eu")).toEqual([]);
    return restricted;
  }

  beforeAll(async () => {
    cluster = await startCluster({ planes: FOUR_REGIONS });
    watch = new PlacementWatch(cluster).start();
    const restricted = await api().patch("/v1/environment_groups/prod-eu", {
      region_restriction: { region: "eu" },
    });
    expect(restricted.status, JSON.stringify(restricted.body)).toBe(200);
  }, 60_000);

  afterAll(async () => {
    watch?.stop();
    await cluster?.stop();
  }, 60_000);

  it("a push into the restricted environment runs and serves only in eu", async () => {
    const created = await api().createModel("placed", "hello-js", { environment_name: "prod-eu" });
    expect(created.status, JSON.stringify(created.body)).toBe(200);
    modelId = created.body.model.id;
    const env = await activeIn(modelId, "prod-eu");
    expect(env.current_deployment.id).toBe(created.body.deployment.id);
    expect(env.current_deployment.region.slug).toBe("eu");
    await eventually(async () => (await planeReplicas(cluster.plane("eu-1")))?.length === 1);
    expect(watch.planesOf(env.current_deployment.id)).toEqual(["eu-1"]);

    const served = await eventually(async () => {
      const r = await predict(cluster, "eu-1", `model-${modelId}-prod-eu.${DOMAIN}`, "/predict");
      return r.status === 200 ? r : null;
    });
    expect(served.headers["x-meridian-plane"]).toBe("eu-1");
    await expectResidency();
  }, 45_000);

  it("promoting a deployment that ran unrestricted redeploys it into eu; one already under eu is reused", async () => {
    const first = (await environment(modelId, "prod-eu")).current_deployment.id as string;
    expect((await environment(modelId, "prod-eu")).promotion_settings.redeploy_on_promotion).toBe(false);

    // A deployment pushed outside any environment runs unrestricted, near the global ingress (us).
    const pushed = await api().createDeployment(modelId, "hello-js");
    expect(pushed.status, JSON.stringify(pushed.body)).toBe(200);
    const loose = pushed.body.deployment.id as string;
    await eventually(async () => {
      const d = await api().get(`/v1/models/${modelId}/deployments/${loose}`);
      return d.body.status === "ACTIVE";
    });
    expect(watch.planesOf(loose)).toEqual(["us-1"]);

    const promoted = await api().post(`/v1/models/${modelId}/environments/prod-eu/promote`, {
      deployment_id: loose,
    });
    expect(promoted.status, JSON.stringify(promoted.body)).toBe(200);
    const copy = promoted.body.id as string;
    expect(copy).not.toBe(loose);
    const env = await activeIn(modelId, "prod-eu");
    expect(env.current_deployment.id).toBe(copy);
    expect(env.current_deployment.region.slug).toBe("eu");
    // The unrestricted original keeps running where it was; only the copy serves prod-eu.
    expect(watch.planesOf(copy)).toEqual(["eu-1"]);
    expect((await api().get(`/v1/models/${modelId}/deployments/${first}`)).body.status).toBe(
      "SCALED_TO_ZERO",
    );

    // The first deployment was pushed into prod-eu, so it already runs under the eu restriction: reused.
    const back = await api().post(`/v1/models/${modelId}/environments/prod-eu/promote`, {
      deployment_id: first,
    });
    expect(back.status, JSON.stringify(back.body)).toBe(200);
    expect(back.body.id).toBe(first);
    const again = await activeIn(modelId, "prod-eu");
    expect(again.current_deployment.id).toBe(first);
    expect(watch.planesOf(first)).toEqual(["eu-1"]);
    await expectResidency();
  }, 60_000);

  it("a forced redeploy (redeploy_on_promotion) places the new deployment in eu", async () => {
    const patched = await api().patch(`/v1/models/${modelId}/environments/prod-eu`, {
      promotion_settings: { redeploy_on_promotion: true },
    });
    expect(patched.status, JSON.stringify(patched.body)).toBe(200);
    const current = (await environment(modelId, "prod-eu")).current_deployment.id as string;
    const others = (await api().get(`/v1/models/${modelId}/deployments`)).body.deployments as Array<{
      id: string;
      region: { slug: string } | null;
    }>;
    const source = others.find((d) => d.id !== current && d.region?.slug === "eu")!;
    expect(source).toBeDefined();

    const promoted = await api().post(`/v1/models/${modelId}/environments/prod-eu/promote`, {
      deployment_id: source.id,
    });
    expect(promoted.status, JSON.stringify(promoted.body)).toBe(200);
    expect(promoted.body.id).not.toBe(source.id);
    const env = await activeIn(modelId, "prod-eu");
    expect(env.current_deployment.id).toBe(promoted.body.id);
    expect(watch.planesOf(promoted.body.id)).toEqual(["eu-1"]);
    await api().patch(`/v1/models/${modelId}/environments/prod-eu`, {
      promotion_settings: { redeploy_on_promotion: false },
    });
    await expectResidency();
  }, 45_000);

  it("restricting a group that serves traffic migrates it into eu while the standard path keeps answering", async () => {
    const created = await api().createModel("migrating", "hello-js", { environment_name: "prod-late" });
    expect(created.status, JSON.stringify(created.body)).toBe(200);
    const id = created.body.model.id as string;
    const before = await activeIn(id, "prod-late");
    const old = before.current_deployment.id as string;
    expect(before.current_deployment.region).toBeNull();
    expect(watch.planesOf(old)).toEqual(["us-1"]);

    const standard = () =>
      predict(cluster, "us-1", `model-${id}.${DOMAIN}`, "/environments/prod-late/predict", { n: 1 });
    await eventually(async () => (await standard()).status === 200);
    const traffic = new Traffic(standard, 20);
    await eventually(async () => traffic.results.length >= 5);

    const restricted = await api().patch("/v1/environment_groups/prod-late", {
      region_restriction: { region: "eu" },
    });
    expect(restricted.status, JSON.stringify(restricted.body)).toBe(200);
    // The environment keeps its old deployment until the redeploy is ready.
    const during = await environment(id, "prod-late");
    expect(during.current_deployment.id).toBe(old);
    expect(during.in_progress_promotion).not.toBeNull();

    const after = await activeIn(id, "prod-late");
    const moved = after.current_deployment.id as string;
    expect(moved).not.toBe(old);
    expect(after.current_deployment.region.slug).toBe("eu");
    // Traffic now reaches the eu replica (forwarded from the global ingress), and the old one goes away.
    await eventually(async () => traffic.header("x-meridian-plane").at(-1) === "eu-1");
    await eventually(async () => {
      const d = await api().get(`/v1/models/${id}/deployments/${old}`);
      const us = (await planeReplicas(cluster.plane("us-1"))) ?? [];
      return d.body.status === "SCALED_TO_ZERO" && !us.some((r) => r.deployment_id === old);
    });
    await new Promise((r) => setTimeout(r, 500));
    await traffic.stop();

    expect(traffic.failures()).toEqual([]);
    const planes = traffic.header("x-meridian-plane");
    expect(planes[0]).toBe("us-1");
    // Served from us until the switch, from eu after it; never from anywhere else.
    expect(new Set(planes)).toEqual(new Set(["us-1", "eu-1"]));
    expect(planes.slice(planes.indexOf("eu-1")).every((p) => p === "eu-1")).toBe(true);
    expect(watch.planesOf(moved)).toEqual(["eu-1"]);
    const regional = await predict(cluster, "eu-1", `model-${id}-prod-late.${DOMAIN}`, "/predict");
    expect(regional.status).toBe(200);
    expect(regional.body.environment).toBe("prod-late");
    await expectResidency();
  }, 60_000);

  it("a crashed replica is restarted on its eu plane", async () => {
    const env = await environment(modelId, "prod-eu");
    const deployment = env.current_deployment.id as string;
    const eu = cluster.plane("eu-1");
    const replica = ((await planeReplicas(eu)) ?? []).find((r) => r.deployment_id === deployment)!;
    expect(replica?.state).toBe("READY");
    const pid = replicaPid(eu, replica.id)!;
    expect(pid).toBeGreaterThan(0);
    expect(processAlive(pid)).toBe(true);

    process.kill(pid, "SIGKILL");
    const restarted = await eventually(async () => {
      const r = ((await planeReplicas(eu)) ?? []).find((x) => x.id === replica.id);
      const now = replicaPid(eu, replica.id);
      return r?.state === "READY" && r.restarts > replica.restarts && now !== null && now !== pid ? r : null;
    }, 20_000);
    expect(restarted.restarts).toBe(replica.restarts + 1);
    const served = await eventually(async () => {
      const r = await predict(cluster, "eu-1", `model-${modelId}-prod-eu.${DOMAIN}`, "/predict");
      return r.status === 200 ? r : null;
    });
    expect(served.headers["x-meridian-plane"]).toBe("eu-1");
    expect(watch.planesOf(deployment)).toEqual(["eu-1"]);
    await expectResidency();
  }, 45_000);

  it("a SIGKILLed eu plane that starts again brings its replicas back in eu, and nothing moves meanwhile", async () => {
    const eu = cluster.plane("eu-1");
    const before = ((await planeReplicas(eu)) ?? []).filter((r) => r.state === "READY");
    expect(before.length).toBeGreaterThan(0);
    const pids = before.map((r) => replicaPid(eu, r.id)!);

    await eu.stop("SIGKILL");
    // While the plane is down its replicas are not placed anywhere else.
    await new Promise((r) => setTimeout(r, 3_000));
    await expectResidency();

    await eu.start();
    // The new plane process kills what the dead one left running and starts the same replicas again.
    const after = await eventually(async () => {
      const rs = (await planeReplicas(eu)) ?? [];
      return before.every((b) => rs.some((r) => r.id === b.id && r.state === "READY")) ? rs : null;
    }, 30_000);
    for (const pid of pids) expect(processAlive(pid)).toBe(false);
    expect(after.map((r) => r.id).sort()).toEqual(before.map((r) => r.id).sort());
    await eventually(async () => {
      const r = await predict(cluster, "eu-1", `model-${modelId}-prod-eu.${DOMAIN}`, "/predict");
      return r.status === 200;
    });
    await expectResidency();
  }, 60_000);

  it("with the eu plane full a new deployment waits with a clear status, and places once capacity grows", async () => {
    const planes = (await api().get("/v1/admin/planes")).body.planes as Array<{
      name: string;
      capacity: number;
      replicas: Record<string, number>;
    }>;
    const eu = planes.find((p) => p.name === "eu-1")!;
    const used = Object.values(eu.replicas).reduce((a, b) => a + b, 0);
    expect((await api().patch("/v1/admin/planes/eu-1", { capacity: used })).status).toBe(200);

    const created = await api().createModel("waiting", "hello-js", { environment_name: "prod-eu" });
    expect(created.status, JSON.stringify(created.body)).toBe(200);
    const id = created.body.model.id as string;
    const deployment = created.body.deployment.id as string;
    const waiting = await eventually(async () => {
      const d = await api().get(`/v1/models/${id}/deployments/${deployment}`);
      return d.body.status_message ? d.body : null;
    });
    expect(waiting.status).toBe("DEPLOYING");
    expect(waiting.status_message).toMatch(/Waiting for capacity/);
    expect(waiting.status_message).toMatch(/'eu'/);
    // Capacity elsewhere (us has plenty) is never used, however long it waits.
    await new Promise((r) => setTimeout(r, 2_000));
    expect(watch.planesOf(deployment)).toEqual([]);
    const still = await api().get(`/v1/models/${id}/deployments/${deployment}`);
    expect(still.body.status).toBe("DEPLOYING");
    expect((await environment(id, "prod-eu")).current_deployment).toBeNull();

    expect((await api().patch("/v1/admin/planes/eu-1", { capacity: used + 2 })).status).toBe(200);
    const env = await activeIn(id, "prod-eu");
    expect(env.current_deployment.id).toBe(deployment);
    expect(env.current_deployment.status_message).toBeNull();
    expect(watch.planesOf(deployment)).toEqual(["eu-1"]);
    const restricted = await expectResidency();
    expect(restricted).toContain(deployment);
  }, 45_000);
});
