// Bad input everywhere: every refusal is a 4xx with the JSON error body {error, error_code, detail} and a
// code from the one catalog (src/core/errors.ts), and a refused request leaves nothing half-written: the
// models, environments, audit log, every table's row count and the revision are as they were.

import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ERRORS } from "../../src/core/errors.ts";
import { ENVIRONMENT_NAME_MAX } from "../../src/core/names.ts";
import {
  type ApiClient,
  NEW_MODEL_PUSH,
  packDirectory,
  type Response,
  startTestControl,
  type TestControl,
  tempDir,
} from "../support/control.ts";
import { STORE_KINDS } from "../support/databases.ts";

type Res = Response<any>;

/** The error body of every refusal: exactly {error, error_code, detail}, the code from the catalog. */
function expectRefused(res: Res, status: number, code: keyof typeof ERRORS) {
  expect(res.status, JSON.stringify(res.body)).toBe(status);
  expect(String(res.headers["content-type"])).toMatch(/^application\/json/);
  expect(Object.keys(res.body).sort()).toEqual(["detail", "error", "error_code"]);
  expect(Object.keys(ERRORS)).toContain(res.body.error_code);
  expect(res.body.error_code).toBe(code);
  expect(ERRORS[code].status).toBe(status);
  expect(typeof res.body.error).toBe("string");
  expect(res.body.error.length).toBeGreaterThan(0);
}

const TABLES = [
  "teams",
  "users",
  "team_members",
  "api_keys",
  "regions",
  "planes",
  "models",
  "deployments",
  "environments",
  "environment_groups",
  "promotions",
  "replicas",
  "audit_logs",
] as const;

