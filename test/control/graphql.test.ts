// The GraphQL endpoint the truss CLI talks to, against a real control plane (in this process, on a loopback
// port, on a SQLite file), driven over HTTP with the CLI's own documents (test/support/truss-cli.ts): every
// operation, both key forms, what another team and a key without the capability get, every push flag as
// the CLI maps it, restricted environments refused with nothing changed, bad variables, and hostile
// documents bounded before they cost anything.

import { join } from "node:path";
import { buildSchema, findBreakingChanges, findDangerousChanges } from "graphql";
import pino from "pino";
import { request } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { trussSchema } from "../../src/control/graphql/schema.ts";
import { type RunningControl, startControl } from "../../src/control/main.ts";
import { ApiClient, packExample } from "../support/control.ts";
import { createTestDatabase, type TestDatabase } from "../support/databases.ts";
import {
  createModelMutation,
  createVersionMutation,
  deployDraftMutation,
  encodeConfig,
  HELLO_PY_CONFIG,
  modelByIdQuery,
  modelByNameQuery,
  modelsQuery,
  modelVersionQuery,
  modelWithVersionsQuery,
  ORGANIZATION_QUERY,
  pushVariables,
  TEAMS_QUERY,
  TRUSS_USER_ENV,
  UPLOAD_CREDENTIALS_QUERY,
  validateTrussQuery,
  WHOAMI_QUERY,
} from "../support/truss-cli.ts";

/** The protocol file's "minimal schema that covers the above", verbatim. */
const PROTOCOL_SCHEMA = `
scalar JSONString
enum ModelOrigin { BASETEN CHAINS }
type Team { id: String! name: String! default: Boolean! }
type InstanceType { name: String! }
type Oracle { id: String! name: String! hostname: String! }
type DeploymentStatus { status: String! }
type ModelVersion { id: String! semver: String is_draft: Boolean! is_primary: Boolean! truss_hash: String
  truss_signature: String current_model_deployment_status: DeploymentStatus oracle: Oracle!
  instance_type: InstanceType! }
type Model { id: String! name: String! hostname: String! team: Team! versions: [ModelVersion!]!
  primary_version: ModelVersion }
type Validation { success: Boolean! details: String }
type UploadCredentials { s3_bucket: String! s3_key: String! aws_access_key_id: String!
  aws_secret_access_key: String! aws_session_token: String! }
type CreatedVersion { model_version: ModelVersion! }
type Organization { id: String! workspace_name: String! }
type User { email: String }
type Query {
  teams: [Team!]!
  models(all: Boolean, team_id: String, chainlets_only: Boolean): [Model!]!
  model(id: String, name: String): Model
  model_version(id: String): ModelVersion
  truss_validation(truss_user_env: String, config: String): Validation!
  model_s3_upload_credentials: UploadCredentials!
  organization: Organization!
  user: User!
}
type Mutation {
  create_model_from_truss(name: String!, s3_key: String!, config: String!, semver_bump: String,
    truss_user_env: String, allow_truss_download: Boolean, version_name: String, model_origin: ModelOrigin,
    environment_name: String, deploy_timeout_minutes: Int, team_id: String, user_deploy_metadata: JSONString,
    raw_config: String): CreatedVersion!
  create_model_version_from_truss(model_id: String!, s3_key: String!, config: String!, semver_bump: String,
    truss_user_env: String, scale_down_old_production: Boolean, preserve_env_instance_type: Boolean,
    name: String, environment_name: String, deploy_timeout_minutes: Int, user_deploy_metadata: JSONString,
    raw_config: String): CreatedVersion!
  deploy_draft_truss(name: String!, s3_key: String!, config: String!, truss_user_env: String,
    allow_truss_download: Boolean, model_origin: ModelOrigin, deploy_timeout_minutes: Int, team_id: String,
    user_deploy_metadata: JSONString, raw_config: String): CreatedVersion!
}
`;

const CONFIG = encodeConfig(HELLO_PY_CONFIG);
const RAW_CONFIG = Buffer.from("model_name: hello-py\n");

interface Answer {
  status: number;
  body: any;
  headers: Record<string, string | string[] | undefined>;
}

interface Key {
  key: string;
  bearer?: boolean;
}

