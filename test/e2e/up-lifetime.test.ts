// Nothing outlives `meridian up`. SIGKILL it — while it starts, or running with replicas, one of which
// ignores SIGTERM and forks a helper that ignores it too — and every process it started is gone within 5 s,
// checked by pid (walking /proc for its descendants); the next `up` on the same ports and data directory
// starts and has its state. Its ordinary life stays as it was: a crashed child is restarted, Ctrl-C drains
// in order, and the secrets on disk are readable by their owner alone, tried as another user.

import { execFile, spawn } from "node:child_process";
import { chmodSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BIN, freePort } from "../support/cluster.ts";
import { tempDir } from "../support/control.ts";

const run = promisify(execFile);
const EXAMPLES = resolve(import.meta.dirname, "../../examples");
const PLANES = ["us-1", "eu-1", "uk-1", "au-1"];
/** What the guarantee promises: every process `up` started is gone this long after its death. */
const WITHIN_MS = 5_000;

/** One process as /proc shows it; `start` (boot-relative start time) tells a reused pid apart. */
interface Proc {
  pid: number;
  ppid: number;
  start: string;
  argv: string[];
}

function readProc(pid: number): (Proc & { state: string }) | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // After the parenthesised command name: state, ppid, …, starttime is field 22 (proc(5)).
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const argv = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").slice(0, -1);
    return { pid, ppid: Number(fields[1]), state: fields[0]!, start: fields[19]!, argv };
  } catch {
    return null;
  }
}

function allProcs(): Proc[] {
  const procs: Proc[] = [];
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    const p = readProc(Number(name));
    if (p && p.state !== "Z" && p.state !== "X") procs.push(p);
  }
  return procs;
}

/** `root` and all its descendants, recursively (children of children: replicas and what they fork). */
function processTree(root: number): Proc[] {
  const procs = allProcs();
  const tree: Proc[] = [];
  const queue = [root];
  while (queue.length > 0) {
    const pid = queue.shift()!;
    for (const p of procs) {
      if (p.pid === pid && !tree.includes(p)) tree.push(p);
      if (p.ppid === pid) queue.push(p.pid);
    }
  }
  return tree;
}

/** Still the same process, and not a zombie waiting for its new parent to reap it. */
function alive(p: Proc): boolean {
  const now = readProc(p.pid);
  return now !== null && now.start === p.start && now.state !== "Z" && now.state !== "X";
}

/** Waits until `left()` is empty, or `ms` passed; returns what is still there. */
async function survivors(left: () => Proc[], ms = WITHIN_MS): Promise<Proc[]> {
  const deadline = Date.now() + ms;
  for (;;) {
    const now = left();
    if (now.length === 0 || Date.now() >= deadline) return now;
    await sleep(50);
  }
}

const describeProc = (p: Proc) => `${p.pid}: ${p.argv.join(" ")}`;

interface Up {
  pid: number;
  output: string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  kill(signal: NodeJS.Signals): void;
  running(): boolean;
}

function startUp(cwd: string, args: string[]): Up {
  const child = spawn(process.execPath, [BIN, "up", ...args], { cwd, stdio: ["ignore", "pipe", "pipe"] });
  const up: Up = {
    pid: child.pid!,
    output: "",
    exited: new Promise((ok) => child.once("exit", (code, signal) => ok({ code, signal }))),
    kill: (signal) => child.kill(signal),
    running: () => child.exitCode === null && child.signalCode === null,
  };
  child.stdout!.on("data", (d: Buffer) => (up.output += d.toString()));
  child.stderr!.on("data", (d: Buffer) => (up.output += d.toString()));
  return up;
}

async function until<T>(what: string, up: Up, probe: () => T | undefined | false, ms = 120_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = probe();
    if (value) return value;
    if (!up.running()) throw new Error(`meridian up exited before ${what}:\n${up.output}`);
    if (Date.now() > deadline) throw new Error(`no ${what} within ${ms} ms:\n${up.output}`);
    await sleep(100);
  }
}

const mode = (path: string) => statSync(path).mode & 0o777;
const isRole = (p: Proc, role: string) => p.argv[1]?.endsWith("meridian.js") && p.argv[2] === role;
const planeNamed = (p: Proc, name: string) => isRole(p, "plane") && p.argv.includes(name);

// A hostile replica: its runtime stops heeding SIGTERM once it has answered, and it forks a helper in its
// process group that never heeds it. Only SIGKILL of the group after the grace stops them, and a plane's
// usual 10 s grace would outlast the 5 s promise.
const STUBBORN_CONFIG = "model_name: stubborn\n";
const STUBBORN_MODEL = `
import { spawn } from "node:child_process";

export class Model {
  #helper = null;

  async load() {
    this.#helper = spawn(process.execPath, ["-e", "process.on('SIGTERM', () => {}); setInterval(() => {}, 1000); // stubborn-helper"], { stdio: "ignore" });
  }

  predict() {
    process.removeAllListeners("SIGTERM");
    process.on("SIGTERM", () => {});
    return { pid: process.pid, helper: this.#helper.pid };
  }
}
`;

