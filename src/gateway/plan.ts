// The shapes one request takes through the ingress, whatever the transport: the exchange, the parsed head,
// the plan `gateway.ts` makes for it (a refusal, a forward to targets, a park) and how an upstream attempt
// failed. Shared by `gateway.ts`, `upgrade.ts`, `async.ts` and both transports; imports none of them.

import type { ErrorCode } from "../core/errors.ts";
import type { RouteContext } from "../core/routing.ts";
import type { PlaneRef } from "../core/snapshot.ts";
import type { ContentDigester } from "../lib/receipts.ts";
import type { ParkOutcome } from "./parking.ts";

/** The truss model server's predict route (what a replica serves). */
export const REPLICA_PREDICT_PATH = "/v1/models/model:predict";

/** One request through the ingress, whatever the transport. */
export interface Exchange {
  startedAt: number;
  time: number;
  requestId: string;
  route: string[];
  forwardedFrom: string | null;
  context: RouteContext | null;
  processedBy: string | null;
  errorCode: string | null;
  /** The request method as received (a receipt binds it, `@method;req`). */
  method: string;
  /**
   * The request components a receipt binds (RFC 9421 §2.4): `@authority` (normalized) and `@path`, set by
   * `plan()`; null until then, or when the request names no single authority (then no receipt is signed).
   */
  authority: string | null;
  path: string | null;
  /** The request body's digest so far (`hashBody`), or null while no byte of it was read. */
  bodyDigest: ContentDigester | null;
  /**
   * A replica's answer whose receipt will cover its body (`responseHeaders` set it): the transport holds
   * the body whole, then `sealResponse` adds its Content-Digest and the receipt. Null otherwise.
   */
  heldAnswer: HeldResponse | null;
}

/** A response head waiting for its body before it is signed (docs/evidence.md#receipts). */
export interface HeldResponse {
  status: number;
  headers: string[];
  proof: (string | undefined)[];
  /** The body's declared length (Content-Length). */
  length: number;
}

/** A request as the transport parsed it. */
export interface RequestHead {
  method: string;
  /** The request target as sent (origin-form or absolute-form). */
  target: string;
  /** Flat `[name, value, …]` as received. */
  rawHeaders: readonly string[];
  remoteAddress: string;
}

export interface Target {
  kind: "replica" | "plane";
  /** Endpoint `host:port` or `unix:/path` (replica), or plane name. */
  name: string;
  /** `host:port` or `unix:/path` to connect to. */
  endpoint: string;
  /** A replica's Unix socket (egress `deny`), or null for TCP. */
  socketPath: string | null;
  /** The Host header a replica gets: its `host:port`, or `localhost` over a Unix socket. */
  authority: string;
  origin: string;
  path: string;
  plane: PlaneRef | null;
}

export interface Refusal {
  kind: "refuse";
  code: ErrorCode;
  message: string | null;
  detail: unknown;
  /** Extra response headers (e.g. `allow`), flat. */
  extra: string[];
  /** Not an error: the ingress's own answer (a wake's 202), sent the way a refusal is. */
  answer?: { status: number; body: string };
}

/** A request on its way upstream: the candidates in order and what every attempt sends. */
export interface Forward {
  kind: "forward";
  targets: Target[];
  /** Headers for the upstream without framing fields; hops add a fresh signed hop header per attempt. */
  headers: string[];
  /** What a hop to a peer plane binds besides who, to whom and when (the request as forwarded). */
  hop: { method: string; authority: string; target: string } | null;
  warning: string | null;
  /** The declared Content-Length, or null (chunked or no body). */
  contentLength: number | null;
  chunked: boolean;
  /**
   * A websocket upgrade (src/gateway/upgrade.ts relays it instead of the transport): the client's key and
   * the path a replica is asked on. Null for every other request.
   */
  upgrade: { key: string; replicaPath: string } | null;
  /**
   * A request planned for this plane's own replicas that may still go to a peer plane of this region when
   * none of them accepts it (every attempt an untouched connect failure: the replica died or is restarting):
   * the deployment, and the Host, Authorization and origin-form target the hop forwards as the client sent
   * them. Null: no such hand-over (a hop received, an upgrade, a peer or async target). Flat fields, so that
   * the local path allocates nothing for it.
   */
  peerDeployment: string | null;
  clientHost: string;
  clientAuthorization: string | null;
  clientTarget: string;
}

/** A request held while its deployment wakes (src/gateway/parking.ts): planned again when `wait` settles. */
export interface Park {
  kind: "park";
  wait: Promise<ParkOutcome>;
}

export type Plan = Refusal | Forward | Park;

/** How an upstream attempt ended without a response the client could be given. */
export interface UpstreamFailure {
  /** A Node or undici error code (`ECONNREFUSED`, `UND_ERR_HEADERS_TIMEOUT`, …), or a wire-transport code. */
  code: string;
  message: string;
  /**
   * Whether the upstream may have acted on the request (then the call is never retried): any byte reached a
   * replica; a peer plane's hop is untouched until its `100 Continue` let the body go (rules.ts).
   */
  touched: boolean;
  timeout: boolean;
  bodyTooLarge: boolean;
}

/** A replica endpoint on a Unix socket: `unix:/absolute/path` (the process driver under egress `deny`). */
export const UNIX_PREFIX = "unix:";

export function refuse(
  code: ErrorCode,
  message: string | null = null,
  detail: unknown = null,
  extra: string[] = [],
): Refusal {
  return { kind: "refuse", code, message, detail, extra };
}
