// The egress policy of environment groups, end to end through the management API on both stores: who may
// set it, how it binds to deployments like the region restriction (a push starts under it, a mismatch is a
// forced redeploy, a changed group moves its environments without dropping traffic), what the planes are
// told, and each plane's reported sandbox as operators see it. Replica states are driven by real plane
// reports over HTTP, as a plane sends them.

import { execFile } from "node:child_process";
import { join } from "node:path";
import { promisify } from "node:util";
import SQLite from "better-sqlite3";
import { Kysely, Migrator, PostgresDialect, SqliteDialect } from "kysely";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ERRORS } from "../../src/core/errors.ts";
import { migrationProvider } from "../../src/store/migrations.ts";
import { Store } from "../../src/store/store.ts";
import { BIN } from "../support/cluster.ts";
import {
  type ApiClient,
  type Response,
  startTestControl,
  type TestControl,
  tempDir,
} from "../support/control.ts";
import { createTestDatabase, STORE_KINDS } from "../support/databases.ts";
import { expectError, expectReferenceShape } from "../support/reference.ts";

const run = promisify(execFile);

interface Desired {
  id: string;
  deployment_id: string;
  egress: "allow" | "deny";
}

describe.each(STORE_KINDS)("egress policy on %s", (kind) => {
  let t: TestControl;
  let admin: ApiClient;
  let teamId: string;
  let planeToken: string;

  const asPlane = () => admin.as(null);
  const planeHeaders = () => ({ authorization: `Bearer ${planeToken}` });

  async function snapshot(): Promise<any> {
    const res = await asPlane().call(
      "GET",
      "/v1/internal/planes/eu-1/snapshot?wait=0",
      undefined,
      planeHeaders(),
    );
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    return res.body;
  }

  async function sendReport(body: Record<string, unknown>): Promise<Response> {
    return asPlane().call("POST", "/v1/internal/planes/eu-1/report", body, {
      ...planeHeaders(),
      "content-type": "application/json",
    });
  }

  /**
   * Reports every replica the plane is asked to run: READY unless `states` names its deployment. A replica
   * left out of a report is one the plane no longer runs, so every report names them all.
   */
  async function report(states: Record<string, string> = {}, extra: Record<string, unknown> = {}) {
    const snap = await snapshot();
    const replicas = (snap.replicas as Desired[]).map((r) => ({
      id: r.id,
      deployment_id: r.deployment_id,
      state: states[r.deployment_id] ?? "READY",
      message: null,
      restarts: 0,
    }));
    const res = await sendReport({ revision: snap.revision, replicas, request_counts: [], ...extra });
    expect(res.status, JSON.stringify(res.body)).toBe(200);
  }

  const desiredOf = async (deploymentId: string): Promise<Desired[]> =>
    ((await snapshot()).replicas as Desired[]).filter((r) => r.deployment_id === deploymentId);

  async function routeOf(modelId: string, env: string): Promise<{ deployment_id: string; ready: string[] }> {
    const model = (await snapshot()).models.find((m: { id: string }) => m.id === modelId);
    const route = model.environments.find((e: { name: string }) => e.name === env);
    const dep = model.deployments.find((d: { id: string }) => d.id === route.deployment_id);
    return { deployment_id: route.deployment_id, ready: dep?.ready_planes ?? [] };
  }

  const env = async (modelId: string, name: string) =>
    (await admin.get(`/v1/models/${modelId}/environments/${name}`)).body;
  const deployment = async (modelId: string, id: string) =>
    (await admin.get(`/v1/models/${modelId}/deployments/${id}`)).body;

  /** A model serving `envName` from an ACTIVE deployment its plane reports READY. */
  async function serving(name: string, envName: string) {
    const created = await admin.createModel(name, "hello-js", { environment_name: envName });
    expect(created.status, JSON.stringify(created.body)).toBe(200);
    await report();
    const e = await env(created.body.model.id, envName);
    expect(e.current_deployment).toMatchObject({ id: created.body.deployment.id, status: "ACTIVE" });
    return { modelId: created.body.model.id as string, deploymentId: created.body.deployment.id as string };
  }

  async function auditActions(modelId: string): Promise<Array<{ action: string; after: any }>> {
    return (await admin.get(`/v1/models/${modelId}/audit_logs?limit=100`)).body.items;
  }

  beforeAll(async () => {
    t = await startTestControl(kind);
    admin = t.admin;
    teamId = (await admin.get("/v1/teams")).body.teams[0].id;
    const plane = await admin.post("/v1/admin/planes", {
      name: "eu-1",
      region: "eu",
      ingress: ["127.0.2.1:8443"],
      capacity: 64,
      global_ingress: true,
    });
    expect(plane.status, JSON.stringify(plane.body)).toBe(200);
    planeToken = plane.body.credential;
  });
  afterAll(async () => t?.stop());

  it("sets deny on a group before any environment has its name", async () => {
    expectError(await admin.get("/v1/environment_groups/sealed"), 404, "environment_group_not_found");
    const patched = await admin.patch("/v1/environment_groups/sealed", { egress: "deny" });
    expect(patched.status, JSON.stringify(patched.body)).toBe(200);
    expectReferenceShape("EnvironmentGroupV1", patched.body);
    expect(patched.body).toMatchObject({ name: "sealed", egress: "deny", region_restriction: null });
    expect((await admin.get("/v1/environment_groups/sealed")).body).toEqual(patched.body);
    expect((await admin.get(`/v1/teams/${teamId}/environment_groups/sealed`)).body).toEqual(patched.body);
    const list = (await admin.get("/v1/environment_groups")).body;
    expectReferenceShape("EnvironmentGroupsV1", list);
    expect(list.items.find((g: { name: string }) => g.name === "sealed").egress).toBe("deny");

    // Setting the policy leaves the region restriction alone, and the restriction leaves the policy alone.
    const restricted = await admin.patch("/v1/environment_groups/sealed", {
      region_restriction: { region: "eu" },
    });
    expect(restricted.body).toMatchObject({ egress: "deny", region_restriction: { region: "eu" } });
    const lifted = await admin.patch("/v1/environment_groups/sealed", { region_restriction: null });
    expect(lifted.body).toMatchObject({ egress: "deny", region_restriction: null });

    const audit = (await admin.get("/v1/audit_logs?limit=3")).body.items;
    expect(audit.map((i: { action: string }) => i.action)).toEqual([
      "environment_group.update",
      "environment_group.update",
      "environment_group.update",
    ]);
    expect(audit[2].after).toMatchObject({ egress: "deny" });
    expect(audit[2].before).toBeNull();
  });

  it("starts a push into a deny group under deny, reuses it, and tells the plane", async () => {
    await admin.patch("/v1/environment_groups/pushed-sealed", { egress: "deny" });
    const created = await admin.createModel("pushed", "hello-js", { environment_name: "pushed-sealed" });
    expect(created.status, JSON.stringify(created.body)).toBe(200);
    const { model, deployment: d } = created.body;
    expect(d.egress).toBe("deny");
    // A group nobody configured has the default.
    const production = await admin.get("/v1/environment_groups/production");
    expect(production.status, JSON.stringify(production.body)).toBe(200);
    expect(production.body.egress).toBe("allow");
    expectReferenceShape("DeploymentV1", d);
    // Started under the group's policy, so the promotion that follows reuses it.
    expect((await env(model.id, "pushed-sealed")).candidate_deployment.id).toBe(d.id);
    const desired = await desiredOf(d.id);
    expect(desired).toHaveLength(1);
    expect(desired[0]!.egress).toBe("deny");

    // A push that names no environment (or an allow group) runs with the network.
    const plain = await admin.createDeployment(model.id);
    expect(plain.body.deployment.egress).toBe("allow");
    expect((await desiredOf(plain.body.deployment.id)).map((r) => r.egress)).toEqual(["allow"]);
    await report();
  });

  it("forces a redeploy when promoting a deployment that runs under the other policy", async () => {
    const { modelId, deploymentId } = await serving("promoted", "open-shop");
    await admin.patch("/v1/environment_groups/closed-shop", { egress: "deny" });
    await admin.post(`/v1/models/${modelId}/environments`, { name: "closed-shop" });
    expect((await env(modelId, "closed-shop")).promotion_settings.redeploy_on_promotion).toBe(false);

    const promoted = await admin.post(`/v1/models/${modelId}/environments/closed-shop/promote`, {
      deployment_id: deploymentId,
    });
    expect(promoted.status, JSON.stringify(promoted.body)).toBe(200);
    expect(promoted.body.id).not.toBe(deploymentId);
    expect(promoted.body.egress).toBe("deny");
    const audit = await auditActions(modelId);
    expect(audit[0]).toMatchObject({ action: "environment.promote", after: { reason: "egress" } });
    // The source keeps serving where it served, still with the network.
    expect((await deployment(modelId, deploymentId)).egress).toBe("allow");
    expect((await desiredOf(promoted.body.id)).map((r) => r.egress)).toEqual(["deny"]);
    await report();
    expect((await env(modelId, "closed-shop")).current_deployment.id).toBe(promoted.body.id);

    // And back: the deny deployment promoted into an allow group is copied again, never reused.
    const back = await admin.post(`/v1/models/${modelId}/environments/open-shop/promote`, {
      deployment_id: promoted.body.id,
    });
    expect(back.status, JSON.stringify(back.body)).toBe(200);
    expect(back.body.id).not.toBe(promoted.body.id);
    expect(back.body.egress).toBe("allow");
    await report();
  });

  it("moves a group's serving environments to copies under deny and back, switching only when ready", async () => {
    const a = await serving("shop-a", "shop");
    const b = await serving("shop-b", "shop");
    // b cleans up by deactivating; a by the default, scaling to zero.
    await admin.patch(`/v1/models/${b.modelId}/environments/shop`, {
      promotion_settings: { promotion_cleanup_strategy: "DEACTIVATE" },
    });

    let current = { a: a.deploymentId, b: b.deploymentId };
    for (const policy of ["deny", "allow", "deny"] as const) {
      const patched = await admin.patch("/v1/environment_groups/shop", { egress: policy });
      expect(patched.status, JSON.stringify(patched.body)).toBe(200);
      expect(patched.body.egress).toBe(policy);

      const candidates: Record<"a" | "b", string> = { a: "", b: "" };
      for (const [key, m] of [
        ["a", a],
        ["b", b],
      ] as const) {
        const e = await env(m.modelId, "shop");
        // Still served by the deployment under the old policy, the copy under the new one in flight.
        expect(e.current_deployment.id).toBe(current[key]);
        expect(e.in_progress_promotion).toMatchObject({ status: "RELEASING" });
        expect(e.candidate_deployment.id).not.toBe(current[key]);
        expect(e.candidate_deployment.egress).toBe(policy);
        candidates[key] = e.candidate_deployment.id;
        const audit = await auditActions(m.modelId);
        expect(audit[0]).toMatchObject({
          action: "environment.migrate_egress",
          after: {
            source_deployment_id: current[key],
            candidate_deployment_id: e.candidate_deployment.id,
            reason: "egress",
          },
        });
        expect((await desiredOf(e.candidate_deployment.id)).map((r) => r.egress)).toEqual([policy]);
      }

      // The copies' replicas are starting: nothing switches, the old replicas keep serving.
      await report({ [candidates.a]: "STARTING", [candidates.b]: "STARTING" });
      for (const [key, m] of [
        ["a", a],
        ["b", b],
      ] as const) {
        expect((await env(m.modelId, "shop")).current_deployment.id).toBe(current[key]);
        expect(await routeOf(m.modelId, "shop")).toEqual({ deployment_id: current[key], ready: ["eu-1"] });
      }

      // Ready: each environment switches, and its previous deployment goes per its cleanup strategy.
      await report();
      for (const [key, m, fate] of [
        ["a", a, "SCALED_TO_ZERO"],
        ["b", b, "INACTIVE"],
      ] as const) {
        const e = await env(m.modelId, "shop");
        expect(e.current_deployment).toMatchObject({ id: candidates[key], status: "ACTIVE", egress: policy });
        expect(e.in_progress_promotion).toBeNull();
        expect(await routeOf(m.modelId, "shop")).toEqual({ deployment_id: candidates[key], ready: ["eu-1"] });
        expect((await deployment(m.modelId, current[key])).status).toBe(fate);
        expect(await desiredOf(current[key])).toEqual([]);
      }
      current = candidates;
    }

    // Setting the policy a group already has moves nothing.
    await admin.patch("/v1/environment_groups/shop", { egress: "deny" });
    expect((await env(a.modelId, "shop")).in_progress_promotion).toBeNull();
    expect((await env(a.modelId, "shop")).current_deployment.id).toBe(current.a);
  });

  it("cancels a migration in flight when the policy changes back before the copy is ready", async () => {
    const m = await serving("fickle", "fickle");
    await admin.patch("/v1/environment_groups/fickle", { egress: "deny" });
    const copy = (await env(m.modelId, "fickle")).candidate_deployment.id as string;
    await admin.patch("/v1/environment_groups/fickle", { egress: "allow" });

    const e = await env(m.modelId, "fickle");
    // The running deployment already runs with the network: nothing to redeploy, the copy is stopped.
    expect(e.in_progress_promotion).toBeNull();
    expect(e.current_deployment.id).toBe(m.deploymentId);
    expect((await deployment(m.modelId, copy)).status).toBe("INACTIVE");
    expect(await desiredOf(copy)).toEqual([]);
    await report();
    expect((await env(m.modelId, "fickle")).current_deployment.id).toBe(m.deploymentId);
  });

  it("moves a group into its region and under deny with one copy when both change at once", async () => {
    const m = await serving("both", "both-eu");
    const patched = await admin.patch("/v1/environment_groups/both-eu", {
      region_restriction: { region: "eu" },
      egress: "deny",
    });
    expect(patched.status, JSON.stringify(patched.body)).toBe(200);
    const e = await env(m.modelId, "both-eu");
    expect(e.candidate_deployment).toMatchObject({ egress: "deny", region: { slug: "eu" } });
    const promotions = (await auditActions(m.modelId)).filter((i) =>
      i.action.startsWith("environment.migrate"),
    );
    expect(promotions).toHaveLength(1);
    expect(promotions[0]).toMatchObject({
      action: "environment.migrate_region",
      after: { reason: "region" },
    });
    await report();
    expect((await env(m.modelId, "both-eu")).current_deployment).toMatchObject({
      id: e.candidate_deployment.id,
      egress: "deny",
    });

    // Only the policy changes back: the copy stays in the region.
    await admin.patch("/v1/environment_groups/both-eu", { egress: "allow" });
    const back = await env(m.modelId, "both-eu");
    expect(back.candidate_deployment).toMatchObject({ egress: "allow", region: { slug: "eu" } });
    expect((await auditActions(m.modelId))[0]).toMatchObject({
      action: "environment.migrate_egress",
      after: { reason: "egress" },
    });
    await report();
  });

  describe("refusals leave everything as it was", () => {
    let users: Record<string, ApiClient>;
    let guarded: { modelId: string; deploymentId: string };

    /** Everything a refused PATCH must leave as it was. */
    async function state() {
      const db = t.control.ctx.store.db;
      const groups = await db
        .selectFrom("environment_groups")
        .selectAll()
        .orderBy("team_id")
        .orderBy("name")
        .execute();
      const deployments = await db
        .selectFrom("deployments")
        .select(["id", "status", "egress"])
        .orderBy("id")
        .execute();
      const promotions = await db.selectFrom("promotions").select(["id", "status"]).orderBy("id").execute();
      const audit = (await admin.get("/v1/audit_logs?limit=1000")).body.items.length;
      return { groups, deployments, promotions, audit, revision: await t.control.ctx.store.revision() };
    }

    async function refused(send: () => Promise<Response>, status: number, code: keyof typeof ERRORS) {
      const before = await state();
      const res = await send();
      expectError(res, status, code);
      expect(ERRORS[code].status).toBe(status);
      expect(await state(), `state after ${code}`).toEqual(before);
      return res;
    }

    beforeAll(async () => {
      guarded = await serving("guarded", "guarded");
      const user = async (email: string, team: string, role: string) => {
        const res = await admin.post("/v1/admin/users", { email, teams: [{ team_id: team, role }] });
        expect(res.status, JSON.stringify(res.body)).toBe(200);
        return admin.as(res.body.api_key);
      };
      const key = async (type: string) => admin.as((await admin.post("/v1/api_keys", { type })).body.api_key);
      const other = (await admin.post("/v1/admin/teams", { name: `Other ${kind}` })).body.id as string;
      users = {
        teamAdmin: await user(`team-admin-${kind}@example.com`, teamId, "TEAM_ADMIN"),
        member: await user(`member-${kind}@example.com`, teamId, "MEMBER"),
        manageAll: await key("WORKSPACE_MANAGE_ALL"),
        invoke: await key("WORKSPACE_INVOKE"),
        otherTeamAdmin: await user(`other-admin-${kind}@example.com`, other, "TEAM_ADMIN"),
      };
    });

    it("refuses everyone but org admins, on both forms of the route", async () => {
      const group = "/v1/environment_groups/guarded";
      const teamGroup = `/v1/teams/${teamId}/environment_groups/guarded`;
      for (const [who, client] of Object.entries(users)) {
        for (const policy of ["deny", "allow"]) {
          if (who === "otherTeamAdmin") {
            // Their default team is their own: the policy is still an operator's. Ours they cannot see.
            await refused(() => client.patch(group, { egress: policy }), 403, "forbidden");
            await refused(() => client.patch(teamGroup, { egress: policy }), 404, "team_not_found");
            continue;
          }
          await refused(() => client.patch(group, { egress: policy }), 403, "forbidden");
          await refused(() => client.patch(teamGroup, { egress: policy }), 403, "forbidden");
        }
      }
      // Even with something they may change in the same body, nothing of it is applied.
      await refused(
        () =>
          users["teamAdmin"]!.patch(group, {
            manage_access: { is_restricted: true, user_ids: [] },
            egress: "deny",
          }),
        403,
        "forbidden",
      );
      expect((await env(guarded.modelId, "guarded")).current_deployment.egress).toBe("allow");
    });

    it("refuses bad values with 400, naming the field", async () => {
      for (const bad of ["block", "DENY", "", null, 1, true, ["deny"], { policy: "deny" }]) {
        const res = await refused(
          () => admin.patch("/v1/environment_groups/guarded", { egress: bad }),
          400,
          "invalid_request",
        );
        expect(res.body.error, JSON.stringify(bad)).toContain("egress");
      }
      // A typo is an unknown field, not a silently ignored one.
      const typo = await refused(
        () => admin.patch("/v1/environment_groups/guarded", { egres: "deny" }),
        400,
        "invalid_request",
      );
      expect(JSON.stringify(typo.body.detail)).toContain("egres");
      await refused(
        () => admin.patch("/v1/environment_groups/Not_A_Name", { egress: "deny" }),
        400,
        "invalid_environment_name",
      );
      await refused(
        () => admin.as(null).patch("/v1/environment_groups/guarded", { egress: "deny" }),
        401,
        "unauthorized",
      );
    });
  });

  it("shows each plane's reported sandbox to operators; a plane that never reported shows null", async () => {
    const quiet = await admin.post("/v1/admin/planes", {
      name: "eu-2",
      region: "eu",
      ingress: ["127.0.2.2:8443"],
      capacity: 0,
    });
    expect(quiet.status).toBe(200);
    const sandboxes = async () =>
      Object.fromEntries(
        ((await admin.get("/v1/admin/planes")).body.planes as Array<{ name: string; sandbox: unknown }>).map(
          (p) => [p.name, p.sandbox],
        ),
      );
    // eu-1 has reported, but without a sandbox: like a plane that never did.
    expect(await sandboxes()).toEqual({ "eu-1": null, "eu-2": null });

    const warning = "--sandbox none: replicas run without a sandbox, with the plane's user and network.";
    await report({}, { sandbox: { mode: "none", detail: warning } });
    expect(await sandboxes()).toEqual({ "eu-1": { mode: "none", detail: warning }, "eu-2": null });
    // A report without it leaves what was reported.
    await report();
    expect((await sandboxes())["eu-1"]).toEqual({ mode: "none", detail: warning });
    await report({}, { sandbox: { mode: "bwrap", detail: null } });
    expect((await sandboxes())["eu-1"]).toEqual({ mode: "bwrap", detail: null });

    // A malformed sandbox is refused whole, and what was stored stays.
    for (const sandbox of [
      { mode: "chroot", detail: null },
      { mode: "none" },
      { mode: "none", detail: "x".repeat(4097) },
    ]) {
      const res = await sendReport({ revision: 0, replicas: [], request_counts: [], sandbox });
      expectError(res, 400, "invalid_request");
    }
    expect((await sandboxes())["eu-1"]).toEqual({ mode: "bwrap", detail: null });

    // The operator's view only.
    const member = await admin.post("/v1/admin/users", {
      email: `planes-${kind}@example.com`,
      teams: [{ team_id: teamId, role: "TEAM_ADMIN" }],
    });
    expectError(await admin.as(member.body.api_key).get("/v1/admin/planes"), 403, "forbidden");
  });

  it("sets the policy and shows the sandbox through the CLI", async () => {
    const cwd = tempDir();
    const cli = async (...args: string[]) => {
      const env: NodeJS.ProcessEnv = { ...process.env, XDG_CONFIG_HOME: join(cwd, "config") };
      for (const k of ["MERIDIAN_API_URL", "MERIDIAN_API_KEY", "MERIDIAN_DATA_DIR"]) delete env[k];
      try {
        const { stdout, stderr } = await run(
          process.execPath,
          [BIN, ...args, "--api-url", t.control.url, "--api-key", t.control.adminKey ?? ""],
          { cwd, env, timeout: 60_000 },
        );
        return { code: 0, stdout, stderr };
      } catch (err) {
        const e = err as { code: number; stdout: string; stderr: string };
        return { code: e.code, stdout: e.stdout, stderr: e.stderr };
      }
    };

    const sealed = await cli("admin", "restrict", "-e", "cli-sealed", "--egress", "deny");
    expect(sealed.code, sealed.stderr).toBe(0);
    expect(sealed.stdout).toContain("cli-sealed's replicas have no network but loopback (egress deny)");
    expect((await admin.get("/v1/environment_groups/cli-sealed")).body).toMatchObject({
      egress: "deny",
      region_restriction: null,
    });
    // --region alone leaves the policy; --egress alone leaves the region.
    expect((await cli("admin", "restrict", "-e", "cli-sealed", "--region", "eu")).code).toBe(0);
    expect((await cli("admin", "restrict", "-e", "cli-sealed", "--egress", "allow")).code).toBe(0);
    expect((await admin.get("/v1/environment_groups/cli-sealed")).body).toMatchObject({
      egress: "allow",
      region_restriction: { region: "eu", standard_endpoint_policy: "allow" },
    });
    const json = await cli("admin", "restrict", "-e", "cli-sealed", "--egress", "deny", "--json");
    expect(JSON.parse(json.stdout)).toMatchObject({ name: "cli-sealed", egress: "deny" });

    for (const [args, message] of [
      [["--egress", "block"], "--egress takes allow or deny"],
      [[], "give --region, --egress or both"],
      [
        ["--egress", "deny", "--standard-endpoint-policy", "warn"],
        "--standard-endpoint-policy goes with --region",
      ],
    ] as const) {
      const res = await cli("admin", "restrict", "-e", "cli-sealed", ...args);
      expect(res.code).not.toBe(0);
      expect(res.stderr).toContain(message);
    }
    expect((await admin.get("/v1/environment_groups/cli-sealed")).body.egress).toBe("deny");

    const detail = "bwrap failed its self-test: bwrap: No permissions to create new namespace";
    await report({}, { sandbox: { mode: "unavailable", detail } });
    const planes = await cli("admin", "planes", "list");
    expect(planes.code, planes.stderr).toBe(0);
    const [header, ...rows] = planes.stdout.trimEnd().split("\n");
    expect(header).toMatch(
      /^NAME\s+REGION\s+INGRESS\s+CAPACITY\s+GLOBAL_INGRESS\s+REPLICAS\s+SANDBOX\s+LAST_SEEN_AT$/,
    );
    expect(rows.find((r) => r.startsWith("eu-1 "))).toMatch(/\sunavailable\s/);
    expect(rows.find((r) => r.startsWith("eu-2 "))).toMatch(/\s-\s/);
    expect(rows).toContain(`eu-1: sandbox unavailable: ${detail}`);
    // About nine CLI processes, each a Node start: slow on a loaded machine.
  }, 180_000);
});

