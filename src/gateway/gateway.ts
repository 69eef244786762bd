// What every ingress transport shares (src/gateway/ingress.ts picks one): the routing index that follows
// the plane's snapshot, the per-request plan (authenticate, route, choose targets, build the upstream
// headers), the proof headers and the receipt that signs them, the retry rule, and the audit record and
// metrics. A transport owns only the bytes: reading requests, writing responses, calling upstreams.
// The plan's types are plan.ts's, the options options.ts's, the rules on bytes both transports apply
// rules.ts's: none imports a transport (test/architecture.test.ts keeps src/gateway free of import cycles).

import { hash, randomUUID } from "node:crypto";
import { STATUS_CODES } from "node:http";
import type { AddressInfo, Server } from "node:net";
import { performance } from "node:perf_hooks";
import { type Logger, pino } from "pino";
import { ASYNC_MAX_INPUT_BYTES } from "../core/async.ts";
import { decideAsync, matchAsyncPath } from "../core/async-routing.ts";
import { type Admission, DEFAULT_BACKPRESSURE_LIMITS } from "../core/autoscaling-settings.ts";
import { type ErrorCode, errorBody, errorStatus } from "../core/errors.ts";
import { parseHost } from "../core/host.ts";
import { normalizeAuthority, pathOfTarget } from "../core/http-signatures.ts";
import { decideRealtime, matchRealtimePath } from "../core/realtime-routing.ts";
import { RECEIPT_LABEL, RECEIPT_REQUEST_HEADER } from "../core/receipt.ts";
import {
  decideRoute,
  indexSnapshot,
  isWakePath,
  type RouteDecision,
  type RouteIndex,
} from "../core/routing.ts";
import type { DeploymentRoute, PlaneRef } from "../core/snapshot.ts";
import { appendReceipt, ContentDigester, contentDigest, EMPTY_CONTENT_DIGEST } from "../lib/receipts.ts";
import { asyncServiceHeaders, asyncServiceTarget } from "./async.ts";
import type { AuditSink } from "./audit.ts";
import { acceptableRequestId, apiKeyOf, PROOF, scanRequestHeaders, scanResponseHeaders } from "./headers.ts";
import { HOP_HEADER, HOP_REFUSED_HEADER, HOP_REFUSED_TIME, HopVerifier, signHop } from "./hop.ts";
import { createGatewayMetrics, type GatewayMetrics } from "./metrics.ts";
import type { IngressLimits, IngressOptions } from "./options.ts";
import { Parking, type ParkOutcome } from "./parking.ts";
import {
  type Exchange,
  type Forward,
  type Park,
  type Plan,
  REPLICA_PREDICT_PATH,
  type Refusal,
  type RequestHead,
  refuse,
  type Target,
  UNIX_PREFIX,
  type UpstreamFailure,
} from "./plan.ts";
import { RateLimiter } from "./rate-limit.ts";
import {
  HOP_CONTINUE_TIMEOUT,
  HOP_NO_REPLICA,
  HOP_REFUSED,
  UPGRADE_REQUIRED_FIELDS,
  upgradeAsk,
} from "./rules.ts";

/** The metric label of a request whose model (and so environment) did not resolve. */
const UNRESOLVED = "unknown";

export {
  type Exchange,
  type Forward,
  type HeldResponse,
  type Park,
  type Plan,
  REPLICA_PREDICT_PATH,
  type Refusal,
  type RequestHead,
  refuse,
  type Target,
  UNIX_PREFIX,
  type UpstreamFailure,
} from "./plan.ts";

const CONNECT_ERRORS = new Set([
  "ECONNREFUSED",
  // A replica's Unix socket that is not there (any more): nothing listens, as ECONNREFUSED on TCP.
  "ENOENT",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "EADDRNOTAVAIL",
  "ENOTFOUND",
  "CONNECT_TIMEOUT",
  // A peer plane that sent no 100 Continue (nor anything) within the bound: the body never left (rules.ts).
  HOP_CONTINUE_TIMEOUT,
]);

export type Gateway = ReturnType<typeof createGateway>;

