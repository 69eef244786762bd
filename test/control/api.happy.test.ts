// The management API as a user drives it, against a real control plane on both stores; every response is
// checked against the reference schema it mirrors.

import { readFileSync, statSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type ApiClient, startTestControl, type TestControl } from "../support/control.ts";
import { STORE_KINDS } from "../support/databases.ts";
import { expectError, expectReferenceShape } from "../support/reference.ts";

describe.each(STORE_KINDS)("management API on %s", (kind) => {
  let t: TestControl;
  let admin: ApiClient;

  beforeAll(async () => {
    t = await startTestControl(kind);
    admin = t.admin;
  });
  afterAll(async () => t?.stop());

  it("bootstraps an admin key, saved with mode 0600", () => {
    expect(t.control.adminKey).toMatch(/^[a-z0-9]{8}\./);
    expect(readFileSync(t.control.adminKeyFile, "utf8").trim()).toBe(t.control.adminKey);
    expect(statSync(t.control.adminKeyFile).mode & 0o777).toBe(0o600);
  });

  it("serves identity: me, teams, users, regions", async () => {
    const me = await admin.get("/v1/users/me");
    expect(me.status).toBe(200);
    expectReferenceShape("UserInfoV1", me.body);

    const teams = await admin.get("/v1/teams");
    expectReferenceShape("TeamsV1", teams.body);
    expect(teams.body.teams).toHaveLength(1);
    expect(teams.body.teams[0].default).toBe(true);
    const team = await admin.get(`/v1/teams/${teams.body.teams[0].id}`);
    expectReferenceShape("TeamV1", team.body);

    const users = await admin.get("/v1/users");
    expectReferenceShape("UsersResponseV1", users.body);

    const regions = await admin.get("/v1/regions");
    expectReferenceShape("RegionsV1", regions.body);
    expect(regions.body.regions.map((r: { slug: string }) => r.slug)).toEqual(["us", "eu", "uk", "au"]);
    const teamRegions = await admin.get(`/v1/teams/${teams.body.teams[0].id}/regions`);
    expect(teamRegions.body).toEqual(regions.body);
  });

  it("creates, lists and deletes API keys, showing the plaintext once and accepting Bearer", async () => {
    const created = await admin.post("/v1/api_keys", { type: "WORKSPACE_MANAGE_ALL", name: "ci" });
    expect(created.status).toBe(200);
    expectReferenceShape("APIKeyV1", created.body);
    const key: string = created.body.api_key;
    const prefix = key.split(".")[0]!;

    const list = await admin.get("/v1/api_keys");
    expectReferenceShape("APIKeysV1", list.body);
    const info = list.body.keys.find((k: { prefix: string }) => k.prefix === prefix);
    expect(info).toMatchObject({ type: "WORKSPACE_MANAGE_ALL", name: "ci" });
    expect(JSON.stringify(list.body)).not.toContain(key);

    const bearer = await admin
      .as(null)
      .call("GET", "/v1/models", undefined, { authorization: `Bearer ${key}` });
    expect(bearer.status).toBe(200);

    const deleted = await admin.delete(`/v1/api_keys/${prefix}`);
    expectReferenceShape("APIKeyTombstoneV1", deleted.body);
    expectError(await admin.as(key).get("/v1/models"), 401, "unauthorized");
  });

  it("pushes a model: upload, create, deployments, production environment", async () => {
    const res = await admin.createModel("hello");
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    expectReferenceShape("CreatedModelDeploymentV1", res.body);
    const { model, deployment } = res.body;
    expect(model.id).toMatch(/^[a-z0-9]{8}$/);
    expect(model.name).toBe("hello");
    expect(deployment.status).toBe("DEPLOYING");

    const list = await admin.get("/v1/models");
    expectReferenceShape("ModelsV1", list.body);
    const byName = await admin.get("/v1/models?name=hello");
    expect(byName.body.models.map((m: { id: string }) => m.id)).toEqual([model.id]);

    const got = await admin.get(`/v1/models/${model.id}`);
    expectReferenceShape("ModelV1", got.body);
    expect(got.body.deployments_count).toBe(1);

    const deps = await admin.get(`/v1/models/${model.id}/deployments`);
    expectReferenceShape("DeploymentsV1", deps.body);
    const dep = await admin.get(`/v1/models/${model.id}/deployments/${deployment.id}`);
    expectReferenceShape("DeploymentV1", dep.body);
    const config = await admin.get(`/v1/models/${model.id}/deployments/${deployment.id}/config`);
    expectReferenceShape("DeploymentConfigResponseV1", config.body);
    expect(config.body.config.model_name).toBe("hello-js");

    const envs = await admin.get(`/v1/models/${model.id}/environments`);
    expectReferenceShape("EnvironmentsV1", envs.body);
    expect(envs.body.environments.map((e: { name: string }) => e.name)).toEqual(["production"]);
    expectError(
      await admin.get(`/v1/models/${model.id}/deployments/production`),
      404,
      "deployment_not_found",
    );
  });

  it("creates environments, updates their settings, promotes and cancels", async () => {
    const { model, deployment } = (await admin.createModel("promo")).body;
    const created = await admin.post(`/v1/models/${model.id}/environments`, {
      name: "staging",
      autoscaling_settings: { min_replica: 1, max_replica: 3 },
      promotion_settings: { promotion_cleanup_strategy: "KEEP" },
    });
    expect(created.status, JSON.stringify(created.body)).toBe(200);
    expectReferenceShape("EnvironmentV1", created.body);
    expect(created.body.autoscaling_settings).toMatchObject({ min_replica: 1, max_replica: 3 });
    expect(created.body.promotion_settings.promotion_cleanup_strategy).toBe("KEEP");

    const updated = await admin.patch(`/v1/models/${model.id}/environments/staging`, {
      promotion_settings: { redeploy_on_promotion: true },
    });
    expect(updated.status).toBe(200);
    expectReferenceShape("UpdateAutoscalingSettingsResponseV1", updated.body);
    expect(updated.body.environment.promotion_settings).toMatchObject({
      redeploy_on_promotion: true,
      promotion_cleanup_strategy: "KEEP",
    });

    const promoted = await admin.post(`/v1/models/${model.id}/environments/staging/promote`, {
      deployment_id: deployment.id,
    });
    expect(promoted.status, JSON.stringify(promoted.body)).toBe(200);
    expectReferenceShape("DeploymentV1", promoted.body);
    // redeploy_on_promotion copies the deployment.
    expect(promoted.body.id).not.toBe(deployment.id);

    const env = await admin.get(`/v1/models/${model.id}/environments/staging`);
    expectReferenceShape("EnvironmentV1", env.body);
    expect(env.body.in_progress_promotion).toMatchObject({ status: "RELEASING" });
    expect(env.body.candidate_deployment.id).toBe(promoted.body.id);

    expectError(
      await admin.post(`/v1/models/${model.id}/environments/staging/promote`, {
        deployment_id: deployment.id,
      }),
      409,
      "promotion_in_progress",
    );
    const canceled = await admin.post(`/v1/models/${model.id}/environments/staging/cancel_promotion`);
    expect(canceled.status).toBe(200);
    expectReferenceShape("CancelPromotionResponseV1", canceled.body);
    expect(canceled.body.status).toBe("CANCELED");
    const after = await admin.get(`/v1/models/${model.id}/environments/staging`);
    expect(after.body.in_progress_promotion).toBeNull();
    expect(after.body.current_deployment).toBeNull();
    const candidate = await admin.get(`/v1/models/${model.id}/deployments/${promoted.body.id}`);
    expect(candidate.body.status).toBe("INACTIVE");
    expectError(
      await admin.post(`/v1/models/${model.id}/environments/staging/cancel_promotion`),
      409,
      "no_promotion_in_progress",
    );

    const deleted = await admin.delete(`/v1/models/${model.id}/environments/staging`);
    expectReferenceShape("EnvironmentTombstoneV1", deleted.body);
    expectError(
      await admin.delete(`/v1/models/${model.id}/environments/production`),
      409,
      "environment_protected",
    );
  });

  it("applies a region restriction team-wide by name, also to environments created later", async () => {
    const a = (await admin.createModel("geo-a")).body.model;
    await admin.post(`/v1/models/${a.id}/environments`, { name: "prod-eu" });
    const patched = await admin.patch("/v1/environment_groups/prod-eu", {
      region_restriction: { region: "eu", standard_endpoint_policy: "warn" },
    });
    expect(patched.status, JSON.stringify(patched.body)).toBe(200);
    expectReferenceShape("EnvironmentGroupV1", patched.body);
    expect(patched.body.region_restriction).toEqual({ region: "eu", standard_endpoint_policy: "warn" });

    const b = (await admin.createModel("geo-b")).body.model;
    const later = await admin.post(`/v1/models/${b.id}/environments`, { name: "prod-eu" });
    expect(later.body.region_restriction).toEqual({ region: "eu", standard_endpoint_policy: "warn" });

    const groups = await admin.get("/v1/environment_groups");
    expectReferenceShape("EnvironmentGroupsV1", groups.body);
    expect(groups.body.items.map((g: { name: string }) => g.name)).toContain("prod-eu");
    const teamId = patched.body.team_id;
    const viaTeam = await admin.get(`/v1/teams/${teamId}/environment_groups/prod-eu`);
    expect(viaTeam.body).toEqual(patched.body);

    // A push straight into the regional environment runs under the restriction and is reused, not copied.
    const pushed = await admin.createDeployment(b.id, "hello-js", { environment_name: "prod-eu" });
    expect(pushed.status, JSON.stringify(pushed.body)).toBe(200);
    expect(pushed.body.deployment.region).toEqual({ slug: "eu", display_name: "European Union" });
    const env = await admin.get(`/v1/models/${b.id}/environments/prod-eu`);
    expect(env.body.candidate_deployment.id).toBe(pushed.body.deployment.id);
  });

  it("forces a redeploy when promoting an unrestricted deployment into a regional environment", async () => {
    const { model, deployment } = (await admin.createModel("forced")).body;
    await admin.patch("/v1/environment_groups/prod-uk", { region_restriction: { region: "uk" } });
    await admin.post(`/v1/models/${model.id}/environments`, { name: "prod-uk" });
    const env = await admin.get(`/v1/models/${model.id}/environments/prod-uk`);
    expect(env.body.promotion_settings.redeploy_on_promotion).toBe(false);
    const promoted = await admin.post(`/v1/models/${model.id}/environments/prod-uk/promote`, {
      deployment_id: deployment.id,
    });
    expect(promoted.status, JSON.stringify(promoted.body)).toBe(200);
    expect(promoted.body.id).not.toBe(deployment.id);
    expect(promoted.body.region.slug).toBe("uk");
  });

  it("restricts manage access to listed users and admins; inference keys are not users", async () => {
    const teamId = (await admin.get("/v1/teams")).body.teams[0].id;
    const alice = await admin.post("/v1/admin/users", {
      email: `alice-${kind}@example.com`,
      teams: [{ team_id: teamId, role: "MEMBER" }],
    });
    const bob = await admin.post("/v1/admin/users", {
      email: `bob-${kind}@example.com`,
      teams: [{ team_id: teamId, role: "MEMBER" }],
    });
    expect(alice.status, JSON.stringify(alice.body)).toBe(200);
    const { model, deployment } = (await admin.createModel("guarded")).body;
    await admin.post(`/v1/models/${model.id}/environments`, { name: "locked" });
    const restricted = await admin.patch("/v1/environment_groups/locked", {
      manage_access: { is_restricted: true, user_ids: [alice.body.user.user_id] },
    });
    expect(restricted.body.manage_access.is_restricted).toBe(true);
    expect(restricted.body.manage_access.users.map((u: { user_id: string }) => u.user_id)).toEqual([
      alice.body.user.user_id,
    ]);

    const asBob = admin.as(bob.body.api_key);
    expectError(
      await asBob.post(`/v1/models/${model.id}/environments/locked/promote`, {
        deployment_id: deployment.id,
      }),
      403,
      "environment_restricted",
    );
    expectError(
      await asBob.patch(`/v1/models/${model.id}/environments/locked`, {}),
      403,
      "environment_restricted",
    );
    expectError(
      await asBob.delete(`/v1/models/${model.id}/environments/locked`),
      403,
      "environment_restricted",
    );
    expect((await asBob.get(`/v1/models/${model.id}/environments/locked`)).status).toBe(200);
    const asAlice = admin.as(alice.body.api_key);
    expect(
      (
        await asAlice.post(`/v1/models/${model.id}/environments/locked/promote`, {
          deployment_id: deployment.id,
        })
      ).status,
    ).toBe(200);
    // Members may not change who manages, nor set regions.
    expectError(
      await asAlice.patch("/v1/environment_groups/locked", { manage_access: { is_restricted: false } }),
      403,
      "forbidden",
    );
    expectError(
      await asAlice.patch("/v1/environment_groups/locked", { region_restriction: { region: "eu" } }),
      403,
      "forbidden",
    );
  });

  it("operates regions and planes through the admin API", async () => {
    const region = await admin.post("/v1/admin/regions", { slug: "ca", display_name: "Canada" });
    expect(region.status).toBe(200);
    expectReferenceShape("RegionV1", region.body);
    expectError(
      await admin.post("/v1/admin/regions", { slug: "ca", display_name: "Canada" }),
      409,
      "region_exists",
    );
    const plane = await admin.post("/v1/admin/planes", {
      name: "ca-1",
      region: "ca",
      ingress: ["127.0.9.1:8443"],
      capacity: 4,
    });
    expect(plane.status, JSON.stringify(plane.body)).toBe(200);
    expect(plane.body.credential).toMatch(/^plane-ca-1\./);
    const planes = await admin.get("/v1/admin/planes");
    expect(planes.body.planes.map((p: { name: string }) => p.name)).toContain("ca-1");
    expectError(
      await admin.post("/v1/admin/planes", {
        name: "x-1",
        region: "nowhere",
        ingress: ["127.0.0.1:1"],
        capacity: 1,
      }),
      404,
      "region_not_found",
    );
    const rotated = await admin.post("/v1/admin/planes/ca-1/credential");
    expect(rotated.body.credential).not.toBe(plane.body.credential);
    expect((await admin.delete("/v1/admin/planes/ca-1")).body).toEqual({ name: "ca-1", deleted: true });
  });

  it("records management actions in the audit log, with before and after", async () => {
    const { model } = (await admin.createModel("audited")).body;
    await admin.post(`/v1/models/${model.id}/environments`, { name: "qa" });
    await admin.patch(`/v1/models/${model.id}/environments/qa`, { autoscaling_settings: { max_replica: 2 } });
    const log = await admin.get(`/v1/models/${model.id}/audit_logs`);
    expect(log.status).toBe(200);
    const actions = log.body.items.map((i: { action: string }) => i.action);
    expect(actions.slice(0, 4)).toEqual([
      "environment.update",
      "environment.create",
      "deployment.create",
      "model.create",
    ]);
    const update = log.body.items[0];
    expect(update.before.autoscaling.max_replica).toBe(1);
    expect(update.after.autoscaling.max_replica).toBe(2);
    expect(update.actor.user_id).toBeTruthy();
    const page = await admin.get("/v1/audit_logs?limit=2");
    expect(page.body.items).toHaveLength(2);
    expect(page.body.pagination.has_more).toBe(true);
    const next = await admin.get(`/v1/audit_logs?limit=2&cursor=${page.body.pagination.cursor}`);
    expect(next.body.items[0].id).toBeLessThan(page.body.items[1].id);
  });

  it("deletes deployments and models", async () => {
    const { model, deployment } = (await admin.createModel("doomed")).body;
    const second = (await admin.createDeployment(model.id)).body.deployment;
    const tomb = await admin.delete(`/v1/models/${model.id}/deployments/${second.id}`);
    expectReferenceShape("DeploymentTombstoneV1", tomb.body);
    expect((await admin.post(`/v1/models/${model.id}/deployments/${deployment.id}/deactivate`)).body).toEqual(
      { success: true },
    );
    expect((await admin.get(`/v1/models/${model.id}/deployments/${deployment.id}`)).body.status).toBe(
      "INACTIVE",
    );
    expect((await admin.post(`/v1/models/${model.id}/deployments/${deployment.id}/activate`)).body).toEqual({
      success: true,
    });
    const gone = await admin.delete(`/v1/models/${model.id}`);
    expectReferenceShape("ModelTombstoneV1", gone.body);
    expectError(await admin.get(`/v1/models/${model.id}`), 404, "model_not_found");
  });

  it("serves its OpenAPI document at /v1/spec", async () => {
    const spec = await admin.as(null).get("/v1/spec");
    expect(spec.status).toBe(200);
    expect(spec.body.openapi).toBe("3.1.0");
    expect(Object.keys(spec.body.paths)).toEqual(
      expect.arrayContaining(["/v1/models", "/v1/environment_groups/{env_name}", "/v1/admin/planes"]),
    );
    expect(spec.body.components.schemas.EnvironmentV1).toBeDefined();
  });
});
