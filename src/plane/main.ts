// Composition root of `meridian plane`: the snapshot watcher (cached on disk for static stability), the
// replica sandbox (chosen and self-tested at start), the process driver, the artifact cache, the agent, the ingress gateway with its audit log and metrics, and a
// small operator listener (`/metrics`, `/healthz`, audit queries and exports, evidence pieces, replica
// logs). `stop()` drains in reverse order of start.

import { randomBytes, timingSafeEqual } from "node:crypto";
import { once } from "node:events";
import { chmod, mkdir } from "node:fs/promises";
import http from "node:http";
import { join } from "node:path";
import pino, { type Logger } from "pino";
import { collectDefaultMetrics, Gauge, Registry } from "prom-client";
import { resolveAsyncTarget } from "../core/async-routing.ts";
import type { BackpressureLimits } from "../core/autoscaling-settings.ts";
import { REPLICA_STATES } from "../core/domain.ts";
import { errorBody } from "../core/errors.ts";
import { parseEvidenceScope, parseEvidenceTime } from "../core/evidence-scope.ts";
import type { PlaneSnapshot, SandboxReport } from "../core/snapshot.ts";
import { checkPlaneSnapshot, type SnapshotOwner } from "../core/snapshot-check.ts";
import { AuditLog, DEFAULT_AUDIT_RETENTION_MS } from "../gateway/audit.ts";
import {
  createIngress,
  type Ingress,
  type IngressLimits,
  type IngressTransport,
} from "../gateway/ingress.ts";
import { CONTROL_ACCESS_HEADER, ControlAccessVerifier } from "../lib/control-access.ts";
import { loadOrCreatePlaneKey } from "../lib/keys.ts";
import { discoverPythons } from "../lib/pythons.ts";
import { SnapshotWatcher } from "../lib/watch.ts";
import { PlaneAgent } from "./agent.ts";
import { ArtifactCache } from "./artifacts.ts";
import { AsyncService, MAX_SOCKET_PATH_BYTES } from "./async-service.ts";
import type { WebhookPolicy } from "./async-worker.ts";
import { recordPlaneKey } from "./key-history.ts";
import { LoadMeter, wakeDeployment } from "./load.ts";
import { ProcessDriver, type ProcessDriverOptions } from "./process-driver.ts";
import { PlanePython, VirtualenvCache } from "./python-env.ts";
import { prepareSandbox } from "./sandbox.ts";
import { fetchReplicaSecrets } from "./secrets.ts";
import { TlsStore, wildcardWarning } from "./tls-store.ts";
import { WebhookSecrets } from "./webhook-secrets.ts";

export interface PlaneConfig {
  name: string;
  /** The region the operator registered this plane in; the snapshot must agree. */
  region: string;
  controlUrl: string;
  token: string;
  dataDir: string;
  ingress: { host: string; port: number };
  /** Operator listener (metrics, health, audit, evidence, logs). */
  admin: { host: string; port: number } | null;
  /** Audit files whose last batch is older than this are removed (`--audit-retention`). Default 30 days. */
  auditRetentionMs?: number;
  /** The plane's own certificate (its addresses): hops, and every name `tlsDir` has no certificate for. */
  tls: { cert: string; key: string } | null;
  /** Certificates by hostname, served by SNI and reloaded on change (src/plane/tls-store.ts); needs `tls`. */
  tlsDir?: string | null;
  /** CA that signs the other planes' ingress certificates: hops to peers then go over HTTPS. */
  peerCa?: string | null;
  limits?: Partial<IngressLimits>;
  /** Sign a receipt on every inference response (`--receipts`, default on; docs/evidence.md#receipts). */
  receipts?: boolean;
  /** Held requests per deployment and the Retry-After of a 429 (`--park-queue`, `--retry-after`). */
  backpressure?: BackpressureLimits;
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
  /**
   * Python for truss packages: interpreters the operator names (preferred, then /usr/local/bin and
   * /usr/bin), and where pip takes requirements from (default: pip's own configuration).
   */
  python?: { interpreters?: readonly string[]; indexArgs?: readonly string[] };
  /** Async inference (docs/async.md): requests per replica at once, the webhook policy. */
  async?: { concurrency?: number; webhook?: Partial<WebhookPolicy>; maxLive?: number };
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
  /** Null when the data directory's path is too long for the service's socket (logged at start). */
  async: AsyncService | null;
  adminAddress: { host: string; port: number } | null;
  /** Drains in reverse order of start; `brief` stops the replicas fast and writes the audit, nothing else. */
  stop(options?: { brief?: boolean }): Promise<void>;
}

