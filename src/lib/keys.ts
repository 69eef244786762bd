// Ed25519 keys of the parties that sign (issue 10 item 4): each plane's own key pair, kept in its data
// directory, and the control plane's, kept in its store. Public keys travel as the raw 32 bytes in
// base64url (RFC 8037 §2, the JWK `x` member); a key is named by a short hash of those bytes.

import {
  createHash,
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  type KeyObject,
  randomBytes,
  sign,
  verify,
} from "node:crypto";
import { constants } from "node:fs";
import { link, open, readFile, rm } from "node:fs/promises";

/** A key this process signs with. The private half never leaves the process (and its key file). */
export interface SigningKey {
  keyId: string;
  /** Raw Ed25519 public key, base64url (43 characters). */
  publicKey: string;
  privateKey: KeyObject;
}

/** `sha256(raw public key)`, first 8 bytes, lowercase hex: short, and unique among an installation's keys. */
export function keyIdOf(publicKey: string): string {
  return createHash("sha256").update(Buffer.from(publicKey, "base64url")).digest("hex").slice(0, 16);
}

export function generateSigningKey(): SigningKey {
  return signingKeyOf(generateKeyPairSync("ed25519").privateKey);
}

function signingKeyOf(privateKey: KeyObject): SigningKey {
  if (privateKey.asymmetricKeyType !== "ed25519") throw new Error("not an Ed25519 private key");
  const x = createPublicKey(privateKey).export({ format: "jwk" }).x;
  if (typeof x !== "string") throw new Error("the Ed25519 key has no public part");
  return { keyId: keyIdOf(x), publicKey: x, privateKey };
}

/** The private key as a JWK (`{kty, crv, x, d}`), the form the control plane keeps in its store. */
export function privateJwkOf(key: SigningKey): string {
  return JSON.stringify(key.privateKey.export({ format: "jwk" }));
}

/** Reads a private JWK written by `privateJwkOf`; throws when it is not an Ed25519 private key. */
export function signingKeyFromJwk(text: string): SigningKey {
  const jwk = JSON.parse(text) as Record<string, unknown>;
  if (jwk["kty"] !== "OKP" || jwk["crv"] !== "Ed25519" || typeof jwk["d"] !== "string") {
    throw new Error("not an Ed25519 private JWK");
  }
  return signingKeyOf(createPrivateKey({ key: jwk as never, format: "jwk" }));
}

// RFC 8410 §7: the PKCS #8 encoding of an Ed25519 private key is this prefix and the 32-byte seed.
const PKCS8_ED25519_PREFIX = Buffer.from("302e020100300506032b657004220420", "hex");

/** A key derived from a 32-byte seed: the same seed gives the same key (benchmarks and test fixtures). */
export function signingKeyFromSeed(seed: Uint8Array): SigningKey {
  if (seed.length !== 32) throw new Error("an Ed25519 seed is 32 bytes");
  const der = Buffer.concat([PKCS8_ED25519_PREFIX, seed]);
  return signingKeyOf(createPrivateKey({ key: der, format: "der", type: "pkcs8" }));
}

const RAW_PUBLIC_KEY = /^[A-Za-z0-9_-]{43}$/;

/** A verifier for a raw base64url public key, or null when it does not decode to 32 bytes. */
export function publicKeyObject(publicKey: string): KeyObject | null {
  if (!RAW_PUBLIC_KEY.test(publicKey)) return null;
  try {
    return createPublicKey({ key: { kty: "OKP", crv: "Ed25519", x: publicKey }, format: "jwk" });
  } catch {
    return null;
  }
}

/** Ed25519 signature (RFC 8032 §5.1.6) of `message`, base64url (86 characters). */
export function signMessage(key: KeyObject, message: string): string {
  return sign(null, Buffer.from(message, "utf8"), key).toString("base64url");
}

// 64 bytes in unpadded base64url: the last character carries 2 bits (canonical: its 4 low bits zero).
const SIGNATURE = /^[A-Za-z0-9_-]{85}[AQgw]$/;

/** Whether `signature` (base64url) is `key`'s signature of `message`. Never throws. */
export function verifyMessage(key: KeyObject, message: string, signature: string): boolean {
  if (!SIGNATURE.test(signature)) return false;
  try {
    return verify(null, Buffer.from(message, "utf8"), key, Buffer.from(signature, "base64url"));
  } catch {
    return false;
  }
}

export type PlaneKeyLoad = { key: SigningKey; created: boolean };

/**
 * The plane's key pair, from its PEM file (PKCS #8, mode 0600). A missing file means a new key: it is
 * generated and written with an exclusive create, so two processes on one data directory never end up
 * with different keys. A file that exists but does not hold an Ed25519 private key is an error, never
 * silently replaced: replacing it would rotate the plane's key behind the operator's back.
 */
export async function loadOrCreatePlaneKey(file: string): Promise<PlaneKeyLoad> {
  try {
    return { key: await readPlaneKey(file), created: false };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
  }
  const key = generateSigningKey();
  const pem = key.privateKey.export({ format: "pem", type: "pkcs8" }) as string;
  const temp = `${file}.${process.pid}.${randomBytes(4).toString("hex")}.tmp`;
  const handle = await open(temp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600);
  try {
    await handle.writeFile(pem);
    await handle.sync();
  } finally {
    await handle.close();
  }
  try {
    // link(2) creates the name only if it does not exist, and the file it names is already complete:
    // a second process racing this one gets EEXIST and reads the first one's key.
    await link(temp, file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
    return { key: await readPlaneKey(file), created: false };
  } finally {
    await rm(temp, { force: true });
  }
  return { key, created: true };
}

async function readPlaneKey(file: string): Promise<SigningKey> {
  const pem = await readFile(file, "utf8");
  try {
    return signingKeyOf(createPrivateKey({ key: pem, format: "pem" }));
  } catch (err) {
    throw new Error(
      `${file} does not hold an Ed25519 private key (${(err as Error).message}); move it away to create a new key`,
    );
  }
}
