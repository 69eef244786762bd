// The process driver providing what a truss package's spec declares, in a real bwrap sandbox with the real
// Python host: the interpreter for python_version (Debian's /usr/bin/python3, found by discovery), and the
// replica's secrets fetched at every start with fetchReplicaSecrets from an HTTP server that answers as the
// control plane's secrets route does (its own behaviour is tested in test/control/secrets.test.ts). Covers
// the secrets' files and modes, a control plane that is away at the first start (retried) and at a restart
// (the last start's secrets kept), a missing secret and an unfit python_version (FAILED, in the logs), and
// no value ever in a log line. Then a package on an interpreter the operator names (pyenv's 3.12 under the
// closed /root: its installation bound read-only, bwrap run as root for it) and one under --sandbox none.

import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { chmod, cp, mkdir, mkdtemp, readdir, rm, stat, writeFile } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { request } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { discoverPythons } from "../lib/pythons.ts";
import { packageRuntime, replicaSpec } from "./agent.ts";
import type { ReplicaSpec, ReplicaStatus } from "./driver.ts";
import { ProcessDriver } from "./process-driver.ts";
import { PlanePython, VirtualenvCache } from "./python-env.ts";
import {
  bwrapArguments,
  prepareSandbox,
  type ReplicaSandbox,
  type SandboxLayout,
  SECRETS_DIR,
  Unsandboxed,
  VENV_DIR,
} from "./sandbox.ts";
import { fetchReplicaSecrets } from "./secrets.ts";

const EXAMPLES = resolve(import.meta.dirname, "../../examples");
const VALUE = "s3cr3t-value-7c1e";

describe("bwrapArguments for a truss replica", () => {
  const layout: SandboxLayout = {
    uid: 65534,
    gid: 65534,
    binds: [{ source: "/usr", dest: "/usr" }],
    symlinks: [],
    passwd: "/d/sandbox/etc/passwd",
    group: "/d/sandbox/etc/group",
    compileCache: "/d/sandbox/compile-cache",
  };
  const mounts = { packageDir: "/d/pkg", privateDir: "/d/sandbox/replicas/r", egress: "allow" as const };

  function roBinds(args: string[]): string[][] {
    return args.flatMap((a, i) => (a === "--ro-bind" ? [[args[i + 1]!, args[i + 2]!]] : []));
  }

  it("binds the secrets read-only at /secrets, the virtualenv at its fixed path, an interpreter at its own, all before the final remount", () => {
    const args = bwrapArguments(layout, {
      ...mounts,
      secretsDir: "/tmp/p/sandbox/secrets/r",
      venv: "/tmp/p/venvs/abc",
      readOnly: ["/opt/python3.12"],
    });
    const ro = roBinds(args);
    expect(ro).toContainEqual(["/tmp/p/sandbox/secrets/r", SECRETS_DIR]);
    expect(ro).toContainEqual(["/tmp/p/venvs/abc", VENV_DIR]);
    expect(ro).toContainEqual(["/opt/python3.12", "/opt/python3.12"]);
    // Never writable, and nothing under the sandbox's /tmp (a symlink to the private directory there).
    expect(args.filter((_, i) => args[i - 1] === "--bind")).toEqual([mounts.privateDir]);
    expect(ro.every(([, dest]) => !dest!.startsWith("/tmp/"))).toBe(true);
    expect(args.at(-2)).toBe("--remount-ro");
    // Without them, none of it.
    const plain = roBinds(bwrapArguments(layout, mounts)).map(([, dest]) => dest);
    expect(plain).not.toContain(SECRETS_DIR);
    expect(plain).not.toContain(VENV_DIR);
  });
});

