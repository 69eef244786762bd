// Replicas in the sandbox, through real `meridian control` and `meridian plane` processes (DESIGN.md §2.8;
// issue 10 items 1, 3 and 7): a hostile model package pushed as a user would push it reaches nothing of
// the plane's; a plane whose bwrap fails its self-test refuses replicas and says why in the deployment's
// status; `--sandbox none` runs them and says so; SIGKILL of a plane leaves no replica process behind.

import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { HostileAnswer, HostileTargets } from "../../src/plane/testdata/hostile.ts";
import { hostileModelPackage, hostileServerPackage } from "../../src/plane/testdata/hostile.ts";
import { type Cluster, DOMAIN, eventually, startCluster } from "../support/cluster.ts";
import { createModelFrom, packFiles, planeReplicas, predict, processAlive } from "../support/planes.ts";

const CANARY = `canary-${Math.random().toString(36).slice(2)}`;

/** Host pids of `pid` and every process under it (bwrap and what runs in its sandbox, or a runtime and its server). */
function descendants(pid: number): number[] {
  const parents = new Map<number, number>();
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, "utf8");
      parents.set(Number(name), Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]));
    } catch {}
  }
  const found = [pid];
  for (let i = 0; i < found.length; i++) {
    for (const [child, parent] of parents) if (parent === found[i]) found.push(child);
  }
  return found;
}

