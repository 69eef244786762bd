// The replica sandbox: its command line and environment by table, its self-test and refusals, and what a
// hostile model package reaches from inside it, run through the process driver with the real runtime and
// the exact spec a plane gives replicas (agent.ts replicaSpec).

import { chmod, mkdir, mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { createServer, type Server } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { EgressPolicy } from "../core/domain.ts";
import type { DesiredReplica } from "../core/snapshot.ts";
import { discoverPythons } from "../lib/pythons.ts";
import { packageRuntime, replicaSpec } from "./agent.ts";
import type { ReplicaStatus } from "./driver.ts";
import { ProcessDriver } from "./process-driver.ts";
import { PlanePython, VirtualenvCache } from "./python-env.ts";
import {
  APP_DIR,
  type BwrapSandbox,
  bindHolding,
  bwrapArguments,
  HOME_DIR,
  hostIds,
  INSTALL_ROOT,
  prepareSandbox,
  type ReplicaSandbox,
  readableDirectory,
  replicaEnvironment,
  runtimeBinds,
  type SandboxLayout,
  SandboxRefusal,
  searchable,
  socketName,
  UNSANDBOXED_WARNING,
} from "./sandbox.ts";
import {
  type HostileAnswer,
  type HostileTargets,
  hostileModelPackage,
  hostileServerPackage,
  hostileTrussPackage,
} from "./testdata/hostile.ts";

const ROOT = process.getuid?.() === 0;

const LAYOUT: SandboxLayout = {
  uid: 65534,
  gid: 65534,
  binds: [
    { source: "/usr", dest: "/usr" },
    { source: "/srv/meridian/src", dest: "/srv/meridian/src" },
  ],
  symlinks: [{ target: "usr/lib", path: "/lib" }],
  passwd: "/data/sandbox/etc/passwd",
  group: "/data/sandbox/etc/group",
  compileCache: "/data/sandbox/compile-cache",
};

/** `flag value` pairs of an argument list, for order-insensitive checks. */
function pairs(args: string[], flag: string): string[][] {
  const out: string[][] = [];
  args.forEach((a, i) => {
    if (a === flag) out.push(args.slice(i + 1, i + 3));
  });
  return out;
}

describe("bwrap command line", () => {
  const mounts = { packageDir: "/data/artifacts/packages/abc", privateDir: "/data/sandbox/replicas/r1" };

  it("unshares every namespace but the network under egress allow, and the network too under deny", () => {
    const allow = bwrapArguments(LAYOUT, { ...mounts, egress: "allow" });
    for (const flag of [
      "--unshare-user",
      "--unshare-pid",
      "--unshare-ipc",
      "--unshare-uts",
      "--unshare-cgroup-try",
      "--die-with-parent",
      "--new-session",
      "--disable-userns",
    ]) {
      expect(allow, flag).toContain(flag);
    }
    expect(allow).not.toContain("--unshare-net");
    expect(bwrapArguments(LAYOUT, { ...mounts, egress: "deny" })).toContain("--unshare-net");
  });

  it("mounts its own /proc and /dev, the package read-only at /app, the private directory as HOME", () => {
    const args = bwrapArguments(LAYOUT, { ...mounts, egress: "allow" });
    expect(pairs(args, "--proc")).toEqual([["/proc", "--dev"]]);
    expect(args.join(" ")).toContain("--dev /dev");
    expect(pairs(args, "--ro-bind")).toContainEqual([mounts.packageDir, APP_DIR]);
    expect(pairs(args, "--bind")).toEqual([[mounts.privateDir, HOME_DIR]]);
    expect(pairs(args, "--chdir")).toEqual([[APP_DIR, "--remount-ro"]]);
    expect(pairs(args, "--uid")).toEqual([["65534", "--gid"]]);
    // The root is read-only once everything is mounted; that must come last.
    expect(args.slice(-2)).toEqual(["--remount-ro", "/"]);
  });

  it("points /tmp at the private directory, or, for an installation under /tmp, makes it a tmpfs before the binds", () => {
    const args = bwrapArguments(LAYOUT, { ...mounts, egress: "allow" });
    expect(pairs(args, "--symlink")).toContainEqual([HOME_DIR.slice(1), "/tmp"]);
    expect(pairs(args, "--tmpfs")).toEqual([["/dev/shm", "--ro-bind"]]);
    // A checkout in /tmp (a user trying Meridian out): its binds would make /tmp a directory, and bwrap then
    // refused the symlink ("Can't make symlink at /tmp: File exists"): no replica could start.
    const inTmp = {
      ...LAYOUT,
      binds: [...LAYOUT.binds, { source: "/tmp/meridian/src", dest: "/tmp/meridian/src" }],
    };
    const tmp = bwrapArguments(inTmp, { ...mounts, egress: "allow" });
    expect(pairs(tmp, "--symlink").map(([, path]) => path)).not.toContain("/tmp");
    const at = tmp.findIndex((a, i) => a === "--tmpfs" && tmp[i + 1] === "/tmp");
    expect(at).toBeGreaterThan(0);
    expect(tmp.slice(at - 4, at)).toEqual(["--perms", "1777", "--size", String(256 * 1024 * 1024)]);
    expect(tmp.indexOf("/tmp/meridian/src")).toBeGreaterThan(at);
    // The same for a path only this replica reads (an interpreter under /tmp).
    const ro = bwrapArguments(LAYOUT, { ...mounts, egress: "allow", readOnly: ["/tmp/py/bin/python3"] });
    expect(ro.findIndex((a, i) => a === "--tmpfs" && ro[i + 1] === "/tmp")).toBeGreaterThan(0);
  });

  it("binds the compile cache read-only, except for the self-test's warm-up", () => {
    const cache = [LAYOUT.compileCache, `${HOME_DIR}/tsx-65534`];
    expect(pairs(bwrapArguments(LAYOUT, { ...mounts, egress: "allow" }), "--ro-bind")).toContainEqual(cache);
    const warm = bwrapArguments(LAYOUT, { ...mounts, egress: "deny", cacheWritable: true });
    expect(pairs(warm, "--bind")).toContainEqual(cache);
    expect(pairs(warm, "--ro-bind")).not.toContainEqual(cache);
  });

  it("binds only what the layout lists, read-only: nothing else of the host", () => {
    const args = bwrapArguments(LAYOUT, { ...mounts, egress: "allow", infoFd: 3 });
    const sources = [...pairs(args, "--ro-bind"), ...pairs(args, "--bind")].map(([source]) => source);
    expect(sources.sort()).toEqual(
      [
        "/usr",
        "/srv/meridian/src",
        LAYOUT.passwd,
        LAYOUT.group,
        mounts.packageDir,
        mounts.privateDir,
        LAYOUT.compileCache,
      ].sort(),
    );
    expect(pairs(args, "--info-fd")).toEqual([["3", "--remount-ro"]]);
  });
});

describe("runtime binds", () => {
  it("bind the system and the parts of this installation the runtime loads, never its root", () => {
    const binds = runtimeBinds();
    expect(binds).toContainEqual({ source: "/usr", dest: "/usr" });
    for (const part of ["bin", "src", "node_modules", "package.json"]) {
      expect(binds.map((b) => b.dest)).toContain(join(INSTALL_ROOT, part));
    }
    // The installation root holds `meridian up`'s data directory (.meridian/): never bound, nor anything above it.
    for (const b of binds) expect(INSTALL_ROOT.startsWith(b.dest)).toBe(false);
    // Symlinks (node_modules is one in a worktree) are resolved before binding, and seen where they were.
    for (const b of binds) expect(b.source).not.toMatch(/\/\.\.?(\/|$)/);
  });

  it.each([
    ["/usr/lib/x", "/usr"],
    ["/usr", "/usr"],
    ["/srv/meridian/src/plane", "/srv/meridian/src"],
    ["/usrx", null],
    ["/srv/meridian/.meridian", null],
    ["/srv/meridian", null],
  ])("%s is inside %s", (path, holder) => {
    expect(bindHolding(LAYOUT.binds, path)?.source ?? null).toBe(holder);
  });
});

describe("environment allowlist", () => {
  it("takes LANG and TZ from the plane, nothing else; the replica's own variables win", () => {
    const env = replicaEnvironment({
      plane: { LANG: "C.UTF-8", TZ: "UTC", PLANE_SECRET: "x", MERIDIAN_PLANE_TOKEN: "t", PATH: "/plane/bin" },
      path: "/usr/bin",
      home: HOME_DIR,
      tmpdir: HOME_DIR,
      own: { MERIDIAN_MODEL_ID: "abcd1234", LANG: "de_DE.UTF-8" },
    });
    expect(env).toEqual({
      LANG: "de_DE.UTF-8",
      TZ: "UTC",
      PATH: "/usr/bin",
      HOME: HOME_DIR,
      TMPDIR: HOME_DIR,
      MERIDIAN_MODEL_ID: "abcd1234",
    });
  });
});

describe("permissions and ids", () => {
  it.each([
    [{ mode: 0o40700, uid: 0, gid: 0 }, 65534, 65534, false, false],
    [{ mode: 0o40711, uid: 0, gid: 0 }, 65534, 65534, true, false],
    [{ mode: 0o40755, uid: 0, gid: 0 }, 65534, 65534, true, true],
    [{ mode: 0o40710, uid: 0, gid: 65534 }, 65534, 65534, true, false],
    [{ mode: 0o40700, uid: 65534, gid: 0 }, 65534, 65534, true, true],
    [{ mode: 0o40070, uid: 65534, gid: 65534 }, 65534, 65534, false, false],
    [{ mode: 0o40700, uid: 1000, gid: 1000 }, 0, 0, true, true],
  ])("%o for %i:%i: searchable %s, readable %s", (st, uid, gid, search, read) => {
    expect(searchable(st, uid, gid)).toBe(search);
    expect(readableDirectory(st, uid, gid)).toBe(read);
  });

  it.each([
    [0, 0, undefined, { uid: 65534, gid: 65534, drop: true }],
    [0, 0, { uid: 1234, gid: 5678 }, { uid: 1234, gid: 5678, drop: true }],
    [1000, 1000, undefined, { uid: 1000, gid: 1000, drop: false }],
    [1000, 1000, { uid: 1234, gid: 1234 }, { uid: 1000, gid: 1000, drop: false }],
  ])("a plane of uid %i runs replicas as the right host ids", (uid, gid, wanted, ids) => {
    expect(hostIds(uid, gid, wanted)).toEqual(ids);
  });

  it("names sockets short and stable, whatever the replica id", () => {
    expect(socketName("a".repeat(128))).toMatch(/^[0-9a-f]{16}\.sock$/);
    expect(socketName("r1")).toBe(socketName("r1"));
    expect(socketName("r1")).not.toBe(socketName("r2"));
  });
});

describe("self-test and refusals", () => {
  const dirs: string[] = [];
  afterAll(async () => {
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });
  async function dataDir(): Promise<string> {
    const d = await mkdtemp(join(tmpdir(), "meridian-sandbox-"));
    dirs.push(d);
    return d;
  }

  it("a missing bwrap makes the sandbox unavailable: it refuses every replica, saying why and what to do", async () => {
    const sandbox = await prepareSandbox("bwrap", {
      dataDir: await dataDir(),
      planeEnv: {},
      bwrapPath: "/nonexistent/bwrap",
    });
    expect(sandbox.report.mode).toBe("unavailable");
    expect(sandbox.report.detail).toMatch(/\/nonexistent\/bwrap does not exist/);
    expect(sandbox.report.detail).toMatch(/Install bubblewrap/);
    expect(sandbox.report.detail).toMatch(/--sandbox none/);
    await expect(sandbox.open("r1")).rejects.toThrow(SandboxRefusal);
    await expect(sandbox.open("r1")).rejects.toThrow(/refuses to start replicas: bubblewrap cannot run/);
  });

  it("a bwrap that fails at once (here: false) fails the self-test with its exit", async () => {
    const sandbox = await prepareSandbox("bwrap", {
      dataDir: await dataDir(),
      planeEnv: {},
      bwrapPath: "/usr/bin/false",
    });
    expect(sandbox.report).toMatchObject({ mode: "unavailable" });
    expect(sandbox.report.detail).toMatch(/self-test sandbox failed \(exit code 1\)/);
  });

  it("refuses a data directory inside a path replicas see", async () => {
    const inside = await mkdtemp(join(INSTALL_ROOT, "bin", ".sandbox-test-"));
    dirs.push(inside);
    const sandbox = await prepareSandbox("bwrap", { dataDir: inside, planeEnv: {} });
    expect(sandbox.report.mode).toBe("unavailable");
    expect(sandbox.report.detail).toContain(`is inside ${join(INSTALL_ROOT, "bin")}, which replicas see`);
  });

  it.runIf(ROOT)(
    "a data directory the sandbox uid cannot reach keeps the sandbox, runs bwrap as root, and says why",
    async () => {
      const closed = await dataDir(); // mkdtemp: mode 0700
      const sandbox = await prepareSandbox("bwrap", { dataDir: join(closed, "plane"), planeEnv: {} });
      expect(sandbox.report.mode).toBe("bwrap");
      expect(sandbox.report.detail).toContain("as root (without capabilities) on the host");
      expect(sandbox.report.detail).toContain(
        `${closed} (mode 0700, owner 0) does not let uid 65534 through`,
      );
      expect(sandbox.report.detail).toContain(`chmod o+x ${closed}`);
      expect((sandbox as BwrapSandbox).dropsHostUid).toBe(false);
      // Nothing of the user's was opened up to get there.
      expect((await stat(closed)).mode & 0o777).toBe(0o700);
    },
  );

  it("--sandbox none is reported with its warning, and refuses egress deny it cannot keep", async () => {
    const dir = await dataDir();
    const sandbox = await prepareSandbox("none", { dataDir: dir, planeEnv: {} });
    expect(sandbox.report).toEqual({ mode: "none", detail: UNSANDBOXED_WARNING });
    const room = await sandbox.open("r1");
    expect((await stat(room.privateDir)).mode & 0o777).toBe(0o700);
    await expect(
      sandbox.plan(room, { argv: ["x"], env: {}, packageDir: dir, egress: "deny" }),
    ).rejects.toThrow(/Egress deny needs the sandbox's network namespace/);
    await sandbox.close(room);
    await expect(stat(room.privateDir)).rejects.toThrow(/ENOENT/);
  });
});

// ---------------------------------------------------------------------------------------------------------

interface Plane {
  root: string;
  dataDir: string;
  token: string;
  driver: ProcessDriver;
  sandbox: ReplicaSandbox;
  tcp: Server;
  tcpConnections: number;
}

const CANARY = `canary-${Math.random().toString(36).slice(2)}`;

async function waitFor<T>(what: string, check: () => Promise<T | undefined>, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

async function writeFiles(dir: string, files: Record<string, string>): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o755 });
  await chmod(dir, 0o755);
  for (const [name, content] of Object.entries(files)) {
    await mkdir(dirname(join(dir, name)), { recursive: true, mode: 0o755 });
    await writeFile(join(dir, name), content, { mode: 0o644 });
  }
}

