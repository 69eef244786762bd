// Several `meridian control` replicas on one PostgreSQL (issue 15 item 3, docs/high-availability.md), as
// real processes on a fresh database of the machine's server: replicas started at the same moment on an
// empty database all come up with one organization and one admin key; a write through one replica reaches
// a plane that watches another; writes racing through two replicas settle as through one; the replica
// that took a promotion SIGKILLed while the candidate loads, and another finishes it, placing nothing
// twice. A second control process on one SQLite data directory is refused.

import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import pg from "pg";
import { request } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  type Cluster,
  DOMAIN,
  eventually,
  freePort,
  type ManagedProcess,
  startCluster,
  startProcess,
} from "../support/cluster.ts";
import { ApiClient, tempDir } from "../support/control.ts";
import { createTestDatabase, type TestDatabase } from "../support/databases.ts";
import {
  PlacementWatch,
  packFiles,
  planeReplicas,
  predict,
  pushPackage,
  slowModel,
} from "../support/planes.ts";
import { expectError } from "../support/reference.ts";

const ROUNDS = Number(process.env["MERIDIAN_MULTI_START_ROUNDS"] ?? 3);
const WRITES = Number(process.env["MERIDIAN_MULTI_WRITES"] ?? 30);

function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

async function query<T extends pg.QueryResultRow>(url: string, text: string, values: unknown[] = []) {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return (await c.query<T>(text, values)).rows;
  } finally {
    await c.end();
  }
}

async function planeRevision(host: string, port: number): Promise<number> {
  const res = await request(`http://${host}:${port}/healthz`, { headersTimeout: 2_000, bodyTimeout: 2_000 });
  return ((await res.body.json()) as { revision: number }).revision;
}

/** Which of `controls` currently says it holds the leader lease (from their logs, latest line wins). */
function leaders(controls: ManagedProcess[]): number[] {
  const out: number[] = [];
  controls.forEach((c, i) => {
    if (c.child.exitCode !== null || c.child.signalCode !== null) return;
    const lines = c.output.filter((l) => l.includes('"msg":"leader lease'));
    if (lines.at(-1)?.includes("leader lease taken")) out.push(i);
  });
  return out;
}

describe("control replicas started at the same moment on an empty PostgreSQL", () => {
  it(
    `all come up, one of them bootstraps, one admin key (${ROUNDS} rounds of 3)`,
    async () => {
      for (let round = 0; round < ROUNDS; round++) {
        const db = await createTestDatabase("postgres");
        const dir = tempDir();
        const procs: ManagedProcess[] = [];
        try {
          const ports = await Promise.all([0, 1, 2].map(() => freePort("127.0.0.1")));
          const keyFile = join(dir, "secrets.key");
          // The first start of the key file is not what races here: every replica is given the same one.
          const { loadSecretsKeyFile } = await import("../../src/lib/secret-box.ts");
          loadSecretsKeyFile(keyFile, { create: true });
          for (const [i, port] of ports.entries()) {
            procs.push(
              startProcess([
                "control",
                "--data-dir",
                join(dir, `c${i}`),
                "--listen",
                `127.0.0.1:${port}`,
                "--domain",
                DOMAIN,
                "--database-url",
                db.url!,
                "--secrets-key-file",
                keyFile,
              ]),
            );
          }
          await Promise.all(procs.map((p) => p.waitForLog("control plane listening", 60_000)));
          // The first start's notice is written once the process listens; the others never write one.
          const firstStarts = () => procs.filter((p) => p.output.some((l) => l.startsWith("First start:")));
          await eventually(async () => firstStarts().length > 0, 10_000);
          await new Promise((r) => setTimeout(r, 500));
          expect(firstStarts()).toHaveLength(1);
          const keyDirs = [0, 1, 2].filter((i) => existsSync(join(dir, `c${i}`, "admin.key")));
          expect(keyDirs).toHaveLength(1);
          const key = readFileSync(join(dir, `c${keyDirs[0]}`, "admin.key"), "utf8").trim();
          // One organization: one team, one admin, one key, the four seed regions once.
          const counts = await query<{ teams: string; users: string; keys: string; regions: string }>(
            db.url!,
            `select (select count(*) from teams) as teams, (select count(*) from users) as users,
                  (select count(*) from api_keys) as keys, (select count(*) from regions) as regions`,
          );
          expect(counts[0]).toEqual({ teams: "1", users: "1", keys: "1", regions: "4" });
          // The key works on every replica: they serve one installation.
          for (const port of ports) {
            const me = await new ApiClient(`http://127.0.0.1:${port}`, key).get("/v1/users/me");
            expect(me.status, JSON.stringify(me.body)).toBe(200);
          }
          // Exactly one leads the background loops.
          await eventually(async () => leaders(procs).length === 1, 10_000);
        } finally {
          await Promise.all(procs.map((p) => p.stop()));
          await db.drop();
        }
      }
    },
    60_000 * ROUNDS,
  );
});

