import { describe, expect, it } from "vitest";
import type { ControlKey } from "../core/snapshot.ts";
import { ControlAccessVerifier, signControlAccess } from "./control-access.ts";
import { generateSigningKey } from "./keys.ts";

const control = generateSigningKey();
const plane = generateSigningKey();
const CONTROL: ControlKey = { key_id: control.keyId, public_key: control.publicKey };
const PATH = "/v1/replicas/r1/logs?limit=10";
const NOW = 1_700_000_000_000;
const GET = { method: "GET", target: PATH };
const sign = (over: { plane?: string; target?: string; ms?: number; key?: typeof control } = {}) =>
  signControlAccess(
    over.key ?? control,
    { plane: over.plane ?? "eu-1", method: "GET", target: over.target ?? PATH },
    over.ms ?? NOW,
  );
const verifier = () => new ControlAccessVerifier({ plane: "eu-1" });

describe("control access header", () => {
  it("accepts what the control plane signed for this plane and path within the age bound", () => {
    expect(verifier().verify(sign(), GET, CONTROL, NOW + 29_000)).toEqual({ ok: true });
  });

  it.each<[string, () => string, Partial<typeof GET>, ControlKey | null, string]>([
    ["another path", () => sign(), { target: "/v1/audit" }, CONTROL, "bad_signature"],
    ["another query", () => sign(), { target: "/v1/replicas/r1/logs?limit=11" }, CONTROL, "bad_signature"],
    ["another method", () => sign(), { method: "DELETE" }, CONTROL, "bad_signature"],
    ["another plane", () => sign({ plane: "eu-2" }), {}, CONTROL, "bad_signature"],
    ["a plane's key", () => sign({ key: plane }), {}, CONTROL, "unknown_key"],
    [
      "a plane's key under the control plane's key id",
      () => sign({ key: plane }).replace(plane.keyId, control.keyId),
      {},
      CONTROL,
      "bad_signature",
    ],
    ["too old", () => sign({ ms: NOW - 30_001 }), {}, CONTROL, "expired"],
    ["from the future", () => sign({ ms: NOW + 31_000 }), {}, CONTROL, "expired"],
    ["malformed", () => "nonsense", {}, CONTROL, "malformed"],
    ["the old HMAC form", () => `${NOW};${"0".repeat(64)}`, {}, CONTROL, "malformed"],
    ["no control key yet", () => sign(), {}, null, "unknown_key"],
  ])("refuses %s", (_name, header, req, key, reason) => {
    expect(verifier().verify(header(), { ...GET, ...req }, key, NOW)).toEqual({ ok: false, reason });
  });

  it("accepts a signed request once", () => {
    const v = verifier();
    const header = sign();
    expect(v.verify(header, GET, CONTROL, NOW)).toEqual({ ok: true });
    expect(v.verify(header, GET, CONTROL, NOW + 1)).toEqual({ ok: false, reason: "replayed" });
    expect(v.verify(sign(), GET, CONTROL, NOW + 2)).toEqual({ ok: true });
  });
});
