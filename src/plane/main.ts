// Composition root of `meridian plane`: the snapshot watcher (cached on disk for static stability), the
// replica sandbox (chosen and self-tested at start), the process driver, the artifact cache, the agent, the ingress gateway with its audit log and metrics, and a
// small operator listener (`/metrics`, `/healthz`, audit queries, replica logs). `stop()` drains in
// reverse order of start.

import { timingSafeEqual } from "node:crypto";
import { mkdir } from "node:fs/promises";
import http from "node:http";
import { join } from "node:path";
import pino, { type Logger } from "pino";
import { Gauge, Registry } from "prom-client";
import { REPLICA_STATES } from "../core/domain.ts";
import { errorBody } from "../core/errors.ts";
import type { PlaneSnapshot, SandboxReport } from "../core/snapshot.ts";
import { checkPlaneSnapshot, type SnapshotOwner } from "../core/snapshot-check.ts";
import { AuditLog } from "../gateway/audit.ts";
import {
  createIngress,
  type Ingress,
  type IngressLimits,
  type IngressTransport,
} from "../gateway/ingress.ts";
import { CONTROL_ACCESS_HEADER, ControlAccessVerifier } from "../lib/control-access.ts";
import { loadOrCreatePlaneKey } from "../lib/keys.ts";
import { SnapshotWatcher } from "../lib/watch.ts";
import { PlaneAgent } from "./agent.ts";
import { ArtifactCache } from "./artifacts.ts";
import { ProcessDriver, type ProcessDriverOptions } from "./process-driver.ts";
import { prepareSandbox } from "./sandbox.ts";
import { TlsStore, wildcardWarning } from "./tls-store.ts";

export interface PlaneConfig {
  name: string;
  /** The region the operator registered this plane in; the snapshot must agree. */
  region: string;
  controlUrl: string;
  token: string;
  dataDir: string;
  ingress: { host: string; port: number };
  /** Operator listener (metrics, health, audit, logs). */
  admin: { host: string; port: number } | null;
  /** The plane's own certificate (its addresses): hops, and every name `tlsDir` has no certificate for. */
  tls: { cert: string; key: string } | null;
  /** Certificates by hostname, served by SNI and reloaded on change (src/plane/tls-store.ts); needs `tls`. */
  tlsDir?: string | null;
  /** CA that signs the other planes' ingress certificates: hops to peers then go over HTTPS. */
  peerCa?: string | null;
  limits?: Partial<IngressLimits>;
  /** The ingress's HTTP implementation (default `wire`; see src/gateway/ingress.ts). */
  ingressTransport?: IngressTransport;
  /** Address replicas listen on. Default 127.0.0.1. */
  replicaHost?: string;
  /**
   * How replicas run (default `bwrap`, see src/plane/sandbox.ts). `none` runs them as plain child
   * processes and is logged as a warning at every start; a bwrap that fails its self-test makes the plane
   * refuse every replica, with the reason.
   */
  sandbox?: {
    mode: "bwrap" | "none";
    /** Default /usr/bin/bwrap. */
    bwrapPath?: string;
    /** Host ids of replicas when the plane runs as root. Default 65534:65534. */
    uid?: { uid: number; gid: number };
  };
  logger?: Logger;
  /** Driver timings, for tests. */
  driver?: Partial<ProcessDriverOptions>;
}

export interface RunningPlane {
  ingress: Ingress;
  agent: PlaneAgent;
  sandbox: SandboxReport;
  watcher: SnapshotWatcher<PlaneSnapshot>;
  audit: AuditLog;
  driver: ProcessDriver;
  adminAddress: { host: string; port: number } | null;
  /** Drains in reverse order of start; `brief` stops the replicas fast and writes the audit, nothing else. */
  stop(options?: { brief?: boolean }): Promise<void>;
}

/** SIGTERM-to-SIGKILL grace of replicas in a brief stop: well inside ORPHAN_STOP_LIMIT_MS. */
const BRIEF_REPLICA_GRACE_MS = 1_000;

