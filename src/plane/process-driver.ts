// The `process` replica driver: each replica is a child process of this host, inside the plane's sandbox
// (bubblewrap; see sandbox.ts) unless the operator chose none, listening on a free loopback port or, under
// egress `deny`, on a Unix socket. Owns spawning, HTTP readiness/liveness probing, crash restarts with
// capped exponential backoff, per-replica log capture (ring buffer + file) and graceful stops. Before a
// run it provides what the spec declares: a truss package's Python (an interpreter, a virtualenv of its
// requirements, built with its output in the replica's logs) and the replica's secrets, fetched at every
// start into a directory only that replica reads.

import { type ChildProcess, spawn } from "node:child_process";
import { createWriteStream, readFileSync, type WriteStream } from "node:fs";
import { mkdir, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { type RequestOptions, request } from "node:http";
import { createServer } from "node:net";
import { join } from "node:path";
import { StringDecoder } from "node:string_decoder";
import { setTimeout as sleep } from "node:timers/promises";
import type { ReplicaState } from "../core/domain.ts";
import { LIFELINE_ENV, LIFELINE_FD } from "../lib/lifeline.ts";
import {
  formatListen,
  invalidSpecReason,
  type ListenAddress,
  type LogLine,
  type LogQuery,
  type ReplicaDriver,
  type ReplicaEvent,
  type ReplicaEventListener,
  type ReplicaPython,
  type ReplicaSpec,
  type ReplicaStatus,
  renderCommand,
} from "./driver.ts";
import {
  adoptSocket,
  type ReplicaRoom,
  type ReplicaSandbox,
  SandboxRefusal,
  type SpawnPlan,
} from "./sandbox.ts";
import { ReplicaSecretsError, removeReplicaSecrets } from "./secrets.ts";

/** What a spec's `python` runs on (src/plane/python-env.ts PlanePython). */
export interface ReplicaPythonProvider {
  /**
   * A failure is the build's (pip's error, no fitting interpreter): the replica is BUILD_FAILED. `onBuilding`
   * is called when an environment must be built (not for a cached one): the replica is BUILDING meanwhile.
   */
  prepare(
    wanted: ReplicaPython,
    onLine: (line: { stream: string; line: string }) => void,
    onBuilding: () => void,
  ): Promise<
    { ok: true; python: string; readOnly: string[]; venv: string | null } | { ok: false; message: string }
  >;
}

/**
 * Fetches a replica's secrets into `dir` and returns the names written (src/plane/secrets.ts
 * fetchReplicaSecrets, with the plane's credential); throws ReplicaSecretsError.
 */
export type ReplicaSecretsFetch = (replicaId: string, dir: string) => Promise<string[]>;

/** pino's Logger fits; the driver logs a fixed message plus fields. */
export interface DriverLogger {
  info(fields: object, msg: string): void;
  warn(fields: object, msg: string): void;
}

export interface ProcessDriverOptions {
  /** The plane's data directory; replica logs go to `{dataDir}/logs/{replicaId}.log`. */
  dataDir: string;
  /** Address replicas listen on; `{host}` in commands. Default 127.0.0.1. */
  host?: string;
  /**
   * How replicas run: inside bubblewrap, unsandboxed (`--sandbox none`), or not at all (the sandbox failed
   * its self-test: every replica is FAILED with the reason). It also builds each replica's environment.
   */
  sandbox: ReplicaSandbox;
  /** A replica not READY this long after start becomes UNHEALTHY (and keeps being probed). Default 300 s. */
  readinessTimeoutMs?: number;
  /** Readiness polling interval before the first READY. Default 200 ms. */
  readinessIntervalMs?: number;
  /** Liveness and readiness probing interval once READY. Default 5 s. */
  probeIntervalMs?: number;
  probeTimeoutMs?: number;
  /** Consecutive liveness failures that restart a replica. Default 3. */
  livenessFailureThreshold?: number;
  /** Restart delay after the n-th consecutive crash: min(base * 2^(n-1), max). Defaults 1 s and 60 s. */
  backoffBaseMs?: number;
  backoffMaxMs?: number;
  /** A run shorter than this is a fast crash; a longer one resets the backoff. Default 30 s. */
  stableAfterMs?: number;
  /** Consecutive fast crashes after which the replica is FAILED and not restarted. Default 5. */
  maxFastCrashes?: number;
  /** Time between SIGTERM and SIGKILL. Default 10 s. */
  stopGraceMs?: number;
  /** Lines kept in memory per replica. Default 2000. */
  logRingSize?: number;
  /** Finds a free port on `host`; replaceable so tests can hand out a taken one. */
  allocatePort?: (host: string) => Promise<number>;
  /** Provides `python` of a spec; without it such a replica is FAILED (this plane runs no Python). */
  python?: ReplicaPythonProvider;
  /** Fetches `secrets` of a spec; without it a replica that names secrets is FAILED. */
  secrets?: ReplicaSecretsFetch;
  logger?: DriverLogger;
}

type Settings = Required<Omit<ProcessDriverOptions, "logger" | "python" | "secrets">> & {
  logger: DriverLogger | null;
  python: ReplicaPythonProvider | null;
  secrets: ReplicaSecretsFetch | null;
};

/** What a run was given besides its package: filled into its command and its sandbox. */
interface Provided {
  python?: string;
  readOnly: string[];
  venv?: string;
  /** Whether its secrets directory is in place (bound at /secrets). */
  secrets: boolean;
}

const MAX_LINE_CHARS = 16 * 1024;
const TAIL_LINES = 12;
/** Port clashes retried on a fresh port without counting as crashes, at most this often in a row. */
const MAX_PORT_RETRIES = 3;

/** Restart delay after the `crashes`-th consecutive crash (1-based). */
export function backoffDelayMs(crashes: number, baseMs: number, maxMs: number): number {
  return Math.min(maxMs, baseMs * 2 ** Math.max(0, crashes - 1));
}

export type ExitDecision =
  | { kind: "failed"; message: string }
  | { kind: "retry_port"; message: string }
  | { kind: "restart"; crashes: number; delayMs: number; message: string };

export interface ExitFacts {
  code: number | null;
  signal: string | null;
  ranMs: number;
  /** Whether this run ever answered readiness 200. */
  becameReady: boolean;
  /** The spec's reason for this exit code when it is one of its fatal_exit_codes, else null. */
  fatalReason: string | null;
  /** This run's output says its port was taken (EADDRINUSE) and it never became ready. */
  portInUse: boolean;
  portRetries: number;
  /** Consecutive crashes before this one. */
  crashes: number;
  /** Set when the driver killed the run because liveness failed. */
  livenessKilled: boolean;
}

/** What to do when a replica's process ended without being asked to: the driver's policy, pure. */
export function decideAfterExit(
  facts: ExitFacts,
  policy: Pick<Settings, "backoffBaseMs" | "backoffMaxMs" | "stableAfterMs" | "maxFastCrashes">,
): ExitDecision {
  const how = describeExit(facts.code, facts.signal);
  if (!facts.becameReady && facts.fatalReason !== null) {
    return { kind: "failed", message: `${facts.fatalReason}: the process ${how} before becoming ready` };
  }
  if (!facts.becameReady && facts.portInUse && facts.portRetries < MAX_PORT_RETRIES) {
    return {
      kind: "retry_port",
      message: `port taken (EADDRINUSE); the process ${how}; retrying on another port`,
    };
  }
  const fast = facts.ranMs < policy.stableAfterMs;
  const crashes = fast ? facts.crashes + 1 : 1;
  const cause = facts.livenessKilled ? "liveness probe failed; " : "";
  if (fast && crashes >= policy.maxFastCrashes) {
    return {
      kind: "failed",
      message: `${cause}the process ${how}: ${crashes} crashes in a row, each within ${policy.stableAfterMs} ms of starting; not restarting`,
    };
  }
  const delayMs = backoffDelayMs(crashes, policy.backoffBaseMs, policy.backoffMaxMs);
  return {
    kind: "restart",
    crashes,
    delayMs,
    message: `${cause}the process ${how}; restarting in ${delayMs} ms`,
  };
}

function describeExit(code: number | null, signal: string | null): string {
  return signal !== null ? `was killed by ${signal}` : `exited with code ${code}`;
}

export class ProcessDriver implements ReplicaDriver {
  readonly #settings: Settings;
  readonly #replicas = new Map<string, ProcessReplica>();
  /** Per-replica-id operation chain: ensure/remove of one id never interleave. */
  readonly #ops = new Map<string, Promise<void>>();
  readonly #listeners = new Set<ReplicaEventListener>();
  readonly #reservedPorts = new Set<number>();
  #phase: "new" | "started" | "stopped" = "new";

  constructor(options: ProcessDriverOptions) {
    this.#settings = {
      dataDir: options.dataDir,
      host: options.host ?? "127.0.0.1",
      sandbox: options.sandbox,
      readinessTimeoutMs: options.readinessTimeoutMs ?? 300_000,
      readinessIntervalMs: options.readinessIntervalMs ?? 200,
      probeIntervalMs: options.probeIntervalMs ?? 5_000,
      probeTimeoutMs: options.probeTimeoutMs ?? 2_000,
      livenessFailureThreshold: options.livenessFailureThreshold ?? 3,
      backoffBaseMs: options.backoffBaseMs ?? 1_000,
      backoffMaxMs: options.backoffMaxMs ?? 60_000,
      stableAfterMs: options.stableAfterMs ?? 30_000,
      maxFastCrashes: options.maxFastCrashes ?? 5,
      stopGraceMs: options.stopGraceMs ?? 10_000,
      logRingSize: options.logRingSize ?? 2_000,
      allocatePort: options.allocatePort ?? freeLoopbackPort,
      python: options.python ?? null,
      secrets: options.secrets ?? null,
      logger: options.logger ?? null,
    };
  }

  async start(): Promise<void> {
    if (this.#phase !== "new") throw new Error(`process driver cannot start: it is ${this.#phase}`);
    await mkdir(join(this.#settings.dataDir, "logs"), { recursive: true });
    await mkdir(join(this.#settings.dataDir, "run"), { recursive: true });
    await this.#killLeftovers();
    this.#phase = "started";
  }

  /** Stops every replica; `graceMs` overrides `stopGraceMs` (a plane whose parent is gone hurries). */
  async stop(options: { graceMs?: number } = {}): Promise<void> {
    if (this.#phase === "stopped") return;
    this.#phase = "stopped";
    await Promise.allSettled([...this.#ops.values()]);
    await Promise.all([...this.#replicas.keys()].map((id) => this.#removeNow(id, options.graceMs)));
  }

  ensure(spec: ReplicaSpec): Promise<void> {
    const reason = invalidSpecReason(spec);
    if (reason !== null) return Promise.reject(new Error(`invalid replica spec: ${reason}`));
    const key = JSON.stringify(spec);
    return this.#serialized(spec.id, async () => {
      if (this.#phase !== "started")
        throw new Error(`process driver is ${this.#phase}; cannot ensure a replica`);
      const existing = this.#replicas.get(spec.id);
      if (existing !== undefined && existing.specKey === key) return;
      if (existing !== undefined) await this.#removeNow(spec.id);
      const replica = new ProcessReplica(structuredClone(spec), key, this.#settings, {
        emit: (event) => this.#emit(event),
        reservePort: () => this.#reservePort(),
        releasePort: (port) => this.#reservedPorts.delete(port),
      });
      this.#replicas.set(spec.id, replica);
      await replica.open();
    });
  }

  remove(id: string): Promise<void> {
    return this.#serialized(id, () => this.#removeNow(id));
  }

  async list(): Promise<ReplicaStatus[]> {
    return [...this.#replicas.values()].map((replica) => replica.snapshot());
  }

  async logs(id: string, query: LogQuery = {}): Promise<LogLine[]> {
    return this.#replicas.get(id)?.logs(query) ?? [];
  }

  subscribe(listener: ReplicaEventListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /**
   * Replicas of a previous driver on this data dir that died without stop() (SIGKILL, power loss) still
   * run and hold ports; each run leaves `run/{id}.json` until its process is gone. Kill those groups,
   * but only where /proc shows the recorded command, so a reused pid is never hit (Linux only).
   */
  async #killLeftovers(): Promise<void> {
    const runDir = join(this.#settings.dataDir, "run");
    for (const name of await readdir(runDir)) {
      const file = join(runDir, name);
      try {
        const { pid, argv } = JSON.parse(await readFile(file, "utf8")) as { pid: number; argv: string[] };
        const cmdline = await readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => null);
        if (cmdline === `${argv.join("\0")}\0`) {
          process.kill(-pid, "SIGKILL");
          this.#settings.logger?.warn({ pid, file: name }, "killed a replica left over by a previous run");
        }
      } catch (err) {
        this.#settings.logger?.warn({ err, file: name }, "could not check a leftover replica");
      }
      await rm(file, { force: true });
    }
  }

  async #removeNow(id: string, graceMs?: number): Promise<void> {
    const replica = this.#replicas.get(id);
    if (replica === undefined) return;
    await replica.close(graceMs);
    this.#replicas.delete(id);
    this.#emit({ type: "removed", id, deployment_id: replica.spec.deployment_id });
  }

  #serialized(id: string, op: () => Promise<void>): Promise<void> {
    const previous = this.#ops.get(id) ?? Promise.resolve();
    const next = previous.then(op, op);
    const tracked = next.catch(() => {});
    this.#ops.set(id, tracked);
    void tracked.then(() => {
      if (this.#ops.get(id) === tracked) this.#ops.delete(id);
    });
    return next;
  }

  #emit(event: ReplicaEvent): void {
    for (const listener of this.#listeners) {
      try {
        listener(event);
      } catch (err) {
        this.#settings.logger?.warn({ err }, "replica event listener threw");
      }
    }
  }

  async #reservePort(): Promise<number> {
    // The OS hands out ports round-robin, so a port one of our replicas holds rarely comes back; when it
    // does, ask again rather than give two replicas one port.
    for (let attempt = 0; attempt < 20; attempt++) {
      const port = await this.#settings.allocatePort(this.#settings.host);
      if (!this.#reservedPorts.has(port)) {
        this.#reservedPorts.add(port);
        return port;
      }
    }
    throw new Error("no free port found");
  }
}

/** Binds port 0 on `host` and releases it. Another process may take it before the replica binds it; the
 * replica then exits with EADDRINUSE and the driver retries on another port (decideAfterExit). */
export function freeLoopbackPort(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.once("error", reject);
    server.listen(0, host, () => {
      const address = server.address();
      server.close(() => {
        if (address !== null && typeof address === "object") resolve(address.port);
        else reject(new Error("could not read the bound port"));
      });
    });
  });
}

interface ReplicaHooks {
  emit(event: ReplicaEvent): void;
  reservePort(): Promise<number>;
  releasePort(port: number): void;
}

/** One run of a replica's command: one child process and what the driver knows about it. */
interface Run {
  /** The spawned process: the command itself, or (sandboxed) bwrap. */
  child: ChildProcess;
  /** The loopback port reserved for this run; null when it listens on a Unix socket. */
  port: number | null;
  /** Where the plane reaches the run: `host:port`, or the host side of its Unix socket. */
  target: ListenAddress;
  /** The endpoint reported while READY: `host:port` or `unix:/path`. */
  endpoint: string;
  /** Sandboxed runs: PID 1 of the sandbox's PID namespace (host pid), once bwrap has told it. */
  sandbox: { initPid: number | null; told: Promise<void> } | null;
  /** Unix-socket runs: the runtime's socket has been moved out of the replica's reach (adoptSocket). */
  adopted: boolean;
  startedAt: number;
  becameReady: boolean;
  livenessKilled: boolean;
  /** Aborted when the run ends or the replica closes: stops its probes. */
  abort: AbortController;
  exited: Promise<void>;
  /** Resolves when stdout and stderr are drained (or a short wait after exit has passed). */
  drained: Promise<void>;
  firstLine: number;
  portReleased: boolean;
}

interface FailOptions {
  /** Whether the message ends with the last lines of the replica's output. Default true. */
  tail?: boolean;
  /** BUILD_FAILED for a build of the replica's environment that failed. Default FAILED. */
  state?: "FAILED" | "BUILD_FAILED";
}

class ProcessReplica {
  readonly spec: ReplicaSpec;
  readonly specKey: string;
  readonly #settings: Settings;
  readonly #hooks: ReplicaHooks;
  readonly #ring: LogRing;
  #status: ReplicaStatus;
  #run: Run | null = null;
  #closing = false;
  #crashes = 0;
  #portRetries = 0;
  #restartTimer: AbortController | null = null;
  #logFile: WriteStream | null = null;
  /** Writes and deletes of the run file, in order. */
  #runFileOps: Promise<void> = Promise.resolve();
  /** The replica's private directory (and socket paths), from its first launch until it is closed. */
  #room: ReplicaRoom | null = null;
  /** The launch in progress; close() waits for it, so a half-made run is never left behind. */
  #launching: Promise<void> | null = null;
  /** Whether a start of this replica had its secrets written (a later start may keep them: see #provide). */
  #secretsFetched = false;
  /** Consecutive starts that could not reach the control plane for the secrets. */
  #secretsRetries = 0;

  constructor(spec: ReplicaSpec, specKey: string, settings: Settings, hooks: ReplicaHooks) {
    this.spec = spec;
    this.specKey = specKey;
    this.#settings = settings;
    this.#hooks = hooks;
    this.#ring = new LogRing(settings.logRingSize);
    this.#status = {
      id: spec.id,
      deployment_id: spec.deployment_id,
      model_id: spec.model_id,
      environment: spec.environment,
      state: "PENDING",
      endpoint: null,
      message: null,
      restarts: 0,
      started_at: null,
    };
  }

  snapshot(): ReplicaStatus {
    return { ...this.#status };
  }

  logs(query: LogQuery): LogLine[] {
    return this.#ring.query(query);
  }

  async open(): Promise<void> {
    this.#logFile = createWriteStream(join(this.#settings.dataDir, "logs", `${this.spec.id}.log`), {
      flags: "a",
    });
    this.#logFile.on("error", (err) =>
      this.#settings.logger?.warn({ err, replica: this.spec.id }, "log file error"),
    );
    this.#hooks.emit({ type: "state", replica: this.snapshot(), previous: null });
    this.#launch();
  }

  /** Stops the replica for good: SIGTERM, SIGKILL after the grace period; then removes its private files. */
  async close(graceMs = this.#settings.stopGraceMs): Promise<void> {
    this.#closing = true;
    this.#restartTimer?.abort();
    await this.#launching;
    const run = this.#run;
    if (run !== null) {
      this.#set({ state: "STOPPING", endpoint: null, message: null });
      run.abort.abort();
      await terminateRun(run, graceMs);
      this.#note(`stopped (${describeExit(run.child.exitCode, run.child.signalCode)})`);
      this.#runFile(null);
      this.#releasePort(run);
      // A process that left the group (setsid) could hold the pipes open for ever.
      await Promise.race([run.drained, sleep(1_000)]);
    }
    await this.#runFileOps;
    const room = this.#room;
    this.#room = null;
    if (room !== null) {
      await this.#settings.sandbox
        .close(room)
        .catch((err) =>
          this.#settings.logger?.warn({ err, replica: this.spec.id }, "private directory not removed"),
        );
    }
    const file = this.#logFile;
    this.#logFile = null;
    if (file !== null) await new Promise<void>((resolve) => file.end(resolve));
  }

  #launch(): void {
    const launching = this.#launchNow().finally(() => {
      if (this.#launching === launching) this.#launching = null;
    });
    this.#launching = launching;
  }

  async #launchNow(): Promise<void> {
    if (this.#closing) return;
    const { sandbox, host } = this.#settings;
    try {
      this.#room ??= await sandbox.open(this.spec.id);
    } catch (err) {
      this.#fail(
        err instanceof SandboxRefusal ? err.message : `cannot prepare the replica: ${errorText(err)}`,
      );
      return;
    }
    const room = this.#room;
    const provided = await this.#provide(room);
    if (provided === null || this.#closing) return;
    const egress = this.spec.egress;
    let port: number | null = null;
    let listen: ListenAddress;
    let target: ListenAddress;
    if (egress === "deny") {
      // A socket left by the previous run would make the runtime's listen fail.
      await rm(room.socket.inPrivate, { force: true });
      await rm(room.socket.host, { force: true });
      listen = { path: room.socket.listen };
      target = { path: room.socket.host };
    } else {
      try {
        port = await this.#hooks.reservePort();
      } catch (err) {
        this.#fail(`cannot allocate a port: ${errorText(err)}`);
        return;
      }
      listen = { host, port };
      target = listen;
    }
    const release = () => {
      if (port !== null) this.#hooks.releasePort(port);
    };
    if (this.#closing) {
      release();
      return;
    }
    const command = renderCommand(this.spec.command, listen, {
      ...(provided.python !== undefined ? { python: provided.python } : {}),
      secrets: room.secrets.inside,
    });
    let plan: SpawnPlan;
    try {
      plan = await sandbox.plan(room, {
        argv: command.argv,
        env: command.env,
        packageDir: this.spec.package_dir,
        egress,
        readOnly: provided.readOnly,
        secrets: provided.secrets,
        ...(provided.venv !== undefined ? { venv: provided.venv } : {}),
      });
    } catch (err) {
      release();
      this.#fail(err instanceof SandboxRefusal ? err.message : `cannot start the replica: ${errorText(err)}`);
      return;
    }
    if (this.#closing) {
      release();
      return;
    }
    const firstLine = this.#ring.total;
    const env = plan.fd3 === "lifeline" ? { ...plan.env, [LIFELINE_ENV]: String(LIFELINE_FD) } : plan.env;
    let child: ChildProcess;
    try {
      child = spawn(plan.file, plan.args, {
        cwd: plan.cwd,
        env,
        ...(plan.uid !== undefined ? { uid: plan.uid, gid: plan.gid } : {}),
        // Its own process group, so stop() reaches whatever the command forks.
        detached: true,
        // fd 3: bwrap's report of the sandbox's PID 1, or the unsandboxed replica's lifeline (a pipe this
        // process never writes: the replica reads end-of-file when the plane is gone, however it died).
        stdio: ["ignore", "pipe", "pipe", "pipe"],
      });
    } catch (err) {
      release();
      this.#fail(`cannot start ${plan.file}: ${errorText(err)}`);
      return;
    }
    const abort = new AbortController();
    const exited = new Promise<void>((resolve) => {
      child.once("exit", () => resolve());
      child.once("error", () => {
        if (child.pid === undefined) resolve();
      });
    });
    const drained = Promise.all([
      this.#capture(child.stdout!, "stdout"),
      this.#capture(child.stderr!, "stderr"),
    ]).then(() => {});
    const run: Run = {
      child,
      port,
      target,
      endpoint: formatListen(target),
      sandbox: plan.fd3 === "info" ? { initPid: null, told: Promise.resolve() } : null,
      adopted: false,
      startedAt: Date.now(),
      becameReady: false,
      livenessKilled: false,
      abort,
      exited,
      drained,
      firstLine,
      portReleased: false,
    };
    const fd3 = child.stdio[3] as NodeJS.ReadableStream | null | undefined;
    if (run.sandbox !== null && fd3) run.sandbox.told = readSandboxInit(fd3, run.sandbox);
    this.#run = run;
    child.once("error", (err) => {
      if (child.pid !== undefined || this.#run !== run) return;
      this.#run = null;
      abort.abort();
      this.#releasePort(run);
      this.#fail(`cannot start ${plan.file} in ${this.spec.package_dir}: ${err.message}`);
    });
    child.once("exit", (code, signal) => void this.#onExit(run, code, signal));
    if (child.pid === undefined) return;
    this.#runFile({ pid: child.pid, argv: [plan.file, ...plan.args] });
    const where = run.sandbox !== null ? `in a sandbox, on ${run.endpoint}` : `on ${run.endpoint}`;
    this.#note(`started pid ${child.pid} ${where}: ${command.argv.join(" ")}`);
    this.#set({
      state: "STARTING",
      endpoint: null,
      message: null,
      started_at: new Date(run.startedAt).toISOString(),
    });
    void this.#probeUntilReady(run);
  }

  /**
   * What the spec declares beyond its package, before each run: the Python it runs on (a virtualenv not
   * cached yet is built while the replica is BUILDING, pip's output as `build` lines) and its secrets,
   * fetched from the control plane at every start. Null when the replica cannot start now: BUILD_FAILED
   * (nothing fits, pip failed), FAILED (a secret is missing) or, when the control plane cannot be reached
   * for secrets it never had, retried later.
   * Secret values are never logged; the notes name the secrets only.
   */
  async #provide(room: ReplicaRoom): Promise<Provided | null> {
    const provided: Provided = { readOnly: [], secrets: false };
    const wanted = this.spec.python;
    if (wanted !== undefined) {
      const python = this.#settings.python;
      if (python === null) {
        this.#failNoted("this plane runs no Python: it cannot start a truss model.py package");
        return null;
      }
      let prepared: Awaited<ReturnType<ReplicaPythonProvider["prepare"]>>;
      try {
        prepared = await python.prepare(
          wanted,
          (l) => this.#record("build", l.line),
          () => {
            if (!this.#closing)
              this.#set({ state: "BUILDING", message: "installing the package's requirements" });
          },
        );
      } catch (err) {
        // A fault of the plane (its disk, its files), not of the package: FAILED, as a start that failed.
        if (this.#closing) return null;
        this.#failNoted(`preparing Python failed: ${errorText(err)}`, { tail: false });
        return null;
      }
      if (this.#closing) return null;
      if (!prepared.ok) {
        this.#failNoted(prepared.message, { tail: false, state: "BUILD_FAILED" });
        return null;
      }
      const venvDir = this.#settings.sandbox.venvDir;
      provided.python =
        prepared.venv !== null && venvDir !== null ? join(venvDir, "bin", "python") : prepared.python;
      provided.readOnly = prepared.readOnly;
      if (prepared.venv !== null) provided.venv = prepared.venv;
    }
    const names = this.spec.secrets ?? [];
    if (names.length === 0) return provided;
    const fetch = this.#settings.secrets;
    if (fetch === null) {
      this.#failNoted("this plane cannot fetch secrets: the replica's config.yaml names some");
      return null;
    }
    try {
      const written = await fetch(this.spec.id, room.secrets.host);
      await this.#settings.sandbox.sealSecrets(room);
      this.#secretsFetched = true;
      this.#secretsRetries = 0;
      this.#note(`secrets in place: ${written.join(", ")}`);
    } catch (err) {
      if (this.#closing) return null;
      const message = errorText(err);
      const transient =
        err instanceof ReplicaSecretsError && (err.reason === "network" || err.reason === "http_status");
      if (!transient) {
        this.#failNoted(message, { tail: false });
        return null;
      }
      if (!this.#secretsFetched) {
        void this.#retrySecrets(message);
        return null;
      }
      // Static stability: a restart while the control plane is away keeps what the last start was given.
      this.#note(`${message}; starting with the secrets of the previous start`);
    }
    provided.secrets = true;
    return provided;
  }

  /** The control plane could not be asked for secrets the replica never had: try again after a backoff. */
  async #retrySecrets(message: string): Promise<void> {
    this.#secretsRetries++;
    const delayMs = backoffDelayMs(
      this.#secretsRetries,
      this.#settings.backoffBaseMs,
      this.#settings.backoffMaxMs,
    );
    const text = `${message}; retrying in ${delayMs} ms`;
    this.#note(text);
    this.#set({ state: "UNHEALTHY", endpoint: null, message: text });
    const timer = new AbortController();
    this.#restartTimer = timer;
    try {
      await sleep(delayMs, undefined, { signal: timer.signal });
    } catch {
      return;
    }
    if (!this.#closing) this.#launch();
  }

  async #onExit(run: Run, code: number | null, signal: NodeJS.Signals | null): Promise<void> {
    if (this.#run !== run || this.#closing) return;
    run.abort.abort();
    // Not READY from this moment: the ingress stops sending to the dead endpoint now, not once the pipes
    // are drained (up to 500 ms), and hands such requests to a peer plane of the region instead.
    this.#set({ state: "UNHEALTHY", endpoint: null, message: describeExit(code, signal) });
    // Whatever the crashed process forked would hold its port and pipes: clear the group (and, sandboxed,
    // the sandbox's PID namespace: it ends with its PID 1).
    killGroup(run.child, "SIGKILL");
    killSandbox(run);
    this.#runFile(null);
    await Promise.race([run.drained, sleep(500)]);
    this.#releasePort(run);
    if (this.#run !== run || this.#closing) return;
    this.#run = null;
    const decision = decideAfterExit(
      {
        code,
        signal,
        ranMs: Date.now() - run.startedAt,
        becameReady: run.becameReady,
        fatalReason: code === null ? null : (this.spec.fatal_exit_codes?.[code] ?? null),
        portInUse: this.#ring
          .since(run.firstLine)
          .some((l) => l.stream !== "driver" && l.line.includes("EADDRINUSE")),
        portRetries: this.#portRetries,
        crashes: this.#crashes,
        livenessKilled: run.livenessKilled,
      },
      this.#settings,
    );
    this.#note(decision.message);
    switch (decision.kind) {
      case "failed":
        this.#fail(decision.message);
        return;
      case "retry_port":
        this.#portRetries++;
        this.#launch();
        return;
      case "restart": {
        this.#portRetries = 0;
        this.#crashes = decision.crashes;
        this.#set({ state: "UNHEALTHY", endpoint: null, message: withTail(decision.message, this.#tail()) });
        this.#settings.logger?.warn(
          { replica: this.spec.id, code, signal, delay_ms: decision.delayMs },
          "replica exited; restarting",
        );
        const timer = new AbortController();
        this.#restartTimer = timer;
        try {
          await sleep(decision.delayMs, undefined, { signal: timer.signal });
        } catch {
          return;
        }
        if (this.#closing) return;
        this.#set({ restarts: this.#status.restarts + 1 });
        this.#launch();
        return;
      }
      default: {
        const unreachable: never = decision;
        throw new Error(`unhandled exit decision ${JSON.stringify(unreachable)}`);
      }
    }
  }

  async #probeUntilReady(run: Run): Promise<void> {
    const deadline = run.startedAt + this.#settings.readinessTimeoutMs;
    const { endpoint } = run;
    while (!run.abort.signal.aborted) {
      const result = await this.#readinessOnce(run);
      if (run.abort.signal.aborted) return;
      if (result.ok) {
        run.becameReady = true;
        this.#set({ state: "READY", endpoint, message: null });
        this.#note(`ready at ${endpoint}`);
        void this.#probeWhileRunning(run);
        return;
      }
      if (result.refused !== undefined) {
        this.#note(result.refused);
        run.abort.abort();
        this.#run = null;
        this.#fail(result.refused);
        void terminateRun(run, this.#settings.stopGraceMs).then(() => {
          this.#runFile(null);
          this.#releasePort(run);
        });
        return;
      }
      if (Date.now() >= deadline && this.#status.state === "STARTING") {
        const seconds = Math.round(this.#settings.readinessTimeoutMs / 100) / 10;
        const message = `not ready ${seconds} s after start: GET ${this.spec.readiness_path} answered ${result.detail}`;
        this.#note(message);
        this.#set({ state: "UNHEALTHY", endpoint: null, message });
      }
      if (!(await pause(this.#settings.readinessIntervalMs, run.abort.signal))) return;
    }
  }

  /**
   * One readiness probe. A Unix-socket run is probed only once its socket has been moved out of the
   * replica's reach; `refused` says the replica put something else there (it is failed for it).
   */
  async #readinessOnce(run: Run): Promise<{ ok: boolean; detail: string; refused?: string }> {
    if (!run.adopted && "path" in run.target) {
      try {
        run.adopted = await adoptSocket(this.#room!);
      } catch (err) {
        return { ok: false, detail: errorText(err), refused: errorText(err) };
      }
      if (!run.adopted) return { ok: false, detail: "its Unix socket does not exist yet" };
    }
    return probe(run.target, this.spec.readiness_path, this.#settings.probeTimeoutMs);
  }

  /** Once READY: liveness failures restart the run, readiness failures only take it out of routing. */
  async #probeWhileRunning(run: Run): Promise<void> {
    const { endpoint, target } = run;
    let livenessFailures = 0;
    while (await pause(this.#settings.probeIntervalMs, run.abort.signal)) {
      const { probeTimeoutMs } = this.#settings;
      const alive = await probe(target, this.spec.liveness_path, probeTimeoutMs);
      if (run.abort.signal.aborted) return;
      if (!alive.ok) {
        livenessFailures++;
        if (livenessFailures >= this.#settings.livenessFailureThreshold) {
          this.#note(
            `liveness probe GET ${this.spec.liveness_path} failed ${livenessFailures} times (${alive.detail})`,
          );
          run.livenessKilled = true;
          run.abort.abort();
          void terminateRun(run, this.#settings.stopGraceMs);
          return;
        }
        continue;
      }
      livenessFailures = 0;
      const ready = await probe(target, this.spec.readiness_path, probeTimeoutMs);
      if (run.abort.signal.aborted) return;
      if (ready.ok) this.#set({ state: "READY", endpoint, message: null });
      else {
        const message = `readiness probe GET ${this.spec.readiness_path} answered ${ready.detail}`;
        this.#set({ state: "UNHEALTHY", endpoint: null, message });
      }
    }
  }

  /** Once per run: a later release could drop the reservation of another replica given the same port. */
  #releasePort(run: Run): void {
    if (run.portReleased) return;
    run.portReleased = true;
    if (run.port !== null) this.#hooks.releasePort(run.port);
  }

  /** Records (or with null, forgets) the running process, for #killLeftovers after a crash of the plane. */
  #runFile(content: { pid: number; argv: string[] } | null): void {
    const path = join(this.#settings.dataDir, "run", `${this.spec.id}.json`);
    this.#runFileOps = this.#runFileOps
      .then(() => (content === null ? rm(path, { force: true }) : writeFile(path, JSON.stringify(content))))
      .catch((err) => this.#settings.logger?.warn({ err, replica: this.spec.id }, "run file not written"));
  }

  #fail(message: string, o: FailOptions = {}): void {
    const text = o.tail === false ? message : withTail(message, this.#tail());
    this.#set({ state: o.state ?? "FAILED", endpoint: null, message: text });
    this.#settings.logger?.warn({ replica: this.spec.id, message }, "replica failed");
    // A replica that will not run again keeps no secrets on the plane.
    const room = this.#room;
    if (room !== null && this.#secretsFetched) {
      this.#secretsFetched = false;
      void removeReplicaSecrets(room.secrets.host).catch((err) =>
        this.#settings.logger?.warn({ err, replica: this.spec.id }, "secrets not removed"),
      );
    }
  }

  /** FAILED, with the reason in the replica's logs too (the logs API shows it beside the build's lines). */
  #failNoted(message: string, o: FailOptions = {}): void {
    this.#note(message);
    this.#fail(message, o);
  }

  #tail(): string[] {
    return this.#ring
      .query({})
      .filter((l) => l.stream !== "driver")
      .slice(-TAIL_LINES)
      .map((l) => l.line);
  }

  #set(patch: Partial<ReplicaStatus>): void {
    const previous: ReplicaState = this.#status.state;
    const next = { ...this.#status, ...patch };
    const changed = (Object.keys(patch) as Array<keyof ReplicaStatus>).some(
      (k) => next[k] !== this.#status[k],
    );
    this.#status = next;
    if (changed) this.#hooks.emit({ type: "state", replica: this.snapshot(), previous });
  }

  #note(line: string): void {
    this.#record("driver", line);
  }

  #record(stream: LogLine["stream"], text: string): void {
    const line =
      text.length > MAX_LINE_CHARS
        ? `${text.slice(0, MAX_LINE_CHARS)}… [${text.length - MAX_LINE_CHARS} chars cut]`
        : text;
    const entry: LogLine = { ts: new Date().toISOString(), stream, line };
    this.#ring.push(entry);
    this.#logFile?.write(`${JSON.stringify(entry)}\n`);
  }

  /** Splits a stream into lines as they arrive; resolves when the stream ends. */
  #capture(stream: NodeJS.ReadableStream, name: "stdout" | "stderr"): Promise<void> {
    return new Promise((resolve) => {
      const decoder = new StringDecoder("utf8");
      let pending = "";
      const flushLines = (text: string) => {
        pending += text;
        let newline = pending.indexOf("\n");
        while (newline !== -1) {
          this.#record(name, pending.slice(0, newline).replace(/\r$/, ""));
          pending = pending.slice(newline + 1);
          newline = pending.indexOf("\n");
        }
        // A line without end is cut rather than held without bound.
        if (pending.length > MAX_LINE_CHARS) {
          this.#record(name, pending);
          pending = "";
        }
      };
      stream.on("data", (chunk: Buffer) => flushLines(decoder.write(chunk)));
      stream.on("error", () => {});
      stream.once("close", () => {
        flushLines(decoder.end());
        if (pending !== "") this.#record(name, pending);
        resolve();
      });
    });
  }
}

/** Fixed-size buffer of the newest log lines; `total` counts every line ever pushed. */
class LogRing {
  readonly #lines: LogLine[] = [];
  readonly #capacity: number;
  total = 0;

  constructor(capacity: number) {
    this.#capacity = Math.max(1, capacity);
  }

  push(line: LogLine): void {
    this.#lines.push(line);
    this.total++;
    // Trim in batches so each push stays O(1) amortised.
    if (this.#lines.length >= this.#capacity * 2) this.#lines.splice(0, this.#lines.length - this.#capacity);
  }

  /** Lines pushed at or after absolute index `first` that are still held. */
  since(first: number): LogLine[] {
    const held = this.#held();
    const firstHeld = this.total - held.length;
    return held.slice(Math.max(0, first - firstHeld));
  }

  query({ since, limit }: LogQuery): LogLine[] {
    let lines = this.#held();
    if (since !== undefined) {
      const from = since.toISOString();
      lines = lines.filter((l) => l.ts >= from);
    }
    if (limit !== undefined) lines = limit <= 0 ? [] : lines.slice(-limit);
    return lines;
  }

  #held(): LogLine[] {
    return this.#lines.slice(-this.#capacity);
  }
}

function withTail(message: string, tail: string[]): string {
  return tail.length === 0 ? message : `${message}; last log lines:\n${tail.join("\n")}`;
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** Waits `ms`; false when `signal` aborted first. */
async function pause(ms: number, signal: AbortSignal): Promise<boolean> {
  try {
    await sleep(ms, undefined, { signal });
    return true;
  } catch {
    return false;
  }
}

function killGroup(child: ChildProcess, signal: NodeJS.Signals): boolean {
  if (child.pid === undefined) return false;
  try {
    process.kill(-child.pid, signal);
    return true;
  } catch {
    // ESRCH: the group is already empty.
    return false;
  }
}

/**
 * Whether any process of the child's group still runs. A killed member stays a zombie until its parent
 * (for orphans: init) reaps it, and kill(-pgid, 0) still succeeds for zombies; on Linux /proc tells them
 * apart, elsewhere a signalable group counts as alive.
 */
async function groupAlive(child: ChildProcess): Promise<boolean> {
  if (!killGroup(child, 0 as unknown as NodeJS.Signals)) return false;
  if (process.platform !== "linux") return true;
  try {
    const pids = (await readdir("/proc")).filter((name) => /^\d+$/.test(name));
    for (const pid of pids) {
      const stat = await readFile(`/proc/${pid}/stat`, "utf8").catch(() => "");
      // Fields after the parenthesised command name: state, ppid, pgrp, ... (proc(5)).
      const [state, , pgrp] = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      if (Number(pgrp) === child.pid && state !== "Z" && state !== "X") return true;
    }
    return false;
  } catch {
    return true;
  }
}

/** SIGTERM to the group; SIGKILL to whatever of it is left after `graceMs`. Resolves when the group is gone. */
async function terminateGroup(child: ChildProcess, exited: Promise<void>, graceMs: number): Promise<void> {
  if (child.pid === undefined) return;
  killGroup(child, "SIGTERM");
  const deadline = Date.now() + graceMs;
  const leaderDone = exited.then(() => true);
  while (Date.now() < deadline) {
    const done = await Promise.race([leaderDone, sleep(25).then(() => false)]);
    if (done && !(await groupAlive(child))) return;
  }
  killGroup(child, "SIGKILL");
  await exited;
  const sweepUntil = Date.now() + 2_000;
  while ((await groupAlive(child)) && Date.now() < sweepUntil) await sleep(25);
}

/** Ends a run, sandboxed or not; resolves once nothing of it runs. */
function terminateRun(run: Run, graceMs: number): Promise<void> {
  return run.sandbox === null
    ? terminateGroup(run.child, run.exited, graceMs)
    : terminateSandbox(run, graceMs);
}

/**
 * A sandboxed run: bwrap's PID 1 inside the sandbox forwards no signals, and SIGTERM to bwrap itself
 * would kill the sandbox without a drain. So SIGTERM goes to the process group of the sandbox's PID 1,
 * which holds the command (bwrap puts it there with --new-session; PID 1 ignores signals it has no
 * handler for). After the grace period, SIGKILL to bwrap and to PID 1: the kernel then kills every
 * process of the PID namespace, and PID 1 exits only once they are all gone.
 */
async function terminateSandbox(run: Run, graceMs: number): Promise<void> {
  const { child } = run;
  if (child.pid === undefined) return;
  await Promise.race([run.sandbox!.told, sleep(Math.min(graceMs, 1_000))]);
  const init = run.sandbox!.initPid;
  if (init === null || !signal(-init, "SIGTERM")) killGroup(child, "SIGKILL");
  const leaderDone = run.exited.then(() => true);
  const done = await Promise.race([leaderDone, sleep(graceMs).then(() => false)]);
  if (!done) {
    killGroup(child, "SIGKILL");
    killSandbox(run);
    await run.exited;
  }
  const sweepUntil = Date.now() + 2_000;
  while (init !== null && pidAlive(init) && Date.now() < sweepUntil) {
    killSandbox(run);
    await sleep(25);
  }
}

/** SIGKILL to the sandbox's PID 1 (a no-op for unsandboxed runs, or before bwrap told its pid). */
function killSandbox(run: Run): void {
  const init = run.sandbox?.initPid;
  if (init !== null && init !== undefined) signal(init, "SIGKILL");
}

function signal(pid: number, sig: NodeJS.Signals): boolean {
  try {
    process.kill(pid, sig);
    return true;
  } catch {
    return false;
  }
}

/** Running, as opposed to gone or a zombie waiting to be reaped (Linux /proc; elsewhere: signalable). */
function pidAlive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const state = stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
    return state !== "Z" && state !== "X";
  } catch {
    return process.platform !== "linux" && signal(pid, 0 as unknown as NodeJS.Signals);
  }
}

