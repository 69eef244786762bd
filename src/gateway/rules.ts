// The rules both ingress transports (`http-transport.ts`, `wire/`) must agree on, stated once so that
// neither keeps its own copy:
// - timeouts: the limits and their defaults are `options.ts`'s (`DEFAULT_LIMITS`); how long an upstream
//   attempt may take is `upstreamTimeoutMs`;
// - body framing: whether a forwarded request carries a body (`declaresBody`) and whether it is read whole
//   before dispatch (`readsWholeFirst`); the upstream head itself is framed afresh by each transport;
// - proof headers: the set is `headers.ts`'s `PROOF`, stamped by `gateway.ts` on every answer; neither
//   transport names one;
// - the hop's liveness check: a hop with a body waits for `100 Continue` before its body
//   (`HOP_CONTINUE_TIMEOUT`, `awaitsContinue`);
// - websocket upgrades: which requests ask for one (`upgradeAsk`) and the fields of the 426 that refuses
//   one (`UPGRADE_REQUIRED_FIELDS`).

import { validKey } from "../lib/websocket.ts";
import type { IngressLimits } from "./options.ts";
import type { Forward, Target } from "./plan.ts";

/**
 * How long an upstream attempt may wait for the response head, and then between body chunks: a model's
 * `predictTimeoutMs`; a hop to a peer plane 1 s more, so that the peer plane's own (equal) timeout on its
 * replica fires first and its answer comes back.
 */
export function upstreamTimeoutMs(target: Target, limits: IngressLimits): number {
  return target.kind === "replica" ? limits.predictTimeoutMs : limits.predictTimeoutMs + 1_000;
}

/**
 * The plane-to-plane hop's liveness check (RFC 9110 §10.1.1): a hop that carries a body is sent with
 * `Expect: 100-continue` and its head alone; the receiving ingress answers `100 Continue` as soon as it has
 * planned the head (both transports), and only then does the body go. A peer that answers nothing within
 * `hopContinueTimeoutMs` (a frozen process: its kernel still completes handshakes and takes the head) fails
 * the attempt with this code, untouched: without its body the peer can never act on the request, so
 * another plane of the region may take it. Once the 100 (or any response) came, the attempt has the whole
 * `upstreamTimeoutMs`. A hop without a body cannot carry the expectation (RFC 9110 §10.1.1: a client MUST
 * NOT send it without content) and waits as before.
 */
export const HOP_CONTINUE_TIMEOUT = "HOP_CONTINUE_TIMEOUT";

/**
 * A peer plane refused the hop itself (`403 hop_invalid`, with `x-meridian-hop-refused`): its clock is
 * outside the hop window of this plane's, or it does not know this plane's key yet. The refusal comes from
 * the peer's verification, before it plans the request, so the peer never acted on it: the attempt failed
 * untouched when its body had not left (a hop sent head first, or one without a body), and another plane
 * takes it, or the client gets 503 `model_unavailable`. Never the peer's 403: the client did nothing wrong.
 */
export const HOP_REFUSED = "HOP_REFUSED";

/**
 * A peer plane took the hop and found no replica of its own ready for it (`503 model_unavailable` with
 * `x-meridian-hop-refused: no_replica`): its replica died after the snapshot named it ready, and a request
 * that came over a hop is not handed on again (one hop at most). It says so while planning the request,
 * before any of the body is read, so nothing ran: the sender takes it as it takes HOP_REFUSED, and the next
 * plane of the region gets the request, or the client gets the sender's 503.
 */
export const HOP_NO_REPLICA = "HOP_NO_REPLICA";

/** Whether an attempt at `t` is sent head first, waiting for `100 Continue` (see HOP_CONTINUE_TIMEOUT). */
export function awaitsContinue(t: Target, forward: Forward, limits: IngressLimits): boolean {
  return t.kind === "plane" && limits.hopContinueTimeoutMs > 0 && declaresBody(forward);
}

/**
 * Whether a forwarded request carries a body: a Content-Length over 0, or chunked (`gateway.ts` sets
 * `chunked` only without a Content-Length).
 */
export function declaresBody(forward: Forward): boolean {
  return forward.contentLength !== null ? forward.contentLength > 0 : forward.chunked;
}

/**
 * Whether a forwarded request's body is read whole before the first attempt: a declared Content-Length up to `bufferBodyBytes`. Larger and chunked bodies stream.
 */
export function readsWholeFirst(forward: Forward, limits: IngressLimits): boolean {
  return (
    declaresBody(forward) && forward.contentLength !== null && forward.contentLength <= limits.bufferBodyBytes
  );
}

/** What a request's `Upgrade` and `Connection` fields ask for (RFC 9110 §7.8, RFC 6455 §4.1). */
export type UpgradeAsk =
  | { kind: "none" }
  /** Another protocol (`h2c`, …): never performed; the request is served as plain HTTP/1.1. */
  | { kind: "other"; protocols: string }
  | { kind: "websocket"; key: string }
  | { kind: "invalid"; reason: string };

function tokens(value: string): string[] {
  return value
    .split(",")
    .map((t) => t.trim().toLowerCase())
    .filter((t) => t.length > 0);
}

export function upgradeAsk(raw: readonly string[]): UpgradeAsk {
  let upgrade: string[] | null = null;
  let connection: string[] = [] as string[];
  let key: string | undefined;
  let keys = 0;
  let version: string | undefined;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!.toLowerCase();
    const value = raw[i + 1]!;
    if (name === "upgrade") upgrade = [...(upgrade ?? []), ...tokens(value)];
    else if (name === "connection") connection = [...connection, ...tokens(value)];
    else if (name === "sec-websocket-key") {
      key = value.trim();
      keys++;
    } else if (name === "sec-websocket-version") version = value.trim();
  }
  if (upgrade === null || !connection.includes("upgrade")) return { kind: "none" };
  // RFC 6455 §4.2.1: Upgrade includes "websocket" (case-insensitive), one key of 16 bytes, version 13.
  if (!upgrade.some((p) => p === "websocket")) return { kind: "other", protocols: upgrade.join(", ") };
  if (keys !== 1 || !validKey(key)) {
    return { kind: "invalid", reason: "Sec-WebSocket-Key must be one base64 value of 16 bytes." };
  }
  if (version !== "13") return { kind: "invalid", reason: "Sec-WebSocket-Version must be 13." };
  return { kind: "websocket", key: key! };
}

/** Extra fields of a 426 answer: the protocol to upgrade to (RFC 9110 §15.5.22) and the version (§4.4). */
export const UPGRADE_REQUIRED_FIELDS = ["upgrade", "websocket", "sec-websocket-version", "13"];
