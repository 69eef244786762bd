// Header handling of the proxy, in one pass over raw header arrays: hop-by-hop fields stripped both ways
// (RFC 9110 §7.6.1, including every field the Connection header names), the fields the ingress reads
// picked out, and the proof headers (DESIGN.md §2.6) kept under the ingress's control.

import {
  type Dictionary,
  isInnerList,
  parseDictionary,
  serializeDictionary,
} from "../core/http-signatures.ts";
import { RECEIPT_LABEL, RECEIPT_TAG } from "../core/receipt.ts";
import { HOP_HEADER } from "./hop.ts";

/** RFC 9110 §7.6.1 and the fields commonly treated alike (Keep-Alive, Proxy-Connection: RFC 7230 §A.1.2). */
const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "proxy-authenticate",
  "proxy-authorization",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
]);

export const PROOF = {
  requestId: "x-request-id",
  region: "x-meridian-region",
  plane: "x-meridian-plane",
  deploymentId: "x-meridian-deployment-id",
  route: "x-meridian-route",
} as const;

/** What the ingress needs from a request's headers, and the end-to-end fields to pass on. */
export interface RequestHeaders {
  hostCount: number;
  host: string | undefined;
  authorization: string | undefined;
  requestId: string | undefined;
  hop: string | undefined;
  forwardedFor: string | undefined;
  forwardedProto: string | undefined;
  forwardedHost: string | undefined;
  /** `Expect` is answered by the ingress itself (100-continue), never forwarded. */
  expect: string | undefined;
  /**
   * The first Content-Length and whether Transfer-Encoding was sent, neither passed on (the transport frames
   * the upstream body itself): read here so the hot path never touches `req.headers`, which Node builds
   * lazily from the raw array on first access. llhttp has already refused CL+TE and conflicting
   * Content-Lengths.
   */
  contentLength: string | undefined;
  transferEncoding: boolean;
  /** End-to-end fields other than those above, flat `[name, value, …]`, names lowercased. */
  passthrough: string[];
}

/** Parses `Connection` option tokens (RFC 9110 §7.6.1: `Connection = #connection-option`). */
function connectionTokens(values: string[]): Set<string> {
  const out = new Set<string>();
  for (const v of values) {
    for (const t of v.split(",")) {
      const token = t.trim().toLowerCase();
      if (token.length > 0) out.add(token);
    }
  }
  return out;
}

export function scanRequestHeaders(raw: readonly string[]): RequestHeaders {
  const out: RequestHeaders = {
    hostCount: 0,
    host: undefined,
    authorization: undefined,
    requestId: undefined,
    hop: undefined,
    forwardedFor: undefined,
    forwardedProto: undefined,
    forwardedHost: undefined,
    expect: undefined,
    contentLength: undefined,
    transferEncoding: false,
    passthrough: [],
  };
  let connection: string[] | null = null;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!.toLowerCase();
    const value = raw[i + 1]!;
    switch (name) {
      case "host":
        out.hostCount++;
        out.host ??= value;
        continue;
      case "authorization":
        out.authorization = value;
        continue;
      case "x-request-id":
        out.requestId = value;
        continue;
      case HOP_HEADER:
        out.hop = value;
        continue;
      case PROOF.route:
        continue; // never trusted from outside; the route is rebuilt from the verified hop
      case "x-forwarded-for":
        out.forwardedFor = out.forwardedFor === undefined ? value : `${out.forwardedFor}, ${value}`;
        continue;
      case "x-forwarded-proto":
        out.forwardedProto = value;
        continue;
      case "x-forwarded-host":
        out.forwardedHost = value;
        continue;
      case "expect":
        out.expect = value;
        continue;
      case "connection":
        connection = connection === null ? [value] : [...connection, value];
        continue;
      case "content-length":
        out.contentLength ??= value;
        continue;
      case "transfer-encoding":
        out.transferEncoding = true;
        continue;
    }
    if (HOP_BY_HOP.has(name)) continue;
    out.passthrough.push(name, value);
  }
  if (namesFields(connection)) out.passthrough = dropNamed(out.passthrough, connectionTokens(connection!));
  return out;
}

/**
 * Whether `Connection` may name fields still to drop. The common `Connection: keep-alive` (sent with nearly
 * every response by Node-based replicas) names only `Keep-Alive`, which the hop-by-hop filter already
 * dropped, so the re-filtering pass is skipped for it. (`close` still takes it: a field named `close`
 * must go too.)
 */
