// The promotion dry run (`dry_run: true` on both promote routes) through the management API on both
// stores: what it answers for a reuse, a deployment bound elsewhere, `redeploy_on_promotion`, a forced
// redeploy into a region, an egress mismatch, a full region, a promotion in flight, a failed deployment;
// that the whole database is unchanged after each (no row, no revision bump, no audit entry); that the real
// promotion then does what the dry run said; and that a caller gets exactly the refusal the real call would
// give them, before anything about the state. Replica states come from real plane reports over HTTP.

import { execFile } from "node:child_process";
import { join } from "node:path";
import { promisify } from "node:util";
import { Ajv } from "ajv";
import { sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Db } from "../../src/store/store.ts";
import { BIN } from "../support/cluster.ts";
import {
  type ApiClient,
  type Response,
  startTestControl,
  type TestControl,
  tempDir,
} from "../support/control.ts";
import { STORE_KINDS } from "../support/databases.ts";
import { expectError, expectReferenceShape } from "../support/reference.ts";

const run = promisify(execFile);

const PLANES = [
  { name: "us-1", region: "us", ingress: ["127.0.1.1:8443"], capacity: 16, global_ingress: true },
  { name: "eu-1", region: "eu", ingress: ["127.0.2.1:8443"], capacity: 8 },
  // One slot: filled by another model's regional deployment, so the region is full.
  { name: "uk-1", region: "uk", ingress: ["127.0.3.1:8443"], capacity: 1 },
];