function desired(id: string, egress: EgressPolicy): DesiredReplica {
  return {
    id,
    deployment_id: `dep-${id}`,
    model_id: "abcd1234",
    environment: "production",
    artifact: { key: id, sha256: "0".repeat(64), size: 1 },
    egress,
  };
}

async function predict(endpoint: string): Promise<{ status: number; body: unknown }> {
  const { request } = await import("node:http");
  const where = endpoint.startsWith("unix:")
    ? { socketPath: endpoint.slice("unix:".length) }
    : { host: endpoint.split(":")[0], port: Number(endpoint.split(":")[1]) };
  return new Promise((resolve, reject) => {
    const req = request(
      {
        ...where,
        method: "POST",
        path: "/v1/models/model:predict",
        headers: { "content-type": "application/json" },
      },
      (res) => {
        let text = "";
        res.setEncoding("utf8").on("data", (c: string) => {
          text += c;
        });
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) }));
      },
    );
    req.on("error", reject);
    req.end("{}");
  });
}

// Both ways a root plane runs bwrap: as the host's nobody when the paths let it through, and as root
// (uid 65534 only inside the namespace) when a directory above them is closed, as a 0700 home is.
describe.each([
  { layout: "open", closedAbove: false },
  ...(ROOT ? [{ layout: "closed above (bwrap as root)", closedAbove: true }] : []),
])("a hostile model package in the sandbox (process driver, real runtime), $layout", ({ closedAbove }) => {
  let plane: Plane;

  beforeAll(async () => {
    // Laid out as `meridian up` lays out a plane: credentials beside the data directories.
    const root = await mkdtemp(join(tmpdir(), "meridian-hostile-"));
    await chmod(root, closedAbove ? 0o700 : 0o755);
    await mkdir(join(root, "planes", "eu-1"), { recursive: true });
    const dataDir = join(root, "planes", "eu-1");
    const token = join(root, "planes", "eu-1.token");
    await writeFile(token, `plane-eu-1.${CANARY}`, { mode: 0o600 });
    await writeFile(join(root, "planes", "us-1.token"), `plane-us-1.${CANARY}`, { mode: 0o644 });
    await writeFile(join(dataDir, "snapshot.json"), JSON.stringify({ hop_secret: CANARY }), { mode: 0o644 });
    const sandbox = await prepareSandbox("bwrap", {
      dataDir,
      planeEnv: { ...process.env, LANG: "C.UTF-8", PLANE_SECRET: CANARY },
    });
    if (closedAbove) expect(sandbox.report.detail).toContain(`${root} (mode 0700, owner 0) does not let uid`);
    else expect(sandbox.report, String(sandbox.report.detail)).toEqual({ mode: "bwrap", detail: null });
    const pythons = await discoverPythons({ searchDirs: ["/usr/bin"] });
    const driver = new ProcessDriver({
      dataDir,
      sandbox,
      readinessIntervalMs: 20,
      stopGraceMs: 2_000,
      python: new PlanePython({
        interpreters: async () => pythons.interpreters,
        venvs: new VirtualenvCache({ root: join(dataDir, "venvs"), env: { PATH: process.env.PATH } }),
      }),
    });
    await driver.start();
    let tcpConnections = 0;
    const tcp = createServer((s) => {
      tcpConnections++;
      s.destroy();
    });
    await new Promise<void>((r) => tcp.listen(0, "127.0.0.1", r));
    plane = {
      root,
      dataDir,
      token,
      driver,
      sandbox,
      tcp,
      get tcpConnections() {
        return tcpConnections;
      },
    } as Plane;
    // A bystander whose private directory the hostile ones go after.
    await writeFiles(join(root, "pkgs", "neighbour"), {
      "config.yaml": "model_name: neighbour\n",
      "model/model.js":
        'import fs from "node:fs"; import os from "node:os";\nexport class Model { load() { fs.writeFileSync(os.homedir() + "/secret.txt", "neighbour data"); } predict() { return "ok"; } }\n',
    });
    await driver.ensure(replicaSpec(desired("neighbour", "allow"), join(root, "pkgs", "neighbour")));
    await ready("neighbour");
  }, 60_000);

  afterAll(async () => {
    await plane?.driver.stop();
    plane?.tcp.close();
    if (plane) await rm(plane.root, { recursive: true, force: true });
  });

  async function ready(id: string): Promise<ReplicaStatus> {
    return waitFor(`${id} READY`, async () => {
      const r = (await plane.driver.list()).find((x) => x.id === id);
      if (r?.state === "FAILED") throw new Error(`${id} FAILED: ${r.message}`);
      return r?.state === "READY" ? r : undefined;
    });
  }

  function targets(): HostileTargets {
    return {
      files: [
        join(plane.dataDir, "snapshot.json"),
        plane.token,
        join(plane.root, "planes", "us-1.token"),
        join(plane.dataDir, "sandbox", "replicas", "neighbour", "secret.txt"),
        join(plane.dataDir, "run", "neighbour.json"),
      ],
      dirs: [
        plane.dataDir,
        join(plane.root, "planes"),
        join(plane.dataDir, "sandbox", "replicas", "neighbour"),
        join(plane.dataDir, "sandbox", "secrets"),
      ],
      tcp: { host: "127.0.0.1", port: (plane.tcp.address() as { port: number }).port },
      planePid: process.pid,
      canary: CANARY,
    };
  }

  /** Variables a replica may have: the allowlist, its own, and what its shell or server adds. */
  const ALLOWED = new Set([
    "PATH",
    "HOME",
    "TMPDIR",
    "LANG",
    "TZ",
    "MERIDIAN_MODEL_ID",
    "MERIDIAN_DEPLOYMENT_ID",
    "MERIDIAN_ENVIRONMENT",
    "PORT",
    "PWD",
    // The Python host's own (src/core/python.ts trussHostCommand).
    "PYTHONDONTWRITEBYTECODE",
    "PYTHONUNBUFFERED",
  ]);

  it.each<[string, EgressPolicy, "js" | "server" | "python"]>([
    ["the JavaScript host, egress allow", "allow", "js"],
    ["the JavaScript host, egress deny", "deny", "js"],
    ["the Python host (a truss model.py), egress allow", "allow", "python"],
    ["the Python host (a truss model.py), egress deny", "deny", "python"],
    ["a custom server (python3), egress allow", "allow", "server"],
    ["a custom server (python3), egress deny", "deny", "server"],
  ])(
    "%s: every attempt fails and predict() still answers",
    async (_name, egress, kind) => {
      const id = `hostile-${kind}-${egress}`;
      const pkg = join(plane.root, "pkgs", id);
      const t = targets();
      const files =
        kind === "js"
          ? hostileModelPackage(t)
          : kind === "python"
            ? hostileTrussPackage(t)
            : hostileServerPackage(t);
      await writeFiles(pkg, files);
      const before = plane.tcpConnections;
      const runtime = await packageRuntime(pkg);
      if (!runtime.ok) throw new Error(runtime.message);
      expect(runtime.runtime.kind).toBe(kind === "python" ? "python" : "meridian");
      await plane.driver.ensure(replicaSpec(desired(id, egress), pkg, runtime.runtime));
      const r = await ready(id);
      expect(r.endpoint).toMatch(egress === "deny" ? /^unix:\// : /^127\.0\.0\.1:\d+$/);

      const answer = await predict(r.endpoint!);
      expect(answer.status).toBe(200);
      const body = answer.body as HostileAnswer;
      expect(body.answered).toBe(true);
      expect(body.homeWritable).toBe(true);
      const leaks = body.attempts.filter((a) => a.reached && !(a.what === "tcp" && egress === "allow"));
      expect(leaks, JSON.stringify(body.attempts, null, 1)).toEqual([]);
      // It did try: every target was attempted, and each failed for a reason of the sandbox's.
      expect(body.attempts.length).toBeGreaterThanOrEqual(t.files.length + t.dirs.length + 5);
      if (egress === "deny") expect(plane.tcpConnections).toBe(before);
      else expect(body.attempts.find((a) => a.what === "tcp")?.reached).toBe(true);
      expect(JSON.stringify(body.env)).not.toContain(CANARY);
      expect(Object.keys(body.env).filter((k) => !ALLOWED.has(k))).toEqual([]);
      if (ROOT) expect(body.uid).toBe(65534);
      // Nothing it wrote escaped its private directory.
      await expect(stat(join(pkg, "pwned"))).rejects.toThrow(/ENOENT/);
      await plane.driver.remove(id);
    },
    60_000,
  );

  it("control: the same package without a sandbox reaches the plane's files (the probes do work)", async () => {
    const dataDir = join(plane.root, "planes", "none-1");
    const sandbox = await prepareSandbox("none", { dataDir, planeEnv: { PATH: process.env.PATH } });
    const driver = new ProcessDriver({ dataDir, sandbox, readinessIntervalMs: 20 });
    await driver.start();
    try {
      const pkg = join(plane.root, "pkgs", "hostile-none");
      await writeFiles(pkg, hostileModelPackage(targets()));
      await driver.ensure(replicaSpec(desired("hostile-none", "allow"), pkg));
      const r = await waitFor("hostile-none READY", async () =>
        (await driver.list()).find((x) => x.state === "READY"),
      );
      const body = (await predict(r.endpoint!)).body as HostileAnswer;
      const reached = body.attempts.filter((a) => a.reached).map((a) => a.target);
      expect(reached).toContain(join(plane.dataDir, "snapshot.json"));
      expect(reached).toContain(plane.token);
      expect(reached).toContain(join(plane.dataDir, "sandbox", "replicas", "neighbour", "secret.txt"));
    } finally {
      await driver.stop();
    }
  }, 60_000);

  it("a replica's private directory is its own (0700, the sandbox uid) and goes with the replica", async () => {
    const dir = join(plane.dataDir, "sandbox", "replicas", "neighbour");
    const st = await stat(dir);
    expect(st.mode & 0o777).toBe(0o700);
    // Closed above, the replica's uid 65534 is the host's root: its files are root's, 0700.
    if (ROOT) expect(st.uid).toBe(closedAbove ? 0 : 65534);
    expect(await readFile(join(dir, "secret.txt"), "utf8")).toBe("neighbour data");
    await plane.driver.remove("neighbour");
    await expect(stat(dir)).rejects.toThrow(/ENOENT/);
  });

  it("a replica that puts a symlink where its socket belongs is FAILED; the plane never follows it", async () => {
    // A socket on the host the replica would like the plane's traffic to go to.
    const decoy = join(plane.root, "decoy.sock");
    let decoyConnections = 0;
    const server = createServer((s) => {
      decoyConnections++;
      s.destroy();
    });
    await new Promise<void>((r) => server.listen(decoy, r));
    try {
      const spec = replicaSpec(desired("symlinker", "deny"), join(plane.root, "pkgs", "neighbour"));
      spec.command = {
        argv: [
          process.execPath,
          "-e",
          `require("node:fs").symlinkSync(${JSON.stringify(decoy)}, process.argv[1]); setInterval(() => {}, 1000);`,
          "{listen}",
        ],
        env: {},
      };
      // {listen} is unix:/path; the command wants the bare path.
      spec.command.argv[3] = `${HOME_DIR}/.meridian.sock`;
      await plane.driver.ensure(spec);
      const failed = await waitFor("symlinker FAILED", async () => {
        const r = (await plane.driver.list()).find((x) => x.id === "symlinker");
        return r?.state === "FAILED" ? r : undefined;
      });
      expect(failed.message).toMatch(/put a symbolic link where its Unix socket belongs/);
      expect(decoyConnections).toBe(0);
      await plane.driver.remove("symlinker");
    } finally {
      server.close();
    }
  });

  it("a replica that puts a directory of links where its socket belongs is FAILED, and nothing is followed", async () => {
    const outside = join(plane.root, "outside");
    await mkdir(outside, { recursive: true });
    await writeFile(join(outside, "keep.txt"), "must survive");
    const spec = replicaSpec(desired("dirlinker", "deny"), join(plane.root, "pkgs", "neighbour"));
    spec.command = {
      argv: [
        process.execPath,
        "-e",
        `const fs = require("node:fs"); fs.mkdirSync(process.argv[1]); fs.symlinkSync(${JSON.stringify(outside)}, process.argv[1] + "/link"); setInterval(() => {}, 1000);`,
        `${HOME_DIR}/.meridian.sock`,
      ],
      env: {},
    };
    await plane.driver.ensure(spec);
    const failed = await waitFor("dirlinker FAILED", async () => {
      const r = (await plane.driver.list()).find((x) => x.id === "dirlinker");
      return r?.state === "FAILED" ? r : undefined;
    });
    expect(failed.message).toMatch(/put a directory where its Unix socket belongs/);
    expect(await readFile(join(outside, "keep.txt"), "utf8")).toBe("must survive");
    await plane.driver.remove("dirlinker");
  });

  it("a Unix socket path over the kernel's limit is a clear refusal, not a mysterious error", async () => {
    const room = await plane.sandbox.open("long-path");
    const long = { ...room, socket: { ...room.socket, host: `/${"d".repeat(120)}/x.sock` } };
    await expect(
      plane.sandbox.plan(long, { argv: ["x"], env: {}, packageDir: plane.root, egress: "deny" }),
    ).rejects.toThrow(
      /longer than the 107 bytes a socket path may have; give the plane a shorter --data-dir/,
    );
    await plane.sandbox.close(room);
  });
});
