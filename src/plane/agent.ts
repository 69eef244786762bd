// The plane agent: makes the replicas of the plane's snapshot exist through the driver (fetching and
// verifying each package first), keeps an index of READY endpoints for the ingress, and reports replica
// states and request counts back to the control plane. It keeps running from its last snapshot while the
// control plane is unreachable (DESIGN.md §2.7).

import { lstat, readFile, stat } from "node:fs/promises";
import { join, resolve } from "node:path";
import type { Logger } from "pino";
import { request } from "undici";
import {
  JAVASCRIPT_MODULE,
  packageEntryPoint,
  parseModelConfig,
  pythonModulePath,
} from "../core/model-config.ts";
import { trussHostCommand } from "../core/python.ts";
import { planReconcile } from "../core/reconcile.ts";
import { EXIT_CODES } from "../core/runtime-exit-codes.ts";
import type {
  DesiredReplica,
  PlaneLoadReport,
  PlaneReport,
  PlaneSnapshot,
  ReplicaReport,
  SandboxReport,
} from "../core/snapshot.ts";
import { TRUSS_HOST_SCRIPT } from "../lib/pythons.ts";
import type { ArtifactCache } from "./artifacts.ts";
import type { ReplicaDriver, ReplicaPython, ReplicaSpec, ReplicaStatus } from "./driver.ts";
import { packageRequirements } from "./python-env.ts";

/** The `meridian` launcher that replicas run (`serve-model`). */
const MERIDIAN_BIN = resolve(import.meta.dirname, "../../bin/meridian.js");

/**
 * How a package runs, as far as the plane must know: on Meridian's runtime (`serve-model`: a model.js or
 * a custom server), or on the Python host (a truss model.py), and which secrets it names.
 */
export type PackageRuntime =
  | { kind: "meridian"; secrets: string[] }
  | { kind: "python"; python: ReplicaPython; secrets: string[] };

const MERIDIAN_RUNTIME: PackageRuntime = { kind: "meridian", secrets: [] };

/**
 * Reads an extracted package's config.yaml for its runtime and secret names. A config.yaml that is not a
 * plain file or does not parse runs on `serve-model`, which refuses it with the reason (exit 4, the
 * replica FAILED: invalid model package); nothing of such a file is quoted here. A truss package whose
 * requirements_file cannot be read is refused with the reason.
 */
export async function packageRuntime(
  dir: string,
): Promise<{ ok: true; runtime: PackageRuntime } | { ok: false; message: string }> {
  const configFile = join(dir, "config.yaml");
  if (!(await lstat(configFile).catch(() => null))?.isFile()) return { ok: true, runtime: MERIDIAN_RUNTIME };
  const parsed = parseModelConfig(await readFile(configFile, "utf8"));
  if (!parsed.ok) return { ok: true, runtime: MERIDIAN_RUNTIME };
  const config = parsed.config;
  const present = new Set<string>();
  for (const candidate of [JAVASCRIPT_MODULE, pythonModulePath(config)]) {
    if ((await stat(join(dir, candidate)).catch(() => null))?.isFile()) present.add(candidate);
  }
  const secrets = Object.keys(config.python.secrets).sort();
  const entry = packageEntryPoint(config, (p) => present.has(p));
  if (!entry.ok || entry.entry.type !== "python") return { ok: true, runtime: { kind: "meridian", secrets } };
  const requirements = await packageRequirements(dir, config.python);
  if (!requirements.ok) return { ok: false, message: requirements.message };
  return {
    ok: true,
    runtime: {
      kind: "python",
      python: { python_version: config.python.python_version, requirements: requirements.requirements },
      secrets,
    },
  };
}

export interface PlaneAgentOptions {
  plane: string;
  controlUrl: string;
  token: string;
  driver: ReplicaDriver;
  artifacts: ArtifactCache;
  logger: Logger;
  /** Takes the request counts to report, and puts them back when a report fails. */
  counts: { take(): PlaneReport["request_counts"]; restore(c: PlaneReport["request_counts"]): void };
  /** The plane's Ed25519 public key (raw, base64url), sent with every report. */
  publicKey?: string;
  /** When the plane first had that key (ISO 8601), sent with it: the key directory's `valid_from`. */
  keyCreatedAt?: string;
  /** How often the agent reports even when nothing changed. Default 2 s. */
  reportIntervalMs?: number;
  /** The operator listener's base URL to report (null: none; undefined: not listening yet, say nothing). */
  adminUrl?: () => string | null | undefined;
  /** How the plane runs replicas, sent in every report. */
  sandbox?: SandboxReport;
  /** The ingress's load counters (src/plane/load.ts), sent in every report. */
  load?: () => PlaneLoadReport;
}

