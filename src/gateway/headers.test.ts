// The response header rules that keep the plane's receipt the plane's own: what a replica may send in
// Signature / Signature-Input (RFC 9421 §4), and what a peer plane's response keeps.

import { describe, expect, it } from "vitest";
import { scanResponseHeaders } from "./headers.ts";

const fromReplica = (raw: string[]) => scanResponseHeaders(raw, false).headers;

describe("a replica's signatures", () => {
  it.each<[string, string[], string[]]>([
    [
      "its own members pass, re-serialized",
      ["signature-input", 'own=("content-type");created=1;keyid="m"', "signature", "own=:AAAA:"],
      ["signature-input", 'own=("content-type");created=1;keyid="m"', "signature", "own=:AAAA:"],
    ],
    [
      "a member labelled receipt is dropped from both fields",
      [
        "signature-input",
        'receipt=("@status");created=1, own=("@status");created=2',
        "signature",
        "receipt=:AAAA:, own=:BBBB:",
      ],
      ["signature-input", 'own=("@status");created=2', "signature", "own=:BBBB:"],
    ],
    [
      "a member tagged meridian-receipt is dropped, whatever its label",
      [
        "signature-input",
        'x=("@status");tag="meridian-receipt"',
        "signature-input",
        'y=("@status");tag="other"',
        "signature",
        "x=:AAAA:, y=:BBBB:",
      ],
      ["signature-input", 'y=("@status");tag="other"', "signature", "y=:BBBB:"],
    ],
    [
      "a member that is not an inner list is dropped",
      ["signature-input", 'x="not a list", y=("@status")', "signature", "x=:AAAA:, y=:BBBB:"],
      ["signature-input", 'y=("@status")', "signature", "y=:BBBB:"],
    ],
    [
      "fields that do not parse are dropped whole",
      ["signature-input", "receipt=(unclosed", "signature", "own=:AAAA:"],
      [],
    ],
    ["a field left empty is not sent", ["signature", "receipt=:AAAA:"], []],
  ])("%s", (_name, raw, kept) => {
    expect(fromReplica(["content-type", "text/plain", ...raw])).toEqual([
      "content-type",
      "text/plain",
      ...kept,
    ]);
  });

  it("a replica's x-meridian-receipt-request is dropped with the other x-meridian-* fields", () => {
    expect(fromReplica(["x-meridian-receipt-request", 'method="GET"', "x-a", "1"])).toEqual(["x-a", "1"]);
    // A replica cannot pass for its plane saying nothing ran (rules.ts, HOP_NO_REPLICA): a request that did
    // run would be sent to another plane again.
    expect(fromReplica(["x-meridian-hop-refused", "no_replica", "x-meridian-time", "1"])).toEqual([]);
  });

  it("a peer plane's receipt passes unchanged, its echo kept aside with the proof", () => {
    const raw = [
      "signature-input",
      'receipt=("@status");tag="meridian-receipt"',
      "signature",
      "receipt=:AAAA:",
      "x-meridian-receipt-request",
      'method="POST"',
      "x-meridian-plane",
      "eu-2",
    ];
    const { headers, proof } = scanResponseHeaders(raw, true);
    expect(headers).toEqual(raw.slice(0, 4));
    expect(proof.get("x-meridian-receipt-request")).toBe('method="POST"');
    expect(proof.get("x-meridian-plane")).toBe("eu-2");
  });
});
