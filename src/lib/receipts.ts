// Signed receipts (issue 14, item 1): the RFC 9421 signature a plane adds to every inference response with
// its own Ed25519 key, the RFC 9530 digest of the request body it binds, and the offline verifier that
// checks a saved response against a key directory. The profile itself is src/core/receipt.ts.

import { createHash, createPublicKey, type Hash, type KeyObject, sign, verify } from "node:crypto";
import {
  contentDigestValue,
  type Dictionary,
  isInnerList,
  parseDictionary,
  sha256OfContentDigest,
  signatureBase,
} from "../core/http-signatures.ts";
import { type DirectoryKey, findKey, type KeyDirectory, validityOf } from "../core/key-directory.ts";
import {
  componentValues,
  PROOF_FIELDS,
  parseReceiptRequestHeader,
  RECEIPT_LABEL,
  RECEIPT_REQUEST_HEADER,
  type ReceiptInput,
  type ReceiptRequest,
  receiptBase,
  receiptInputs,
  receiptRequestHeader,
} from "../core/receipt.ts";

/** The key a plane signs with; structurally the plane's `SigningKey` (its private half never leaves it). */
export interface ReceiptKey {
  keyId: string;
  privateKey: KeyObject;
}

/** RFC 9530 `Content-Digest` (sha-256) of a whole body. */
export function contentDigest(body: Uint8Array | string): string {
  return contentDigestValue(createHash("sha256").update(body).digest());
}

/** The Content-Digest of an empty body (a request without one): computed once. */
export const EMPTY_CONTENT_DIGEST = contentDigest("");