/** The plane's Ed25519 key pair, in its data directory (PKCS #8 PEM, mode 0600). */
export const PLANE_KEY_FILE = "plane.key";

/**
 * Every snapshot, from the control plane or the disk cache, is checked in full before it is served: one
 * that fails is refused (the watcher logs the field and keeps the last good one, and never caches it).
 */
function snapshotParser(owner: SnapshotOwner): (body: unknown) => PlaneSnapshot {
  return (body) => {
    const check = checkPlaneSnapshot(body, owner);
    if (!check.ok) throw new Error(`${check.field || "snapshot"}: ${check.message}`);
    return check.snapshot;
  };
}

export async function startPlane(config: PlaneConfig): Promise<RunningPlane> {
  const logger = config.logger ?? pino({ name: "plane", base: { plane: config.name } });
  // A missing key file means a new key; the report tells the control plane, which retires the old one.
  await mkdir(config.dataDir, { recursive: true });
  const planeKey = await loadOrCreatePlaneKey(join(config.dataDir, PLANE_KEY_FILE));
  logger.info(
    { key_id: planeKey.key.keyId, created: planeKey.created },
    planeKey.created ? "plane key created" : "plane key loaded",
  );
  const certificates = await startCertificates(config, logger);
  const registry = new Registry();
  const audit = new AuditLog({
    dir: join(config.dataDir, "audit"),
    onError: (err) => logger.error({ err }, "audit write failed"),
  });
  await audit.start();
  const sandboxMode = config.sandbox?.mode ?? "bwrap";
  const sandbox = await prepareSandbox(sandboxMode, {
    dataDir: config.dataDir,
    // Only LANG and TZ of it reach replicas (the environment allowlist).
    planeEnv: process.env,
    ...(config.sandbox?.bwrapPath !== undefined ? { bwrapPath: config.sandbox.bwrapPath } : {}),
    ...(config.sandbox?.uid !== undefined ? { uid: config.sandbox.uid } : {}),
  });
  switch (sandbox.report.mode) {
    case "bwrap":
      logger.info({ sandbox: sandbox.report }, "replicas run in a bubblewrap sandbox");
      break;
    case "none":
      logger.warn({ sandbox: sandbox.report }, "replicas run without a sandbox");
      break;
    case "unavailable":
      logger.error({ sandbox: sandbox.report }, "the sandbox failed its self-test; no replica will start");
      break;
  }
  const driver = new ProcessDriver({
    dataDir: config.dataDir,
    host: config.replicaHost ?? "127.0.0.1",
    sandbox,
    logger,
    ...config.driver,
  });
  await driver.start();
  registerReplicaGauge(registry, driver);
  const artifacts = new ArtifactCache({
    dir: join(config.dataDir, "artifacts"),
    controlUrl: config.controlUrl,
    planeToken: config.token,
  });
  await artifacts.start();
  // Set once the operator listener is bound; the agent reports it from then on.
  let adminAddress: { host: string; port: number } | null = null;
  const agent = new PlaneAgent({
    plane: config.name,
    controlUrl: config.controlUrl,
    token: config.token,
    driver,
    artifacts,
    logger,
    counts: { take: () => audit.takeRequestCounts(), restore: (c) => audit.restoreRequestCounts(c) },
    publicKey: planeKey.key.publicKey,
    adminUrl: () => (config.admin === null ? null : adminAddress ? httpUrl(adminAddress) : undefined),
    sandbox: sandbox.report,
  });

  let current: PlaneSnapshot | null = null;
  const watcher = new SnapshotWatcher<PlaneSnapshot>({
    url: `${config.controlUrl}/v1/internal/planes/${encodeURIComponent(config.name)}/snapshot`,
    token: config.token,
    parse: snapshotParser({ plane: config.name, region: config.region }),
    cacheFile: join(config.dataDir, "snapshot.json"),
    logger,
    onStateChange: (state, err) => logger.info({ state, err: err?.message }, "control plane connection"),
  });
  // The watcher hands over only snapshots that passed the check (this plane's, whole and consistent).
  const accept = (s: PlaneSnapshot) => {
    current = s;
    agent.apply(s);
  };
  watcher.subscribe(accept);

  const ingress = createIngress({
    plane: { name: config.name, region: config.region },
    listen: config.ingress,
    ...(config.tls ? { tls: { ...config.tls, ...(certificates ? { sni: certificates } : {}) } } : {}),
    ...(config.peerCa ? { peerScheme: "https" as const, peerConnect: { ca: config.peerCa } } : {}),
    signingKey: planeKey.key,
    snapshot: () => current,
    localReplicas: agent.localReplicas,
    ...(config.limits ? { limits: config.limits } : {}),
    ...(config.ingressTransport ? { transport: config.ingressTransport } : {}),
    logger,
    registry,
    audit,
  });

  agent.start();
  await watcher.start();
  const cached = watcher.current();
  if (cached) accept(cached);
  await ingress.start();

  let adminServer: http.Server | null = null;
  if (config.admin) {
    // One verifier for the listener's life: it remembers the signed requests it accepted.
    const deps: AdminDeps = {
      registry,
      audit,
      driver,
      token: config.token,
      watcher,
      controlAccess: new ControlAccessVerifier({ plane: config.name }),
      snapshot: () => current,
    };
    adminServer = http.createServer((req, res) => void serveAdmin(req, res, deps));
    await new Promise<void>((ok, fail) => {
      adminServer!.once("error", fail);
      adminServer!.listen(config.admin!.port, config.admin!.host, () => ok());
    });
    const a = adminServer.address();
    adminAddress = typeof a === "object" && a ? { host: config.admin.host, port: a.port } : null;
  }
  logger.info(
    { ingress: ingress.address, admin: adminAddress, region: config.region, revision: watcher.revision },
    "plane started",
  );

  return {
    ingress,
    agent,
    sandbox: sandbox.report,
    watcher,
    audit,
    driver,
    adminAddress,
    async stop(options: { brief?: boolean } = {}) {
      if (options.brief) {
        // The process that started this plane is gone (src/lib/shutdown.ts), and with it most likely the
        // control plane: no ingress drain and no last report, only what must not be left behind or lost.
        // Replicas get a short grace, then SIGKILL of their process groups; buffered audit records are
        // written. The process exits next, which closes the listeners.
        await driver.stop({ graceMs: BRIEF_REPLICA_GRACE_MS });
        await audit.stop();
        return;
      }
      await new Promise<void>((ok) => (adminServer ? adminServer.close(() => ok()) : ok()));
      await ingress.stop();
      await certificates?.stop();
      await watcher.stop();
      // Replicas stop before the last report, so the control plane learns they no longer serve.
      await driver.stop();
      await agent.report();
      await agent.stop();
      await artifacts.stop();
      await audit.stop();
    },
  };
}

