// The ingress gateway of a workload plane (DESIGN.md §2.2, §2.3, §2.6, §4): node:http in front, undici
// `dispatch` with raw header arrays behind (PERFORMANCE-NOTES.md), routing decided by `core/routing`.
// It authenticates, routes by Host, streams to a local replica or hands over to one peer plane, stamps
// the proof headers on every response, and writes one audit record per request.

import { hash, randomUUID } from "node:crypto";
import http, { type IncomingMessage, type ServerResponse } from "node:http";
import https from "node:https";
import type { AddressInfo, Socket } from "node:net";
import { performance } from "node:perf_hooks";
import type { Readable } from "node:stream";
import { type Logger, pino } from "pino";
import type { Registry } from "prom-client";
import { Agent, type Dispatcher } from "undici";
import { type ErrorCode, errorBody, errorStatus } from "../core/errors.ts";
import { parseHost } from "../core/host.ts";
import { decideRoute, indexSnapshot, type RouteContext, type RouteIndex } from "../core/routing.ts";
import type { PlaneRef, PlaneSnapshot } from "../core/snapshot.ts";
import type { AuditSink } from "./audit.ts";
import { acceptableRequestId, apiKeyOf, PROOF, scanRequestHeaders, scanResponseHeaders } from "./headers.ts";
import { HOP_HEADER, HOP_MAX_AGE_MS, signHop, verifyHop } from "./hop.ts";
import { createGatewayMetrics, type GatewayMetrics } from "./metrics.ts";

/** The truss model server's predict route (what a replica serves). */
export const REPLICA_PREDICT_PATH = "/v1/models/model:predict";

export interface IngressLimits {
  /** Request body limit; larger bodies get 413 `payload_too_large`. Default 100 MiB. */
  maxBodyBytes: number;
  /** How long a model may take to answer (to its response headers, and between body chunks). Default 1200 s. */
  predictTimeoutMs: number;
  /** A client must send its request headers within this. Default 30 s. */
  headersTimeoutMs: number;
  /** A client must send its whole request within this. Default 300 s. */
  requestTimeoutMs: number;
  /** Idle keep-alive connections from clients are closed after this. Default 65 s. */
  keepAliveTimeoutMs: number;
  /** Largest request header section accepted (431 beyond). Default 16 KiB. */
  maxHeaderBytes: number;
  /** Connecting to a replica or a peer plane. Default 5 s. */
  connectTimeoutMs: number;
  /** Bodies up to this size (with a Content-Length) are read whole before dispatch. Default 64 KiB. */
  bufferBodyBytes: number;
  /** How old a plane-to-plane hop may be. Default 30 s. */
  hopMaxAgeMs: number;
  /** `stop()` waits this long for in-flight requests before closing their connections. Default 30 s. */
  drainTimeoutMs: number;
}

export const DEFAULT_LIMITS: Readonly<IngressLimits> = Object.freeze({
  maxBodyBytes: 100 * 1024 * 1024,
  predictTimeoutMs: 1_200_000,
  headersTimeoutMs: 30_000,
  requestTimeoutMs: 300_000,
  keepAliveTimeoutMs: 65_000,
  maxHeaderBytes: 16 * 1024,
  connectTimeoutMs: 5_000,
  bufferBodyBytes: 64 * 1024,
  hopMaxAgeMs: HOP_MAX_AGE_MS,
  drainTimeoutMs: 30_000,
});

export interface IngressOptions {
  /** This plane; must match `snapshot().plane`, or the ingress refuses to route (503). */
  plane: { name: string; region: string };
  /** Where to listen. Default 127.0.0.1, port 0. */
  listen?: { host: string; port: number };
  /** Serve HTTPS with this certificate (for the inference domain) and key. */
  tls?: { cert: string | Buffer; key: string | Buffer };
  /** The plane's current snapshot; the plane swaps it atomically. The index is rebuilt only on change. */
  snapshot(): PlaneSnapshot | null;
  /** `host:port` of this plane's READY replicas of a deployment (from the plane agent). */
  localReplicas(deploymentId: string): readonly string[];
  limits?: Partial<IngressLimits>;
  logger?: Logger;
  /** Metrics are registered here (one ingress per registry). */
  registry?: Registry;
  audit?: AuditSink;
  /** Scheme of peer planes' ingresses for hops. Default `http`. */
  peerScheme?: "http" | "https";
  /** undici connect options for peer hops over HTTPS (CA, servername). */
  peerConnect?: Agent.Options["connect"];
  /** Clock for hop signing and audit times (tests). */
  now?: () => number;
}