/** RFC 9530 `Content-Digest` of a body that streams through, chunk by chunk (hashed in place, never copied). */
export class ContentDigester {
  readonly #hash: Hash = createHash("sha256");
  #value: string | null = null;
  update(chunk: Uint8Array): void {
    if (this.#value === null) this.#hash.update(chunk);
  }
  /** The value, once the body has ended; later calls return the same value and later chunks are ignored. */
  digest(): string {
    this.#value ??= contentDigestValue(this.#hash.digest());
    return this.#value;
  }
}

export interface ReceiptSubject {
  status: number;
  /** The response's header fields as the ingress sends them: flat `[name, value, …]`, names lowercase. */
  headers: readonly string[];
  request: ReceiptRequest;
  /** When the response head is sent, in ms since the epoch (`created` is its whole seconds). */
  now: number;
  /** The Signature-Input / Signature member name. Default `receipt`. */
  label?: string;
}

/** The response's `content-digest` among flat `[name, value, …]` headers (one field line), or null. */
function contentDigestField(h: readonly string[]): string | null {
  let out: string | null = null;
  for (let i = 0; i < h.length; i += 2) {
    if (h[i] !== "content-digest") continue;
    const v = h[i + 1]!.replace(/^[ \t]+|[ \t]+$/g, "");
    out = out === null ? v : `${out}, ${v}`;
  }
  return out;
}

export type ReceiptSigning = { ok: true; headers: string[] } | { ok: false; reason: string };

/**
 * The headers that make a response its own receipt: `signature-input`, `signature` (RFC 9421 §4) and the
 * uncovered `x-meridian-receipt-request` echo. Fails only when a covered value cannot be signed (absent,
 * or outside visible ASCII): the response is then sent without a receipt.
 */
export function signReceipt(key: ReceiptKey, subject: ReceiptSubject): ReceiptSigning {
  // One pass over the response's fields for the five proof values (RFC 9421 §2.1: lines joined by ", ").
  const proof: Array<string | undefined> = [undefined, undefined, undefined, undefined, undefined];
  const h = subject.headers;
  for (let i = 0; i < h.length; i += 2) {
    const k = (PROOF_FIELDS as readonly string[]).indexOf(h[i]!);
    if (k < 0) continue;
    const v = h[i + 1]!.replace(/^[ \t]+|[ \t]+$/g, "");
    proof[k] = proof[k] === undefined ? v : `${proof[k]}, ${v}`;
  }
  const out: string[] = [];
  // A response that carries a Content-Digest has it covered (the response body is then bound).
  const signed = appendReceipt(
    out,
    key,
    subject.status,
    proof,
    subject.request,
    subject.now,
    subject.label,
    contentDigestField(h),
  );
  return signed === null ? { ok: true, headers: out } : { ok: false, reason: signed };
}

/**
 * The ingress's path: appends the receipt's three header fields to `headers` (a flat `[name, value, …]`
 * array) from the proof values it set itself (PROOF_FIELDS order, each one field line), with no pass over
 * the response's fields. `responseDigest`: the `content-digest` the response carries (its body is then
 * covered), or null. Returns null, or the reason no receipt could be signed (nothing is appended).
 */
export function appendReceipt(
  headers: string[],
  key: ReceiptKey,
  status: number,
  proof: readonly (string | undefined)[],
  request: ReceiptRequest,
  now: number,
  label: string = RECEIPT_LABEL,
  responseDigest: string | null = null,
): string | null {
  const built = receiptBase(key.keyId, Math.floor(now / 1000), status, proof, request, responseDigest);
  if (!built.ok) return built.reason;
  const signature = sign(null, Buffer.from(built.base, "latin1"), key.privateKey).toString("base64");
  headers.push(
    "signature-input",
    `${label}=${built.input}`,
    "signature",
    `${label}=:${signature}:`,
    RECEIPT_REQUEST_HEADER,
    receiptRequestHeader(request),
  );
  return null;
}

// ---------------------------------------------------------------------------------------------------------
// Verification.

/** A response as saved (`curl -i`, `curl -D`): its status and its field lines, in order. */
export interface SavedResponse {
  status: number;
  fields: ReadonlyArray<readonly [string, string]>;
}

export type ReceiptFailure =
  | "no_receipt"
  | "malformed"
  | "request_unknown"
  | "request_mismatch"
  | "body_not_covered"
  | "response_body_changed"
  | "unknown_key"
  | "key_not_valid"
  | "wrong_plane"
  | "bad_signature"
  | "from_the_future";

export interface VerifiedReceipt {
  plane: string;
  region: string;
  keyId: string;
  /** Unix seconds the plane signed at. */
  created: number;
  status: number;
  requestId: string;
  deploymentId: string;
  route: string[];
  request: ReceiptRequest;
  /** Where the request components came from: the verifier's own knowledge, or the response's echo. */
  requestFrom: "given" | "echo";
  coversBody: boolean;
  /**
   * The receipt covers the response body (its `content-digest`): `checked` when the body given matched it,
   * `not_checked` when no body was given; false when the receipt covers only the head.
   */
  responseBody: "checked" | "not_checked" | false;
  /** Other planes' valid receipts on the same response (an entry plane that forwarded it). */
  alsoSignedBy: Array<{ plane: string; region: string; keyId: string }>;
}

export type ReceiptVerification =
  | { ok: true; receipt: VerifiedReceipt }
  | { ok: false; reason: ReceiptFailure; message: string };

export interface ReceiptCheckOptions {
  /** What the verifier knows of the request: these win over the echo, and must match it when both exist. */
  request?: Partial<ReceiptRequest>;
  /** Unix ms "now", to refuse signatures from the future. Default the clock. */
  now?: number;
  /** The response body as saved: checked against the covered `content-digest` when the receipt covers it. */
  body?: Uint8Array;
}

/** A signature created this far after `now` is refused: no plane signs the future. */
const FUTURE_SKEW_S = 300;

/**
 * Verifies a saved response's receipt offline (RFC 9421 §3.2): the receipt's key must be in the directory,
 * valid when it signed, and belong to the plane and region the response names; the signature must cover the
 * profile's components with the values the response and request hold now.
 */
export function verifyReceipt(
  res: SavedResponse,
  directory: KeyDirectory,
  options: ReceiptCheckOptions = {},
): ReceiptVerification {
  const fail = (reason: ReceiptFailure, message: string): ReceiptVerification => ({
    ok: false,
    reason,
    message,
  });
  const field = (name: string) => res.fields.filter(([n]) => n.toLowerCase() === name).map(([, v]) => v);
  const joined = (name: string) => {
    const lines = field(name);
    return lines.length === 0 ? undefined : lines.join(", ");
  };
  const inputValue = joined("signature-input");
  const signatureValue = joined("signature");
  if (inputValue === undefined || signatureValue === undefined) {
    return fail(
      "no_receipt",
      "the response has no Signature-Input and Signature headers: it carries no receipt",
    );
  }
  let inputs: Dictionary;
  let signatures: Dictionary;
  try {
    inputs = parseDictionary(inputValue);
    signatures = parseDictionary(signatureValue);
  } catch (err) {
    return fail(
      "malformed",
      `the signature headers are not valid Structured Fields: ${(err as Error).message}`,
    );
  }
  const checks = receiptInputs(inputs);
  if (checks.length === 0)
    return fail("no_receipt", 'no signature on the response is tagged "meridian-receipt"');
  const bad = checks.find((c) => !c.ok);
  if (bad !== undefined && !bad.ok) return fail("malformed", `receipt "${bad.label}" ${bad.reason}`);

  const request = requestOf(field(RECEIPT_REQUEST_HEADER), options.request ?? {});
  if (!request.ok) return fail(request.reason, request.message);

  const proof = (name: (typeof PROOF_FIELDS)[number]) => joined(name) ?? "";
  const plane = proof("x-meridian-plane");
  const region = proof("x-meridian-region");
  const now = Math.floor((options.now ?? Date.now()) / 1000);
  const verified: Array<{ input: ReceiptInput; key: DirectoryKey }> = [];
  for (const c of checks) {
    if (!c.ok) continue;
    const r = verifyOne(c.input, signatures, res, request.value, directory, now);
    if (!r.ok) return r;
    verified.push({ input: c.input, key: r.key });
  }
  const own = verified.find((v) => v.key.plane === plane);
  if (own === undefined) {
    const k = verified[0]!.key;
    return fail(
      "wrong_plane",
      `the receipt is signed by key ${k.key_id} of plane ${k.plane} (region ${k.region}), but the response says it was processed by plane ${plane || "(none)"}`,
    );
  }
  if (own.key.region !== region) {
    return fail(
      "wrong_plane",
      `key ${own.key.key_id} belongs to plane ${own.key.plane} in region ${own.key.region}, but the response says region ${region || "(none)"}`,
    );
  }
  if (!own.input.coversBody && request.value.contentDigest !== null && request.from === "given") {
    return fail(
      "body_not_covered",
      "the receipt does not cover the request body (the plane answered before reading it), so the body given cannot be checked",
    );
  }
  let responseBody: VerifiedReceipt["responseBody"] = false;
  if (own.input.coversResponse) {
    // The signature holds the header; the header must hold the body (RFC 9530 §2).
    responseBody = "not_checked";
    if (options.body !== undefined) {
      const header = joined("content-digest") ?? "";
      const actual = contentDigest(options.body);
      if (!sameDigest(header, actual)) {
        return fail(
          "response_body_changed",
          `the receipt covers the response body, and the body given (${options.body.length} bytes, ${actual}) is not the one plane ${plane} signed (${header || "no content-digest"})`,
        );
      }
      responseBody = "checked";
    }
  }
  return {
    ok: true,
    receipt: {
      plane,
      region,
      keyId: own.key.key_id,
      created: own.input.created,
      status: res.status,
      requestId: proof("x-request-id"),
      deploymentId: proof("x-meridian-deployment-id"),
      route: proof("x-meridian-route")
        .split(",")
        .map((s) => s.trim()),
      request: own.input.coversBody ? request.value : { ...request.value, contentDigest: null },
      requestFrom: request.from,
      coversBody: own.input.coversBody,
      responseBody,
      alsoSignedBy: verified
        .filter((v) => v !== own)
        .map((v) => ({ plane: v.key.plane, region: v.key.region, keyId: v.key.key_id })),
    },
  };
}

function verifyOne(
  input: ReceiptInput,
  signatures: Dictionary,
  res: SavedResponse,
  request: ReceiptRequest,
  directory: KeyDirectory,
  now: number,
): { ok: true; key: DirectoryKey } | { ok: false; reason: ReceiptFailure; message: string } {
  const fail = (reason: ReceiptFailure, message: string) => ({ ok: false as const, reason, message });
  const at = new Date(input.created * 1000).toISOString();
  if (input.created > now + FUTURE_SKEW_S)
    return fail("from_the_future", `the receipt claims to be signed at ${at}, in the future`);
  const found = findKey(directory, input.keyId, input.created);
  if (!found.ok) {
    if (found.reason === "unknown_key") {
      return fail("unknown_key", `key ${input.keyId} is not in the key directory`);
    }
    return fail(
      "key_not_valid",
      `key ${input.keyId} of plane ${found.key.plane} was not valid at ${at} (${validityOf(found.key)})`,
    );
  }
  const sig = signatures.get(input.label);
  if (sig === undefined || isInnerList(sig) || sig.value.type !== "bytes") {
    return fail("malformed", `the Signature header has no byte sequence for "${input.label}"`);
  }
  if (input.coversBody && request.contentDigest === null) {
    return fail(
      "request_unknown",
      "the receipt covers the request body: give its digest (--body-file, --data or --body-digest)",
    );
  }
  const resolved = componentValues(
    input.params,
    {
      status: res.status,
      field: (name) => res.fields.filter(([n]) => n.toLowerCase() === name).map(([, v]) => v),
    },
    request,
  );
  if (!resolved.ok) {
    return fail(
      "bad_signature",
      `covered component ${resolved.component} is ${resolved.reason} in the response`,
    );
  }
  const base = signatureBase(input.params, resolved.values);
  const publicKey = publicKeyOf(found.key.public_key);
  const ok = verify(null, Buffer.from(base, "latin1"), publicKey, Buffer.from(sig.value.value));
  if (!ok) {
    return fail(
      "bad_signature",
      `the signature does not match: a covered part (the status, a proof header, the response's content-digest, or the request's method, authority, path or body digest) is not what plane ${found.key.plane} signed with key ${found.key.key_id}`,
    );
  }
  return { ok: true, key: found.key };
}

const publicKeys = new Map<string, KeyObject>();
/** A verifier for a raw Ed25519 public key (RFC 8037 `x`). The directory's parser checked its form. */
export function publicKeyOf(raw: string): KeyObject {
  let key = publicKeys.get(raw);
  if (key === undefined) {
    key = createPublicKey({ key: { kty: "OKP", crv: "Ed25519", x: raw }, format: "jwk" });
    publicKeys.set(raw, key);
  }
  return key;
}

type RequestResolution =
  | { ok: true; value: ReceiptRequest; from: "given" | "echo" }
  | { ok: false; reason: ReceiptFailure; message: string };

/** The request components to verify with: the verifier's own, else the echo; both must agree when both exist. */
function requestOf(echoLines: readonly string[], given: Partial<ReceiptRequest>): RequestResolution {
  const echo = echoLines.length === 1 ? parseReceiptRequestHeader(echoLines[0]!) : {};
  const names = {
    method: "method",
    authority: "authority",
    path: "path",
    contentDigest: "body digest",
  } as const;
  for (const k of ["method", "authority", "path"] as const) {
    const g = given[k];
    const e = echo[k];
    if (g !== undefined && e !== undefined && g !== e) {
      return {
        ok: false,
        reason: "request_mismatch",
        message: `the receipt is for a request with ${names[k]} ${e}, not ${g}`,
      };
    }
  }
  let gd: string | null = null;
  if (given.contentDigest !== undefined && given.contentDigest !== null) {
    const bytes = sha256OfContentDigest(given.contentDigest);
    if (bytes === null) {
      return {
        ok: false,
        reason: "request_unknown",
        message: `the body digest given is not a Content-Digest with a sha-256 member: ${given.contentDigest}`,
      };
    }
    // The plane writes the sha-256 member alone (RFC 9530 §2); the same digest in another form is equal.
    gd = contentDigestValue(bytes);
  }
  const ed = echo.contentDigest ?? undefined;
  if (gd !== null && ed !== undefined && !sameDigest(gd, ed)) {
    return {
      ok: false,
      reason: "request_mismatch",
      message: `the receipt is for a request body with digest ${ed}, not ${gd}`,
    };
  }
  const method = given.method ?? echo.method;
  const authority = given.authority ?? echo.authority;
  const path = given.path ?? echo.path;
  if (method === undefined || authority === undefined || path === undefined) {
    return {
      ok: false,
      reason: "request_unknown",
      message: `the response does not say which request it answers (no ${RECEIPT_REQUEST_HEADER} header): give --url and --method`,
    };
  }
  const anyGiven =
    given.method !== undefined || given.authority !== undefined || given.path !== undefined || gd !== null;
  const contentDigest = gd ?? ed ?? null;
  return { ok: true, value: { method, authority, path, contentDigest }, from: anyGiven ? "given" : "echo" };
}

function sameDigest(a: string, b: string): boolean {
  const x = sha256OfContentDigest(a);
  const y = sha256OfContentDigest(b);
  return x !== null && y !== null && Buffer.from(x).equals(Buffer.from(y));
}