describe.each(STORE_KINDS)("promotion dry run on %s", (kind) => {
  let t: TestControl;
  let admin: ApiClient;
  const tokens = new Map<string, string>();
  let validateDryRun: ReturnType<Ajv["compile"]>;

  const db = (): Db => t.control.ctx.store.db;

  beforeAll(async () => {
    t = await startTestControl(kind);
    admin = t.admin;
    for (const p of PLANES) {
      const res = await admin.post("/v1/admin/planes", p);
      expect(res.status, JSON.stringify(res.body)).toBe(200);
      tokens.set(p.name, res.body.credential);
    }
    for (const [group, body] of [
      ["prod-eu", { region_restriction: { region: "eu" } }],
      ["prod-uk", { region_restriction: { region: "uk" } }],
      ["sealed", { egress: "deny" }],
    ] as const) {
      const res = await admin.patch(`/v1/environment_groups/${group}`, body);
      expect(res.status, JSON.stringify(res.body)).toBe(200);
    }
    // The answer's schema as /v1/spec publishes it, with the reference's DeploymentV1 it names.
    const spec = (await admin.as(null).get("/v1/spec")).body;
    const ajv = new Ajv({ strict: false, allErrors: true });
    ajv.addFormat("date-time", /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$/);
    ajv.addSchema({ $id: "spec", components: spec.components });
    validateDryRun = ajv.getSchema("spec#/components/schemas/PromotionDryRunV1")!;
    expect(validateDryRun).toBeDefined();
  });
  afterAll(async () => t?.stop());

  /** Every plane reports every replica it is asked to run: READY unless `states` names its deployment. */
  async function report(states: Record<string, string> = {}) {
    for (const [name, token] of tokens) {
      const auth = { authorization: `Bearer ${token}` };
      const snap = await admin
        .as(null)
        .call("GET", `/v1/internal/planes/${name}/snapshot?wait=0`, undefined, auth);
      expect(snap.status, JSON.stringify(snap.body)).toBe(200);
      const replicas = (snap.body.replicas as Array<{ id: string; deployment_id: string }>).map((r) => ({
        id: r.id,
        deployment_id: r.deployment_id,
        state: states[r.deployment_id] ?? "READY",
        message: states[r.deployment_id] === "FAILED" ? "load() raised" : null,
        restarts: 0,
      }));
      const res = await admin
        .as(null)
        .call(
          "POST",
          `/v1/internal/planes/${name}/report`,
          { revision: snap.body.revision, replicas, request_counts: [] },
          { ...auth, "content-type": "application/json" },
        );
      expect(res.status, JSON.stringify(res.body)).toBe(200);
    }
  }

  /** The whole database, table by table, each table's rows in a stable order. */
  async function dump(): Promise<Record<string, string[]>> {
    const names =
      kind === "sqlite"
        ? await sql<{
            name: string;
          }>`select name from sqlite_master where type = 'table' and name not like 'sqlite_%'`.execute(db())
        : await sql<{
            name: string;
          }>`select table_name as name from information_schema.tables where table_schema = current_schema() and table_type = 'BASE TABLE'`.execute(
            db(),
          );
    const out: Record<string, string[]> = {};
    for (const { name } of names.rows) {
      const rows = await sql<Record<string, unknown>>`select * from ${sql.table(name)}`.execute(db());
      out[name] = rows.rows
        .map((r) => JSON.stringify(r, (_k, v) => (Buffer.isBuffer(v) ? v.toString("hex") : v)))
        .sort();
    }
    expect(Object.keys(out)).toEqual(
      expect.arrayContaining(["audit_logs", "revision", "promotions", "deployments", "replicas"]),
    );
    return out;
  }

  /** Runs a dry run and asserts it changed nothing anywhere: no row, no revision, no audit entry. */
  async function unchanged(call: () => Promise<Response>): Promise<Response> {
    // The autoscaler's first pass over a new deployment records its replica count: let it settle first,
    // so that what is compared is the dry run's doing alone (a settled pass writes nothing).
    await t.control.ctx.autoscaler?.tick();
    const before = await dump();
    const revision = await t.control.ctx.store.revision();
    const res = await call();
    expect(await t.control.ctx.store.revision()).toBe(revision);
    expect(await dump()).toEqual(before);
    return res;
  }

  /** A dry run of promoting `deployment` into `env` that changed nothing, with a valid answer. */
  async function dryRun(model: string, env: string, deployment: string, client = admin, extra = {}) {
    const res = await unchanged(() =>
      client.post(`/v1/models/${model}/environments/${env}/promote`, {
        deployment_id: deployment,
        dry_run: true,
        ...extra,
      }),
    );
    if (res.status === 200) {
      expect(validateDryRun(res.body), JSON.stringify(validateDryRun.errors)).toBe(true);
      expectReferenceShape("DeploymentV1", res.body.source);
    }
    return res;
  }

  async function promote(model: string, env: string, deployment: string) {
    const res = await admin.post(`/v1/models/${model}/environments/${env}/promote`, {
      deployment_id: deployment,
    });
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    expectReferenceShape("DeploymentV1", res.body);
    return res.body as {
      id: string;
      status: string;
      status_message: string | null;
      region: { slug: string } | null;
    };
  }

  /** Planes the control plane placed a deployment's replicas on, by name. */
  async function placedOn(deploymentId: string): Promise<string[]> {
    const rows = await db()
      .selectFrom("replicas")
      .select("plane")
      .where("deployment_id", "=", deploymentId)
      .execute();
    return rows.map((r) => r.plane).sort();
  }

  /** A model with one ACTIVE deployment serving no environment (placed on the global ingress). */
  async function model(name: string) {
    const created = await admin.createModel(name);
    expect(created.status, JSON.stringify(created.body)).toBe(200);
    await report();
    return { id: created.body.model.id as string, d: created.body.deployment.id as string };
  }

  const createEnv = async (modelId: string, name: string, body = {}) => {
    const res = await admin.post(`/v1/models/${modelId}/environments`, { name, ...body });
    expect(res.status, JSON.stringify(res.body)).toBe(200);
  };

  it("reuse: the deployment itself, on the planes it runs on, switching at once; then the real call agrees", async () => {
    const m = await model("reuse");
    await createEnv(m.id, "staging");
    const res = await dryRun(m.id, "staging", m.d);
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    expect(res.body).toMatchObject({
      dry_run: true,
      model_id: m.id,
      environment: "staging",
      source: { id: m.d, status: "ACTIVE" },
      outcome: "promote",
      refusal: null,
      in_flight_promotion: null,
      candidate: {
        kind: "reuse",
        reason: "reuse",
        reasons: [],
        deployment_id: m.d,
        copied_from: null,
        region: null,
        egress: "allow",
        wakes: false,
        status: "ACTIVE",
        status_message: null,
      },
      placement: {
        region: null,
        replicas: 1,
        planes: [{ name: "us-1", region: "us", replicas: 1 }],
        unplaced: 0,
        has_capacity: true,
      },
      switches: "at_once",
      previous_deployment: null,
    });
    expect(res.body.message).toContain("switches to it at once");

    const promoted = await promote(m.id, "staging", m.d);
    expect(promoted.id).toBe(m.d);
    const env = await admin.get(`/v1/models/${m.id}/environments/staging`);
    expect(env.body.current_deployment.id).toBe(m.d);
    expect(await placedOn(m.d)).toEqual(["us-1"]);
  });

  it("bound elsewhere: a copy, named for the environment, with the previous deployment's fate", async () => {
    const m = await model("bound");
    await createEnv(m.id, "staging");
    await promote(m.id, "staging", m.d);
    const first = await admin.createDeployment(m.id, "hello-js", { environment_name: "canary" });
    await report();
    const previous = first.body.deployment.id as string;
    const res = await dryRun(m.id, "canary", m.d);
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    expect(res.body).toMatchObject({
      outcome: "promote",
      candidate: {
        kind: "copy",
        reason: "bound_elsewhere",
        reasons: ["bound_elsewhere"],
        deployment_id: null,
        name: "deployment-1-canary",
        copied_from: m.d,
        bound_environments: ["staging"],
        status: "DEPLOYING",
        status_message: null,
      },
      placement: { region: null, replicas: 1, planes: [{ name: "us-1", replicas: 1 }], has_capacity: true },
      switches: "when_ready",
      previous_deployment: { id: previous, fate: "scale_to_zero", cleanup_strategy: "SCALE_TO_ZERO" },
    });
    // Keeping the previous deployment is answered too.
    const keep = await dryRun(m.id, "canary", m.d, admin, { scale_down_previous_deployment: false });
    expect(keep.body.previous_deployment).toEqual({ id: previous, fate: "keep", cleanup_strategy: "KEEP" });

    const copy = await promote(m.id, "canary", m.d);
    expect(copy.id).not.toBe(m.d);
    expect(copy.status).toBe("DEPLOYING");
    expect(await placedOn(copy.id)).toEqual(["us-1"]);
    await report();
    expect((await admin.get(`/v1/models/${m.id}/deployments/${previous}`)).body.status).toBe(
      "SCALED_TO_ZERO",
    );
  });

  it("redeploy_on_promotion: a copy for that reason alone", async () => {
    const m = await model("redeploy");
    await createEnv(m.id, "canary", { promotion_settings: { redeploy_on_promotion: true } });
    const res = await dryRun(m.id, "canary", m.d);
    expect(res.body).toMatchObject({
      outcome: "promote",
      candidate: { kind: "copy", reason: "redeploy_on_promotion", reasons: ["redeploy_on_promotion"] },
      previous_deployment: null,
    });
    expect(res.body.message).toContain("canary has redeploy_on_promotion on");
  });

  it("forced redeploy into a region: a copy placed only on the region's planes; then the real call agrees", async () => {
    const m = await model("regional");
    await createEnv(m.id, "prod-eu");
    expect(await placedOn(m.d)).toEqual(["us-1"]);
    const res = await dryRun(m.id, "prod-eu", m.d);
    expect(res.body).toMatchObject({
      outcome: "promote",
      candidate: { kind: "copy", reason: "region", reasons: ["region"], region: "eu", status: "DEPLOYING" },
      placement: {
        region: "eu",
        replicas: 1,
        planes: [{ name: "eu-1", region: "eu", replicas: 1 }],
        unplaced: 0,
        has_capacity: true,
      },
      switches: "when_ready",
    });
    expect(res.body.message).toContain("forced redeploy into region eu, even with redeploy_on_promotion off");

    const copy = await promote(m.id, "prod-eu", m.d);
    expect(copy.region?.slug).toBe("eu");
    expect(await placedOn(copy.id)).toEqual(["eu-1"]);

    // A promotion in flight blocks another: the dry run names it, the real call is 409.
    const other = (await admin.createDeployment(m.id)).body.deployment.id as string;
    const blocked = await dryRun(m.id, "prod-eu", other);
    expect(blocked.body).toMatchObject({
      outcome: "refused",
      refusal: { error_code: "promotion_in_progress" },
      in_flight_promotion: {
        status: "RELEASING",
        source_deployment_id: m.d,
        candidate_deployment_id: copy.id,
      },
      candidate: null,
      placement: null,
    });
    expectError(
      await admin.post(`/v1/models/${m.id}/environments/prod-eu/promote`, { deployment_id: other }),
      409,
      "promotion_in_progress",
    );

    // Once the copy serves, promoting it again is a no-op.
    await report();
    const current = await dryRun(m.id, "prod-eu", copy.id);
    expect(current.body).toMatchObject({
      outcome: "already_current",
      candidate: null,
      in_flight_promotion: null,
    });
  });

  it("egress mismatch: a copy that runs under the group's policy", async () => {
    const m = await model("egress");
    await createEnv(m.id, "sealed");
    const res = await dryRun(m.id, "sealed", m.d);
    expect(res.body).toMatchObject({
      outcome: "promote",
      candidate: { kind: "copy", reason: "egress", reasons: ["egress"], egress: "deny", region: null },
      source: { id: m.d, egress: "allow" },
    });
  });

  it("full region: no plane for the copy, and the status message it would wait with; then the real call agrees", async () => {
    const filler = await admin.createModel("filler", "hello-js", { environment_name: "prod-uk" });
    expect(filler.status, JSON.stringify(filler.body)).toBe(200);
    await report();
    expect(await placedOn(filler.body.deployment.id)).toEqual(["uk-1"]);
    const m = await model("full");
    await createEnv(m.id, "prod-uk");
    const waiting = "Waiting for capacity: no workload plane in region 'uk' has a free replica slot.";
    const res = await dryRun(m.id, "prod-uk", m.d);
    expect(res.body).toMatchObject({
      outcome: "promote",
      candidate: {
        kind: "copy",
        reason: "region",
        region: "uk",
        status: "DEPLOYING",
        status_message: waiting,
      },
      placement: { region: "uk", replicas: 1, planes: [], unplaced: 1, has_capacity: false },
      switches: "when_ready",
    });
    expect(res.body.message).toContain("No plane of region uk has a free slot for it now, so it would wait");

    const copy = await promote(m.id, "prod-uk", m.d);
    // The promote answer is read before the scheduler places the copy; the deployment then says why it waits.
    const placed = (await admin.get(`/v1/models/${m.id}/deployments/${copy.id}`)).body;
    expect(placed).toMatchObject({ status: "DEPLOYING", status_message: waiting });
    expect(await placedOn(copy.id)).toEqual([]);
  });

  it("a failed deployment: refused, as the real call refuses it", async () => {
    const m = await model("failed");
    const broken = (await admin.createDeployment(m.id)).body.deployment.id as string;
    await report({ [broken]: "FAILED" });
    expect((await admin.get(`/v1/models/${m.id}/deployments/${broken}`)).body.status).toBe("DEPLOY_FAILED");
    const res = await dryRun(m.id, "production", broken);
    expect(res.body).toMatchObject({
      outcome: "refused",
      refusal: { error_code: "conflict" },
      candidate: null,
    });
    expectError(
      await admin.post(`/v1/models/${m.id}/environments/production/promote`, { deployment_id: broken }),
      409,
      "conflict",
    );
  });

  it("the production route takes dry_run too", async () => {
    const m = await model("prod-route");
    const res = await unchanged(() =>
      admin.post(`/v1/models/${m.id}/deployments/${m.d}/promote`, { dry_run: true }),
    );
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    expect(validateDryRun(res.body), JSON.stringify(validateDryRun.errors)).toBe(true);
    expect(res.body).toMatchObject({
      environment: "production",
      outcome: "promote",
      candidate: { kind: "reuse" },
    });
    // Without it, the reference's answer, and the promotion happens.
    const real = await admin.post(`/v1/models/${m.id}/deployments/${m.d}/promote`, {});
    expectReferenceShape("DeploymentV1", real.body);
    expect(real.body.dry_run).toBeUndefined();
    expect((await admin.get(`/v1/models/${m.id}/environments/production`)).body.current_deployment.id).toBe(
      m.d,
    );
  });

  it("meridian promote --dry-run prints what would happen, changes nothing, and fails when it would be refused", async () => {
    const cwd = tempDir();
    const cli = async (...args: string[]) => {
      const env: NodeJS.ProcessEnv = { ...process.env, XDG_CONFIG_HOME: join(cwd, "config") };
      for (const k of ["MERIDIAN_API_URL", "MERIDIAN_API_KEY", "MERIDIAN_DATA_DIR"]) delete env[k];
      try {
        const { stdout, stderr } = await run(
          process.execPath,
          [BIN, ...args, "--api-url", t.control.url, "--api-key", admin.key ?? ""],
          { cwd, env, timeout: 60_000 },
        );
        return { code: 0, stdout, stderr };
      } catch (err) {
        const e = err as { code: number; stdout: string; stderr: string };
        return { code: e.code, stdout: e.stdout, stderr: e.stderr };
      }
    };
    const m = await model("cli");
    await createEnv(m.id, "prod-eu");
    const args = ["promote", "--model", m.id, "--deployment", m.d, "-e", "prod-eu", "--dry-run"];
    let text = { code: -1, stdout: "", stderr: "" };
    await unchanged(async () => {
      text = await cli(...args);
      return { status: 200, body: null, headers: {} };
    });
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout).toContain(
      `Dry run (nothing changed): A copy of ${m.d} would be promoted into prod-eu`,
    );
    expect(text.stdout).toContain("forced redeploy into region eu");
    expect(text.stdout).toContain("It would run 1 replica on eu-1");
    const json = await cli(...args, "--json");
    expect(json.code, json.stderr).toBe(0);
    expect(validateDryRun(JSON.parse(json.stdout))).toBe(true);

    await promote(m.id, "prod-eu", m.d);
    const blocked = await cli(...args);
    expect(blocked.code).toBe(1);
    expect(blocked.stdout).toContain("The promotion would be refused");
    expect(blocked.stdout).toMatch(/In flight: promotion \w+ of /);
  });

  it("refuses a caller exactly as the real call would, before anything about the state", async () => {
    const m = await model("guarded");
    await createEnv(m.id, "locked");
    const teamId = (await admin.get("/v1/teams")).body.teams[0].id as string;
    const member = await admin.post("/v1/admin/users", {
      email: `member-${kind}@example.com`,
      teams: [{ team_id: teamId, role: "MEMBER" }],
    });
    expect(member.status, JSON.stringify(member.body)).toBe(200);
    const restrict = await admin.patch("/v1/environment_groups/locked", {
      manage_access: { is_restricted: true, user_ids: [] },
    });
    expect(restrict.status, JSON.stringify(restrict.body)).toBe(200);
    const workspace = (await admin.post("/v1/api_keys", { type: "WORKSPACE_MANAGE_ALL" })).body
      .api_key as string;
    const invoke = (await admin.post("/v1/api_keys", { type: "WORKSPACE_INVOKE" })).body.api_key as string;
    const otherTeam = (await admin.post("/v1/admin/teams", { name: `other-${kind}` })).body.id as string;
    const stranger = await admin.post("/v1/admin/users", {
      email: `stranger-${kind}@example.com`,
      teams: [{ team_id: otherTeam, role: "TEAM_ADMIN" }],
    });

    const cases: Array<[string, ApiClient, string, number, string]> = [
      [
        "an unlisted member, restricted environment",
        admin.as(member.body.api_key),
        "locked",
        403,
        "environment_restricted",
      ],
      [
        "a workspace key, restricted environment",
        admin.as(workspace),
        "locked",
        403,
        "environment_restricted",
      ],
      ["an invoke-only key", admin.as(invoke), "locked", 403, "forbidden"],
      ["another team's admin", admin.as(stranger.body.api_key), "locked", 404, "model_not_found"],
      ["anyone, an unknown environment", admin, "nowhere", 404, "environment_not_found"],
    ];
    for (const [who, client, env, status, code] of cases) {
      const dry = await dryRun(m.id, env, m.d, client);
      expectError(dry, status, code);
      const real = await unchanged(() =>
        client.post(`/v1/models/${m.id}/environments/${env}/promote`, { deployment_id: m.d }),
      );
      // The very answer the real call gives: a dry run tells a caller nothing more.
      expect(dry.body, who).toEqual(real.body);
    }
    // A restricted environment with a promotion in flight is still 403 first, never the state's 409.
    const starting = (await admin.createDeployment(m.id)).body.deployment.id as string;
    expect((await promote(m.id, "locked", starting)).id).toBe(starting);
    expect((await dryRun(m.id, "locked", m.d)).body.refusal).toMatchObject({
      error_code: "promotion_in_progress",
    });
    expectError(
      await dryRun(m.id, "locked", m.d, admin.as(member.body.api_key)),
      403,
      "environment_restricted",
    );
    await createEnv(m.id, "other");
    // An unknown deployment, a malformed flag: the same errors as any promote.
    expectError(await dryRun(m.id, "other", "zzzzzzz"), 404, "deployment_not_found");
    expectError(await dryRun(m.id, "other", m.d, admin, { dry_run: "yes" }), 400, "invalid_request");
  });
});