export class PlaneAgent {
  readonly #o: PlaneAgentOptions;
  #snapshot: PlaneSnapshot | null = null;
  /** READY endpoints by deployment id, rebuilt on every driver event. */
  #ready = new Map<string, string[]>();
  /** Replicas whose package could not be made available, reported as FAILED with the reason. */
  #artifactFailures = new Map<string, ReplicaReport>();
  #reconciling: Promise<void> | null = null;
  #again = false;
  #reportTimer: NodeJS.Timeout | null = null;
  #reportSoon: NodeJS.Timeout | null = null;
  #reporting = false;
  #stopped = false;
  #unsubscribe: (() => void) | null = null;

  constructor(options: PlaneAgentOptions) {
    this.#o = options;
  }

  start(): void {
    this.#unsubscribe = this.#o.driver.subscribe(() => {
      void this.#refreshReady();
      this.#scheduleReport(100);
    });
    this.#reportTimer = setInterval(() => this.#scheduleReport(0), this.#o.reportIntervalMs ?? 2000);
    this.#reportTimer.unref();
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    this.#unsubscribe?.();
    if (this.#reportTimer) clearInterval(this.#reportTimer);
    if (this.#reportSoon) clearTimeout(this.#reportSoon);
    await this.#reconciling;
  }

  /** Applies a new snapshot: reconcile now (coalescing while one runs). */
  apply(snapshot: PlaneSnapshot): void {
    this.#snapshot = snapshot;
    void this.reconcile();
  }

  /** One replica endpoint of a READY local replica of the deployment, round-robin. */
  localReplicas = (deploymentId: string): readonly string[] => this.#ready.get(deploymentId) ?? [];

  reconcile(): Promise<void> {
    if (this.#reconciling) {
      this.#again = true;
      return this.#reconciling;
    }
    this.#reconciling = (async () => {
      do {
        this.#again = false;
        try {
          await this.#reconcileOnce();
        } catch (err) {
          this.#o.logger.error({ err }, "reconcile failed");
        }
      } while (this.#again && !this.#stopped);
    })().finally(() => {
      this.#reconciling = null;
    });
    return this.#reconciling;
  }

  async #reconcileOnce(): Promise<void> {
    const snapshot = this.#snapshot;
    if (!snapshot || this.#stopped) return;
    const actual = await this.#o.driver.list();
    const plan = planReconcile(snapshot.replicas, actual);
    for (const s of plan.stop) {
      this.#o.logger.info({ replica: s.id, reason: s.reason }, "stopping replica");
      await this.#o.driver.remove(s.id);
    }
    const desiredIds = new Set(snapshot.replicas.map((r) => r.id));
    for (const id of this.#artifactFailures.keys())
      if (!desiredIds.has(id)) this.#artifactFailures.delete(id);
    await Promise.all(plan.start.map((s) => this.#startReplica(s.replica)));
    await this.#refreshReady();
    this.#scheduleReport(50);
  }

  async #startReplica(replica: DesiredReplica): Promise<void> {
    let dir: string;
    try {
      dir = await this.#o.artifacts.ensure(replica.artifact);
    } catch (err) {
      const message = `The model package could not be fetched: ${(err as Error).message}`;
      this.#o.logger.warn({ replica: replica.id, err }, "artifact unavailable");
      this.#artifactFailures.set(replica.id, {
        id: replica.id,
        deployment_id: replica.deployment_id,
        state: "FAILED",
        message,
        restarts: 0,
      });
      return;
    }
    const runtime = await packageRuntime(dir).catch(
      (err: unknown) => ({ ok: false, message: (err as Error).message }) as const,
    );
    if (!runtime.ok) {
      this.#o.logger.warn({ replica: replica.id, reason: runtime.message }, "package refused");
      this.#artifactFailures.set(replica.id, {
        id: replica.id,
        deployment_id: replica.deployment_id,
        state: "FAILED",
        message: `invalid model package: ${runtime.message}`,
        restarts: 0,
      });
      return;
    }
    this.#artifactFailures.delete(replica.id);
    this.#o.logger.info(
      { replica: replica.id, deployment: replica.deployment_id, runtime: runtime.runtime.kind },
      "starting replica",
    );
    await this.#o.driver.ensure(replicaSpec(replica, dir, runtime.runtime));
  }

  async #refreshReady(): Promise<void> {
    const ready = new Map<string, string[]>();
    for (const r of await this.#o.driver.list()) {
      if (r.state !== "READY" || r.endpoint === null) continue;
      const list = ready.get(r.deployment_id) ?? [];
      list.push(r.endpoint);
      ready.set(r.deployment_id, list);
    }
    this.#ready = ready;
  }

  #scheduleReport(delayMs: number): void {
    if (this.#stopped || this.#reportSoon) return;
    this.#reportSoon = setTimeout(() => {
      this.#reportSoon = null;
      void this.report();
    }, delayMs);
    this.#reportSoon.unref();
  }

  /** Sends one report; on failure the counts are kept for the next one. */
  async report(): Promise<boolean> {
    if (this.#reporting || this.#stopped) return false;
    this.#reporting = true;
    const counts = this.#o.counts.take();
    try {
      const statuses = await this.#o.driver.list();
      const adminUrl = this.#o.adminUrl?.();
      const body: PlaneReport = {
        revision: this.#snapshot?.revision ?? 0,
        ...(adminUrl !== undefined ? { admin_url: adminUrl } : {}),
        ...(this.#o.publicKey !== undefined ? { public_key: this.#o.publicKey } : {}),
        ...(this.#o.publicKey !== undefined && this.#o.keyCreatedAt !== undefined
          ? { key_created_at: this.#o.keyCreatedAt }
          : {}),
        ...(this.#o.sandbox !== undefined ? { sandbox: this.#o.sandbox } : {}),
        replicas: [...statuses.map(toReport), ...this.#artifactFailures.values()],
        ...(this.#o.load !== undefined ? { load: this.#o.load() } : {}),
        request_counts: counts,
      };
      const res = await request(
        `${this.#o.controlUrl}/v1/internal/planes/${encodeURIComponent(this.#o.plane)}/report`,
        {
          method: "POST",
          headers: { authorization: `Bearer ${this.#o.token}`, "content-type": "application/json" },
          body: JSON.stringify(body),
          headersTimeout: 10_000,
          bodyTimeout: 10_000,
        },
      );
      if (res.statusCode === 409) {
        // plane_key_retired: the control plane will not trust this plane's key again; only the operator
        // can fix it (a new key file), so say so loudly on every attempt.
        const body = (await res.body.json().catch(() => null)) as {
          error_code?: string;
          error?: string;
        } | null;
        this.#o.logger.error({ error_code: body?.error_code, error: body?.error }, "report refused");
        throw new Error(`control plane answered 409 ${body?.error_code ?? ""}`);
      }
      await res.body.dump();
      if (res.statusCode !== 200) throw new Error(`control plane answered ${res.statusCode}`);
      return true;
    } catch (err) {
      this.#o.counts.restore(counts);
      this.#o.logger.debug({ err: (err as Error).message }, "report not delivered");
      return false;
    } finally {
      this.#reporting = false;
    }
  }
}

function toReport(r: ReplicaStatus): ReplicaReport {
  return {
    id: r.id,
    deployment_id: r.deployment_id,
    state: r.state,
    message: r.message,
    restarts: r.restarts,
  };
}

/**
 * How a replica is run by the process driver: the model runtime in its package directory (the command's
 * working directory: `/app` inside the sandbox), on `{listen}`: a free loopback port, or under egress
 * `deny` a Unix socket. Its identity also goes in the environment, for whatever the runtime starts. A
 * truss model.py package runs on the Python host with the interpreter the driver provides (`{python}`),
 * its secrets read from `{secrets}`.
 */
export function replicaSpec(
  replica: DesiredReplica,
  packageDir: string,
  runtime: PackageRuntime = MERIDIAN_RUNTIME,
): ReplicaSpec {
  const base = meridianSpec(replica, packageDir);
  const secrets = runtime.secrets.length > 0 ? { secrets: [...runtime.secrets] } : {};
  if (runtime.kind === "meridian") return { ...base, ...secrets };
  const host = trussHostCommand({
    python: "{python}",
    script: TRUSS_HOST_SCRIPT,
    packageDir: ".",
    listen: "{listen}",
    modelId: replica.model_id,
    deploymentId: replica.deployment_id,
    environment: replica.environment,
    secretsDir: "{secrets}",
  });
  return {
    ...base,
    command: { argv: host.argv, env: { ...base.command.env, ...host.env } },
    python: { python_version: runtime.python.python_version, requirements: [...runtime.python.requirements] },
    ...secrets,
  };
}

function meridianSpec(replica: DesiredReplica, packageDir: string): ReplicaSpec {
  const argv = [
    process.execPath,
    MERIDIAN_BIN,
    "serve-model",
    ".",
    "--listen",
    "{listen}",
    "--model-id",
    replica.model_id,
    "--deployment-id",
    replica.deployment_id,
    "--server-port",
    "0",
  ];
  const env: Record<string, string> = {
    MERIDIAN_MODEL_ID: replica.model_id,
    MERIDIAN_DEPLOYMENT_ID: replica.deployment_id,
  };
  if (replica.environment !== null) {
    argv.push("--environment", replica.environment);
    env["MERIDIAN_ENVIRONMENT"] = replica.environment;
  }
  return {
    id: replica.id,
    deployment_id: replica.deployment_id,
    model_id: replica.model_id,
    environment: replica.environment,
    package_dir: packageDir,
    artifact: replica.artifact,
    command: { argv, env },
    // A snapshot cached by an older control plane has no egress: its replicas could all reach the network.
    egress: replica.egress ?? "allow",
    readiness_path: "/v1/models/model",
    liveness_path: "/",
    fatal_exit_codes: {
      [EXIT_CODES.load_failed]: "model load failed",
      [EXIT_CODES.invalid_package]: "invalid model package",
      [EXIT_CODES.model_server_failed]: "model server exited before it was ready",
    },
  };
}