describe("process driver: truss packages on the Python host, with their secrets", () => {
  let root: string;
  let sandbox: ReplicaSandbox;
  let server: Server;
  let url: string;
  /** What the stand-in control plane answers; `down` closes connections without an answer. */
  let answer: { down: boolean; status: number; body: unknown } = { down: false, status: 200, body: {} };
  let driver: ProcessDriver;
  let pkg: string;

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), "meridian-pydriver-"));
    await chmod(root, 0o711);
    server = createServer((req, res) => {
      if (answer.down) return req.socket.destroy();
      res.writeHead(answer.status, { "content-type": "application/json" });
      res.end(JSON.stringify(answer.body));
    });
    await new Promise<void>((ok) => server.listen(0, "127.0.0.1", ok));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const dataDir = join(root, "plane");
    sandbox = await prepareSandbox("bwrap", { dataDir, planeEnv: { LANG: "C.UTF-8" } });
    if (sandbox.report.mode !== "bwrap") throw new Error(`no sandbox: ${sandbox.report.detail}`);
    const pythons = await discoverPythons({ searchDirs: ["/usr/bin"] });
    driver = new ProcessDriver({
      dataDir,
      sandbox,
      readinessIntervalMs: 50,
      backoffBaseMs: 200,
      backoffMaxMs: 400,
      stopGraceMs: 2_000,
      python: new PlanePython({
        interpreters: async () => pythons.interpreters,
        venvs: new VirtualenvCache({ root: join(dataDir, "venvs"), env: { PATH: process.env["PATH"] } }),
      }),
      secrets: (replicaId, dir) =>
        fetchReplicaSecrets({
          controlUrl: url,
          planeToken: "t",
          plane: "eu-1",
          replicaId,
          dir,
          timeoutMs: 2_000,
        }),
    });
    await driver.start();
    // examples/hello-py, with a secret its model reads at load().
    pkg = join(root, "pkg");
    await cp(join(EXAMPLES, "hello-py"), pkg, { recursive: true });
    await chmod(pkg, 0o755);
  }, 120_000);

  afterAll(async () => {
    await driver?.stop();
    await new Promise((ok) => server?.close(ok));
    await rm(root, { recursive: true, force: true });
  }, 60_000);

  async function specFor(id: string, o: { secrets?: string[]; python_version?: string | null } = {}) {
    const runtime = await packageRuntime(pkg);
    if (!runtime.ok || runtime.runtime.kind !== "python") throw new Error("hello-py is a truss package");
    const spec: ReplicaSpec = replicaSpec(
      {
        id,
        deployment_id: `d-${id}`,
        model_id: "abcd1234",
        environment: "prod-eu",
        artifact: { key: "k", sha256: "0".repeat(64), size: 1 },
        egress: "allow",
      },
      pkg,
      { ...runtime.runtime, secrets: o.secrets ?? [] },
    );
    if (o.python_version !== undefined) spec.python = { ...spec.python!, python_version: o.python_version };
    return spec;
  }

  async function until(id: string, ok: (r: ReplicaStatus) => boolean, timeoutMs = 30_000) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const r = (await driver.list()).find((x) => x.id === id);
      if (r && ok(r)) return r;
      if (Date.now() > deadline) throw new Error(`replica ${id}: ${JSON.stringify(r)}`);
      await new Promise((x) => setTimeout(x, 50));
    }
  }

  async function predictOn(endpoint: string) {
    const res = await request(`http://${endpoint}/v1/models/model:predict`, { method: "POST", body: "{}" });
    return { status: res.statusCode, body: (await res.body.json()) as Record<string, unknown> };
  }

  it("serves hello-py on Debian's Python, its secret a 0400 file of the replica's uid in a 0500 /secrets", async () => {
    answer = { down: false, status: 200, body: { secrets: { hf_token: VALUE } } };
    await driver.ensure(await specFor("py-ok", { secrets: ["hf_token"] }));
    const ready = await until("py-ok", (r) => r.state === "READY");
    const served = await predictOn(ready.endpoint!);
    expect(served.status).toBe(200);
    expect(served.body).toMatchObject({ message: "Hello from prod-eu", environment: "prod-eu" });
    const dir = join(root, "plane", "sandbox", "secrets", "py-ok");
    expect(await readdir(dir)).toEqual(["hf_token"]);
    const file = await stat(join(dir, "hf_token"));
    expect([file.mode & 0o777, file.uid]).toEqual([0o400, 65534]);
    expect((await stat(dir)).mode & 0o777).toBe(0o500);
    const lines = (await driver.logs("py-ok")).map((l) => `${l.stream} ${l.line}`);
    expect(lines).toContain("driver secrets in place: hf_token");
    expect(lines.some((l) => l.startsWith("build Python 3.11"))).toBe(true);
    expect(lines.join("\n")).not.toContain(VALUE);
    await driver.remove("py-ok");
    // Gone with the replica.
    await expect(stat(dir)).rejects.toThrow(/ENOENT/);
  }, 60_000);

  it("retries a control plane that is away at the first start; a restart while it is away keeps the last secrets", async () => {
    answer = { down: true, status: 200, body: {} };
    await driver.ensure(await specFor("py-away", { secrets: ["hf_token"] }));
    const waiting = await until("py-away", (r) => r.state === "UNHEALTHY");
    expect(waiting.message).toMatch(/fetching the replica's secrets failed: .*; retrying in \d+ ms/);
    answer = { down: false, status: 200, body: { secrets: { hf_token: VALUE } } };
    const ready = await until("py-away", (r) => r.state === "READY");
    // The control plane goes away again, and the model's process dies: it restarts on what it had.
    answer = { down: true, status: 200, body: {} };
    const pid = (await driver.logs("py-away"))
      .map((l) => /^started pid (\d+) in a sandbox/.exec(l.line)?.[1])
      .filter(Boolean)
      .at(-1);
    expect(pid).toBeDefined();
    process.kill(-Number(pid), "SIGKILL");
    await until("py-away", (r) => r.restarts >= 1 && r.state === "READY");
    expect(ready.restarts).toBe(0);
    const lines = (await driver.logs("py-away")).map((l) => l.line);
    expect(lines.some((l) => l.endsWith("starting with the secrets of the previous start"))).toBe(true);
    expect(lines.join("\n")).not.toContain(VALUE);
    await driver.remove("py-away");
  }, 60_000);

  it("fails a replica whose secret its team lacks, and one whose python_version no interpreter has", async () => {
    const message =
      "Secret 'hf_token' not found: config.yaml names it under 'secrets', but team 't' has no secret of that name.";
    answer = { down: false, status: 409, body: { error: message, error_code: "secret_missing" } };
    await driver.ensure(await specFor("py-missing", { secrets: ["hf_token"] }));
    const missing = await until("py-missing", (r) => r.state === "FAILED");
    expect(missing.message).toBe(message);
    expect((await driver.logs("py-missing")).map((l) => l.line)).toContain(message);

    await driver.ensure(await specFor("py-unfit", { python_version: "py39" }));
    const unfit = await until("py-unfit", (r) => r.state === "FAILED");
    expect(unfit.message).toMatch(
      /^No interpreter on this plane fits: the package needs Python 3\.9 \(py39\); present: 3\.11\.\d+ \(\/usr\/bin\/python3\)\.$/,
    );
    // Neither ever started a process.
    for (const id of ["py-missing", "py-unfit"]) {
      const lines = (await driver.logs(id)).map((l) => l.line);
      expect(
        lines.some((l) => l.startsWith("started pid")),
        id,
      ).toBe(false);
      await driver.remove(id);
    }
  }, 60_000);
});

