// Security of the management API, route by route. The route list comes from GET /v1/spec, so a route
// added to the table is covered by the shared auth checks without touching this file; a route that takes
// a JSON body also needs an example body below (a test fails until it has one).

import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ERRORS } from "../../src/core/errors.ts";
import {
  type ApiClient,
  NEW_MODEL_PUSH,
  packExample,
  startTestControl,
  type TestControl,
} from "../support/control.ts";
import { expectError } from "../support/reference.ts";

interface SpecRoute {
  method: string;
  /** OpenAPI template, e.g. /v1/models/{model_id}. */
  path: string;
  hasBody: boolean;
  raw: boolean;
}

const label = (r: SpecRoute) => `${r.method} ${r.path}`;

function fill(template: string, values: Ids | Record<string, string>): string {
  return template.replace(/\{(\w+)\}/g, (_, name: string) => {
    const value = (values as Record<string, string>)[name];
    if (value === undefined) throw new Error(`no value for path parameter {${name}} in ${template}`);
    return value;
  });
}

/** Bodies that pass schema validation, so a request reaches the handler's own checks. */
function validBodies(ids: Ids): Record<string, unknown> {
  const source = {
    kind: "model_archive",
    name: "intruder",
    s3_key: ids.key,
    deployment: { config: {} },
  };
  return {
    "POST /v1/api_keys": { type: "WORKSPACE_INVOKE", name: "probe" },
    "POST /v1/teams/{team_id}/api_keys": { type: "WORKSPACE_INVOKE", name: "probe" },
    "POST /v1/prepare_model_upload": NEW_MODEL_PUSH,
    "POST /v1/models": { source },
    "POST /v1/teams/{team_id}/models": { source },
    "POST /v1/models/{model_id}/deployments": {
      source: { kind: "model_archive", s3_key: ids.key, deployment: { config: {} } },
    },
    "PATCH /v1/models/{model_id}/deployments/{deployment_id}": { name: "renamed" },
    "PATCH /v1/models/{model_id}/deployments/{deployment_id}/autoscaling_settings": { max_replica: 3 },
    "POST /v1/models/{model_id}/deployments/{deployment_id}/promote": {},
    "POST /v1/models/{model_id}/deployments/{deployment_id}/logs": { limit: 10 },
    "POST /v1/models/{model_id}/environments": { name: "intruder" },
    "PATCH /v1/models/{model_id}/environments/{env_name}": {
      autoscaling_settings: { max_replica: 3 },
    },
    "POST /v1/models/{model_id}/environments/{env_name}/promote": { deployment_id: ids.deployment_id },
    "PATCH /v1/environment_groups/{env_name}": { manage_access: { is_restricted: true, user_ids: [] } },
    "PATCH /v1/teams/{team_id}/environment_groups/{env_name}": {
      manage_access: { is_restricted: true, user_ids: [] },
    },
    "POST /v1/admin/regions": { slug: "zz", display_name: "Nowhere" },
    "POST /v1/admin/planes": { name: "zz-1", region: "us", ingress: ["127.0.0.1:1"], capacity: 1 },
    "PATCH /v1/admin/planes/{name}": { capacity: 9 },
    "POST /v1/admin/teams": { name: "Intruders" },
    "POST /v1/admin/users": { email: "intruder@example.com" },
    "POST /v1/internal/planes/{name}/report": { revision: 0, replicas: [], request_counts: [] },
    "POST /v1/internal/planes/{name}/wake": {
      deployment_id: ids.deployment_id,
      load: { epoch: "2026-01-01T00:00:00.000Z", at: "2026-01-01T00:00:00.000Z", deployments: [] },
    },
    "POST /v1/secrets": { name: "probe", value: "probe-value" },
    "POST /v1/teams/{team_id}/secrets": { name: "probe", value: "probe-value" },
  };
}

interface Ids {
  team_id: string;
  model_id: string;
  deployment_id: string;
  env_name: string;
  user_id: string;
  api_key_prefix: string;
  /** An upload target (s3_key) of team A, for PUT /v1/artifacts/{key}. */
  key: string;
  name: string;
  sha256: string;
  /** A secret of team A. */
  secret_name: string;
  /** A replica placed on plane A. */
  replica_id: string;
  /** A webhook secret of team A. */
  webhook_secret_id: string;
}

