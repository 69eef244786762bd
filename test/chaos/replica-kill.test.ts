// A replica SIGKILLed in the middle of a request (issue 15): the client gets a fast 502 `replica_failed`, or
// a stream that ends with an error, never a hang; and the request, which reached the replica, is not run
// again on another one (the region has a second replica, on another plane, that a retry could have used).
// Executions are counted from the replicas' own logs on the planes.

import { request } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Cluster, DOMAIN, eventually, startCluster } from "../support/cluster.ts";
import { createModelFrom, packFiles, planeReplicas, replicaPid } from "../support/planes.ts";
import { chaosModel, executions, requestId } from "./support.ts";

/** How soon after the kill the client must have its answer (or its stream's end). */
const FAST_MS = 2_000;

describe("a replica SIGKILLed mid-request", () => {
  let cluster: Cluster;
  let model: string;
  let deployment: string;
  const host = () => `model-${model}-prod-eu.${DOMAIN}`;

  const readyReplicas = async () => {
    const out: Array<{ plane: string; id: string; restarts: number }> = [];
    for (const name of ["eu-1", "eu-2"]) {
      for (const r of (await planeReplicas(cluster.plane(name))) ?? []) {
        if (r.deployment_id === deployment && r.state === "READY")
          out.push({ plane: name, id: r.id, restarts: r.restarts });
      }
    }
    return out;
  };

  /** Sends `body` to `entry`'s ingress; resolves with how the exchange ended and when. */
  async function send(entry: string, body: Record<string, unknown>) {
    const p = cluster.plane(entry);
    const res = await request(`http://${p.host}:${p.port}/predict`, {
      method: "POST",
      headers: {
        host: host(),
        authorization: `Api-Key ${cluster.api.key}`,
        "content-type": "application/json",
      },
      body: JSON.stringify(body),
      headersTimeout: 30_000,
      bodyTimeout: 30_000,
    });
    const headersAt = Date.now();
    const chunks: string[] = [];
    let error: string | null = null;
    try {
      for await (const c of res.body) chunks.push(Buffer.from(c as Uint8Array).toString("utf8"));
    } catch (err) {
      error = String(err);
    }
    return {
      status: res.statusCode,
      headers: res.headers,
      headersAt,
      endedAt: Date.now(),
      text: chunks.join(""),
      error,
    };
  }

  /** Sends a request, kills the replica that logged it once it did, and returns the exchange and the kill time. */
  async function killMidRequest(entry: string, body: Record<string, unknown>) {
    const id = body["id"] as string;
    const exchange = send(entry, body);
    const where = await eventually(async () => executions(cluster, id)[0] ?? null, 15_000);
    const [plane, replica] = where.split("/") as [string, string];
    const pid = replicaPid(cluster.plane(plane), replica);
    expect(pid, `pid of ${where}`).toBeGreaterThan(0);
    process.kill(pid!, "SIGKILL");
    const killedAt = Date.now();
    return { ...(await exchange), killedAt, where };
  }

  beforeAll(async () => {
    cluster = await startCluster({
      planes: [
        { name: "us-1", region: "us", global: true },
        { name: "eu-1", region: "eu" },
        { name: "eu-2", region: "eu" },
      ],
    });
    const api = cluster.api;
    expect(
      (await api.patch("/v1/environment_groups/prod-eu", { region_restriction: { region: "eu" } })).status,
    ).toBe(200);
    const created = await createModelFrom(
      cluster,
      "replica-kill",
      await packFiles(chaosModel("replica-kill")),
      {
        environment_name: "prod-eu",
      },
    );
    expect(created.status, JSON.stringify(created.body)).toBe(200);
    model = created.body.model.id;
    deployment = created.body.deployment.id;
    const patched = await api.patch(`/v1/models/${model}/environments/prod-eu`, {
      autoscaling_settings: { min_replica: 2, max_replica: 2 },
    });
    expect(patched.status, JSON.stringify(patched.body)).toBe(200);
    // One replica on each eu plane: whichever runs the request, another could have taken a retry, and a
    // request entering at the other plane crosses the plane-to-plane hop.
    await eventually(async () => new Set((await readyReplicas()).map((r) => r.plane)).size === 2, 60_000);
  }, 120_000);

  afterAll(async () => {
    await cluster?.stop();
  }, 60_000);

  for (const entry of ["eu-1", "eu-2"]) {
    it(`a JSON request entering at ${entry}: a fast 502 replica_failed, executed once`, async () => {
      await eventually(async () => (await readyReplicas()).length === 2, 30_000);
      const id = requestId("json");
      const r = await killMidRequest(entry, { id, ms: 20_000 });
      expect(r.status, r.text).toBe(502);
      expect(JSON.parse(r.text).error_code).toBe("replica_failed");
      expect(r.headersAt - r.killedAt).toBeLessThan(FAST_MS);
      // Nothing runs it again: not the restarted replica, not the other plane's.
      await new Promise((ok) => setTimeout(ok, 3_000));
      expect(executions(cluster, id)).toEqual([r.where]);
      // The killed replica is restarted in place, and the region serves again.
      await eventually(async () => (await readyReplicas()).length === 2, 30_000);
      const again = await send(entry, { id: requestId("after") });
      expect(again.status, again.text).toBe(200);
      expect(again.headers["x-meridian-region"]).toBe("eu");
    }, 60_000);
  }

  it("a streamed response: the stream ends with an error soon after the kill, executed once", async () => {
    await eventually(async () => (await readyReplicas()).length === 2, 30_000);
    const id = requestId("stream");
    const r = await killMidRequest("eu-1", { id, ms: 20_000, stream: true });
    expect(r.status).toBe(200);
    expect(r.headers["content-type"]).toMatch(/ndjson/);
    // Some chunks came through before the kill; the end never did, and the client was told by an error.
    expect(r.text).toContain(`"id":"${id}"`);
    expect(r.text).not.toContain('"done":true');
    expect(r.error).not.toBeNull();
    expect(r.endedAt - r.killedAt).toBeLessThan(FAST_MS);
    await new Promise((ok) => setTimeout(ok, 3_000));
    expect(executions(cluster, id)).toEqual([r.where]);
  }, 60_000);
});