export interface Ingress {
  /** The request handler, usable without listening (Expect: 100-continue is handled by the server). */
  readonly handler: (req: IncomingMessage, res: ServerResponse) => void;
  start(): Promise<void>;
  stop(): Promise<void>;
  /** Bound address once started. */
  readonly address: { host: string; port: number } | null;
  readonly metrics: GatewayMetrics | null;
}

class ClientGone extends Error {
  override name = "ClientGone";
}
class BodyTooLarge extends Error {
  override name = "BodyTooLarge";
}

interface Exchange {
  req: IncomingMessage;
  res: ServerResponse;
  startedAt: number;
  time: number;
  requestId: string;
  route: string[];
  forwardedFrom: string | null;
  context: RouteContext | null;
  processedBy: string | null;
  errorCode: string | null;
  /** Aborts the upstream call in progress. */
  cancel: ((err: Error) => void) | null;
  clientGone: boolean;
  /** Whether the request declared a body (Content-Length > 0 or Transfer-Encoding); null until scanned. */
  bodyDeclared: boolean | null;
}

interface Target {
  kind: "replica" | "plane";
  /** Endpoint `host:port` (replica) or plane name. */
  name: string;
  origin: string;
  path: string;
  plane: PlaneRef | null;
}

type Body =
  | { kind: "none" }
  | { kind: "buffer"; data: Buffer }
  | { kind: "stream"; state: { started: boolean; bytes: number } };

/** One request on its way upstream: the candidates in order and what every attempt sends. */
interface Forward {
  ex: Exchange;
  targets: Target[];
  /** Headers for the upstream; hops to a peer plane add a fresh signed hop header per attempt. */
  headers: string[];
  hop: { secret: string } | null;
  body: Body;
  warning: string | null;
}

/** What an upstream call reports back to its ingress (one object per ingress, not per request). */
interface CallHooks {
  /** The call no longer occupies its replica (for least-busy ordering). */
  release(target: Target): void;
  failed(forward: Forward, attempt: number, err: Error, connected: boolean): void;
}

const CONNECT_ERRORS = new Set(["ECONNREFUSED", "EHOSTUNREACH", "ENETUNREACH", "EADDRNOTAVAIL", "ENOTFOUND"]);