/** SIGTERM-to-SIGKILL grace of replicas in a brief stop: well inside ORPHAN_STOP_LIMIT_MS. */
const BRIEF_REPLICA_GRACE_MS = 1_000;

/** The plane's Ed25519 key pair, in its data directory (PKCS #8 PEM, mode 0600). */
export const PLANE_KEY_FILE = "plane.key";
/** Every public key the plane has signed with, kept when the key file is replaced (src/plane/key-history.ts). */
export const PLANE_KEY_HISTORY_FILE = "plane-keys.json";
/** The audit chain's directory in the data directory. */
export const AUDIT_DIR = "audit";
/** The async queue's directory in the data directory (its journal and the service's socket). */
export const ASYNC_DIR = "async";

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
  const keyFile = join(config.dataDir, PLANE_KEY_FILE);
  const planeKey = await loadOrCreatePlaneKey(keyFile);
  const keys = await recordPlaneKey(
    join(config.dataDir, PLANE_KEY_HISTORY_FILE),
    keyFile,
    planeKey.key,
    planeKey.created,
    Date.now(),
  );
  if (keys.reset !== null) {
    logger.error({ reason: keys.reset }, "plane key history unreadable; started anew");
  }
  logger.info(
    { key_id: planeKey.key.keyId, created: planeKey.created, since: keys.since },
    planeKey.created ? "plane key created" : "plane key loaded",
  );
  const certificates = await startCertificates(config, logger);
  const registry = new Registry();
  // The process's own health (RSS, open fds, event-loop delay, GC, heap) beside the plane's metrics: what an
  // operator watches first, and what the soak reads (prom-client's standard names, no request labels).
  collectDefaultMetrics({ register: registry });
  // Audit records name models, environments and request ids: the directory is the plane's alone (its
  // files are created 0600), whatever an older version or the umask left.
  const auditDir = join(config.dataDir, AUDIT_DIR);
  await mkdir(auditDir, { recursive: true, mode: 0o700 });
  await chmod(auditDir, 0o700);
  const audit = new AuditLog({
    dir: auditDir,
    plane: { name: config.name, region: config.region },
    signingKey: planeKey.key,
    retentionMs: config.auditRetentionMs ?? DEFAULT_AUDIT_RETENTION_MS,
    // Seals made with the plane's earlier keys are checked with them too, not left unverified.
    verifyingKeys: () => keys.verifyingKeys,
    onError: (err) => logger.error({ err }, "audit write failed"),
  });
  await audit.start();
  const pythons = await discoverPythons({ configured: config.python?.interpreters ?? [] });
  logger.info(
    {
      interpreters: pythons.interpreters.map((i) => ({ path: i.path, version: i.version.join(".") })),
      skipped: pythons.skipped,
    },
    "python interpreters for truss packages",
  );
  const sandboxMode = config.sandbox?.mode ?? "bwrap";
  const sandbox = await prepareSandbox(sandboxMode, {
    // Their installations are bound read-only for the replicas that run on them.
    readOnly: pythons.interpreters.map((i) => i.prefix),
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
  const venvs = new VirtualenvCache({
    root: join(config.dataDir, "venvs"),
    env: process.env,
    ...(config.python?.indexArgs !== undefined ? { indexArgs: config.python.indexArgs } : {}),
  });
  // A build cut short by the plane's death left a work directory, never a virtualenv taken as built.
  await venvs.sweep();
  const driver = new ProcessDriver({
    dataDir: config.dataDir,
    host: config.replicaHost ?? "127.0.0.1",
    sandbox,
    logger,
    python: new PlanePython({ interpreters: async () => pythons.interpreters, venvs }),
    // Only at a replica's start, with the plane's credential; the values go to that replica's directory only.
    secrets: (replicaId, dir) =>
      fetchReplicaSecrets({
        controlUrl: config.controlUrl,
        planeToken: config.token,
        plane: config.name,
        replicaId,
        dir,
      }),
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
  const load = new LoadMeter();
  // Asks the control plane to wake a deployment this plane holds requests for (the ingress, the async queue).
  const waker = wakeDeployment({
    controlUrl: config.controlUrl,
    plane: config.name,
    token: config.token,
    load,
    logger,
  });
  const agent = new PlaneAgent({
    plane: config.name,
    controlUrl: config.controlUrl,
    token: config.token,
    driver,
    artifacts,
    logger,
    counts: { take: () => audit.takeRequestCounts(), restore: (c) => audit.restoreRequestCounts(c) },
    publicKey: planeKey.key.publicKey,
    keyCreatedAt: keys.since,
    adminUrl: () => (config.admin === null ? null : adminAddress ? httpUrl(adminAddress) : undefined),
    sandbox: sandbox.report,
    load: () => load.report(),
  });

  let current: PlaneSnapshot | null = null;
  const watcher = new SnapshotWatcher<PlaneSnapshot>({
    url: `${config.controlUrl}/v1/internal/planes/${encodeURIComponent(config.name)}/snapshot`,
    token: config.token,
    parse: snapshotParser({ plane: config.name, region: config.region }),
    cacheFile: join(config.dataDir, "snapshot.json"),
    logger,
    onStateChange: (state, err) => {
      logger.info({ state, err: err?.message }, "control plane connection");
      // Webhooks held for want of their team's secrets go out as soon as the control plane is back.
      if (state === "connected") asyncService?.worker.secretsMayBeBack();
    },
  });
  // The watcher hands over only snapshots that passed the check (this plane's, whole and consistent).
  const accept = (s: PlaneSnapshot) => {
    current = s;
    agent.apply(s);
  };
  watcher.subscribe(accept);

  // Async requests are held here, in this plane's region, and run only by its own replicas.
  const asyncIngress = {
    socketPath: join(config.dataDir, ASYNC_DIR, "s.sock"),
    token: randomBytes(32).toString("base64url"),
  };
  const webhookSecrets = new WebhookSecrets({
    controlUrl: config.controlUrl,
    planeToken: config.token,
    plane: config.name,
  });
  let asyncService: AsyncService | null = new AsyncService({
    plane: config.name,
    dir: join(config.dataDir, ASYNC_DIR),
    ...asyncIngress,
    ...(config.async?.maxLive !== undefined ? { maxLive: config.async.maxLive } : {}),
    worker: {
      replicas: agent.localReplicas,
      resolve: (r) => {
        const res = resolveAsyncTarget(current, config.region, r.model_id, r.target);
        return res.ok
          ? res
          : { ok: false, final: res.final, error: { code: res.code, message: res.message } };
      },
      webhookSecrets: webhookSecrets.get,
      load,
      wake: async (id: string) => {
        await waker(id);
      },
      ...(config.async?.concurrency !== undefined ? { concurrency: config.async.concurrency } : {}),
      ...(config.async?.webhook ? { webhook: config.async.webhook } : {}),
      ...(config.limits?.predictTimeoutMs ? { predictTimeoutMs: config.limits.predictTimeoutMs } : {}),
    },
    logger,
  });

  if (Buffer.byteLength(asyncIngress.socketPath) > MAX_SOCKET_PATH_BYTES) {
    logger.error(
      { socket: asyncIngress.socketPath },
      "async inference is off: the data directory's path is too long for the async service's socket",
    );
    asyncService = null;
  }

  const ingress = createIngress({
    plane: { name: config.name, region: config.region },
    listen: config.ingress,
    ...(config.tls ? { tls: { ...config.tls, ...(certificates ? { sni: certificates } : {}) } } : {}),
    ...(config.peerCa ? { peerScheme: "https" as const, peerConnect: { ca: config.peerCa } } : {}),
    signingKey: planeKey.key,
    snapshot: () => current,
    localReplicas: agent.localReplicas,
    load,
    wake: waker,
    ...(config.backpressure ? { backpressure: config.backpressure } : {}),
    ...(config.limits ? { limits: config.limits } : {}),
    ...(config.ingressTransport ? { transport: config.ingressTransport } : {}),
    ...(config.receipts === false ? { receipts: false } : {}),
    logger,
    registry,
    audit,
    ...(asyncService !== null ? { async: asyncIngress } : {}),
  });

  agent.start();
  await watcher.start();
  const cached = watcher.current();
  if (cached) accept(cached);
  await asyncService?.start();
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
      regionOf: (plane) => current?.planes.find((p) => p.name === plane)?.region,
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
    async: asyncService,
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
      // What is still running is cut off and runs again after a restart (the journal says IN_PROGRESS).
      await asyncService?.stop();
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
  /** The region of another plane, from the current snapshot (for requests handed over a hop). */
  regionOf(plane: string): string | undefined;
}

function httpUrl(a: { host: string; port: number }): string {
  return `http://${a.host.includes(":") ? `[${a.host}]` : a.host}:${a.port}`;
}

/**
 * The operator listener. `/metrics` and `/healthz` are open (bind it to a private address); audit records,
 * exports, evidence pieces and replica logs need the plane's credential, since they name models,
 * environments and request ids. The control plane's signed request opens replica logs and evidence pieces
 * only (see `isControlPlane`).
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
    const forControl = logs !== null || url.pathname === "/v1/evidence";
    if (!isPlaneCredential(req, deps.token) && !(forControl && isControlPlane(req, deps))) {
      return send(401, errorBody("unauthorized", "Send the plane credential as a Bearer token."));
    }
    if (url.pathname === "/v1/evidence") {
      const parsed = parseEvidenceScope(url.searchParams, Date.now());
      if (!parsed.ok) return send(400, errorBody("invalid_request", parsed.message, { field: parsed.field }));
      return send(200, await deps.audit.evidencePiece(parsed.scope, deps.regionOf));
    }
    if (url.pathname === "/v1/audit/export") return await sendExport(res, url.searchParams, deps.audit, send);
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
    // Past the head (an export that failed while streaming), the only honest answer is a cut connection.
    if (res.headersSent) res.destroy(err as Error);
    else send(500, errorBody("internal_error", (err as Error).message));
  }
}

/**
 * `GET /v1/audit/export?from=&to=`: the batches of the chain that hold records of the range, whole, as JSON
 * lines after a header (src/gateway/audit.ts `export`); `meridian verify --audit-export` checks it. Both
 * bounds are optional (the whole chain kept). Streamed: a day of a busy plane does not fit in memory.
 */
async function sendExport(
  res: http.ServerResponse,
  q: URLSearchParams,
  audit: AuditLog,
  send: (status: number, body: unknown) => void,
): Promise<void> {
  const range: { from?: string; to?: string } = {};
  for (const field of ["from", "to"] as const) {
    const value = q.get(field);
    if (value === null) continue;
    const t = parseEvidenceTime(value, field);
    if (!t.ok) return send(400, errorBody("invalid_request", t.message, { field }));
    range[field] = new Date(t.ms).toISOString();
  }
  if (range.from !== undefined && range.to !== undefined && range.from >= range.to) {
    return send(400, errorBody("invalid_request", "from must be earlier than to", { field: "from" }));
  }
  res.writeHead(200, { "content-type": "application/x-ndjson" });
  for await (const line of audit.exportLines(range)) {
    if (res.destroyed) return;
    if (!res.write(line)) await once(res, "drain");
  }
  res.end();
}

function isPlaneCredential(req: http.IncomingMessage, token: string): boolean {
  const given = Buffer.from(req.headers.authorization ?? "");
  const want = Buffer.from(`Bearer ${token}`);
  return given.length === want.length && timingSafeEqual(given, want);
}

/**
 * The control plane reads replica logs and evidence pieces on a user's behalf (neither is stored outside
 * the plane); it signs the request (this plane, method, target, time) with its own key, which this plane
 * knows only by the public half in its snapshot. Only those routes accept this: the audit trail itself
 * (records, exports) stays in the region (DESIGN.md §2.6); a piece is counts, signed by this plane.
 */
function isControlPlane(req: http.IncomingMessage, deps: AdminDeps): boolean {
  const header = req.headers[CONTROL_ACCESS_HEADER];
  if (typeof header !== "string") return false;
  const request = { method: req.method ?? "", target: req.url ?? "" };
  return deps.controlAccess.verify(header, request, deps.snapshot()?.control_key ?? null, Date.now()).ok;
}