/** bwrap's --info-fd: `{"child-pid": N}`, the host pid of the sandbox's PID 1, written once it exists. */
function readSandboxInit(stream: NodeJS.ReadableStream, into: { initPid: number | null }): Promise<void> {
  return new Promise((resolve) => {
    let text = "";
    stream.setEncoding("utf8");
    stream.on("data", (chunk: string) => {
      text += chunk;
      const m = /"child-pid"\s*:\s*(\d+)/.exec(text);
      if (m !== null && into.initPid === null) {
        into.initPid = Number(m[1]);
        resolve();
      }
    });
    stream.on("error", () => resolve());
    stream.once("close", () => resolve());
  });
}

/** One HTTP GET over TCP or a Unix socket; ok only for 200, which is what truss's probes answer when healthy. */
function probe(
  target: ListenAddress,
  path: string,
  timeoutMs: number,
): Promise<{ ok: boolean; detail: string }> {
  const where: RequestOptions =
    "path" in target ? { socketPath: target.path } : { host: target.host, port: target.port };
  return new Promise((resolve) => {
    const req = request({ ...where, path, method: "GET", agent: false, timeout: timeoutMs }, (res) => {
      res.resume();
      res.on("end", () => resolve({ ok: res.statusCode === 200, detail: `HTTP ${res.statusCode}` }));
      res.on("error", (err) => resolve({ ok: false, detail: err.message }));
    });
    req.on("timeout", () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.on("error", (err: NodeJS.ErrnoException) => resolve({ ok: false, detail: err.code ?? err.message }));
    req.end();
  });
}