export function createIngress(options: IngressOptions): Ingress {
  const limits: IngressLimits = { ...DEFAULT_LIMITS, ...options.limits };
  const self = options.plane;
  const log = options.logger ?? pino({ level: "silent" });
  const metrics = options.registry ? createGatewayMetrics(options.registry) : null;
  const audit = options.audit ?? null;
  const now = options.now ?? Date.now;
  const scheme: "http" | "https" = options.tls ? "https" : "http";
  const peerScheme = options.peerScheme ?? "http";
  const agent = new Agent({
    connections: null,
    pipelining: 1,
    keepAliveTimeout: 30_000,
    keepAliveMaxTimeout: 600_000,
    connect: { timeout: limits.connectTimeoutMs, ...options.peerConnect },
  });

  // The index follows the snapshot object: rebuilt only when the plane swaps in a new one.
  let lastSnapshot: PlaneSnapshot | null | undefined;
  let index: RouteIndex | null = null;
  let previousSecret: { secret: string; until: number } | null = null;

  function currentIndex(): RouteIndex | null {
    const snap = options.snapshot();
    if (snap === lastSnapshot) return index;
    lastSnapshot = snap;
    const before = index;
    if (snap === null) {
      index = null;
    } else if (snap.plane.name !== self.name || snap.plane.region !== self.region) {
      log.error({ plane: self.name, snapshot_plane: snap.plane.name }, "snapshot is for another plane");
      index = null;
    } else {
      index = indexSnapshot(snap);
    }
    if (before !== null && index !== null && before.hopSecret !== index.hopSecret) {
      previousSecret = { secret: before.hopSecret, until: now() + limits.hopMaxAgeMs };
    }
    return index;
  }

  function hopSecrets(current: RouteIndex): string[] {
    if (previousSecret !== null && previousSecret.until >= now()) {
      return [current.hopSecret, previousSecret.secret];
    }
    return [current.hopSecret];
  }

  // Least-busy replica first (ties broken round-robin); the others follow as retry candidates.
  const busy = new Map<string, number>();
  let turn = 0;
  function orderReplicas(endpoints: readonly string[]): string[] {
    const n = endpoints.length;
    const start = turn++ % n;
    let best = start;
    let bestBusy = Number.POSITIVE_INFINITY;
    for (let k = 0; k < n; k++) {
      const i = (start + k) % n;
      const b = busy.get(endpoints[i]!) ?? 0;
      if (b < bestBusy) {
        best = i;
        bestBusy = b;
      }
    }
    const out = [endpoints[best]!];
    for (let k = 1; k < n; k++) out.push(endpoints[(best + k) % n]!);
    return out;
  }

  function orderPlanes(planes: readonly PlaneRef[]): PlaneRef[] {
    // Planes arrive best first; rotate among the leading group of one region to spread load.
    const lead = planes[0]!.region;
    let group = 0;
    while (group < planes.length && planes[group]!.region === lead) group++;
    const start = turn++ % group;
    const out: PlaneRef[] = [];
    for (let k = 0; k < group; k++) out.push(planes[(start + k) % group]!);
    for (let k = group; k < planes.length; k++) out.push(planes[k]!);
    return out;
  }

  let inflight = 0;
  let drained: (() => void) | null = null;

  function proofHeaders(ex: Exchange): string[] {
    return [
      PROOF.requestId,
      ex.requestId,
      PROOF.region,
      self.region,
      PROOF.plane,
      self.name,
      PROOF.deploymentId,
      ex.context?.deploymentId ?? "-",
      PROOF.route,
      ex.route.join(", "),
    ];
  }

  function hasUnreadBody(ex: Exchange): boolean {
    const { req } = ex;
    if (req.complete) return false;
    if (ex.bodyDeclared !== null) return ex.bodyDeclared;
    const cl = req.headers["content-length"];
    return (cl !== undefined && cl !== "0") || req.headers["transfer-encoding"] !== undefined;
  }

  function fail(
    ex: Exchange,
    code: ErrorCode,
    message: string | null = null,
    detail: unknown = null,
    extra: string[] = [],
  ): void {
    const { res } = ex;
    ex.errorCode = code;
    if (res.headersSent) {
      // The status line is out; the only honest signal left is an aborted response.
      res.destroy();
      return;
    }
    if (res.destroyed) return;
    const body = JSON.stringify(errorBody(code, message ?? undefined, detail));
    const headers = [
      "content-type",
      "application/json",
      "content-length",
      String(Buffer.byteLength(body)),
      ...proofHeaders(ex),
      ...extra,
    ];
    // An unread body would have to be drained to reuse the connection; closing is cheaper and safer.
    if (hasUnreadBody(ex)) headers.push("connection", "close");
    res.writeHead(errorStatus(code), headers);
    res.end(body);
  }

  function finish(ex: Exchange): void {
    const { res } = ex;
    const aborted = !res.writableFinished;
    if (aborted) {
      ex.clientGone = true;
      ex.cancel?.(new ClientGone("client went away"));
    }
    const status = res.headersSent ? res.statusCode : 499;
    const latency = performance.now() - ex.startedAt;
    const ctx = ex.context;
    audit?.record({
      time: isoTime(ex.time),
      request_id: ex.requestId,
      model_id: ctx?.modelId ?? null,
      environment: ctx?.environment ?? null,
      deployment_id: ctx?.deploymentId ?? null,
      hostname_form: ctx?.form ?? null,
      route: ex.route,
      status,
      latency_ms: Math.round(latency * 1000) / 1000,
      plane: self.name,
      region: self.region,
      processed_by: ex.processedBy,
      forwarded_from: ex.forwardedFrom,
      error_code: ex.errorCode,
      aborted,
    });
    metrics?.observe(
      {
        environment: ctx?.environment ?? "",
        region: self.region,
        hostname_form: ctx?.form ?? "unknown",
        status_code: String(status),
      },
      latency / 1000,
    );
    metrics?.inflight(-1);
    inflight--;
    if (inflight === 0) drained?.();
  }

  function handle(req: IncomingMessage, res: ServerResponse, expectContinue: boolean): void {
    inflight++;
    metrics?.inflight(1);
    const ex: Exchange = {
      req,
      res,
      startedAt: performance.now(),
      time: now(),
      requestId: "",
      route: [self.name],
      forwardedFrom: null,
      context: null,
      processedBy: null,
      errorCode: null,
      cancel: null,
      clientGone: false,
      bodyDeclared: null,
    };
    res.once("close", () => finish(ex));
    try {
      route(ex, expectContinue);
    } catch (err) {
      log.error({ err, request_id: ex.requestId }, "ingress handler failed");
      fail(ex, "internal_error");
    }
  }

  function route(ex: Exchange, expectContinue: boolean): void {
    const { req, res } = ex;
    const scan = scanRequestHeaders(req.rawHeaders);
    ex.bodyDeclared =
      (scan.contentLength !== undefined && scan.contentLength !== "0") || scan.transferEncoding;
    ex.requestId = acceptableRequestId(scan.requestId) ? scan.requestId : randomUUID();
    const idx = currentIndex();
    if (idx === null) {
      fail(ex, "service_unavailable", "This plane has no routing configuration yet.");
      return;
    }

    // RFC 9112 §3.2.2–3.2.3: absolute-form targets carry the authority and override Host.
    let target = req.url ?? "/";
    let hostValue = scan.host;
    if (!target.startsWith("/")) {
      const m = /^https?:\/\/([^/?#]*)([^#]*)$/i.exec(target);
      if (m === null) {
        fail(ex, "route_not_found");
        return;
      }
      hostValue = m[1];
      target = m[2] || "/";
    } else if (scan.hostCount !== 1) {
      // RFC 9112 §3.2: a request with no Host, or more than one, is answered 400.
      fail(
        ex,
        "invalid_host",
        `The request has ${scan.hostCount} Host header fields; exactly one is required.`,
      );
      return;
    }
    const parsed = parseHost(hostValue, idx.domain);
    if (!parsed.ok) {
      fail(ex, parsed.code, parsed.reason);
      return;
    }
    ex.context = {
      form: parsed.host.form,
      modelId: parsed.host.modelId,
      environment: parsed.host.form === "regional" ? parsed.host.environment : null,
      deploymentId: null,
      region: null,
    };

    if (scan.hop !== undefined) {
      const check = verifyHop(scan.hop, ex.requestId, hopSecrets(idx), now(), limits.hopMaxAgeMs);
      const from = check.ok ? idx.planes.get(check.from) : undefined;
      if (!check.ok || from === undefined || from.name === self.name) {
        fail(ex, "forbidden", "The plane-to-plane hop is not valid.", {
          reason: check.ok ? "unknown_plane" : check.reason,
        });
        return;
      }
      ex.forwardedFrom = from.name;
      ex.route = [from.name, self.name];
    }

    const q = target.indexOf("?");
    const path = q < 0 ? target : target.slice(0, q);
    const key = apiKeyOf(scan.authorization);
    const decision = decideRoute(idx, {
      host: parsed.host,
      method: req.method ?? "",
      path,
      keyHash: key === null ? null : hash("sha256", key),
      forwardedFrom: ex.forwardedFrom,
      localReady: { has: (id) => options.localReplicas(id).length > 0 },
      scheme: ex.forwardedFrom !== null && scan.forwardedProto === "https" ? "https" : scheme,
    });
    ex.context = decision.context;
    if (decision.kind === "refuse") {
      fail(
        ex,
        decision.code,
        decision.message,
        decision.detail,
        decision.allow ? ["allow", decision.allow] : [],
      );
      return;
    }

    const cl = scan.contentLength;
    const contentLength = cl === undefined ? null : Number(cl);
    if (contentLength !== null && contentLength > limits.maxBodyBytes) {
      fail(ex, "payload_too_large", null, { limit_bytes: limits.maxBodyBytes });
      return;
    }
    if (expectContinue) res.writeContinue();

    const remote = req.socket.remoteAddress ?? "";
    const trusted = ex.forwardedFrom !== null;
    const forwarding = [
      PROOF.requestId,
      ex.requestId,
      "x-forwarded-for",
      scan.forwardedFor === undefined ? remote : `${scan.forwardedFor}, ${remote}`,
      "x-forwarded-proto",
      trusted && scan.forwardedProto !== undefined ? scan.forwardedProto : scheme,
      "x-forwarded-host",
      trusted && scan.forwardedHost !== undefined ? scan.forwardedHost : (hostValue ?? ""),
    ];

    let targets: Target[];
    let headers: string[];
    let hop: Forward["hop"] = null;
    if (decision.kind === "serve") {
      const endpoints = options.localReplicas(decision.context.deploymentId);
      if (endpoints.length === 0) {
        fail(ex, "model_unavailable", null, { region: self.region });
        return;
      }
      targets = orderReplicas(endpoints).map((ep) => ({
        kind: "replica",
        name: ep,
        origin: `http://${ep}`,
        path: REPLICA_PREDICT_PATH,
        plane: null,
      }));
      // The API key stops at the ingress: model code never sees it.
      headers = scan.passthrough.concat(forwarding);
    } else {
      targets = orderPlanes(decision.planes).map((p) => ({
        kind: "plane",
        name: p.name,
        origin: `${peerScheme}://${p.ingress[0]}`,
        path: target,
        plane: p,
      }));
      // Host and Authorization pass unchanged: the receiving plane routes and authenticates by itself.
      headers = scan.passthrough.concat(forwarding, ["host", hostValue ?? "", PROOF.route, self.name]);
      if (scan.authorization !== undefined) headers.push("authorization", scan.authorization);
      hop = { secret: idx.hopSecret };
    }
    const forward: Forward = { ex, targets, headers, hop, body: NO_BODY, warning: decision.warning };

    const hasBody = contentLength !== null ? contentLength > 0 : scan.transferEncoding;
    if (!hasBody) {
      dispatch(forward, 0);
    } else if (contentLength !== null && contentLength <= limits.bufferBodyBytes) {
      // A client that goes away mid-body gets no dispatch; finish() records it.
      readWhole(req, forward, dispatchBuffered);
    } else {
      forward.body = { kind: "stream", state: { started: false, bytes: 0 } };
      dispatch(forward, 0);
    }
  }

  function dispatchBuffered(forward: Forward, data: Buffer): void {
    if (forward.ex.clientGone) return;
    forward.body = { kind: "buffer", data };
    dispatch(forward, 0);
  }

  function bodyFor(ex: Exchange, body: Body): Dispatcher.DispatchOptions["body"] {
    switch (body.kind) {
      case "none":
        return null;
      case "buffer":
        return body.data;
      case "stream":
        // undici reads async iterables (documented), though its DispatchOptions type omits them.
        return streamBody(ex.req, limits.maxBodyBytes, body.state) as unknown as Readable;
    }
  }

  const hooks: CallHooks = {
    release(t) {
      if (t.kind !== "replica") return;
      const b = (busy.get(t.name) ?? 1) - 1;
      if (b <= 0) busy.delete(t.name);
      else busy.set(t.name, b);
    },
    failed: onUpstreamError,
  };

  function dispatch(forward: Forward, i: number): void {
    const { ex, targets } = forward;
    const t = targets[i]!;
    const replica = t.kind === "replica";
    if (replica) busy.set(t.name, (busy.get(t.name) ?? 0) + 1);
    const timeout = replica ? limits.predictTimeoutMs : limits.predictTimeoutMs + 1_000;
    const headers =
      forward.hop === null
        ? forward.headers
        : forward.headers.concat([HOP_HEADER, signHop(forward.hop.secret, self.name, now(), ex.requestId)]);
    agent.dispatch(
      {
        origin: t.origin,
        path: t.path,
        method: "POST",
        headers,
        body: bodyFor(ex, forward.body),
        headersTimeout: timeout,
        bodyTimeout: timeout,
      },
      new UpstreamCall(forward, i, self, hooks),
    );
  }

  function onUpstreamError(forward: Forward, i: number, err: Error, connected: boolean): void {
    const { ex, targets, body } = forward;
    if (ex.clientGone || err instanceof ClientGone) return;
    const t = targets[i]!;
    if (err instanceof BodyTooLarge) {
      fail(ex, "payload_too_large", null, { limit_bytes: limits.maxBodyBytes });
      return;
    }
    const code = (err as { code?: string }).code ?? "";
    // Retry only when no byte reached the upstream: the connection never got to the request, and the
    // body (if streamed) was never read.
    const untouched =
      !connected &&
      (body.kind !== "stream" || !body.state.started) &&
      (CONNECT_ERRORS.has(code) || code === "UND_ERR_CONNECT_TIMEOUT");
    if (untouched) {
      metrics?.upstreamFailure(t.kind === "plane" ? "peer_unreachable" : "connect");
      log.warn({ request_id: ex.requestId, target: t.name, code }, "upstream unreachable");
      if (i + 1 < targets.length) {
        dispatch(forward, i + 1);
        return;
      }
      fail(ex, "model_unavailable", "No replica accepted the request.", {
        region: t.plane?.region ?? self.region,
      });
      return;
    }
    if (code === "UND_ERR_HEADERS_TIMEOUT" || code === "UND_ERR_BODY_TIMEOUT") {
      metrics?.upstreamFailure("timeout");
      fail(ex, "upstream_timeout", null, { timeout_ms: limits.predictTimeoutMs });
      return;
    }
    metrics?.upstreamFailure("reset");
    log.warn({ request_id: ex.requestId, target: t.name, err: err.message, code }, "upstream failed");
    fail(ex, "replica_failed");
    return;
  }

  const handler = (req: IncomingMessage, res: ServerResponse) => handle(req, res, false);

  const serverOptions: http.ServerOptions = {
    keepAlive: true,
    keepAliveTimeout: limits.keepAliveTimeoutMs,
    headersTimeout: limits.headersTimeoutMs,
    requestTimeout: limits.requestTimeoutMs,
    maxHeaderSize: limits.maxHeaderBytes,
    // Timeouts are enforced on this tick; Node's 30 s default lets a slow client linger too long.
    connectionsCheckingInterval: Math.min(1_000, limits.headersTimeoutMs),
    // The ingress answers a missing Host itself, with the error body and proof headers.
    requireHostHeader: false,
    joinDuplicateHeaders: false,
  };
  const server = options.tls
    ? https.createServer({ ...serverOptions, cert: options.tls.cert, key: options.tls.key }, handler)
    : http.createServer(serverOptions, handler);
  server.on("checkContinue", (req: IncomingMessage, res: ServerResponse) => handle(req, res, true));
  server.on("clientError", (err: NodeJS.ErrnoException, socket: Socket) => {
    metrics?.malformed(err.code ?? "unknown");
    const pending = (socket as Socket & { _httpMessage?: ServerResponse | null })._httpMessage;
    if (err.code === "ECONNRESET" || !socket.writable || pending?.headersSent === true) {
      socket.destroy();
      return;
    }
    const code: ErrorCode =
      err.code === "HPE_HEADER_OVERFLOW"
        ? "headers_too_large"
        : err.code === "ERR_HTTP_REQUEST_TIMEOUT"
          ? "request_timeout"
          : "invalid_request";
    const body = JSON.stringify(errorBody(code));
    const status = errorStatus(code);
    socket.end(
      `HTTP/1.1 ${status} ${http.STATUS_CODES[status] ?? ""}\r\n` +
        `content-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n` +
        `${PROOF.requestId}: ${randomUUID()}\r\n${PROOF.region}: ${self.region}\r\n${PROOF.plane}: ${self.name}\r\n` +
        `${PROOF.deploymentId}: -\r\n${PROOF.route}: ${self.name}\r\n\r\n${body}`,
    );
    socket.destroySoon();
  });

  let address: { host: string; port: number } | null = null;

  return {
    handler,
    metrics,
    get address() {
      return address;
    },
    async start() {
      const listen = options.listen ?? { host: "127.0.0.1", port: 0 };
      await new Promise<void>((resolve, reject) => {
        server.once("error", reject);
        server.listen(listen.port, listen.host, () => {
          server.off("error", reject);
          resolve();
        });
      });
      const a = server.address() as AddressInfo;
      address = { host: a.address, port: a.port };
      log.info({ plane: self.name, region: self.region, ...address, scheme }, "ingress listening");
    },
    async stop() {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeIdleConnections();
      if (inflight > 0) {
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, limits.drainTimeoutMs);
          drained = () => {
            clearTimeout(timer);
            resolve();
          };
        });
      }
      server.closeAllConnections();
      await closed;
      await agent.destroy();
      address = null;
    },
  };
}