describe("a second control process on one SQLite data directory", () => {
  it("is refused at once with control_store_in_use; the first keeps serving", async () => {
    const dir = tempDir();
    const ports = await Promise.all([0, 1].map(() => freePort("127.0.0.1")));
    const args = (port: number) => [
      "control",
      "--data-dir",
      dir,
      "--listen",
      `127.0.0.1:${port}`,
      "--domain",
      DOMAIN,
    ];
    const first = startProcess(args(ports[0]!));
    let second: ManagedProcess | null = null;
    try {
      await first.waitForLog("control plane listening", 60_000);
      second = startProcess(args(ports[1]!));
      const code = await new Promise<number | null>((ok) => second!.child.once("exit", ok));
      expect(code).toBe(1);
      expect(second.output.join("\n")).toContain("[control_store_in_use]");
      const key = readFileSync(join(dir, "admin.key"), "utf8").trim();
      expect((await new ApiClient(`http://127.0.0.1:${ports[0]}`, key).get("/v1/users/me")).status).toBe(200);
      // Once the first is gone (SIGKILL: the kernel drops its lock), the data directory starts again.
      await first.stop("SIGKILL");
      second = startProcess(args(ports[1]!));
      await second.waitForLog("control plane listening", 60_000);
    } finally {
      await first.stop();
      await second?.stop();
    }
  }, 120_000);
});

