// A whole installation of real processes for end-to-end tests: `meridian control` and one `meridian plane`
// per region, each plane's ingress on its own loopback address (127.0.N.1), started the way an operator
// starts them, and stopped (SIGTERM, then SIGKILL) when the test is done.

import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import net from "node:net";
import { join, resolve } from "node:path";
import { loadSecretsKeyFile } from "../../src/lib/secret-box.ts";
import { ApiClient, tempDir } from "./control.ts";

export const BIN = resolve(import.meta.dirname, "../../bin/meridian.js");
export const DOMAIN = "meridian.test";

export interface ManagedProcess {
  child: ChildProcess;
  output: string[];
  /** Resolves with the first JSON log line whose `msg` matches. */
  waitForLog(msg: string, timeoutMs?: number): Promise<Record<string, unknown>>;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

/**
 * Every process started here and still running: killed when the test process exits, so a test that gave up
 * on its cluster (a hook that timed out before `cluster` was assigned, so its afterAll stopped nothing)
 * leaves no control plane or plane running for hours after the suite (seen: one from 08:42 at 10:58).
 */
const running = new Set<ChildProcess>();
process.once("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});

export function startProcess(args: string[], env: NodeJS.ProcessEnv = {}): ManagedProcess {
  const child = spawn(process.execPath, [BIN, ...args], {
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  running.add(child);
  child.once("exit", () => running.delete(child));
  const output: string[] = [];
  const waiters: Array<{ msg: string; resolve: (v: Record<string, unknown>) => void }> = [];
  const onLine = (line: string) => {
    output.push(line);
    if (output.length > 5000) output.shift();
    if (!line.startsWith("{")) return;
    try {
      const parsed = JSON.parse(line) as Record<string, unknown>;
      for (const w of [...waiters]) {
        if (parsed["msg"] === w.msg) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve(parsed);
        }
      }
    } catch {}
  };
  for (const stream of [child.stdout!, child.stderr!]) {
    let buf = "";
    stream.setEncoding("utf8");
    stream.on("data", (chunk: string) => {
      buf += chunk;
      let i = buf.indexOf("\n");
      while (i >= 0) {
        onLine(buf.slice(0, i));
        buf = buf.slice(i + 1);
        i = buf.indexOf("\n");
      }
    });
  }
  const exited = new Promise<number | null>((ok) => child.once("exit", (code) => ok(code)));
  return {
    child,
    output,
    waitForLog(msg, timeoutMs = 20_000) {
      const seen = output.find((l) => l.includes(`"msg":"${msg}"`));
      if (seen) return Promise.resolve(JSON.parse(seen));
      return new Promise((ok, fail) => {
        const timer = setTimeout(
          () => fail(new Error(`no '${msg}' log within ${timeoutMs} ms:\n${output.slice(-30).join("\n")}`)),
          timeoutMs,
        );
        waiters.push({
          msg,
          resolve: (v) => {
            clearTimeout(timer);
            ok(v);
          },
        });
        child.once("exit", (code) => {
          clearTimeout(timer);
          fail(new Error(`process exited (${code}) before '${msg}':\n${output.slice(-30).join("\n")}`));
        });
      });
    },
    async stop(signal = "SIGTERM") {
      if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
      child.kill(signal);
      const timer = setTimeout(() => child.kill("SIGKILL"), 15_000);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
  };
}

/**
 * A port that is free on `host` right now, picked below the kernel's ephemeral range (32768–60999 here):
 * a port the kernel hands out for `listen(0)` or an outgoing connection can be taken again by anyone
 * between this check and the plane's own listen, which under a loaded test run happens.
 */
export async function freePort(host: string): Promise<number> {
  for (let attempt = 0; attempt < 100; attempt++) {
    const port = 20_000 + Math.floor(Math.random() * 12_000);
    if (await canListen(host, port)) return port;
  }
  throw new Error(`no free port on ${host} between 20000 and 32000 after 100 tries`);
}

function canListen(host: string, port: number): Promise<boolean> {
  return new Promise((ok) => {
    const server = net.createServer();
    server.once("error", () => ok(false));
    server.listen(port, host, () => server.close(() => ok(true)));
  });
}

export interface PlaneHandle {
  name: string;
  region: string;
  host: string;
  port: number;
  admin: number;
  token: string;
  dataDir: string;
  process: ManagedProcess | null;
  start(): Promise<void>;
  stop(signal?: NodeJS.Signals): Promise<void>;
}

export interface Cluster {
  dir: string;
  /** The first control replica (the only one unless `controlReplicas` asked for more). */
  control: ManagedProcess;
  controlUrl: string;
  /** Every control replica, by index (`controls[0]` is `control`); all share one PostgreSQL. */
  controls: ManagedProcess[];
  controlUrls: string[];
  /** Starts control replica `i` again (after a stop) and waits until it listens. */
  startControlReplica(i: number): Promise<void>;
  stopControlReplica(i: number, signal?: NodeJS.Signals): Promise<void>;
  api: ApiClient;
  planes: Map<string, PlaneHandle>;
  plane(name: string): PlaneHandle;
  startControl(): Promise<void>;
  stopControl(signal?: NodeJS.Signals): Promise<void>;
  stop(): Promise<void>;
}

/** The four regions of the seed, one plane each; `us-1` is the global ingress. */
export const FOUR_REGIONS: ClusterOptions["planes"] = [
  { name: "us-1", region: "us", global: true },
  { name: "eu-1", region: "eu" },
  { name: "uk-1", region: "uk" },
  { name: "au-1", region: "au" },
];

export interface ClusterOptions {
  /** Planes to run: name, region, capacity, whether it is the global ingress, extra flags and environment. */
  planes: Array<{
    name: string;
    region: string;
    capacity?: number;
    global?: boolean;
    args?: string[];
    env?: Record<string, string>;
    /** Which control replica the plane watches and reports to (an index into `controlUrls`). Default 0. */
    control?: number;
  }>;
  databaseUrl?: string;
  /** Extra flags for `meridian control`. */
  controlArgs?: string[];
  /**
   * How many `meridian control` replicas to run on `databaseUrl` (PostgreSQL), all started at the same
   * moment on their own data directories with one shared secrets key file. Default 1.
   */
  controlReplicas?: number;
}

export async function startCluster(options: ClusterOptions): Promise<Cluster> {
  const dir = tempDir();
  const replicas = options.controlReplicas ?? 1;
  if (replicas > 1 && !options.databaseUrl) throw new Error("several control replicas need a databaseUrl");
  // One key file for every replica: they seal and open the same team secrets.
  const secretsKeyFile = join(dir, "secrets.key");
  if (replicas > 1) loadSecretsKeyFile(secretsKeyFile, { create: true });
  const argsOf: string[][] = [];
  const controlUrls: string[] = [];
  const controlDirs: string[] = [];
  for (let i = 0; i < replicas; i++) {
    const controlPort = await freePort("127.0.0.1");
    controlUrls.push(`http://127.0.0.1:${controlPort}`);
    const controlDir = join(dir, i === 0 ? "control" : `control-${i}`);
    controlDirs.push(controlDir);
    const args = [
      "control",
      "--data-dir",
      controlDir,
      "--listen",
      `127.0.0.1:${controlPort}`,
      "--domain",
      DOMAIN,
    ];
    if (options.databaseUrl) args.push("--database-url", options.databaseUrl);
    if (replicas > 1) args.push("--secrets-key-file", secretsKeyFile);
    args.push(...(options.controlArgs ?? []));
    argsOf.push(args);
  }
  const controlUrl = controlUrls[0]!;
  const controlArgs = argsOf[0]!;
  // Every replica at the same moment: on an empty database their first starts race (the bootstrap's lock).
  const controls = argsOf.map((args) => startProcess(args));

  const cluster: Cluster = {
    dir,
    control: controls[0]!,
    controlUrl,
    controls,
    controlUrls,
    api: new ApiClient(controlUrl, null),
    planes: new Map(),
    plane(name) {
      const p = this.planes.get(name);
      if (!p) throw new Error(`no plane ${name}`);
      return p;
    },
    async startControl() {
      this.control = startProcess(controlArgs);
      this.controls[0] = this.control;
      await this.control.waitForLog("control plane listening", 60_000);
    },
    async stopControl(signal = "SIGTERM") {
      await this.control.stop(signal);
    },
    async startControlReplica(i) {
      if (i === 0) return this.startControl();
      this.controls[i] = startProcess(argsOf[i]!);
      await this.controls[i]!.waitForLog("control plane listening", 60_000);
    },
    async stopControlReplica(i, signal = "SIGTERM") {
      await this.controls[i]!.stop(signal);
    },
    async stop() {
      await Promise.all([...this.planes.values()].map((p) => p.stop()));
      await Promise.all(this.controls.map((c) => c.stop()));
    },
  };
  await Promise.all(controls.map((c) => c.waitForLog("control plane listening", 60_000)));
  // Exactly one replica made the first start; it saved the admin key under its data directory.
  const keyFiles = controlDirs.filter((d) => existsSync(join(d, "admin.key")));
  if (keyFiles.length !== 1) throw new Error(`expected one admin.key, found ${keyFiles.length}`);
  const adminKey = readFileSync(join(keyFiles[0]!, "admin.key"), "utf8").trim();
  cluster.api = new ApiClient(controlUrl, adminKey);

  let octet = 1;
  for (const spec of options.planes) {
    const host = `127.0.${octet++}.1`;
    const port = await freePort(host);
    const admin = await freePort(host);
    const registered = await cluster.api.post("/v1/admin/planes", {
      name: spec.name,
      region: spec.region,
      ingress: [`${host}:${port}`],
      capacity: spec.capacity ?? 8,
      global_ingress: spec.global ?? false,
    });
    if (registered.status !== 200)
      throw new Error(`register ${spec.name}: ${JSON.stringify(registered.body)}`);
    const dataDir = join(dir, "planes", spec.name);
    mkdirSync(dataDir, { recursive: true });
    const tokenFile = join(dataDir, "..", `${spec.name}.token`);
    writeFileSync(tokenFile, registered.body.credential, { mode: 0o600 });
    const handle: PlaneHandle = {
      name: spec.name,
      region: spec.region,
      host,
      port,
      admin,
      token: registered.body.credential,
      dataDir,
      process: null,
      async start() {
        this.process = startProcess(
          [
            "plane",
            "--name",
            spec.name,
            "--region",
            spec.region,
            "--control-url",
            controlUrls[spec.control ?? 0] ?? controlUrl,
            "--token-file",
            tokenFile,
            "--data-dir",
            dataDir,
            "--ingress",
            `${host}:${port}`,
            "--admin",
            `${host}:${admin}`,
            ...(spec.args ?? []),
          ],
          spec.env,
        );
        await this.process.waitForLog("plane started", 60_000);
      },
      async stop(signal = "SIGTERM") {
        await this.process?.stop(signal);
        this.process = null;
      },
    };
    cluster.planes.set(spec.name, handle);
  }
  await Promise.all([...cluster.planes.values()].map((p) => p.start()));
  return cluster;
}

/** Polls `fn` until it returns a truthy value, or fails with the last value after `timeoutMs`. */
export async function eventually<T>(
  fn: () => Promise<T>,
  timeoutMs = 20_000,
  intervalMs = 100,
): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  let last: T | undefined;
  for (;;) {
    last = await fn();
    if (last) return last as NonNullable<T>;
    if (Date.now() > deadline)
      throw new Error(`condition not met within ${timeoutMs} ms; last: ${JSON.stringify(last)}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}
