import { spawn } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { chmod, mkdir, mkdtemp, readdir, readFile, realpath, rm, writeFile } from "node:fs/promises";
import { createServer, type Server } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import type { EgressPolicy } from "../core/domain.ts";
import { describeReplicaDriverConformance } from "./driver.conformance.ts";
import type { ReplicaSpec, ReplicaStatus } from "./driver.ts";
import {
  backoffDelayMs,
  decideAfterExit,
  type ExitFacts,
  freeLoopbackPort,
  ProcessDriver,
  type ProcessDriverOptions,
} from "./process-driver.ts";
import { prepareSandbox, type ReplicaSandbox, Unsandboxed } from "./sandbox.ts";

const SERVER = join(import.meta.dirname, "testdata", "server.mjs");

/** Timings the conformance suite asks for (see driver.conformance.ts). */
const FAST: Omit<ProcessDriverOptions, "dataDir" | "sandbox"> = {
  readinessTimeoutMs: 1_000,
  readinessIntervalMs: 50,
  probeIntervalMs: 150,
  probeTimeoutMs: 500,
  livenessFailureThreshold: 2,
  backoffBaseMs: 100,
  backoffMaxMs: 400,
  stableAfterMs: 5_000,
  maxFastCrashes: 3,
  stopGraceMs: 1_000,
};

function serverSpec(
  packageDir: string,
  id: string,
  flags: string[] = [],
  token = id,
  egress: EgressPolicy = "allow",
): ReplicaSpec {
  return {
    id,
    deployment_id: `dep-${id}`,
    model_id: "abcd1234",
    environment: "production",
    package_dir: packageDir,
    artifact: null,
    command: {
      argv: [process.execPath, SERVER, "--listen", "{listen}", ...flags],
      env: { MERIDIAN_TEST_TOKEN: token },
    },
    egress,
    readiness_path: "/v1/models/model",
    liveness_path: "/",
    fatal_exit_codes: { 3: "model load failed" },
  };
}

/** A package directory the sandbox uid can read (mkdtemp makes it 0700). */
async function packageDirectory(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "meridian-package-"));
  await chmod(dir, 0o755);
  return dir;
}

/** A canary in the plane's environment: no replica may see it. */
const PLANE_ENV = { PATH: process.env.PATH, LANG: "C.UTF-8", PLANE_SECRET: "canary-3f9d" };

async function makeHarness(options: Partial<ProcessDriverOptions> = {}, egress: EgressPolicy = "allow") {
  const dataDir = await mkdtemp(join(tmpdir(), "meridian-driver-"));
  const packageDir = await packageDirectory();
  const sandbox = options.sandbox ?? new Unsandboxed({ dataDir, planeEnv: PLANE_ENV });
  const driver = new ProcessDriver({ ...FAST, ...options, dataDir, sandbox });
  return {
    driver,
    dataDir,
    packageDir,
    spec: (id: string, flags: string[] = [], token = id) => serverSpec(packageDir, id, flags, token, egress),
    cleanup: async () => {
      await driver.stop();
      await rm(dataDir, { recursive: true, force: true });
      await rm(packageDir, { recursive: true, force: true });
    },
  };
}

/**
 * One bwrap sandbox for every harness of a suite: its self-test (which warms the compile cache) runs once.
 * A bwrap that fails it fails the suite with the reason: bubblewrap is a requirement.
 */
function sharedBwrap(): () => Promise<ReplicaSandbox> {
  let prepared: Promise<ReplicaSandbox> | null = null;
  return () => {
    prepared ??= (async () => {
      const dataDir = await mkdtemp(join(tmpdir(), "meridian-sandbox-"));
      const sandbox = await prepareSandbox("bwrap", { dataDir, planeEnv: PLANE_ENV });
      if (sandbox.report.mode !== "bwrap") throw new Error(`no sandbox: ${sandbox.report.detail}`);
      return sandbox;
    })();
    return prepared;
  };
}

describeReplicaDriverConformance("process", () => makeHarness());
const bwrapAllow = sharedBwrap();
describeReplicaDriverConformance("process in a bwrap sandbox", async () =>
  makeHarness({ sandbox: await bwrapAllow() }),
);
const bwrapDeny = sharedBwrap();
describeReplicaDriverConformance("process in a bwrap sandbox, egress deny (Unix socket)", async () =>
  makeHarness({ sandbox: await bwrapDeny() }, "deny"),
);

