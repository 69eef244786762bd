import { mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  generateSigningKey,
  keyIdOf,
  loadOrCreatePlaneKey,
  privateJwkOf,
  publicKeyObject,
  signingKeyFromJwk,
  signingKeyFromSeed,
  signMessage,
  verifyMessage,
} from "./keys.ts";

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "meridian-keys-"));
});
afterAll(async () => rm(dir, { recursive: true, force: true }));

describe("plane key file", () => {
  it("is created on first start (mode 0600) and the same key is loaded on the next", async () => {
    const file = join(dir, "a.key");
    const first = await loadOrCreatePlaneKey(file);
    expect(first.created).toBe(true);
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    expect(await readFile(file, "utf8")).toContain("-----BEGIN PRIVATE KEY-----");
    const again = await loadOrCreatePlaneKey(file);
    expect(again).toMatchObject({
      created: false,
      key: { keyId: first.key.keyId, publicKey: first.key.publicKey },
    });
    const signed = signMessage(again.key.privateKey, "m");
    expect(verifyMessage(publicKeyObject(first.key.publicKey)!, "m", signed)).toBe(true);
  });

  it("a missing file means a new key", async () => {
    const file = join(dir, "b.key");
    const first = await loadOrCreatePlaneKey(file);
    await rm(file);
    const second = await loadOrCreatePlaneKey(file);
    expect(second.created).toBe(true);
    expect(second.key.keyId).not.toBe(first.key.keyId);
  });

  it("processes racing on one data directory end up with one key", async () => {
    const file = join(dir, "c.key");
    const loads = await Promise.all(Array.from({ length: 8 }, () => loadOrCreatePlaneKey(file)));
    expect(new Set(loads.map((l) => l.key.keyId)).size).toBe(1);
    expect(loads.filter((l) => l.created)).toHaveLength(1);
  });

  it("refuses a file that does not hold an Ed25519 private key instead of replacing it", async () => {
    const file = join(dir, "d.key");
    await writeFile(file, "not a key", { mode: 0o600 });
    await expect(loadOrCreatePlaneKey(file)).rejects.toThrow(/does not hold an Ed25519 private key/);
    expect(await readFile(file, "utf8")).toBe("not a key");
  });
});

describe("keys", () => {
  it("names a key by the first 8 bytes of the sha256 of its raw public key", () => {
    const k = generateSigningKey();
    expect(k.keyId).toMatch(/^[0-9a-f]{16}$/);
    expect(keyIdOf(k.publicKey)).toBe(k.keyId);
    expect(k.publicKey).toMatch(/^[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]$/);
  });

  it("round-trips the control plane's stored JWK, and a seed gives the same key", () => {
    const k = generateSigningKey();
    expect(signingKeyFromJwk(privateJwkOf(k)).publicKey).toBe(k.publicKey);
    expect(() => signingKeyFromJwk(JSON.stringify({ kty: "OKP", crv: "Ed25519", x: k.publicKey }))).toThrow();
    const seed = new Uint8Array(32).fill(7);
    expect(signingKeyFromSeed(seed).publicKey).toBe(signingKeyFromSeed(seed).publicKey);
  });

  it("verifies only the signer's signature of the same message, in canonical encoding", () => {
    const a = generateSigningKey();
    const b = generateSigningKey();
    const sig = signMessage(a.privateKey, "hello");
    const pa = publicKeyObject(a.publicKey)!;
    expect(verifyMessage(pa, "hello", sig)).toBe(true);
    expect(verifyMessage(pa, "hellO", sig)).toBe(false);
    expect(verifyMessage(publicKeyObject(b.publicKey)!, "hello", sig)).toBe(false);
    expect(verifyMessage(pa, "hello", `${sig.slice(0, -1)}B`)).toBe(false);
    expect(verifyMessage(pa, "hello", "x")).toBe(false);
    expect(publicKeyObject("short")).toBeNull();
  });
});
