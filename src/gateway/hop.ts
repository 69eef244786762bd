// The authenticated plane-to-plane hop (DESIGN.md §4), signed by the forwarding plane's own Ed25519 key:
//   x-meridian-hop: v1;{from};{to};{unix-ms};{key-id};{nonce};{signature}
// The signature (RFC 8032, base64url) covers the JSON array of the tag, those fields, and the request's id,
// method, authority (Host) and target as sent, so a hop signed by one plane cannot pass as another's, be
// addressed to another plane, or carry another request. Each hop has its own random nonce, and a receiver
// accepts a hop once: request ids are the client's to choose and may repeat, hops may not.

import type { KeyObject } from "node:crypto";
import { randomBytes } from "node:crypto";
import { HOP_WINDOW_MS } from "../core/plane-snapshot.ts";
import type { PlaneKey, PlaneRef } from "../core/snapshot.ts";
import { publicKeyObject, type SigningKey, signMessage, verifyMessage } from "../lib/keys.ts";
import { ReplayCache } from "../lib/replay-cache.ts";

export const HOP_HEADER = "x-meridian-hop";
/**
 * On a `403 hop_invalid` to a hop, the receiving plane names why (`expired`, `bad_signature`, …) in this
 * response field and its own clock (unix ms) in `HOP_REFUSED_TIME`: the sender takes it for a failed attempt,
 * not an answer (gateway.ts `hopRefused`), and logs the clock offset. Never relayed to a client
 * (headers.ts: a peer's `x-meridian-*` fields are read as proof, not passed on).
 */
export const HOP_REFUSED_HEADER = "x-meridian-hop-refused";
export const HOP_REFUSED_TIME = "x-meridian-time";
/** A hop older (or further in the future) than this is refused: it bounds replays and clock skew. */
export const HOP_MAX_AGE_MS = HOP_WINDOW_MS;
/**
 * Hops remembered per receiving plane (≈ 240 bytes each, so ≈ 23 MiB at the bound; bench/hop-signature.ts).
 * At the bound the window shrinks to the hops still held (see ReplayCache): at 10,000 hops/s a hop may then
 * be up to 10 s old, and real hops are milliseconds old.
 */
export const HOP_REPLAY_ENTRIES = 100_000;

const TAG = "meridian-hop/1";

/** The request a hop carries, as the forwarder sends it and the receiver reads it. */
export interface HopRequest {
  requestId: string;
  method: string;
  /** The Host header's value as sent. */
  authority: string;
  /** The request target as sent (origin-form: path and query). */
  target: string;
}

export interface HopClaims extends HopRequest {
  from: string;
  to: string;
  ms: number;
}

function message(c: HopClaims, keyId: string, nonce: string): string {
  // A JSON array: unambiguous whatever the strings hold.
  return JSON.stringify([
    TAG,
    c.from,
    c.to,
    c.ms,
    keyId,
    nonce,
    c.requestId,
    c.method,
    c.authority,
    c.target,
  ]);
}

/** The header value for one attempt. `nonce` is for tests; by default 16 random bytes. */
export function signHop(key: SigningKey, claims: HopClaims, nonce?: string): string {
  const n = nonce ?? randomBytes(16).toString("base64url");
  const signature = signMessage(key.privateKey, message(claims, key.keyId, n));
  return `v1;${claims.from};${claims.to};${claims.ms};${key.keyId};${n};${signature}`;
}

/** Why a hop was refused: `replayed` has its own error code (`hop_replayed`), the rest are `hop_invalid`. */
export type HopRefusal =
  | "malformed"
  | "expired"
  | "unknown_plane"
  | "wrong_target"
  | "bad_signature"
  | "replayed";

export type HopCheck = { ok: true; from: string; ms: number } | { ok: false; reason: HopRefusal };

const HOP =
  /^v1;([a-z0-9-]{1,32});([a-z0-9-]{1,32});(\d{1,15});([0-9a-f]{16});([A-Za-z0-9_-]{21}[AQgw]);([A-Za-z0-9_-]{85}[AQgw])$/;

/** What the verifier needs of the receiving plane's snapshot (the routing index has both). */
export interface HopTrust {
  planes: ReadonlyMap<string, PlaneRef>;
  planeKeys: ReadonlyMap<string, readonly PlaneKey[]>;
}

export interface HopVerifierOptions {
  /** The receiving plane's name: a hop must be addressed to it, and never come from it. */
  self: string;
  maxAgeMs?: number;
  replayEntries?: number;
}

/**
 * Verifies the hops one plane receives: the target is this plane, the source a known other plane, the
 * time inside the window, the signature one of the source's keys in the snapshot (a retired key only
 * until the window after its retirement has passed), and the hop not seen before.
 */
export class HopVerifier {
  readonly #self: string;
  readonly #maxAgeMs: number;
  readonly #replays: ReplayCache;
  /** Verifier objects by public key; a snapshot holds a handful, so this stays small. */
  readonly #keyObjects = new Map<string, KeyObject | null>();

  constructor(options: HopVerifierOptions) {
    this.#self = options.self;
    this.#maxAgeMs = options.maxAgeMs ?? HOP_MAX_AGE_MS;
    this.#replays = new ReplayCache({
      maxEntries: options.replayEntries ?? HOP_REPLAY_ENTRIES,
      windowMs: this.#maxAgeMs,
    });
  }

  verify(value: string, request: HopRequest, trust: HopTrust, nowMs: number): HopCheck {
    const m = HOP.exec(value);
    if (m === null) return { ok: false, reason: "malformed" };
    const from = m[1]!;
    const to = m[2]!;
    const ms = Number(m[3]);
    const keyId = m[4]!;
    const nonce = m[5]!;
    if (to !== this.#self) return { ok: false, reason: "wrong_target" };
    if (from === this.#self || !trust.planes.has(from)) return { ok: false, reason: "unknown_plane" };
    if (Math.abs(nowMs - ms) > this.#maxAgeMs) return { ok: false, reason: "expired" };
    const key = trust.planeKeys.get(from)?.find((k) => k.key_id === keyId);
    if (key === undefined || !this.#usable(key, nowMs)) return { ok: false, reason: "bad_signature" };
    const verifier = this.#keyObject(key.public_key);
    const claims: HopClaims = { from, to, ms, ...request };
    if (verifier === null || !verifyMessage(verifier, message(claims, keyId, nonce), m[6]!)) {
      return { ok: false, reason: "bad_signature" };
    }
    // Recorded only once the signature verified, so only a key holder can fill the memory.
    switch (this.#replays.check(`${from} ${nonce}`, ms, nowMs)) {
      case "fresh":
        return { ok: true, from, ms };
      case "replayed":
        return { ok: false, reason: "replayed" };
      case "expired":
        return { ok: false, reason: "expired" };
    }
  }

  /** A retired key verifies hops only during the window after its retirement (in-flight hops). */
  #usable(key: PlaneKey, nowMs: number): boolean {
    return key.retired_at === null || Date.parse(key.retired_at) + this.#maxAgeMs >= nowMs;
  }

  #keyObject(publicKey: string): KeyObject | null {
    let k = this.#keyObjects.get(publicKey);
    if (k === undefined) {
      if (this.#keyObjects.size >= 4096) this.#keyObjects.clear(); // keys come and go; bound the cache
      k = publicKeyObject(publicKey);
      this.#keyObjects.set(publicKey, k);
    }
    return k;
  }
}
