// The authenticated plane-to-plane hop (DESIGN.md §4): `x-meridian-hop: {from};{unix-ms};{hmac}` with
// hmac = HMAC-SHA256(hop_secret, `${from}|${ms}|${requestId}`) in lowercase hex. The header is never
// trusted without a valid HMAC; it binds the forwarding plane, the moment and the request id.

import { createHmac, timingSafeEqual } from "node:crypto";

export const HOP_HEADER = "x-meridian-hop";
/** A hop older (or further in the future) than this is refused: it bounds replays and clock skew. */
export const HOP_MAX_AGE_MS = 30_000;

export function hopMac(secret: string, from: string, ms: number, requestId: string): string {
  return createHmac("sha256", secret).update(`${from}|${ms}|${requestId}`).digest("hex");
}

export function signHop(secret: string, from: string, ms: number, requestId: string): string {
  return `${from};${ms};${hopMac(secret, from, ms, requestId)}`;
}

export type HopCheck = { ok: true; from: string; ms: number } | { ok: false; reason: string };

const HOP = /^([a-z0-9-]{1,63});(\d{1,15});([0-9a-f]{64})$/;

/**
 * Verifies a hop header against every secret currently accepted (the current one, and the previous one
 * for a short while after a rotation, so in-flight hops survive it).
 */
export function verifyHop(
  value: string,
  requestId: string,
  secrets: readonly string[],
  nowMs: number,
  maxAgeMs: number = HOP_MAX_AGE_MS,
): HopCheck {
  const m = HOP.exec(value);
  if (m === null) return { ok: false, reason: "malformed" };
  const from = m[1]!;
  const ms = Number(m[2]);
  if (Math.abs(nowMs - ms) > maxAgeMs) return { ok: false, reason: "expired" };
  const given = Buffer.from(m[3]!, "hex");
  for (const secret of secrets) {
    if (secret.length === 0) continue;
    const want = Buffer.from(hopMac(secret, from, ms, requestId), "hex");
    if (timingSafeEqual(given, want)) return { ok: true, from, ms };
  }
  return { ok: false, reason: "bad_signature" };
}