describe("two control replicas, planes watching different ones", () => {
  let db: TestDatabase;
  let cluster: Cluster;
  let watch: PlacementWatch;
  /** The API through replica 0 and through replica 1 (same admin key). */
  let a: ApiClient;
  let b: ApiClient;
  let modelId = "";

  beforeAll(async () => {
    db = await createTestDatabase("postgres");
    cluster = await startCluster({
      databaseUrl: db.url!,
      controlReplicas: 2,
      planes: [
        { name: "us-1", region: "us", global: true, capacity: 16, control: 0 },
        { name: "eu-1", region: "eu", capacity: 16, control: 1 },
      ],
    });
    a = cluster.api;
    b = new ApiClient(cluster.controlUrls[1]!, a.key);
    watch = new PlacementWatch(cluster).start();
    const created = await a.createModel("multi");
    expect(created.status, JSON.stringify(created.body)).toBe(200);
    modelId = created.body.model.id;
  }, 180_000);

  afterAll(async () => {
    watch?.stop();
    await cluster?.stop();
    await db?.drop();
  }, 60_000);

  it(`a write through one replica reaches a plane watching the other (${WRITES} writes)`, async () => {
    const eu = cluster.plane("eu-1");
    const measure = async (via: ApiClient, i: number) => {
      const made = await via.post("/v1/api_keys", { type: "WORKSPACE_INVOKE", name: `probe-${i}` });
      const at = performance.now();
      expect(made.status, JSON.stringify(made.body)).toBe(200);
      const value = (await query<{ value: string }>(db.url!, "select value from revision where id = 1"))[0]!
        .value;
      await eventually(async () => (await planeRevision(eu.host, eu.admin)) >= Number(value), 10_000, 5);
      return performance.now() - at;
    };
    const cross: number[] = [];
    const same: number[] = [];
    for (let i = 0; i < WRITES; i++) {
      cross.push(await measure(a, i));
      same.push(await measure(b, i));
    }
    const figures = {
      cross_p50_ms: Math.round(percentile(cross, 50)),
      cross_p99_ms: Math.round(percentile(cross, 99)),
      same_p50_ms: Math.round(percentile(same, 50)),
      same_p99_ms: Math.round(percentile(same, 99)),
    };
    console.log(`write→plane propagation over ${WRITES} writes: ${JSON.stringify(figures)}`);
    // The other replica hears of a commit by its revision poll (250 ms): bounded, never "eventually".
    expect(figures.cross_p99_ms).toBeLessThan(2_000);
  }, 120_000);

  it("writes racing through two replicas settle as through one: one promotion wins, no double placement", async () => {
    expect((await a.post(`/v1/models/${modelId}/environments`, { name: "duel" })).status).toBe(200);
    for (let round = 0; round < 2; round++) {
      // Two deployments bound to nothing yet, promoted at once through either replica.
      const ds: string[] = [];
      for (let i = 0; i < 2; i++) {
        const d = await a.createDeployment(modelId);
        expect(d.status, JSON.stringify(d.body)).toBe(200);
        ds.push(d.body.deployment.id);
      }
      const results = await Promise.all([
        a.post(`/v1/models/${modelId}/environments/duel/promote`, { deployment_id: ds[0] }),
        b.post(`/v1/models/${modelId}/environments/duel/promote`, { deployment_id: ds[1] }),
      ]);
      const winners = results.filter((r) => r.status === 200);
      expect(winners, JSON.stringify(results.map((r) => [r.status, r.body?.error_code]))).toHaveLength(1);
      for (const l of results.filter((r) => r.status !== 200)) expectError(l, 409, "promotion_in_progress");
      const active = await query(
        db.url!,
        "select id from promotions where model_id = $1 and environment = 'duel' and active = 1",
        [modelId],
      );
      expect(active).toHaveLength(1);
      const canceled = await (round % 2 === 0 ? b : a).post(
        `/v1/models/${modelId}/environments/duel/cancel_promotion`,
      );
      expect([200, 409]).toContain(canceled.status); // it may have completed meanwhile
      await eventually(async () => {
        const env = await a.get(`/v1/models/${modelId}/environments/duel`);
        return env.body.in_progress_promotion === null;
      });
    }

    // Scale changes to one environment through both replicas at once, many times: the stored count, the
    // replica rows and what the planes run agree at the end, and no plane ever ran more than asked.
    expect((await a.post(`/v1/models/${modelId}/environments`, { name: "scale" })).status).toBe(200);
    const fresh = await a.createDeployment(modelId);
    expect(fresh.status, JSON.stringify(fresh.body)).toBe(200);
    const serving = fresh.body.deployment.id as string;
    expect(
      (await b.post(`/v1/models/${modelId}/environments/scale/promote`, { deployment_id: serving })).status,
    ).toBe(200);
    await eventually(async () => {
      const env = await a.get(`/v1/models/${modelId}/environments/scale`);
      return env.body.current_deployment?.id === serving && env.body.in_progress_promotion === null;
    }, 60_000);
    const settings = (via: ApiClient, n: number) =>
      via.patch(`/v1/models/${modelId}/environments/scale`, {
        autoscaling_settings: { min_replica: n, max_replica: 3 },
      });
    for (let i = 0; i < 6; i++) {
      const [x, y] = await Promise.all([settings(a, 1 + (i % 3)), settings(b, 1 + ((i + 1) % 3))]);
      expect(x.status, JSON.stringify(x.body)).toBe(200);
      expect(y.status, JSON.stringify(y.body)).toBe(200);
    }
    const final = await a.get(`/v1/models/${modelId}/environments/scale`);
    const min = final.body.autoscaling_settings.min_replica as number;
    expect([1, 2, 3]).toContain(min);
    const stored = async () =>
      Number(
        (
          await query<{ n: string }>(db.url!, "select count(*) as n from replicas where deployment_id = $1", [
            serving,
          ])
        )[0]!.n,
      );
    const n = await stored();
    expect(n).toBeGreaterThanOrEqual(min);
    expect(n).toBeLessThanOrEqual(3);
    // What the planes run converges on the rows: never one replica per replica of the control plane.
    await eventually(async () => {
      let running = 0;
      for (const plane of cluster.planes.values()) {
        running += ((await planeReplicas(plane)) ?? []).filter((r) => r.deployment_id === serving).length;
      }
      return running === (await stored());
    }, 30_000);
  }, 180_000);

  it("the replica that took a promotion SIGKILLed while the candidate loads: the other finishes it", async () => {
    // A regional environment served from eu-1 (which watches replica 1); the promotion goes through
    // replica 0, which is then killed in the real slow step: the candidate's replica loading.
    expect(
      (await a.patch("/v1/environment_groups/prod-eu", { region_restriction: { region: "eu" } })).status,
    ).toBe(200);
    expect((await a.post(`/v1/models/${modelId}/environments`, { name: "prod-eu" })).status).toBe(200);
    const first = await pushPackage(cluster, modelId, await packFiles(slowModel(100)));
    expect(first.status, JSON.stringify(first.body)).toBe(200);
    const p1 = await a.post(`/v1/models/${modelId}/environments/prod-eu/promote`, {
      deployment_id: first.body.deployment.id,
    });
    expect(p1.status, JSON.stringify(p1.body)).toBe(200);
    const previous = p1.body.id as string;
    const settledOn = (id: string) =>
      eventually(
        async () => {
          const env = await b.get(`/v1/models/${modelId}/environments/prod-eu`);
          return env.body.current_deployment?.id === id &&
            env.body.current_deployment.status === "ACTIVE" &&
            env.body.in_progress_promotion === null
            ? env.body
            : null;
        },
        60_000,
        50,
      );
    await settledOn(previous);
    const regional = () => predict(cluster, "eu-1", `model-${modelId}-prod-eu.${DOMAIN}`, "/predict");
    expect((await regional()).status).toBe(200);

    // Make replica 0 the leader too, so its death also hands the background loops over.
    if (!leaders(cluster.controls).includes(0)) {
      await cluster.stopControlReplica(1, "SIGKILL");
      await eventually(async () => leaders(cluster.controls).includes(0), 10_000);
      await cluster.startControlReplica(1);
      b = new ApiClient(cluster.controlUrls[1]!, a.key);
    }

    const slow = await pushPackage(cluster, modelId, await packFiles(slowModel(4_000)));
    expect(slow.status, JSON.stringify(slow.body)).toBe(200);
    const promoted = await a.post(`/v1/models/${modelId}/environments/prod-eu/promote`, {
      deployment_id: slow.body.deployment.id,
    });
    expect(promoted.status, JSON.stringify(promoted.body)).toBe(200);
    const candidate = promoted.body.id as string;
    // The candidate's replica is on eu-1 and loading: the promotion waits for it.
    await eventually(
      async () =>
        ((await planeReplicas(cluster.plane("eu-1"))) ?? []).some((r) => r.deployment_id === candidate),
      20_000,
      50,
    );
    const during = await b.get(`/v1/models/${modelId}/environments/prod-eu`);
    expect(during.body.in_progress_promotion).not.toBeNull();
    expect(during.body.current_deployment.id).toBe(previous);

    const killedAt = performance.now();
    await cluster.stopControlReplica(0, "SIGKILL");
    const traffic: number[] = [];
    let serving = true;
    const load = (async () => {
      while (serving) {
        traffic.push((await regional().catch(() => ({ status: 0 }))).status);
        await new Promise((r) => setTimeout(r, 50));
      }
    })();
    await eventually(async () => leaders(cluster.controls).includes(1), 10_000, 20);
    const takeoverMs = performance.now() - killedAt;
    await settledOn(candidate);
    const finishedMs = performance.now() - killedAt;
    serving = false;
    await load;
    console.log(
      `promotion finished by the other replica: lease taken ${Math.round(takeoverMs)} ms after SIGKILL, ` +
        `promotion complete ${Math.round(finishedMs)} ms after SIGKILL; ${traffic.length} regional requests, ` +
        `${traffic.filter((s) => s !== 200).length} not 200`,
    );
    // The regional environment kept serving throughout: from the previous deployment, then the candidate.
    expect(traffic.filter((s) => s !== 200)).toEqual([]);

    // Never double placement, never half-promoted: one SUCCEEDED promotion, none active, one replica of the
    // candidate (its want) in rows and on the plane, the previous one asleep, nothing outside eu.
    const promotions = await query<{ status: string; active: number }>(
      db.url!,
      "select status, active from promotions where model_id = $1 and environment = 'prod-eu' and candidate_deployment_id = $2",
      [modelId, candidate],
    );
    expect(promotions).toEqual([{ status: "SUCCEEDED", active: 0 }]);
    const rows = await query<{ plane: string }>(
      db.url!,
      "select plane from replicas where deployment_id = $1",
      [candidate],
    );
    expect(rows).toEqual([{ plane: "eu-1" }]);
    await eventually(async () => {
      const prev = await b.get(`/v1/models/${modelId}/deployments/${previous}`);
      return prev.body.status === "SCALED_TO_ZERO";
    });
    const onPlane = ((await planeReplicas(cluster.plane("eu-1"))) ?? []).filter(
      (r) => r.deployment_id === candidate,
    );
    expect(onPlane).toHaveLength(1);
    expect(watch.outside([candidate, previous], "eu")).toEqual([]);

    // The killed replica starts again and serves the same installation.
    await cluster.startControlReplica(0);
    const env = await a.get(`/v1/models/${modelId}/environments/prod-eu`);
    expect(env.body.current_deployment.id).toBe(candidate);
  }, 240_000);
});