/**
 * The certificate directory, loaded before anything else starts (a missing one stops the plane here), and a
 * warning when the plane's own certificate is a wildcard: it would cover other regions' hostnames.
 */
async function startCertificates(config: PlaneConfig, logger: Logger): Promise<TlsStore | null> {
  const wildcard = config.tls ? wildcardWarning(config.tls.cert) : null;
  if (wildcard !== null) logger.warn({ flag: "--tls-cert" }, wildcard);
  if (!config.tlsDir) return null;
  if (!config.tls) throw new Error("--tls-dir needs --tls-cert and --tls-key (the plane's own certificate)");
  const store = new TlsStore({ dir: config.tlsDir, logger });
  await store.start();
  logger.info({ dir: config.tlsDir, hostnames: store.hostnames().length }, "tls certificates loaded");
  return store;
}

/** `meridian_plane_replicas{state}`: this plane's replicas by state, read from the driver at scrape time. */
function registerReplicaGauge(registry: Registry, driver: ProcessDriver): void {
  new Gauge({
    name: "meridian_plane_replicas",
    help: "Replicas on this plane by state, as the driver sees them.",
    labelNames: ["state"],
    registers: [registry],
    async collect() {
      const counts = new Map<string, number>(REPLICA_STATES.map((s) => [s, 0]));
      for (const r of await driver.list()) counts.set(r.state, (counts.get(r.state) ?? 0) + 1);
      for (const [state, n] of counts) this.set({ state }, n);
    },
  });
}

