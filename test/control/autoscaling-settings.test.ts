// autoscaling_settings and request_backpressure_settings through the management API (issue 12 item 1):
// Baseten's defaults, partial updates, the 400 that names the rule, the deployment routes with their
// `production` / `development` aliases, and changes applied without a redeploy. Both stores.

import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type ApiClient, startTestControl, type TestControl } from "../support/control.ts";
import { STORE_KINDS } from "../support/databases.ts";
import { expectError, expectReferenceShape } from "../support/reference.ts";

const DEFAULTS = {
  min_replica: 0,
  max_replica: 1,
  autoscaling_window: 60,
  scale_down_delay: 900,
  concurrency_target: 1,
  target_utilization_percentage: 70,
  target_in_flight_tokens: null,
  max_scale_down_rate: 50,
};

describe.each(STORE_KINDS)("autoscaling settings on %s", (kind) => {
  let t: TestControl;
  let admin: ApiClient;
  let modelId: string;
  let deploymentId: string;
  let planeAuth: Record<string, string>;

  beforeAll(async () => {
    t = await startTestControl(kind);
    admin = t.admin;
    const plane = await admin.post("/v1/admin/planes", {
      name: "us-1",
      region: "us",
      ingress: ["127.0.9.1:8443"],
      capacity: 4,
    });
    const created = await admin.createModel("scaled", "hello-js", { environment_name: "production" });
    expect(created.status, JSON.stringify(created.body)).toBe(200);
    modelId = created.body.model.id;
    deploymentId = created.body.deployment.id;
    // The plane reports the replica ready, so production switches to it.
    const auth = { authorization: `Bearer ${plane.body.credential}` };
    planeAuth = auth;
    const snap = await admin
      .as(null)
      .call("GET", "/v1/internal/planes/us-1/snapshot?wait=0", undefined, auth);
    const replicas = snap.body.replicas.map((r: { id: string }) => ({
      id: r.id,
      deployment_id: deploymentId,
      state: "READY",
      message: null,
      restarts: 0,
    }));
    const report = await admin
      .as(null)
      .call("POST", "/v1/internal/planes/us-1/report", { revision: 1, replicas, request_counts: [] }, auth);
    expect(report.status).toBe(200);
    const prod = await admin.get(`/v1/models/${modelId}/environments/production`);
    expect(prod.body.current_deployment?.id).toBe(deploymentId);
  });
  afterAll(async () => t?.stop());

  const envUrl = (name: string) => `/v1/models/${modelId}/environments/${name}`;

  it("shows Baseten's defaults on a new environment, every field in effect", async () => {
    const created = await admin.post(`/v1/models/${modelId}/environments`, { name: "defaults" });
    expect(created.status, JSON.stringify(created.body)).toBe(200);
    expectReferenceShape("EnvironmentV1", created.body);
    expect(created.body.autoscaling_settings).toEqual(DEFAULTS);
    expect(created.body.request_backpressure_settings).toEqual({ policy: null });
  });

  it("updates only the fields passed in, and answers UNCHANGED for the same values", async () => {
    await admin.post(`/v1/models/${modelId}/environments`, { name: "partial" });
    const first = await admin.patch(envUrl("partial"), {
      autoscaling_settings: { max_replica: 4, scale_down_delay: 0, autoscaling_window: 10 },
    });
    expect(first.status, JSON.stringify(first.body)).toBe(200);
    expect(first.body.status).toBe("ACCEPTED");
    expect(first.body.environment.autoscaling_settings).toEqual({
      ...DEFAULTS,
      max_replica: 4,
      scale_down_delay: 0,
      autoscaling_window: 10,
    });
    // Null keeps the value (the reference: "we only update ones passed in").
    const again = await admin.patch(envUrl("partial"), {
      autoscaling_settings: { max_replica: 4, min_replica: null },
    });
    expect(again.body.status).toBe("UNCHANGED");
    expect(again.body.environment.autoscaling_settings.min_replica).toBe(0);
  });

  it("refuses values outside Baseten's ranges with a 400 naming the rule and the field, changing nothing", async () => {
    await admin.post(`/v1/models/${modelId}/environments`, { name: "ranges" });
    const cases: Array<[Record<string, unknown>, string, string]> = [
      [{ autoscaling_window: 9 }, "autoscaling_window_range", "autoscaling_window"],
      [{ autoscaling_window: 3601 }, "autoscaling_window_range", "autoscaling_window"],
      [{ scale_down_delay: -1 }, "scale_down_delay_range", "scale_down_delay"],
      [{ scale_down_delay: 3601 }, "scale_down_delay_range", "scale_down_delay"],
      [{ target_utilization_percentage: 0 }, "target_utilization_range", "target_utilization_percentage"],
      [{ target_utilization_percentage: 101 }, "target_utilization_range", "target_utilization_percentage"],
      [{ max_scale_down_rate: 51 }, "max_scale_down_rate_range", "max_scale_down_rate"],
      [{ max_scale_down_rate: 0 }, "max_scale_down_rate_range", "max_scale_down_rate"],
      [{ concurrency_target: 0 }, "concurrency_target_below_one", "concurrency_target"],
      [{ min_replica: -1 }, "min_replica_negative", "min_replica"],
      [{ max_replica: 0 }, "max_replica_below_one", "max_replica"],
      // Merged over max_replica 1: send both.
      [{ min_replica: 3 }, "min_above_max", "min_replica"],
      [{ target_in_flight_tokens: 40000 }, "target_in_flight_tokens_unsupported", "target_in_flight_tokens"],
    ];
    for (const [update, rule, field] of cases) {
      const res = await admin.patch(envUrl("ranges"), { autoscaling_settings: update });
      expectError(res, 400, "invalid_request");
      expect(res.body.detail, JSON.stringify(update)).toEqual({
        field: `autoscaling_settings.${field}`,
        rule,
      });
      expect(res.body.error).toContain(rule);
    }
    // The same on the deployment route, and on create.
    const dep = await admin.patch(`/v1/models/${modelId}/deployments/${deploymentId}/autoscaling_settings`, {
      autoscaling_window: 5,
    });
    expectError(dep, 400, "invalid_request");
    expect(dep.body.detail.rule).toBe("autoscaling_window_range");
    const create = await admin.post(`/v1/models/${modelId}/environments`, {
      name: "never",
      autoscaling_settings: { scale_down_delay: 7200 },
    });
    expectError(create, 400, "invalid_request");
    expect(create.body.detail.rule).toBe("scale_down_delay_range");
    expectError(await admin.get(envUrl("never")), 404, "environment_not_found");
    expect((await admin.get(envUrl("ranges"))).body.autoscaling_settings).toEqual(DEFAULTS);
    // The range edges are accepted.
    const edges = await admin.patch(envUrl("ranges"), {
      autoscaling_settings: { autoscaling_window: 10, scale_down_delay: 0, max_scale_down_rate: 1 },
    });
    expect(edges.status, JSON.stringify(edges.body)).toBe(200);
  });

  it("PATCHes a deployment's settings by id and by the production alias, keeping its environment in step", async () => {
    const byAlias = await admin.patch(`/v1/models/${modelId}/deployments/production/autoscaling_settings`, {
      max_replica: 3,
      concurrency_target: 2,
    });
    expect(byAlias.status, JSON.stringify(byAlias.body)).toBe(200);
    expectReferenceShape("UpdateAutoscalingSettingsResponseV1", byAlias.body);
    expect(byAlias.body.status).toBe("ACCEPTED");
    const d = await admin.get(`/v1/models/${modelId}/deployments/${deploymentId}`);
    expect(d.body.autoscaling_settings).toMatchObject({ max_replica: 3, concurrency_target: 2 });
    // The environment it serves runs under the same settings.
    const prod = await admin.get(envUrl("production"));
    expect(prod.body.autoscaling_settings).toMatchObject({ max_replica: 3, concurrency_target: 2 });
    // And the other way round: the environment's PATCH reaches its deployment.
    await admin.patch(envUrl("production"), { autoscaling_settings: { concurrency_target: 5 } });
    const after = await admin.get(`/v1/models/${modelId}/deployments/${deploymentId}`);
    expect(after.body.autoscaling_settings.concurrency_target).toBe(5);
    expectError(
      await admin.patch(`/v1/models/${modelId}/deployments/development/autoscaling_settings`, {
        max_replica: 2,
      }),
      404,
      "deployment_not_found",
    );
    expectError(
      await admin.patch(`/v1/models/${modelId}/deployments/nope0000/autoscaling_settings`, {
        max_replica: 2,
      }),
      404,
      "deployment_not_found",
    );
    const unknown = await admin.patch(`/v1/models/${modelId}/deployments/production/autoscaling_settings`, {
      max_replicas: 2,
    });
    expectError(unknown, 400, "invalid_request");
  });

  it("applies a raised min_replica at once, without a redeploy: the running replica stays", async () => {
    const db = t.control.ctx.store.db;
    const replicas = () =>
      db
        .selectFrom("replicas")
        .select(["id"])
        .where("deployment_id", "=", deploymentId)
        .orderBy("created_at")
        .execute();
    const before = await replicas();
    expect(before.length).toBeGreaterThanOrEqual(1);
    const res = await admin.patch(envUrl("production"), { autoscaling_settings: { min_replica: 2 } });
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    const after = await replicas();
    expect(after).toHaveLength(2);
    expect(after.map((r) => r.id)).toContain(before[0]!.id);
    const status = (await admin.get(`/v1/models/${modelId}/deployments/${deploymentId}`)).body.status;
    expect(status).not.toBe("BUILDING");
  });

  it("sets, shows and clears request_backpressure_settings, refusing an unknown policy", async () => {
    await admin.post(`/v1/models/${modelId}/environments`, {
      name: "bp",
      request_backpressure_settings: { policy: "REJECT_ON_FULL" },
    });
    expect((await admin.get(envUrl("bp"))).body.request_backpressure_settings).toEqual({
      policy: "REJECT_ON_FULL",
    });
    const queued = await admin.patch(envUrl("bp"), {
      request_backpressure_settings: { policy: "QUEUE_ON_FULL" },
    });
    expect(queued.body.status).toBe("ACCEPTED");
    expect(queued.body.environment.request_backpressure_settings).toEqual({ policy: "QUEUE_ON_FULL" });
    // Absent keeps it; an object without a policy clears it.
    await admin.patch(envUrl("bp"), { autoscaling_settings: { max_replica: 2 } });
    expect((await admin.get(envUrl("bp"))).body.request_backpressure_settings.policy).toBe("QUEUE_ON_FULL");
    await admin.patch(envUrl("bp"), { request_backpressure_settings: {} });
    expect((await admin.get(envUrl("bp"))).body.request_backpressure_settings).toEqual({ policy: null });
    expectError(
      await admin.patch(envUrl("bp"), { request_backpressure_settings: { policy: "DROP" } }),
      400,
      "invalid_request",
    );
  });

  it("keeps a plane's load counters per deployment, dropping unknown deployments and refusing bad ones", async () => {
    const report = (load: unknown) =>
      admin
        .as(null)
        .call(
          "POST",
          "/v1/internal/planes/us-1/report",
          { revision: 1, replicas: [], request_counts: [], load },
          planeAuth,
        );
    const load = (request_ms: number, in_flight: number) => ({
      epoch: "2026-12-01T00:00:00.000Z",
      at: "2026-12-01T00:00:10.000Z",
      deployments: [
        { deployment_id: deploymentId, in_flight, request_ms, last_request_at: "2026-12-01T00:00:09.000Z" },
        { deployment_id: "nosuchd", in_flight: 9, request_ms: 9, last_request_at: null },
      ],
    });
    expect((await report(load(1500, 2))).status).toBe(200);
    expect((await report(load(4000, 1))).status).toBe(200);
    const rows = await t.control.ctx.store.db.selectFrom("plane_loads").selectAll().execute();
    expect(rows.map((r) => [r.plane, r.deployment_id, r.in_flight, Number(r.request_ms)])).toEqual([
      ["us-1", deploymentId, 1, 4000],
    ]);
    for (const bad of [
      { ...load(1, 1), epoch: "yesterday" },
      {
        epoch: "2026-12-01T00:00:00.000Z",
        at: "2026-12-01T00:00:00.000Z",
        deployments: [{ deployment_id: deploymentId, in_flight: -1, request_ms: 0, last_request_at: null }],
      },
      { ...load(1.5, 1) },
    ]) {
      expectError(await report(bad), 400, "invalid_request");
    }
  });

  it("leaves a promotion's previous deployment asleep when a late report still counts requests in flight for it; a wake still wakes it", async () => {
    const db = t.control.ctx.store.db;
    const previous = deploymentId;
    const pushed = await admin.createDeployment(modelId, "hello-js", { environment_name: "production" });
    expect(pushed.status, JSON.stringify(pushed.body)).toBe(200);
    const candidate = pushed.body.deployment.id as string;
    const snap = await admin
      .as(null)
      .call("GET", "/v1/internal/planes/us-1/snapshot?wait=0", undefined, planeAuth);
    const ready = snap.body.replicas
      .filter((r: { deployment_id: string }) => r.deployment_id === candidate)
      .map((r: { id: string }) => ({
        id: r.id,
        deployment_id: candidate,
        state: "READY",
        message: null,
        restarts: 0,
      }));
    expect(ready.length).toBeGreaterThanOrEqual(1);
    // The plane's report as it left it just before the switch: requests of the previous deployment in flight.
    const load = {
      epoch: "2026-12-02T00:00:00.000Z",
      at: new Date().toISOString(),
      deployments: [
        { deployment_id: previous, in_flight: 3, request_ms: 500, last_request_at: new Date().toISOString() },
      ],
    };
    const sent = await admin
      .as(null)
      .call(
        "POST",
        "/v1/internal/planes/us-1/report",
        { revision: 1, replicas: ready, request_counts: [], load },
        planeAuth,
      );
    expect(sent.status).toBe(200);
    const prod = await admin.get(`/v1/models/${modelId}/environments/production`);
    expect(prod.body.current_deployment?.id).toBe(candidate);
    const status = async () =>
      db
        .selectFrom("deployments")
        .select(["status", "desired_replicas"])
        .where("id", "=", previous)
        .executeTakeFirstOrThrow();
    expect(await status()).toEqual({ status: "SCALED_TO_ZERO", desired_replicas: 0 });
    // The autoscaler's passes see the counted requests: they are no request for it to wake.
    for (let i = 0; i < 3; i++) await t.control.ctx.autoscaler!.tick();
    expect(await status()).toEqual({ status: "SCALED_TO_ZERO", desired_replicas: 0 });
    // A request held for it at a plane (its deployment endpoint) asks for a wake: that one wakes it.
    const woke = await admin
      .as(null)
      .call("POST", "/v1/internal/planes/us-1/wake", { deployment_id: previous, load }, planeAuth);
    expect(woke.status, JSON.stringify(woke.body)).toBe(202);
    expect((await status()).desired_replicas).toBeGreaterThanOrEqual(1);
    expect((await status()).status).toBe("WAKING_UP");
  });
});
