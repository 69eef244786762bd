// The key directory: every workload plane's Ed25519 public keys with the plane's region and each key's
// validity, as the control plane publishes it and as `meridian verify` reads it offline (DESIGN.md §2.10).
// Retired keys stay listed, so receipts, audit batches and evidence signed before a rotation still verify.

export const KEY_DIRECTORY_KIND = "meridian-key-directory";

export interface DirectoryKey {
  /** First 8 bytes of sha256(raw public key), lowercase hex (the `keyid` of signatures). */
  key_id: string;
  plane: string;
  region: string;
  alg: "ed25519";
  /** Raw 32-byte Ed25519 public key, base64url (RFC 8037 §2, the JWK `x` member). */
  public_key: string;
  /** ISO 8601: the earliest time the key may have signed (the control plane first saw it). */
  valid_from: string;
  /** ISO 8601: when a newer key replaced it; null while current. It signed nothing after. */
  retired_at: string | null;
}

export interface KeyDirectory {
  kind: typeof KEY_DIRECTORY_KIND;
  version: 1;
  /** ISO 8601 time the control plane produced this document. */
  generated_at: string;
  keys: DirectoryKey[];
}

/**
 * Clock skew allowed at both ends of a key's validity. A plane's clock and the control plane's (which
 * stamps `valid_from` and `retired_at`) are not the same clock; a key used a few seconds before its plane
 * reported it, or just before the switch to a new key, must not fail its receipts.
 */
export const KEY_VALIDITY_SKEW_S = 300;

const KEY_ID = /^[0-9a-f]{16}$/;
const PUBLIC_KEY = /^[A-Za-z0-9_-]{43}$/;
const NAME = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;

export type DirectoryParse = { ok: true; directory: KeyDirectory } | { ok: false; error: string };

/** Validates a key directory document (already JSON-parsed), naming the first field that is wrong. */
export function parseKeyDirectory(doc: unknown): DirectoryParse {
  const fail = (error: string): DirectoryParse => ({ ok: false, error });
  if (typeof doc !== "object" || doc === null || Array.isArray(doc)) return fail("not a JSON object");
  const d = doc as Record<string, unknown>;
  if (d["kind"] !== KEY_DIRECTORY_KIND) return fail(`kind is not "${KEY_DIRECTORY_KIND}"`);
  if (d["version"] !== 1) return fail("version is not 1");
  if (!isTime(d["generated_at"])) return fail("generated_at is not an ISO 8601 time");
  if (!Array.isArray(d["keys"])) return fail("keys is not an array");
  const seen = new Set<string>();
  const keys: DirectoryKey[] = [];
  for (const [i, raw] of (d["keys"] as unknown[]).entries()) {
    const where = `keys[${i}]`;
    if (typeof raw !== "object" || raw === null) return fail(`${where} is not an object`);
    const k = raw as Record<string, unknown>;
    if (typeof k["key_id"] !== "string" || !KEY_ID.test(k["key_id"])) {
      return fail(`${where}.key_id is not 16 lowercase hex digits`);
    }
    if (seen.has(k["key_id"])) return fail(`${where}.key_id ${k["key_id"]} is listed twice`);
    seen.add(k["key_id"]);
    if (typeof k["plane"] !== "string" || !NAME.test(k["plane"])) return fail(`${where}.plane is not a name`);
    if (typeof k["region"] !== "string" || !NAME.test(k["region"]))
      return fail(`${where}.region is not a slug`);
    if (k["alg"] !== "ed25519") return fail(`${where}.alg is not "ed25519"`);
    if (typeof k["public_key"] !== "string" || !PUBLIC_KEY.test(k["public_key"])) {
      return fail(`${where}.public_key is not a raw Ed25519 key in base64url`);
    }
    if (!isTime(k["valid_from"])) return fail(`${where}.valid_from is not an ISO 8601 time`);
    if (k["retired_at"] !== null && !isTime(k["retired_at"])) {
      return fail(`${where}.retired_at is neither null nor an ISO 8601 time`);
    }
    if (
      k["retired_at"] !== null &&
      Date.parse(k["retired_at"] as string) < Date.parse(k["valid_from"] as string)
    ) {
      return fail(`${where} is retired before it is valid`);
    }
    keys.push({
      key_id: k["key_id"],
      plane: k["plane"],
      region: k["region"],
      alg: "ed25519",
      public_key: k["public_key"],
      valid_from: k["valid_from"] as string,
      retired_at: k["retired_at"] as string | null,
    });
  }
  return {
    ok: true,
    directory: { kind: KEY_DIRECTORY_KIND, version: 1, generated_at: d["generated_at"] as string, keys },
  };
}

export type KeyLookup =
  | { ok: true; key: DirectoryKey }
  | { ok: false; reason: "unknown_key" }
  | { ok: false; reason: "not_yet_valid" | "retired"; key: DirectoryKey };

/** The key named `keyId` if it was valid at `atSeconds` (unix seconds, as RFC 9421's `created`). */
export function findKey(directory: KeyDirectory, keyId: string, atSeconds: number): KeyLookup {
  const key = directory.keys.find((k) => k.key_id === keyId);
  if (key === undefined) return { ok: false, reason: "unknown_key" };
  const from = Math.floor(Date.parse(key.valid_from) / 1000) - KEY_VALIDITY_SKEW_S;
  if (atSeconds < from) return { ok: false, reason: "not_yet_valid", key };
  if (
    key.retired_at !== null &&
    atSeconds >= Math.ceil(Date.parse(key.retired_at) / 1000) + KEY_VALIDITY_SKEW_S
  ) {
    return { ok: false, reason: "retired", key };
  }
  return { ok: true, key };
}

/** Builds a directory from rows such as the control plane's `plane_keys` joined with `planes`. */
export function keyDirectory(keys: readonly DirectoryKey[], generatedAt: Date): KeyDirectory {
  return { kind: KEY_DIRECTORY_KIND, version: 1, generated_at: generatedAt.toISOString(), keys: [...keys] };
}

/** A short description of a key's validity window, for messages. */
export function validityOf(key: DirectoryKey): string {
  return key.retired_at === null
    ? `valid from ${key.valid_from}`
    : `valid ${key.valid_from} to ${key.retired_at}`;
}

function isTime(v: unknown): v is string {
  return typeof v === "string" && /^\d{4}-\d{2}-\d{2}T/.test(v) && Number.isFinite(Date.parse(v));
}
