// Team secrets end to end on both stores: Baseten's /v1/secrets API to the letter of its spec, values
// sealed at rest under a key file apart from the database, delivered only to the plane a replica is placed
// on and only for the names its config lists, and a missing secret failing the deployment with its name.
// Each guarantee is tried as an attacker would: another team's keys, another plane's credential, a swapped
// ciphertext, a wrong key file; and a canary value is looked for in every answer, log line, audit entry,
// snapshot and the database files themselves. Planes are driven over HTTP with their credentials, and the
// plane side is the real `fetchReplicaSecrets` writing real files.

import { randomUUID } from "node:crypto";
import { cpSync, existsSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { Ajv } from "ajv";
import { sql } from "kysely";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type RunningControl, startControl } from "../../src/control/main.ts";
import { loadSecretsKeyFile, newKeyFileText, SecretsKeyError } from "../../src/lib/secret-box.ts";
import { fetchReplicaSecrets, ReplicaSecretsError } from "../../src/plane/secrets.ts";
import { ApiClient, EXAMPLES, packDirectory, type Response, tempDir } from "../support/control.ts";
import { createTestDatabase, STORE_KINDS, type TestDatabase } from "../support/databases.ts";
import { expectError, expectReferenceShape } from "../support/reference.ts";

// —— the published spec, in full where this checkout can see it ——

/** Baseten's full management API (../shared/reference), or the vendored copy of its subset. */
function referenceSpec(): { components: { schemas: Record<string, object> } } {
  for (let dir = import.meta.dirname; ; dir = dirname(dir)) {
    const full = join(dir, "shared/reference/baseten-management-api.json");
    if (existsSync(full)) return JSON.parse(readFileSync(full, "utf8"));
    if (dirname(dir) === dir) break;
  }
  const vendored = join(
    import.meta.dirname,
    "../../src/control/reference/baseten-management-api.subset.json",
  );
  return JSON.parse(readFileSync(vendored, "utf8"));
}
const ajv = new Ajv({ strict: false, allErrors: true });
ajv.addFormat("date-time", /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$/);
ajv.addSchema({ $id: "full", components: referenceSpec().components });

/** Valid against the full spec's schema and the subset's (test/support/reference.ts). */
function expectShape(name: string, body: unknown) {
  const validate = ajv.getSchema(`full#/components/schemas/${name}`)!;
  expect(validate(body), `${name}: ${ajv.errorsText(validate.errors)} ${JSON.stringify(body)}`).toBe(true);
  expectReferenceShape(name, body);
}

// —— packages that name secrets ——

/** hello-js with a `secrets:` section (placeholders as truss examples write them). */
async function packageWithSecrets(secrets: Record<string, string | null>): Promise<Buffer> {
  const dir = tempDir();
  cpSync(join(EXAMPLES, "hello-js"), dir, { recursive: true });
  const lines = Object.entries(secrets).map(([n, v]) => `  ${n}: ${v === null ? "null" : JSON.stringify(v)}`);
  writeFileSync(
    join(dir, "config.yaml"),
    `model_name: with-secrets\nruntime:\n  predict_concurrency: 1\nsecrets:\n${lines.join("\n")}\n`,
  );
  return packDirectory(dir);
}

/** Every answer an API caller got, to look for values in. */
class RecordingClient extends ApiClient {
  constructor(
    url: string,
    key: string | null,
    readonly seen: string[],
  ) {
    super(url, key);
  }
  override as(key: string | null): RecordingClient {
    return new RecordingClient(this.url, key, this.seen);
  }
  override async call<T = any>(
    method: string,
    path: string,
    body?: unknown,
    headers: Record<string, string> = {},
  ): Promise<Response<T>> {
    const res = await super.call<T>(method, path, body, headers);
    this.seen.push(JSON.stringify(res.body), JSON.stringify(res.headers));
    return res;
  }
}

interface Desired {
  id: string;
  deployment_id: string;
}

interface Control {
  db: TestDatabase;
  dataDir: string;
  control: RunningControl;
  logs: string[];
}

async function start(
  db: TestDatabase,
  options: { dataDir?: string; keyFile?: string } = {},
): Promise<Control> {
  const logs: string[] = [];
  const dataDir = options.dataDir ?? join(db.dir, "control");
  const control = await startControl({
    dataDir,
    host: "127.0.0.1",
    port: 0,
    databaseUrl: db.url,
    domain: "meridian.test",
    publicUrl: null,
    ...(options.keyFile ? { secretsKeyFile: options.keyFile } : {}),
    // The test drives plane reports by hand: a silent plane must not be judged down mid-test.
    planeTimeoutMs: 3_600_000,
    autoscalerIntervalMs: 3_600_000,
    logger: pino({ level: "trace" }, { write: (line: string) => void logs.push(line) }),
  });
  return { db, dataDir, control, logs };
}

