import { describe, expect, it } from "vitest";
import {
  type DirectoryKey,
  findKey,
  KEY_VALIDITY_SKEW_S,
  keyDirectory,
  parseKeyDirectory,
} from "./key-directory.ts";

const key = (over: Partial<DirectoryKey> = {}): DirectoryKey => ({
  key_id: "0123456789abcdef",
  plane: "eu-1",
  region: "eu",
  alg: "ed25519",
  public_key: "JrQLj5P_89iXES9-vFgrIy29clF9CC_oPPsw3c5D0bs",
  valid_from: "2025-01-01T00:00:00.000Z",
  retired_at: "2025-02-01T00:00:00.000Z",
  ...over,
});
const doc = (keys: unknown[]) => ({
  kind: "meridian-key-directory",
  version: 1,
  generated_at: "2025-03-01T00:00:00Z",
  keys,
});
const s = (iso: string) => Date.parse(iso) / 1000;

describe("key directory", () => {
  it("parses a directory and names the first wrong field", () => {
    expect(
      parseKeyDirectory(doc([key(), key({ key_id: "fedcba9876543210", retired_at: null })])),
    ).toMatchObject({ ok: true });
    const cases: Array<[unknown, string]> = [
      [[], "not a JSON object"],
      [{ ...doc([]), kind: "x" }, 'kind is not "meridian-key-directory"'],
      [{ ...doc([]), version: 2 }, "version is not 1"],
      [doc([key({ key_id: "ABC" })]), "keys[0].key_id is not 16 lowercase hex digits"],
      [doc([key(), key()]), "keys[1].key_id 0123456789abcdef is listed twice"],
      [doc([key({ plane: "EU 1" })]), "keys[0].plane is not a name"],
      [doc([key({ alg: "rsa" as "ed25519" })]), 'keys[0].alg is not "ed25519"'],
      [doc([key({ public_key: "short" })]), "keys[0].public_key is not a raw Ed25519 key in base64url"],
      [doc([key({ valid_from: "yesterday" })]), "keys[0].valid_from is not an ISO 8601 time"],
      [doc([key({ retired_at: "2024-01-01T00:00:00Z" })]), "keys[0] is retired before it is valid"],
    ];
    for (const [input, error] of cases) expect(parseKeyDirectory(input), error).toEqual({ ok: false, error });
  });

  it("finds a key only within its validity, with the skew at both ends", () => {
    const dir = keyDirectory([key()], new Date());
    expect(findKey(dir, "0123456789abcdef", s("2025-01-15T00:00:00Z"))).toMatchObject({ ok: true });
    expect(findKey(dir, "0123456789abcdef", s("2025-01-01T00:00:00Z") - KEY_VALIDITY_SKEW_S)).toMatchObject({
      ok: true,
    });
    expect(
      findKey(dir, "0123456789abcdef", s("2025-01-01T00:00:00Z") - KEY_VALIDITY_SKEW_S - 1),
    ).toMatchObject({
      ok: false,
      reason: "not_yet_valid",
    });
    expect(
      findKey(dir, "0123456789abcdef", s("2025-02-01T00:00:00Z") + KEY_VALIDITY_SKEW_S - 1),
    ).toMatchObject({ ok: true });
    expect(findKey(dir, "0123456789abcdef", s("2025-02-01T00:00:00Z") + KEY_VALIDITY_SKEW_S)).toMatchObject({
      ok: false,
      reason: "retired",
    });
    expect(findKey(dir, "ffffffffffffffff", s("2025-01-15T00:00:00Z"))).toEqual({
      ok: false,
      reason: "unknown_key",
    });
  });
});
