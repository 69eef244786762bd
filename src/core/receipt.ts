// Meridian's receipt: the profile of RFC 9421 a plane signs every inference response with (issue 14, item
// 1). What it covers, how its component values are resolved from a response and its request, and which
// Signature-Input members a verifier accepts as receipts. Cryptography is in src/lib/receipts.ts.

import {
  type BareItem,
  type Component,
  componentId,
  componentItem,
  type Dictionary,
  fieldValue,
  type InnerList,
  isInnerList,
  parseDictionary,
  serializeBareItem,
  serializeInnerList,
  sf,
  signableValue,
} from "./http-signatures.ts";

/** The Signature-Input / Signature member a plane writes (RFC 9421 §4: a label, any name will do). */
export const RECEIPT_LABEL = "receipt";
/** RFC 9421 §2.3 `tag`: the application profile, so a verifier never takes another signature for a receipt. */
export const RECEIPT_TAG = "meridian-receipt";
export const RECEIPT_ALG = "ed25519";
/**
 * Not covered by the signature: it echoes the request components the receipt is bound to (`;req`), so a
 * saved response verifies on its own. Changing it changes nothing the signature covers, and a verifier
 * given the request (flags) checks against that instead.
 */
export const RECEIPT_REQUEST_HEADER = "x-meridian-receipt-request";

/** The proof headers (DESIGN.md §2.6), as the ingress names them (src/gateway/headers.ts `PROOF`). */
export const PROOF_FIELDS = [
  "x-request-id",
  "x-meridian-region",
  "x-meridian-plane",
  "x-meridian-deployment-id",
  "x-meridian-route",
] as const;

const CONTENT_DIGEST_REQ: Component = { name: "content-digest", req: true };
/** The response's own `Content-Digest` (RFC 9530), which the ingress computes over the body it sends. */
const CONTENT_DIGEST_RES: Component = { name: "content-digest", req: false };

/**
 * Covered components, in this order. `"content-digest";req` is left out only when the request's body had
 * not been read when the response head was sent (a refusal before the body): then nothing about the body
 * is claimed, and the verifier says so. `"content-digest"` (the response's) is there only when the ingress
 * held the response body whole before the head (known length up to its bound, docs/evidence.md#receipts):
 * its presence in the list is how a receipt says the answer's body is covered.
 */
export const RECEIPT_COMPONENTS: readonly Component[] = [
  { name: "@status", req: false },
  ...PROOF_FIELDS.map((name) => ({ name, req: false })),
  { name: "@method", req: true },
  { name: "@authority", req: true },
  { name: "@path", req: true },
  CONTENT_DIGEST_REQ,
  CONTENT_DIGEST_RES,
];

/** The components of a receipt that covers the request body or not, and the response body or not. */
function componentsOf(coversBody: boolean, coversResponse: boolean): readonly Component[] {
  return RECEIPT_COMPONENTS.filter(
    (c) => (c !== CONTENT_DIGEST_REQ || coversBody) && (c !== CONTENT_DIGEST_RES || coversResponse),
  );
}

/** The request components a receipt binds (RFC 9421 §2.4). */
export interface ReceiptRequest {
  method: string;
  /** Normalized `@authority` (RFC 9421 §2.2.3): see `normalizeAuthority`. */
  authority: string;
  /** `@path` (RFC 9421 §2.2.6): see `pathOfTarget`. */
  path: string;
  /** The RFC 9530 Content-Digest of the request body as received; null when it was not read. */
  contentDigest: string | null;
}

/** A response as the receipt sees it: its status and its field lines by lowercase name. */
export interface ReceiptResponse {
  status: number;
  field(name: string): readonly string[];
}

/** The signature parameters and components of a receipt (RFC 9421 §2.3), as one inner list. */
export function receiptParams(
  keyId: string,
  createdSeconds: number,
  coversBody: boolean,
  coversResponse = false,
): InnerList {
  return {
    items: componentsOf(coversBody, coversResponse).map(componentItem),
    params: new Map<string, BareItem>([
      ["created", sf.integer(createdSeconds)],
      ["keyid", sf.string(keyId)],
      ["alg", sf.string(RECEIPT_ALG)],
      ["tag", sf.string(RECEIPT_TAG)],
    ]),
  };
}

