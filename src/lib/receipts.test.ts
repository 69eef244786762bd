import { createHash, generateKeyPairSync, type KeyObject } from "node:crypto";
import { createSigner, createVerifier, httpbis } from "http-message-signatures";
import { describe, expect, it } from "vitest";
import { type DirectoryKey, type KeyDirectory, keyDirectory } from "../core/key-directory.ts";
import { RECEIPT_COMPONENTS, type ReceiptRequest } from "../core/receipt.ts";
import {
  ContentDigester,
  contentDigest,
  type ReceiptKey,
  type SavedResponse,
  signReceipt,
  verifyReceipt,
} from "./receipts.ts";

interface PlaneKeyPair extends ReceiptKey {
  publicKey: KeyObject;
  raw: string;
}

function keyPair(): PlaneKeyPair {
  const { privateKey, publicKey } = generateKeyPairSync("ed25519");
  const raw = publicKey.export({ format: "jwk" }).x!;
  const keyId = createHash("sha256").update(Buffer.from(raw, "base64url")).digest("hex").slice(0, 16);
  return { keyId, privateKey, publicKey, raw };
}

const T0 = Date.parse("2025-03-01T00:00:00Z");
const DAY = 86_400_000;
const eu1 = keyPair();
const eu1Old = keyPair(); // retired on day 10
const eu2 = keyPair();
const us1 = keyPair();

function entry(
  k: PlaneKeyPair,
  plane: string,
  region: string,
  from: number,
  retired: number | null,
): DirectoryKey {
  return {
    key_id: k.keyId,
    plane,
    region,
    alg: "ed25519",
    public_key: k.raw,
    valid_from: new Date(from).toISOString(),
    retired_at: retired === null ? null : new Date(retired).toISOString(),
  };
}

const directory: KeyDirectory = keyDirectory(
  [
    entry(eu1Old, "eu-1", "eu", T0, T0 + 10 * DAY),
    entry(eu1, "eu-1", "eu", T0 + 10 * DAY, null),
    entry(eu2, "eu-2", "eu", T0, null),
    entry(us1, "us-1", "us", T0, null),
  ],
  new Date(T0 + 20 * DAY),
);

const BODY = '{"text":"bonjour"}';
const request: ReceiptRequest = {
  method: "POST",
  authority: "model-abcd1234-prod-eu.meridian.internal:8443",
  path: "/predict",
  contentDigest: contentDigest(BODY),
};

function proofHeaders(over: Record<string, string> = {}): string[] {
  const h: Record<string, string> = {
    "content-type": "application/json",
    "x-request-id": "req-42",
    "x-meridian-region": "eu",
    "x-meridian-plane": "eu-1",
    "x-meridian-deployment-id": "d7k2p9q",
    "x-meridian-route": "eu-1",
    ...over,
  };
  return Object.entries(h).flat();
}

/** A response as the ingress would send it, receipt appended, as a client would save it. */
function signedResponse(
  opts: { key?: ReceiptKey; at?: number; status?: number; headers?: string[]; req?: ReceiptRequest } = {},
): SavedResponse {
  const headers = opts.headers ?? proofHeaders();
  const status = opts.status ?? 200;
  const signed = signReceipt(opts.key ?? eu1, {
    status,
    headers,
    request: opts.req ?? request,
    now: opts.at ?? T0 + 15 * DAY,
  });
  if (!signed.ok) throw new Error(signed.reason);
  return { status, fields: pairs([...headers, ...signed.headers]) };
}

function pairs(flat: readonly string[]): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  for (let i = 0; i < flat.length; i += 2) out.push([flat[i]!, flat[i + 1]!]);
  return out;
}

function withField(res: SavedResponse, name: string, value: string): SavedResponse {
  return { ...res, fields: res.fields.map(([n, v]) => [n, n === name ? value : v] as const) };
}

const NOW = T0 + 16 * DAY;
const verifyAt = (res: SavedResponse, request?: Partial<ReceiptRequest>) =>
  verifyReceipt(res, directory, { now: NOW, ...(request ? { request } : {}) });

