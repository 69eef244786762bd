import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { signHop, verifyHop } from "./hop.ts";

describe("hop", () => {
  const now = 1_700_000_000_000;
  it("verifies what it signs", () => {
    expect(verifyHop(signHop("s1", "us-1", now, "req-1"), "req-1", ["s1"], now + 10)).toEqual({
      ok: true,
      from: "us-1",
      ms: now,
    });
  });
  it.each([
    ["another request id", signHop("s1", "us-1", now, "req-1"), "req-2", ["s1"], now, "bad_signature"],
    ["another secret", signHop("s0", "us-1", now, "req-1"), "req-1", ["s1"], now, "bad_signature"],
    ["expired", signHop("s1", "us-1", now, "req-1"), "req-1", ["s1"], now + 30_001, "expired"],
    ["from the future", signHop("s1", "us-1", now + 60_000, "req-1"), "req-1", ["s1"], now, "expired"],
    ["malformed", "us-1;1;zz", "req-1", ["s1"], now, "malformed"],
    ["empty secret never verifies", signHop("", "us-1", now, "req-1"), "req-1", [""], now, "bad_signature"],
  ])("refuses %s", (_n, value, id, secrets, at, reason) => {
    expect(verifyHop(value, id, secrets, at)).toEqual({ ok: false, reason });
  });
  it("accepts the previous secret during a rotation", () => {
    expect(verifyHop(signHop("old", "eu-1", now, "r"), "r", ["new", "old"], now).ok).toBe(true);
  });
  it("a tampered plane name or time fails", () => {
    const [, ms, mac] = signHop("s", "eu-1", now, "r").split(";");
    expect(verifyHop(`eu-2;${ms};${mac}`, "r", ["s"], now).ok).toBe(false);
    expect(verifyHop(`eu-1;${now + 1};${mac}`, "r", ["s"], now).ok).toBe(false);
  });
  it("never throws on arbitrary input", () => {
    fc.assert(
      fc.property(fc.string(), fc.string(), (v, id) => {
        expect(verifyHop(v, id, ["s"], now).ok).toBe(false);
      }),
    );
  });
});