async function waitFor<T>(what: string, check: () => Promise<T | undefined>, timeoutMs = 8_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function waitForState(driver: ProcessDriver, id: string, state: ReplicaStatus["state"], timeoutMs?: number) {
  return waitFor(
    `${id} ${state}`,
    async () => (await driver.list()).find((r) => r.id === id && r.state === state),
    timeoutMs,
  );
}

/** Running, as opposed to gone or a zombie waiting for init to reap it. */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return !/^[ZX]/.test(stat.slice(stat.lastIndexOf(")") + 2));
  } catch {
    return process.platform !== "linux";
  }
}

async function grandchildPid(driver: ProcessDriver, id: string): Promise<number> {
  return waitFor("grandchild pid", async () => {
    const line = (await driver.logs(id)).find((l) => l.line.includes('"msg":"grandchild"'));
    return line === undefined ? undefined : (JSON.parse(line.line).pid as number);
  });
}

describe("process driver", () => {
  const cleanups: Array<() => Promise<void>> = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0)) await cleanup();
  });
  async function harness(options: Partial<ProcessDriverOptions> = {}) {
    const h = await makeHarness(options);
    cleanups.push(h.cleanup);
    await h.driver.start();
    return h;
  }

  it("runs the command in the package directory with the allowlisted env under the spec's env", async () => {
    const h = await harness();
    const spec = h.spec("cwd");
    spec.command.env.LANG = "spec.wins";
    await h.driver.ensure(spec);
    const ready = await waitForState(h.driver, "cwd", "READY");
    const res = await fetchInfo(ready.endpoint!);
    expect(await realpath(res.cwd)).toBe(await realpath(h.packageDir));
    expect(ready.endpoint).toMatch(/^127\.0\.0\.1:\d+$/);
    // Never the plane's environment: PATH from it, HOME on the private directory, the lifeline's fd.
    expect(res.env).toEqual({
      PATH: process.env.PATH,
      LANG: "spec.wins",
      HOME: join(h.dataDir, "sandbox", "replicas", "cwd"),
      MERIDIAN_TEST_TOKEN: "cwd",
      MERIDIAN_LIFELINE_FD: "3",
    });
  });

  it("backs off exponentially between fast crashes, capped, then gives up", async () => {
    const h = await harness({ backoffBaseMs: 100, backoffMaxMs: 300, maxFastCrashes: 5 });
    await h.driver.ensure(h.spec("backoff", ["--exit-at-start", "1"]));
    const failed = await waitForState(h.driver, "backoff", "FAILED", 10_000);
    expect(failed.restarts).toBe(4);
    const starts = (await h.driver.logs("backoff"))
      .filter((l) => l.stream === "driver" && l.line.startsWith("started pid"))
      .map((l) => Date.parse(l.ts));
    expect(starts).toHaveLength(5);
    const gaps = starts.slice(1).map((t, i) => t - starts[i]!);
    const delays = [100, 200, 300, 300];
    gaps.forEach((gap, i) => {
      // Lower bound: the backoff itself. Upper bound: backoff + process start and exit, generously.
      expect(gap).toBeGreaterThanOrEqual(delays[i]! - 5);
      expect(gap).toBeLessThan(delays[i]! + 1_500);
    });
    expect(failed.message).toMatch(/5 crashes in a row/);
  });

  it("remove kills the whole process group, grandchildren included", async () => {
    const h = await harness();
    await h.driver.ensure(h.spec("group", ["--grandchild"]));
    await waitForState(h.driver, "group", "READY");
    const pid = await grandchildPid(h.driver, "group");
    expect(alive(pid)).toBe(true);
    await h.driver.remove("group");
    expect(alive(pid)).toBe(false);
  });

  it("stop() kills every replica's process group", async () => {
    const h = await harness();
    await Promise.all(["g1", "g2"].map((id) => h.driver.ensure(h.spec(id, ["--grandchild"]))));
    const pids = await Promise.all(["g1", "g2"].map((id) => grandchildPid(h.driver, id)));
    await h.driver.stop();
    for (const pid of pids) expect(alive(pid)).toBe(false);
    expect(await h.driver.list()).toEqual([]);
  });

  it("a crashed replica's grandchildren are killed before it restarts", async () => {
    const h = await harness();
    await h.driver.ensure(h.spec("orphan", ["--grandchild", "--crash-after", "400"]));
    const first = await grandchildPid(h.driver, "orphan");
    await waitFor("restart", async () => ((await h.driver.list())[0]?.restarts ?? 0) >= 1 || undefined);
    expect(alive(first)).toBe(false);
  });

  it("SIGKILLs a replica that ignores SIGTERM after the grace period", async () => {
    const h = await harness({ stopGraceMs: 600 });
    await h.driver.ensure(h.spec("stubborn", ["--ignore-sigterm"]));
    const ready = await waitForState(h.driver, "stubborn", "READY");
    const { pid } = await fetchInfo(ready.endpoint!);
    const started = Date.now();
    await h.driver.remove("stubborn");
    const took = Date.now() - started;
    expect(took).toBeGreaterThanOrEqual(550);
    expect(took).toBeLessThan(3_000);
    expect(alive(pid)).toBe(false);
  });

  it("appends every line to a log file under the data dir, across restarts", async () => {
    const h = await harness();
    await h.driver.ensure(h.spec("filelog", ["--crash-after", "300"]));
    await waitFor("restart", async () => ((await h.driver.list())[0]?.restarts ?? 0) >= 1 || undefined);
    await waitForState(h.driver, "filelog", "READY");
    await h.driver.remove("filelog");
    const entries = (await readFile(join(h.dataDir, "logs", "filelog.log"), "utf8"))
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l));
    const starting = entries.filter((e) => e.stream === "stdout" && e.line.includes('"msg":"starting"'));
    expect(starting.length).toBeGreaterThanOrEqual(2);
    expect(entries.some((e) => e.stream === "stderr")).toBe(true);
    expect(entries.some((e) => e.stream === "driver" && /restarting in/.test(e.line))).toBe(true);
    for (const e of entries) expect(Number.isNaN(Date.parse(e.ts))).toBe(false);
  });

  it("keeps only the newest lines in memory", async () => {
    const h = await harness({ logRingSize: 50 });
    await h.driver.ensure(h.spec("ring", ["--lines", "300"]));
    await waitForState(h.driver, "ring", "READY");
    const lines = await h.driver.logs("ring");
    expect(lines.length).toBeLessThanOrEqual(50);
    const numbered = lines.filter((l) => l.line.includes('"msg":"line"')).map((l) => JSON.parse(l.line).i);
    expect(numbered.at(-1)).toBe(299);
    expect(numbered).not.toContain(0);
  });

  it("retries on another port when the allocated one is taken, without counting a restart", async () => {
    const squatter: Server = createServer((socket) => socket.destroy());
    await new Promise<void>((r) => squatter.listen(0, "127.0.0.1", r));
    const taken = (squatter.address() as { port: number }).port;
    let calls = 0;
    const h = await harness({
      allocatePort: async (host) => (calls++ === 0 ? taken : freeLoopbackPort(host)),
    });
    try {
      await h.driver.ensure(h.spec("race"));
      const ready = await waitForState(h.driver, "race", "READY");
      expect(ready.endpoint).not.toBe(`127.0.0.1:${taken}`);
      expect(ready.restarts).toBe(0);
      expect((await h.driver.logs("race")).some((l) => /port taken/.test(l.line))).toBe(true);
    } finally {
      squatter.close();
    }
  });

  it("start() kills replicas a previous driver left running when its process was SIGKILLed", async () => {
    const dataDir = await mkdtemp(join(tmpdir(), "meridian-driver-"));
    const packageDir = await mkdtemp(join(tmpdir(), "meridian-package-"));
    cleanups.push(() => rm(dataDir, { recursive: true, force: true }));
    cleanups.push(() => rm(packageDir, { recursive: true, force: true }));
    const host = spawn(
      process.execPath,
      ["--import", "tsx", join(import.meta.dirname, "testdata", "plane-host.ts"), dataDir, packageDir],
      {
        stdio: ["ignore", "pipe", "inherit"],
      },
    );
    cleanups.push(async () => void host.kill("SIGKILL"));
    const endpoint = await new Promise<string>((resolve, reject) => {
      host.stdout!.setEncoding("utf8");
      host.stdout!.on("data", (chunk: string) => {
        const line = chunk.split("\n").find((l) => l.includes("endpoint"));
        if (line !== undefined) resolve(JSON.parse(line).endpoint);
      });
      host.once("exit", (code) => reject(new Error(`plane host exited with ${code}`)));
    });
    const { pid } = await fetchInfo(endpoint);
    host.kill("SIGKILL");
    await new Promise((r) => host.once("exit", r));
    expect(alive(pid)).toBe(true);

    const next = new ProcessDriver({ dataDir, sandbox: new Unsandboxed({ dataDir, planeEnv: {} }) });
    await next.start();
    cleanups.push(() => next.stop());
    await waitFor("leftover killed", async () => (alive(pid) ? undefined : true), 3_000);
    expect(await readdir(join(dataDir, "run"))).toEqual([]);
  });

  it("start() leaves alone a recorded pid that now runs another command", async () => {
    const dataDir = await mkdtemp(join(tmpdir(), "meridian-driver-"));
    cleanups.push(() => rm(dataDir, { recursive: true, force: true }));
    const bystander = spawn(process.execPath, ["-e", "setInterval(() => {}, 1000)"], {
      detached: true,
      stdio: "ignore",
    });
    cleanups.push(async () => void bystander.kill("SIGKILL"));
    await mkdir(join(dataDir, "run"), { recursive: true });
    await writeFile(
      join(dataDir, "run", "old.json"),
      JSON.stringify({ pid: bystander.pid, argv: ["node", "other.mjs"] }),
    );
    const next = new ProcessDriver({ dataDir, sandbox: new Unsandboxed({ dataDir, planeEnv: {} }) });
    await next.start();
    cleanups.push(() => next.stop());
    expect(alive(bystander.pid!)).toBe(true);
    expect(await readdir(join(dataDir, "run"))).toEqual([]);
  });

  it("a command that cannot be spawned is FAILED at once", async () => {
    const h = await harness();
    const spec = h.spec("enoent");
    spec.command.argv = ["/nonexistent/meridian-test-binary"];
    await h.driver.ensure(spec);
    const failed = await waitForState(h.driver, "enoent", "FAILED", 3_000);
    expect(failed.message).toMatch(/ENOENT/);
    expect(failed.restarts).toBe(0);
  });
});