/** The same response and its request in http-message-signatures' shapes. */
function libraryMessages(res: SavedResponse, req: ReceiptRequest) {
  const headers: Record<string, string | string[]> = {};
  for (const [n, v] of res.fields) {
    const prev = headers[n];
    headers[n] = prev === undefined ? v : [...(Array.isArray(prev) ? prev : [prev]), v];
  }
  return {
    response: { status: res.status, headers },
    request: {
      method: req.method,
      url: `https://${req.authority}${req.path}`,
      headers: (req.contentDigest === null ? {} : { "content-digest": req.contentDigest }) as Record<
        string,
        string
      >,
    },
  };
}

function libraryKeys(keys: readonly PlaneKeyPair[]) {
  return async (params: { keyid?: string }) => {
    const k = keys.find((x) => x.keyId === params.keyid);
    return k === undefined
      ? null
      : { id: k.keyId, algs: ["ed25519" as const], verify: createVerifier(k.publicKey, "ed25519") };
  };
}

describe("signed receipts", () => {
  it("verify with our verifier, naming where and when the request was processed", () => {
    const r = verifyAt(signedResponse());
    expect(r).toMatchObject({
      ok: true,
      receipt: {
        plane: "eu-1",
        region: "eu",
        keyId: eu1.keyId,
        created: Math.floor((T0 + 15 * DAY) / 1000),
        status: 200,
        requestId: "req-42",
        deploymentId: "d7k2p9q",
        route: ["eu-1"],
        request,
        requestFrom: "echo",
        coversBody: true,
      },
    });
    // The request given by the client, in another but equal digest form, verifies too.
    const given = verifyAt(signedResponse(), { ...request, contentDigest: ` ${request.contentDigest}` });
    expect(given).toMatchObject({ ok: true, receipt: { requestFrom: "given" } });
  });

  it("covers exactly the profile's components, with created, keyid, alg and tag", () => {
    const res = signedResponse();
    const input = res.fields.find(([n]) => n === "signature-input")![1];
    expect(input).toBe(
      `receipt=("@status" "x-request-id" "x-meridian-region" "x-meridian-plane" "x-meridian-deployment-id" "x-meridian-route" "@method";req "@authority";req "@path";req "content-digest";req);created=${Math.floor((T0 + 15 * DAY) / 1000)};keyid="${eu1.keyId}";alg="ed25519";tag="meridian-receipt"`,
    );
  });

  it("verify with http-message-signatures, an independent RFC 9421 implementation", async () => {
    const res = signedResponse();
    const { response, request: req } = libraryMessages(res, request);
    const ok = await httpbis.verifyMessage(
      { keyLookup: libraryKeys([eu1]), notAfter: Math.floor(NOW / 1000), requiredFields: ["@status"] },
      response,
      req,
    );
    expect(ok).toBe(true);
    // And the library refuses what we refuse: a changed proof header, another request path.
    const changed = libraryMessages(withField(res, "x-meridian-region", "us"), request);
    expect(
      await httpbis.verifyMessage(
        { keyLookup: libraryKeys([eu1]), notAfter: Math.floor(NOW / 1000) },
        changed.response,
        changed.request,
      ),
    ).toBe(false);
    const otherPath = libraryMessages(res, { ...request, path: "/environments/prod-eu/predict" });
    expect(
      await httpbis.verifyMessage(
        { keyLookup: libraryKeys([eu1]), notAfter: Math.floor(NOW / 1000) },
        otherPath.response,
        otherPath.request,
      ),
    ).toBe(false);
  });

  it("accept a receipt http-message-signatures signed with the same profile (both directions agree)", async () => {
    const headers = {
      ...Object.fromEntries(pairs(proofHeaders())),
      "content-digest": contentDigest('{"ok":true}'),
    };
    const created = new Date(T0 + 15 * DAY);
    const signed = await httpbis.signMessage(
      {
        key: createSigner(eu1.privateKey, "ed25519", eu1.keyId),
        name: "receipt",
        fields: RECEIPT_COMPONENTS.map((c) => (c.req ? `"${c.name}";req` : c.name)),
        params: ["created", "keyid", "alg", "tag"],
        paramValues: { created, tag: "meridian-receipt" },
      },
      { status: 200, headers },
      {
        method: "POST",
        url: `https://${request.authority}${request.path}`,
        headers: { "content-digest": request.contentDigest! },
      },
    );
    const fields = Object.entries(signed.headers).map(
      ([n, v]) => [n.toLowerCase(), String(v)] as [string, string],
    );
    const r = verifyAt({ status: 200, fields }, request);
    expect(r).toMatchObject({ ok: true, receipt: { plane: "eu-1", keyId: eu1.keyId } });
    // Both sides read the response's own content-digest as covered; the body must match it.
    const at = { request, now: NOW };
    const same = verifyReceipt({ status: 200, fields }, directory, {
      ...at,
      body: Buffer.from('{"ok":true}'),
    });
    expect(same).toMatchObject({ ok: true, receipt: { responseBody: "checked" } });
    const other = verifyReceipt({ status: 200, fields }, directory, {
      ...at,
      body: Buffer.from('{"ok":false}'),
    });
    expect(other).toMatchObject({ ok: false, reason: "response_body_changed" });
  });

  it("fail when any covered header, the status, or the request's method, authority, path or body changes", () => {
    const res = signedResponse();
    for (const [name, value] of [
      ["x-request-id", "req-43"],
      ["x-meridian-region", "us"],
      ["x-meridian-plane", "eu-2"],
      ["x-meridian-deployment-id", "other00"],
      ["x-meridian-route", "us-1, eu-1"],
    ] as const) {
      const r = verifyAt(withField(res, name, value));
      expect(r.ok, name).toBe(false);
      if (!r.ok) expect(r.reason, name).toBe("bad_signature");
    }
    expect(verifyAt({ ...res, status: 201 })).toMatchObject({ ok: false, reason: "bad_signature" });
    // The echo changed: the signature no longer matches what it says.
    for (const echo of [
      `method="PUT", authority="${request.authority}", path="/predict", content-digest="${request.contentDigest}"`,
      `method="POST", authority="model-abcd1234-prod-us.meridian.internal:8443", path="/predict", content-digest="${request.contentDigest}"`,
      `method="POST", authority="${request.authority}", path="/wake", content-digest="${request.contentDigest}"`,
      `method="POST", authority="${request.authority}", path="/predict", content-digest="${contentDigest("{}")}"`,
    ]) {
      expect(verifyAt(withField(res, "x-meridian-receipt-request", echo)), echo).toMatchObject({
        ok: false,
        reason: "bad_signature",
      });
    }
    // The client's own request differs from what the receipt is for: named precisely.
    expect(verifyAt(res, { path: "/environments/prod-eu/predict" })).toMatchObject({
      ok: false,
      reason: "request_mismatch",
      message: "the receipt is for a request with path /predict, not /environments/prod-eu/predict",
    });
    expect(verifyAt(res, { contentDigest: contentDigest('{"text":"hello"}') })).toMatchObject({
      ok: false,
      reason: "request_mismatch",
    });
    // With the echo removed, the given request is all there is: a changed body fails the signature.
    const bare = { ...res, fields: res.fields.filter(([n]) => n !== "x-meridian-receipt-request") };
    expect(verifyAt(bare, request)).toMatchObject({ ok: true });
    expect(verifyAt(bare, { ...request, contentDigest: contentDigest("{}") })).toMatchObject({
      ok: false,
      reason: "bad_signature",
    });
    expect(verifyAt(bare, { ...request, method: "PUT" })).toMatchObject({
      ok: false,
      reason: "bad_signature",
    });
    expect(verifyAt(bare)).toMatchObject({ ok: false, reason: "request_unknown" });
  });

  it("fail when a second field line is added to a covered header", () => {
    const res = signedResponse();
    const added = { ...res, fields: [...res.fields, ["x-meridian-region", "us"] as const] };
    expect(verifyAt(added)).toMatchObject({ ok: false, reason: "bad_signature" });
  });

  it("fail with another plane's key, however it is swapped in", () => {
    const res = signedResponse();
    // The keyid names another plane's key: the signature does not verify under it.
    const input = res.fields.find(([n]) => n === "signature-input")![1];
    const swapped = withField(res, "signature-input", input.replace(eu1.keyId, eu2.keyId));
    expect(verifyAt(swapped)).toMatchObject({ ok: false, reason: "bad_signature" });
    // Re-signed by another plane claiming eu-1 processed it: in the same region, or another.
    for (const key of [eu2, us1]) {
      expect(verifyAt(signedResponse({ key })), key.keyId).toMatchObject({
        ok: false,
        reason: "wrong_plane",
      });
    }
    // A plane that signs for the region it is not in.
    const lying = signedResponse({ key: us1, headers: proofHeaders({ "x-meridian-plane": "us-1" }) });
    expect(verifyAt(lying)).toMatchObject({
      ok: false,
      reason: "wrong_plane",
      message: `key ${us1.keyId} belongs to plane us-1 in region us, but the response says region eu`,
    });
    // A key the directory does not list.
    expect(verifyAt(signedResponse({ key: keyPair() }))).toMatchObject({ ok: false, reason: "unknown_key" });
  });

  it("verify a receipt from a retired key within its validity, and not outside it", () => {
    const old = signedResponse({ key: eu1Old, at: T0 + 5 * DAY });
    expect(verifyAt(old)).toMatchObject({ ok: true, receipt: { plane: "eu-1", keyId: eu1Old.keyId } });
    const late = signedResponse({ key: eu1Old, at: T0 + 11 * DAY });
    expect(verifyAt(late)).toMatchObject({ ok: false, reason: "key_not_valid" });
    const early = signedResponse({ key: eu1, at: T0 + 2 * DAY });
    expect(verifyAt(early)).toMatchObject({ ok: false, reason: "key_not_valid" });
    const future = signedResponse({ at: NOW + DAY });
    expect(verifyAt(future)).toMatchObject({ ok: false, reason: "from_the_future" });
  });

  it("say so when the body was not read, and refuse to vouch for a body then", () => {
    const res = signedResponse({ status: 421, req: { ...request, contentDigest: null } });
    expect(verifyAt(res)).toMatchObject({ ok: true, receipt: { coversBody: false, status: 421 } });
    expect(verifyAt(res, { contentDigest: contentDigest(BODY) })).toMatchObject({
      ok: false,
      reason: "body_not_covered",
    });
  });

  it("report a response without a receipt, or with malformed signature fields", () => {
    expect(verifyAt({ status: 200, fields: pairs(proofHeaders()) })).toMatchObject({
      ok: false,
      reason: "no_receipt",
    });
    const res = signedResponse();
    expect(verifyAt(withField(res, "signature", "receipt=:bm90IGEgc2ln"))).toMatchObject({
      ok: false,
      reason: "malformed",
    });
    const untagged = withField(
      res,
      "signature-input",
      res.fields.find(([n]) => n === "signature-input")![1].replace('tag="meridian-receipt"', 'tag="other"'),
    );
    expect(verifyAt(untagged)).toMatchObject({ ok: false, reason: "no_receipt" });
    const thin = withField(
      res,
      "signature-input",
      `receipt=("@status");created=1;keyid="${eu1.keyId}";alg="ed25519";tag="meridian-receipt"`,
    );
    expect(verifyAt(thin)).toMatchObject({ ok: false, reason: "malformed" });
  });

  it("refuse to sign values that are not visible ASCII", () => {
    const signed = signReceipt(eu1, {
      status: 400,
      headers: proofHeaders(),
      request: { ...request, authority: "bad\u00e9host" },
      now: T0,
    });
    expect(signed).toEqual({ ok: false, reason: "@authority;req: holds characters outside visible ASCII" });
    expect(signReceipt(eu1, { status: 200, headers: ["x-request-id", "r"], request, now: T0 })).toMatchObject(
      {
        ok: false,
        reason: "x-meridian-region: absent",
      },
    );
  });

  it("digest a streamed body exactly as a whole one", () => {
    const d = new ContentDigester();
    for (const part of ['{"text":', '"bonjour"}']) d.update(Buffer.from(part));
    expect(d.digest()).toBe(contentDigest(BODY));
    expect(contentDigest("")).toBe("sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:");
  });
});