// The hot path's signature base: the same bytes as `signatureBase(receiptParams(…), componentValues(…))`
// (a test holds them equal), from parts serialized once.
const LINE_PREFIXES = RECEIPT_COMPONENTS.map((c) => `${componentId(c)}: `);
const REQ_DIGEST_AT = RECEIPT_COMPONENTS.indexOf(CONTENT_DIGEST_REQ);
const RES_DIGEST_AT = RECEIPT_COMPONENTS.indexOf(CONTENT_DIGEST_RES);
/** The inner lists without parameters, indexed by `(coversBody ? 1 : 0) + (coversResponse ? 2 : 0)`. */
const INNER = [false, true].flatMap((res) =>
  [false, true].map((req) =>
    serializeInnerList({ items: componentsOf(req, res).map(componentItem), params: new Map() }),
  ),
);
const PARAMS_TAIL = `;alg=${serializeBareItem(sf.string(RECEIPT_ALG))};tag=${serializeBareItem(sf.string(RECEIPT_TAG))}`;
const keyIdItems = new Map<string, string>();

/**
 * A receipt's signature base and its Signature-Input member value, given the five proof values in
 * PROOF_FIELDS order (each already combined per RFC 9421 §2.1; undefined when absent), and the response's
 * Content-Digest when the receipt covers the response body (null: it does not).
 */
export function receiptBase(
  keyId: string,
  createdSeconds: number,
  status: number,
  proof: readonly (string | undefined)[],
  request: ReceiptRequest,
  responseDigest: string | null = null,
): { ok: true; base: string; input: string } | { ok: false; reason: string } {
  const keyItem = keyIdItems.get(keyId) ?? serializeBareItem(sf.string(keyId));
  if (keyIdItems.size < 64) keyIdItems.set(keyId, keyItem);
  const coversBody = request.contentDigest !== null;
  const coversResponse = responseDigest !== null;
  const values: (string | undefined)[] = [
    String(status),
    ...proof,
    request.method,
    request.authority,
    request.path,
  ];
  const at: number[] = [];
  for (let i = 0; i < values.length; i++) at.push(i);
  if (coversBody) {
    values.push(request.contentDigest!);
    at.push(REQ_DIGEST_AT);
  }
  if (coversResponse) {
    values.push(responseDigest);
    at.push(RES_DIGEST_AT);
  }
  let base = "";
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    const c = RECEIPT_COMPONENTS[at[i]!]!;
    const id = c.req ? `${c.name};req` : c.name;
    if (v === undefined) return { ok: false, reason: `${id}: absent` };
    if (!signableValue(v)) return { ok: false, reason: `${id}: holds characters outside visible ASCII` };
    base += `${LINE_PREFIXES[at[i]!]}${v}\n`;
  }
  if (!Number.isSafeInteger(createdSeconds) || createdSeconds < 0)
    return { ok: false, reason: "created: not a time" };
  const inner = INNER[(coversBody ? 1 : 0) + (coversResponse ? 2 : 0)]!;
  const input = `${inner};created=${createdSeconds};keyid=${keyItem}${PARAMS_TAIL}`;
  return { ok: true, base: `${base}"@signature-params": ${input}`, input };
}

export type ComponentValues =
  | { ok: true; values: string[] }
  | { ok: false; component: string; reason: string };

/**
 * The value of every covered component (RFC 9421 §2.1, §2.2), in the inner list's order. Fails, naming the
 * component, when one is absent, not signable (RFC 9421 §2.5: visible ASCII), or not one a receipt can
 * cover (request fields other than Content-Digest, which the plane computes itself).
 */
export function componentValues(
  params: InnerList,
  response: ReceiptResponse,
  request: ReceiptRequest,
): ComponentValues {
  const values: string[] = [];
  for (const item of params.items) {
    if (item.value.type !== "string") return { ok: false, component: "?", reason: "not a String" };
    const name = item.value.value;
    const req = item.params.get("req");
    const onRequest = req?.type === "boolean" && req.value;
    for (const key of item.params.keys()) {
      if (key !== "req") return { ok: false, component: name, reason: `unsupported parameter ;${key}` };
    }
    let value: string | undefined;
    if (!onRequest) {
      if (name === "@status") value = String(response.status);
      else if (name.startsWith("@"))
        return { ok: false, component: name, reason: "not a response component" };
      else value = fieldValue(response.field(name));
    } else if (name === "@method") value = request.method;
    else if (name === "@authority") value = request.authority;
    else if (name === "@path") value = request.path;
    else if (name === "content-digest") value = request.contentDigest ?? undefined;
    else return { ok: false, component: `${name};req`, reason: "not a request component a receipt covers" };
    const id = onRequest ? `${name};req` : name;
    if (value === undefined) return { ok: false, component: id, reason: "absent" };
    if (!signableValue(value))
      return { ok: false, component: id, reason: "holds characters outside visible ASCII" };
    values.push(value);
  }
  return { ok: true, values };
}

