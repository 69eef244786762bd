// Deployment lifecycle end to end (DESIGN.md §2.5, §2.7; issue 3) with real processes: promotions switch
// traffic only once the candidate is ready, the cleanup strategies, cancel mid-flight, broken models that
// fail clearly without touching anyone else, replica logs read through the management API, and a control
// plane outage the planes ride out (MERIDIAN_E2E_OUTAGE_SECONDS, default 60 as the issue asks) without restarting replicas.

import { join } from "node:path";
import SQLite from "better-sqlite3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CONTROL_KEY_META } from "../../src/control/keys.ts";
import { signControlAccess } from "../../src/lib/control-access.ts";
import { loadOrCreatePlaneKey, signingKeyFromJwk } from "../../src/lib/keys.ts";
import { type Cluster, DOMAIN, eventually, FOUR_REGIONS, startCluster } from "../support/cluster.ts";
import {
  createModelFrom,
  PlacementWatch,
  packFiles,
  planeReplicas,
  predict,
  pushPackage,
  replicaPid,
  slowModel,
  Traffic,
} from "../support/planes.ts";
import { expectReferenceShape } from "../support/reference.ts";

const OUTAGE_SECONDS = Number(process.env["MERIDIAN_E2E_OUTAGE_SECONDS"] ?? 60);

