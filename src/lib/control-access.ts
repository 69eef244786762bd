// How the control plane proves itself to a plane's operator listener when it fetches replica logs on a
// user's behalf: `x-meridian-control: {unix-ms};{hmac}` with hmac = HMAC-SHA256(hop_secret,
// `control|{unix-ms}|{path}`) in lowercase hex, where path is the request target (path and query) as sent.
// The hop secret is in the control plane's store and in every plane's snapshot; binding the path keeps a
// captured header from opening any other resource, and the age bound limits replays.

import { createHmac, timingSafeEqual } from "node:crypto";

export const CONTROL_ACCESS_HEADER = "x-meridian-control";
/** A header older (or further in the future) than this is refused: it bounds replays and clock skew. */
export const CONTROL_ACCESS_MAX_AGE_MS = 30_000;

function mac(secret: string, ms: number, path: string): string {
  return createHmac("sha256", secret).update(`control|${ms}|${path}`).digest("hex");
}

export function signControlAccess(secret: string, ms: number, path: string): string {
  return `${ms};${mac(secret, ms, path)}`;
}

export type ControlAccessCheck =
  | { ok: true }
  | { ok: false; reason: "malformed" | "expired" | "bad_signature" };

const HEADER = /^(\d{1,15});([0-9a-f]{64})$/;

export function verifyControlAccess(
  value: string,
  path: string,
  secret: string,
  nowMs: number,
  maxAgeMs: number = CONTROL_ACCESS_MAX_AGE_MS,
): ControlAccessCheck {
  const m = HEADER.exec(value);
  if (m === null || secret.length === 0) return { ok: false, reason: "malformed" };
  const ms = Number(m[1]);
  if (Math.abs(nowMs - ms) > maxAgeMs) return { ok: false, reason: "expired" };
  const given = Buffer.from(m[2]!, "hex");
  const want = Buffer.from(mac(secret, ms, path), "hex");
  return timingSafeEqual(given, want) ? { ok: true } : { ok: false, reason: "bad_signature" };
}
