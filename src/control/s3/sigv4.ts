// AWS Signature Version 4 as Amazon S3 checks it, on the Authorization header ("Authenticating Requests:
// Using the Authorization Header", S3 API reference; "Create a signed AWS API request", IAM guide). Pure:
// the caller hands in the request's method, raw path and query, raw header pairs and the clock, and looks
// the secret up itself between reading the claim and checking the signature.

import { createHash, createHmac, timingSafeEqual } from "node:crypto";
import { type S3Failure, s3Failure } from "./errors.ts";

export const ALGORITHM = "AWS4-HMAC-SHA256";
/** S3 refuses a request whose time is more than 15 minutes from its own. */
export const MAX_SKEW_MS = 15 * 60 * 1000;
export const EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/** A request as it arrived: nothing decoded, header pairs in arrival order (Node's `rawHeaders`). */
export interface RawRequest {
  method: string;
  /** The path as sent, percent-encoding intact, without the query. */
  path: string;
  /** The query as sent, without the `?`; empty when there is none. */
  query: string;
  headers: ReadonlyArray<readonly [string, string]>;
}

/** How the body is covered: its sha256 in the header, not at all, or aws-chunked with a trailing checksum. */
export type PayloadMode =
  | { kind: "sha256"; sha256: string }
  | { kind: "unsigned" }
  | { kind: "streaming-unsigned-trailer" };

/** What the Authorization header claims, read and checked for form before any secret is looked up. */
export interface Claim {
  accessKeyId: string;
  /** `YYYYMMDD` of the credential scope. */
  date: string;
  region: string;
  service: string;
  signedHeaders: string[];
  signature: string;
  /** `x-amz-date` as sent (`YYYYMMDDTHHMMSSZ`). */
  amzDate: string;
  /** The value of `x-amz-content-sha256`, which the signature covers. */
  payloadHash: string;
  payload: PayloadMode;
  securityToken: string | null;
}

export type ClaimOutcome = { ok: true; claim: Claim } | { ok: false; failure: S3Failure };

/** Lowercased header name → values in arrival order. */
export function headerMap(headers: RawRequest["headers"]): Map<string, string[]> {
  const map = new Map<string, string[]>();
  for (const [name, value] of headers) {
    const key = name.toLowerCase();
    const list = map.get(key);
    if (list) list.push(value);
    else map.set(key, [value]);
  }
  return map;
}

/** The one value of a header, or null when absent; repeated values are joined as HTTP does (RFC 9110 §5.3). */
export function headerValue(map: Map<string, string[]>, name: string): string | null {
  const values = map.get(name);
  return values === undefined ? null : values.join(",");
}

/** `YYYYMMDDTHHMMSSZ` (ISO 8601 basic, UTC) as epoch ms, or null when it is not a real instant. */
export function parseAmzDate(value: string): number | null {
  const m = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(value);
  if (!m) return null;
  const [y, mo, d, h, mi, s] = m.slice(1).map(Number) as [number, number, number, number, number, number];
  const ms = Date.UTC(y, mo - 1, d, h, mi, s);
  const back = new Date(ms);
  if (back.getUTCFullYear() !== y || back.getUTCMonth() !== mo - 1 || back.getUTCDate() !== d) return null;
  if (h > 23 || mi > 59 || s > 59) return null;
  return ms;
}

export function formatAmzDate(ms: number): string {
  return new Date(ms)
    .toISOString()
    .replace(/[-:]/g, "")
    .replace(/\.\d{3}/, "");
}

type AuthorizationFields = Pick<
  Claim,
  "accessKeyId" | "date" | "region" | "service" | "signedHeaders" | "signature"
>;

/**
 * Parses `AWS4-HMAC-SHA256 Credential=AKID/20130524/us-east-1/s3/aws4_request, SignedHeaders=a;b,
 * Signature=hex`. The three components may come in any order, separated by commas and optional spaces.
 */
