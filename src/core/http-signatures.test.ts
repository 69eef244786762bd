import { createPrivateKey, sign } from "node:crypto";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  type BareItem,
  contentDigestValue,
  type Dictionary,
  type InnerList,
  isInnerList,
  normalizeAuthority,
  parseDictionary,
  pathOfTarget,
  StructuredFieldError,
  serializeDictionary,
  sf,
  sha256OfContentDigest,
  signableValue,
  signatureBase,
} from "./http-signatures.ts";

describe("Structured Fields (RFC 8941)", () => {
  it("parses and re-serializes the dictionary forms RFC 9421 uses", () => {
    const cases: Array<[string, string]> = [
      // RFC 9421 §4.1: a Signature-Input member with parameters.
      [
        'sig1=("@method" "@target-uri" "@authority" "content-digest" "cache-control");created=1618884475;keyid="test-key-rsa-pss"',
        'sig1=("@method" "@target-uri" "@authority" "content-digest" "cache-control");created=1618884475;keyid="test-key-rsa-pss"',
      ],
      // Booleans: a bare key is true; whitespace around commas is optional on input.
      ["a, b;x=1,c=?0", "a, b;x=1, c=?0"],
      // Tokens, negative integers, decimals, escaped strings, byte sequences.
      [
        't=foo/bar:baz, n=-42, d=1.50, s="a \\"q\\" \\\\ b", bs=:aGVsbG8=:',
        't=foo/bar:baz, n=-42, d=1.5, s="a \\"q\\" \\\\ b", bs=:aGVsbG8=:',
      ],
      // An inner list with item parameters, as `"@method";req`.
      ['r=("@method";req "content-digest";req);tag="x"', 'r=("@method";req "content-digest";req);tag="x"'],
      // A repeated key keeps its first position and the last value.
      ["a=1, b=2, a=3", "a=3, b=2"],
      // Empty inner list.
      ["e=()", "e=()"],
    ];
    for (const [input, output] of cases)
      expect(serializeDictionary(parseDictionary(input)), input).toBe(output);
  });

  it("refuses what RFC 8941 refuses, naming where", () => {
    const bad = [
      "a=1,", // trailing comma
      "A=1", // keys are lowercase
      'a="unterminated',
      'a="\\x"', // only \" and \\ escape
      "a=:aGVsbG8:", // unpadded base64
      "a=1.2345", // four fractional digits
      "a=1234567890123456", // sixteen digits
      "a=?2",
      "a=(1 2",
      "a=1 b=2",
      'a="é"',
    ];
    for (const input of bad) expect(() => parseDictionary(input), input).toThrow(StructuredFieldError);
  });

  it("round-trips any dictionary it serializes (property)", () => {
    const key = fc.stringMatching(/^[a-z*][a-z0-9_\-.*]{0,8}$/);
    const bare: fc.Arbitrary<BareItem> = fc.oneof(
      fc.string({ unit: fc.constantFrom(...' !#az09"\\~'.split("")), maxLength: 12 }).map(sf.string),
      fc.stringMatching(/^[A-Za-z*][A-Za-z0-9:/._-]{0,8}$/).map(sf.token),
      fc.integer({ min: -999_999_999_999_999, max: 999_999_999_999_999 }).map(sf.integer),
      fc.uint8Array({ maxLength: 16 }).map(sf.bytes),
      fc.boolean().map(sf.boolean),
    );
    const params = fc.array(fc.tuple(key, bare), { maxLength: 3 }).map((kv) => new Map(kv));
    const item = fc.record({ value: bare, params });
    const member = fc.oneof(item, fc.record({ items: fc.array(item, { maxLength: 3 }), params }));
    fc.assert(
      fc.property(fc.array(fc.tuple(key, member), { minLength: 1, maxLength: 4 }), (entries) => {
        const dict: Dictionary = new Map(entries);
        const text = serializeDictionary(dict);
        expect(serializeDictionary(parseDictionary(text))).toBe(text);
      }),
    );
  });
});