/** Ids that name nothing: a request with them must not change anything. */
const NOWHERE: Ids = {
  team_id: "zzzzzzzz",
  model_id: "zzzzzzzz",
  deployment_id: "zzzzzzz",
  env_name: "nowhere",
  user_id: "zzzzzzzz",
  api_key_prefix: "zzzzzzzz",
  key: "uploads/zzzzzzzz/nothing.tgz",
  name: "nowhere",
  sha256: "0".repeat(64),
  secret_name: "nowhere",
  replica_id: "nowhere",
  webhook_secret_id: "nowhere",
};

describe("management API security", () => {
  let t: TestControl;
  let admin: ApiClient;
  let routes: SpecRoute[];
  let internalRoutes: SpecRoute[];
  let a: Ids;
  let archive: Buffer;
  /** Team B: its team admin (personal key) and a workspace key that can manage everything in team B. */
  let teamB: { id: string; personal: ApiClient; workspace: ApiClient; modelId: string };
  /** Team A keys of the categories that may not manage. */
  const category: Record<string, ApiClient> = {};
  /** A team A member and a team A admin who are not org admins. */
  let member: ApiClient;
  let teamAdmin: ApiClient;
  let planes: { a: string; b: string; aCredential: string; bCredential: string };

  async function request(client: ApiClient, route: SpecRoute, ids: Ids, body?: unknown) {
    const path = fill(route.path, ids);
    if (route.raw) {
      return client.call(route.method, path, archive, { "content-type": "application/gzip" });
    }
    if (!route.hasBody) return client.call(route.method, path, route.method === "POST" ? {} : undefined);
    const value = body ?? validBodies(ids)[label(route)];
    if (value === undefined) throw new Error(`no example body for ${label(route)}`);
    return client.call(route.method, path, value);
  }

  beforeAll(async () => {
    t = await startTestControl("sqlite");
    admin = t.admin;
    archive = await packExample("hello-js");

    const spec = (await admin.as(null).get("/v1/spec")).body as {
      paths: Record<string, Record<string, { requestBody?: { content: Record<string, unknown> } }>>;
    };
    const all = Object.entries(spec.paths).flatMap(([path, ops]) =>
      Object.entries(ops).map(([method, op]) => ({
        method: method.toUpperCase(),
        path,
        hasBody: op.requestBody?.content["application/json"] !== undefined,
        raw: op.requestBody?.content["application/gzip"] !== undefined,
      })),
    );
    routes = all.filter(
      (r) => !r.path.startsWith("/v1/internal/") && !["/v1/spec", "/healthz"].includes(r.path),
    );
    internalRoutes = all.filter((r) => r.path.startsWith("/v1/internal/"));

    // Team A (the default team): a model with a deployment, a custom environment, keys, an upload target.
    const teamA = (await admin.get("/v1/teams")).body.teams[0].id as string;
    const created = await admin.createModel("secret-a");
    expect(created.status).toBe(200);
    const modelId = created.body.model.id as string;
    expect((await admin.post(`/v1/models/${modelId}/environments`, { name: "staging" })).status).toBe(200);
    const memberRes = await admin.post("/v1/admin/users", {
      email: "member-a@example.com",
      teams: [{ team_id: teamA, role: "MEMBER" }],
    });
    const teamAdminRes = await admin.post("/v1/admin/users", {
      email: "team-admin-a@example.com",
      teams: [{ team_id: teamA, role: "TEAM_ADMIN" }],
    });
    member = admin.as(memberRes.body.api_key);
    teamAdmin = admin.as(teamAdminRes.body.api_key);
    const workspaceKey = await admin.post(`/v1/teams/${teamA}/api_keys`, { type: "WORKSPACE_MANAGE_ALL" });
    for (const type of ["WORKSPACE_INVOKE", "WORKSPACE_EXPORT_METRICS", "WORKSPACE_MANAGE_API_KEYS"]) {
      const res = await admin.post(`/v1/teams/${teamA}/api_keys`, { type, name: type.toLowerCase() });
      expect(res.status, JSON.stringify(res.body)).toBe(200);
      category[type] = admin.as(res.body.api_key);
    }
    const webhookSecret = await admin.post(`/v1/teams/${teamA}/webhook_secrets`);
    expect(webhookSecret.status, JSON.stringify(webhookSecret.body)).toBe(200);
    const prepared = await admin.post("/v1/prepare_model_upload", NEW_MODEL_PUSH);
    const artifacts = await t.control.ctx.store.db
      .selectFrom("artifacts")
      .select("sha256")
      .where("state", "=", "STORED")
      .executeTakeFirstOrThrow();
    a = {
      team_id: teamA,
      model_id: modelId,
      deployment_id: created.body.deployment.id,
      env_name: "staging",
      user_id: memberRes.body.user.user_id,
      api_key_prefix: (workspaceKey.body.api_key as string).split(".")[0]!,
      key: prepared.body.s3_key,
      name: "plane-a",
      sha256: artifacts.sha256!,
      secret_name: "a-secret",
      replica_id: "",
      webhook_secret_id: webhookSecret.body.id as string,
    };
    expect((await admin.post("/v1/secrets", { name: "a-secret", value: "a-value" })).status).toBe(200);

    // Team B, with its own admin, workspace key and model.
    const team = await admin.post("/v1/admin/teams", { name: "Team B" });
    expect(team.status, JSON.stringify(team.body)).toBe(200);
    const user = await admin.post("/v1/admin/users", {
      email: "admin-b@example.com",
      teams: [{ team_id: team.body.id, role: "TEAM_ADMIN" }],
    });
    expect(user.status, JSON.stringify(user.body)).toBe(200);
    const personal = admin.as(user.body.api_key);
    const ws = await personal.post(`/v1/teams/${team.body.id}/api_keys`, { type: "WORKSPACE_MANAGE_ALL" });
    expect(ws.status, JSON.stringify(ws.body)).toBe(200);
    const modelB = await personal.createModel("secret-b");
    expect(modelB.status, JSON.stringify(modelB.body)).toBe(200);
    teamB = {
      id: team.body.id,
      personal,
      workspace: admin.as(ws.body.api_key),
      modelId: modelB.body.model.id,
    };

    const planeA = await admin.post("/v1/admin/planes", {
      name: "plane-a",
      region: "us",
      ingress: ["127.0.0.1:1"],
      // Room for the models' replicas: a plane may download only the packages placed on it.
      capacity: 8,
    });
    const planeB = await admin.post("/v1/admin/planes", {
      name: "plane-b",
      region: "eu",
      ingress: ["127.0.0.1:2"],
      capacity: 0,
    });
    planes = {
      a: "plane-a",
      b: "plane-b",
      aCredential: planeA.body.credential,
      bCredential: planeB.body.credential,
    };
    a.replica_id = (
      await t.control.ctx.store.db
        .selectFrom("replicas")
        .select("id")
        .where("plane", "=", planes.a)
        .executeTakeFirstOrThrow()
    ).id;
  });
  afterAll(async () => t?.stop());

  it("derives a non-trivial route list from /v1/spec, with an example body for every JSON route", () => {
    expect(routes.length).toBeGreaterThan(40);
    expect(internalRoutes.map(label)).toEqual(
      expect.arrayContaining([
        "GET /v1/internal/planes/{name}/snapshot",
        "POST /v1/internal/planes/{name}/report",
      ]),
    );
    const bodies = validBodies(NOWHERE);
    for (const r of [...routes, ...internalRoutes].filter((r) => r.hasBody)) {
      expect(bodies[label(r)], `example body for ${label(r)}`).toBeDefined();
    }
  });

  it("refuses every route without a key (401), before looking at the body", async () => {
    for (const route of routes) {
      // An invalid body must not be reported to someone who has not authenticated.
      const res = await request(admin.as(null), route, a, { bogus_field: 1 });
      expectError(res, 401, "unauthorized");
    }
  });

  it("refuses every route with an unknown key, a malformed header or another scheme (401)", async () => {
    const headers = [
      "Api-Key zzzzzzzz.not-a-real-key",
      "Bearer zzzzzzzz.not-a-real-key",
      `Basic ${Buffer.from("admin:admin").toString("base64")}`,
      "Api-Key",
      `Api-Key ${t.control.adminKey}x`,
    ];
    for (const route of routes) {
      for (const authorization of headers) {
        const path = fill(route.path, a);
        const res = await admin
          .as(null)
          .call(route.method, path, route.method === "GET" || route.method === "DELETE" ? undefined : {}, {
            authorization,
          });
        expect(res.status, `${label(route)} with '${authorization}'`).toBe(401);
        expect(res.body.error_code).toBe("unauthorized");
      }
    }
  });

  it("accepts the key as 'Api-Key <key>' and as 'Bearer <key>' on every route", async () => {
    // Ids that name nothing and bodies that fail validation keep this from changing anything; what
    // matters is that both schemes authenticate (not 401) and are answered alike.
    for (const route of routes) {
      const path = fill(route.path, NOWHERE);
      const body = route.raw
        ? archive
        : route.hasBody
          ? { bogus_field: 1 }
          : route.method === "POST"
            ? {}
            : undefined;
      const ct: Record<string, string> = route.raw ? { "content-type": "application/gzip" } : {};
      const key = t.control.adminKey!;
      const apiKey = await admin
        .as(null)
        .call(route.method, path, body, { ...ct, authorization: `Api-Key ${key}` });
      const bearer = await admin
        .as(null)
        .call(route.method, path, body, { ...ct, authorization: `Bearer ${key}` });
      expect(apiKey.status, `${label(route)}: ${JSON.stringify(apiKey.body)}`).not.toBe(401);
      expect(bearer.status, label(route)).toBe(apiKey.status);
      expect(bearer.body?.error_code, label(route)).toBe(apiKey.body?.error_code);
    }
    const models = await admin.as(null).call("GET", "/v1/models", undefined, {
      authorization: `Bearer ${t.control.adminKey}`,
    });
    expect(models.status).toBe(200);
    expect(models.body.models.map((m: { id: string }) => m.id)).toContain(a.model_id);
  });

  it("answers 404, never 403, when another team's key names this team's resources", async () => {
    const scoped = routes.filter((r) => /\{(model_id|team_id|deployment_id)\}/.test(r.path));
    expect(scoped.length).toBeGreaterThan(20);
    for (const client of [teamB.personal, teamB.workspace]) {
      for (const route of scoped) {
        const res = await request(client, route, a);
        expect(res.status, `${label(route)}: ${JSON.stringify(res.body)}`).toBe(404);
        expect(Object.keys(ERRORS)).toContain(res.body.error_code);
        expect(res.body.error_code).toMatch(/^(team|model)_not_found$/);
      }
      expectError(await client.get(`/v1/users/${a.user_id}`), 404, "user_not_found");
      expectError(await client.delete(`/v1/api_keys/${a.api_key_prefix}`), 404, "api_key_not_found");
      expectError(
        await client.call("PUT", `/v1/artifacts/${a.key}`, archive, { "content-type": "application/gzip" }),
        404,
        "artifact_not_found",
      );
      // A model of team A named in a key's scope does not exist for team B either.
      expectError(
        await client.post("/v1/api_keys", { type: "WORKSPACE_INVOKE", model_ids: [a.model_id] }),
        404,
        "model_not_found",
      );
      // Team A's upload cannot be turned into a team B model.
      expectError(
        await client.post("/v1/models", {
          source: { kind: "model_archive", name: "stolen", s3_key: a.key, deployment: { config: {} } },
        }),
        404,
        "artifact_not_found",
      );
    }
    // Team A's resources are untouched and still there.
    const env = await admin.get(`/v1/models/${a.model_id}/environments/staging`);
    expect(env.status).toBe(200);
    expect(env.body.autoscaling_settings.max_replica).toBe(1);
    expect((await admin.get("/v1/api_keys")).body.keys.map((k: { prefix: string }) => k.prefix)).toContain(
      a.api_key_prefix,
    );
    expect((await admin.get(`/v1/models/${a.model_id}/deployments/${a.deployment_id}`)).body.name).toBe(
      "deployment-1",
    );
  });

  it("lists only the caller's own team's resources to another team's key", async () => {
    for (const client of [teamB.personal, teamB.workspace]) {
      const models = await client.get("/v1/models");
      expect(models.body.models.map((m: { id: string }) => m.id)).toEqual([teamB.modelId]);
      const groups = await client.get("/v1/environment_groups");
      expect(groups.body.items.map((g: { name: string }) => g.name)).toEqual(["production"]);
      expectError(await client.get("/v1/environment_groups/staging"), 404, "environment_group_not_found");
      const audit = await client.get("/v1/audit_logs");
      expect(audit.status).toBe(200);
      for (const item of audit.body.items) expect(item.team_id).toBe(teamB.id);
      const keys = await client.get("/v1/api_keys");
      expect(keys.body.keys.map((k: { prefix: string }) => k.prefix)).not.toContain(a.api_key_prefix);
    }
    const teams = await teamB.personal.get("/v1/teams");
    expect(teams.body.teams.map((x: { id: string }) => x.id)).toEqual([teamB.id]);
    const users = await teamB.personal.get("/v1/users");
    expect(users.body.items.map((u: { email: string }) => u.email)).toEqual(["admin-b@example.com"]);
  });

  it("refuses keys of the wrong category on every management route (403)", async () => {
    const keyRoutes = (r: SpecRoute) => r.path.startsWith("/v1/api_keys") || r.path.endsWith("/api_keys");
    for (const type of ["WORKSPACE_INVOKE", "WORKSPACE_EXPORT_METRICS", "WORKSPACE_MANAGE_API_KEYS"]) {
      const client = category[type]!;
      for (const route of routes) {
        if (type === "WORKSPACE_MANAGE_API_KEYS" && keyRoutes(route)) continue;
        const res = await request(client, route, a);
        expect(res.status, `${type} ${label(route)}: ${JSON.stringify(res.body)}`).toBe(403);
        expect(res.body.error_code).toBe("forbidden");
      }
    }
    expect((await admin.get(`/v1/models/${a.model_id}/environments/staging`)).status).toBe(200);
  });

  it("lets WORKSPACE_MANAGE_API_KEYS keys list, create and delete workspace keys of their team", async () => {
    const keys = category["WORKSPACE_MANAGE_API_KEYS"]!;
    const listed = await keys.get("/v1/api_keys");
    expect(listed.status).toBe(200);
    expect(listed.body.keys.map((k: { prefix: string }) => k.prefix)).toContain(a.api_key_prefix);
    const viaTeam = await keys.post(`/v1/teams/${a.team_id}/api_keys`, { type: "WORKSPACE_INVOKE" });
    expect(viaTeam.status, JSON.stringify(viaTeam.body)).toBe(200);
    const created = await keys.post("/v1/api_keys", { type: "WORKSPACE_INVOKE", name: "rotated" });
    expect(created.status, JSON.stringify(created.body)).toBe(200);
    const prefix = (created.body.api_key as string).split(".")[0]!;
    expect((await keys.delete(`/v1/api_keys/${prefix}`)).status).toBe(200);
    // It cannot mint itself a person, nor delete a person's key.
    expectError(await keys.post("/v1/api_keys", { type: "PERSONAL" }), 400, "invalid_request");
    const adminPrefix = t.control.adminKey!.split(".")[0]!;
    expectError(await keys.delete(`/v1/api_keys/${adminPrefix}`), 404, "api_key_not_found");
    expect((await admin.get("/v1/users/me")).status).toBe(200);
  });

  it("keeps the operator API (/v1/admin/*) to org admins (403 for everyone else)", async () => {
    const admins = routes.filter((r) => r.path.startsWith("/v1/admin/"));
    expect(admins.length).toBeGreaterThanOrEqual(8);
    const workspace = await admin.post(`/v1/teams/${a.team_id}/api_keys`, { type: "WORKSPACE_MANAGE_ALL" });
    for (const client of [member, teamAdmin, teamB.personal, admin.as(workspace.body.api_key)]) {
      for (const route of admins) {
        const res = await request(client, route, { ...a, name: planes.a });
        expect(res.status, `${label(route)}: ${JSON.stringify(res.body)}`).toBe(403);
        expect(res.body.error_code).toBe("forbidden");
      }
    }
    const listed = await admin.get("/v1/admin/planes");
    expect(listed.body.planes.map((p: { name: string }) => p.name).sort()).toEqual(["plane-a", "plane-b"]);
  });

  it("scopes WORKSPACE_INVOKE keys with model_ids to those models only", async () => {
    const other = await admin.createModel("secret-a2");
    const scoped = await admin.post("/v1/api_keys", {
      type: "WORKSPACE_INVOKE",
      name: "scoped",
      model_ids: [a.model_id],
    });
    expect(scoped.status, JSON.stringify(scoped.body)).toBe(200);
    const key = scoped.body.api_key as string;
    const prefix = key.split(".")[0]!;
    // The management API shows it nothing: invoke keys read no models at all.
    for (const path of ["/v1/models", `/v1/models/${a.model_id}`, `/v1/models/${other.body.model.id}`]) {
      expectError(await admin.as(key).get(path), 403, "forbidden");
    }
    // What ingresses authenticate with: the grant names exactly the scoped model.
    const snapshot = await admin
      .as(null)
      .call("GET", `/v1/internal/planes/${planes.a}/snapshot?wait=0`, undefined, {
        authorization: `Bearer ${planes.aCredential}`,
      });
    expect(snapshot.status).toBe(200);
    const grant = snapshot.body.api_keys.find((g: { prefix: string }) => g.prefix === prefix);
    expect(grant).toMatchObject({
      category: "WORKSPACE_INVOKE",
      team_id: a.team_id,
      model_ids: [a.model_id],
    });
    expect(JSON.stringify(snapshot.body)).not.toContain(key);
    const unscoped = snapshot.body.api_keys.find(
      (g: { prefix: string }) => g.prefix === (a.api_key_prefix as string),
    );
    expect(unscoped.model_ids).toBeNull();
    // A scope naming a model that does not exist (or is another team's) is refused.
    expectError(
      await admin.post("/v1/api_keys", { type: "WORKSPACE_INVOKE", model_ids: [teamB.modelId] }),
      404,
      "model_not_found",
    );
    // Scopes apply to invoke and metrics keys only.
    expectError(
      await admin.post("/v1/api_keys", { type: "WORKSPACE_MANAGE_ALL", model_ids: [a.model_id] }),
      400,
      "invalid_request",
    );
  });

  describe("internal routes (plane credentials)", () => {
    const requestInternal = (route: SpecRoute, authorization: string | null, name: string) => {
      const path = `${fill(route.path, { ...a, name })}${route.method === "GET" ? "?wait=0" : ""}`;
      const body = route.hasBody ? validBodies(a)[label(route)] : undefined;
      return admin.as(null).call(route.method, path, body, authorization === null ? {} : { authorization });
    };

    it("refuses every internal route without a credential (401)", async () => {
      for (const route of internalRoutes) {
        expectError(await requestInternal(route, null, planes.a), 401, "unauthorized");
      }
    });

    it("does not take an API key, not even an org admin's, for a plane credential (401)", async () => {
      for (const route of internalRoutes) {
        for (const scheme of ["Api-Key", "Bearer"]) {
          const res = await requestInternal(route, `${scheme} ${t.control.adminKey}`, planes.a);
          expectError(res, 401, "unauthorized");
        }
      }
    });

    it("serves a plane with its own credential", async () => {
      for (const route of internalRoutes) {
        const res = await requestInternal(route, `Bearer ${planes.aCredential}`, planes.a);
        // A wake is accepted (202) and decided at once.
        const ok = route.path.endsWith("/wake") ? 202 : 200;
        expect(res.status, `${label(route)}: ${JSON.stringify(res.body)}`).toBe(ok);
      }
    });

    it("gives a plane only the packages of replicas placed on it (404 for others)", async () => {
      const route = internalRoutes.find((r) => r.path.includes("artifacts"))!;
      expectError(
        await requestInternal(route, `Bearer ${planes.bCredential}`, planes.b),
        404,
        "artifact_not_found",
      );
    });

    it("keeps plane A's credential out of plane B's snapshot and reports (403)", async () => {
      const named = internalRoutes.filter((r) => r.path.includes("{name}"));
      expect(named.length).toBeGreaterThanOrEqual(2);
      for (const route of named) {
        expectError(await requestInternal(route, `Bearer ${planes.aCredential}`, planes.b), 403, "forbidden");
      }
      // A rotated credential stops working at once.
      const rotated = await admin.post(`/v1/admin/planes/${planes.b}/credential`);
      expect(rotated.status).toBe(200);
      for (const route of named) {
        expectError(
          await requestInternal(route, `Bearer ${planes.bCredential}`, planes.b),
          401,
          "unauthorized",
        );
        // Plane B runs no replica: its new credential is let in and finds none to give secrets for; the
        // deployment it wakes is unrestricted, so any plane may hold its requests and wake it.
        const res = await requestInternal(route, `Bearer ${rotated.body.credential}`, planes.b);
        const want = route.path.includes("{replica_id}") ? 404 : route.path.endsWith("/wake") ? 202 : 200;
        expect(res.status, label(route)).toBe(want);
      }
    });
  });
});