describe("the truss CLI's GraphQL endpoint", () => {
  let db: TestDatabase;
  let control: RunningControl;
  let root: ApiClient;
  let url: string;
  let defaultTeam: string;
  let teamB: string;
  let archive: Buffer;
  const keys = {} as Record<
    "admin" | "listed" | "member" | "workspace" | "invoke" | "b_admin" | "both",
    string
  >;
  let listedId: string;
  const planeName = "sim-1";
  let planeCredential: string;

  /** Sends a GraphQL request as the CLI does (a JSON body, `Authorization: Api-Key` or `Bearer`). */
  async function gql(
    who: Key | string | null,
    query: string,
    variables?: Record<string, unknown> | null,
    extra: Record<string, unknown> = {},
  ): Promise<Answer> {
    const k = typeof who === "string" ? { key: who } : who;
    const res = await request(`${url}/graphql/`, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        ...(k ? { authorization: `${k.bearer ? "Bearer" : "Api-Key"} ${k.key}` } : {}),
      },
      body: JSON.stringify({ query, ...(variables === undefined ? {} : { variables }), ...extra }),
    });
    const text = await res.body.text();
    return { status: res.statusCode, body: text ? JSON.parse(text) : null, headers: res.headers };
  }

  /** The data of an answer without errors. */
  async function data(who: Key | string, query: string, variables?: Record<string, unknown> | null) {
    const res = await gql(who, query, variables);
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    expect(res.body.errors, JSON.stringify(res.body.errors)).toBeUndefined();
    return res.body.data;
  }

  /** The first error of a GraphQL answer (HTTP 200), as the CLI reads it. */
  async function refusal(who: Key | string, query: string, variables?: Record<string, unknown> | null) {
    const res = await gql(who, query, variables);
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    expect(res.body.errors?.length, JSON.stringify(res.body)).toBeGreaterThan(0);
    const [first] = res.body.errors;
    expect(first.extensions.description).toBe(first.message);
    return { ...first.extensions, data: res.body.data, errors: res.body.errors } as {
      code: string;
      description: string;
      status: number;
      detail?: any;
      data: any;
      errors: any[];
    };
  }

  /** What a model and its deployments look like in the store, to show a refusal changed nothing. */
  async function counts() {
    const store = control.ctx.store.db;
    const n = async (table: "models" | "deployments" | "artifacts" | "audit_logs") =>
      Number(
        (
          await store
            .selectFrom(table)
            .select((eb) => eb.fn.countAll<number>().as("n"))
            .executeTakeFirstOrThrow()
        ).n,
      );
    const artifacts = await store
      .selectFrom("artifacts")
      .select(["key", "team_id", "state"])
      .orderBy("key")
      .execute();
    return {
      models: await n("models"),
      deployments: await n("deployments"),
      audit: await n("audit_logs"),
      artifacts: JSON.stringify(artifacts),
    };
  }

  /** An upload as the CLI makes one: credentials from GraphQL, then the archive to that key. */
  async function upload(who: string): Promise<string> {
    const creds = (await data(who, UPLOAD_CREDENTIALS_QUERY)).model_s3_upload_credentials;
    const put = await root
      .as(who)
      .call("PUT", `/v1/artifacts/${creds.s3_key}`, archive, { "content-type": "application/gzip" });
    expect(put.status, JSON.stringify(put.body)).toBe(200);
    return creds.s3_key as string;
  }

  async function asPlane(method: string, path: string, body?: unknown) {
    return root.as(null).call(method, path, body, { authorization: `Bearer ${planeCredential}` });
  }

  /** The registered plane reports every replica it is given as READY (a plane's own report API). */
  async function ready() {
    for (let i = 0; i < 3; i++) {
      const snapshot = await asPlane("GET", `/v1/internal/planes/${planeName}/snapshot?wait=0`);
      expect(snapshot.status).toBe(200);
      const replicas = (snapshot.body.replicas as Array<{ id: string; deployment_id: string }>).map((r) => ({
        id: r.id,
        deployment_id: r.deployment_id,
        state: "READY",
        message: null,
        restarts: 0,
      }));
      const report = await asPlane("POST", `/v1/internal/planes/${planeName}/report`, {
        revision: snapshot.body.revision,
        replicas,
        request_counts: [],
      });
      expect(report.status, JSON.stringify(report.body)).toBe(200);
    }
  }

  const deployment = async (model: string, id: string) =>
    (await root.get(`/v1/models/${model}/deployments/${id}`)).body;
  const environment = async (model: string, name: string) =>
    (await root.get(`/v1/models/${model}/environments/${name}`)).body;

  beforeAll(async () => {
    db = await createTestDatabase("sqlite");
    // The simulated plane reports only when a test calls ready(): it must never be judged down meanwhile.
    control = await startControl({
      dataDir: join(db.dir, "control"),
      host: "127.0.0.1",
      port: 0,
      databaseUrl: null,
      domain: "meridian.test",
      publicUrl: null,
      planeTimeoutMs: 24 * 3600_000,
      autoscalerIntervalMs: 24 * 3600_000,
      logger: pino({ level: "silent" }),
    });
    root = new ApiClient(control.url, control.adminKey);
    keys.admin = root.key!;
    url = control.url;
    archive = await packExample("hello-py");
    defaultTeam = ((await root.get("/v1/teams")).body.teams as Array<{ id: string; default: boolean }>).find(
      (x) => x.default,
    )!.id;
    teamB = (await root.post("/v1/admin/teams", { name: "Team B" })).body.id;
    const person = async (email: string, teams: Array<{ team_id: string; role: string }>) => {
      const res = await root.post("/v1/admin/users", { email, teams });
      expect(res.status, JSON.stringify(res.body)).toBe(200);
      return { id: res.body.user.user_id as string, key: res.body.api_key as string };
    };
    const listed = await person("listed@example.com", [{ team_id: defaultTeam, role: "MEMBER" }]);
    listedId = listed.id;
    keys.listed = listed.key;
    keys.member = (await person("member@example.com", [{ team_id: defaultTeam, role: "MEMBER" }])).key;
    keys.b_admin = (await person("b@example.com", [{ team_id: teamB, role: "TEAM_ADMIN" }])).key;
    keys.both = (
      await person("both@example.com", [
        { team_id: defaultTeam, role: "MEMBER" },
        { team_id: teamB, role: "MEMBER" },
      ])
    ).key;
    keys.workspace = (
      await root.post("/v1/api_keys", { type: "WORKSPACE_MANAGE_ALL", name: "ci" })
    ).body.api_key;
    keys.invoke = (await root.post("/v1/api_keys", { type: "WORKSPACE_INVOKE", name: "app" })).body.api_key;
    // prod-eu of the default team: managed only by the listed user (and admins).
    const restricted = await root.patch("/v1/environment_groups/prod-eu", {
      manage_access: { is_restricted: true, user_ids: [listedId] },
    });
    expect(restricted.status, JSON.stringify(restricted.body)).toBe(200);
    const plane = await root.post("/v1/admin/planes", {
      name: planeName,
      region: "us",
      ingress: ["127.0.0.1:8443"],
      capacity: 1000,
      global_ingress: true,
    });
    expect(plane.status, JSON.stringify(plane.body)).toBe(200);
    planeCredential = plane.body.credential;
  });
  afterAll(async () => {
    await control?.stop();
    await db?.drop();
  });

  it("serves the protocol's schema: every type, field and argument type the CLI relies on", () => {
    const ours = trussSchema();
    const protocol = buildSchema(PROTOCOL_SCHEMA);
    expect(findBreakingChanges(protocol, ours)).toEqual([]);
    expect(findDangerousChanges(protocol, ours)).toEqual([]);
  });

  describe("who may call", () => {
    it("refuses a call without a key, or with an unknown one, with 401 before reading the body", async () => {
      for (const authorization of [
        undefined,
        "Api-Key nope.nope",
        "Bearer nope.nope",
        "Basic Zm9vOmJhcg==",
      ]) {
        const res = await request(`${url}/graphql/`, {
          method: "POST",
          headers: { "content-type": "application/json", ...(authorization ? { authorization } : {}) },
          // Not even JSON: the caller is refused before the body is parsed.
          body: "{ this is not json",
        });
        expect(res.statusCode).toBe(401);
        expect(await res.body.json()).toMatchObject({ error_code: "unauthorized" });
      }
    });

    it("takes both key forms, at /graphql/ and /graphql", async () => {
      const viaApiKey = await data({ key: keys.admin }, TEAMS_QUERY);
      const viaBearer = await data({ key: keys.admin, bearer: true }, TEAMS_QUERY);
      expect(viaBearer).toEqual(viaApiKey);
      const bare = await request(`${url}/graphql`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${keys.member}` },
        body: JSON.stringify({ query: TEAMS_QUERY }),
      });
      expect(bare.statusCode).toBe(200);
      expect(((await bare.body.json()) as any).data.teams).toHaveLength(1);
    });

    it("refuses a key without the capability, naming the catalog's code", async () => {
      for (const query of [TEAMS_QUERY, modelsQuery(null), UPLOAD_CREDENTIALS_QUERY, WHOAMI_QUERY]) {
        const r = await refusal(keys.invoke, query);
        expect(r).toMatchObject({ code: "forbidden", status: 403 });
        expect(r.description).toMatch(/WORKSPACE_INVOKE/);
      }
    });
  });

  describe("queries", () => {
    let alpha: string;
    let alphaProd: string;
    let beta: string;
    let betaVersion: string;

    beforeAll(async () => {
      const a = await root.createModel("alpha", "hello-py", { environment_name: "production" });
      expect(a.status, JSON.stringify(a.body)).toBe(200);
      alpha = a.body.model.id;
      alphaProd = a.body.deployment.id;
      const b = await root.as(keys.b_admin).createModel("beta", "hello-py");
      expect(b.status, JSON.stringify(b.body)).toBe(200);
      beta = b.body.model.id;
      betaVersion = b.body.deployment.id;
      await ready();
    });

    it("teams: what each key sees, with the default team marked", async () => {
      const all = (await data(keys.admin, TEAMS_QUERY)).teams;
      expect(all).toEqual([
        { id: defaultTeam, name: "Default Team", default: true },
        { id: teamB, name: "Team B", default: false },
      ]);
      expect((await data(keys.member, TEAMS_QUERY)).teams).toEqual([all[0]]);
      expect((await data(keys.b_admin, TEAMS_QUERY)).teams).toEqual([all[1]]);
      expect((await data(keys.workspace, TEAMS_QUERY)).teams).toEqual([all[0]]);
    });

    it("models: all of them, one team's, and never another team's", async () => {
      const mine = (await data(keys.member, modelsQuery(null))).models;
      expect(mine).toContainEqual({
        id: alpha,
        name: "alpha",
        team: { id: defaultTeam, name: "Default Team" },
      });
      expect(mine.map((m: { id: string }) => m.id)).not.toContain(beta);
      const everything = (await data(keys.admin, modelsQuery(null))).models.map((m: { id: string }) => m.id);
      expect(everything).toEqual(expect.arrayContaining([alpha, beta]));
      expect((await data(keys.b_admin, modelsQuery(teamB))).models).toEqual([
        { id: beta, name: "beta", team: { id: teamB, name: "Team B" } },
      ]);
      // Another team, named: not found, as on /v1/teams/{id}/models.
      expect(await refusal(keys.member, modelsQuery(teamB))).toMatchObject({
        code: "team_not_found",
        status: 404,
      });
      expect((await data(keys.admin, "{ models(chainlets_only: true) { id } }")).models).toEqual([]);
    });

    it("model (truss predict --model): the hostname the CLI appends paths to, and the primary version", async () => {
      const m = (await data(keys.member, modelByIdQuery(alpha))).model;
      expect(m).toEqual({
        id: alpha,
        name: "alpha",
        // The global-ingress plane's port; the standard name Meridian's DNS answers with its address.
        hostname: `https://model-${alpha}.meridian.test:8443`,
        primary_version: {
          id: alphaProd,
          semver: null,
          truss_hash: null,
          truss_signature: null,
          is_draft: false,
          current_model_deployment_status: { status: "MODEL_READY" },
        },
      });
      const withVersions = (await data({ key: keys.member, bearer: true }, modelWithVersionsQuery(alpha)))
        .model;
      expect(withVersions.team).toEqual({ id: defaultTeam, name: "Default Team" });
      expect(withVersions.versions).toEqual([
        expect.objectContaining({ id: alphaProd, is_primary: true, is_draft: false }),
      ]);
      expect((await data(keys.member, modelByNameQuery("alpha"))).model.id).toBe(alpha);
      // Another team's model does not exist for this key, by id or by name.
      expect(await refusal(keys.member, modelByIdQuery(beta))).toMatchObject({
        code: "model_not_found",
        status: 404,
      });
      expect(await refusal(keys.member, modelByNameQuery("beta"))).toMatchObject({ code: "model_not_found" });
      expect(await refusal(keys.member, `{ model(id: "${alpha}", name: "alpha") { id } }`)).toMatchObject({
        code: "invalid_request",
        detail: { rule: "exactly_one_of_id_or_name" },
      });
    });

    it("model_version: a deployment with its model, and no other team's", async () => {
      const v = (await data(keys.admin, modelVersionQuery(alphaProd))).model_version;
      expect(v).toEqual({
        id: alphaProd,
        is_draft: false,
        truss_hash: null,
        truss_signature: null,
        oracle: { id: alpha, name: "alpha", hostname: `https://model-${alpha}.meridian.test:8443` },
      });
      expect(await refusal(keys.member, modelVersionQuery(betaVersion))).toMatchObject({
        code: "deployment_not_found",
      });
    });

    it("truss_validation: the CLI's config passes with warnings for what Meridian ignores", async () => {
      const v = (await data(keys.member, validateTrussQuery(CONFIG), { trussUserEnv: TRUSS_USER_ENV }))
        .truss_validation;
      expect(v.success).toBe(true);
      expect(typeof v.details).toBe("string");
      const details = JSON.parse(v.details);
      expect(details.errors).toEqual([]);
      // hello-py asks for 512Mi; everything else it sends is truss's default and says nothing.
      expect(details.warnings).toEqual([expect.stringMatching(/^resources is ignored: every replica runs/)]);
    });

    it("truss_validation: what the push's package check refuses is an error, so the CLI stops", async () => {
      const cases: Array<[Record<string, unknown>, RegExp]> = [
        [{ ...HELLO_PY_CONFIG, python_version: "py27" }, /^python_version: must name a Python 3 version/],
        [
          { ...HELLO_PY_CONFIG, external_data: [{ url: "https://x/y", local_data_path: "y" }] },
          /^external_data: is not supported/,
        ],
        [{ ...HELLO_PY_CONFIG, secrets: { "bad/name": null } }, /^secrets\.bad\/name: /],
        [{ ...HELLO_PY_CONFIG, environment_variables: { MERIDIAN_X: "1" } }, /MERIDIAN_/],
        [{ ...HELLO_PY_CONFIG, requirements: ["-e ."] }, /^requirements: /],
        [{ ...HELLO_PY_CONFIG, runtime: { predict_concurrency: 0 } }, /^runtime\.predict_concurrency: /],
      ];
      for (const [config, error] of cases) {
        const v = (
          await data(keys.member, validateTrussQuery(encodeConfig(config)), { trussUserEnv: TRUSS_USER_ENV })
        ).truss_validation;
        expect(v.success, JSON.stringify(config)).toBe(false);
        expect(JSON.parse(v.details).errors).toEqual([expect.stringMatching(error)]);
      }
      for (const [config, error] of [
        ["not base64!", /not base64/],
        [Buffer.from("{nope").toString("base64"), /not of a JSON document/],
        [Buffer.from("[1]").toString("base64"), /JSON object/],
      ] as const) {
        const v = (await data(keys.member, validateTrussQuery(config))).truss_validation;
        expect(v.success).toBe(false);
        expect(JSON.parse(v.details).errors).toEqual([expect.stringMatching(error)]);
      }
    });

    it("model_s3_upload_credentials: the selected fields, plus boto3's endpoint_url and region_name", async () => {
      const before = await counts();
      const creds = (await data(keys.member, UPLOAD_CREDENTIALS_QUERY)).model_s3_upload_credentials;
      expect(Object.keys(creds).sort()).toEqual(
        [
          "aws_access_key_id",
          "aws_secret_access_key",
          "aws_session_token",
          "endpoint_url",
          "region_name",
          "s3_bucket",
          "s3_key",
        ].sort(),
      );
      expect(creds).toMatchObject({
        s3_bucket: "meridian-uploads",
        s3_key: expect.stringMatching(new RegExp(`^uploads/${defaultTeam}/`)),
        aws_access_key_id: expect.stringMatching(/^MRDN/),
        endpoint_url: url,
        region_name: "us-east-1",
      });
      const after = await counts();
      expect(JSON.parse(after.artifacts)).toHaveLength(JSON.parse(before.artifacts).length + 1);
      // Under an alias, the keys go where the answer is; a query that does not ask gets none.
      const aliased = (await data(keys.member, "{ c: model_s3_upload_credentials { s3_key } }")).c;
      expect(Object.keys(aliased).sort()).toEqual(["endpoint_url", "region_name", "s3_key"]);
      expect((await data(keys.member, "{ teams { id } }")).endpoint_url).toBeUndefined();
    });

    it("organization and user (truss whoami)", async () => {
      expect(await data(keys.admin, WHOAMI_QUERY)).toEqual({
        organization: { workspace_name: "Meridian" },
        user: { email: "admin@meridian.local" },
      });
      expect((await data(keys.member, ORGANIZATION_QUERY)).organization.id).toMatch(/^[a-z0-9]{8}$/);
      // A workspace key acts for no person.
      expect((await data(keys.workspace, WHOAMI_QUERY)).user).toEqual({ email: null });
    });
  });

  describe("pushes, every flag mapped as the CLI maps it", () => {
    it("create_model_from_truss into prod-eu: --environment, --deployment-name, --labels, --team", async () => {
      const s3_key = await upload(keys.listed);
      const answer = await data(
        keys.listed,
        createModelMutation({
          name: "pushed",
          s3_key,
          config: CONFIG,
          deployment_name: "first",
          environment: "prod-eu",
          deploy_timeout_minutes: 30,
          team_id: defaultTeam,
        }),
        pushVariables({ owner: "ml", tier: 1 }, RAW_CONFIG),
      );
      const v = answer.create_model_from_truss.model_version;
      expect(v).toEqual({
        id: expect.stringMatching(/^[a-z0-9]{7}$/),
        oracle: {
          id: expect.stringMatching(/^[a-z0-9]{8}$/),
          name: "pushed",
          hostname: expect.stringMatching(/^https:\/\/model-[a-z0-9]{8}\.meridian\.test:8443$/),
        },
        instance_type: { name: "meridian-cpu" },
      });
      expect(v.oracle.hostname).toBe(`https://model-${v.oracle.id}.meridian.test:8443`);
      // What truss push --wait then polls (GET /v1/models/{m}/deployments/{d}).
      const d = await deployment(v.oracle.id, v.id);
      expect(d).toMatchObject({ name: "first", labels: { owner: "ml", tier: 1 }, status: "DEPLOYING" });
      expect((await environment(v.oracle.id, "prod-eu")).candidate_deployment.id).toBe(v.id);
      await ready();
      expect((await deployment(v.oracle.id, v.id)).status).toBe("ACTIVE");
      expect((await environment(v.oracle.id, "prod-eu")).current_deployment.id).toBe(v.id);
    });

    it("create_model_version_from_truss: --promote, then --preserve-previous-production-deployment", async () => {
      const first = (
        await data(
          keys.admin,
          createModelMutation({
            name: "promoted",
            s3_key: await upload(keys.admin),
            config: CONFIG,
            environment: "production",
          }),
          pushVariables(null, null),
        )
      ).create_model_from_truss.model_version;
      const model = first.oracle.id as string;
      await ready();
      expect((await environment(model, "production")).current_deployment.id).toBe(first.id);

      // --promote --deployment-name v2: production, and the previous one scaled down (the default cleanup).
      const v2 = (
        await data(
          keys.admin,
          createVersionMutation({
            model_id: model,
            s3_key: await upload(keys.admin),
            config: CONFIG,
            deployment_name: "v2",
            environment: "production",
          }),
          pushVariables(null, RAW_CONFIG),
        )
      ).create_model_version_from_truss.model_version;
      expect(v2.oracle.id).toBe(model);
      await ready();
      expect((await environment(model, "production")).current_deployment).toMatchObject({
        id: v2.id,
        name: "v2",
      });
      expect((await deployment(model, first.id)).status).toBe("SCALED_TO_ZERO");

      // --promote --preserve-previous-production-deployment: v2 keeps running.
      const v3 = (
        await data(
          keys.admin,
          createVersionMutation({
            model_id: model,
            s3_key: await upload(keys.admin),
            config: CONFIG,
            deployment_name: "v3",
            environment: "production",
            preserve_previous_prod_deployment: true,
            preserve_env_instance_type: false,
          }),
          pushVariables(null, null),
        )
      ).create_model_version_from_truss.model_version;
      await ready();
      expect((await environment(model, "production")).current_deployment.id).toBe(v3.id);
      expect((await deployment(model, v2.id)).status).toBe("ACTIVE");

      // truss predict --published finds the primary among the versions.
      const versions = (await data(keys.admin, modelWithVersionsQuery(model))).model.versions;
      expect(
        versions.filter((x: { is_primary: boolean }) => x.is_primary).map((x: { id: string }) => x.id),
      ).toEqual([v3.id]);
      // Without an environment: a deployment that serves nothing.
      const plain = (
        await data(
          keys.admin,
          createVersionMutation({ model_id: model, s3_key: await upload(keys.admin), config: CONFIG }),
          pushVariables(null, null),
        )
      ).create_model_version_from_truss.model_version;
      expect(await deployment(model, plain.id)).toMatchObject({ name: "deployment-4", environment: null });
    });

    it("deploy_draft_truss (truss push --watch): the development deployment, created then overwritten", async () => {
      const push = async () =>
        (
          await data(
            keys.member,
            deployDraftMutation({
              name: "drafty",
              s3_key: await upload(keys.member),
              config: CONFIG,
              origin: "BASETEN",
            }),
            pushVariables(null, null),
          )
        ).deploy_draft_truss.model_version;
      const first = await push();
      const model = first.oracle.id as string;
      expect(await deployment(model, first.id)).toMatchObject({ name: "development", is_development: true });
      const models = (await counts()).models;
      const second = await push();
      expect(second).toEqual(first);
      expect((await counts()).models).toBe(models);
      // truss predict (no --published) calls the development deployment; the CLI finds it by is_draft.
      const v = (await data(keys.member, modelWithVersionsQuery(model))).model.versions;
      expect(v).toEqual([expect.objectContaining({ id: first.id, is_draft: true, is_primary: false })]);
      expect((await data(keys.member, modelByIdQuery(model))).model.primary_version.id).toBe(first.id);
    });

    it("refuses each bad argument with invalid_request naming it, and changes nothing", async () => {
      const s3_key = await upload(keys.admin);
      const before = await counts();
      const cases: Array<[string, Record<string, unknown>, string, string]> = [
        [
          createModelMutation({ name: "x1", s3_key, config: CONFIG, deploy_timeout_minutes: 5 }),
          pushVariables(null, null),
          "invalid_request",
          "deploy_timeout_minutes",
        ],
        [
          createModelMutation({ name: "x2", s3_key, config: CONFIG, deploy_timeout_minutes: 1441 }),
          pushVariables(null, null),
          "invalid_request",
          "deploy_timeout_minutes",
        ],
        [
          createModelMutation({ name: "x3", s3_key, config: CONFIG, semver_bump: "HUGE" }),
          pushVariables(null, null),
          "invalid_request",
          "semver_bump",
        ],
        [
          createModelMutation({ name: "x4", s3_key, config: CONFIG, deployment_name: "no spaces" }),
          pushVariables(null, null),
          "invalid_request",
          "version_name",
        ],
        [
          createModelMutation({ name: "x5", s3_key, config: CONFIG, origin: "CHAINS" }),
          pushVariables(null, null),
          "invalid_request",
          "model_origin",
        ],
        [
          createModelMutation({ name: "x6", s3_key, config: "%%%" }),
          pushVariables(null, null),
          "invalid_request",
          "config",
        ],
        [
          createModelMutation({ name: "x7", s3_key, config: CONFIG }),
          { ...pushVariables(null, null), userDeployMetadata: "[1, 2]" },
          "invalid_request",
          "user_deploy_metadata",
        ],
        [
          createModelMutation({ name: "x8", s3_key, config: CONFIG }),
          { ...pushVariables(null, null), trussUserEnv: "not json" },
          "invalid_request",
          "truss_user_env",
        ],
        [
          createModelMutation({ name: "x9", s3_key, config: CONFIG, environment: "development" }),
          pushVariables(null, null),
          "invalid_environment_name",
          "deployment.environment_name",
        ],
      ];
      for (const [query, variables, code, field] of cases) {
        const r = await refusal(keys.admin, query, variables);
        expect(r, query).toMatchObject({ code, status: 400, detail: { field } });
        expect(r.data).toBeNull();
      }
      // Not JSON at all, or a variable of another type than its argument: graphql-js refuses the request.
      for (const [query, variables] of [
        [
          createModelMutation({ name: "y1", s3_key, config: CONFIG }),
          { ...pushVariables(null, null), userDeployMetadata: "{nope" },
        ],
        [
          createModelMutation({ name: "y2", s3_key, config: CONFIG }),
          { ...pushVariables(null, null), rawConfig: 12 },
        ],
        [
          createModelMutation({ name: "y3", s3_key, config: CONFIG }).replace(
            "$rawConfig: String",
            "$rawConfig: Int",
          ),
          pushVariables(null, null),
        ],
        [
          createModelMutation({ name: "y4", s3_key, config: CONFIG }).replace(/config: "[^"]*"/, ""),
          pushVariables(null, null),
        ],
      ] as const) {
        const r = await refusal(keys.admin, query, variables);
        expect(r, query).toMatchObject({ code: "invalid_query", status: 400 });
        expect(r.data).toBeUndefined();
      }
      expect(
        await refusal(
          keys.admin,
          createModelMutation({ name: "z1", s3_key: "uploads/none", config: CONFIG }),
          pushVariables(null, null),
        ),
      ).toMatchObject({ code: "artifact_not_found", status: 404 });
      expect(await counts()).toEqual(before);
    });

    it("refuses a member not on a restricted environment's list, through GraphQL too", async () => {
      const created = (
        await data(
          keys.listed,
          createModelMutation({
            name: "guarded",
            s3_key: await upload(keys.listed),
            config: CONFIG,
            environment: "prod-eu",
          }),
          pushVariables(null, null),
        )
      ).create_model_from_truss.model_version;
      const model = created.oracle.id as string;
      await ready();
      for (const who of [keys.member, keys.workspace]) {
        const s3_key = await upload(who);
        const before = await counts();
        const r = await refusal(
          who,
          createVersionMutation({ model_id: model, s3_key, config: CONFIG, environment: "prod-eu" }),
          pushVariables(null, null),
        );
        expect(r).toMatchObject({
          code: "environment_restricted",
          status: 403,
          detail: { environments: ["prod-eu"] },
        });
        const fresh = await refusal(
          who,
          createModelMutation({ name: "sneaky", s3_key, config: CONFIG, environment: "prod-eu" }),
          pushVariables(null, null),
        );
        expect(fresh).toMatchObject({ code: "environment_restricted" });
        expect(await counts()).toEqual(before);
      }
      expect((await environment(model, "prod-eu")).current_deployment.id).toBe(created.id);
      // Without the environment, the member's push is not a managed change.
      const plain = await data(
        keys.member,
        createVersionMutation({ model_id: model, s3_key: await upload(keys.member), config: CONFIG }),
        pushVariables(null, null),
      );
      expect(plain.create_model_version_from_truss.model_version.oracle.id).toBe(model);
      // Another team's key: the model does not exist.
      expect(
        await refusal(
          keys.b_admin,
          createVersionMutation({ model_id: model, s3_key: await upload(keys.b_admin), config: CONFIG }),
          pushVariables(null, null),
        ),
      ).toMatchObject({ code: "model_not_found", status: 404 });
    });

    it("--team: a fresh upload follows a push into another team the caller is in, and only then", async () => {
      // The credentials name no team: the upload is the caller's default team's.
      const s3_key = await upload(keys.both);
      const store = control.ctx.store.db;
      const teamOf = async (key: string) =>
        (
          await store
            .selectFrom("artifacts")
            .select("team_id")
            .where("key", "=", key)
            .executeTakeFirstOrThrow()
        ).team_id;
      expect(await teamOf(s3_key)).toBe(defaultTeam);
      // Refused in team B (a model of that name exists there): the upload stays where it was.
      expect(
        await refusal(
          keys.both,
          createModelMutation({ name: "beta", s3_key, config: CONFIG, team_id: teamB }),
          pushVariables(null, null),
        ),
      ).toMatchObject({ code: "model_name_taken", status: 409 });
      expect(await teamOf(s3_key)).toBe(defaultTeam);
      // A key of team B alone cannot take the default team's upload.
      expect(
        await refusal(
          keys.b_admin,
          createModelMutation({ name: "stolen", s3_key, config: CONFIG }),
          pushVariables(null, null),
        ),
      ).toMatchObject({ code: "artifact_not_found" });
      const moved = (
        await data(
          keys.both,
          createModelMutation({ name: "in-b", s3_key, config: CONFIG, team_id: teamB }),
          pushVariables(null, null),
        )
      ).create_model_from_truss.model_version;
      expect(await teamOf(s3_key)).toBe(teamB);
      expect((await root.get(`/v1/models/${moved.oracle.id}`)).body.team_name).toBe("Team B");
      // An upload a deployment already uses never moves.
      expect(
        await refusal(
          keys.both,
          createModelMutation({ name: "again", s3_key, config: CONFIG, team_id: defaultTeam }),
          pushVariables(null, null),
        ),
      ).toMatchObject({ code: "artifact_not_found" });
    });
  });

  describe("hostile documents", () => {
    it("bounds depth, selections, aliases, root fields and tokens before validating", async () => {
      const deep = `{ ${"a { ".repeat(9)}b${" }".repeat(9)} }`;
      const aliases = `{ ${Array.from({ length: 21 }, (_, i) => `t${i}: __typename`).join(" ")} }`;
      const roots = `{ ${Array.from({ length: 11 }, () => "teams { id }").join(" ")} }`;
      // Each fragment spreads the next twice: 2^30 selections once expanded.
      const fragments = Array.from(
        { length: 30 },
        (_, i) => `fragment F${i} on Query { ...F${i + 1} ...F${i + 1} }`,
      );
      const explosion = `{ ...F0 } ${fragments.join(" ")} fragment F30 on Query { teams { id } }`;
      // The same, ending in a cycle instead of a field: expanded, it selects no field at all.
      const cycle = `{ ...F0 } ${fragments.join(" ")} fragment F30 on Query { ...F0 }`;
      const tokens = `{ ${"teams { id } ".repeat(700)} }`;
      const twoMutations = `mutation { a: deploy_draft_truss(name: "a", s3_key: "k", config: "e30=") { model_version { id } }
        b: deploy_draft_truss(name: "b", s3_key: "k", config: "e30=") { model_version { id } } }`;
      for (const [query, limit] of [
        [deep, /deeper than 8/],
        [aliases, /more than 20 aliases/],
        [roots, /at most 10 top-level/],
        [explosion, /more than 500 selections/],
        [cycle, /more than 500 selections/],
        [tokens, /more than 2000 tokens/],
        [twoMutations, /at most 1 top-level/],
      ] as const) {
        const r = await refusal(keys.member, query);
        expect(r, query.slice(0, 80)).toMatchObject({ code: "query_too_complex", status: 400 });
        expect(r.description).toMatch(limit);
        expect(r.data).toBeUndefined();
      }
    });

    it("refuses introspection, syntax errors, unknown fields and operations", async () => {
      for (const [query, message] of [
        ["{ __schema { types { name } } }", /introspection/i],
        ['{ __type(name: "Model") { name } }', /introspection/i],
        ["{ teams { id ", /Syntax Error/],
        ["{ secrets { value } }", /Cannot query field "secrets"/],
      ] as const) {
        const r = await refusal(keys.member, query);
        expect(r).toMatchObject({ code: "invalid_query", status: 400 });
        expect(r.description).toMatch(message);
      }
      const unknownOp = await gql(keys.member, "query A { teams { id } }", null, { operationName: "B" });
      expect(unknownOp.body.errors[0].extensions.code).toBe("invalid_query");
    });

    it("answers malformed requests at the HTTP layer with the JSON error body", async () => {
      const post = (body: string | Buffer, type = "application/json") =>
        request(`${url}/graphql/`, {
          method: "POST",
          headers: { "content-type": type, authorization: `Api-Key ${keys.member}` },
          body,
        });
      const cases: Array<[Promise<Awaited<ReturnType<typeof post>>>, number, string]> = [
        [post("{ nope"), 400, "invalid_json"],
        [post(JSON.stringify({ variables: {} })), 400, "invalid_request"],
        [post(JSON.stringify({ query: "{ teams { id } }", sneaky: 1 })), 400, "invalid_request"],
        [post(JSON.stringify({ query: { teams: 1 } })), 400, "invalid_request"],
        [post("{ teams { id } }", "application/graphql"), 415, "unsupported_media_type"],
        // A lone surrogate, in a variable or in the query: refused before anything runs (issue 15's fuzzing).
        [
          post(
            '{"query":"mutation($n: String!) { x: deploy_draft_truss(name: $n, s3_key: \\"k\\", config: \\"e30=\\") { id } }","variables":{"n":"m\\ud800"}}',
          ),
          400,
          "invalid_request",
        ],
        [post('{"query":"{ teams { id } } # \\udc00"}'), 400, "invalid_request"],
        [
          post(JSON.stringify({ query: `{ teams { id } } # ${"x".repeat(1024 * 1024)}` })),
          413,
          "payload_too_large",
        ],
      ];
      for (const [pending, status, code] of cases) {
        const res = await pending;
        expect(res.statusCode).toBe(status);
        expect(await res.body.json()).toMatchObject({ error_code: code });
      }
      const lone = await post('{"query":"query($n: String) { teams { id } }","variables":{"n":"\\ud83d"}}');
      expect(await lone.body.json()).toMatchObject({ detail: { field: "variables.n" } });
      const get = await request(`${url}/graphql/?query=${encodeURIComponent("{ teams { id } }")}`, {
        headers: { authorization: `Api-Key ${keys.member}` },
      });
      expect(get.statusCode).toBe(404);
      expect(await get.body.json()).toMatchObject({ error_code: "route_not_found" });
    });
  });
});