/** Host pids of `pid` and every process under it (Linux /proc), e.g. bwrap and what runs in its sandbox. */
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

function hostUid(pid: number): number {
  return Number(/^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1]);
}

describe("process driver in a bwrap sandbox", () => {
  const bwrap = sharedBwrap();
  const cleanups: Array<() => Promise<void>> = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0)) await cleanup();
  });
  async function harness(options: Partial<ProcessDriverOptions> = {}) {
    const h = await makeHarness({ sandbox: await bwrap(), ...options });
    cleanups.push(h.cleanup);
    await h.driver.start();
    return h;
  }
  async function runPid(dataDir: string, id: string): Promise<number> {
    return waitFor("run file", async () => {
      try {
        return (JSON.parse(await readFile(join(dataDir, "run", `${id}.json`), "utf8")) as { pid: number })
          .pid;
      } catch {
        return undefined;
      }
    });
  }

  it("stops a replica with SIGTERM to what runs inside, SIGKILL after the grace, leaving no process", async () => {
    const h = await harness({ stopGraceMs: 600 });
    await h.driver.ensure(h.spec("inside", ["--ignore-sigterm", "--grandchild"]));
    await waitForState(h.driver, "inside", "READY");
    await grandchildPid(h.driver, "inside");
    const tree = descendants(await runPid(h.dataDir, "inside"));
    // bwrap, the sandbox's PID 1, the server and its grandchild.
    expect(tree.length).toBeGreaterThanOrEqual(4);
    if (process.getuid?.() === 0) for (const pid of tree) expect(hostUid(pid), `pid ${pid}`).toBe(65534);
    await h.driver.remove("inside");
    // SIGTERM reached the server inside the sandbox (bwrap's PID 1 forwards none).
    const logged = (await readFile(join(h.dataDir, "logs", "inside.log"), "utf8")).includes(
      "ignoring SIGTERM",
    );
    expect(logged).toBe(true);
    for (const pid of tree) expect(alive(pid), `pid ${pid}`).toBe(false);
  });

  it("a crashed sandboxed replica leaves nothing behind before it restarts", async () => {
    const h = await harness();
    await h.driver.ensure(h.spec("crashy", ["--grandchild", "--crash-after", "500"]));
    await grandchildPid(h.driver, "crashy");
    const tree = descendants(await runPid(h.dataDir, "crashy"));
    await waitFor("restart", async () => ((await h.driver.list())[0]?.restarts ?? 0) >= 1 || undefined);
    for (const pid of tree) expect(alive(pid), `pid ${pid}`).toBe(false);
  });

  it("a sandbox that failed its self-test: every replica is FAILED with the reason", async () => {
    const dataDir = await mkdtemp(join(tmpdir(), "meridian-driver-"));
    const sandbox = await prepareSandbox("bwrap", { dataDir, planeEnv: {}, bwrapPath: "/nonexistent/bwrap" });
    const h = await harness({ sandbox });
    cleanups.push(() => rm(dataDir, { recursive: true, force: true }));
    await h.driver.ensure(h.spec("refused"));
    const failed = await waitForState(h.driver, "refused", "FAILED", 3_000);
    expect(failed.message).toMatch(/^The plane refuses to start replicas: bubblewrap cannot run replicas/);
    expect(failed.message).toMatch(/--sandbox none/);
    expect(failed.restarts).toBe(0);
  });

  it("without a sandbox, a replica under egress deny is FAILED, never run with the network", async () => {
    const h = await makeHarness({}, "deny");
    cleanups.push(h.cleanup);
    await h.driver.start();
    await h.driver.ensure(h.spec("no-netns"));
    const failed = await waitForState(h.driver, "no-netns", "FAILED", 3_000);
    expect(failed.message).toMatch(/^Egress deny needs the sandbox's network namespace/);
    expect(await h.driver.logs("no-netns")).toEqual([]);
  });
});

