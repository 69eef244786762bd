import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  checkSecretName,
  checkSecretValue,
  MAX_SECRETS_PER_DEPLOYMENT,
  missingSecretsMessage,
  parseSecretsConfig,
  SECRET_NAME_MAX_LENGTH,
  SECRET_VALUE_MAX_BYTES,
  secretNamesOf,
  secretsEntry,
} from "./secrets.ts";

const NAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.";

describe("checkSecretName (truss's rule)", () => {
  it.each([
    ["hf_access_token", true],
    ["HF-Token.v2", true],
    ["a", true],
    [".hidden", true],
    ["...", true],
    ["x".repeat(SECRET_NAME_MAX_LENGTH), true],
  ])("accepts %s", (name, ok) => {
    expect(checkSecretName(name).ok).toBe(ok);
  });

  it.each([
    ["", "empty"],
    [".", "dot"],
    ["..", "dot"],
    ["x".repeat(SECRET_NAME_MAX_LENGTH + 1), "too_long"],
    ["a/b", "characters"],
    ["../etc/passwd", "characters"],
    ["with space", "characters"],
    ["tab\t", "characters"],
    ["new\nline", "characters"],
    ["nul\u0000", "characters"],
    ["é", "characters"],
    ["a:b", "characters"],
  ])("refuses %j (%s)", (name, rule) => {
    const check = checkSecretName(name);
    expect(check).toMatchObject({ ok: false, rule });
    if (!check.ok) expect(check.message.length).toBeGreaterThan(0);
  });

  it("accepts exactly the names of letters, digits, '-', '_', '.' up to 253, but '.' and '..'", () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 300 }), (name) => {
        const truss =
          name.length >= 1 &&
          name.length <= SECRET_NAME_MAX_LENGTH &&
          [...name].every((c) => NAME_CHARS.includes(c)) &&
          name !== "." &&
          name !== "..";
        expect(checkSecretName(name).ok).toBe(truss);
      }),
    );
    fc.assert(
      fc.property(
        fc.string({ unit: fc.constantFrom(...NAME_CHARS), minLength: 1, maxLength: 253 }),
        (name) => {
          expect(checkSecretName(name).ok).toBe(name !== "." && name !== "..");
        },
      ),
    );
  });

  it("never accepts a name that is a path (every accepted name is one file name)", () => {
    fc.assert(
      fc.property(fc.string(), (name) => {
        if (checkSecretName(name).ok) {
          expect(name).not.toContain("/");
          expect(name).not.toContain("\0");
          expect([".", ".."]).not.toContain(name);
        }
      }),
    );
  });
});

describe("checkSecretValue", () => {
  it("refuses an empty value (truss treats it as missing)", () => {
    expect(checkSecretValue("")).toMatchObject({ ok: false, rule: "empty" });
  });

  it("bounds the value in bytes of UTF-8, not in characters", () => {
    expect(checkSecretValue("x".repeat(SECRET_VALUE_MAX_BYTES)).ok).toBe(true);
    expect(checkSecretValue("x".repeat(SECRET_VALUE_MAX_BYTES + 1))).toMatchObject({
      ok: false,
      rule: "too_large",
    });
    // "é" is two bytes: half as many fit.
    expect(checkSecretValue("é".repeat(SECRET_VALUE_MAX_BYTES / 2)).ok).toBe(true);
    expect(checkSecretValue(`${"é".repeat(SECRET_VALUE_MAX_BYTES / 2)}x`).ok).toBe(false);
  });

  it("never quotes the value in its message", () => {
    const value = `canary-${"z".repeat(SECRET_VALUE_MAX_BYTES)}`;
    const check = checkSecretValue(value);
    expect(check.ok).toBe(false);
    if (!check.ok) expect(check.message).not.toContain("canary");
  });
});

describe("parseSecretsConfig (config.yaml's secrets:)", () => {
  it("takes the names of a mapping of placeholders, sorted", () => {
    expect(parseSecretsConfig({ z_token: null, a_key: "ENTER YOUR KEY HERE" })).toEqual({
      ok: true,
      names: ["a_key", "z_token"],
    });
    expect(parseSecretsConfig(undefined)).toEqual({ ok: true, names: [] });
    expect(parseSecretsConfig(null)).toEqual({ ok: true, names: [] });
    expect(parseSecretsConfig({})).toEqual({ ok: true, names: [] });
  });

  it.each([
    [["hf_token"], "secrets"],
    ["hf_token", "secrets"],
    [{ "bad/name": null }, "secrets.bad/name"],
    [{ "..": null }, "secrets..."],
    [{ ok: 3 }, "secrets.ok"],
    [{ ok: { nested: 1 } }, "secrets.ok"],
  ])("refuses %j, naming %s", (value, key) => {
    expect(parseSecretsConfig(value)).toMatchObject({ ok: false, key });
  });

  it(`refuses more than ${MAX_SECRETS_PER_DEPLOYMENT} names`, () => {
    const many = Object.fromEntries(
      Array.from({ length: MAX_SECRETS_PER_DEPLOYMENT + 1 }, (_, i) => [`s${i}`, null]),
    );
    expect(parseSecretsConfig(many)).toMatchObject({ ok: false, key: "secrets" });
  });
});

describe("secretNamesOf (a stored deployment config)", () => {
  it("reads the names of the secrets entry and nothing else", () => {
    expect(secretNamesOf({ model_name: "m", secrets: secretsEntry(["b", "a"]) })).toEqual(["a", "b"]);
    expect(secretNamesOf({ model_name: "m" })).toEqual([]);
    expect(secretNamesOf(null)).toEqual([]);
    expect(secretNamesOf({ secrets: ["a"] })).toEqual([]);
    // A name that is not a secret name (a config written by hand) is never a file name.
    expect(secretNamesOf({ secrets: { "../x": null, ok: null } })).toEqual(["ok"]);
  });

  it("keeps no value: the entry's placeholders are null", () => {
    expect(secretsEntry(["a", "b"])).toEqual({ a: null, b: null });
  });
});

describe("missingSecretsMessage", () => {
  it("names every missing secret and the team, and says what to do", () => {
    const one = missingSecretsMessage(["hf_token"], "Research");
    expect(one).toContain("Secret 'hf_token' not found");
    expect(one).toContain("team 'Research'");
    expect(one).toContain("POST /v1/secrets");
    expect(one).toContain("retry");
    expect(missingSecretsMessage(["a", "b"], "T")).toContain("Secrets 'a', 'b' not found");
  });
});
