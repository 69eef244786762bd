import { describe, expect, it } from "vitest";
import { signControlAccess, verifyControlAccess } from "./control-access.ts";

const SECRET = "a".repeat(64);
const PATH = "/v1/replicas/r1/logs?limit=10";
const NOW = 1_700_000_000_000;

describe("control access header", () => {
  it("accepts what was signed for the same path within the age bound", () => {
    expect(verifyControlAccess(signControlAccess(SECRET, NOW, PATH), PATH, SECRET, NOW + 29_000)).toEqual({
      ok: true,
    });
  });

  it.each([
    ["another path", signControlAccess(SECRET, NOW, PATH), "/v1/audit", SECRET, NOW, "bad_signature"],
    [
      "another query",
      signControlAccess(SECRET, NOW, PATH),
      "/v1/replicas/r1/logs?limit=11",
      SECRET,
      NOW,
      "bad_signature",
    ],
    ["another secret", signControlAccess("b".repeat(64), NOW, PATH), PATH, SECRET, NOW, "bad_signature"],
    ["too old", signControlAccess(SECRET, NOW, PATH), PATH, SECRET, NOW + 30_001, "expired"],
    ["from the future", signControlAccess(SECRET, NOW + 31_000, PATH), PATH, SECRET, NOW, "expired"],
    ["malformed", "nonsense", PATH, SECRET, NOW, "malformed"],
    ["upper-case hex", signControlAccess(SECRET, NOW, PATH).toUpperCase(), PATH, SECRET, NOW, "malformed"],
    ["no secret yet", signControlAccess("", NOW, PATH), PATH, "", NOW, "malformed"],
  ])("refuses %s", (_name, header, path, secret, now, reason) => {
    expect(verifyControlAccess(header, path, secret, now)).toEqual({ ok: false, reason });
  });
});
