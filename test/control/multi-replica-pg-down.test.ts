// PostgreSQL itself stopped under two control replicas and planes serving (issue 15 item 3; docs/
// high-availability.md): the planes keep serving from their snapshots, both replicas answer writes with
// a typed 503 store_unavailable, and everything recovers when the database is back. The database is a
// PRIVATE cluster this test starts (initdb as user postgres, its own port, its socket in a temp dir) and
// removes: the machine's shared server is never stopped.

import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Cluster, DOMAIN, eventually, freePort, startCluster } from "../support/cluster.ts";
import { ApiClient } from "../support/control.ts";
import { predict } from "../support/planes.ts";
import { PrivatePostgres } from "../support/private-postgres.ts";
import { expectError } from "../support/reference.ts";

const OUTAGE_MS = Number(process.env["MERIDIAN_PG_OUTAGE_MS"] ?? 15_000);

describe("PostgreSQL stopped under two control replicas", () => {
  let pg: PrivatePostgres;
  let cluster: Cluster;
  let a: ApiClient;
  let b: ApiClient;
  let modelId = "";

  beforeAll(async () => {
    pg = new PrivatePostgres(await freePort("127.0.0.1"));
    pg.init();
    pg.createDatabase("meridian");
    cluster = await startCluster({
      databaseUrl: `postgres://postgres@127.0.0.1:${pg.port}/meridian`,
      controlReplicas: 2,
      planes: [
        { name: "us-1", region: "us", global: true, control: 0 },
        { name: "eu-1", region: "eu", control: 1 },
      ],
    });
    a = cluster.api;
    b = new ApiClient(cluster.controlUrls[1]!, a.key);
    expect(
      (await a.patch("/v1/environment_groups/prod-eu", { region_restriction: { region: "eu" } })).status,
    ).toBe(200);
    const created = await a.createModel("pgdown");
    expect(created.status, JSON.stringify(created.body)).toBe(200);
    modelId = created.body.model.id;
    expect((await a.post(`/v1/models/${modelId}/environments`, { name: "prod-eu" })).status).toBe(200);
    const promoted = await a.post(`/v1/models/${modelId}/environments/prod-eu/promote`, {
      deployment_id: created.body.deployment.id,
    });
    expect(promoted.status, JSON.stringify(promoted.body)).toBe(200);
    await eventually(
      async () =>
        (await predict(cluster, "eu-1", `model-${modelId}-prod-eu.${DOMAIN}`, "/predict")).status === 200,
      90_000,
    );
  }, 240_000);

  afterAll(async () => {
    await cluster?.stop();
    pg?.destroy();
  }, 60_000);

  it("planes keep serving, writes answer 503 store_unavailable, and all recovers when it is back", async () => {
    const regional = () =>
      predict(cluster, "eu-1", `model-${modelId}-prod-eu.${DOMAIN}`, "/predict").catch(() => ({ status: 0 }));
    const statuses: number[] = [];
    let serving = true;
    const load = (async () => {
      while (serving) {
        statuses.push((await regional()).status);
        await new Promise((r) => setTimeout(r, 50));
      }
    })();

    pg.stop();
    const stoppedAt = performance.now();
    // Both replicas answer writes (and the reads that need the database) with the typed 503, quickly.
    for (const via of [a, b]) {
      const t0 = performance.now();
      const write = await via.post(`/v1/models/${modelId}/environments`, { name: "during-outage" });
      expectError(write, 503, "store_unavailable");
      expect(performance.now() - t0).toBeLessThan(6_000);
    }
    // Neither replica leads while the database is gone.
    await eventually(
      async () =>
        cluster.controls.every((c) => {
          const lines = c.output.filter((l) => l.includes('"msg":"leader lease'));
          return lines.length === 0 || lines.at(-1)!.includes("leader lease released");
        }),
      10_000,
    );
    await new Promise((r) => setTimeout(r, Math.max(0, OUTAGE_MS - (performance.now() - stoppedAt))));
    const during = statuses.length;

    pg.start();
    const startedAt = performance.now();
    // Writes work again through both replicas, and one replica leads again.
    const recoveredA = await eventually(async () => {
      const r = await a.post(`/v1/models/${modelId}/environments`, { name: "after-a" });
      return r.status === 200 ? performance.now() - startedAt : null;
    }, 30_000);
    await eventually(
      async () => (await b.post(`/v1/models/${modelId}/environments`, { name: "after-b" })).status === 200,
      30_000,
    );
    const leaderLines = () =>
      cluster.controls.filter((c) => {
        const lines = c.output.filter((l) => l.includes('"msg":"leader lease'));
        return lines.at(-1)?.includes("leader lease taken") === true;
      }).length;
    await eventually(async () => leaderLines() === 1, 15_000);
    // What replica 0 wrote reaches eu-1, which watches replica 1: the feeds hear commits again.
    expect((await b.get(`/v1/models/${modelId}/environments/after-a`)).status).toBe(200);
    const revision = (await a.get("/healthz")).body.revision as number;
    const eu = cluster.plane("eu-1");
    await eventually(async () => {
      const res = await fetch(`http://${eu.host}:${eu.admin}/healthz`).catch(() => null);
      return res !== null && ((await res.json()) as { revision: number }).revision >= revision;
    }, 15_000);
    serving = false;
    await load;
    const failed = statuses.filter((s) => s !== 200);
    console.log(
      `PostgreSQL stopped ${Math.round(OUTAGE_MS / 1000)} s under 2 control replicas: ${statuses.length} regional requests ` +
        `(${during} during the outage), ${failed.length} not 200; writes through replica 0 again ` +
        `${Math.round(recoveredA)} ms after PostgreSQL started`,
    );
    expect(failed).toEqual([]);
  }, 180_000);
});