describe.each(STORE_KINDS)("secrets on %s", (kind) => {
  let c: Control;
  let admin: RecordingClient;
  const seen: string[] = [];
  let teamA: string;
  let teamB: { id: string; admin: RecordingClient; workspace: RecordingClient };
  let workspaceA: RecordingClient;
  let invokeA: RecordingClient;
  const planes: Record<string, string> = {};
  const CANARY = `canary-${randomUUID()}`;
  /** Replica states each plane reports, by replica id (what its agent made of each start). */
  const started = new Map<string, { state: string; message: string | null; dir: string }>();

  const asPlane = (plane: string, method: string, path: string, body?: unknown) =>
    new ApiClient(c.control.url, null).call(method, path, body, { authorization: `Bearer ${planes[plane]}` });

  async function snapshot(plane: string): Promise<any> {
    const res = await asPlane(plane, "GET", `/v1/internal/planes/${plane}/snapshot?wait=0`);
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    return res.body;
  }

  /**
   * What a plane's agent does, in miniature: every replica of its snapshot not started yet gets its secrets
   * (`fetchReplicaSecrets`, the function the agent calls) and is READY, or FAILED with the error's message;
   * then it reports them all.
   */
  async function reconcile(plane: string) {
    const snap = await snapshot(plane);
    for (const r of snap.replicas as Desired[]) {
      if (started.has(r.id)) continue;
      const dir = join(c.db.dir, "planes", plane, "secrets", r.id);
      try {
        await fetchReplicaSecrets({
          controlUrl: c.control.url,
          planeToken: planes[plane]!,
          plane,
          replicaId: r.id,
          dir,
        });
        started.set(r.id, { state: "READY", message: null, dir });
      } catch (err) {
        if (!(err instanceof ReplicaSecretsError)) throw err;
        started.set(r.id, { state: "FAILED", message: `The replica's secrets: ${err.message}`, dir });
      }
    }
    const replicas = (snap.replicas as Desired[]).map((r) => ({
      id: r.id,
      deployment_id: r.deployment_id,
      state: started.get(r.id)!.state,
      message: started.get(r.id)!.message,
      restarts: 0,
    }));
    const res = await asPlane(plane, "POST", `/v1/internal/planes/${plane}/report`, {
      revision: snap.revision,
      replicas,
      request_counts: [],
    });
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    return snap.replicas as Desired[];
  }

  async function push(client: ApiClient, name: string, archive: Buffer, deployment = {}) {
    const s3_key = await client.upload(archive);
    const res = await client.post("/v1/models", {
      source: { kind: "model_archive", name, s3_key, deployment: { config: {}, ...deployment } },
    });
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    return { model: res.body.model.id as string, deployment: res.body.deployment.id as string };
  }

  const deployment = async (model: string, id: string) =>
    (await admin.get(`/v1/models/${model}/deployments/${id}`)).body;

  async function replicasOf(deploymentId: string, plane: string): Promise<Desired[]> {
    return ((await snapshot(plane)).replicas as Desired[]).filter((r) => r.deployment_id === deploymentId);
  }

  beforeAll(async () => {
    c = await start(await createTestDatabase(kind));
    admin = new RecordingClient(c.control.url, c.control.adminKey, seen);
    teamA = (await admin.get("/v1/teams")).body.teams[0].id;
    for (const [name, region, global] of [
      ["eu-1", "eu", true],
      ["us-1", "us", false],
    ] as const) {
      const res = await admin.post("/v1/admin/planes", {
        name,
        region,
        ingress: [region === "eu" ? "127.0.2.1:8443" : "127.0.1.1:8443"],
        capacity: 32,
        global_ingress: global,
      });
      expect(res.status, JSON.stringify(res.body)).toBe(200);
      planes[name] = res.body.credential;
    }
    const team = await admin.post("/v1/admin/teams", { name: "Team B" });
    const user = await admin.post("/v1/admin/users", {
      email: "admin-b@example.com",
      teams: [{ team_id: team.body.id, role: "TEAM_ADMIN" }],
    });
    const bAdmin = admin.as(user.body.api_key);
    const bWorkspace = await bAdmin.post(`/v1/teams/${team.body.id}/api_keys`, {
      type: "WORKSPACE_MANAGE_ALL",
    });
    teamB = { id: team.body.id, admin: bAdmin, workspace: admin.as(bWorkspace.body.api_key) };
    const ws = await admin.post(`/v1/teams/${teamA}/api_keys`, { type: "WORKSPACE_MANAGE_ALL" });
    workspaceA = admin.as(ws.body.api_key);
    const inv = await admin.post(`/v1/teams/${teamA}/api_keys`, { type: "WORKSPACE_INVOKE" });
    invokeA = admin.as(inv.body.api_key);
  });
  afterAll(async () => {
    await c?.control.stop();
    await c?.db.drop();
  });

  describe("the API, to the letter of the spec", () => {
    it("upserts, lists and deletes in the caller's team and in a named one, never showing a value", async () => {
      const created = await admin.post("/v1/secrets", { name: "hf_token", value: CANARY });
      expect(created.status, JSON.stringify(created.body)).toBe(200);
      expectShape("SecretV1", created.body);
      expect(Object.keys(created.body).sort()).toEqual(["created_at", "id", "name", "team_name"]);
      expect(created.body).toMatchObject({ name: "hf_token", team_name: "Default Team" });

      const inTeam = await admin.post(`/v1/teams/${teamA}/secrets`, { name: "api.key-2", value: "v2" });
      expect(inTeam.status, JSON.stringify(inTeam.body)).toBe(200);
      expectShape("SecretV1", inTeam.body);

      for (const path of ["/v1/secrets", `/v1/teams/${teamA}/secrets`]) {
        const list = await admin.get(path);
        expect(list.status).toBe(200);
        expectShape("SecretsV1", list.body);
        expect(list.body.secrets.map((s: { name: string }) => s.name)).toEqual(["api.key-2", "hf_token"]);
      }

      // An update keeps the id and created_at ("unchanged across rotation") and replaces the value.
      const before = await c.control.ctx.store.db
        .selectFrom("secrets")
        .selectAll()
        .where("id", "=", created.body.id)
        .executeTakeFirstOrThrow();
      const updated = await admin.post(`/v1/teams/${teamA}/secrets`, {
        name: "hf_token",
        value: `${CANARY}-2`,
      });
      expect(updated.status).toBe(200);
      expect(updated.body).toEqual(created.body);
      const after = await c.control.ctx.store.db
        .selectFrom("secrets")
        .selectAll()
        .where("id", "=", created.body.id)
        .executeTakeFirstOrThrow();
      expect(after.sealed).not.toBe(before.sealed);
      expect(c.control.ctx.secrets.open(after, { team_id: teamA, name: "hf_token" })).toBe(`${CANARY}-2`);
      await admin.post("/v1/secrets", { name: "hf_token", value: CANARY });

      const tomb = await admin.delete(`/v1/teams/${teamA}/secrets/api.key-2`);
      expect(tomb.status).toBe(200);
      expectShape("SecretTombstoneV1", tomb.body);
      expect(tomb.body).toEqual({ name: "api.key-2" });
      const scratch = await admin.post("/v1/secrets", { name: "scratch", value: "x" });
      expect(scratch.status).toBe(200);
      expect((await admin.delete("/v1/secrets/scratch")).body).toEqual({ name: "scratch" });
      expect((await admin.get("/v1/secrets")).body.secrets.map((s: { name: string }) => s.name)).toEqual([
        "hf_token",
      ]);
    });

    it("records every change in the audit log, without the value", async () => {
      const items = (await admin.get("/v1/audit_logs?limit=1000")).body.items as Array<{
        action: string;
        target: string;
        after: unknown;
        before: unknown;
      }>;
      const secretEntries = items.filter((i) => i.action.startsWith("secret."));
      expect(secretEntries.map((i) => i.action).sort()).toEqual(
        [
          "secret.create",
          "secret.create",
          "secret.create",
          "secret.delete",
          "secret.delete",
          "secret.update",
          "secret.update",
        ].sort(),
      );
      expect(secretEntries.find((i) => i.action === "secret.update")).toMatchObject({
        target: `secret:${teamA}/hf_token`,
        after: { name: "hf_token" },
      });
      expect(JSON.stringify(items)).not.toContain("canary");
    });

    it("refuses names truss refuses and values out of bounds (400), changing nothing", async () => {
      const count = async () =>
        Number(
          (
            await c.control.ctx.store.db
              .selectFrom("audit_logs")
              .select((eb) => eb.fn.countAll<string | number>().as("n"))
              .executeTakeFirstOrThrow()
          ).n,
        );
      const audits = await count();
      const list = (await admin.get("/v1/secrets")).body;
      for (const [name, rule] of [
        ["", "empty"],
        [".", "dot"],
        ["..", "dot"],
        ["../../etc/passwd", "characters"],
        ["with space", "characters"],
        ["x".repeat(254), "too_long"],
      ] as const) {
        const res = await admin.post("/v1/secrets", { name, value: CANARY });
        expectError(res, 400, "invalid_secret_name");
        expect(res.body.detail).toMatchObject({ field: "name", rule });
        expect(res.body.error).not.toContain(CANARY);
      }
      const empty = await admin.post("/v1/secrets", { name: "ok", value: "" });
      expectError(empty, 400, "invalid_secret_value");
      expect(empty.body.detail).toMatchObject({ rule: "empty" });
      const large = await admin.post(`/v1/teams/${teamA}/secrets`, {
        name: "ok",
        value: `${CANARY}${"x".repeat(64 * 1024)}`,
      });
      expectError(large, 400, "invalid_secret_value");
      expect(large.body.detail).toMatchObject({ rule: "too_large" });
      expect(JSON.stringify(large.body)).not.toContain(CANARY);
      expectError(await admin.post("/v1/secrets", { name: "ok" }), 400, "invalid_request");
      expectError(await admin.post("/v1/secrets", { name: "ok", value: 42 }), 400, "invalid_request");
      const extra = await admin.post("/v1/secrets", { name: "ok", value: CANARY, team_id: teamA });
      expectError(extra, 400, "invalid_request");
      expect(JSON.stringify(extra.body)).not.toContain(CANARY);
      expectError(await admin.delete("/v1/secrets/nothing-here"), 404, "secret_not_found");
      expectError(await admin.get("/v1/teams/zzzzzzzz/secrets"), 404, "team_not_found");
      expect((await admin.get("/v1/secrets")).body).toEqual(list);
      expect(await count()).toBe(audits);
    });
  });

  describe("who may do what", () => {
    it("lets WORKSPACE_MANAGE_ALL keys manage their team's secrets, and invoke keys nothing (403)", async () => {
      const made = await workspaceA.post("/v1/secrets", { name: "ci_token", value: "from-ci" });
      expect(made.status, JSON.stringify(made.body)).toBe(200);
      expect(made.body.team_name).toBe("Default Team");
      expect(
        (await workspaceA.get("/v1/secrets")).body.secrets.map((s: { name: string }) => s.name),
      ).toContain("ci_token");
      expect((await workspaceA.delete("/v1/secrets/ci_token")).status).toBe(200);
      for (const res of [
        await invokeA.get("/v1/secrets"),
        await invokeA.post("/v1/secrets", { name: "x", value: "y" }),
        await invokeA.delete("/v1/secrets/hf_token"),
        await invokeA.get(`/v1/teams/${teamA}/secrets`),
      ]) {
        expectError(res, 403, "forbidden");
      }
    });

    it("gives another team's keys 404 for this team's secrets, and their own team for the unscoped routes", async () => {
      for (const client of [teamB.admin, teamB.workspace]) {
        expectError(await client.get(`/v1/teams/${teamA}/secrets`), 404, "team_not_found");
        expectError(
          await client.post(`/v1/teams/${teamA}/secrets`, { name: "hf_token", value: "evil" }),
          404,
          "team_not_found",
        );
        expectError(await client.delete(`/v1/teams/${teamA}/secrets/hf_token`), 404, "team_not_found");
        // The unscoped routes act in the caller's own team, where team A's secret does not exist.
        expectError(await client.delete("/v1/secrets/hf_token"), 404, "secret_not_found");
        expect(
          (await client.get("/v1/secrets")).body.secrets.map((s: { name: string }) => s.name),
        ).not.toContain("hf_token");
      }
      // Team B may have its own secret of the same name; it is another secret.
      const own = await teamB.admin.post("/v1/secrets", { name: "hf_token", value: "team-b-value" });
      expect(own.status).toBe(200);
      expect(own.body.team_name).toBe("Team B");
      const a = await c.control.ctx.store.db
        .selectFrom("secrets")
        .selectAll()
        .where("team_id", "=", teamA)
        .where("name", "=", "hf_token")
        .executeTakeFirstOrThrow();
      expect(c.control.ctx.secrets.open(a, { team_id: teamA, name: "hf_token" })).toBe(CANARY);
    });

    it("manages a secret a restricted environment's deployment uses like that environment (403 for others)", async () => {
      const member = await admin.post("/v1/admin/users", {
        email: "member-a@example.com",
        teams: [{ team_id: teamA, role: "MEMBER" }],
      });
      const listed = await admin.post("/v1/admin/users", {
        email: "listed-a@example.com",
        teams: [{ team_id: teamA, role: "MEMBER" }],
      });
      const restricted = await admin.patch(`/v1/teams/${teamA}/environment_groups/prod-eu`, {
        manage_access: { is_restricted: true, user_ids: [listed.body.user.user_id] },
      });
      expect(restricted.status, JSON.stringify(restricted.body)).toBe(200);
      await admin.post("/v1/secrets", { name: "guarded", value: "the-admins-value" });
      const pushed = await push(admin, "guarded-model", await packageWithSecrets({ guarded: null }), {
        environment_name: "prod-eu",
      });
      await reconcile("eu-1");
      expect((await deployment(pushed.model, pushed.deployment)).status).toBe("ACTIVE");
      const sealed = await c.control.ctx.store.db
        .selectFrom("secrets")
        .select("sealed")
        .where("team_id", "=", teamA)
        .where("name", "=", "guarded")
        .executeTakeFirstOrThrow();

      for (const client of [admin.as(member.body.api_key), workspaceA]) {
        for (const res of [
          await client.post("/v1/secrets", { name: "guarded", value: "attacker" }),
          await client.delete("/v1/secrets/guarded"),
        ]) {
          expectError(res, 403, "environment_restricted");
          expect(res.body.detail).toEqual({ environments: ["prod-eu"] });
        }
      }
      const after = await c.control.ctx.store.db
        .selectFrom("secrets")
        .select("sealed")
        .where("team_id", "=", teamA)
        .where("name", "=", "guarded")
        .executeTakeFirstOrThrow();
      expect(after.sealed).toBe(sealed.sealed);
      // The listed user may, and a secret no restricted deployment names stays open to any member.
      expect(
        (await admin.as(listed.body.api_key).post("/v1/secrets", { name: "guarded", value: "rotated" }))
          .status,
      ).toBe(200);
      expect(
        (await admin.as(member.body.api_key).post("/v1/secrets", { name: "free", value: "v" })).status,
      ).toBe(200);
      // Deleting it is refused while prod-eu runs the deployment that names it, even for the admin.
      const inUse = await admin.delete("/v1/secrets/guarded");
      expectError(inUse, 409, "secret_in_use");
      expect(inUse.body.detail.deployments).toEqual([
        { model_id: pushed.model, deployment_id: pushed.deployment },
      ]);
    });
  });

  describe("delivery to planes", () => {
    let subject: { model: string; deployment: string };
    let replicaId: string;
    let foreign: { model: string; deployment: string; replica: string };

    beforeAll(async () => {
      await admin.post("/v1/secrets", { name: "service_key", value: "second-value" });
      await admin.post("/v1/secrets", { name: "unrelated", value: "not-for-this-replica" });
      subject = await push(
        admin,
        "delivered",
        await packageWithSecrets({ hf_token: null, service_key: "ENTER YOUR KEY HERE" }),
      );
      [replicaId] = (await replicasOf(subject.deployment, "eu-1")).map((r) => r.id) as [string];
      expect(replicaId).toBeDefined();
      // Team B's replica, placed on us-1 by its region restriction.
      const restricted = await admin.patch(`/v1/teams/${teamB.id}/environment_groups/prod-us`, {
        region_restriction: { region: "us" },
      });
      expect(restricted.status, JSON.stringify(restricted.body)).toBe(200);
      const b = await push(teamB.admin, "b-model", await packageWithSecrets({ hf_token: null }), {
        environment_name: "prod-us",
      });
      const [r] = await replicasOf(b.deployment, "us-1");
      foreign = { ...b, replica: r!.id };
    });

    it("gives the replica's plane exactly the secrets its config names, as files of mode 0400", async () => {
      const res = await asPlane("eu-1", "GET", `/v1/internal/planes/eu-1/replicas/${replicaId}/secrets`);
      expect(res.status, JSON.stringify(res.body)).toBe(200);
      expect(res.headers["cache-control"]).toBe("no-store");
      // The config's placeholder is never a value; a secret it does not name is never sent.
      expect(res.body).toEqual({ secrets: { hf_token: CANARY, service_key: "second-value" } });

      const dir = join(c.db.dir, "plane-files", replicaId);
      const names = await fetchReplicaSecrets({
        controlUrl: c.control.url,
        planeToken: planes["eu-1"]!,
        plane: "eu-1",
        replicaId,
        dir,
      });
      expect(names).toEqual(["hf_token", "service_key"]);
      expect(statSync(dir).mode & 0o777).toBe(0o700);
      expect(readdirSync(dir).sort()).toEqual(["hf_token", "service_key"]);
      expect(readFileSync(join(dir, "hf_token"), "utf8")).toBe(CANARY);
      expect(readFileSync(join(dir, "service_key"), "utf8")).toBe("second-value");
      for (const n of names) expect(statSync(join(dir, n)).mode & 0o777).toBe(0o400);
      // A replica whose deployment names no secret gets an empty directory, and stale files go.
      writeFileSync(join(dir, "stale"), "old", { mode: 0o400 });
      const plain = await push(admin, "plain", await packDirectory(join(EXAMPLES, "hello-js")));
      const [p] = await replicasOf(plain.deployment, "eu-1");
      expect(
        await fetchReplicaSecrets({
          controlUrl: c.control.url,
          planeToken: planes["eu-1"]!,
          plane: "eu-1",
          replicaId: p!.id,
          dir,
        }),
      ).toEqual([]);
      expect(readdirSync(dir)).toEqual([]);
      await reconcile("eu-1");
      await reconcile("us-1");
    });

    it("refuses every other asker: another plane's credential, another plane's replica, API keys", async () => {
      const path = `/v1/internal/planes/eu-1/replicas/${replicaId}/secrets`;
      // us-1's credential on eu-1's path: a plane credential opens its own plane only.
      expectError(await asPlane("us-1", "GET", path), 403, "forbidden");
      // us-1 asking, on its own path, for eu-1's replica (team A) …
      expectError(
        await asPlane("us-1", "GET", `/v1/internal/planes/us-1/replicas/${replicaId}/secrets`),
        404,
        "replica_not_found",
      );
      // … and eu-1 asking for us-1's replica (team B): neither learns anything.
      const other = await asPlane(
        "eu-1",
        "GET",
        `/v1/internal/planes/eu-1/replicas/${foreign.replica}/secrets`,
      );
      expectError(other, 404, "replica_not_found");
      expectError(
        await asPlane("eu-1", "GET", "/v1/internal/planes/eu-1/replicas/nonexistent/secrets"),
        404,
        "replica_not_found",
      );
      for (const key of [c.control.adminKey!, teamB.admin.key!]) {
        for (const scheme of ["Api-Key", "Bearer"]) {
          const res = await new ApiClient(c.control.url, null).call("GET", path, undefined, {
            authorization: `${scheme} ${key}`,
          });
          expectError(res, 401, "unauthorized");
        }
      }
      expectError(await new ApiClient(c.control.url, null).get(path), 401, "unauthorized");
      // The plane's own function says why, and writes nothing.
      const dir = join(c.db.dir, "plane-files", "foreign");
      await expect(
        fetchReplicaSecrets({
          controlUrl: c.control.url,
          planeToken: planes["eu-1"]!,
          plane: "eu-1",
          replicaId: foreign.replica,
          dir,
        }),
      ).rejects.toMatchObject({ reason: "not_placed" });
      expect(existsSync(dir)).toBe(false);
    });

    it("stops answering for a replica once it is no longer placed on the plane", async () => {
      const d = await push(admin, "short-lived", await packageWithSecrets({ hf_token: null }));
      const [r] = await replicasOf(d.deployment, "eu-1");
      const path = `/v1/internal/planes/eu-1/replicas/${r!.id}/secrets`;
      expect((await asPlane("eu-1", "GET", path)).status).toBe(200);
      expect((await admin.post(`/v1/models/${d.model}/deployments/${d.deployment}/deactivate`)).status).toBe(
        200,
      );
      expectError(await asPlane("eu-1", "GET", path), 404, "replica_not_found");
    });

    it("never puts a value, or a secret's name, in a plane's or the DNS snapshot", async () => {
      for (const plane of ["eu-1", "us-1"]) {
        const text = JSON.stringify(await snapshot(plane));
        for (const needle of [
          CANARY,
          "second-value",
          "not-for-this-replica",
          "hf_token",
          "service_key",
          "unrelated",
        ]) {
          expect(text, `${plane} snapshot holds ${needle}`).not.toContain(needle);
        }
      }
      const dns = await asPlane("eu-1", "GET", "/v1/internal/dns/snapshot?wait=0");
      expect(dns.status).toBe(200);
      expect(JSON.stringify(dns.body)).not.toContain(CANARY);
    });

    it("refuses a ciphertext swapped into another row: an error, never the other row's value", async () => {
      const db = c.control.ctx.store.db;
      const rows = await db
        .selectFrom("secrets")
        .selectAll()
        .where("name", "=", "hf_token")
        .where("team_id", "in", [teamA, teamB.id])
        .execute();
      const a = rows.find((r) => r.team_id === teamA)!;
      const b = rows.find((r) => r.team_id === teamB.id)!;
      // An attacker with write access to the database moves team A's sealed value into team B's row.
      await db
        .updateTable("secrets")
        .set({ sealed: a.sealed, key_id: a.key_id })
        .where("id", "=", b.id)
        .execute();
      try {
        const res = await asPlane(
          "us-1",
          "GET",
          `/v1/internal/planes/us-1/replicas/${foreign.replica}/secrets`,
        );
        expectError(res, 500, "internal_error");
        expect(JSON.stringify(res.body)).not.toContain(CANARY);
        expect(c.logs.join("")).toContain("secret does not open");
        // Within a team too: the name is bound as well.
        const apiKey = await db
          .selectFrom("secrets")
          .selectAll()
          .where("team_id", "=", teamA)
          .where("name", "=", "service_key")
          .executeTakeFirstOrThrow();
        await db.updateTable("secrets").set({ sealed: a.sealed }).where("id", "=", apiKey.id).execute();
        const mixed = await asPlane("eu-1", "GET", `/v1/internal/planes/eu-1/replicas/${replicaId}/secrets`);
        expectError(mixed, 500, "internal_error");
        await db.updateTable("secrets").set({ sealed: apiKey.sealed }).where("id", "=", apiKey.id).execute();
      } finally {
        await db
          .updateTable("secrets")
          .set({ sealed: b.sealed, key_id: b.key_id })
          .where("id", "=", b.id)
          .execute();
      }
      const back = await asPlane(
        "us-1",
        "GET",
        `/v1/internal/planes/us-1/replicas/${foreign.replica}/secrets`,
      );
      expect(back.body).toEqual({ secrets: { hf_token: "team-b-value" } });
    });
  });

  describe("a missing secret", () => {
    it("fails the deployment naming it; creating it and retrying works", async () => {
      const d = await push(
        admin,
        "needs-missing",
        await packageWithSecrets({ missing_token: null, hf_token: null }),
      );
      await reconcile("eu-1");
      const failed = await deployment(d.model, d.deployment);
      expect(failed.status).toBe("DEPLOY_FAILED");
      expect(failed.status_message).toContain("'missing_token'");
      expect(failed.status_message).toContain("Default Team");
      expect(failed.status_message).not.toContain("hf_token");
      // Nothing of the secrets it has was written for the failed replica.
      const [r] = await replicasOf(d.deployment, "eu-1");
      expect(existsSync(started.get(r!.id)!.dir)).toBe(false);

      // A retry before the secret exists says why instead of failing again.
      const early = await admin.post(`/v1/models/${d.model}/deployments/${d.deployment}/retry`);
      expect(early.status).toBe(200);
      expect(early.body.retried).toBe(false);
      expect(early.body.reason).toContain("'missing_token'");

      expect((await admin.post("/v1/secrets", { name: "missing_token", value: "now-here" })).status).toBe(
        200,
      );
      const retried = await admin.post(`/v1/models/${d.model}/deployments/${d.deployment}/retry`);
      expect(retried.body.retried, JSON.stringify(retried.body)).toBe(true);
      await reconcile("eu-1");
      expect((await deployment(d.model, d.deployment)).status).toBe("ACTIVE");
      const [fresh] = await replicasOf(d.deployment, "eu-1");
      expect(readFileSync(join(started.get(fresh!.id)!.dir, "missing_token"), "utf8")).toBe("now-here");
    });

    it("fails the build when config.yaml's secrets: breaks truss's rules, naming the key", async () => {
      const s3_key = await admin.upload(await packageWithSecrets({ "bad/name": null }));
      const res = await admin.post("/v1/models", {
        source: { kind: "model_archive", name: "bad-secrets", s3_key, deployment: { config: {} } },
      });
      expect(res.status).toBe(200);
      expect(res.body.deployment.status).toBe("BUILD_FAILED");
      expect(res.body.deployment.status_message).toContain("secrets.bad/name");
    });

    it("keeps only the names of config.yaml's secrets, never a value written there", async () => {
      const d = await push(
        admin,
        "placeholder",
        await packageWithSecrets({ hf_token: `${CANARY}-in-config` }),
      );
      const config = await admin.get(`/v1/models/${d.model}/deployments/${d.deployment}/config`);
      expect(config.body.config.secrets).toEqual({ hf_token: null });
      const row = await c.control.ctx.store.db
        .selectFrom("deployments")
        .select("config")
        .where("id", "=", d.deployment)
        .executeTakeFirstOrThrow();
      expect(row.config).not.toContain("-in-config");
    });
  });

  describe("deleting a secret in use", () => {
    it("is refused (409, naming the deployments) while one runs or may wake, allowed once they are inactive", async () => {
      await admin.post("/v1/secrets", { name: "in_use", value: "v" });
      const d = await push(admin, "user-of-secret", await packageWithSecrets({ in_use: null }));
      await reconcile("eu-1");
      const refused = await admin.delete("/v1/secrets/in_use");
      expectError(refused, 409, "secret_in_use");
      expect(refused.body.error).toContain(d.deployment);
      expect(refused.body.detail).toEqual({
        deployments: [{ model_id: d.model, deployment_id: d.deployment }],
      });
      expect((await admin.get("/v1/secrets")).body.secrets.map((s: { name: string }) => s.name)).toContain(
        "in_use",
      );
      expect((await admin.post(`/v1/models/${d.model}/deployments/${d.deployment}/deactivate`)).status).toBe(
        200,
      );
      expect((await admin.delete("/v1/secrets/in_use")).status).toBe(200);
      // Activating it again fails at its replica's start, naming the secret.
      expect((await admin.post(`/v1/models/${d.model}/deployments/${d.deployment}/activate`)).status).toBe(
        200,
      );
      await reconcile("eu-1");
      const again = await deployment(d.model, d.deployment);
      expect(again.status).toBe("DEPLOY_FAILED");
      expect(again.status_message).toContain("'in_use'");
    });
  });

  describe("the canary", () => {
    it("appears in no API answer, log line, audit entry, spec or error", async () => {
      const spec = await admin.as(null).get("/v1/spec");
      expect(spec.status).toBe(200);
      await admin.get("/v1/audit_logs?limit=1000");
      await admin.get(`/v1/teams/${teamA}/secrets`);
      const everything = seen.join("\n");
      expect(everything.length).toBeGreaterThan(1000);
      expect(everything).not.toContain(CANARY);
      const logs = c.logs.join("");
      expect(logs).toContain("secrets delivered");
      expect(logs).not.toContain(CANARY);
      expect(logs).not.toContain("second-value");
      const key = readFileSync(join(c.dataDir, "secrets.key"), "utf8").trim().split("\n").pop()!;
      expect(logs).not.toContain(key);
      expect(everything).not.toContain(key);
    });

    it("is not in the database at rest, only its ciphertext", async () => {
      if (kind === "sqlite") {
        const files = readdirSync(c.dataDir).filter((f) => f.startsWith("meridian.db"));
        expect(files).toContain("meridian.db");
        for (const f of files) {
          expect(readFileSync(join(c.dataDir, f)).toString("latin1"), f).not.toContain(CANARY);
        }
      } else {
        const db = c.control.ctx.store.db;
        const tables = await sql<{ table_name: string }>`
          select table_name from information_schema.tables where table_schema = 'public'
        `.execute(db);
        expect(tables.rows.map((t) => t.table_name)).toContain("secrets");
        for (const { table_name } of tables.rows) {
          const rows = await sql<{ row: string }>`
            select row_to_json(t)::text as row from ${sql.table(table_name)} t
          `.execute(db);
          expect(rows.rows.map((r) => r.row).join("\n"), table_name).not.toContain(CANARY);
        }
      }
      const row = await c.control.ctx.store.db
        .selectFrom("secrets")
        .selectAll()
        .where("team_id", "=", teamA)
        .where("name", "=", "hf_token")
        .executeTakeFirstOrThrow();
      expect(row.key_id).toBe(c.control.ctx.secrets.currentKeyId);
      expect(Buffer.from(row.sealed, "base64").toString("latin1")).not.toContain(CANARY);
    });
  });
});