function namesFields(connection: string[] | null): boolean {
  if (connection === null) return false;
  if (connection.length !== 1) return true;
  const v = connection[0]!;
  return !(v.length === 10 && v.toLowerCase() === "keep-alive");
}

function dropNamed(flat: string[], names: Set<string>): string[] {
  const kept: string[] = [];
  for (let i = 0; i < flat.length; i += 2) {
    if (!names.has(flat[i]!)) kept.push(flat[i]!, flat[i + 1]!);
  }
  return kept;
}

/** Shared, never written: a replica's response carries no proof worth keeping. */
const NO_PROOF: Map<string, string> = new Map();

/**
 * Response headers from a replica or a peer plane, as a flat `[name, value, …]` array for
 * `res.writeHead`. Hop-by-hop fields are dropped. From a replica, the proof headers are dropped too:
 * model code must not be able to claim where it ran. From a peer plane they are kept and returned.
 */
export function scanResponseHeaders(
  raw: readonly (Buffer | string)[],
  keepProof: boolean,
): { headers: string[]; proof: Map<string, string> } {
  let headers: string[] = [];
  const proof = keepProof ? new Map<string, string>() : NO_PROOF;
  let connection: string[] | null = null;
  let signatures: string[] | null = null;
  for (let i = 0; i < raw.length; i += 2) {
    const n = raw[i]!;
    const v = raw[i + 1]!;
    const name = (typeof n === "string" ? n : n.toString("latin1")).toLowerCase();
    const value = typeof v === "string" ? v : v.toString("latin1");
    if (name === "connection") {
      connection = connection === null ? [value] : [...connection, value];
      continue;
    }
    if (HOP_BY_HOP.has(name)) continue;
    if (name === PROOF.requestId || name.startsWith("x-meridian-")) {
      if (keepProof) proof.set(name, value);
      continue;
    }
    if (!keepProof && (name === "signature" || name === "signature-input")) {
      if (signatures === null) signatures = [name, value];
      else signatures.push(name, value);
      continue;
    }
    headers.push(name, value);
  }
  if (namesFields(connection)) headers = dropNamed(headers, connectionTokens(connection!));
  if (signatures !== null) {
    const kept = replicaSignatures(signatures);
    for (const x of kept) headers.push(x);
  }
  return { headers, proof };
}

/**
 * A replica's own HTTP Message Signatures (RFC 9421 §4) pass through, minus any member that could be taken
 * for the plane's receipt: one labelled `receipt` (the plane's label; RFC 8941 §3.2 keeps the last member of
 * a name) or tagged `meridian-receipt`. Model code must not be able to claim, or spoil, where it ran. Fields
 * that do not parse as RFC 8941 Dictionaries are dropped whole: the plane's member could not be added to
 * them unambiguously.
 */
function replicaSignatures(flat: readonly string[]): string[] {
  const lines = (name: string) => {
    const out: string[] = [];
    for (let i = 0; i < flat.length; i += 2) if (flat[i] === name) out.push(flat[i + 1]!);
    return out;
  };
  let inputs: Dictionary;
  let sigs: Dictionary;
  try {
    inputs = parseDictionary(lines("signature-input").join(", "));
    sigs = parseDictionary(lines("signature").join(", "));
  } catch {
    return [];
  }
  const drop = new Set<string>([RECEIPT_LABEL]);
  for (const [label, member] of inputs) {
    const tag = member.params.get("tag");
    if (tag?.type === "string" && tag.value === RECEIPT_TAG) drop.add(label);
    if (!isInnerList(member)) drop.add(label); // RFC 9421 §4.1: each member is an Inner List
  }
  for (const label of drop) {
    inputs.delete(label);
    sigs.delete(label);
  }
  const out: string[] = [];
  if (inputs.size > 0) out.push("signature-input", serializeDictionary(inputs));
  if (sigs.size > 0) out.push("signature", serializeDictionary(sigs));
  return out;
}

/** `Authorization: Api-Key <key>` or `Bearer <key>`; the scheme is case-insensitive (RFC 9110 §11.1). */
export function apiKeyOf(authorization: string | undefined): string | null {
  if (authorization === undefined) return null;
  const space = authorization.indexOf(" ");
  if (space < 0) return null;
  const scheme = authorization.slice(0, space).toLowerCase();
  if (scheme !== "api-key" && scheme !== "bearer") return null;
  const key = authorization.slice(space + 1).trim();
  return key.length > 0 ? key : null;
}

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

/** A client-supplied request id is kept when it is a sane token; otherwise the ingress makes one. */
export function acceptableRequestId(value: string | undefined): value is string {
  return value !== undefined && REQUEST_ID.test(value);
}
