import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { parseDictionary, serializeInnerList, signatureBase } from "./http-signatures.ts";
import {
  componentValues,
  PROOF_FIELDS,
  parseReceiptRequestHeader,
  type ReceiptRequest,
  receiptBase,
  receiptInputs,
  receiptParams,
  receiptRequestHeader,
} from "./receipt.ts";

const visible = fc.string({
  unit: fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c)),
  maxLength: 40,
});
const token = fc.stringMatching(/^[a-z0-9-]{1,20}$/);

describe("the receipt profile", () => {
  it("builds the hot path's base byte for byte as the generic RFC 9421 code does (property)", () => {
    fc.assert(
      fc.property(
        fc.stringMatching(/^[0-9a-f]{16}$/),
        fc.integer({ min: 0, max: 4_000_000_000 }),
        fc.integer({ min: 100, max: 599 }),
        // Field values as RFC 9421 §2.1 gives them: no leading or trailing whitespace.
        fc.array(
          visible.map((v) => v.replace(/^ +| +$/g, "")),
          { minLength: 5, maxLength: 5 },
        ),
        fc.record({ method: token, authority: visible, path: visible, contentDigest: fc.option(visible) }),
        // The response's own content-digest, when the receipt covers the answer's body.
        fc.option(visible.map((v) => v.replace(/^ +| +$/g, ""))),
        (keyId, created, status, proof, request: ReceiptRequest, responseDigest) => {
          const fast = receiptBase(keyId, created, status, proof, request, responseDigest);
          const params = receiptParams(
            keyId,
            created,
            request.contentDigest !== null,
            responseDigest !== null,
          );
          const field = (name: string) =>
            name === "content-digest"
              ? [responseDigest!]
              : [proof[(PROOF_FIELDS as readonly string[]).indexOf(name)]!];
          const values = componentValues(params, { status, field }, request);
          expect(values.ok).toBe(true);
          if (!values.ok || !fast.ok) return;
          expect(fast.base).toBe(signatureBase(params, values.values));
          expect(fast.input).toBe(serializeInnerList(params));
        },
      ),
    );
  });

  it("refuses what cannot be signed, naming the component", () => {
    const request = { method: "POST", authority: "h", path: "/p", contentDigest: null };
    expect(receiptBase("k", 1, 200, ["a", undefined, "c", "d", "e"], request)).toEqual({
      ok: false,
      reason: "x-meridian-region: absent",
    });
    expect(receiptBase("k", 1, 200, ["a", "b", "c", "d", "e"], { ...request, path: "/p\nx" })).toEqual({
      ok: false,
      reason: "@path;req: holds characters outside visible ASCII",
    });
  });

  it("accepts as receipts only members tagged meridian-receipt that cover the whole profile", () => {
    const good = `receipt=${serializeInnerList(receiptParams("0123456789abcdef", 1700000000, true))}`;
    const [r] = receiptInputs(parseDictionary(good));
    expect(r).toMatchObject({
      ok: true,
      input: { label: "receipt", keyId: "0123456789abcdef", created: 1700000000, coversBody: true },
    });
    const cases: Array<[string, string | null]> = [
      ['other=("@status");created=1;keyid="k";alg="ed25519"', null], // untagged: not a receipt at all
      [
        'r=("@status");created=1;keyid="k";alg="ed25519";tag="meridian-receipt"',
        'does not cover "x-request-id"',
      ],
      [good.replace(';alg="ed25519"', ';alg="rsa-pss-sha512"'), 'alg is not "ed25519"'],
      [good.replace(/;created=\d+/, ""), "no `created` time"],
      [good.replace(';keyid="0123456789abcdef"', ""), "no `keyid`"],
      [good.replace('("@status"', '("@status" "@status"'), "a component is covered twice"],
      ['r="x";tag="meridian-receipt"', "not an inner list"],
    ];
    for (const [text, reason] of cases) {
      const found = receiptInputs(parseDictionary(text));
      if (reason === null) expect(found, text).toEqual([]);
      else expect(found, text).toEqual([{ ok: false, label: text.slice(0, text.indexOf("=")), reason }]);
    }
  });

  it("echoes the request in a header that reads back the same", () => {
    const r = {
      method: "POST",
      authority: "model-x.example:8443",
      path: '/a"b\\c',
      contentDigest: "sha-256=:AAA=:",
    };
    expect(parseReceiptRequestHeader(receiptRequestHeader(r))).toEqual(r);
    expect(parseReceiptRequestHeader(receiptRequestHeader({ ...r, contentDigest: null }))).toEqual({
      method: "POST",
      authority: "model-x.example:8443",
      path: '/a"b\\c',
    });
    expect(parseReceiptRequestHeader("not a dictionary (")).toEqual({});
  });
});