describe.each(STORE_KINDS)("migration 0003_egress_sandbox on %s", (kind) => {
  it("gives existing groups and deployments allow, and existing planes no sandbox", async () => {
    const database = await createTestDatabase(kind);
    try {
      const file = join(database.dir, "meridian.db");
      const db = new Kysely<any>({
        dialect:
          kind === "sqlite"
            ? new SqliteDialect({ database: new SQLite(file) })
            : new PostgresDialect({ pool: new pg.Pool({ connectionString: database.url!, max: 1 }) }),
      });
      const migrator = new Migrator({ db, provider: migrationProvider(kind) });
      const before = await migrator.migrateTo("0003_artifact_chunks");
      expect(before.error).toBeUndefined();
      const now = new Date().toISOString();
      await db
        .insertInto("teams")
        .values({ id: "team0001", name: "T", is_default: 1, created_at: now })
        .execute();
      await db.insertInto("regions").values({ slug: "eu", display_name: "EU", created_at: now }).execute();
      await db
        .insertInto("planes")
        .values({
          name: "eu-1",
          region: "eu",
          ingress: "[]",
          capacity: 1,
          credential_hash: "h",
          created_at: now,
        })
        .execute();
      await db
        .insertInto("models")
        .values({ id: "model001", team_id: "team0001", name: "m", created_at: now })
        .execute();
      await db
        .insertInto("deployments")
        .values({
          id: "dep0001",
          model_id: "model001",
          name: "d",
          status: "ACTIVE",
          artifact_key: "k",
          config: "{}",
          region: "eu",
          autoscaling: "{}",
          created_at: now,
          updated_at: now,
        })
        .execute();
      await db
        .insertInto("environment_groups")
        .values({
          team_id: "team0001",
          name: "prod-eu",
          manage_users: "[]",
          region: "eu",
          standard_endpoint_policy: "warn",
          created_at: now,
          updated_at: now,
        })
        .execute();
      await db.destroy();

      const store = await Store.open(
        kind === "sqlite" ? { kind, file } : { kind, url: database.url!, poolSize: 1 },
      );
      try {
        expect(await store.db.selectFrom("deployments").select(["id", "egress", "region"]).execute()).toEqual(
          [{ id: "dep0001", egress: "allow", region: "eu" }],
        );
        expect(await store.db.selectFrom("environment_groups").select(["name", "egress"]).execute()).toEqual([
          { name: "prod-eu", egress: "allow" },
        ]);
        expect(
          await store.db.selectFrom("planes").select(["name", "sandbox_mode", "sandbox_detail"]).execute(),
        ).toEqual([{ name: "eu-1", sandbox_mode: null, sandbox_detail: null }]);
      } finally {
        await store.close();
      }
    } finally {
      await database.drop();
    }
  });
});
