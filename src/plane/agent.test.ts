// The agent's side of the sandbox: every report says how the plane runs replicas, and the spec it gives
// the driver carries the replica's egress policy and takes its address from `{listen}`.

import { mkdtemp, rm } from "node:fs/promises";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pino from "pino";
import { afterEach, describe, expect, it } from "vitest";
import type { DesiredReplica, PlaneReport } from "../core/snapshot.ts";
import { PlaneAgent, replicaSpec } from "./agent.ts";
import { ArtifactCache } from "./artifacts.ts";
import { parseSandboxUid } from "./command.ts";
import { ProcessDriver } from "./process-driver.ts";
import { prepareSandbox } from "./sandbox.ts";

const replica: DesiredReplica = {
  id: "r1",
  deployment_id: "dep1",
  model_id: "abcd1234",
  environment: "prod-eu",
  artifact: { key: "k", sha256: "0".repeat(64), size: 1 },
  egress: "deny",
};

describe("replicaSpec", () => {
  it("runs the runtime in its package directory on {listen}, with its egress and identity", () => {
    const spec = replicaSpec(replica, "/data/artifacts/packages/x");
    expect(spec.egress).toBe("deny");
    expect(spec.package_dir).toBe("/data/artifacts/packages/x");
    expect(spec.command.argv.slice(2, 6)).toEqual(["serve-model", ".", "--listen", "{listen}"]);
    expect(spec.command.argv.join(" ")).not.toMatch(/\{host\}|\{port\}/);
    expect(spec.command.env).toEqual({
      MERIDIAN_MODEL_ID: "abcd1234",
      MERIDIAN_DEPLOYMENT_ID: "dep1",
      MERIDIAN_ENVIRONMENT: "prod-eu",
    });
  });

  it("treats a replica from an older snapshot (no egress) as allow", () => {
    const { egress: _, ...old } = replica;
    expect(replicaSpec(old as DesiredReplica, "/p").egress).toBe("allow");
  });
});

describe("--sandbox-uid", () => {
  it.each([
    ["65534", { uid: 65534, gid: 65534 }],
    ["1234:5678", { uid: 1234, gid: 5678 }],
  ])("parses %s", (text, ids) => {
    expect(parseSandboxUid(text)).toEqual(ids);
  });

  it.each(["0", "0:0", "1000:0", "nobody", "-1", "1:2:3", "", "4294967295"])("refuses %s", (text) => {
    expect(() => parseSandboxUid(text)).toThrow(/--sandbox-uid is UID or UID:GID, unprivileged/);
  });
});

describe("reports", () => {
  const cleanups: Array<() => Promise<void>> = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0)) await c();
  });

  it.each(["none", "unavailable"] as const)(
    "carry the plane's sandbox (%s) in every report",
    async (mode) => {
      const dataDir = await mkdtemp(join(tmpdir(), "meridian-agent-"));
      cleanups.push(() => rm(dataDir, { recursive: true, force: true }));
      const bodies: PlaneReport[] = [];
      const control = http.createServer((req, res) => {
        let text = "";
        req.setEncoding("utf8").on("data", (c: string) => {
          text += c;
        });
        req.on("end", () => {
          bodies.push(JSON.parse(text) as PlaneReport);
          res.end("{}");
        });
      });
      await new Promise<void>((r) => control.listen(0, "127.0.0.1", r));
      cleanups.push(() => new Promise((r) => control.close(() => r())));
      const sandbox = await prepareSandbox(mode === "none" ? "none" : "bwrap", {
        dataDir,
        planeEnv: {},
        bwrapPath: "/nonexistent/bwrap",
      });
      const driver = new ProcessDriver({ dataDir, sandbox });
      await driver.start();
      cleanups.push(() => driver.stop());
      const controlUrl = `http://127.0.0.1:${(control.address() as AddressInfo).port}`;
      const agent = new PlaneAgent({
        plane: "eu-1",
        controlUrl,
        token: "t",
        driver,
        artifacts: new ArtifactCache({ dir: join(dataDir, "artifacts"), controlUrl, planeToken: "t" }),
        logger: pino({ level: "silent" }),
        counts: { take: () => [], restore: () => {} },
        sandbox: sandbox.report,
      });
      expect(await agent.report()).toBe(true);
      expect(await agent.report()).toBe(true);
      expect(bodies).toHaveLength(2);
      for (const body of bodies) expect(body.sandbox).toEqual(sandbox.report);
      expect(bodies[0]!.sandbox!.mode).toBe(mode);
      expect(bodies[0]!.sandbox!.detail).toMatch(
        mode === "none" ? /without a sandbox/ : /bwrap does not exist/,
      );
    },
  );
});