/**
 * One upstream exchange, on undici's dispatch handler interface with raw header arrays (the cheapest
 * path measured). Streams the response to the client with backpressure both ways.
 */
class UpstreamCall implements Dispatcher.DispatchHandler {
  connected = false;
  private readonly ex: Exchange;
  private readonly target: Target;
  private readonly warning: string | null;
  private released = false;
  private resume: (() => void) | null = null;

  constructor(
    private readonly forward: Forward,
    private readonly attempt: number,
    private readonly self: { name: string; region: string },
    private readonly hooks: CallHooks,
  ) {
    this.ex = forward.ex;
    this.target = forward.targets[attempt]!;
    this.warning = forward.warning;
  }

  private release(): void {
    if (this.released) return;
    this.released = true;
    this.hooks.release(this.target);
  }

  onConnect(abort: (err?: Error) => void): void {
    this.connected = true;
    this.ex.cancel = abort;
    if (this.ex.clientGone) abort(new ClientGone("client went away"));
  }

  onHeaders(statusCode: number, rawHeaders: Buffer[], resume: () => void): boolean {
    if (statusCode < 200) return true; // interim responses are not relayed
    const { ex, target, self } = this;
    const { headers, proof } = scanResponseHeaders(rawHeaders, target.kind === "plane");
    const ctx = ex.context;
    if (target.kind === "replica") {
      ex.processedBy = self.name;
      headers.push(
        PROOF.requestId,
        ex.requestId,
        PROOF.region,
        self.region,
        PROOF.plane,
        self.name,
        PROOF.deploymentId,
        ctx?.deploymentId ?? "-",
        PROOF.route,
        ex.route.join(", "),
      );
    } else {
      // The peer plane stamped its own proof; the route it returns already includes this plane.
      const plane = target.plane!;
      const processedBy = proof.get(PROOF.plane) ?? plane.name;
      const route = proof.get(PROOF.route) ?? `${self.name}, ${plane.name}`;
      ex.processedBy = processedBy;
      ex.route = route.split(",").map((s) => s.trim());
      headers.push(
        PROOF.requestId,
        ex.requestId,
        PROOF.region,
        proof.get(PROOF.region) ?? plane.region,
        PROOF.plane,
        processedBy,
        PROOF.deploymentId,
        proof.get(PROOF.deploymentId) ?? ctx?.deploymentId ?? "-",
        PROOF.route,
        route,
      );
    }
    if (this.warning !== null && !headers.includes("warning")) headers.push("warning", this.warning);
    try {
      ex.res.writeHead(statusCode, headers);
    } catch (err) {
      // An upstream header Node refuses to send (invalid characters): the response cannot be relayed.
      this.ex.cancel?.(err as Error);
      return false;
    }
    this.resume = resume;
    return true;
  }

