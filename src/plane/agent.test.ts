// The agent's side of the sandbox: every report says how the plane runs replicas, and the spec it gives
// the driver carries the replica's egress policy and takes its address from `{listen}`.

import { mkdir, mkdtemp, rm, symlink, writeFile } from "node:fs/promises";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pino from "pino";
import { afterEach, describe, expect, it } from "vitest";
import type { DesiredReplica, PlaneReport } from "../core/snapshot.ts";
import { PlaneAgent, packageRuntime, replicaSpec } from "./agent.ts";
import { ArtifactCache } from "./artifacts.ts";
import { parseSandboxUid } from "./command.ts";
import { invalidSpecReason, renderCommand } from "./driver.ts";
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

describe("packageRuntime and the spec of a truss package", () => {
  let dir: string;
  afterEach(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  async function pkg(files: Record<string, string>): Promise<string> {
    dir = await mkdtemp(join(tmpdir(), "meridian-runtime-"));
    for (const [path, content] of Object.entries(files)) {
      await mkdir(join(dir, path, ".."), { recursive: true });
      await writeFile(join(dir, path), content);
    }
    return dir;
  }

  it("runs a model.py package on the Python host with {python}, its requirement set and secret names", async () => {
    const root = await pkg({
      "config.yaml":
        "python_version: py311\nrequirements:\n  - Numpy==1.26.4\n  - requests\nsecrets:\n  hf_token: null\n  api_key: placeholder\n",
      "model/model.py": "class Model: pass\n",
    });
    const runtime = await packageRuntime(root);
    expect(runtime).toEqual({
      ok: true,
      runtime: {
        kind: "python",
        python: { python_version: "py311", requirements: ["numpy==1.26.4", "requests"] },
        secrets: ["api_key", "hf_token"],
      },
    });
    if (!runtime.ok) throw new Error("unreachable");
    const spec = replicaSpec(replica, root, runtime.runtime);
    expect(invalidSpecReason(spec)).toBeNull();
    expect(spec.command.argv[0]).toBe("{python}");
    expect(spec.command.argv.slice(1, 3)).toEqual(["-B", "-s"]);
    expect(spec.command.argv[3]).toMatch(/src\/runtime\/python\/truss_host\.py$/);
    expect(spec.command.argv.slice(4)).toEqual([
      ".",
      "--listen",
      "{listen}",
      "--model-id",
      "abcd1234",
      "--deployment-id",
      "dep1",
      "--environment",
      "prod-eu",
      "--secrets-dir",
      "{secrets}",
    ]);
    expect(spec.command.env).toMatchObject({ MERIDIAN_ENVIRONMENT: "prod-eu", PYTHONDONTWRITEBYTECODE: "1" });
    expect(spec.python).toEqual({ python_version: "py311", requirements: ["numpy==1.26.4", "requests"] });
    expect(spec.secrets).toEqual(["api_key", "hf_token"]);
    // The probes and exit codes are the JavaScript runtime's: the host keeps its contract.
    expect(spec.readiness_path).toBe("/v1/models/model");
    expect(spec.fatal_exit_codes?.[3]).toBe("model load failed");
    const rendered = renderCommand(
      spec.command,
      { path: "/home/replica/.meridian.sock" },
      {
        python: "/opt/meridian/venv/bin/python",
        secrets: "/secrets",
      },
    );
    expect(rendered.argv[0]).toBe("/opt/meridian/venv/bin/python");
    expect(rendered.argv).toContain("unix:/home/replica/.meridian.sock");
    expect(rendered.argv.at(-1)).toBe("/secrets");
  });

  it("reads requirements_file inside the package, and refuses one that points outside it", async () => {
    const root = await pkg({
      "config.yaml": "requirements_file: reqs.txt\n",
      "reqs.txt": "# pinned\nSix==1.16.0\n",
      "model/model.py": "class Model: pass\n",
    });
    expect(await packageRuntime(root)).toMatchObject({
      ok: true,
      runtime: { kind: "python", python: { python_version: null, requirements: ["six==1.16.0"] } },
    });
    await rm(join(root, "reqs.txt"));
    await symlink("/etc/passwd", join(root, "reqs.txt"));
    expect(await packageRuntime(root)).toEqual({
      ok: false,
      message: "requirements_file: reqs.txt points outside the package.",
    });
  });

  it("leaves model.js packages, custom servers and broken configs to serve-model, with their secret names", async () => {
    const js = await pkg({
      "config.yaml": "secrets:\n  token: null\n",
      "model/model.js": "export class Model {}\n",
    });
    const runtime = await packageRuntime(js);
    expect(runtime).toEqual({ ok: true, runtime: { kind: "meridian", secrets: ["token"] } });
    if (!runtime.ok) throw new Error("unreachable");
    const spec = replicaSpec(replica, js, runtime.runtime);
    expect(spec.command.argv.slice(2, 4)).toEqual(["serve-model", "."]);
    expect(spec.secrets).toEqual(["token"]);
    expect(spec.python).toBeUndefined();
    await rm(js, { recursive: true });
    // serve-model refuses these with the reason (exit 4); the agent quotes nothing of the file.
    for (const config of ["model_name: [unclosed\n", "runtime: 3\n"]) {
      const broken = await pkg({ "config.yaml": config, "model/model.py": "class Model: pass\n" });
      expect(await packageRuntime(broken)).toEqual({ ok: true, runtime: { kind: "meridian", secrets: [] } });
      await rm(broken, { recursive: true });
    }
    const linked = await pkg({ "model/model.py": "class Model: pass\n" });
    await symlink("/etc/hostname", join(linked, "config.yaml"));
    expect(await packageRuntime(linked)).toEqual({ ok: true, runtime: { kind: "meridian", secrets: [] } });
  });

  it("a spec that runs {python} must say which Python", () => {
    const spec = replicaSpec(replica, "/p", {
      kind: "python",
      python: { python_version: null, requirements: [] },
      secrets: [],
    });
    const { python: _, ...without } = spec;
    expect(invalidSpecReason(without)).toBe("the command runs {python} but the spec has no python");
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
