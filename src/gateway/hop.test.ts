import fc from "fast-check";
import { describe, expect, it } from "vitest";
import type { PlaneKey, PlaneRef } from "../core/snapshot.ts";
import { generateSigningKey, type SigningKey } from "../lib/keys.ts";
import { type HopClaims, type HopTrust, HopVerifier, signHop } from "./hop.ts";

const NOW = 1_700_000_000_000;
const keys = { "us-1": generateSigningKey(), "eu-1": generateSigningKey(), "eu-2": generateSigningKey() };
const planeKey = (plane: string, k: SigningKey, retired_at: string | null = null): PlaneKey => ({
  plane,
  key_id: k.keyId,
  public_key: k.publicKey,
  retired_at,
});
const ref = (name: string, region: string): PlaneRef => ({
  name,
  region,
  ingress: ["127.0.0.1:1"],
  global_ingress: false,
});
/** eu-2's view: every plane known, the keys of the others. */
function trust(extra: PlaneKey[] = []): HopTrust {
  return {
    planes: new Map([
      ["us-1", ref("us-1", "us")],
      ["eu-1", ref("eu-1", "eu")],
      ["eu-2", ref("eu-2", "eu")],
    ]),
    planeKeys: new Map([
      ["us-1", [planeKey("us-1", keys["us-1"])]],
      ["eu-1", [planeKey("eu-1", keys["eu-1"]), ...extra]],
    ]),
  };
}
const request = {
  requestId: "req-1",
  method: "POST",
  authority: "model-aaaaaaa1.meridian.test",
  target: "/environments/prod-eu/predict",
};
const claims = (over: Partial<HopClaims> = {}): HopClaims => ({
  from: "eu-1",
  to: "eu-2",
  ms: NOW,
  ...request,
  ...over,
});
const verifier = () => new HopVerifier({ self: "eu-2" });