/** A truss model that says which Python runs it and proves it read its secret (its digest, not its value). */
const WHICH_PYTHON = {
  "config.yaml": "python_version: PYVER\nsecrets:\n  tok: null\n",
  "model/model.py": `import hashlib, sys

class Model:
    def __init__(self, secrets, **kwargs):
        self._secrets = secrets

    def load(self):
        self._digest = hashlib.sha256(self._secrets["tok"].encode()).hexdigest()

    def predict(self, model_input):
        return {"python": list(sys.version_info[:3]), "prefix": sys.base_prefix, "tok_sha256": self._digest}
`,
};

/** pyenv's 3.12 under /root (mode 0700 above it): an interpreter the operator names with --python. */
const PYENV_312 = "/root/.pyenv/versions/3.12.1/bin/python3";

describe.each([
  { name: "bwrap, an interpreter under a closed /root (--python)", mode: "bwrap" as const, pyver: "py312" },
  { name: "--sandbox none, Debian's interpreter", mode: "none" as const, pyver: "py311" },
])("process driver, $name", ({ mode, pyver }) => {
  const available = mode === "none" || existsSync(PYENV_312);
  let root: string;
  let server: Server;
  let driver: ProcessDriver;
  let pkg: string;

  beforeAll(async () => {
    if (!available) return;
    root = await mkdtemp(join(tmpdir(), "meridian-pydriver2-"));
    await chmod(root, 0o711);
    server = createServer((_req, res) => {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ secrets: { tok: VALUE } }));
    });
    await new Promise<void>((ok) => server.listen(0, "127.0.0.1", ok));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const dataDir = join(root, "plane");
    const pythons = await discoverPythons(
      mode === "bwrap" ? { configured: [PYENV_312], searchDirs: [] } : { searchDirs: ["/usr/bin"] },
    );
    const sandbox =
      mode === "bwrap"
        ? await prepareSandbox("bwrap", {
            dataDir,
            planeEnv: {},
            readOnly: pythons.interpreters.map((i) => i.prefix),
          })
        : new Unsandboxed({ dataDir, planeEnv: { PATH: process.env["PATH"] } });
    if (mode === "bwrap") {
      // The closed /root above the interpreter makes bwrap run as root, and the report says why.
      expect(sandbox.report.mode).toBe("bwrap");
      expect(sandbox.report.detail).toContain("/root (mode 0700, owner 0) does not let uid 65534 through");
    }
    driver = new ProcessDriver({
      dataDir,
      sandbox,
      readinessIntervalMs: 50,
      stopGraceMs: 2_000,
      python: new PlanePython({
        interpreters: async () => pythons.interpreters,
        venvs: new VirtualenvCache({ root: join(dataDir, "venvs"), env: { PATH: process.env["PATH"] } }),
      }),
      secrets: (replicaId, dir) =>
        fetchReplicaSecrets({ controlUrl: url, planeToken: "t", plane: "p", replicaId, dir }),
    });
    await driver.start();
    pkg = join(root, "pkg");
    for (const [path, content] of Object.entries(WHICH_PYTHON)) {
      await mkdir(join(pkg, path, ".."), { recursive: true });
      await writeFile(join(pkg, path), content.replace("PYVER", pyver));
    }
    await chmod(pkg, 0o755);
  }, 120_000);

  afterAll(async () => {
    if (!available) return;
    await driver?.stop();
    await new Promise((ok) => server?.close(ok));
    await rm(root, { recursive: true, force: true });
  }, 60_000);

  it.skipIf(!available)(
    "runs the package on the interpreter for its python_version, with its secret",
    async () => {
      const runtime = await packageRuntime(pkg);
      if (!runtime.ok) throw new Error(runtime.message);
      const spec = replicaSpec(
        {
          id: "which",
          deployment_id: "d-which",
          model_id: "abcd1234",
          environment: null,
          artifact: { key: "k", sha256: "0".repeat(64), size: 1 },
          egress: "allow",
        },
        pkg,
        runtime.runtime,
      );
      await driver.ensure(spec);
      const deadline = Date.now() + 30_000;
      let ready: ReplicaStatus | undefined;
      while (Date.now() < deadline) {
        ready = (await driver.list()).find((r) => r.id === "which");
        if (ready?.state === "READY" || ready?.state === "FAILED") break;
        await new Promise((x) => setTimeout(x, 50));
      }
      expect(ready?.state, JSON.stringify(ready)).toBe("READY");
      const res = await request(`http://${ready!.endpoint}/v1/models/model:predict`, {
        method: "POST",
        body: "{}",
      });
      const body = (await res.body.json()) as { python: number[]; prefix: string; tok_sha256: string };
      expect(body.python.slice(0, 2)).toEqual(pyver === "py312" ? [3, 12] : [3, 11]);
      expect(body.prefix).toBe(pyver === "py312" ? "/root/.pyenv/versions/3.12.1" : "/usr");
      expect(body.tok_sha256).toBe(createHash("sha256").update(VALUE).digest("hex"));
      const lines = (await driver.logs("which")).map((l) => l.line).join("\n");
      expect(lines).not.toContain(VALUE);
    },
    60_000,
  );
});
