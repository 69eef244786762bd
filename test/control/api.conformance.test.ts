// Every answer of the management API against Baseten's published spec, with real planes running real
// replicas (so logs have lines, metrics have replicas and request counts), on both stores. Each call goes
// through a client that finds its route in Meridian's /v1/spec and validates the answer: a 2xx against the
// 200 schema Baseten's spec gives that path and method (strictly: test/support/reference.ts), an error
// against the error body. The last test fails for any route of /v1/spec that Baseten's spec has and that no
// call here answered, so a new mirrored route cannot go unchecked.

import { readFileSync } from "node:fs";
import { Ajv2020 } from "ajv/dist/2020.js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BASETEN_SPEC } from "../../src/control/openapi.ts";
import { type Cluster, DOMAIN, eventually, startCluster } from "../support/cluster.ts";
import { ApiClient, packExample, type Response } from "../support/control.ts";
import { createTestDatabase, STORE_KINDS, type TestDatabase } from "../support/databases.ts";
import { packFiles, predict, slowModel } from "../support/planes.ts";
import {
  BASETEN,
  basetenResponse,
  expectError,
  expectReferenceShape,
  PUBLISHED_SPEC,
} from "../support/reference.ts";

interface ServedOperation {
  tags?: string[];
  responses: Record<string, { content?: Record<string, { schema: { $ref?: string } }> }>;
}
interface Served {
  paths: Record<string, Record<string, ServedOperation>>;
  components: { schemas: Record<string, object> };
}

/** The schema a 200 names; with a Meridian alternative (`oneOf`), Baseten's, which comes first. */
const refName = (schema: { $ref?: string; oneOf?: Array<{ $ref?: string }> } | undefined) =>
  (schema?.oneOf?.[0] ?? schema)?.$ref?.split("/").pop() ?? null;

/** Checks every answer against the route it belongs to, and records which mirrored routes answered 2xx. */
class Conformance {
  readonly covered = new Set<string>();
  readonly #templates: Array<{ method: string; path: string; segments: string[] }>;
  readonly #served: Served;
  readonly #errorBody: (body: unknown) => boolean;

  constructor(served: Served) {
    this.#served = served;
    this.#templates = Object.entries(served.paths).flatMap(([path, ops]) =>
      Object.keys(ops).map((m) => ({ method: m.toUpperCase(), path, segments: path.split("/") })),
    );
    const ajv = new Ajv2020({ strict: false, allErrors: true });
    ajv.addSchema({ $id: "served", components: served.components });
    this.#errorBody = ajv.getSchema("served#/components/schemas/ErrorResponse")!;
  }

  /** Routes of /v1/spec that Baseten's spec has (same method, same path template). */
  mirrored(): string[] {
    return this.#templates
      .filter((t) => basetenResponse(t.method, t.path) !== undefined)
      .map((t) => `${t.method} ${t.path}`);
  }

  /** The template a concrete path belongs to: literal segments beat parameters; a last parameter may span segments. */
  route(method: string, url: string): string | null {
    const segments = url.split("?")[0]!.split("/");
    let best: { path: string; literals: number } | null = null;
    for (const t of this.#templates) {
      if (t.method !== method) continue;
      const spans = t.segments.at(-1)!.startsWith("{") && segments.length > t.segments.length;
      if (t.segments.length !== segments.length && !spans) continue;
      let literals = 0;
      const ok = t.segments.every((s, i) => {
        if (s.startsWith("{")) return (segments[i] ?? "") !== "";
        literals++;
        return s === segments[i];
      });
      if (ok && (best === null || literals > best.literals)) best = { path: t.path, literals };
    }
    return best?.path ?? null;
  }

  check(method: string, url: string, res: Response): void {
    const path = this.route(method, url);
    expect(path, `${method} ${url} is not a route of /v1/spec`).not.toBeNull();
    const where = `${method} ${url} → ${res.status}`;
    if (res.status < 200 || res.status >= 300) {
      expect(this.#errorBody(res.body), `${where}: not the error body: ${JSON.stringify(res.body)}`).toBe(
        true,
      );
      return;
    }
    const baseten = basetenResponse(method, path!);
    const op = this.#served.paths[path!]![method.toLowerCase()]!;
    const served = refName(op.responses["200"]?.content?.["application/json"]?.schema);
    if (baseten !== undefined) {
      // A mirrored route: Baseten's schema for this path and method, whatever Meridian's document names.
      expect(baseten, `${method} ${path}: Baseten's spec names no response schema`).not.toBeNull();
      expectReferenceShape(baseten!, res.body);
      this.covered.add(`${method} ${path}`);
    } else if (served !== null) {
      // Meridian's own route that answers a reference schema (regions, an environment's tombstone).
      expectReferenceShape(served, res.body);
    } else {
      expect(typeof res.body, where).toBe("object");
    }
  }
}

