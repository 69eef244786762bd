import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { firstIllFormedString, isWellFormed } from "./unicode.ts";

describe("firstIllFormedString", () => {
  it("names the first string or key holding a lone surrogate", () => {
    expect(firstIllFormedString({ name: "ok", tags: ["a", "b\ud800"] })).toBe("tags[1]");
    expect(firstIllFormedString({ a: { "k\udc00": 1 } })).toBe("a (a key)");
    expect(firstIllFormedString("\ud83d")).toBe("(the body)");
    expect(firstIllFormedString({ emoji: "\ud83d\ude00", n: 1, z: null, b: true })).toBeNull();
  });

  it("takes a body nested deeper than the stack would", () => {
    let deep: unknown = "x\ud800";
    for (let i = 0; i < 100_000; i++) deep = [deep];
    expect(firstIllFormedString(deep)).toMatch(/^\[0\]/);
  });

  it("agrees with the UTF-8 round trip on arbitrary UTF-16", () => {
    // Well-formed exactly when encoding to UTF-8 and back changes nothing (a lone surrogate becomes U+FFFD).
    fc.assert(
      fc.property(
        fc.string({ unit: fc.integer({ min: 0, max: 0xffff }).map((c) => String.fromCharCode(c)) }),
        (s) => {
          const roundTrip = Buffer.from(s, "utf8").toString("utf8") === s;
          expect(isWellFormed(s)).toBe(roundTrip);
          expect(firstIllFormedString({ s }) === null).toBe(roundTrip);
        },
      ),
      { numRuns: 2000 },
    );
  });
});