describe("hop", () => {
  it("verifies what the source plane signed for this plane", () => {
    expect(verifier().verify(signHop(keys["eu-1"], claims()), request, trust(), NOW + 10)).toEqual({
      ok: true,
      from: "eu-1",
      ms: NOW,
    });
  });

  it.each<[string, () => string, Partial<typeof request>, string]>([
    ["signed with another plane's key", () => signHop(keys["us-1"], claims()), {}, "bad_signature"],
    ["claiming another source", () => signHop(keys["eu-1"], claims({ from: "us-1" })), {}, "bad_signature"],
    ["addressed to another plane", () => signHop(keys["eu-1"], claims({ to: "eu-1" })), {}, "wrong_target"],
    ["from itself", () => signHop(keys["eu-2"], claims({ from: "eu-2" })), {}, "unknown_plane"],
    ["from an unknown plane", () => signHop(keys["eu-1"], claims({ from: "zz-9" })), {}, "unknown_plane"],
    ["expired", () => signHop(keys["eu-1"], claims({ ms: NOW - 30_001 })), {}, "expired"],
    ["from the future", () => signHop(keys["eu-1"], claims({ ms: NOW + 30_001 })), {}, "expired"],
    [
      "for another request id",
      () => signHop(keys["eu-1"], claims()),
      { requestId: "req-2" },
      "bad_signature",
    ],
    ["for another authority", () => signHop(keys["eu-1"], claims()), { authority: "evil" }, "bad_signature"],
    [
      "for another target",
      () => signHop(keys["eu-1"], claims()),
      { target: "/production/predict" },
      "bad_signature",
    ],
    ["for another method", () => signHop(keys["eu-1"], claims()), { method: "PUT" }, "bad_signature"],
    ["malformed", () => "eu-1;1;zz", {}, "malformed"],
    ["the old HMAC form", () => `eu-1;${NOW};${"a".repeat(64)}`, {}, "malformed"],
  ])("refuses a hop %s", (_n, make, req, reason) => {
    expect(verifier().verify(make(), { ...request, ...req }, trust(), NOW)).toEqual({ ok: false, reason });
  });

  it("refuses any edited field of a valid header", () => {
    const header = signHop(keys["eu-1"], claims());
    const [v, from, to, ms, keyId, nonce, sig] = header.split(";");
    const flip = (s: string) => (s[0] === "A" ? "B" : "A") + s.slice(1);
    const edits = [
      [v, "us-1", to, ms, keys["us-1"].keyId, nonce, sig],
      [v, from, to, String(NOW + 1), keyId, nonce, sig],
      [v, from, to, ms, keyId, flip(nonce!), sig],
      [v, from, to, ms, keyId, nonce, flip(sig!)],
      // The same signature bytes in a non-canonical encoding (the last character's unused bits set).
      [v, from, to, ms, keyId, nonce, `${sig!.slice(0, -1)}${sig!.at(-1) === "A" ? "B" : "R"}`],
    ];
    for (const e of edits) {
      expect(verifier().verify(e.join(";"), request, trust(), NOW).ok, e.join(";")).toBe(false);
    }
  });

  it("accepts a hop once: the same header again is a replay, a new hop of the same request is not", () => {
    const v = verifier();
    const header = signHop(keys["eu-1"], claims());
    expect(v.verify(header, request, trust(), NOW).ok).toBe(true);
    expect(v.verify(header, request, trust(), NOW + 5)).toEqual({ ok: false, reason: "replayed" });
    // A client may reuse its request id: another hop (another nonce) of it passes.
    expect(v.verify(signHop(keys["eu-1"], claims()), request, trust(), NOW + 6).ok).toBe(true);
    // Another plane's receiver has its own memory, but the hop is not addressed to it.
    const other = new HopVerifier({ self: "eu-1" });
    expect(other.verify(header, request, trust(), NOW)).toEqual({ ok: false, reason: "wrong_target" });
  });

  it("accepts a just-retired key only for the window after its retirement", () => {
    const old = generateSigningKey();
    const retiredAt = new Date(NOW - 10_000).toISOString();
    const t = trust([planeKey("eu-1", old, retiredAt)]);
    expect(verifier().verify(signHop(old, claims()), request, t, NOW).ok).toBe(true);
    const later = NOW + 20_001; // retired 30.001 s ago
    const header = signHop(old, claims({ ms: later }));
    expect(verifier().verify(header, request, t, later)).toEqual({ ok: false, reason: "bad_signature" });
  });

  it("a full replay memory shrinks the window instead of forgetting: an evicted hop is never accepted", () => {
    const v = new HopVerifier({ self: "eu-2", replayEntries: 2 });
    const first = signHop(keys["eu-1"], claims({ ms: NOW }));
    expect(v.verify(first, request, trust(), NOW).ok).toBe(true);
    expect(v.verify(signHop(keys["eu-1"], claims({ ms: NOW + 1 })), request, trust(), NOW + 1).ok).toBe(true);
    // The third evicts the first and moves the horizon to its time.
    expect(v.verify(signHop(keys["eu-1"], claims({ ms: NOW + 2 })), request, trust(), NOW + 2).ok).toBe(true);
    expect(v.verify(first, request, trust(), NOW + 3)).toEqual({ ok: false, reason: "expired" });
    expect(v.verify(signHop(keys["eu-1"], claims({ ms: NOW + 4 })), request, trust(), NOW + 4).ok).toBe(true);
  });

  it("never throws and never accepts arbitrary headers", () => {
    const v = verifier();
    fc.assert(
      fc.property(fc.string(), fc.string(), (value, id) => {
        expect(v.verify(value, { ...request, requestId: id }, trust(), NOW).ok).toBe(false);
      }),
    );
    const alphabet = fc.constantFrom(..."v1;eu-12abcdefABCDEF0123456789_-".split(""));
    fc.assert(
      fc.property(fc.array(alphabet, { maxLength: 200 }), (chars) => {
        expect(v.verify(chars.join(""), request, trust(), NOW).ok).toBe(false);
      }),
    );
  });
});