describe.each(STORE_KINDS)("the secrets key file on %s", (kind) => {
  let db: TestDatabase;
  let c: Control | null = null;
  const CANARY = `canary-${randomUUID()}`;

  beforeAll(async () => {
    db = await createTestDatabase(kind);
  });
  afterAll(async () => {
    await c?.control.stop();
    await db?.drop();
  });

  async function restart(options: { dataDir?: string; keyFile?: string } = {}) {
    await c?.control.stop();
    c = null;
    c = await start(db, options);
    return c;
  }

  it("is created on first start (0600) under the data directory, and found again on the next", async () => {
    const first = await restart();
    const file = join(first.dataDir, "secrets.key");
    expect(statSync(file).mode & 0o777).toBe(0o600);
    const res = await new ApiClient(first.control.url, first.control.adminKey).post("/v1/secrets", {
      name: "kept",
      value: CANARY,
    });
    expect(res.status).toBe(200);
    const adminKey = first.control.adminKey!;
    const again = await restart();
    expect(again.control.ctx.secrets.currentKeyId).toBe(first.control.ctx.secrets.currentKeyId);
    const list = await new ApiClient(again.control.url, adminKey).get("/v1/secrets");
    expect(list.body.secrets.map((s: { name: string }) => s.name)).toEqual(["kept"]);
  });

  it("refuses to start with a wrong key file, naming the key it lacks, never garbage", async () => {
    const wrong = join(tempDir(), "wrong.key");
    writeFileSync(wrong, newKeyFileText(), { mode: 0o600 });
    await c?.control.stop();
    c = null;
    let error: unknown;
    try {
      c = await start(db, { keyFile: wrong });
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(SecretsKeyError);
    const message = (error as Error).message;
    expect(message).toContain("1 secret in the database is sealed with key");
    expect(message).toContain(wrong);
    expect(message).toContain("--secrets-key-file");
    expect(message).not.toContain(CANARY);
    // A missing file the operator named, and a file others may read, refuse too.
    await expect(start(db, { keyFile: join(tempDir(), "absent.key") })).rejects.toThrow(/does not exist/);
    const open = join(tempDir(), "open.key");
    writeFileSync(open, newKeyFileText(), { mode: 0o644 });
    await expect(start(db, { keyFile: open })).rejects.toThrow(/chmod 600/);
  });

  it("rotates: a new first key seals, the old one still opens; a replica left with the old file alone is refused", async () => {
    const dataDir = join(db.dir, "control");
    const oldFile = join(dataDir, "secrets.key");
    const oldText = readFileSync(oldFile, "utf8");
    const oldKey = loadSecretsKeyFile(oldFile, { create: false });
    const rotated = join(tempDir(), "rotated.key");
    const newLine = newKeyFileText().trim().split("\n").pop()!;
    writeFileSync(rotated, `${newLine}\n${oldText}`, { mode: 0o600 });
    const r = await restart({ keyFile: rotated });
    expect(r.logs.join("")).toContain("secrets key rotated");
    expect(r.control.ctx.secrets.currentKeyId).not.toBe(oldKey.currentKeyId);
    const api = new ApiClient(r.control.url, readFileSync(join(dataDir, "admin.key"), "utf8").trim());
    // The old value still opens; a new one is sealed with the new key.
    const kept = await r.control.ctx.store.db
      .selectFrom("secrets")
      .selectAll()
      .where("name", "=", "kept")
      .executeTakeFirstOrThrow();
    expect(kept.key_id).toBe(oldKey.currentKeyId);
    expect(r.control.ctx.secrets.open(kept, kept)).toBe(CANARY);
    expect((await api.post("/v1/secrets", { name: "fresh", value: "new" })).status).toBe(200);
    const fresh = await r.control.ctx.store.db
      .selectFrom("secrets")
      .selectAll()
      .where("name", "=", "fresh")
      .executeTakeFirstOrThrow();
    expect(fresh.key_id).toBe(r.control.ctx.secrets.currentKeyId);
    // Re-upserting moves a value to the new key.
    expect((await api.post("/v1/secrets", { name: "kept", value: CANARY })).status).toBe(200);
    expect(
      (
        await r.control.ctx.store.db
          .selectFrom("secrets")
          .select("key_id")
          .where("name", "=", "kept")
          .executeTakeFirstOrThrow()
      ).key_id,
    ).toBe(r.control.ctx.secrets.currentKeyId);
    // The old file alone no longer opens what the installation holds.
    await expect(restart({ keyFile: oldFile })).rejects.toThrow(SecretsKeyError);
    await restart({ keyFile: rotated });
  });

  // Several control replicas share one database only with PostgreSQL.
  if (kind === "postgres")
    it("refuses a second control replica whose key file differs, even before any secret exists", async () => {
      const other = await createTestDatabase("postgres");
      let firstReplica: Control | null = null;
      try {
        firstReplica = await start(other, { dataDir: join(other.dir, "replica-1") });
        // Each replica generating its own key would seal values the others cannot read.
        const error = await start(other, { dataDir: join(other.dir, "replica-2") }).then(
          (second) => second.control.stop().then(() => null),
          (err: unknown) => err,
        );
        expect(error).toBeInstanceOf(SecretsKeyError);
        expect((error as Error).message).toContain("Every control replica needs the same key file");
        // Given the first replica's file, the second starts and reads the same values.
        const second = await start(other, {
          dataDir: join(other.dir, "replica-2"),
          keyFile: join(other.dir, "replica-1", "secrets.key"),
        });
        const api1 = new ApiClient(firstReplica.control.url, firstReplica.control.adminKey);
        expect((await api1.post("/v1/secrets", { name: "shared", value: "one-key" })).status).toBe(200);
        const row = await second.control.ctx.store.db
          .selectFrom("secrets")
          .selectAll()
          .where("name", "=", "shared")
          .executeTakeFirstOrThrow();
        expect(second.control.ctx.secrets.open(row, row)).toBe("one-key");
        await second.control.stop();
      } finally {
        await firstReplica?.control.stop();
        await other.drop();
      }
    });
});
