import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { checkEnvironmentName, idFromBytes, isModelId, isSlug } from "./names.ts";

describe("environment names (DESIGN.md §1)", () => {
  it.each([
    ["production", true],
    ["prod-eu", true],
    ["staging-eu", true],
    ["a", true],
    ["0", true],
    ["x".repeat(40), true],
    ["a-b-c-1-2-3", true],
    ["dev", true],
    ["developments", true],
  ])("accepts %j", (name) => {
    expect(checkEnvironmentName(name)).toEqual({ ok: true });
  });

  it.each([
    ["", "empty"],
    ["x".repeat(41), "too_long"],
    ["Prod", "invalid_characters"],
    ["prod_eu", "invalid_characters"],
    ["prod.eu", "invalid_characters"],
    ["prod eu", "invalid_characters"],
    ["prød", "invalid_characters"],
    ["-prod", "leading_hyphen"],
    ["prod-", "trailing_hyphen"],
    ["-", "leading_hyphen"],
    ["development", "reserved"],
  ])("refuses %j (%s)", (name, rule) => {
    const check = checkEnvironmentName(name);
    expect(check.ok).toBe(false);
    if (!check.ok) {
      expect(check.rule).toBe(rule);
      expect(check.message.length).toBeGreaterThan(10);
    }
  });

  it("accepts exactly the DNS labels of at most 40 characters other than 'development'", () => {
    const label = /^[a-z0-9]([a-z0-9-]*[a-z0-9])?$/;
    fc.assert(
      fc.property(fc.string({ unit: fc.constantFrom(..."abz09-A_.".split("")), maxLength: 45 }), (name) => {
        const expected = name.length <= 40 && label.test(name) && name !== "development";
        expect(checkEnvironmentName(name).ok).toBe(expected);
      }),
    );
  });

  it("every accepted name fits a regional hostname label (≤ 63 octets)", () => {
    fc.assert(
      fc.property(fc.stringMatching(/^[a-z0-9][a-z0-9-]{0,38}[a-z0-9]$/), (name) => {
        if (!checkEnvironmentName(name).ok) return;
        expect(`model-abcd1234-${name}`.length).toBeLessThanOrEqual(63);
      }),
    );
  });
});

describe("model ids", () => {
  it.each([
    ["abcd1234", true],
    ["00000000", true],
    ["abcd123", false],
    ["abcd12345", false],
    ["abcd-234", false],
    ["ABCD1234", false],
  ])("%j → %s", (id, ok) => expect(isModelId(id)).toBe(ok));

  it("ids made from random bytes are always valid model ids", () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 64, maxLength: 64 }), (bytes) => {
        const id = idFromBytes(bytes, 8);
        if (id !== null) expect(isModelId(id)).toBe(true);
      }),
    );
  });

  it("never contain a hyphen, so model-{id}-{env} parses", () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 32, maxLength: 32 }), (bytes) => {
        expect(idFromBytes(bytes, 8) ?? "").not.toContain("-");
      }),
    );
  });
});

describe("slugs", () => {
  it.each([
    ["eu", true],
    ["us-east", true],
    ["e", true],
    ["EU", false],
    ["-eu", false],
    ["eu-", false],
    ["", false],
  ])("%j → %s", (slug, ok) => expect(isSlug(slug)).toBe(ok));
});