/** A Signature-Input member that satisfies the receipt profile. */
export interface ReceiptInput {
  label: string;
  params: InnerList;
  keyId: string;
  created: number;
  coversBody: boolean;
  /** The response's `content-digest` is covered: the answer's body is bound (docs/evidence.md#receipts). */
  coversResponse: boolean;
}

export type ReceiptInputCheck =
  | { ok: true; input: ReceiptInput }
  | { ok: false; label: string; reason: string };

/**
 * The receipts among a Signature-Input field's members: those tagged `meridian-receipt`. Each must be an
 * inner list with `created`, `keyid` and `alg="ed25519"`, cover every component of the profile but the body
 * digest at least once and nothing twice (RFC 9421 §2.5 forbids duplicates).
 */
export function receiptInputs(signatureInput: Dictionary): ReceiptInputCheck[] {
  const out: ReceiptInputCheck[] = [];
  for (const [label, member] of signatureInput) {
    const fail = (reason: string) => out.push({ ok: false, label, reason });
    if (!isInnerList(member)) {
      if (member.params.get("tag")?.value === RECEIPT_TAG) fail("not an inner list");
      continue;
    }
    const tag = member.params.get("tag");
    if (tag?.type !== "string" || tag.value !== RECEIPT_TAG) continue;
    const created = member.params.get("created");
    const keyid = member.params.get("keyid");
    const alg = member.params.get("alg");
    if (created?.type !== "integer" || created.value < 0) {
      fail("no `created` time");
      continue;
    }
    if (keyid?.type !== "string") {
      fail("no `keyid`");
      continue;
    }
    if (alg?.type !== "string" || alg.value !== RECEIPT_ALG) {
      fail(`alg is not "${RECEIPT_ALG}"`);
      continue;
    }
    const ids = member.items.map(
      (i) => (i.value.type === "string" ? i.value.value : "?") + paramsKey(i.params),
    );
    if (new Set(ids).size !== ids.length) {
      fail("a component is covered twice");
      continue;
    }
    const missing = componentsOf(false, false).find((c) => !ids.includes(c.name + (c.req ? ";req" : "")));
    if (missing !== undefined) {
      fail(`does not cover "${missing.name}"${missing.req ? ";req" : ""}`);
      continue;
    }
    out.push({
      ok: true,
      input: {
        label,
        params: member,
        keyId: keyid.value,
        created: created.value,
        coversBody: ids.includes("content-digest;req"),
        coversResponse: ids.includes("content-digest"),
      },
    });
  }
  return out;
}

function paramsKey(params: Map<string, BareItem>): string {
  let out = "";
  for (const key of params.keys()) out += `;${key}`;
  return out;
}

/**
 * The value of `x-meridian-receipt-request`: an RFC 8941 Dictionary of Strings (§4.1.6: `"` and `\` escaped).
 * Its values are those receiptBase accepted (visible ASCII), so no other character needs escaping.
 */
export function receiptRequestHeader(r: ReceiptRequest): string {
  const q = (v: string) =>
    v.includes('"') || v.includes("\\") ? `"${v.replace(/["\\]/g, "\\$&")}"` : `"${v}"`;
  const head = `method=${q(r.method)}, authority=${q(r.authority)}, path=${q(r.path)}`;
  return r.contentDigest === null ? head : `${head}, content-digest=${q(r.contentDigest)}`;
}

/** Reads `x-meridian-receipt-request`; the fields it lacks or holds malformed are left out. */
export function parseReceiptRequestHeader(value: string): Partial<ReceiptRequest> {
  let dict: Dictionary;
  try {
    dict = parseDictionary(value);
  } catch {
    return {};
  }
  const str = (key: string): string | undefined => {
    const m = dict.get(key);
    return m !== undefined && !isInnerList(m) && m.value.type === "string" ? m.value.value : undefined;
  };
  const out: Partial<ReceiptRequest> = {};
  const method = str("method");
  const authority = str("authority");
  const path = str("path");
  const digest = str("content-digest");
  if (method !== undefined) out.method = method;
  if (authority !== undefined) out.authority = authority;
  if (path !== undefined) out.path = path;
  if (digest !== undefined) out.contentDigest = digest;
  return out;
}