describe("exit policy", () => {
  const policy = { backoffBaseMs: 1_000, backoffMaxMs: 60_000, stableAfterMs: 30_000, maxFastCrashes: 5 };
  const base: ExitFacts = {
    code: 1,
    signal: null,
    ranMs: 500,
    becameReady: false,
    fatalReason: null,
    portInUse: false,
    portRetries: 0,
    crashes: 0,
    livenessKilled: false,
  };

  it.each([
    [1, 1_000],
    [2, 2_000],
    [3, 4_000],
    [7, 60_000],
    [40, 60_000],
  ])("backoff after crash %i is %i ms", (crashes, delay) => {
    expect(backoffDelayMs(crashes, 1_000, 60_000)).toBe(delay);
  });

  it.each<[string, Partial<ExitFacts>, ReturnType<typeof decideAfterExit>["kind"], number | null]>([
    ["load failure before ready", { code: 3, fatalReason: "model load failed" }, "failed", null],
    [
      "a fatal code after having been ready is a crash",
      { code: 3, fatalReason: "x", becameReady: true },
      "restart",
      1_000,
    ],
    ["code 3 is ordinary when the spec does not call it fatal", { code: 3 }, "restart", 1_000],
    ["first fast crash", {}, "restart", 1_000],
    ["third fast crash", { crashes: 2 }, "restart", 4_000],
    ["fifth fast crash gives up", { crashes: 4 }, "failed", null],
    ["a crash after a long run resets the count", { crashes: 4, ranMs: 31_000 }, "restart", 1_000],
    ["killed by a signal", { signal: "SIGSEGV", code: null }, "restart", 1_000],
    ["port taken", { portInUse: true }, "retry_port", null],
    ["port taken too often is a crash", { portInUse: true, portRetries: 3 }, "restart", 1_000],
    ["port message after ready is a crash", { portInUse: true, becameReady: true }, "restart", 1_000],
  ])("%s", (_name, facts, kind, delay) => {
    const decision = decideAfterExit({ ...base, ...facts }, policy);
    expect(decision.kind).toBe(kind);
    if (decision.kind === "restart") expect(decision.delayMs).toBe(delay);
  });

  it("messages name the cause", () => {
    expect(decideAfterExit({ ...base, code: 3, fatalReason: "model load failed" }, policy)).toMatchObject({
      message: expect.stringMatching(
        /^model load failed: the process exited with code 3 before becoming ready$/,
      ),
    });
    expect(decideAfterExit({ ...base, signal: "SIGKILL", code: null }, policy)).toMatchObject({
      message: expect.stringMatching(/killed by SIGKILL; restarting in 1000 ms/),
    });
    expect(decideAfterExit({ ...base, livenessKilled: true, becameReady: true }, policy)).toMatchObject({
      message: expect.stringMatching(/^liveness probe failed/),
    });
  });
});

async function fetchInfo(
  endpoint: string,
): Promise<{ cwd: string; pid: number; env: Record<string, string> }> {
  const response = await fetchJson(`http://${endpoint}/info`);
  return response as { cwd: string; pid: number; env: Record<string, string> };
}

async function fetchJson(url: string): Promise<unknown> {
  const { request } = await import("undici");
  const res = await request(url);
  return res.body.json();
}