  onData(chunk: Buffer): boolean {
    if (this.ex.res.write(chunk)) return true;
    // Backpressure: undici pauses until resumed. Listening only now spares most responses a listener.
    if (this.resume !== null) this.ex.res.once("drain", this.resume);
    return false;
  }

  onComplete(): void {
    this.release();
    this.ex.res.end();
  }

  onError(err: Error): void {
    this.release();
    this.hooks.failed(this.forward, this.attempt, err, this.connected);
  }
}

const NO_BODY: Body = { kind: "none" };

// Requests arriving in the same millisecond share one ISO string (audit records).
let isoMs = Number.NaN;
let isoText = "";
function isoTime(ms: number): string {
  if (ms !== isoMs) {
    isoMs = ms;
    isoText = new Date(ms).toISOString();
  }
  return isoText;
}

/**
 * Reads a small body whole (its length is known and bounded by `bufferBodyBytes`), then calls `done`; never
 * calls it when the client goes away first. Callbacks rather than a Promise: this runs on most requests.
 */
function readWhole<T>(req: IncomingMessage, arg: T, done: (arg: T, data: Buffer) => void): void {
  let first: Buffer | null = null;
  let chunks: Buffer[] | null = null;
  let size = 0;
  req.on("data", (c: Buffer) => {
    size += c.length;
    if (first === null) {
      first = c;
    } else {
      if (chunks === null) chunks = [first];
      chunks.push(c);
    }
  });
  req.once("end", () =>
    done(arg, chunks === null ? (first ?? Buffer.alloc(0)) : Buffer.concat(chunks, size)),
  );
  // "error" and "close" before "end" mean the client went away: finish() records it.
  req.once("error", noop);
}

function noop(): void {}

/** The request body as undici reads it: counted against the limit, never destroying the client stream. */
async function* streamBody(
  req: IncomingMessage,
  limit: number,
  state: { started: boolean; bytes: number },
): AsyncGenerator<Buffer> {
  state.started = true;
  for await (const chunk of req.iterator({ destroyOnReturn: false }) as AsyncIterable<Buffer>) {
    state.bytes += chunk.length;
    if (state.bytes > limit) throw new BodyTooLarge("request body exceeds the limit");
    yield chunk;
  }
}
