// How the control plane proves itself to a plane's operator listener when it fetches replica logs on a
// user's behalf, signed with the control plane's own Ed25519 key (kept in its store, shared by its
// replicas; planes get only the public key, in their snapshot):
//   x-meridian-control: v1;{unix-ms};{key-id};{nonce};{signature}
// The signature covers the JSON array of the tag, the plane it is addressed to, the time, the key id, the
// nonce, the method and the request target (path and query) as sent: a captured header opens no other
// resource, on no other plane, and (with the nonce) only once within the window.

import type { KeyObject } from "node:crypto";
import { randomBytes } from "node:crypto";
import type { ControlKey } from "../core/snapshot.ts";
import { publicKeyObject, type SigningKey, signMessage, verifyMessage } from "./keys.ts";
import { ReplayCache } from "./replay-cache.ts";

export const CONTROL_ACCESS_HEADER = "x-meridian-control";
/** A header older (or further in the future) than this is refused: it bounds replays and clock skew. */
export const CONTROL_ACCESS_MAX_AGE_MS = 30_000;
/** Log fetches remembered against replays; a user's log request is a handful of them. */
const REPLAY_ENTRIES = 10_000;

const TAG = "meridian-control/1";

export interface ControlRequest {
  /** The plane the request is addressed to. */
  plane: string;
  method: string;
  /** The request target as sent: path and query. */
  target: string;
}

function message(r: ControlRequest, ms: number, keyId: string, nonce: string): string {
  return JSON.stringify([TAG, r.plane, ms, keyId, nonce, r.method, r.target]);
}

export function signControlAccess(key: SigningKey, r: ControlRequest, ms: number, nonce?: string): string {
  const n = nonce ?? randomBytes(16).toString("base64url");
  return `v1;${ms};${key.keyId};${n};${signMessage(key.privateKey, message(r, ms, key.keyId, n))}`;
}

export type ControlAccessRefusal = "malformed" | "expired" | "unknown_key" | "bad_signature" | "replayed";
export type ControlAccessCheck = { ok: true } | { ok: false; reason: ControlAccessRefusal };

const HEADER = /^v1;(\d{1,15});([0-9a-f]{16});([A-Za-z0-9_-]{21}[AQgw]);([A-Za-z0-9_-]{85}[AQgw])$/;

/** Checks the control plane's signature on requests to one plane, each accepted once. */
export class ControlAccessVerifier {
  readonly #plane: string;
  readonly #maxAgeMs: number;
  readonly #replays: ReplayCache;
  #key: { publicKey: string; object: KeyObject | null } | null = null;

  constructor(options: { plane: string; maxAgeMs?: number }) {
    this.#plane = options.plane;
    this.#maxAgeMs = options.maxAgeMs ?? CONTROL_ACCESS_MAX_AGE_MS;
    this.#replays = new ReplayCache({ maxEntries: REPLAY_ENTRIES, windowMs: this.#maxAgeMs });
  }

  /** `controlKey`: the control plane's public key from this plane's snapshot (null: none yet). */
  verify(
    value: string,
    request: { method: string; target: string },
    controlKey: ControlKey | null,
    nowMs: number,
  ): ControlAccessCheck {
    const m = HEADER.exec(value);
    if (m === null) return { ok: false, reason: "malformed" };
    const ms = Number(m[1]);
    const keyId = m[2]!;
    const nonce = m[3]!;
    if (Math.abs(nowMs - ms) > this.#maxAgeMs) return { ok: false, reason: "expired" };
    if (controlKey === null || controlKey.key_id !== keyId) return { ok: false, reason: "unknown_key" };
    const key = this.#keyObject(controlKey.public_key);
    const signed = message({ plane: this.#plane, ...request }, ms, keyId, nonce);
    if (key === null || !verifyMessage(key, signed, m[4]!)) return { ok: false, reason: "bad_signature" };
    switch (this.#replays.check(nonce, ms, nowMs)) {
      case "fresh":
        return { ok: true };
      case "replayed":
        return { ok: false, reason: "replayed" };
      case "expired":
        return { ok: false, reason: "expired" };
    }
  }

  #keyObject(publicKey: string): KeyObject | null {
    if (this.#key?.publicKey !== publicKey) this.#key = { publicKey, object: publicKeyObject(publicKey) };
    return this.#key.object;
  }
}
