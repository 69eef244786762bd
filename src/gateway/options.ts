// The ingress's options and limits, shared by `ingress.ts` (which picks a transport), `gateway.ts` (the
// decisions) and both transports (`http-transport.ts`, `wire/`). This file imports no transport and no
// gateway module that imports one, so the gateway's import graph stays acyclic (test/architecture.test.ts).

import type { ConnectionOptions } from "node:tls";
import type { Logger } from "pino";
import type { Registry } from "prom-client";
import type { BackpressureLimits } from "../core/autoscaling-settings.ts";
import type { PlaneSnapshot } from "../core/snapshot.ts";
import type { SigningKey } from "../lib/keys.ts";
import type { AsyncIngress } from "./async.ts";
import type { AuditSink } from "./audit.ts";
import { HOP_MAX_AGE_MS, HOP_REPLAY_ENTRIES } from "./hop.ts";
import type { GatewayMetrics } from "./metrics.ts";
import type { SniCertificates } from "./tls-options.ts";

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
  /**
   * A replica's answer up to this size (with a Content-Length) is held whole before its head so that its
   * receipt covers the body (a Content-Digest, docs/evidence.md#receipts); larger, chunked and streamed
   * answers keep a head-only receipt. 0: only the ingress's own answers are covered. Default 1 MiB.
   */
  receiptBodyBytes: number;
  /**
   * How long a hop with a body waits for the peer ingress's `100 Continue` (or any answer) before the body
   * is sent; a peer silent that long is taken as frozen, and the request goes to another plane of the same
   * region or is answered 503 `model_unavailable` (rules.ts, HOP_CONTINUE_TIMEOUT). 0: no wait (the body
   * goes with the head, and a frozen peer holds the request for the whole predict timeout). Default 2 s.
   */
  hopContinueTimeoutMs: number;
  /**
   * Calls per second per API key to an async request's status and cancel (`GET`/`DELETE
   * …/async_request/{id}`) and to `async_queue_status`, counted by the plane the client called; beyond,
   * 429 `rate_limited` with Retry-After. The reference's "Rate limited to 20 requests per second". 0: no
   * limit. Default 20.
   */
  asyncStatusPerSecond: number;
  /** How old a plane-to-plane hop may be. Default 30 s. */
  hopMaxAgeMs: number;
  /**
   * Hops remembered against replays (≈ 240 bytes each). At the bound the oldest is forgotten and hops at or
   * before its time are refused as expired: the window shrinks, replays never pass. Default 100,000.
   */
  hopReplayEntries: number;
  /** `stop()` waits this long for in-flight requests before closing their connections. Default 30 s. */
  drainTimeoutMs: number;
  /**
   * Largest websocket frame payload relayed either way; a larger frame closes both sides with 1009 before
   * its payload passes. Default 16 MiB.
   */
  websocketMaxFrameBytes: number;
  /** A websocket with no byte either way for this long is closed on both sides (1001). Default 300 s. */
  websocketIdleTimeoutMs: number;
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
  receiptBodyBytes: 1024 * 1024,
  hopContinueTimeoutMs: 2_000,
  asyncStatusPerSecond: 20,
  hopMaxAgeMs: HOP_MAX_AGE_MS,
  hopReplayEntries: HOP_REPLAY_ENTRIES,
  drainTimeoutMs: 30_000,
  websocketMaxFrameBytes: 16 * 1024 * 1024,
  websocketIdleTimeoutMs: 300_000,
});

export interface IngressOptions {
  /** This plane; must match `snapshot().plane`, or the ingress refuses to route (503). */
  plane: { name: string; region: string };
  /** Where to listen. Default 127.0.0.1, port 0. */
  listen?: { host: string; port: number };
  /**
   * Serve HTTPS with this certificate and key: the plane's own, for clients that send no SNI (hops to its
   * address) or a name `sni` has no certificate for; `sni` holds one certificate per hostname.
   */
  tls?: { cert: string | Buffer; key: string | Buffer; sni?: SniCertificates };
  /**
   * The plane's own key: it signs the hops this ingress forwards (peers verify them from their snapshots),
   * and the receipt on every response it answers for (docs/evidence.md#receipts).
   */
  signingKey: SigningKey;
  /** Sign a receipt on every response (default true; `meridian plane --receipts off` turns it off). */
  receipts?: boolean;
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
  /** TLS options for peer hops over HTTPS (the CA to trust, a servername). */
  peerConnect?: Pick<ConnectionOptions, "ca" | "servername" | "rejectUnauthorized">;
  /**
   * The autoscaler's load signal (src/plane/load.ts): told of each request this plane serves or holds, and
   * of its end.
   */
  load?: {
    begin(exchange: object, deploymentId: string): void;
    end(exchange: object): void;
    inFlight(deploymentId: string): number;
  };
  /**
   * Asks the control plane to wake a deployment (POST /v1/internal/planes/{name}/wake). Without it the
   * ingress holds nothing: a deployment with nothing ready is 503 at once.
   */
  wake?: (deploymentId: string) => Promise<unknown>;
  /** The bound of held requests per deployment and the Retry-After of a 429 (docs/autoscaling.md). */
  backpressure?: BackpressureLimits;
  /** Clock for hop signing and audit times (tests). */

  now?: () => number;
  /** `wire` (default where Node's parser passes its self-test) or `http` (node:http + undici). */
  transport?: IngressTransport;
  /** The plane's async service; without it async paths are not routes (404), as before async existed. */
  async?: AsyncIngress;
}

export type IngressTransport = "wire" | "http";

export interface Ingress {
  /** The transport in use (`wire` falls back to `http` when Node's parser fails its self-test). */
  readonly transport: IngressTransport;
  start(): Promise<void>;
  stop(): Promise<void>;
  /** Bound address once started. */
  readonly address: { host: string; port: number } | null;
  readonly metrics: GatewayMetrics | null;
}