describe("RFC 9421 signature base", () => {
  // RFC 9421 Appendix B.1.4 (test-key-ed25519) and B.2.6 (signing a request using ed25519).
  const key = createPrivateKey({
    key: {
      kty: "OKP",
      crv: "Ed25519",
      d: "n4Ni-HpISpVObnQMW0wOhCKROaIKqKtW_2ZYb2p9KcU",
      x: "JrQLj5P_89iXES9-vFgrIy29clF9CC_oPPsw3c5D0bs",
    },
    format: "jwk",
  });
  const input =
    'sig-b26=("date" "@method" "@path" "@authority" "content-type" "content-length");created=1618884473;keyid="test-key-ed25519"';
  const expectedBase = [
    '"date": Tue, 20 Apr 2021 02:07:55 GMT',
    '"@method": POST',
    '"@path": /foo',
    '"@authority": example.com',
    '"content-type": application/json',
    '"content-length": 18',
    '"@signature-params": ("date" "@method" "@path" "@authority" "content-type" "content-length");created=1618884473;keyid="test-key-ed25519"',
  ].join("\n");

  it("rebuilds the base of RFC 9421 B.2.6 from its Signature-Input, and its signature", () => {
    const member = parseDictionary(input).get("sig-b26")!;
    expect(isInnerList(member)).toBe(true);
    const values = ["Tue, 20 Apr 2021 02:07:55 GMT", "POST", "/foo", "example.com", "application/json", "18"];
    const base = signatureBase(member as InnerList, values);
    expect(base).toBe(expectedBase);
    expect(sign(null, Buffer.from(base), key).toString("base64")).toBe(
      "wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==",
    );
  });

  it("accepts only visible ASCII, SP and HTAB in values (no line can be injected)", () => {
    expect(signableValue("us-1, eu-1\tx")).toBe(true);
    for (const v of ["a\nb", "a\rb", "\u0000", "é", "\u007f"])
      expect(signableValue(v), JSON.stringify(v)).toBe(false);
  });

  it("normalizes @authority and @path as RFC 9421 §2.2.3 and §2.2.6 say", () => {
    expect(normalizeAuthority("Model-AB.Meridian.Internal:443", "https")).toBe("model-ab.meridian.internal");
    expect(normalizeAuthority("model-ab.meridian.internal:8443", "https")).toBe(
      "model-ab.meridian.internal:8443",
    );
    expect(normalizeAuthority("model-ab.example:80", "http")).toBe("model-ab.example");
    expect(normalizeAuthority("model-ab.example:443", "http")).toBe("model-ab.example:443");
    expect(pathOfTarget("/environments/prod-eu/predict?x=1")).toBe("/environments/prod-eu/predict");
    expect(pathOfTarget("/a%2Fb/../c")).toBe("/a%2Fb/../c"); // as sent: no decoding, no dot-segment removal
    expect(pathOfTarget("https://h.example:8443/predict?q")).toBe("/predict");
    expect(pathOfTarget("https://h.example")).toBe("/");
    expect(pathOfTarget("")).toBe("/");
  });
});

describe("Content-Digest (RFC 9530)", () => {
  it("writes and reads the sha-256 member (the RFC 9530 §2 example body)", async () => {
    const { createHash } = await import("node:crypto");
    const digest = createHash("sha256").update('{"hello": "world"}').digest();
    const value = contentDigestValue(digest);
    expect(value).toBe("sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:");
    expect(Buffer.from(sha256OfContentDigest(value)!).equals(digest)).toBe(true);
    // Other members may sit beside it.
    expect(
      sha256OfContentDigest(`sha-512=:${Buffer.alloc(64).toString("base64")}:, ${value}`),
    ).not.toBeNull();
  });

  it("finds no sha-256 digest in malformed or other values", () => {
    for (const v of ["", "sha-256=abc", "sha-256=:AAAA:", "sha-512=:AAAA:", "sha-256=(1)", "garbage ,"]) {
      expect(sha256OfContentDigest(v), v).toBeNull();
    }
  });
});