describe("nothing outlives meridian up", () => {
  const dir = tempDir();
  const dataDir = join(dir, ".meridian");
  let flags: string[];
  let up: Up | null = null;

  async function meridian(...args: string[]): Promise<any> {
    const env: NodeJS.ProcessEnv = { ...process.env, XDG_CONFIG_HOME: join(dir, "config") };
    for (const k of ["MERIDIAN_API_URL", "MERIDIAN_API_KEY", "MERIDIAN_DNS", "MERIDIAN_CA_FILE"])
      delete env[k];
    const { stdout } = await run(process.execPath, [BIN, ...args, "--json"], {
      cwd: dir,
      env,
      timeout: 120_000,
    });
    return JSON.parse(stdout);
  }

  /** As another user (nobody), from inside the installation's directory. */
  async function asNobody(...argv: string[]): Promise<{ ok: boolean; stderr: string }> {
    try {
      await run("setpriv", ["--reuid", "65534", "--regid", "65534", "--clear-groups", ...argv], { cwd: dir });
      return { ok: true, stderr: "" };
    } catch (err) {
      return { ok: false, stderr: (err as { stderr: string }).stderr };
    }
  }

  /** Every process that names this installation's directory: a restarted child would show up here. */
  const leftovers = () => allProcs().filter((p) => p.argv.some((a) => a.includes(dir)));

  /**
   * What is left WITHIN_MS after `up` ended (SIGKILLed here, or by itself) of its tree, collected just
   * before, and of anything else naming its directory (a child it was spawning at that moment).
   */
  async function leftAfter(tree: Proc[], signal: NodeJS.Signals | null): Promise<string[]> {
    if (signal) up!.kill(signal);
    await up!.exited;
    const left = await survivors(() => [
      ...new Map([...tree.filter(alive), ...leftovers()].map((p) => [p.pid, p])).values(),
    ]);
    return left.map(describeProc);
  }

  beforeAll(async () => {
    // The test's own directory is open to everyone, so only the modes `up` sets keep other users out.
    chmodSync(dir, 0o755);
    flags = [
      "--control-port",
      String(await freePort("127.0.0.1")),
      "--https-port",
      String(await freePort("127.0.1.1")),
      "--admin-port",
      String(await freePort("127.0.1.1")),
      "--dns",
      `127.0.0.1:${await freePort("127.0.0.1")}`,
    ];
  });

  afterAll(async () => {
    if (up?.running()) {
      up.kill("SIGINT");
      await up.exited;
    }
    // Only what this test started: processes naming its directory.
    for (const p of leftovers()) process.kill(p.pid, "SIGKILL");
  }, 60_000);

  it("SIGKILLed while it is still starting, leaves no process behind within 5 s", async () => {
    up = startUp(dir, flags);
    const tree = await until("a running plane", up, () => {
      const t = processTree(up!.pid);
      return t.some((p) => isRole(p, "plane")) && t;
    });
    expect(up.output).not.toContain("Meridian is up.");
    expect(tree.some((p) => isRole(p, "control"))).toBe(true);
    const left = await leftAfter(tree, "SIGKILL");
    expect(left, left.join("\n")).toEqual([]);
  }, 150_000);

  it("starts again on the same ports and data directory, and keeps its secrets from other users", async () => {
    up = startUp(dir, flags);
    await until("'Stop with Ctrl-C'", up, () => up!.output.includes("Stop with Ctrl-C"));

    expect(mode(join(dataDir, "control"))).toBe(0o700);
    expect(mode(join(dataDir, "control", "admin.key"))).toBe(0o600);
    expect(mode(join(dataDir, "control", "secrets.key"))).toBe(0o600);
    // Planes' directories may be passed through, not listed: sandboxed replicas run as another uid and
    // bwrap resolves their binds (under the plane's directory) as that uid. Their secrets are 0600 files.
    expect(mode(join(dataDir, "planes"))).toBe(0o711);
    for (const name of PLANES) {
      expect(mode(join(dataDir, "planes", name))).toBe(0o711);
      expect(mode(join(dataDir, "planes", name, "plane.key"))).toBe(0o600);
      expect(mode(join(dataDir, "planes", name, "snapshot.json"))).toBe(0o600);
      expect(mode(join(dataDir, "planes", `${name}.token`))).toBe(0o600);
    }
    // The attempt can reach the installation (up.json is public) but none of its secrets.
    expect((await asNobody("cat", ".meridian/up.json")).ok).toBe(true);
    for (const target of [
      ".meridian/planes/eu-1.token",
      ".meridian/planes/eu-1/snapshot.json",
      ".meridian/planes/eu-1/plane.key",
      ".meridian/control/admin.key",
      ".meridian/control/secrets.key",
      ".meridian/control/meridian.db",
    ]) {
      const attempt = await asNobody("cat", target);
      expect(attempt, target).toMatchObject({ ok: false });
      expect(attempt.stderr).toContain("Permission denied");
    }
    expect((await asNobody("ls", ".meridian/planes")).ok).toBe(false);
  }, 150_000);

  it("restarts a child that crashes", async () => {
    const before = processTree(up!.pid).find((p) => planeNamed(p, "eu-1"))!;
    process.kill(before.pid, "SIGKILL");
    await until("the restart notice", up!, () => up!.output.includes("! eu-1 exited (SIGKILL); restarting"));
    await until("a new eu-1", up!, () =>
      processTree(up!.pid).find((p) => planeNamed(p, "eu-1") && p.pid !== before.pid),
    );
    const example = JSON.parse(readFileSync(join(dataDir, "example.json"), "utf8"));
    const deadline = Date.now() + 60_000;
    for (;;) {
      const res = await meridian("predict", "--model", example.id, "--regional", "prod-eu").catch(() => null);
      if (res?.status === 200) {
        expect(res.processed).toMatchObject({ region: "eu", plane: "eu-1" });
        break;
      }
      if (Date.now() > deadline) throw new Error("eu-1 did not serve again after its restart");
      await sleep(300);
    }
  }, 120_000);

  it("SIGKILLed with replicas running, one of them stubborn, leaves no process behind within 5 s", async () => {
    const pkg = join(dir, "stubborn");
    mkdirSync(join(pkg, "model"), { recursive: true });
    writeFileSync(join(pkg, "config.yaml"), STUBBORN_CONFIG);
    writeFileSync(join(pkg, "model", "model.js"), STUBBORN_MODEL);
    const pushed = await meridian("push", pkg, "--environment", "prod-eu", "--wait");
    expect(pushed.deployment.status).toBe("ACTIVE");
    const answer = await meridian("predict", "--model", pushed.model.id, "--regional", "prod-eu");
    expect(answer.status).toBe(200);
    // A custom server too: a process the replica's runtime starts in a process group of its own.
    const custom = await meridian(
      "push",
      join(EXAMPLES, "custom-python"),
      "--environment",
      "prod-eu",
      "--wait",
    );
    expect(custom.deployment.status).toBe("ACTIVE");

    const tree = processTree(up!.pid);
    const replicas = tree.filter((p) => isRole(p, "serve-model"));
    expect(replicas.length).toBeGreaterThanOrEqual(3);
    expect(tree.some((p) => p.argv.some((a) => a.endsWith("python3")) && p.argv.includes("server.py"))).toBe(
      true,
    );
    // The model reports pids of its own PID namespace (it is sandboxed); on the host its helper is found
    // by its command line, in up's tree like every replica process.
    expect(answer.body.helper).toBeGreaterThan(0);
    expect(tree.some((p) => p.argv.some((a) => a.includes("stubborn-helper")))).toBe(true);
    for (const role of ["control", "dns"]) expect(tree.some((p) => isRole(p, role))).toBe(true);
    for (const name of PLANES) expect(tree.some((p) => planeNamed(p, name))).toBe(true);

    expect(await leftAfter(tree, "SIGKILL")).toEqual([]);
    // Each stopped because its parent was gone, and no one started it again.
    for (const log of ["control", "dns", ...PLANES]) {
      expect(readFileSync(join(dataDir, "logs", `${log}.log`), "utf8"), log).toContain(
        "the process that started it is gone",
      );
    }
    await sleep(1_500);
    expect(leftovers().map(describeProc)).toEqual([]);
  }, 150_000);

  it("then starts on the same ports and data directory with its state, tightening loosened modes", async () => {
    // As an older version or a careless restore would leave them.
    chmodSync(join(dataDir, "control"), 0o755);
    chmodSync(join(dataDir, "planes", "eu-1"), 0o755);
    chmodSync(join(dataDir, "planes", "eu-1.token"), 0o644);
    up = startUp(dir, flags);
    await until("'Stop with Ctrl-C'", up, () => up!.output.includes("Stop with Ctrl-C"));
    expect(up.output).not.toContain("First start");
    expect(mode(join(dataDir, "control"))).toBe(0o700);
    expect(mode(join(dataDir, "planes", "eu-1"))).toBe(0o711);
    expect(mode(join(dataDir, "planes", "eu-1.token"))).toBe(0o600);

    const models = await meridian("models");
    expect(new Set(models.models.map((m: { name: string }) => m.name))).toEqual(
      new Set(["hello", "stubborn", "custom-python"]),
    );
    const example = JSON.parse(readFileSync(join(dataDir, "example.json"), "utf8"));
    const deadline = Date.now() + 60_000;
    for (;;) {
      const res = await meridian("predict", "--model", example.id, "--regional", "prod-eu").catch(() => null);
      if (res?.status === 200) break;
      if (Date.now() > deadline) throw new Error("the example was not served after the restart");
      await sleep(300);
    }
  }, 150_000);

  it("drains on Ctrl-C in order (DNS, planes, control plane) and leaves nothing", async () => {
    const tree = processTree(up!.pid);
    up!.kill("SIGINT");
    expect(await up!.exited).toEqual({ code: 0, signal: null });
    expect(await leftAfter(tree, null)).toEqual([]);
    const stops = up!.output
      .split("\n")
      .map((l) => /^ {2}(\S+) stopped$/.exec(l)?.[1])
      .filter((n) => n !== undefined);
    expect(stops).toEqual(["dns", "au-1", "uk-1", "eu-1", "us-1", "control"]);
  }, 90_000);
});
