// Plane reports drive replica state, deployment status and promotions; a replica a plane stops reporting
// is no longer routable.

import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestControl, type TestControl } from "../support/control.ts";

describe("plane reports", () => {
  let t: TestControl;
  let token: string;

  beforeAll(async () => {
    t = await startTestControl("sqlite");
    const plane = await t.admin.post("/v1/admin/planes", {
      name: "eu-1",
      region: "eu",
      ingress: ["127.0.2.1:8443"],
      capacity: 4,
    });
    token = plane.body.credential;
  });
  afterAll(async () => t?.stop());

  const asPlane = () => t.admin.as(null);
  const snapshot = async () =>
    (
      await asPlane().call("GET", "/v1/internal/planes/eu-1/snapshot?wait=0", undefined, {
        authorization: `Bearer ${token}`,
      })
    ).body;
  const report = (replicas: unknown[]) =>
    asPlane().call(
      "POST",
      "/v1/internal/planes/eu-1/report",
      { revision: 1, replicas, request_counts: [] },
      {
        authorization: `Bearer ${token}`,
        "content-type": "application/json",
      },
    );

  it("marks a deployment ACTIVE when its replica is READY, and routable again only while reported", async () => {
    await t.admin.patch("/v1/environment_groups/prod-eu", { region_restriction: { region: "eu" } });
    const { model, deployment } = (
      await t.admin.createModel("reported", "hello-js", { environment_name: "prod-eu" })
    ).body;
    const desired = (await snapshot()).replicas;
    expect(desired).toHaveLength(1);
    expect(desired[0]).toMatchObject({ deployment_id: deployment.id, environment: "prod-eu" });
    const replica = { id: desired[0].id, deployment_id: deployment.id, message: null, restarts: 0 };

    expect((await report([{ ...replica, state: "READY" }])).status).toBe(200);
    const env = await t.admin.get(`/v1/models/${model.id}/environments/prod-eu`);
    expect(env.body.current_deployment).toMatchObject({ id: deployment.id, status: "ACTIVE" });
    const routed = (await snapshot()).models[0].deployments[0];
    expect(routed.ready_planes).toEqual(["eu-1"]);

    // The plane no longer runs it (stopped, or the process is gone): not routable any more.
    expect((await report([])).status).toBe(200);
    const after = (await snapshot()).models[0].deployments[0];
    expect(after.ready_planes).toEqual([]);
    const dep = await t.admin.get(`/v1/models/${model.id}/deployments/${deployment.id}`);
    expect(dep.body.status).not.toBe("ACTIVE");
  });

  it("lets a plane download only the packages of replicas placed on it", async () => {
    const other = await t.admin.post("/v1/admin/planes", {
      name: "uk-1",
      region: "uk",
      ingress: ["127.0.3.1:8443"],
      capacity: 4,
    });
    const sha256 = (await snapshot()).replicas[0].artifact.sha256 as string;
    const fetchAs = (credential: string) =>
      asPlane().call("GET", `/v1/internal/artifacts/${sha256}`, undefined, {
        authorization: `Bearer ${credential}`,
      });
    const own = await fetchAs(token);
    expect(own.status).toBe(200);
    expect(own.headers["content-type"]).toContain("gzip");
    const foreign = await fetchAs(other.body.credential);
    expect(foreign.status).toBe(404);
    expect(foreign.body.error_code).toBe("artifact_not_found");
  });

  it("shows BUILDING while the plane builds a replica's environment, and ends BUILD_FAILED with the build's error, its replica kept", async () => {
    const { model, deployment } = (
      await t.admin.createModel("built-on-plane", "hello-js", { environment_name: "prod-eu" })
    ).body;
    const others = (await snapshot()).replicas
      .filter((r: { deployment_id: string }) => r.deployment_id !== deployment.id)
      .map((r: { id: string; deployment_id: string }) => ({
        id: r.id,
        deployment_id: r.deployment_id,
        state: "READY",
        message: null,
        restarts: 0,
      }));
    const mine = (await snapshot()).replicas.find(
      (r: { deployment_id: string }) => r.deployment_id === deployment.id,
    );
    const replica = { id: mine.id, deployment_id: deployment.id, restarts: 0 };
    const status = async () =>
      (await t.admin.get(`/v1/models/${model.id}/deployments/${deployment.id}`)).body as {
        status: string;
        status_message: string | null;
      };

    // A state no plane reports is refused, and changes nothing.
    const bogus = await report([...others, { ...replica, state: "BUILT", message: null }]);
    expect(bogus.status).toBe(400);
    expect((await status()).status).toBe("DEPLOYING");

    const building = await report([
      ...others,
      { ...replica, state: "BUILDING", message: "installing the package's requirements" },
    ]);
    expect(building.status, JSON.stringify(building.body)).toBe(200);
    expect(await status()).toMatchObject({
      status: "BUILDING",
      status_message: "Installing requirements on eu-1.",
    });
    // Still wanted while it builds.
    expect((await snapshot()).replicas.map((r: { id: string }) => r.id)).toContain(mine.id);

    const pip =
      "pip could not install the requirements (exit code 1):\nERROR: No matching distribution found for x==9";
    expect((await report([...others, { ...replica, state: "BUILD_FAILED", message: pip }])).status).toBe(200);
    expect(await status()).toMatchObject({ status: "BUILD_FAILED", status_message: pip });
    // The promotion into prod-eu failed with it; nothing serves there.
    const env = await t.admin.get(`/v1/models/${model.id}/environments/prod-eu`);
    expect(env.body.current_deployment).toBeNull();

    // Later reports (the replica gone from one) change neither the status nor its message, and the failed
    // replica stays placed, so the logs API can still read pip's output from the plane.
    expect((await report(others)).status).toBe(200);
    expect(await status()).toMatchObject({ status: "BUILD_FAILED", status_message: pip });
    expect((await snapshot()).replicas.map((r: { id: string }) => r.id)).toContain(mine.id);
    // A failed build is not activated again.
    const again = await t.admin.post(`/v1/models/${model.id}/deployments/${deployment.id}/activate`, {});
    expect(again.status).toBe(409);
  });
});