export function createGateway(options: IngressOptions, limits: IngressLimits) {
  const self = options.plane;
  const log: Logger = options.logger ?? pino({ level: "silent" });
  const metrics: GatewayMetrics | null = options.registry
    ? createGatewayMetrics(options.registry, self.region)
    : null;
  const audit: AuditSink | null = options.audit ?? null;
  const now = options.now ?? Date.now;
  const scheme: "http" | "https" = options.tls ? "https" : "http";
  const peerScheme = options.peerScheme ?? "http";
  // Receipts (docs/evidence.md#receipts): on unless the operator turned them off (`--receipts off`).
  const receipts = options.receipts !== false;
  const receiptKey = options.signingKey;

  // The index follows the snapshot object: rebuilt only when the plane swaps in a new one.
  let lastSnapshot: ReturnType<IngressOptions["snapshot"]> | undefined;
  let index: RouteIndex | null = null;
  // docs/async.md#rate-limits: status, cancel and queue-status calls per API key, at the entry plane.
  const asyncStatusLimit = new RateLimiter(limits.asyncStatusPerSecond);
  const hops = new HopVerifier({
    self: self.name,
    maxAgeMs: limits.hopMaxAgeMs,
    replayEntries: limits.hopReplayEntries,
  });

  function currentIndex(): RouteIndex | null {
    const snap = options.snapshot();
    if (snap === lastSnapshot) return index;
    lastSnapshot = snap;
    if (snap === null) {
      index = null;
    } else if (snap.plane.name !== self.name || snap.plane.region !== self.region) {
      log.error({ plane: self.name, snapshot_plane: snap.plane.name }, "snapshot is for another plane");
      index = null;
    } else {
      index = indexSnapshot(snap);
    }
    return index;
  }

  // Least-busy replica first (ties broken round-robin); the others follow as retry candidates.
  const busy = new Map<string, number>();
  let turn = 0;
  // A replica's target never changes: one object per endpoint, not one per request.
  const replicaTargets = new Map<string, Target>();
  function replicaTarget(endpoint: string): Target {
    let t = replicaTargets.get(endpoint);
    if (t === undefined) {
      if (replicaTargets.size >= 10_000) replicaTargets.clear(); // replicas come and go; bound the cache
      const socketPath = endpoint.startsWith(UNIX_PREFIX) ? endpoint.slice(UNIX_PREFIX.length) : null;
      const authority = socketPath === null ? endpoint : "localhost";
      t = {
        kind: "replica",
        name: endpoint,
        endpoint,
        socketPath,
        authority,
        origin: `http://${authority}`,
        path: REPLICA_PREDICT_PATH,
        plane: null,
      };
      replicaTargets.set(endpoint, t);
    }
    return t;
  }

  function orderReplicas(endpoints: readonly string[]): Target[] {
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
    const out = [replicaTarget(endpoints[best]!)];
    for (let k = 1; k < n; k++) out.push(replicaTarget(endpoints[(best + k) % n]!));
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

  // Parking (src/gateway/parking.ts): requests for a deployment with nothing ready are held here while it
  // wakes, only when the plane can ask for a wake. A request released from the queue is planned once more
  // and never held again.
  const parking: Parking | null = options.wake
    ? new Parking({
        limits: options.backpressure ?? DEFAULT_BACKPRESSURE_LIMITS,
        timeoutMs: limits.predictTimeoutMs,
        room: roomFor,
        wake: options.wake,
      })
    : null;
  const released = new WeakSet<object>();
  let scaleIndex: { index: RouteIndex; byDeployment: Map<string, DeploymentRoute> } | null = null;
  function deploymentRoute(id: string): DeploymentRoute | undefined {
    const idx = currentIndex();
    if (idx === null) return undefined;
    if (scaleIndex?.index !== idx) {
      const byDeployment = new Map<string, DeploymentRoute>();
      for (const m of idx.models.values()) for (const [k, d] of m.deployments) byDeployment.set(k, d);
      scaleIndex = { index: idx, byDeployment };
    }
    return scaleIndex.byDeployment.get(id);
  }
  function roomFor(id: string): number {
    const route = deploymentRoute(id);
    const local = options.localReplicas(id).length;
    if (local > 0) {
      const scale = route?.scale;
      if (scale === undefined || scale.policy === null) return Number.MAX_SAFE_INTEGER;
      const forwarded = (options.load?.inFlight(id) ?? 0) - (parking?.parked(id) ?? 0);
      return Math.max(0, local * scale.concurrency_target - forwarded);
    }
    return route?.ready_planes.some((p) => p !== self.name) ? Number.MAX_SAFE_INTEGER : 0;
  }
  /**
   * Whether this plane may hold the deployment's requests: it can wake it (a plane of its region, or a
   * global ingress, which takes standard-endpoint requests for every model), and it wakes.
   */
  function canWake(id: string): boolean {
    const route = deploymentRoute(id);
    if (parking === null || route?.scale?.wakeable !== true) return false;
    return (
      route.region === null || route.region === self.region || currentIndex()?.plane.global_ingress === true
    );
  }
  function canPark(ex: Exchange, id: string): boolean {
    if (released.has(ex) || !canWake(id)) return false;
    // A request that came over a hop is not handed on again (one hop at most). With another plane of the
    // deployment ready, holding it here would release it at once (roomFor) into a refusal, after its 100
    // Continue let the body go; refused now, before the body, its sender can still send it to that plane
    // (unservedHop, rules.ts HOP_NO_REPLICA).
    if (ex.forwardedFrom !== null && deploymentRoute(id)?.ready_planes.some((p) => p !== self.name))
      return false;
    return true;
  }
  /**
   * `POST …/wake` (the reference: "Returns immediately with 202 Accepted"): decided as a predict is (key,
   * model, environment, region, policy), then a wake when nothing is routable, and no body is forwarded.
   */
  function wakeAnswer(decision: RouteDecision): Refusal {
    const id = decision.context.deploymentId;
    const awake = decision.kind !== "refuse";
    if (!awake) {
      if (decision.code !== "model_unavailable" || id === null || !canWake(id)) {
        return refuse(
          decision.code,
          decision.message,
          decision.detail,
          decision.allow ? ["allow", decision.allow] : [],
        );
      }
      parking!.wakeNow(id);
    }
    const body = JSON.stringify({ deployment_id: id, waking: !awake });
    return { ...refuse("invalid_request"), answer: { status: 202, body } };
  }
  function park(ex: Exchange, id: string): Park | Refusal {
    const scale = deploymentRoute(id)?.scale;
    if (parking === null || scale === undefined)
      return refuse("model_unavailable", null, { region: self.region });
    const admission = parking.admit(id, scale, options.localReplicas(id).length, 0);
    if (admission.action === "reject") return backpressure(admission);
    options.load?.begin(ex, id);
    metrics?.parked(1);
    const heldAt = performance.now();
    const wait = parking.park(ex, id).then((outcome) => {
      metrics?.parked(-1);
      metrics?.held((performance.now() - heldAt) / 1000, outcome.kind === "go" ? "released" : "refused");
      if (outcome.kind === "go") released.add(ex);
      return outcome;
    });
    return { kind: "park", wait };
  }
  function backpressure(a: Extract<Admission, { action: "reject" }>): Refusal {
    return refuse(
      "backpressure_full",
      a.rule === "queue_full"
        ? "This ingress holds as many of the environment's requests as it may; retry later."
        : "The environment's ready replicas are full (REJECT_ON_FULL); retry later.",
      { rule: a.rule, retry_after_seconds: a.retry_after_seconds },
      ["retry-after", String(a.retry_after_seconds)],
    );
  }

  /**
   * Authenticates and routes one request: either a refusal, or the upstream targets and headers. Sets the
   * exchange's request id, context and route as it learns them (the audit record uses them either way).
   */
  function plan(ex: Exchange, head: RequestHead): Plan {
    const scan = scanRequestHeaders(head.rawHeaders);
    // A held request planned again keeps its id.
    ex.requestId = acceptableRequestId(scan.requestId) ? scan.requestId : ex.requestId || randomUUID();
    if (receipts) bindReceipt(ex, head.target, scan.host, scan.hostCount, scheme);
    const idx = currentIndex();
    if (idx === null) return refuse("service_unavailable", "This plane has no routing configuration yet.");

    // RFC 9112 §3.2.2–3.2.3: absolute-form targets carry the authority and override Host.
    let target = head.target;
    let hostValue = scan.host;
    if (!target.startsWith("/")) {
      const m = /^https?:\/\/([^/?#]*)([^#]*)$/i.exec(target);
      if (m === null) return refuse("route_not_found");
      hostValue = m[1];
      target = m[2] || "/";
    } else if (scan.hostCount !== 1) {
      // RFC 9112 §3.2: a request with no Host, or more than one, is answered 400.
      return refuse(
        "invalid_host",
        `The request has ${scan.hostCount} Host header fields; exactly one is required.`,
      );
    }
    const parsed = parseHost(hostValue, idx.domain);
    if (!parsed.ok) return refuse(parsed.code, parsed.reason);
    // Names enter the context only once resolved (decideRoute): a hop refused here names nothing.
    ex.context = {
      form: parsed.host.form,
      modelId: null,
      environment: null,
      deploymentId: null,
      region: null,
    };

    // A held request planned again was verified on arrival (a second check would read as a replay).
    if (scan.hop !== undefined && ex.forwardedFrom === null) {
      // The request as the forwarder sent it: the authority and origin-form target it signed.
      const hop = { requestId: ex.requestId, method: head.method, authority: hostValue ?? "", target };
      const check = hops.verify(scan.hop, hop, idx, now());
      // Refusals are in the audit record (error_code), not the log: anyone can send a bad hop header.
      if (!check.ok) {
        // The sender reads why, and this plane's clock, from the fields (rules.ts, HOP_REFUSED).
        return check.reason === "replayed"
          ? refuse("hop_replayed")
          : refuse("hop_invalid", null, { reason: check.reason }, [
              HOP_REFUSED_HEADER,
              check.reason,
              HOP_REFUSED_TIME,
              String(now()),
            ]);
      }
      ex.forwardedFrom = check.from;
      ex.route = [check.from, self.name];
      // The client's scheme, as the entry plane saw it (and signed for), decides `@authority`'s default port
      // (RFC 9421 §2.2.3), whatever the scheme of the hop itself.
      const fp = scan.forwardedProto;
      if (receipts && (fp === "https" || fp === "http") && fp !== scheme)
        bindReceipt(ex, head.target, scan.host, scan.hostCount, fp);
    }

    const q = target.indexOf("?");
    const path = q < 0 ? target : target.slice(0, q);
    const key = apiKeyOf(scan.authorization);
    const routeRequest = {
      host: parsed.host,
      method: head.method,
      path,
      keyHash: key === null ? null : hash("sha256", key),
      forwardedFrom: ex.forwardedFrom,
      localReady: { has: (id: string) => options.localReplicas(id).length > 0 },
      scheme: ex.forwardedFrom !== null && scan.forwardedProto === "https" ? ("https" as const) : scheme,
    };
    // Async paths (src/gateway/async.ts) are routed by the same rules and answered by the plane's queue.
    const asyncMatch = options.async === undefined ? null : matchAsyncPath(parsed.host.form, path);
    if (asyncMatch !== null && "refuse" in asyncMatch) return refuse(asyncMatch.refuse, asyncMatch.message);
    // `/sync/{path}` and `/websocket` (src/core/realtime-routing.ts): predict's rules, the replica's own path.
    const realtime =
      asyncMatch === null ? matchRealtimePath(parsed.host.form, path, q < 0 ? "" : target.slice(q)) : null;
    const decision =
      asyncMatch !== null
        ? decideAsync(idx, routeRequest, asyncMatch)
        : realtime !== null
          ? decideRealtime(idx, routeRequest, realtime)
          : decideRoute(idx, routeRequest);
    ex.context = decision.context;
    // Not async, so decideRoute's decision.
    if (asyncMatch === null && isWakePath(path)) return wakeAnswer(decision as RouteDecision);
    // Nothing ready where the request may go, for a deployment that wakes: held here, in this region.
    let parkFor: string | null = null;
    if (decision.kind === "refuse") {
      const id = decision.context.deploymentId;
      // An async call is never held: its queue waits (and wakes the deployment) on the plane that holds it.
      if (decision.code !== "model_unavailable" || id === null || asyncMatch !== null || !canPark(ex, id)) {
        return refuse(
          decision.code,
          decision.message,
          decision.detail,
          decision.allow
            ? ["allow", decision.allow]
            : decision.code === "model_unavailable"
              ? unservedHop(ex)
              : [],
        );
      }
      parkFor = id;
    }

    // The entry plane counts an async status call once it knows the key is good and the call routable; a
    // plane it is handed to over a hop does not count it again.
    if (asyncMatch !== null && !("refuse" in asyncMatch) && asyncMatch.op.kind !== "predict") {
      if (ex.forwardedFrom === null && routeRequest.keyHash !== null) {
        const bucket = `${asyncMatch.op.kind}:${head.method}:${routeRequest.keyHash}`;
        if (!asyncStatusLimit.take(bucket, now())) {
          const retry = asyncStatusLimit.retryAfterSeconds(bucket);
          return refuse(
            "rate_limited",
            `At most ${asyncStatusLimit.perSecond} of these calls per second per API key; retry after ${retry} s.`,
            { limit_per_second: asyncStatusLimit.perSecond, retry_after_seconds: retry },
            ["retry-after", String(retry)],
          );
        }
      }
    }

    const cl = scan.contentLength;
    const contentLength = cl === undefined ? null : Number(cl);
    if (contentLength !== null && contentLength > limits.maxBodyBytes) {
      return refuse("payload_too_large", null, { limit_bytes: limits.maxBodyBytes });
    }
    if (scan.expect !== undefined && scan.expect.toLowerCase() !== "100-continue") {
      return refuse("expectation_failed", null, { expect: scan.expect });
    }
    // Websockets (RFC 6455 §4): `/websocket` only as an upgrade; `/sync/{path}` upgrades when asked to. Any
    // other protocol (`h2c`) is never performed: the request is served as HTTP/1.1 (RFC 9110 §7.8).
    let upgrade: Forward["upgrade"] = null;
    if (realtime !== null && head.method === "GET") {
      const ask = upgradeAsk(head.rawHeaders);
      if (ask.kind === "websocket") {
        // An upgrade carries no body (RFC 6455 §4.1): bytes after its head are frames, never a body.
        if ((contentLength !== null && contentLength > 0) || scan.transferEncoding) {
          return refuse("invalid_request", "A websocket upgrade request has no body.");
        }
        upgrade = { key: ask.key, replicaPath: realtime.replicaPath };
      } else if (realtime.kind === "websocket") {
        return refuse(
          "websocket_upgrade_required",
          ask.kind === "invalid" ? ask.reason : null,
          ask.kind === "other" ? { upgrade: ask.protocols } : null,
          UPGRADE_REQUIRED_FIELDS,
        );
      }
    }

    if (parkFor !== null || decision.kind === "refuse") return park(ex, parkFor!);

    const remote = head.remoteAddress;
    const trusted = ex.forwardedFrom !== null;
    // The upstream headers: the end-to-end fields (the scan's own array; framing fields are never among
    // them, the transport frames the body itself), then the forwarding fields.
    const headers = scan.passthrough;
    headers.push(
      PROOF.requestId,
      ex.requestId,
      "x-forwarded-for",
      scan.forwardedFor === undefined ? remote : `${scan.forwardedFor}, ${remote}`,
      "x-forwarded-proto",
      trusted && scan.forwardedProto !== undefined ? scan.forwardedProto : scheme,
      "x-forwarded-host",
      trusted && scan.forwardedHost !== undefined ? scan.forwardedHost : (hostValue ?? ""),
    );

    const forward: Forward = {
      kind: "forward",
      targets: [],
      headers: [],
      hop: null,
      warning: decision.warning,
      contentLength,
      chunked: contentLength === null && scan.transferEncoding,
      upgrade,
      peerDeployment: null,
      clientHost: hostValue ?? "",
      clientAuthorization: scan.authorization ?? null,
      clientTarget: target,
    };
    if (decision.kind === "async") {
      const op = (asyncMatch as Exclude<typeof asyncMatch, null | { refuse: ErrorCode }>).op;
      if (op.kind === "predict" && contentLength !== null && contentLength > ASYNC_MAX_INPUT_BYTES) {
        return refuse("payload_too_large", null, { limit_bytes: ASYNC_MAX_INPUT_BYTES });
      }
      const hostEnvironment = parsed.host.form === "regional" ? parsed.host.environment : null;
      forward.targets = [asyncServiceTarget(options.async!, target)];
      forward.headers = asyncServiceHeaders(options.async!, headers, decision, op, hostEnvironment);
    } else if (decision.kind === "serve") {
      const id = decision.context.deploymentId;
      const endpoints = options.localReplicas(id);
      if (endpoints.length === 0) {
        if (canPark(ex, id)) return park(ex, id);
        return refuse("model_unavailable", null, { region: self.region }, unservedHop(ex));
      }
      // Backpressure with ready replicas (request_backpressure_settings.policy), once per request.
      const scale = parking === null ? undefined : deploymentRoute(id)?.scale;
      if (scale !== undefined && scale.policy !== null && !released.has(ex)) {
        const forwarded = (options.load?.inFlight(id) ?? 0) - parking!.parked(id);
        const admission = parking!.admit(id, scale, endpoints.length, forwarded);
        if (admission.action === "reject") return backpressure(admission);
        if (admission.action === "park") return park(ex, id);
      }
      // The autoscaler's load signal counts what this plane serves (src/plane/load.ts).
      options.load?.begin(ex, decision.context.deploymentId);
      forward.targets = orderReplicas(endpoints);
      // `/sync/{path}` reaches the replica's server at `/{path}` (and query), as the client sent them.
      if (realtime !== null && upgrade === null) {
        const replicaPath = realtime.replicaPath;
        forward.targets = forward.targets.map((t) => ({ ...t, path: replicaPath }));
      }
      // The API key stops at the ingress: model code never sees it.
      forward.headers = headers;
      // A request that came over a hop is never handed on (one hop at most); an upgrade is relayed whole.
      if (ex.forwardedFrom === null && upgrade === null) forward.peerDeployment = id;
    } else {
      forward.targets = orderPlanes(decision.planes).map((p) => planeTarget(p, target));
      // Host and Authorization pass unchanged: the receiving plane routes and authenticates by itself.
      headers.push("host", hostValue ?? "", PROOF.route, self.name);
      if (scan.authorization !== undefined) headers.push("authorization", scan.authorization);
      forward.headers = headers;
      forward.hop = { method: head.method, authority: hostValue ?? "", target };
    }
    return forward;
  }

  function planeTarget(p: PlaneRef, target: string): Target {
    return {
      kind: "plane",
      name: p.name,
      endpoint: p.ingress[0]!,
      socketPath: null,
      authority: p.ingress[0]!,
      origin: `${peerScheme}://${p.ingress[0]}`,
      path: target,
      plane: p,
    };
  }

  /**
   * The fields by which a plane that took a hop tells its sender, while planning it, that no replica of its
   * own is ready for it, so nothing ran (rules.ts, HOP_NO_REPLICA); none for a request that came directly.
   */
  function unservedHop(ex: Exchange): string[] {
    if (ex.forwardedFrom === null) return [];
    return [HOP_REFUSED_HEADER, "no_replica", HOP_REFUSED_TIME, String(now())];
  }

  /**
   * No replica of this plane accepted a request planned for them (each attempt an untouched connect failure:
   * the replica died, or is restarting, before the agent saw it): the request goes on to the planes of this
   * region that the snapshot names ready for the deployment, over the hop, as a regional decision would
   * send it. Never to another region, never from a request that came over a hop, once per request. Returns
   * whether targets were added.
   */
  function handToPeers(ex: Exchange, forward: Forward): boolean {
    const id = forward.peerDeployment;
    if (id === null) return false;
    forward.peerDeployment = null;
    const idx = currentIndex();
    const route = deploymentRoute(id);
    if (idx === null || route === undefined) return false;
    const peers: PlaneRef[] = [];
    for (const name of route.ready_planes) {
      if (name === self.name) continue;
      const p = idx.planes.get(name);
      if (p !== undefined && p.region === self.region && p.ingress.length > 0) peers.push(p);
    }
    if (peers.length === 0) return false;
    peers.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const p of orderPlanes(peers)) forward.targets.push(planeTarget(p, forward.clientTarget));
    const extra = ["host", forward.clientHost, PROOF.route, self.name];
    if (forward.clientAuthorization !== null) extra.push("authorization", forward.clientAuthorization);
    forward.headers = forward.headers.concat(extra);
    forward.hop = { method: ex.method, authority: forward.clientHost, target: forward.clientTarget };
    // The peer serves it: this plane's load signal no longer counts it (src/plane/load.ts).
    options.load?.end(ex);
    log.info({ request_id: ex.requestId, deployment: id, peers: peers.length }, "handed to a peer plane");
    return true;
  }

  /**
   * The request components of the receipt: the absolute-form target's authority (RFC 9112 §3.2.2), else the
   * one Host field; none when there is no Host or more than one (the request is refused, unsigned).
   */
  function bindReceipt(
    ex: Exchange,
    target: string,
    host: string | undefined,
    hostCount: number,
    clientScheme: "http" | "https",
  ): void {
    let authority: string | undefined;
    if (target.startsWith("/")) {
      if (hostCount === 1) authority = host;
    } else {
      authority = /^https?:\/\/([^/?#]*)/i.exec(target)?.[1];
    }
    ex.authority = authority === undefined ? null : normalizeAuthority(authority, clientScheme);
    // The origin-form target of nearly every request, without pathOfTarget's regular expressions.
    const end = target.startsWith("/") ? endOfPath(target) : -1;
    ex.path = end < 0 ? pathOfTarget(target) : end === target.length ? target : target.slice(0, end);
  }

  /**
   * Appends the receipt to a response's `headers` (docs/evidence.md#receipts): signed once, over the proof
   * values this plane set, with the body's digest when the request was read whole (`bodyRead`), and the
   * response's own Content-Digest when its body is covered (`responseDigest`, already in `headers`).
   */
  function sign(
    ex: Exchange,
    status: number,
    headers: string[],
    proof: (string | undefined)[],
    bodyRead: boolean,
    responseDigest: string | null = null,
  ): void {
    const authority = ex.authority;
    const path = ex.path;
    if (!receipts || authority === null || path === null) return;
    const contentDigest = !bodyRead
      ? null
      : ex.bodyDigest === null
        ? EMPTY_CONTENT_DIGEST
        : ex.bodyDigest.digest();
    const request = { method: ex.method, authority, path, contentDigest };
    const unsigned = appendReceipt(
      headers,
      receiptKey,
      status,
      proof,
      request,
      now(),
      RECEIPT_LABEL,
      responseDigest,
    );
    if (unsigned !== null) {
      // Nothing a client could be blamed for: a value outside visible ASCII cannot be signed (RFC 9421 §2.5).
      metrics?.unsignedReceipt();
      log.debug({ request_id: ex.requestId, reason: unsigned }, "response sent without a receipt");
    }
  }

  return {
    self,
    limits,
    log,
    metrics,
    scheme,
    plan,

    /** The answer to a held request that is not going on: 503, fail closed, in this region. */
    parkRefusal(outcome: ParkOutcome): Refusal {
      return refuse(
        "model_unavailable",
        outcome.kind === "unwakeable"
          ? "No replica is ready in this region and the control plane did not accept a wake."
          : "No replica became ready in time.",
        { region: self.region },
      );
    },

    now,

    /** Feeds a chunk of the request body to its digest (the receipt's `content-digest;req`), in place. */
    hashBody(ex: Exchange, chunk: Uint8Array): void {
      if (!receipts) return;
      if (ex.bodyDigest === null) ex.bodyDigest = new ContentDigester();
      ex.bodyDigest.update(chunk);
    },

    /**
     * A request has started. The transport builds its exchange as one object literal (a fixed shape is
     * cheaper than fields added later), starting from these values.
     */
    begin(): Exchange {
      inflight++;
      metrics?.inflight(1);
      return {
        startedAt: performance.now(),
        time: now(),
        requestId: "",
        route: [self.name],
        forwardedFrom: null,
        context: null,
        processedBy: null,
        errorCode: null,
        method: "",
        authority: null,
        path: null,
        bodyDigest: null,
        heldAnswer: null,
      };
    },

    /**
     * The JSON error answer of a refusal: status, headers (with proof and receipt) and body. `bodyRead`:
     * the request body went through `hashBody` whole (or there is none), so the receipt binds its digest;
     * by default it claims nothing about the body.
     */
    errorResponse(
      ex: Exchange,
      r: Refusal,
      bodyRead = false,
    ): { status: number; headers: string[]; body: string } {
      // A wake's 202 is the ingress's own answer, sent the way a refusal is, and is no error.
      if (r.answer === undefined) ex.errorCode = r.code;
      const body = r.answer?.body ?? JSON.stringify(errorBody(r.code, r.message ?? undefined, r.detail));
      const status = r.answer?.status ?? errorStatus(r.code);
      const deploymentId = ex.context?.deploymentId ?? "-";
      const route = ex.route.join(", ");
      const headers = [
        "content-type",
        "application/json",
        "content-length",
        String(Buffer.byteLength(body)),
        PROOF.requestId,
        ex.requestId,
        PROOF.region,
        self.region,
        PROOF.plane,
        self.name,
        PROOF.deploymentId,
        deploymentId,
        PROOF.route,
        route,
        ...r.extra,
      ];
      // The ingress's own answer is whole before its head: its receipt always covers it.
      let digest: string | null = null;
      if (receipts && ex.authority !== null && ex.path !== null) {
        digest = contentDigest(body);
        headers.push(CONTENT_DIGEST, digest);
      }
      const proof = [ex.requestId, self.region, self.name, deploymentId, route];
      sign(ex, status, headers, proof, bodyRead, digest);
      return { status, headers, body };
    },

    /**
     * The upstream headers of an attempt at `t` (a hop to a peer plane is signed afresh each time: its time,
     * and the plane it is addressed to).
     */
    attemptHeaders(ex: Exchange, forward: Forward, t: Target): string[] {
      if (forward.hop === null || t.kind !== "plane") return forward.headers;
      const claims = { ...forward.hop, requestId: ex.requestId, from: self.name, to: t.name, ms: now() };
      return forward.headers.concat([HOP_HEADER, signHop(options.signingKey, claims)]);
    },

    /**
     * A peer plane's answer that is its refusal of the hop itself (rules.ts, HOP_REFUSED), or its word that
     * no replica of its own was ready for it (HOP_NO_REPLICA): the failure's code and message, with the
     * peer's reason and how far its clock is from this plane's, or null for any other answer.
     */
    hopRefused(
      t: Target,
      status: number,
      raw: readonly (string | Buffer)[],
    ): { code: typeof HOP_REFUSED | typeof HOP_NO_REPLICA; message: string } | null {
      if (t.kind !== "plane" || (status !== 403 && status !== 503)) return null;
      let reason: string | null = null;
      let peerMs = Number.NaN;
      for (let i = 0; i < raw.length; i += 2) {
        const n = raw[i]!;
        if (n.length !== HOP_REFUSED_HEADER.length && n.length !== HOP_REFUSED_TIME.length) continue;
        const name = (typeof n === "string" ? n : n.toString("latin1")).toLowerCase();
        const value = String(raw[i + 1]);
        if (name === HOP_REFUSED_HEADER) reason = value;
        else if (name === HOP_REFUSED_TIME) peerMs = Number(value);
      }
      if (reason === null) return null;
      if (status === 503) {
        if (reason !== "no_replica") return null;
        return { code: HOP_NO_REPLICA, message: `peer plane ${t.name} had no replica ready for the request` };
      }
      const offset = Number.isFinite(peerMs) ? Math.round(peerMs - now()) : null;
      const clock =
        offset === null
          ? ""
          : `; its clock is ${Math.abs(offset)} ms ${offset >= 0 ? "ahead of" : "behind"} this plane's`;
      return {
        code: HOP_REFUSED,
        message: `peer plane ${t.name} refused the hop (${reason.slice(0, 40)})${clock}`,
      };
    },

    acquire(t: Target): void {
      if (t.kind === "replica") busy.set(t.name, (busy.get(t.name) ?? 0) + 1);
    },
    release(t: Target): void {
      if (t.kind !== "replica") return;
      const b = (busy.get(t.name) ?? 1) - 1;
      if (b <= 0) busy.delete(t.name);
      else busy.set(t.name, b);
    },

    /**
     * The response headers for the client: the upstream's end-to-end fields plus the proof. From a replica,
     * this plane is the proof, and signs it (the receipt, with the body's digest when `bodyRead`); from a
     * peer plane, its proof and receipt are kept and the route extended (the peer's route already names
     * this plane: the receipt covers it as sent).
     */
    responseHeaders(
      ex: Exchange,
      t: Target,
      warning: string | null,
      raw: readonly (string | Buffer)[],
      status: number,
      bodyRead: boolean,
    ): string[] {
      const { headers, proof } = scanResponseHeaders(raw, t.kind === "plane");
      const ctx = ex.context;
      if (t.kind === "replica") {
        ex.processedBy = self.name;
        const deploymentId = ctx?.deploymentId ?? "-";
        const route = ex.route.join(", ");
        headers.push(
          PROOF.requestId,
          ex.requestId,
          PROOF.region,
          self.region,
          PROOF.plane,
          self.name,
          PROOF.deploymentId,
          deploymentId,
          PROOF.route,
          route,
        );
        if (warning !== null && !headers.includes("warning")) headers.push("warning", warning);
        const proof = [ex.requestId, self.region, self.name, deploymentId, route];
        const length =
          receipts && !noBody(ex.method, status) ? coverableLength(headers, limits.receiptBodyBytes) : -1;
        if (length >= 0 && ex.authority !== null && ex.path !== null) {
          // Signed once the body is whole (`sealResponse`): the transport holds the head until then.
          ex.heldAnswer = { status, headers, proof, length };
          return headers;
        }
        sign(ex, status, headers, proof, bodyRead);
        return headers;
      } else {
        // The peer plane stamped its own proof; the route it returns already includes this plane.
        const plane = t.plane!;
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
        const echo = proof.get(RECEIPT_REQUEST_HEADER);
        if (echo !== undefined) headers.push(RECEIPT_REQUEST_HEADER, echo);
      }
      if (warning !== null && !headers.includes("warning")) headers.push("warning", warning);
      return headers;
    },

    /**
     * The head of a held answer (`ex.heldAnswer`), now that its body is whole: the replica's Content-Digest, if
     * any, replaced by the digest of the bytes the client gets, and the receipt covering it. `body` must be
     * the declared length (the transports' parsers end the message only then).
     */
    sealResponse(ex: Exchange, body: Uint8Array, bodyRead: boolean): { status: number; headers: string[] } {
      const held = ex.heldAnswer!;
      ex.heldAnswer = null;
      let headers = held.headers;
      if (headers.includes(CONTENT_DIGEST)) headers = dropField(headers, CONTENT_DIGEST);
      const digest = contentDigest(body);
      headers.push(CONTENT_DIGEST, digest);
      sign(ex, held.status, headers, held.proof, bodyRead, digest);
      return { status: held.status, headers };
    },

    /**
     * What to do after a failed attempt: `"retry"` on the next target (only when no byte reached the
     * upstream and there is one), or the refusal to answer with.
     */
    afterFailure(ex: Exchange, forward: Forward, attempt: number, f: UpstreamFailure): "retry" | Refusal {
      const t = forward.targets[attempt]!;
      if (f.bodyTooLarge) return refuse("payload_too_large", null, { limit_bytes: limits.maxBodyBytes });
      if (f.code === HOP_REFUSED || f.code === HOP_NO_REPLICA) {
        // The peer never acted on it (rules.ts): the next target takes it when the body can still go there.
        const refused = f.code === HOP_REFUSED;
        metrics?.upstreamFailure(refused ? "hop_refused" : "hop_no_replica");
        log.warn(
          {
            request_id: ex.requestId,
            target: t.name,
            err: f.message,
            body_sent: f.touched,
            planes_left: forward.targets.length - attempt - 1,
          },
          refused ? "hop refused by peer plane" : "peer plane had no replica ready",
        );
        if (!f.touched && attempt + 1 < forward.targets.length) return "retry";
        return refuse(
          "model_unavailable",
          refused
            ? "The region's planes refused this plane's hand-over (their clocks or keys disagree with its own)."
            : `No replica of this deployment is ready in region ${t.plane?.region ?? self.region}.`,
          { region: t.plane?.region ?? self.region },
        );
      }
      if (!f.touched && (CONNECT_ERRORS.has(f.code) || f.code === "UND_ERR_CONNECT_TIMEOUT")) {
        metrics?.upstreamFailure(t.kind === "plane" ? "peer_unreachable" : "connect");
        log.warn({ request_id: ex.requestId, target: t.name, code: f.code }, "upstream unreachable");
        if (attempt + 1 < forward.targets.length) {
          const next = forward.targets[attempt + 1]!;
          // A peer that let its continue bound pass is frozen or overloaded: only another plane of the same
          // region takes the request then (docs/gateway.md#plane-to-plane-hops).
          if (f.code !== HOP_CONTINUE_TIMEOUT || next.plane?.region === t.plane?.region) return "retry";
        } else if (t.kind === "replica" && handToPeers(ex, forward)) {
          return "retry";
        }
        return refuse("model_unavailable", "No replica accepted the request.", {
          region: t.plane?.region ?? self.region,
        });
      }
      if (f.timeout) {
        metrics?.upstreamFailure("timeout");
        return refuse("upstream_timeout", null, { timeout_ms: limits.predictTimeoutMs });
      }
      metrics?.upstreamFailure("reset");
      log.warn({ request_id: ex.requestId, target: t.name, err: f.message, code: f.code }, "upstream failed");
      return refuse("replica_failed");
    },

    /** The exchange is over: one audit record, the metrics, and the drain bookkeeping. */
    end(ex: Exchange, status: number, aborted: boolean): void {
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
      // Fixed labels for whatever did not resolve to a model: a stranger's guesses add no series.
      const environment = ctx === null || ctx.modelId === null ? UNRESOLVED : (ctx.environment ?? "");
      metrics?.observe(environment, ctx?.form ?? UNRESOLVED, status, latency / 1000);
      options.load?.end(ex);
      parking?.forget(ex);
      metrics?.inflight(-1);
      inflight--;
      if (inflight === 0) drained?.();
    },

    /** Resolves when no request is in flight, or after `limits.drainTimeoutMs`. */
    async drain(): Promise<void> {
      if (inflight === 0) return;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, limits.drainTimeoutMs);
        drained = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    },

    /** The answer to a request the parser refused (by its `HPE_*` or timeout code), whole, then close. */
    parseErrorAnswer(parserCode: string | undefined): string {
      const code: ErrorCode =
        parserCode === "HPE_HEADER_OVERFLOW"
          ? "headers_too_large"
          : parserCode === "ERR_HTTP_REQUEST_TIMEOUT"
            ? "request_timeout"
            : "invalid_request";
      return bareErrorAnswer(code, self);
    },
  };
}

const CONTENT_DIGEST = "content-digest";

/** A response that has no body whatever its fields say (RFC 9110 §6.4.1). */
function noBody(method: string, status: number): boolean {
  return method === "HEAD" || status === 204 || status === 304 || status < 200;
}

/**
 * The Content-Length of a response whose receipt can cover its body (one field, digits, at most
 * `bound`, the `receiptBodyBytes` limit), else -1: a larger, chunked or close-delimited body keeps a head-only receipt.
 */
function coverableLength(headers: readonly string[], bound: number): number {
  let length = -1;
  for (let i = 0; i < headers.length; i += 2) {
    const n = headers[i]!;
    if (n === "transfer-encoding") return -1;
    if (n !== "content-length") continue;
    if (length >= 0) return -1;
    const v = headers[i + 1]!.trim();
    if (!/^[0-9]{1,16}$/.test(v)) return -1;
    length = Number(v);
  }
  return length <= bound ? length : -1;
}

/** `headers` without the fields named `name`. */
function dropField(headers: readonly string[], name: string): string[] {
  const out: string[] = [];
  for (let i = 0; i < headers.length; i += 2) if (headers[i] !== name) out.push(headers[i]!, headers[i + 1]!);
  return out;
}

/** Where an origin-form target's path ends (RFC 3986 §3.3: at `?` or `#`), or its length. */
function endOfPath(target: string): number {
  for (let i = 0; i < target.length; i++) {
    const c = target.charCodeAt(i);
    if (c === 0x3f || c === 0x23) return i;
  }
  return target.length;
}

/** An error answer outside any request (no route, no deployment), with the proof headers; closes. */
export function bareErrorAnswer(code: ErrorCode, self: { name: string; region: string }): string {
  const body = JSON.stringify(errorBody(code));
  const status = errorStatus(code);
  return (
    `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ""}\r\n` +
    `content-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n` +
    `date: ${httpDate()}\r\n${PROOF.requestId}: ${randomUUID()}\r\n${PROOF.region}: ${self.region}\r\n` +
    `${PROOF.plane}: ${self.name}\r\n${PROOF.deploymentId}: -\r\n${PROOF.route}: ${self.name}\r\n\r\n${body}`
  );
}

/** Starts listening; resolves with the bound address, rejects if the address is taken. */
export async function listenOn(
  server: Server,
  listen: { host: string; port: number },
): Promise<{ host: string; port: number }> {
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(listen.port, listen.host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const a = server.address() as AddressInfo;
  return { host: a.address, port: a.port };
}

// The Date header, computed once per second.
let dateSecond = 0;
let dateText = "";
export function httpDate(): string {
  const now = Date.now();
  const s = Math.floor(now / 1000);
  if (s !== dateSecond) {
    dateSecond = s;
    dateText = new Date(now).toUTCString();
  }
  return dateText;
}

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