describe("replicas in the sandbox, through real planes", () => {
  let cluster: Cluster;

  beforeAll(async () => {
    cluster = await startCluster({
      planes: [
        // The default: --sandbox bwrap. A secret in its environment that no replica may see.
        { name: "us-1", region: "us", global: true, env: { PLANE_SECRET: CANARY } },
        // bwrap missing: the plane must refuse replicas, not run them unsandboxed.
        { name: "eu-1", region: "eu", args: ["--sandbox-bwrap", "/nonexistent/bwrap"] },
        { name: "uk-1", region: "uk", args: ["--sandbox", "none"] },
      ],
    });
  }, 90_000);
  afterAll(async () => {
    await cluster?.stop();
  }, 60_000);

  async function active(modelId: string, deploymentId: string) {
    return eventually(async () => {
      const d = (await cluster.api.get(`/v1/models/${modelId}/deployments/${deploymentId}`)).body;
      if (d.status === "DEPLOY_FAILED") throw new Error(`deployment failed: ${d.status_message}`);
      return d.status === "ACTIVE" ? d : null;
    }, 45_000);
  }

  async function deploy(name: string, files: Record<string, string>, environment?: string) {
    const created = await createModelFrom(
      cluster,
      name,
      await packFiles(files),
      environment ? { environment_name: environment } : {},
    );
    expect(created.status, JSON.stringify(created.body)).toBe(200);
    return { modelId: created.body.model.id as string, deploymentId: created.body.deployment.id as string };
  }

  it("logs each plane's sandbox at start: bwrap, the self-test's failure with what to do, none as a warning", async () => {
    const us = cluster.plane("us-1").process!;
    expect(await us.waitForLog("replicas run in a bubblewrap sandbox")).toMatchObject({
      level: 30,
      sandbox: { mode: "bwrap", detail: null },
    });
    const eu = await cluster
      .plane("eu-1")
      .process!.waitForLog("the sandbox failed its self-test; no replica will start");
    expect(eu).toMatchObject({ level: 50, sandbox: { mode: "unavailable" } });
    expect(String((eu["sandbox"] as { detail: string }).detail)).toMatch(
      /\/nonexistent\/bwrap does not exist\. Install bubblewrap .* or start the plane with --sandbox none/,
    );
    const uk = await cluster.plane("uk-1").process!.waitForLog("replicas run without a sandbox");
    expect(uk).toMatchObject({ level: 40, sandbox: { mode: "none" } });
  });

  it("a hostile model (JavaScript host and custom server) reaches nothing of the plane's, and still answers", async () => {
    const us = cluster.plane("us-1");
    const neighbour = await deploy("neighbour", {
      "config.yaml": "model_name: neighbour\n",
      "model/model.js":
        'import fs from "node:fs"; import os from "node:os";\nexport class Model { load() { fs.writeFileSync(os.homedir() + "/secret.txt", "neighbour data"); } predict() { return "ok"; } }\n',
    });
    await active(neighbour.modelId, neighbour.deploymentId);
    const neighbourReplica = ((await planeReplicas(us)) ?? []).find(
      (r) => r.deployment_id === neighbour.deploymentId,
    )!;
    const neighbourDir = join(us.dataDir, "sandbox", "replicas", neighbourReplica.id);
    const control = new URL(cluster.controlUrl);
    const targets: HostileTargets = {
      files: [
        join(us.dataDir, "snapshot.json"),
        join(cluster.dir, "planes", "us-1.token"),
        join(cluster.dir, "planes", "eu-1.token"),
        join(cluster.dir, "control", "admin.key"),
        join(neighbourDir, "secret.txt"),
      ],
      dirs: [us.dataDir, join(cluster.dir, "planes"), join(cluster.dir, "control"), neighbourDir],
      tcp: { host: control.hostname, port: Number(control.port) },
      planePid: us.process!.child.pid!,
      canary: CANARY,
    };
    // The files are there to be taken: the plane's environment holds the canary, and so does its snapshot.
    expect(readFileSync(`/proc/${us.process!.child.pid}/environ`, "utf8")).toContain(CANARY);
    expect(readFileSync(join(neighbourDir, "secret.txt"), "utf8")).toBe("neighbour data");

    for (const [name, files] of [
      ["hostile-js", hostileModelPackage(targets)],
      ["hostile-server", hostileServerPackage(targets)],
    ] as const) {
      const { modelId, deploymentId } = await deploy(name, files);
      await active(modelId, deploymentId);
      const r = await eventually(async () => {
        const path = `/deployment/${deploymentId}/predict`;
        const p = await predict(cluster, "us-1", `model-${modelId}.${DOMAIN}`, path);
        return p.status === 200 ? p : null;
      });
      expect(r.headers["x-meridian-plane"]).toBe("us-1");
      const answer = r.body as HostileAnswer;
      expect(answer.answered).toBe(true);
      expect(answer.homeWritable).toBe(true);
      // Egress is allowed here (the default policy): the TCP connection is the one attempt that may succeed.
      const leaks = answer.attempts.filter((a) => a.reached && a.what !== "tcp");
      expect(leaks, `${name}: ${JSON.stringify(answer.attempts, null, 1)}`).toEqual([]);
      expect(answer.attempts.length).toBeGreaterThanOrEqual(targets.files.length + targets.dirs.length + 5);
      expect(JSON.stringify(answer.env)).not.toContain(CANARY);
      if (process.getuid?.() === 0) expect(answer.uid).toBe(65534);
    }
  }, 120_000);

  it("a plane whose bwrap fails its self-test refuses replicas, with the reason in the deployment's status", async () => {
    await cluster.api.patch("/v1/environment_groups/prod-eu", { region_restriction: { region: "eu" } });
    const { modelId, deploymentId } = await deploy(
      "refused",
      {
        "config.yaml": "model_name: refused\n",
        "model/model.js": "export class Model { predict() { return 1; } }\n",
      },
      "prod-eu",
    );
    const failed = await eventually(async () => {
      const d = (await cluster.api.get(`/v1/models/${modelId}/deployments/${deploymentId}`)).body;
      return d.status === "DEPLOY_FAILED" ? d : null;
    }, 30_000);
    expect(failed.status_message).toMatch(
      /The plane refuses to start replicas: bubblewrap cannot run replicas: \/nonexistent\/bwrap does not exist/,
    );
    expect(failed.status_message).toMatch(/--sandbox none/);
    const replicas = (await planeReplicas(cluster.plane("eu-1"))) ?? [];
    expect(replicas.find((r) => r.deployment_id === deploymentId)).toMatchObject({
      state: "FAILED",
      restarts: 0,
    });
  }, 60_000);

  it("--sandbox none runs replicas (the operator's explicit choice)", async () => {
    await cluster.api.patch("/v1/environment_groups/prod-uk", { region_restriction: { region: "uk" } });
    const { modelId, deploymentId } = await deploy(
      "unsandboxed",
      {
        "config.yaml": "model_name: unsandboxed\n",
        "model/model.js": "export class Model { predict(x) { return x; } }\n",
      },
      "prod-uk",
    );
    await active(modelId, deploymentId);
    const r = await eventually(async () => {
      const p = await predict(cluster, "uk-1", `model-${modelId}-prod-uk.${DOMAIN}`, "/predict", { n: 7 });
      return p.status === 200 ? p : null;
    });
    expect(r.body).toEqual({ n: 7 });
    expect(r.headers["x-meridian-plane"]).toBe("uk-1");
  }, 60_000);

  it.each([
    ["us-1", "us", "bwrap: --die-with-parent"],
    ["uk-1", "uk", "none: the lifeline"],
  ])(
    "SIGKILL of %s (%s, %s) leaves no replica process behind within 5 s",
    async (name, region) => {
      const plane = cluster.plane(name);
      // A custom server: the replica's process has one of its own, which must go too.
      await cluster.api.patch(`/v1/environment_groups/prod-${region}`, { region_restriction: { region } });
      const { modelId, deploymentId } = await deploy(
        `grandchild-${region}`,
        {
          "config.yaml": [
            "model_name: grandchild",
            "docker_server:",
            "  start_command: /usr/bin/python3 -m http.server $PORT --bind 127.0.0.1",
            "  server_port: 8000",
            "  predict_endpoint: /",
            "  readiness_endpoint: /",
            "  liveness_endpoint: /",
            "",
          ].join("\n"),
        },
        `prod-${region}`,
      );
      await active(modelId, deploymentId);
      const runDir = join(plane.dataDir, "run");
      const pids = readdirSync(runDir).flatMap((f) => {
        const { pid } = JSON.parse(readFileSync(join(runDir, f), "utf8")) as { pid: number };
        return descendants(pid);
      });
      // Every replica's process and whatever it started: at least a runtime and (uk-1) a custom server.
      expect(pids.length).toBeGreaterThanOrEqual(2);
      for (const pid of pids) expect(processAlive(pid), `pid ${pid}`).toBe(true);
      await plane.stop("SIGKILL");
      const deadline = Date.now() + 5_000;
      let left = pids.filter(processAlive);
      while (left.length > 0 && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 50));
        left = pids.filter(processAlive);
      }
      expect(left, `still running ${5_000} ms after the plane was killed`).toEqual([]);
    },
    90_000,
  );
});