class CheckedClient extends ApiClient {
  constructor(
    url: string,
    key: string | null,
    readonly conformance: Conformance,
  ) {
    super(url, key);
  }

  override as(key: string | null): CheckedClient {
    return new CheckedClient(this.url, key, this.conformance);
  }

  override async call<T = any>(
    method: string,
    path: string,
    body?: unknown,
    headers: Record<string, string> = {},
  ): Promise<Response<T>> {
    const res = await super.call<T>(method, path, body, headers);
    this.conformance.check(method, path, res);
    return res;
  }
}

it("the control plane ships Baseten's published management API, the same document", () => {
  let published: string;
  try {
    published = readFileSync(PUBLISHED_SPEC, "utf8");
  } catch {
    return; // Outside the workspace there is nothing to compare with: the shipped copy is the reference.
  }
  // Formatted by the repository's formatter, so compared as JSON.
  expect(
    JSON.parse(readFileSync(BASETEN_SPEC, "utf8")),
    "src/control/reference differs from the published spec",
  ).toEqual(JSON.parse(published));
});

describe.each(STORE_KINDS)("every answer validates against Baseten's full spec (%s)", (kind) => {
  let db: TestDatabase | null = null;
  let cluster: Cluster;
  let api: CheckedClient;
  let conformance: Conformance;
  let served: Served;
  let teamId = "";
  let modelId = "";
  /** Serves prod-eu (restricted to eu) from eu-1. */
  let regional = "";
  /** Added to the model, serves nothing. */
  let spare = "";

  const deployment = async (id: string) => (await api.get(`/v1/models/${modelId}/deployments/${id}`)).body;
  const active = (id: string) => eventually(async () => (await deployment(id)).status === "ACTIVE", 30_000);

  beforeAll(async () => {
    if (kind === "postgres") db = await createTestDatabase("postgres");
    cluster = await startCluster({
      planes: [
        { name: "us-1", region: "us", global: true },
        { name: "eu-1", region: "eu" },
      ],
      ...(db?.url ? { databaseUrl: db.url } : {}),
    });
    const spec = await cluster.api.get("/v1/spec");
    expect(spec.status).toBe(200);
    served = spec.body;
    conformance = new Conformance(served);
    api = new CheckedClient(cluster.controlUrl, cluster.api.key, conformance);
    // A cluster of real processes on PostgreSQL, started while the rest of the suite loads both cores.
  }, 150_000);

  afterAll(async () => {
    await cluster?.stop();
    await db?.drop();
  }, 60_000);

  it("identity, API keys, regions and instance types", async () => {
    const me = await api.get("/v1/users/me");
    expect(me.status).toBe(200);
    await api.get(`/v1/users/${me.body.user_id}`);
    await api.get("/v1/users");
    const teams = await api.get("/v1/teams");
    teamId = teams.body.teams[0].id;
    await api.get(`/v1/teams/${teamId}`);
    await api.get("/v1/regions");
    await api.get(`/v1/teams/${teamId}/regions`);

    const types = await api.get("/v1/instance_types");
    expect(types.status).toBe(200);
    expect(types.body.instance_types.map((t: { id: string }) => t.id)).toEqual(["meridian-cpu"]);

    const key = await api.post("/v1/api_keys", { type: "WORKSPACE_INVOKE", name: "probe" });
    const teamKey = await api.post(`/v1/teams/${teamId}/api_keys`, {
      type: "WORKSPACE_MANAGE_ALL",
      name: "ci",
    });
    const keys = await api.get("/v1/api_keys");
    expect(keys.body.keys.length).toBeGreaterThanOrEqual(3);
    for (const k of [key, teamKey]) {
      expect(k.status).toBe(200);
      expect((await api.delete(`/v1/api_keys/${k.body.api_key.split(".")[0]}`)).status).toBe(200);
    }
    // Errors are checked too: the error body on a mirrored route.
    expectError(await api.as(null).get("/v1/teams"), 401, "unauthorized");
    expectError(await api.get("/v1/teams/nope"), 404, "team_not_found");
  });

  it("secrets: upsert, list (names only), delete, in the caller's team and a given one", async () => {
    const made = await api.post("/v1/secrets", { name: "conform_token", value: "s3cr3t-value" });
    expect(made.status, JSON.stringify(made.body)).toBe(200);
    const again = await api.post(`/v1/teams/${teamId}/secrets`, { name: "conform_token", value: "other" });
    expect(again.body.id).toBe(made.body.id);
    const listed = await api.get("/v1/secrets");
    expect(listed.body.secrets.map((x: { name: string }) => x.name)).toContain("conform_token");
    await api.get(`/v1/teams/${teamId}/secrets`);
    expect(JSON.stringify(listed.body)).not.toContain("s3cr3t-value");
    await api.post(`/v1/teams/${teamId}/secrets`, { name: "conform_team", value: "v" });
    expect((await api.delete(`/v1/teams/${teamId}/secrets/conform_team`)).status).toBe(200);
    expect((await api.delete("/v1/secrets/conform_token")).status).toBe(200);
    expectError(await api.delete("/v1/secrets/conform_token"), 404, "secret_not_found");
  });

  it("models and deployments, pushed into a regional environment that eu-1 serves", async () => {
    const group = await api.patch("/v1/environment_groups/prod-eu", { region_restriction: { region: "eu" } });
    expect(group.status, JSON.stringify(group.body)).toBe(200);
    const created = await api.createModel("conform", "hello-js", { environment_name: "prod-eu" });
    expect(created.status, JSON.stringify(created.body)).toBe(200);
    modelId = created.body.model.id;
    regional = created.body.deployment.id;
    const team = await api.post(`/v1/teams/${teamId}/models`, {
      source: {
        kind: "model_archive",
        name: "conform-team",
        s3_key: await api.upload(await packExample("hello-js")),
        deployment: { config: {} },
      },
    });
    expect(team.status, JSON.stringify(team.body)).toBe(200);
    const added = await api.createDeployment(modelId);
    expect(added.status, JSON.stringify(added.body)).toBe(200);
    spare = added.body.deployment.id;

    await api.get("/v1/models");
    await api.get(`/v1/teams/${teamId}/models`);
    await api.get(`/v1/models/${modelId}`);
    await api.get(`/v1/models/${modelId}/deployments`);
    await api.get(`/v1/models/${modelId}/deployments/${regional}/config`);
    const renamed = await api.patch(`/v1/models/${modelId}/deployments/${spare}`, { name: "spare" });
    expect(renamed.body.name).toBe("spare");
    const scaled = await api.patch(`/v1/models/${modelId}/deployments/${spare}/autoscaling_settings`, {
      scale_down_delay: 1200,
    });
    expect(scaled.body.status).toBe("ACCEPTED");
    await active(regional);
    await active(spare);
    const d = await deployment(regional);
    expect(d.region).toEqual({ slug: "eu", display_name: expect.any(String) });
    expectError(await api.get(`/v1/models/${modelId}/deployments/nope`), 404, "deployment_not_found");
  }, 60_000);

  it("logs: GET and the POST truss sends, as GetLogsResponseV1 with real lines from eu-1", async () => {
    const base = `/v1/models/${modelId}/deployments/${regional}/logs`;
    const got = await eventually(async () => {
      const res = await api.get(base);
      return res.status === 200 && res.body.logs.length > 0 ? res : null;
    });
    expect(got.body.unreachable_planes).toEqual([]);
    const logs = got.body.logs as Array<{ timestamp: string; plane: string; replica: string }>;
    expect(new Set(logs.map((l) => l.plane))).toEqual(new Set(["eu-1"]));
    // Newest first, as Baseten answers (truss reverses the list to print it).
    const ns = logs.map((l) => BigInt(l.timestamp));
    expect(ns).toEqual([...ns].sort((a, b) => (a > b ? -1 : a < b ? 1 : 0)));

    // truss: `POST …/logs` with {} and then with the window since its last poll.
    const all = await api.post(base, {});
    expect(all.status).toBe(200);
    const now = Date.now();
    const windowed = await api.post(base, { start_epoch_millis: now - 3_600_000, end_epoch_millis: now });
    expect(windowed.body.logs.length).toBeGreaterThan(0);
    const asc = await api.post(base, { direction: "asc", limit: 1, component: "driver" });
    expect(asc.body.logs).toHaveLength(1);
    expect(asc.body.logs[0].stream).toBe("driver");
    const future = await api.get(
      `${base}?start_epoch_millis=${now + 60_000}&end_epoch_millis=${now + 120_000}`,
    );
    expect(future.body.logs).toEqual([]);
    const env = await api.get(`/v1/models/${modelId}/environments/prod-eu/logs?limit=2`);
    expect(env.body.logs).toHaveLength(2);
    // Repeated query keys are lists: every `includes` must appear.
    const started = await api.get(`${base}?includes=started&includes=pid&component=driver`);
    expect(started.body.logs.length).toBeGreaterThan(0);
    for (const l of started.body.logs) expect(l.message).toMatch(/started.*pid|pid.*started/);
    expect((await api.get(`${base}?includes=started&includes=no-such-text`)).body.logs).toEqual([]);

    // The replica filter narrows the deployment's own replicas: naming another deployment's replica (here
    // the spare's, on us-1) reads nothing of it, and asks no plane.
    const other = (await api.get(`/v1/models/${modelId}/deployments/${spare}/logs`)).body.logs[0].replica;
    const foreign = await api.get(`${base}?replica=${other}`);
    expect(foreign.body).toEqual({ logs: [], unreachable_planes: [] });
    const own = await api.get(`${base}?replica=${logs[0]!.replica}`);
    expect(own.body.logs.every((l: { replica: string }) => l.replica === logs[0]!.replica)).toBe(true);

    expectError(await api.get(`${base}?limit=0`), 400, "invalid_request");
    expectError(await api.post(base, { limit: 1001 }), 400, "invalid_request");
    expectError(await api.post(base, { search_pattern: "(a+)+$" }), 400, "invalid_request");
    expectError(
      await api.post(base, { start_epoch_millis: now, end_epoch_millis: now - 1 }),
      400,
      "invalid_request",
    );
  }, 30_000);

  it("metrics: replica counts and the environment's request counts, from what the planes reported", async () => {
    const host = `model-${modelId}-prod-eu.${DOMAIN}`;
    for (let i = 0; i < 3; i++) expect((await predict(cluster, "eu-1", host, "/predict")).status).toBe(200);
    const base = `/v1/models/${modelId}/deployments/${regional}/metrics`;
    const current = await eventually(
      async () => {
        const res = await api.get(base);
        const i = res.body.metric_descriptors.findIndex(
          (d: { name: string }) => d.name === "baseten_inference_requests_total",
        );
        const labels = res.body.metric_descriptors[i]?.label_sets as
          | Array<Record<string, string>>
          | undefined;
        const ok = labels?.findIndex((l) => l["status"] === "2xx") ?? -1;
        return ok >= 0 && res.body.metric_values[0].values[i][ok] >= 3 ? res : null;
      },
      20_000,
      500,
    );
    expect(current.body.mode).toBe("CURRENT");
    expect(current.body.metric_descriptors.map((d: { name: string }) => d.name)).toEqual([
      "baseten_replicas_active",
      "baseten_inference_requests_total",
    ]);
    expect(current.body.metric_values[0].values[0]).toEqual([1]);
    const series = await api.get(
      `${base}?mode=SERIES&metrics=baseten_replicas_active&metrics=baseten_container_restarts_total`,
    );
    expect(series.body.step_seconds).toBe(60);
    expect(series.body.metric_values).toHaveLength(60);
    await api.get(`${base}?mode=SUMMARY`);
    // A deployment that serves no environment has replicas but no request counter.
    const idle = await api.get(`/v1/models/${modelId}/deployments/${spare}/metrics`);
    expect(idle.body.metric_descriptors.map((d: { name: string }) => d.name)).toEqual([
      "baseten_replicas_active",
    ]);
    expectError(await api.get(`${base}?metrics=made_up`), 400, "invalid_request");
    expectError(await api.get(`${base}?start_epoch_millis=1`), 400, "invalid_request");
  }, 30_000);

  it("environments: create, update, promote, cancel, activate, deactivate, delete", async () => {
    await api.get(`/v1/models/${modelId}/environments`);
    const staging = await api.post(`/v1/models/${modelId}/environments`, { name: "staging" });
    expect(staging.status, JSON.stringify(staging.body)).toBe(200);
    await api.get(`/v1/models/${modelId}/environments/staging`);
    const patched = await api.patch(`/v1/models/${modelId}/environments/staging`, {
      autoscaling_settings: { max_replica: 2 },
    });
    expect(patched.body).toMatchObject({ status: "ACCEPTED", environment: { name: "staging" } });
    const promoted = await api.post(`/v1/models/${modelId}/environments/staging/promote`, {
      deployment_id: spare,
    });
    expect(promoted.status, JSON.stringify(promoted.body)).toBe(200);
    await eventually(async () => {
      const e = (await api.get(`/v1/models/${modelId}/environments/staging`)).body;
      return e.current_deployment?.id === spare && e.in_progress_promotion === null;
    }, 30_000);

    // A candidate that loads for a while, so the promotion is still in flight when it is cancelled.
    const slow = await api.post(`/v1/models/${modelId}/deployments`, {
      source: {
        kind: "model_archive",
        s3_key: await api.upload(await packFiles(slowModel(20_000))),
        deployment: { config: {} },
      },
    });
    expect(slow.status, JSON.stringify(slow.body)).toBe(200);
    expect(
      (
        await api.post(`/v1/models/${modelId}/environments/staging/promote`, {
          deployment_id: slow.body.deployment.id,
        })
      ).status,
    ).toBe(200);
    const canceled = await api.post(`/v1/models/${modelId}/environments/staging/cancel_promotion`);
    expect(canceled.body.status).toBe("CANCELED");

    expect((await api.post(`/v1/models/${modelId}/environments/staging/deactivate`)).status).toBe(200);
    expect((await api.post(`/v1/models/${modelId}/environments/staging/activate`)).status).toBe(200);
    await api.get(`/v1/models/${modelId}/environments/staging/logs`);
    const gone = await api.delete(`/v1/models/${modelId}/environments/staging`);
    expect(gone.body).toMatchObject({ name: "staging", deleted: true });
  }, 60_000);

  it("deployment actions: deactivate, activate, promote to production, retry a failed one, delete", async () => {
    const dep = `/v1/models/${modelId}/deployments/${spare}`;
    expect((await api.post(`${dep}/deactivate`)).body).toEqual({ success: true });
    expect((await api.post(`${dep}/activate`)).body).toEqual({ success: true });
    expect((await api.post(`${dep}/promote`, {})).status).toBe(200);

    const broken = await api.post(`/v1/models/${modelId}/deployments`, {
      source: {
        kind: "model_archive",
        s3_key: await api.upload(
          await packFiles({
            "config.yaml": "model_name: broken\n",
            "model/model.js":
              'export class Model { load() { throw new Error("weights missing"); } predict() {} }\n',
          }),
        ),
        deployment: { config: {} },
      },
    });
    expect(broken.status, JSON.stringify(broken.body)).toBe(200);
    const id = broken.body.deployment.id as string;
    await eventually(async () => (await deployment(id)).status === "DEPLOY_FAILED", 30_000);
    const retried = await api.post(`/v1/models/${modelId}/deployments/${id}/retry`);
    expect(retried.body.retried).toBe(true);
    const failedLogs = await api.post(`/v1/models/${modelId}/deployments/${id}/logs`, { min_level: "ERROR" });
    expect(failedLogs.status).toBe(200);
    expect((await api.delete(`/v1/models/${modelId}/deployments/${id}`)).body).toMatchObject({
      deleted: true,
    });
  }, 60_000);

  it("environment groups, by the key's team and by team id", async () => {
    await api.get("/v1/environment_groups");
    await api.get("/v1/environment_groups/prod-eu");
    await api.get(`/v1/teams/${teamId}/environment_groups`);
    await api.get(`/v1/teams/${teamId}/environment_groups/prod-eu`);
    const patched = await api.patch(`/v1/teams/${teamId}/environment_groups/prod-eu`, {
      region_restriction: { region: "eu", standard_endpoint_policy: "warn" },
    });
    expect(patched.body.region_restriction).toEqual({ region: "eu", standard_endpoint_policy: "warn" });
  });

  it("deletes the model", async () => {
    expect((await api.delete(`/v1/models/${modelId}`)).body).toEqual({ id: modelId, deleted: true });
    expectError(await api.get(`/v1/models/${modelId}`), 404, "model_not_found");
  });

  it("answered every route of /v1/spec that Baseten's spec has, each validated against Baseten's schema", () => {
    const mirrored = conformance.mirrored();
    expect(mirrored.length).toBeGreaterThan(40);
    expect(
      mirrored.filter((r) => !conformance.covered.has(r)),
      "mirrored routes no call here answered",
    ).toEqual([]);
  });

  it("names Baseten's schema for each mirrored route, and tags every other route `meridian`", () => {
    const named: string[] = [];
    const untagged: string[] = [];
    for (const [path, ops] of Object.entries(served.paths)) {
      for (const [method, op] of Object.entries(ops)) {
        const baseten = basetenResponse(method, path);
        const mine = refName(op.responses["200"]?.content?.["application/json"]?.schema);
        if (baseten === undefined) {
          if (!op.tags?.includes("meridian")) untagged.push(`${method.toUpperCase()} ${path}`);
        } else if (mine !== baseten) {
          named.push(`${method.toUpperCase()} ${path}: ${mine} instead of ${baseten}`);
        }
      }
    }
    expect(named, "responses that name another schema than Baseten's").toEqual([]);
    expect(untagged, "routes Baseten's spec does not have, not tagged meridian").toEqual([]);
    // Every schema the document names is Baseten's published one (plus Meridian's fields), not the subset's.
    for (const [name, schema] of Object.entries(served.components.schemas)) {
      const published = BASETEN.components.schemas[name];
      if (published === undefined) continue;
      const { properties, ...rest } = schema as { properties?: Record<string, { "x-meridian"?: boolean }> };
      const { properties: publishedProperties, ...publishedRest } = published as {
        properties?: Record<string, unknown>;
      };
      expect(rest, name).toEqual(publishedRest);
      const own = Object.fromEntries(
        Object.entries(properties ?? {}).filter(([, p]) => p["x-meridian"] !== true),
      );
      expect(own, name).toEqual(publishedProperties ?? {});
    }
  });
});
