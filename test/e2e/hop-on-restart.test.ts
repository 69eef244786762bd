// A plane whose own replica is gone hands a regional request to its region's other plane (issue 15, the
// replica SIGKILL and plane frozen findings of RELIABILITY.md), with real `meridian` processes:
// - eu-1's replica SIGKILLed again and again under steady load: no request that arrived while eu-2 was
//   ready is answered 503, none runs twice, none is served outside eu. A request that reached the replica
//   before it died is 502 `replica_failed` and ran once;
// - the plane holding the region's only replica frozen (SIGSTOP): requests hopped to it from the other eu
//   plane are answered, typed, within the hop's continue bound, and none of them runs when it resumes;
//   after SIGCONT the region serves again.
// Executions are counted from the replicas' own logs on the planes, as in test/chaos/.

import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { request } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { chaosModel, EXEC, requestId } from "../chaos/support.ts";
import { type Cluster, DOMAIN, eventually, startCluster } from "../support/cluster.ts";
import { createModelFrom, packFiles, planeReplicas, replicaPid } from "../support/planes.ts";

/** The planes' `--hop-continue-timeout` here (the default, written out so the bound below is explicit). */
const CONTINUE_MS = 2_000;
/** A call with no answer after this is hung (the harness's HUNG_MS). */
const HUNG_MS = 10_000;

interface Outcome {
  id: string;
  entry: string;
  status: number;
  code: string | null;
  region: string | null;
  route: string | null;
  sentAt: number;
  endedAt: number;
  error: string | null;
}