interface AdminDeps {
  registry: Registry;
  audit: AuditLog;
  driver: ProcessDriver;
  token: string;
  watcher: SnapshotWatcher<PlaneSnapshot>;
  /** Verifies the control plane's `x-meridian-control` with the public key of the current snapshot. */
  controlAccess: ControlAccessVerifier;
  snapshot(): PlaneSnapshot | null;
}

function httpUrl(a: { host: string; port: number }): string {
  return `http://${a.host.includes(":") ? `[${a.host}]` : a.host}:${a.port}`;
}

/**
 * The operator listener. `/metrics` and `/healthz` are open (bind it to a private address); audit records
 * and replica logs need the plane's credential, since they name models, environments and request ids.
 */
async function serveAdmin(
  req: http.IncomingMessage,
  res: http.ServerResponse,
  deps: AdminDeps,
): Promise<void> {
  const url = new URL(req.url ?? "/", "http://plane");
  const send = (status: number, body: unknown, type = "application/json") => {
    res.writeHead(status, { "content-type": type });
    res.end(type === "application/json" ? JSON.stringify(body) : String(body));
  };
  try {
    if (req.method !== "GET") return send(405, errorBody("method_not_allowed"));
    if (url.pathname === "/metrics")
      return send(200, await deps.registry.metrics(), deps.registry.contentType);
    if (url.pathname === "/healthz") {
      return send(200, { ok: true, revision: deps.watcher.revision, control_plane: deps.watcher.state });
    }
    const logs = /^\/v1\/replicas\/([^/]+)\/logs$/.exec(url.pathname);
    if (!isPlaneCredential(req, deps.token) && !(logs && isControlPlane(req, deps))) {
      return send(401, errorBody("unauthorized", "Send the plane credential as a Bearer token."));
    }
    if (url.pathname === "/v1/audit") {
      const q = url.searchParams;
      const records = await deps.audit.query({
        ...(q.get("from") ? { from: q.get("from")! } : {}),
        ...(q.get("to") ? { to: q.get("to")! } : {}),
        ...(q.get("model_id") ? { model_id: q.get("model_id")! } : {}),
        ...(q.get("environment") ? { environment: q.get("environment")! } : {}),
        ...(q.get("request_id") ? { request_id: q.get("request_id")! } : {}),
        ...(q.get("limit") ? { limit: Number(q.get("limit")) } : {}),
      });
      return send(200, { items: records });
    }
    if (url.pathname === "/v1/replicas") return send(200, { replicas: await deps.driver.list() });
    if (logs) {
      const limit = Number(url.searchParams.get("limit") ?? 500);
      return send(200, { lines: await deps.driver.logs(decodeURIComponent(logs[1]!), { limit }) });
    }
    return send(404, errorBody("route_not_found"));
  } catch (err) {
    send(500, errorBody("internal_error", (err as Error).message));
  }
}

function isPlaneCredential(req: http.IncomingMessage, token: string): boolean {
  const given = Buffer.from(req.headers.authorization ?? "");
  const want = Buffer.from(`Bearer ${token}`);
  return given.length === want.length && timingSafeEqual(given, want);
}

/**
 * The control plane reads replica logs on a user's behalf (they are never stored outside the plane); it
 * signs the request (this plane, method, target, time) with its own key, which this plane knows only by
 * the public half in its snapshot. Only the logs route accepts this: the audit trail stays in the region
 * (DESIGN.md §2.6).
 */
function isControlPlane(req: http.IncomingMessage, deps: AdminDeps): boolean {
  const header = req.headers[CONTROL_ACCESS_HEADER];
  if (typeof header !== "string") return false;
  const request = { method: req.method ?? "", target: req.url ?? "" };
  return deps.controlAccess.verify(header, request, deps.snapshot()?.control_key ?? null, Date.now()).ok;
}
