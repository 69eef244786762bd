import { randomBytes } from "node:crypto";
import { chmodSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { inspect } from "node:util";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  loadSecretsKeyFile,
  newKeyFileText,
  SecretBox,
  SecretOpenError,
  SecretsKeyError,
} from "./secret-box.ts";

const CANARY = "canary-value-7f3a9c";
const ROW = { team_id: "teamaaaa", name: "hf_token" };

function keyLine(): string {
  return randomBytes(32).toString("base64");
}

describe("SecretBox", () => {
  it("seals with AES-256-GCM and opens for the same team and name", () => {
    const box = SecretBox.parse(newKeyFileText(), "test");
    const sealed = box.seal(CANARY, ROW);
    expect(sealed.key_id).toBe(box.currentKeyId);
    expect(sealed.key_id).toMatch(/^[0-9a-f]{16}$/);
    expect(Buffer.from(sealed.sealed, "base64").toString("latin1")).not.toContain(CANARY);
    expect(box.open(sealed, ROW)).toBe(CANARY);
    expect(box.open(box.seal("ünïcødé ✓", ROW), ROW)).toBe("ünïcødé ✓");
  });

  it("uses a fresh nonce for every value", () => {
    const box = SecretBox.parse(newKeyFileText(), "test");
    const a = Buffer.from(box.seal(CANARY, ROW).sealed, "base64");
    const b = Buffer.from(box.seal(CANARY, ROW).sealed, "base64");
    expect(a.subarray(0, 12).equals(b.subarray(0, 12))).toBe(false);
    expect(a.equals(b)).toBe(false);
  });

  it("refuses a ciphertext moved to another row (team or name), changed, or truncated", () => {
    const box = SecretBox.parse(newKeyFileText(), "test");
    const sealed = box.seal(CANARY, ROW);
    const attempts = [
      () => box.open(sealed, { ...ROW, team_id: "teambbbb" }),
      () => box.open(sealed, { ...ROW, name: "other" }),
      // The associated data must be unambiguous: shifting characters between the fields does not match.
      () => box.open(sealed, { team_id: "teamaaaah", name: "f_token" }),
      () => {
        const bytes = Buffer.from(sealed.sealed, "base64");
        bytes[20] = bytes[20]! ^ 1;
        return box.open({ ...sealed, sealed: bytes.toString("base64") }, ROW);
      },
      () => box.open({ ...sealed, sealed: sealed.sealed.slice(0, 20) }, ROW),
      () => box.open({ ...sealed, key_id: "0000000000000000" }, ROW),
    ];
    for (const attempt of attempts) {
      let error: unknown;
      try {
        attempt();
      } catch (err) {
        error = err;
      }
      expect(error).toBeInstanceOf(SecretOpenError);
      expect((error as Error).message).not.toContain(CANARY);
    }
  });

  it("does not open with another key: an error, never garbage", () => {
    const sealed = SecretBox.parse(newKeyFileText(), "a").seal(CANARY, ROW);
    const other = SecretBox.parse(newKeyFileText(), "b");
    expect(() => other.open(sealed, ROW)).toThrow(SecretOpenError);
  });

  it("rotates: the first key seals, every key listed opens", () => {
    const oldKey = keyLine();
    const newKey = keyLine();
    const before = SecretBox.parse(`${oldKey}\n`, "old");
    const sealedOld = before.seal(CANARY, ROW);
    const after = SecretBox.parse(`# rotated\n${newKey}\n\n${oldKey}\n`, "rotated");
    expect(after.keyIds).toEqual([after.currentKeyId, before.currentKeyId]);
    expect(after.currentKeyId).not.toBe(before.currentKeyId);
    expect(after.open(sealedOld, ROW)).toBe(CANARY);
    const sealedNew = after.seal(CANARY, ROW);
    expect(sealedNew.key_id).toBe(after.currentKeyId);
    expect(() => before.open(sealedNew, ROW)).toThrow(SecretOpenError);
  });

  it("names a key by an id derived from it: the same key has the same id in any file", () => {
    const key = keyLine();
    expect(SecretBox.parse(key, "a").currentKeyId).toBe(SecretBox.parse(`# x\n${key}\n`, "b").currentKeyId);
    expect(SecretBox.parse(keyLine(), "c").currentKeyId).not.toBe(SecretBox.parse(key, "a").currentKeyId);
  });

  it("refuses a file that holds no key or a line that is not one, without quoting the line", () => {
    expect(() => SecretBox.parse("# only a comment\n\n", "f")).toThrow(SecretsKeyError);
    const almost = keyLine().slice(0, 40);
    let message = "";
    try {
      SecretBox.parse(`${keyLine()}\n${almost}\n`, "f");
    } catch (err) {
      expect(err).toBeInstanceOf(SecretsKeyError);
      message = (err as Error).message;
    }
    expect(message).toContain("line 2");
    expect(message).not.toContain(almost);
    // 32 bytes exactly: a 16-byte key is an AES-128 key, not ours.
    expect(() => SecretBox.parse(randomBytes(16).toString("base64"), "f")).toThrow(SecretsKeyError);
  });

  it("keeps its keys out of util.inspect, JSON and string forms", () => {
    const text = newKeyFileText();
    const key = text.trim().split("\n").pop()!;
    const box = SecretBox.parse(text, "test");
    for (const shown of [inspect(box, { showHidden: true, depth: 5 }), JSON.stringify(box), String(box)]) {
      expect(shown).not.toContain(key);
      expect(shown).not.toContain(Buffer.from(key, "base64").toString("hex"));
    }
  });
});

describe("loadSecretsKeyFile", () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), "meridian-key-"));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it("creates a missing file with one key, mode 0600, and reads the same key afterwards", () => {
    const path = join(dir, "secrets.key");
    const created = loadSecretsKeyFile(path, { create: true });
    expect(statSync(path).mode & 0o777).toBe(0o600);
    expect(loadSecretsKeyFile(path, { create: true }).currentKeyId).toBe(created.currentKeyId);
    expect(loadSecretsKeyFile(path, { create: false }).currentKeyId).toBe(created.currentKeyId);
    expect(readFileSync(path, "utf8")).toMatch(/^# Meridian secrets key file/);
  });

  it("never replaces an existing file", () => {
    const path = join(dir, "secrets.key");
    writeFileSync(path, `${keyLine()}\n`, { mode: 0o600 });
    const before = readFileSync(path, "utf8");
    loadSecretsKeyFile(path, { create: true });
    expect(readFileSync(path, "utf8")).toBe(before);
  });

  it("refuses a missing file the operator named", () => {
    expect(() => loadSecretsKeyFile(join(dir, "nope.key"), { create: false })).toThrow(/does not exist/);
  });

  it("refuses a file that group or others may read, naming the fix", () => {
    const path = join(dir, "open.key");
    writeFileSync(path, `${keyLine()}\n`);
    chmodSync(path, 0o644);
    expect(() => loadSecretsKeyFile(path, { create: false })).toThrow(/mode 0644.*chmod 600/);
    chmodSync(path, 0o600);
    expect(() => loadSecretsKeyFile(path, { create: false })).not.toThrow();
  });

  it("refuses a directory", () => {
    expect(() => loadSecretsKeyFile(dir, { create: false })).toThrow(/not a regular file/);
  });
});
