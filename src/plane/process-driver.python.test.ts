// The process driver providing what a truss package's spec declares, in a real bwrap sandbox with the real
// Python host: the interpreter for python_version (Debian's /usr/bin/python3, found by discovery), and the
// replica's secrets fetched at every start with fetchReplicaSecrets from an HTTP server that answers as the
// control plane's secrets route does (its own behaviour is tested in test/control/secrets.test.ts). Covers
// the secrets' files and modes, a control plane that is away at the first start (retried) and at a restart
// (the last start's secrets kept), a missing secret (FAILED) and an unfit python_version (BUILD_FAILED), in
// the logs, and no value ever in a log line; a requirement set built while the replica is BUILDING (from a
// wheel made here, `--no-index --find-links`), cached for the next replica (never BUILDING), and one pip
// cannot install (BUILD_FAILED with pip's error). Then a package on an interpreter the operator names (pyenv's 3.12 under the
// closed /root: its installation bound read-only, bwrap run as root for it) and one under --sandbox none.

import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { chmod, cp, mkdir, mkdtemp, readdir, rm, stat, writeFile } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
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

/** A pure-Python wheel `meridian_built-1.0`, made with zipfile (out dir). */
const WHEEL = `
import base64, hashlib, os, sys, zipfile
dist = "meridian_built-1.0.dist-info"
files = {
    "meridian_built.py": b"BUILT = True\\n",
    f"{dist}/METADATA": b"Metadata-Version: 2.1\\nName: meridian_built\\nVersion: 1.0\\n",
    f"{dist}/WHEEL": b"Wheel-Version: 1.0\\nGenerator: meridian-test\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n",
}
def digest(data):
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
record = "".join(f"{p},{digest(b)},{len(b)}\\n" for p, b in files.items()) + f"{dist}/RECORD,,\\n"
with zipfile.ZipFile(os.path.join(sys.argv[1], "meridian_built-1.0-py3-none-any.whl"), "w") as z:
    for p, b in files.items():
        z.writestr(p, b)
    z.writestr(f"{dist}/RECORD", record)
`;

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
  /** Every state each replica passed through, in order, from the driver's events. */
  const states = new Map<string, string[]>();

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), "meridian-pydriver-"));
    const wheels = join(root, "wheels");
    await mkdir(wheels);
    await promisify(execFile)("/usr/bin/python3", ["-c", WHEEL, wheels]);
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
        venvs: new VirtualenvCache({
          root: join(dataDir, "venvs"),
          // No package index is reached: the wheel made above is the only source.
          indexArgs: ["--no-index", "--find-links", wheels],
          env: { PATH: process.env["PATH"], PIP_CONFIG_FILE: "/dev/null" },
        }),
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
    driver.subscribe((event) => {
      if (event.type !== "state") return;
      const seen = states.get(event.replica.id) ?? [];
      if (seen.at(-1) !== event.replica.state) seen.push(event.replica.state);
      states.set(event.replica.id, seen);
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

  async function specFor(
    id: string,
    o: { secrets?: string[]; python_version?: string | null; requirements?: string[] } = {},
  ) {
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
    if (o.requirements !== undefined) spec.python = { ...spec.python!, requirements: o.requirements };
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

  it("fails a replica whose secret its team lacks (FAILED), and one whose python_version no interpreter has (BUILD_FAILED)", async () => {
    const message =
      "Secret 'hf_token' not found: config.yaml names it under 'secrets', but team 't' has no secret of that name.";
    answer = { down: false, status: 409, body: { error: message, error_code: "secret_missing" } };
    await driver.ensure(await specFor("py-missing", { secrets: ["hf_token"] }));
    const missing = await until("py-missing", (r) => r.state === "FAILED");
    expect(missing.message).toBe(message);
    expect((await driver.logs("py-missing")).map((l) => l.line)).toContain(message);

    await driver.ensure(await specFor("py-unfit", { python_version: "py39" }));
    const unfit = await until("py-unfit", (r) => r.state === "BUILD_FAILED");
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
    // Neither built anything: a missing secret is no build failure, and no interpreter means no build.
    expect(states.get("py-missing")).toEqual(["PENDING", "FAILED"]);
    expect(states.get("py-unfit")).toEqual(["PENDING", "BUILD_FAILED"]);
  }, 60_000);

  it("is BUILDING while it builds a fresh requirement set, then serves; the next replica of the set uses the cache and never builds", async () => {
    await driver.ensure(await specFor("py-build", { requirements: ["meridian-built==1.0"] }));
    const ready = await until("py-build", (r) => r.state === "READY", 120_000);
    expect((await predictOn(ready.endpoint!)).status).toBe(200);
    expect(states.get("py-build")).toEqual(["PENDING", "BUILDING", "STARTING", "READY"]);
    const lines = (await driver.logs("py-build")).map((l) => `${l.stream} ${l.line}`);
    expect(
      lines.some((l) => l.startsWith("build Successfully installed meridian-built-1.0")),
      lines.join("\n"),
    ).toBe(true);

    await driver.ensure(await specFor("py-cached", { requirements: ["meridian-built==1.0"] }));
    await until("py-cached", (r) => r.state === "READY", 60_000);
    expect(states.get("py-cached")).toEqual(["PENDING", "STARTING", "READY"]);
    const cached = (await driver.logs("py-cached")).map((l) => l.line);
    expect(cached.some((l) => l.startsWith("using the cached virtualenv "))).toBe(true);
    for (const id of ["py-build", "py-cached"]) await driver.remove(id);
  }, 180_000);

  it("is BUILDING for two replicas of one fresh set at once: one builds, the other waits for that build", async () => {
    await Promise.all(
      ["py-twin-a", "py-twin-b"].map(async (id) =>
        driver.ensure(await specFor(id, { requirements: ["meridian-built"] })),
      ),
    );
    for (const id of ["py-twin-a", "py-twin-b"]) await until(id, (r) => r.state === "READY", 120_000);
    for (const id of ["py-twin-a", "py-twin-b"]) {
      expect(states.get(id), id).toEqual(["PENDING", "BUILDING", "STARTING", "READY"]);
    }
    const lines = ["py-twin-a", "py-twin-b"].map(async (id) => (await driver.logs(id)).map((l) => l.line));
    const [a, b] = await Promise.all(lines);
    const waited = [a!, b!].filter((l) =>
      l.some((x) => x.startsWith("waiting for the build of the same requirements")),
    );
    const built = [a!, b!].filter((l) =>
      l.some((x) => x.startsWith("Successfully installed meridian-built-1.0")),
    );
    expect([waited.length, built.length]).toEqual([1, 1]);
    for (const id of ["py-twin-a", "py-twin-b"]) await driver.remove(id);
  }, 180_000);

  it("ends BUILD_FAILED with pip's error when a requirement cannot be installed, no process started, nothing cached", async () => {
    const venvs = join(root, "plane", "venvs");
    const before = (await readdir(venvs)).sort();
    await driver.ensure(await specFor("py-nopkg", { requirements: ["meridian-absent==9.9"] }));
    const failed = await until("py-nopkg", (r) => r.state === "BUILD_FAILED", 120_000);
    expect(failed.message).toMatch(
      /^pip could not install the requirements \(exit code 1\):\n[\s\S]*ERROR: (Could not find a version that satisfies the requirement meridian-absent==9\.9|No matching distribution found for meridian-absent==9\.9)/,
    );
    expect(states.get("py-nopkg")).toEqual(["PENDING", "BUILDING", "BUILD_FAILED"]);
    const lines = (await driver.logs("py-nopkg")).map((l) => l.line);
    expect(lines.some((l) => l.startsWith("started pid"))).toBe(false);
    expect(lines).toContain(failed.message);
    // Stays failed: the driver does not rebuild it in a loop.
    await new Promise((x) => setTimeout(x, 1_000));
    expect((await driver.list()).find((r) => r.id === "py-nopkg")?.state).toBe("BUILD_FAILED");
    expect((await readdir(venvs)).sort()).toEqual(before);
    await driver.remove("py-nopkg");
  }, 180_000);
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