describe.each(STORE_KINDS)("bad input on %s", (kind) => {
  let t: TestControl;
  let admin: ApiClient;
  let modelId: string;
  let deploymentId: string;

  /** Everything a refused request must leave as it was. */
  async function state() {
    const db = t.control.ctx.store.db;
    const counts: Record<string, number> = {};
    for (const table of TABLES) {
      const row = await db
        .selectFrom(table)
        .select((eb) => eb.fn.countAll<string | number>().as("n"))
        .executeTakeFirstOrThrow();
      counts[table] = Number(row.n);
    }
    const artifacts = await db
      .selectFrom("artifacts")
      .select(["key", "state", "sha256"])
      .orderBy("key")
      .execute();
    const models = (await admin.get("/v1/models")).body.models.map((m: { id: string; name: string }) => [
      m.id,
      m.name,
    ]);
    const environments = (await admin.get(`/v1/models/${modelId}/environments`)).body.environments;
    const audit = (await admin.get("/v1/audit_logs?limit=1000")).body.items.length;
    return { counts, artifacts, models, environments, audit, revision: await t.control.ctx.store.revision() };
  }

  /** Runs a request that must be refused and checks that it changed nothing. */
  async function refused(send: () => Promise<Res>, status: number, code: keyof typeof ERRORS) {
    const before = await state();
    const res = await send();
    expectRefused(res, status, code);
    expect(await state(), `state after ${code}`).toEqual(before);
    return res;
  }

  const raw = (method: string, path: string, body: string, contentType: string | null) =>
    admin.call(method, path, Buffer.from(body), contentType === null ? {} : { "content-type": contentType });

  beforeAll(async () => {
    t = await startTestControl(kind);
    admin = t.admin;
    const created = await admin.createModel("errors");
    expect(created.status, JSON.stringify(created.body)).toBe(200);
    modelId = created.body.model.id;
    deploymentId = created.body.deployment.id;
  });
  afterAll(async () => t?.stop());

  it("refuses malformed JSON (400 invalid_json) on every kind of JSON route", async () => {
    const routes: Array<[string, string]> = [
      ["POST", "/v1/models"],
      ["POST", `/v1/models/${modelId}/environments`],
      ["PATCH", `/v1/models/${modelId}/environments/production`],
      ["POST", `/v1/models/${modelId}/environments/production/promote`],
      ["POST", "/v1/api_keys"],
      ["PATCH", "/v1/environment_groups/production"],
      ["POST", "/v1/admin/teams"],
    ];
    for (const [method, path] of routes) {
      for (const body of ['{"name": ', "{name: 'x'}", '{"name": "a"}}', "\u0000", "nul"]) {
        await refused(() => raw(method, path, body, "application/json"), 400, "invalid_json");
      }
    }
  });

  it("refuses an empty body where one is required", async () => {
    const path = `/v1/models/${modelId}/environments`;
    // Declared JSON, but nothing sent.
    await refused(() => raw("POST", path, "", "application/json"), 400, "invalid_json");
    // Nothing declared, nothing sent: the schema's required object is missing.
    const none = await refused(() => admin.call("POST", path), 400, "invalid_request");
    expect(JSON.stringify(none.body.detail)).toContain("object");
    // JSON that is not an object.
    for (const body of ["null", "[]", '"staging"', "42", "true"]) {
      await refused(() => raw("POST", path, body, "application/json"), 400, "invalid_request");
    }
  });

  it("refuses unknown fields, at the top and nested, naming them", async () => {
    const cases: Array<[string, string, unknown]> = [
      ["POST", `/v1/models/${modelId}/environments`, { name: "staging", colour: "blue" }],
      [
        "POST",
        `/v1/models/${modelId}/environments`,
        { name: "staging", autoscaling_settings: { max_replicas: 3 } },
      ],
      ["PATCH", `/v1/models/${modelId}/environments/production`, { promotion_settings: { redeploy: true } }],
      [
        "POST",
        `/v1/models/${modelId}/environments/production/promote`,
        { deployment_id: deploymentId, force: 1 },
      ],
      ["POST", "/v1/api_keys", { type: "WORKSPACE_INVOKE", scopes: ["all"] }],
      [
        "POST",
        "/v1/models",
        { source: { kind: "model_archive", name: "x", s3_key: "k", deployment: { config: {} }, extra: 1 } },
      ],
      ["PATCH", "/v1/environment_groups/production", { region_restriction: { region: "eu", strict: true } }],
      ["POST", "/v1/admin/regions", { slug: "ca", display_name: "Canada", flag: "ca" }],
    ];
    for (const [method, path, body] of cases) {
      const res = await refused(() => admin.call(method, path, body), 400, "invalid_request");
      expect(JSON.stringify(res.body.detail), `${method} ${path}`).toContain("additionalProperty");
    }
  });

  it("refuses wrong types without coercing them", async () => {
    const cases: Array<[string, string, unknown]> = [
      ["POST", `/v1/models/${modelId}/environments`, { name: 42 }],
      ["POST", `/v1/models/${modelId}/environments`, { name: ["staging"] }],
      ["POST", `/v1/models/${modelId}/environments`, { name: null }],
      [
        "POST",
        `/v1/models/${modelId}/environments`,
        { name: "staging", autoscaling_settings: { max_replica: "3" } },
      ],
      [
        "PATCH",
        `/v1/models/${modelId}/environments/production`,
        { autoscaling_settings: { min_replica: 1.5 } },
      ],
      [
        "PATCH",
        `/v1/models/${modelId}/environments/production`,
        { autoscaling_settings: { min_replica: -1 } },
      ],
      [
        "PATCH",
        `/v1/models/${modelId}/environments/production`,
        { promotion_settings: { redeploy_on_promotion: "yes" } },
      ],
      [
        "PATCH",
        `/v1/models/${modelId}/environments/production`,
        { promotion_settings: { promotion_cleanup_strategy: "SHRED" } },
      ],
      ["POST", `/v1/models/${modelId}/environments/production/promote`, { deployment_id: 7 }],
      ["POST", `/v1/models/${modelId}/environments/production/promote`, { deployment_id: "" }],
      [
        "POST",
        `/v1/models/${modelId}/deployments/${deploymentId}/promote`,
        { scale_down_previous_production: 1 },
      ],
      ["POST", "/v1/api_keys", { type: "ROOT" }],
      ["POST", "/v1/api_keys", { type: "WORKSPACE_INVOKE", model_ids: modelId }],
      ["PATCH", "/v1/environment_groups/production", { manage_access: { is_restricted: "true" } }],
      ["POST", "/v1/admin/planes", { name: "p", region: "us", ingress: "127.0.0.1:1", capacity: 1 }],
      ["POST", "/v1/admin/users", { email: "not-an-email" }],
      ["POST", "/v1/admin/teams", { name: "" }],
    ];
    for (const [method, path, body] of cases) {
      await refused(() => admin.call(method, path, body), 400, "invalid_request");
    }
  });

  it("refuses bad query parameters", async () => {
    for (const path of [
      "/v1/audit_logs?limit=ten",
      "/v1/audit_logs?cursor=-1",
      "/v1/audit_logs?sort=asc",
      "/v1/models?team=x",
    ]) {
      await refused(() => admin.get(path), 400, "invalid_request");
    }
  });

  it("refuses JSON bodies over 1 MiB (413 payload_too_large)", async () => {
    const big = JSON.stringify({ name: "a".repeat(1024 * 1024 + 16) });
    await refused(
      () => raw("POST", `/v1/models/${modelId}/environments`, big, "application/json"),
      413,
      "payload_too_large",
    );
    const huge = JSON.stringify({ email: "x@example.com", name: "n".repeat(2 * 1024 * 1024) });
    await refused(() => raw("POST", "/v1/admin/users", huge, "application/json"), 413, "payload_too_large");
    // Just under the limit is read (and then judged on its content).
    const under = JSON.stringify({ name: "a".repeat(1024 * 1024 - 64) });
    await refused(
      () => raw("POST", `/v1/models/${modelId}/environments`, under, "application/json"),
      400,
      "invalid_environment_name",
    );
  });

  it("refuses bodies that are not JSON (415 unsupported_media_type)", async () => {
    const path = `/v1/models/${modelId}/environments`;
    for (const contentType of [
      "text/plain",
      "text/plain; charset=utf-8",
      "application/xml",
      "application/x-www-form-urlencoded",
      "multipart/form-data; boundary=x",
    ]) {
      await refused(
        () => raw("POST", path, '{"name":"staging"}', contentType),
        415,
        "unsupported_media_type",
      );
    }
    // A model package is not accepted where JSON is expected, nor JSON where the package goes.
    await refused(
      () => raw("POST", path, '{"name":"staging"}', "application/gzip"),
      415,
      "unsupported_media_type",
    );
    const target = (await admin.post("/v1/prepare_model_upload", NEW_MODEL_PUSH)).body.s3_key as string;
    for (const contentType of ["application/json", "text/plain"]) {
      await refused(
        () => raw("PUT", `/v1/artifacts/${target}`, '{"config":{}}', contentType),
        415,
        "unsupported_media_type",
      );
    }
  });

  it("answers unknown routes and methods with 404 route_not_found", async () => {
    for (const [method, path] of [
      ["GET", "/v1/nothing"],
      ["GET", "/v2/models"],
      ["POST", "/v1/models/x/y/z"],
      ["PUT", "/v1/models"],
      ["DELETE", "/v1/regions"],
      ["GET", "/"],
    ] as const) {
      const res = await refused(() => admin.call(method, path), 404, "route_not_found");
      expect(res.body.error).toContain(path);
    }
    // Without a key too: an unknown route is not a secret.
    expectRefused(await admin.as(null).get("/v1/nothing"), 404, "route_not_found");
  });

  it("refuses a string that is not well-formed Unicode (a lone surrogate), naming it, storing nothing (found by the api fuzz target)", async () => {
    // JSON can spell one; SQLite then stored bytes that read back as U+FFFD: a key named other than sent.
    const cases: Array<[string, string, string]> = [
      ["/v1/api_keys", '{"type":"WORKSPACE_INVOKE","name":"k\\ud800x"}', "name"],
      [`/v1/models/${modelId}/environments`, '{"name":"ok","labels":{"\\udc00":"v"}}', "labels (a key)"],
      ["/v1/secrets", '{"name":"s","value":"\\ud83d"}', "value"],
    ];
    for (const [path, body, field] of cases) {
      const res = await refused(() => raw("POST", path, body, "application/json"), 400, "invalid_request");
      expect(res.body.detail, body).toEqual({ field });
    }
    // A well-formed pair (an emoji) is text like any other.
    const ok = await raw(
      "POST",
      "/v1/api_keys",
      '{"type":"WORKSPACE_INVOKE","name":"k\\ud83d\\ude00"}',
      "application/json",
    );
    expect(ok.status, JSON.stringify(ok.body)).toBe(200);
    const names = (await admin.get("/v1/api_keys")).body.keys.map((k: { name: string }) => k.name);
    expect(names).toContain("k\u{1F600}");
  });

  it("refuses a path that does not decode or whose parameter is over 100 characters (400 invalid_request, found by the api fuzz target)", async () => {
    for (const path of ["/v1/teams/%zz", "/v1/teams/%", "/v1/models/x/deployments/%E2%82", "/v1/nothing/%"]) {
      expectRefused(await admin.get(path), 400, "invalid_request");
      expectRefused(await admin.as(null).get(path), 400, "invalid_request");
    }
    // A parameter over the router's 100 characters (FST_ERR_MAX_PARAM_LENGTH) was answered 500.
    for (const path of [
      `/v1/models/${"x".repeat(101)}`,
      `/v1/models/production/deployments/${"x".repeat(2000)}`,
      `/v1/environment_groups/${"x".repeat(2000)}`,
    ]) {
      expectRefused(await admin.patch(path, {}), 400, "invalid_request");
    }
  });

  it("accepts and refuses environment names by the DNS-label rules, naming the rule", async () => {
    const accepted = ["a", "1", "staging", "prod-eu", "a--b", "x1-y2", "z".repeat(ENVIRONMENT_NAME_MAX)];
    const refusedNames: Array<[string, string]> = [
      ["", "empty"],
      ["z".repeat(ENVIRONMENT_NAME_MAX + 1), "too_long"],
      ["Staging", "invalid_characters"],
      ["prod_eu", "invalid_characters"],
      ["prod.eu", "invalid_characters"],
      ["prod eu", "invalid_characters"],
      ["prod/eu", "invalid_characters"],
      ["prødeu", "invalid_characters"],
      ["-prod", "leading_hyphen"],
      ["prod-", "trailing_hyphen"],
      ["-", "leading_hyphen"],
      ["development", "reserved"],
    ];
    const model = (await admin.createModel("names")).body.model.id as string;
    for (const name of accepted) {
      const res = await admin.post(`/v1/models/${model}/environments`, { name });
      expect(res.status, `${name}: ${JSON.stringify(res.body)}`).toBe(200);
      expect(res.body.name).toBe(name);
    }
    for (const [name, rule] of refusedNames) {
      const res = await refused(
        () => admin.post(`/v1/models/${model}/environments`, { name }),
        400,
        "invalid_environment_name",
      );
      expect(res.body.detail, name).toEqual({ field: "name", rule });
    }
    // The same rules hold where an environment is named in a push.
    const s3_key = await admin.upload(
      await packDirectory(join(import.meta.dirname, "../../examples/hello-js")),
    );
    const res = await refused(
      () =>
        admin.post(`/v1/models/${model}/deployments`, {
          source: { kind: "model_archive", s3_key, deployment: { config: {}, environment_name: "Prod" } },
        }),
      400,
      "invalid_environment_name",
    );
    expect(res.body.detail).toEqual({ field: "deployment.environment_name", rule: "invalid_characters" });
    const envs = (await admin.get(`/v1/models/${model}/environments`)).body.environments;
    expect(envs.map((e: { name: string }) => e.name).sort()).toEqual([...accepted, "production"].sort());
  });

  it("refuses a duplicate environment and deleting production (409)", async () => {
    expect((await admin.post(`/v1/models/${modelId}/environments`, { name: "twice" })).status).toBe(200);
    await refused(
      () => admin.post(`/v1/models/${modelId}/environments`, { name: "twice" }),
      409,
      "environment_exists",
    );
    await refused(
      () => admin.post(`/v1/models/${modelId}/environments`, { name: "production" }),
      409,
      "environment_exists",
    );
    await refused(
      () => admin.delete(`/v1/models/${modelId}/environments/production`),
      409,
      "environment_protected",
    );
    // Settings that contradict each other are refused whole.
    await refused(
      () =>
        admin.patch(`/v1/models/${modelId}/environments/twice`, {
          autoscaling_settings: { min_replica: 3, max_replica: 2 },
        }),
      400,
      "invalid_request",
    );
  });

  it("refuses promoting a deployment that failed to build (409)", async () => {
    const dir = tempDir();
    mkdirSync(join(dir, "model"));
    writeFileSync(join(dir, "config.yaml"), "model_name: broken\nruntime: [predict_concurrency\n");
    writeFileSync(join(dir, "model", "model.js"), "export class Model { predict() { return 1; } }\n");
    const s3_key = await admin.upload(await packDirectory(dir));
    const pushed = await admin.post(`/v1/models/${modelId}/deployments`, {
      source: { kind: "model_archive", s3_key, deployment: { config: {} } },
    });
    expect(pushed.status, JSON.stringify(pushed.body)).toBe(200);
    expect(pushed.body.deployment.status).toBe("BUILD_FAILED");
    const broken = pushed.body.deployment.id as string;
    const config = await admin.get(`/v1/models/${modelId}/deployments/${broken}`);
    expect(config.body.status).toBe("BUILD_FAILED");
    await refused(
      () => admin.post(`/v1/models/${modelId}/environments/production/promote`, { deployment_id: broken }),
      409,
      "conflict",
    );
    await refused(() => admin.post(`/v1/models/${modelId}/deployments/${broken}/promote`), 409, "conflict");
    await refused(() => admin.post(`/v1/models/${modelId}/deployments/${broken}/activate`), 409, "conflict");
    // A push straight into an environment does not promote a broken build either.
    const s3_key2 = await admin.upload(await packDirectory(dir));
    const into = await admin.post(`/v1/models/${modelId}/deployments`, {
      source: {
        kind: "model_archive",
        s3_key: s3_key2,
        deployment: { config: {}, environment_name: "twice" },
      },
    });
    expect(into.body.deployment.status).toBe("BUILD_FAILED");
    const env = await admin.get(`/v1/models/${modelId}/environments/twice`);
    expect(env.body.in_progress_promotion).toBeNull();
    expect(env.body.current_deployment).toBeNull();
  });

  it("refuses a model name taken in the team (409)", async () => {
    const s3_key = await admin.upload(
      await packDirectory(join(import.meta.dirname, "../../examples/hello-js")),
    );
    for (const name of ["errors", " errors "]) {
      await refused(
        () =>
          admin.post("/v1/models", {
            source: { kind: "model_archive", name, s3_key, deployment: { config: {} } },
          }),
        409,
        "model_name_taken",
      );
    }
  });

  it("refuses reusing an upload target, and creating from one that is missing, unknown or empty", async () => {
    const archive = await packDirectory(join(import.meta.dirname, "../../examples/hello-js"));
    const s3_key = await admin.upload(archive);
    await refused(
      () => admin.call("PUT", `/v1/artifacts/${s3_key}`, archive, { "content-type": "application/gzip" }),
      409,
      "conflict",
    );
    await refused(
      () =>
        admin.call("PUT", "/v1/artifacts/uploads/nothing/here.tgz", archive, {
          "content-type": "application/gzip",
        }),
      404,
      "artifact_not_found",
    );
    const source = (extra: Record<string, unknown>) => ({
      source: { kind: "model_archive", name: "fresh", deployment: { config: {} }, ...extra },
    });
    const missing = await refused(() => admin.post("/v1/models", source({})), 400, "invalid_request");
    expect(missing.body.detail).toEqual({ field: "source.s3_key" });
    await refused(() => admin.post("/v1/models", source({ s3_key: null })), 400, "invalid_request");
    await refused(() => admin.post("/v1/models", source({ s3_key: "" })), 400, "invalid_request");
    await refused(
      () =>
        admin.post(`/v1/models/${modelId}/deployments`, {
          source: { kind: "model_archive", deployment: { config: {} } },
        }),
      400,
      "invalid_request",
    );
    await refused(
      () => admin.post("/v1/models", source({ s3_key: "uploads/nothing/here.tgz" })),
      404,
      "artifact_not_found",
    );
    const prepared = await admin.post("/v1/prepare_model_upload", NEW_MODEL_PUSH);
    await refused(
      () => admin.post("/v1/models", source({ s3_key: prepared.body.s3_key })),
      409,
      "artifact_missing",
    );
    await refused(
      () =>
        admin.post("/v1/models", { source: { kind: "docker_image", name: "x", deployment: { config: {} } } }),
      400,
      "invalid_request",
    );
  });

  it("names missing resources with their own codes", async () => {
    await refused(() => admin.get("/v1/models/zzzzzzzz"), 404, "model_not_found");
    await refused(() => admin.get(`/v1/models/${modelId}/deployments/zzzzzzz`), 404, "deployment_not_found");
    await refused(
      () => admin.get(`/v1/models/${modelId}/environments/nowhere`),
      404,
      "environment_not_found",
    );
    await refused(
      () => admin.post(`/v1/models/${modelId}/environments/nowhere/promote`, { deployment_id: deploymentId }),
      404,
      "environment_not_found",
    );
    await refused(
      () => admin.post(`/v1/models/${modelId}/environments/production/promote`, { deployment_id: "zzzzzzz" }),
      404,
      "deployment_not_found",
    );
    await refused(() => admin.delete("/v1/api_keys/zzzzzzzz"), 404, "api_key_not_found");
    await refused(() => admin.get("/v1/teams/zzzzzzzz"), 404, "team_not_found");
    await refused(
      () => admin.patch("/v1/environment_groups/production", { region_restriction: { region: "mars" } }),
      404,
      "region_not_found",
    );
    await refused(
      () => admin.post(`/v1/models/${modelId}/environments/production/cancel_promotion`),
      409,
      "no_promotion_in_progress",
    );
  });
});