describe("deployment lifecycle", () => {
  let cluster: Cluster;
  let watch: PlacementWatch;
  /** A model serving `stage` from us; the promotion tests move it along. */
  let modelId = "";
  /** Another model that must keep serving whatever happens to the others. */
  let bystander = "";
  let bystanderTraffic: Traffic;
  /** A model serving prod-eu from eu-1, created by the logs test. */
  let talkative = "";

  const api = () => cluster.api;
  const stage = () => predict(cluster, "us-1", `model-${modelId}.${DOMAIN}`, "/environments/stage/predict");

  async function environment(model: string, env: string) {
    const e = await api().get(`/v1/models/${model}/environments/${env}`);
    expect(e.status, JSON.stringify(e.body)).toBe(200);
    return e.body;
  }

  async function deployment(model: string, id: string) {
    return (await api().get(`/v1/models/${model}/deployments/${id}`)).body;
  }

  async function settled(model: string, env: string, id: string, timeoutMs = 30_000) {
    return eventually(async () => {
      const e = await environment(model, env);
      return e.current_deployment?.id === id &&
        e.current_deployment.status === "ACTIVE" &&
        e.in_progress_promotion === null
        ? e
        : null;
    }, timeoutMs);
  }

  async function runningAnywhere(deploymentId: string): Promise<boolean> {
    const all = await Promise.all([...cluster.planes.values()].map((p) => planeReplicas(p)));
    return all.some((rs) => (rs ?? []).some((r) => r.deployment_id === deploymentId));
  }

  beforeAll(async () => {
    cluster = await startCluster({ planes: FOUR_REGIONS });
    watch = new PlacementWatch(cluster).start();
    const created = await api().createModel("lifecycle", "hello-js", { environment_name: "stage" });
    expect(created.status, JSON.stringify(created.body)).toBe(200);
    modelId = created.body.model.id;
    const other = await api().createModel("bystander", "hello-js", { environment_name: "stage" });
    bystander = other.body.model.id;
    await settled(modelId, "stage", created.body.deployment.id);
    await settled(bystander, "stage", other.body.deployment.id);
    const call = () =>
      predict(cluster, "us-1", `model-${bystander}.${DOMAIN}`, "/environments/stage/predict");
    await eventually(async () => (await call()).status === 200);
    await eventually(async () => (await stage()).status === 200);
    bystanderTraffic = new Traffic(call, 100);
  }, 60_000);

  afterAll(async () => {
    await bystanderTraffic?.stop();
    watch?.stop();
    await cluster?.stop();
  }, 60_000);

  it("switches traffic only when the candidate is ready, then scales the previous deployment to zero", async () => {
    const previous = (await environment(modelId, "stage")).current_deployment.id as string;
    const pushed = await pushPackage(cluster, modelId, await packFiles(slowModel(3_000)));
    expect(pushed.status, JSON.stringify(pushed.body)).toBe(200);
    const candidate = pushed.body.deployment.id as string;
    const traffic = new Traffic(stage, 50);

    const promoted = await api().post(`/v1/models/${modelId}/environments/stage/promote`, {
      deployment_id: candidate,
    });
    expect(promoted.status, JSON.stringify(promoted.body)).toBe(200);
    expect(promoted.body.id).toBe(candidate);
    // While the candidate loads, the environment and its traffic stay with the previous deployment.
    await new Promise((r) => setTimeout(r, 1_500));
    const during = await environment(modelId, "stage");
    expect(during.current_deployment.id).toBe(previous);
    expect(during.in_progress_promotion).not.toBeNull();
    expect(["DEPLOYING", "LOADING_MODEL"]).toContain((await deployment(modelId, candidate)).status);

    await settled(modelId, "stage", candidate);
    await eventually(async () => traffic.header("x-meridian-deployment-id").at(-1) === candidate);
    await traffic.stop();
    expect(traffic.failures()).toEqual([]);
    const served = traffic.header("x-meridian-deployment-id");
    // Never the candidate before it was ready; never the previous one after the switch.
    expect(new Set(served)).toEqual(new Set([previous, candidate]));
    expect(served.slice(served.indexOf(candidate)).every((d) => d === candidate)).toBe(true);

    await eventually(async () => (await deployment(modelId, previous)).status === "SCALED_TO_ZERO");
    await eventually(async () => !(await runningAnywhere(previous)));
  }, 45_000);

  it("KEEP leaves the previous deployment running; DEACTIVATE stops it", async () => {
    const set = (strategy: string) =>
      api().patch(`/v1/models/${modelId}/environments/stage`, {
        promotion_settings: { promotion_cleanup_strategy: strategy },
      });
    expect((await set("KEEP")).status).toBe(200);
    const kept = (await environment(modelId, "stage")).current_deployment.id as string;
    const second = (await api().createDeployment(modelId, "hello-js")).body.deployment.id as string;
    await api().post(`/v1/models/${modelId}/environments/stage/promote`, { deployment_id: second });
    await settled(modelId, "stage", second);
    await new Promise((r) => setTimeout(r, 1_000));
    expect((await deployment(modelId, kept)).status).toBe("ACTIVE");
    expect(await runningAnywhere(kept)).toBe(true);

    expect((await set("DEACTIVATE")).status).toBe(200);
    const third = (await api().createDeployment(modelId, "hello-js")).body.deployment.id as string;
    await api().post(`/v1/models/${modelId}/environments/stage/promote`, { deployment_id: third });
    await settled(modelId, "stage", third);
    await eventually(async () => (await deployment(modelId, second)).status === "INACTIVE");
    await eventually(async () => !(await runningAnywhere(second)));
    // KEEP's survivor is untouched by a later promotion with another strategy.
    expect((await deployment(modelId, kept)).status).toBe("ACTIVE");
    expect((await set("SCALE_TO_ZERO")).status).toBe(200);
  }, 45_000);

  it("cancel mid-flight: the environment keeps its deployment, a redeployed candidate is stopped", async () => {
    const current = (await environment(modelId, "stage")).current_deployment.id as string;
    expect(
      (await api().patch("/v1/environment_groups/prod-eu", { region_restriction: { region: "eu" } })).status,
    ).toBe(200);
    expect((await api().post(`/v1/models/${modelId}/environments`, { name: "prod-eu" })).status).toBe(200);
    const slow = (await pushPackage(cluster, modelId, await packFiles(slowModel(5_000)))).body.deployment
      .id as string;

    // Into the regional environment: a forced redeploy (a copy in eu), canceled while it loads.
    const promoted = await api().post(`/v1/models/${modelId}/environments/prod-eu/promote`, {
      deployment_id: slow,
    });
    expect(promoted.status, JSON.stringify(promoted.body)).toBe(200);
    const copy = promoted.body.id as string;
    expect(copy).not.toBe(slow);
    await eventually(async () => watch.planesOf(copy).length > 0);
    const canceled = await api().post(`/v1/models/${modelId}/environments/prod-eu/cancel_promotion`);
    expect(canceled.status, JSON.stringify(canceled.body)).toBe(200);
    expect(canceled.body.status).toBe("CANCELED");
    const regional = await environment(modelId, "prod-eu");
    expect(regional.in_progress_promotion).toBeNull();
    expect(regional.current_deployment).toBeNull();
    expect((await deployment(modelId, copy)).status).toBe("INACTIVE");
    await eventually(async () => !(await runningAnywhere(copy)));
    expect(watch.planesOf(copy)).toEqual(["eu-1"]);

    // Into `stage` (reused as is), canceled while it loads: stage serves its deployment throughout.
    const traffic = new Traffic(stage, 50);
    const again = await api().post(`/v1/models/${modelId}/environments/stage/promote`, {
      deployment_id: slow,
    });
    expect(again.status, JSON.stringify(again.body)).toBe(200);
    await new Promise((r) => setTimeout(r, 500));
    expect((await api().post(`/v1/models/${modelId}/environments/stage/cancel_promotion`)).status).toBe(200);
    await new Promise((r) => setTimeout(r, 6_000));
    await traffic.stop();
    const env = await environment(modelId, "stage");
    expect(env.current_deployment.id).toBe(current);
    expect(env.in_progress_promotion).toBeNull();
    expect(traffic.failures()).toEqual([]);
    expect(new Set(traffic.header("x-meridian-deployment-id"))).toEqual(new Set([current]));
    // A second cancel has nothing to cancel.
    const nothing = await api().post(`/v1/models/${modelId}/environments/stage/cancel_promotion`);
    expect(nothing.body.error_code).toBe("no_promotion_in_progress");
  }, 60_000);

  it("a model whose load() throws, a start_command that exits and a broken config.yaml each fail clearly", async () => {
    const throws = await createModelFrom(
      cluster,
      "load-throws",
      await packFiles({
        "config.yaml": "model_name: load-throws\n",
        "model/model.js":
          'export class Model {\n  async load() { throw new Error("weights missing at /models/nowhere.bin"); }\n  predict(x) { return x; }\n}\n',
      }),
      { environment_name: "stage" },
    );
    expect(throws.status, JSON.stringify(throws.body)).toBe(200);
    const exits = await createModelFrom(
      cluster,
      "server-exits",
      await packFiles({
        "config.yaml": [
          "model_name: server-exits",
          "docker_server:",
          "  start_command: sh -c 'echo cannot bind the GPU >&2; exit 7'",
          "  server_port: 8080",
          "  predict_endpoint: /predict",
          "  readiness_endpoint: /health",
          "  liveness_endpoint: /health",
          "",
        ].join("\n"),
      }),
      { environment_name: "stage" },
    );
    expect(exits.status, JSON.stringify(exits.body)).toBe(200);
    const broken = await createModelFrom(
      cluster,
      "broken-config",
      await packFiles({
        "config.yaml": "model_name: [unclosed\n",
        "model/model.js": "export class Model {}\n",
      }),
      { environment_name: "stage" },
    );
    expect(broken.status, JSON.stringify(broken.body)).toBe(200);
    expect(broken.body.deployment.status).toBe("BUILD_FAILED");
    expect(broken.body.deployment.status_message).toMatch(/config\.yaml/);

    const failed = async (model: string, id: string) =>
      eventually(async () => {
        const d = await deployment(model, id);
        return d.status === "DEPLOY_FAILED" ? d : null;
      }, 30_000);
    const loadFailure = await failed(throws.body.model.id, throws.body.deployment.id);
    expect(loadFailure.status_message).toMatch(/load failed/);
    expect(loadFailure.status_message).toContain("weights missing at /models/nowhere.bin");
    const exitFailure = await failed(exits.body.model.id, exits.body.deployment.id);
    expect(exitFailure.status_message).toMatch(/exited/);
    expect(exitFailure.status_message).toContain("cannot bind the GPU");
    expect((await deployment(broken.body.model.id, broken.body.deployment.id)).status).toBe("BUILD_FAILED");
    for (const m of [throws, exits]) {
      expect((await environment(m.body.model.id, "stage")).current_deployment).toBeNull();
    }
    // A package that does not build is never promoted, so its environment is not even created.
    expect((await api().get(`/v1/models/${broken.body.model.id}/environments/stage`)).status).toBe(404);

    // The load error is in the replica's logs, read through the management API.
    const logs = await api().get(
      `/v1/models/${throws.body.model.id}/deployments/${throws.body.deployment.id}/logs`,
    );
    expect(logs.status, JSON.stringify(logs.body)).toBe(200);
    expectReferenceShape("GetLogsResponseV1", logs.body);
    expect(logs.body.unreachable_planes).toEqual([]);
    const errorLine = logs.body.logs.find((l: { message: string }) => l.message.includes("weights missing"));
    expect(errorLine).toMatchObject({
      plane: "us-1",
      stream: expect.any(String),
      replica: expect.any(String),
    });

    // Nothing else was affected: the bystander answered every request, and `lifecycle` still serves.
    expect(bystanderTraffic.failures()).toEqual([]);
    expect(bystanderTraffic.results.length).toBeGreaterThan(10);
    expect((await stage()).status).toBe(200);
  }, 60_000);

  it("replica logs: deployment and environment routes, newest first, limit, and planes that cannot be reached", async () => {
    const created = await api().createModel("talkative", "hello-js", { environment_name: "prod-eu" });
    const id = created.body.model.id as string;
    talkative = id;
    const dep = created.body.deployment.id as string;
    await settled(id, "prod-eu", dep);

    const byDeployment = await api().get(`/v1/models/${id}/deployments/${dep}/logs`);
    expect(byDeployment.status, JSON.stringify(byDeployment.body)).toBe(200);
    expectReferenceShape("GetLogsResponseV1", byDeployment.body);
    const lines = byDeployment.body.logs as Array<{ timestamp: string; replica: string; plane: string }>;
    expect(lines.length).toBeGreaterThan(0);
    expect(new Set(lines.map((l) => l.plane))).toEqual(new Set(["eu-1"]));
    const ns = lines.map((l) => BigInt(l.timestamp));
    expect(ns).toEqual([...ns].sort((a, b) => (a > b ? -1 : a < b ? 1 : 0)));

    const byEnv = await api().get(`/v1/models/${id}/environments/prod-eu/logs?limit=2`);
    expect(byEnv.status, JSON.stringify(byEnv.body)).toBe(200);
    expect(byEnv.body.logs).toEqual(lines.slice(0, 2));
    expect((await api().get(`/v1/models/${id}/environments/nope/logs`)).status).toBe(404);
    expect((await api().get(`/v1/models/${id}/deployments/${dep}/logs?limit=0`)).status).toBe(400);
    expect((await api().as(null).get(`/v1/models/${id}/deployments/${dep}/logs`)).status).toBe(401);

    // The plane's operator listener takes only the control plane's own signature, for the path it was
    // made for, once. The control plane's key is in its store; a plane's key is in the plane's data dir.
    const eu = cluster.plane("eu-1");
    const replica = lines[0]!.replica;
    const logsPath = `/v1/replicas/${replica}/logs?limit=5`;
    const direct = (path: string, header: string) =>
      fetch(`http://${eu.host}:${eu.admin}${path}`, { headers: { "x-meridian-control": header } });
    const database = new SQLite(join(cluster.dir, "control", "meridian.db"), { readonly: true });
    const stored = database.prepare("select value from meta where key = ?").get(CONTROL_KEY_META) as {
      value: string;
    };
    database.close();
    const control = signingKeyFromJwk(stored.value);
    const signed = signControlAccess(control, { plane: "eu-1", method: "GET", target: logsPath }, Date.now());
    expect((await direct(logsPath, signed)).status).toBe(200);
    // The same header again, or on another path (the audit trail), is refused.
    expect((await direct(logsPath, signed)).status).toBe(401);
    expect((await direct("/v1/audit", signed)).status).toBe(401);
    const other = signControlAccess(control, { plane: "eu-1", method: "GET", target: logsPath }, Date.now());
    expect((await direct(`/v1/replicas/${replica}/logs?limit=6`, other)).status).toBe(401);
    // Signed by a plane's key (what model code could have stolen before), even under the control key's id.
    const planeKey = (await loadOrCreatePlaneKey(join(cluster.plane("uk-1").dataDir, "plane.key"))).key;
    const forged = signControlAccess(
      planeKey,
      { plane: "eu-1", method: "GET", target: logsPath },
      Date.now(),
    );
    expect((await direct(logsPath, forged)).status).toBe(401);
    expect((await direct(logsPath, forged.replace(planeKey.keyId, control.keyId))).status).toBe(401);
    // The old shared-secret form means nothing any more.
    expect((await direct(logsPath, `${Date.now()};${"0".repeat(64)}`)).status).toBe(401);

    await eu.stop();
    try {
      const down = await api().get(`/v1/models/${id}/deployments/${dep}/logs`);
      expect(down.status).toBe(200);
      expect(down.body).toEqual({ logs: [], unreachable_planes: ["eu-1"] });
    } finally {
      await eu.start();
    }
    await eventually(
      async () =>
        (await predict(cluster, "eu-1", `model-${id}-prod-eu.${DOMAIN}`, "/predict")).status === 200,
    );
  }, 45_000);

  it(
    `planes ride out a ${OUTAGE_SECONDS} s control plane outage and converge without restarting replicas`,
    async () => {
      const snapshot = async () => {
        const out = new Map<string, { started_at: string | null; restarts: number; pid: number | null }>();
        for (const p of cluster.planes.values()) {
          for (const r of (await planeReplicas(p)) ?? []) {
            if (r.state === "READY")
              out.set(`${p.name}/${r.id}`, {
                started_at: r.started_at,
                restarts: r.restarts,
                pid: replicaPid(p, r.id),
              });
          }
        }
        return out;
      };
      const before = await snapshot();
      expect(before.size).toBeGreaterThan(2);
      const traffic = new Traffic(stage, 250);
      const regional = new Traffic(
        () => predict(cluster, "eu-1", `model-${talkative}-prod-eu.${DOMAIN}`, "/predict"),
        250,
      );

      await cluster.stopControl();
      const stoppedAt = Date.now();
      await new Promise((r) => setTimeout(r, OUTAGE_SECONDS * 1000));
      const duringOutage = traffic.results.filter((r) => r.at > stoppedAt);
      expect(duringOutage.length).toBeGreaterThan(OUTAGE_SECONDS);
      expect(duringOutage.filter((r) => r.status !== 200)).toEqual([]);
      expect(regional.results.filter((r) => r.at > stoppedAt && r.status === 200).length).toBeGreaterThan(
        OUTAGE_SECONDS,
      );
      const health = await fetch(
        `http://${cluster.plane("eu-1").host}:${cluster.plane("eu-1").admin}/healthz`,
      );
      expect(((await health.json()) as { control_plane: string }).control_plane).toBe("disconnected");

      const restartedAt = new Date().toISOString();
      await cluster.startControl();
      // Every plane reports to the returned control plane and every deployment is still ACTIVE.
      await eventually(async () => {
        const planes = (await api().get("/v1/admin/planes")).body.planes as Array<{
          last_seen_at: string | null;
        }>;
        return planes.every((p) => p.last_seen_at !== null && p.last_seen_at > restartedAt);
      }, 20_000);
      // …and has applied the control plane's latest revision.
      await eventually(async () => {
        const revision = (await api().get("/healthz")).body.revision as number;
        const planes = (await api().get("/v1/admin/planes")).body.planes as Array<{
          applied_revision: number;
        }>;
        return planes.every((p) => p.applied_revision === revision);
      }, 20_000);
      await settled(modelId, "stage", (await environment(modelId, "stage")).current_deployment.id);
      await new Promise((r) => setTimeout(r, 3_000));
      await traffic.stop();
      await regional.stop();
      expect(traffic.failures()).toEqual([]);
      expect(regional.failures()).toEqual([]);
      expect(await snapshot()).toEqual(before);
    },
    OUTAGE_SECONDS * 1000 + 60_000,
  );
});