export function parseAuthorization(
  value: string,
): { ok: true; fields: AuthorizationFields } | { ok: false; message: string } {
  const rest = value.slice(ALGORITHM.length);
  if (!value.startsWith(ALGORITHM) || !/^\s/.test(rest)) {
    return { ok: false, message: `The authorization header must start with '${ALGORITHM} '.` };
  }
  const parts = new Map<string, string>();
  for (const piece of rest.split(",")) {
    const trimmed = piece.trim();
    const eq = trimmed.indexOf("=");
    if (eq <= 0)
      return { ok: false, message: `The authorization header has a malformed component '${trimmed}'.` };
    const name = trimmed.slice(0, eq);
    if (parts.has(name)) return { ok: false, message: `The authorization header repeats '${name}'.` };
    parts.set(name, trimmed.slice(eq + 1));
  }
  const credential = parts.get("Credential");
  const signedHeaders = parts.get("SignedHeaders");
  const signature = parts.get("Signature");
  if (
    credential === undefined ||
    signedHeaders === undefined ||
    signature === undefined ||
    parts.size !== 3
  ) {
    return {
      ok: false,
      message: "The authorization header must have exactly Credential, SignedHeaders and Signature.",
    };
  }
  const scope = credential.split("/");
  if (scope.length !== 5 || scope.some((s) => s === "") || scope[4] !== "aws4_request") {
    return {
      ok: false,
      message: "The Credential must be '<access key id>/<date>/<region>/<service>/aws4_request'.",
    };
  }
  if (!/^\d{8}$/.test(scope[1]!)) return { ok: false, message: "The Credential's date must be YYYYMMDD." };
  const headers = signedHeaders.split(";");
  if (headers.some((h) => !/^[a-z0-9!#$%&'*+.^_`|~-]+$/.test(h))) {
    return { ok: false, message: "SignedHeaders must be lowercase header names separated by ';'." };
  }
  if (!/^[0-9a-f]{64}$/.test(signature)) {
    return { ok: false, message: "The Signature must be 64 lowercase hexadecimal digits." };
  }
  return {
    ok: true,
    fields: {
      accessKeyId: scope[0]!,
      date: scope[1]!,
      region: scope[2]!,
      service: scope[3]!,
      signedHeaders: headers,
      signature,
    },
  };
}

/** The forms of `x-amz-content-sha256` S3 defines, and which of them this endpoint accepts. */
export function parsePayloadHash(
  value: string,
): { ok: true; mode: PayloadMode } | { ok: false; failure: S3Failure } {
  if (/^[0-9a-f]{64}$/.test(value)) return { ok: true, mode: { kind: "sha256", sha256: value } };
  if (value === "UNSIGNED-PAYLOAD") return { ok: true, mode: { kind: "unsigned" } };
  if (value === "STREAMING-UNSIGNED-PAYLOAD-TRAILER") {
    return { ok: true, mode: { kind: "streaming-unsigned-trailer" } };
  }
  if (value.startsWith("STREAMING-")) {
    // Signed aws-chunked bodies (a signature per chunk) are what some SDKs send over plain HTTP; boto3
    // never does (it signs the whole payload over HTTP and uses the unsigned trailer form over HTTPS).
    return {
      ok: false,
      failure: s3Failure(
        "NotImplemented",
        `x-amz-content-sha256 ${value} (chunk-signed aws-chunked bodies) is not supported here; sign the payload's sha256, or send UNSIGNED-PAYLOAD or STREAMING-UNSIGNED-PAYLOAD-TRAILER.`,
        { Header: "x-amz-content-sha256" },
      ),
    };
  }
  return {
    ok: false,
    failure: s3Failure(
      "InvalidArgument",
      "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-UNSIGNED-PAYLOAD-TRAILER, or a valid sha256 value.",
      { ArgumentName: "x-amz-content-sha256", ArgumentValue: value.slice(0, 100) },
    ),
  };
}

/** Reads and checks the claim of a header-signed request; nothing here needs the secret. */
export function readClaim(req: RawRequest, nowMs: number): ClaimOutcome {
  const headers = headerMap(req.headers);
  const refuse = (failure: S3Failure): ClaimOutcome => ({ ok: false, failure });
  const authorization = headers.get("authorization");
  if (authorization === undefined) {
    if (/(^|&)(X-Amz-Algorithm|X-Amz-Signature|AWSAccessKeyId|Signature)=/i.test(req.query)) {
      return refuse(
        s3Failure(
          "InvalidRequest",
          "Query-string (presigned URL) authentication is not supported here; sign the request with the Authorization header.",
        ),
      );
    }
    return refuse(
      s3Failure("AccessDenied", "Anonymous requests are refused: sign with the issued upload credentials."),
    );
  }
  if (authorization.length !== 1) {
    return refuse(s3Failure("InvalidArgument", "Only one Authorization header is allowed."));
  }
  const auth = authorization[0]!.trim();
  if (!auth.startsWith(`${ALGORITHM} `) && !auth.startsWith(`${ALGORITHM}\t`)) {
    return refuse(
      s3Failure(
        "InvalidRequest",
        `The authorization mechanism you have provided is not supported. Please use ${ALGORITHM}.`,
      ),
    );
  }
  const parsed = parseAuthorization(auth);
  if (!parsed.ok) return refuse(s3Failure("AuthorizationHeaderMalformed", parsed.message));
  const fields = parsed.fields;

  const amzDate = headerValue(headers, "x-amz-date");
  const requestMs = amzDate === null ? null : parseAmzDate(amzDate);
  if (amzDate === null || requestMs === null) {
    return refuse(s3Failure("AccessDenied", "AWS authentication requires a valid x-amz-date header."));
  }
  if (amzDate.slice(0, 8) !== fields.date) {
    return refuse(
      s3Failure(
        "AuthorizationHeaderMalformed",
        `Invalid credential date '${fields.date}'. Date is not the same as X-Amz-Date.`,
      ),
    );
  }
  if (fields.service !== "s3") {
    return refuse(
      s3Failure(
        "AuthorizationHeaderMalformed",
        `The authorization header is malformed; incorrect service '${fields.service}'. This endpoint expects 's3'.`,
      ),
    );
  }
  if (Math.abs(nowMs - requestMs) > MAX_SKEW_MS) {
    return refuse(
      s3Failure("RequestTimeTooSkewed", undefined, {
        RequestTime: amzDate,
        ServerTime: new Date(nowMs).toISOString(),
        MaxAllowedSkewMilliseconds: String(MAX_SKEW_MS),
      }),
    );
  }
  // The signature must cover the Host and every x-amz-* header sent, or a relay could add or change them.
  const signed = new Set(fields.signedHeaders);
  const unsigned = [...headers.keys()].filter(
    (h) => (h === "host" || h.startsWith("x-amz-")) && !signed.has(h),
  );
  if (!signed.has("host") && !unsigned.includes("host")) unsigned.unshift("host");
  if (unsigned.length > 0) {
    return refuse(
      s3Failure("AccessDenied", "There were headers present in the request which were not signed", {
        HeadersNotSigned: unsigned.join(", "),
      }),
    );
  }
  const payloadHash = headerValue(headers, "x-amz-content-sha256");
  if (payloadHash === null) {
    return refuse(
      s3Failure("InvalidRequest", "Missing required header for this request: x-amz-content-sha256"),
    );
  }
  const payload = parsePayloadHash(payloadHash);
  if (!payload.ok) return refuse(payload.failure);
  return {
    ok: true,
    claim: {
      ...fields,
      amzDate,
      payloadHash,
      payload: payload.mode,
      securityToken: headerValue(headers, "x-amz-security-token"),
    },
  };
}

const UNRESERVED = /[A-Za-z0-9\-._~]/;

/** UriEncode of the AWS spec over bytes: everything but A-Z a-z 0-9 - . _ ~ as %XX (uppercase). */
function uriEncodeBytes(bytes: Uint8Array, keepSlash: boolean): string {
  let out = "";
  for (const b of bytes) {
    const ch = String.fromCharCode(b);
    if (b < 0x80 && (UNRESERVED.test(ch) || (keepSlash && ch === "/"))) out += ch;
    else out += `%${b.toString(16).toUpperCase().padStart(2, "0")}`;
  }
  return out;
}

/** Percent-decodes to bytes (a `+` stays a `+`); null on a malformed escape. */
export function percentDecode(text: string): Buffer | null {
  const bytes: number[] = [];
  const raw = Buffer.from(text, "utf8");
  for (let i = 0; i < raw.length; i++) {
    const b = raw[i]!;
    if (b !== 0x25) {
      bytes.push(b);
      continue;
    }
    const hex = raw.subarray(i + 1, i + 3).toString("latin1");
    if (!/^[0-9A-Fa-f]{2}$/.test(hex)) return null;
    bytes.push(Number.parseInt(hex, 16));
    i += 2;
  }
  return Buffer.from(bytes);
}

/**
 * S3's canonical URI: the path decoded once and encoded once, `/` kept, with no normalisation of `.`,
 * `..` or repeated slashes (S3 is the one service that neither double-encodes nor normalises).
 */
export function canonicalUri(path: string): string | null {
  const decoded = percentDecode(path === "" ? "/" : path);
  return decoded === null ? null : uriEncodeBytes(decoded, true);
}

/** Parameters sorted by encoded name then value; a parameter without `=` has an empty value. */
export function canonicalQuery(query: string): string | null {
  if (query === "") return "";
  const pairs: Array<[string, string]> = [];
  for (const piece of query.split("&")) {
    if (piece === "") continue;
    const eq = piece.indexOf("=");
    const name = percentDecode(eq < 0 ? piece : piece.slice(0, eq));
    const value = percentDecode(eq < 0 ? "" : piece.slice(eq + 1));
    if (name === null || value === null) return null;
    pairs.push([uriEncodeBytes(name, false), uriEncodeBytes(value, false)]);
  }
  pairs.sort(([an, av], [bn, bv]) => (an < bn ? -1 : an > bn ? 1 : av < bv ? -1 : av > bv ? 1 : 0));
  return pairs.map(([n, v]) => `${n}=${v}`).join("&");
}

/** `name:value\n` per signed header; repeated headers joined with `,`, each value trimmed and spaces folded. */
export function canonicalHeaders(headers: Map<string, string[]>, signed: readonly string[]): string {
  return signed
    .map(
      (name) => `${name}:${(headers.get(name) ?? []).map((v) => v.trim().replace(/\s+/g, " ")).join(",")}\n`,
    )
    .join("");
}

export function canonicalRequest(
  req: RawRequest,
  signedHeaders: readonly string[],
  payloadHash: string,
): string | null {
  const uri = canonicalUri(req.path);
  const query = canonicalQuery(req.query);
  if (uri === null || query === null) return null;
  return [
    req.method.toUpperCase(),
    uri,
    query,
    canonicalHeaders(headerMap(req.headers), signedHeaders),
    signedHeaders.join(";"),
    payloadHash,
  ].join("\n");
}

export function stringToSign(amzDate: string, scope: string, canonical: string): string {
  return [ALGORITHM, amzDate, scope, createHash("sha256").update(canonical).digest("hex")].join("\n");
}

/** kSigning = HMAC chain over "AWS4"+secret, date, region, service, "aws4_request". */
export function signingKey(secret: string, date: string, region: string, service: string): Buffer {
  const hmac = (key: Buffer | string, data: string) => createHmac("sha256", key).update(data).digest();
  return hmac(hmac(hmac(hmac(`AWS4${secret}`, date), region), service), "aws4_request");
}

export function sign(key: Buffer, toSign: string): string {
  return createHmac("sha256", key).update(toSign).digest("hex");
}

/** Recomputes the signature with the secret and compares in constant time. */
export function checkSignature(
  req: RawRequest,
  claim: Claim,
  secret: string,
): { ok: true } | { ok: false; failure: S3Failure } {
  const canonical = canonicalRequest(req, claim.signedHeaders, claim.payloadHash);
  if (canonical === null) return { ok: false, failure: s3Failure("InvalidURI") };
  const scope = `${claim.date}/${claim.region}/${claim.service}/aws4_request`;
  const toSign = stringToSign(claim.amzDate, scope, canonical);
  const expected = Buffer.from(
    sign(signingKey(secret, claim.date, claim.region, claim.service), toSign),
    "hex",
  );
  const provided = Buffer.from(claim.signature, "hex");
  if (expected.length === provided.length && timingSafeEqual(expected, provided)) return { ok: true };
  // S3 shows the client what it signed against, so a mismatch can be debugged; neither holds a secret.
  return {
    ok: false,
    failure: s3Failure("SignatureDoesNotMatch", undefined, {
      AWSAccessKeyId: claim.accessKeyId,
      StringToSign: toSign,
      SignatureProvided: claim.signature,
      CanonicalRequest: canonical,
    }),
  };
}