describe("a plane whose replica is dead or whose peer is frozen", () => {
  let cluster: Cluster;
  let model: string;
  let deployment: string;
  const host = () => `model-${model}-prod-eu.${DOMAIN}`;

  const readyOn = async (): Promise<Array<{ plane: string; id: string; restarts: number }>> => {
    const out: Array<{ plane: string; id: string; restarts: number }> = [];
    for (const name of ["eu-1", "eu-2"]) {
      for (const r of (await planeReplicas(cluster.plane(name))) ?? []) {
        if (r.deployment_id === deployment && r.state === "READY")
          out.push({ plane: name, id: r.id, restarts: r.restarts });
      }
    }
    return out;
  };

  async function send(entry: string, body: Record<string, unknown>): Promise<Outcome> {
    const p = cluster.plane(entry);
    const sentAt = Date.now();
    const id = String(body["id"]);
    try {
      const res = await request(`http://${p.host}:${p.port}/predict`, {
        method: "POST",
        headers: {
          host: host(),
          authorization: `Api-Key ${cluster.api.key}`,
          "content-type": "application/json",
          "x-request-id": id,
        },
        body: JSON.stringify(body),
        headersTimeout: HUNG_MS,
        bodyTimeout: HUNG_MS,
      });
      const text = await res.body.text();
      let code: string | null = null;
      if (res.statusCode >= 400) code = (JSON.parse(text) as { error_code?: string }).error_code ?? "untyped";
      const h = (n: string) => (res.headers[n] as string | undefined) ?? null;
      return {
        id,
        entry,
        status: res.statusCode,
        code,
        region: h("x-meridian-region"),
        route: h("x-meridian-route"),
        sentAt,
        endedAt: Date.now(),
        error: null,
      };
    } catch (err) {
      const e = err as { code?: string };
      return {
        id,
        entry,
        status: 0,
        code: e.code ?? "error",
        region: null,
        route: null,
        sentAt,
        endedAt: Date.now(),
        error: String(err),
      };
    }
  }

  /** Every execution the replicas logged, by request id, as `plane/replica`: all log files read once. */
  function executionsById(): Map<string, string[]> {
    const out = new Map<string, string[]>();
    for (const p of cluster.planes.values()) {
      const dir = join(p.dataDir, "logs");
      let files: string[] = [];
      try {
        files = readdirSync(dir).filter((f) => f.endsWith(".log"));
      } catch {
        continue;
      }
      for (const f of files) {
        for (const l of readFileSync(join(dir, f), "utf8").split("\n")) {
          if (!l.includes(EXEC)) continue;
          try {
            const line = (JSON.parse(l) as { line?: string }).line ?? "";
            if (!line.startsWith(`${EXEC} `)) continue;
            const id = line.slice(EXEC.length + 1);
            const list = out.get(id) ?? [];
            list.push(`${p.name}/${f.slice(0, -4)}`);
            out.set(id, list);
          } catch {}
        }
      }
    }
    return out;
  }

  beforeAll(async () => {
    cluster = await startCluster({
      planes: [
        { name: "us-1", region: "us", global: true },
        { name: "eu-1", region: "eu", args: ["--hop-continue-timeout", String(CONTINUE_MS)] },
        { name: "eu-2", region: "eu", args: ["--hop-continue-timeout", String(CONTINUE_MS)] },
      ],
    });
    const api = cluster.api;
    expect(
      (await api.patch("/v1/environment_groups/prod-eu", { region_restriction: { region: "eu" } })).status,
    ).toBe(200);
    const created = await createModelFrom(cluster, "hop-on-restart", await packFiles(chaosModel("hop")), {
      environment_name: "prod-eu",
    });
    expect(created.status, JSON.stringify(created.body)).toBe(200);
    model = created.body.model.id;
    deployment = created.body.deployment.id;
    const patched = await api.patch(`/v1/models/${model}/environments/prod-eu`, {
      autoscaling_settings: { min_replica: 2, max_replica: 2 },
    });
    expect(patched.status, JSON.stringify(patched.body)).toBe(200);
    await eventually(async () => new Set((await readyOn()).map((r) => r.plane)).size === 2, 90_000);
  }, 150_000);

  afterAll(async () => {
    await cluster?.stop();
  }, 60_000);

  it("eu-1's replica SIGKILLed 4 times under load: 0 × 503 while eu-2 is ready, 0 duplicates, 0 out of region", async () => {
    const results: Outcome[] = [];
    let running = true;
    // Steady load: two clients at eu-1's ingress (the plane whose replica dies), one at eu-2's.
    const client = async (entry: string) => {
      while (running) {
        results.push(await send(entry, { id: requestId(`kill-${entry}`) }));
        await new Promise((ok) => setTimeout(ok, 20));
      }
    };
    const clients = [client("eu-1"), client("eu-1"), client("eu-2")];
    const kills: number[] = [];
    try {
      for (let k = 0; k < 4; k++) {
        const ready = await eventually(async () => {
          const r = await readyOn();
          return r.length === 2 ? r : null;
        }, 60_000);
        // Load runs a moment on a whole region before each kill.
        await new Promise((ok) => setTimeout(ok, 1_000));
        const victim = ready.find((r) => r.plane === "eu-1")!;
        const pid = replicaPid(cluster.plane("eu-1"), victim.id);
        expect(pid, "pid of eu-1's replica").toBeGreaterThan(0);
        process.kill(pid!, "SIGKILL");
        kills.push(Date.now());
        // Until eu-1's replica is restarted and READY again, its regional requests must go to eu-2.
        await eventually(async () => {
          const now = await readyOn();
          const again = now.find((r) => r.plane === "eu-1");
          return again !== undefined && again.restarts > victim.restarts;
        }, 60_000);
      }
      await new Promise((ok) => setTimeout(ok, 1_000));
    } finally {
      running = false;
      await Promise.all(clients);
    }

    const statuses = new Map<string, number>();
    for (const r of results) {
      const key = `${r.status} ${r.code ?? ""}`.trim();
      statuses.set(key, (statuses.get(key) ?? 0) + 1);
    }
    const summary = JSON.stringify(Object.fromEntries(statuses));
    expect(results.length, summary).toBeGreaterThan(100);
    // eu-2's replica is never killed: every request arrived while eu-2 was ready.
    expect(results.filter((r) => r.status === 503).length, summary).toBe(0);
    expect(results.filter((r) => r.status === 0 || r.code === "untyped").length, summary).toBe(0);
    // Only a request that reached the dying replica may fail, 502 replica_failed.
    for (const r of results) {
      if (r.status !== 200) expect(`${r.status} ${r.code}`, summary).toBe("502 replica_failed");
    }
    expect(results.filter((r) => r.endedAt - r.sentAt >= HUNG_MS).length).toBe(0);
    // In region, from the client's side (proof headers) and the planes' (where the replicas logged it).
    for (const r of results.filter((x) => x.status === 200)) expect(r.region).toBe("eu");
    await new Promise((ok) => setTimeout(ok, 2_000));
    const runs = executionsById();
    const duplicates = results.filter((r) => (runs.get(r.id)?.length ?? 0) > 1);
    expect(duplicates.map((r) => `${r.id}: ${runs.get(r.id)!.join(" ")}`)).toEqual([]);
    for (const r of results) {
      const where = runs.get(r.id) ?? [];
      for (const w of where) expect(w).toMatch(/^eu-[12]\//);
      // Answered 200: ran exactly once. A 502 reached a replica that died: it ran there at most once (the
      // replica may have died before the model started it), and nowhere else.
      if (r.status === 200) expect(where.length, `${r.id} ${r.status}`).toBe(1);
      else expect(where.length, `${r.id} ${r.status}`).toBeLessThanOrEqual(1);
    }
    // The hand-over was exercised: eu-1's requests served by eu-2 while its own replica was down.
    const handed = results.filter(
      (r) =>
        r.entry === "eu-1" &&
        r.status === 200 &&
        r.route === "eu-1, eu-2" &&
        kills.some((k) => r.sentAt >= k),
    );
    expect(handed.length, summary).toBeGreaterThan(0);
    const failed502 = results.filter((r) => r.status === 502);
    console.info(
      `hop-on-restart: ${results.length} calls, ${summary}, handed over ${handed.length}, 502s run: ${failed502.filter((r) => runs.has(r.id)).length}/${failed502.length}`,
    );
  }, 240_000);

  it("the plane holding the region's only replica frozen: hops to it answered 503 within the bound, never run; SIGCONT serves again", async () => {
    const patched = await cluster.api.patch(`/v1/models/${model}/environments/prod-eu`, {
      autoscaling_settings: { min_replica: 1, max_replica: 1 },
    });
    expect(patched.status, JSON.stringify(patched.body)).toBe(200);
    const only = await eventually(async () => {
      const r = await readyOn();
      return r.length === 1 ? r[0]! : null;
    }, 60_000);
    const holder = only.plane;
    const entry = holder === "eu-1" ? "eu-2" : "eu-1";
    // The entry plane has no replica of its own: its regional requests hop to the holder.
    await eventually(async () => {
      const r = await send(entry, { id: requestId("before") });
      return r.status === 200 && r.route === `${entry}, ${holder}`;
    }, 30_000);

    const pid = cluster.plane(holder).process!.child.pid!;
    process.kill(pid, "SIGSTOP");
    const frozen: Outcome[] = [];
    try {
      for (let i = 0; i < 5; i++) frozen.push(await send(entry, { id: requestId("frozen") }));
    } finally {
      process.kill(pid, "SIGCONT");
    }
    const summary = JSON.stringify(frozen.map((r) => [r.status, r.code, r.endedAt - r.sentAt]));
    for (const r of frozen) {
      // The hop's continue bound, plus its 500 ms timer tick and a loaded machine's slack: never the hop's
      // headers timeout (the predict timeout plus 1 s, 1201 s by default).
      expect(r.endedAt - r.sentAt, summary).toBeLessThan(CONTINUE_MS + 2_000);
      expect([r.status, r.code], summary).toEqual([503, "model_unavailable"]);
    }
    // Served again once it resumed; and what was refused while it was frozen never runs.
    const again = await eventually(async () => {
      const r = await send(entry, { id: requestId("after") });
      return r.status === 200 ? r : null;
    }, 30_000);
    expect(again.region).toBe("eu");
    await new Promise((ok) => setTimeout(ok, 2_000));
    const runs = executionsById();
    expect(frozen.filter((r) => runs.has(r.id)).map((r) => r.id)).toEqual([]);
  }, 180_000);
});
