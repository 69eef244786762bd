// The public keys this plane has signed with (`{data-dir}/plane-keys.json`), kept after the private key
// file is replaced: the plane checks its own audit chain (evidence pieces) with every one of them, and
// reports when its current key was first used, so the key directory dates it from then and not from
// whenever the control plane first heard of it (a plane started with a new key while the control plane
// was down signs receipts before that).

import type { KeyObject } from "node:crypto";
import { constants } from "node:fs";
import { open, readFile, rename, rm, stat } from "node:fs/promises";
import { publicKeyObject, type SigningKey } from "../lib/keys.ts";

export const KEY_HISTORY_KIND = "meridian-plane-keys";

export interface KeyHistoryEntry {
  key_id: string;
  /** Raw Ed25519 public key, base64url. */
  public_key: string;
  /** ISO 8601: when this plane first had the key (its creation, or the key file's mtime for an older one). */
  since: string;
}

export interface KeyHistory {
  /** When the current key was first had. */
  since: string;
  entries: KeyHistoryEntry[];
  /** Every key of the history by key id, the current one included. */
  verifyingKeys: ReadonlyMap<string, KeyObject>;
  /** Set when the file could not be read and was started anew (the reason). */
  reset: string | null;
}

/**
 * Reads the history, adds the current key when it is new to it, and writes it back (atomically, 0600).
 * `created`: the key file was written by this start, so the key is as new as `nowMs`; otherwise a key the
 * history does not know yet is dated by its file's mtime, the latest it can have been written.
 */
export async function recordPlaneKey(
  file: string,
  keyFile: string,
  key: SigningKey,
  created: boolean,
  nowMs: number,
): Promise<KeyHistory> {
  let entries: KeyHistoryEntry[] = [];
  let reset: string | null = null;
  try {
    entries = parseHistory(await readFile(file, "utf8"));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") reset = (err as Error).message;
  }
  let current = entries.find((e) => e.key_id === key.keyId);
  if (current !== undefined && current.public_key !== key.publicKey) {
    // Same id, another key: the file is not this plane's history. Keep what it says of other keys.
    reset = `key id ${key.keyId} names another key in the history`;
    entries = entries.filter((e) => e.key_id !== key.keyId);
    current = undefined;
  }
  if (current === undefined) {
    const since = created ? nowMs : Math.min(nowMs, (await stat(keyFile)).mtimeMs);
    current = { key_id: key.keyId, public_key: key.publicKey, since: new Date(since).toISOString() };
    entries.push(current);
    await writeHistory(file, entries);
  }
  const verifyingKeys = new Map<string, KeyObject>();
  for (const e of entries) {
    const object = publicKeyObject(e.public_key);
    if (object !== null) verifyingKeys.set(e.key_id, object);
  }
  return { since: current.since, entries, verifyingKeys, reset };
}

function parseHistory(text: string): KeyHistoryEntry[] {
  const doc = JSON.parse(text) as { kind?: unknown; keys?: unknown };
  if (doc.kind !== KEY_HISTORY_KIND || !Array.isArray(doc.keys)) {
    throw new Error(`not a ${KEY_HISTORY_KIND} document`);
  }
  const out: KeyHistoryEntry[] = [];
  for (const k of doc.keys as Array<Record<string, unknown>>) {
    const { key_id, public_key, since } = k ?? {};
    if (
      typeof key_id !== "string" ||
      !/^[0-9a-f]{16}$/.test(key_id) ||
      typeof public_key !== "string" ||
      publicKeyObject(public_key) === null ||
      typeof since !== "string" ||
      !Number.isFinite(Date.parse(since))
    ) {
      throw new Error("an entry is not {key_id, public_key, since}");
    }
    out.push({ key_id, public_key, since });
  }
  return out;
}

async function writeHistory(file: string, entries: KeyHistoryEntry[]): Promise<void> {
  const temp = `${file}.${process.pid}.tmp`;
  await rm(temp, { force: true });
  const handle = await open(temp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600);
  try {
    await handle.writeFile(
      `${JSON.stringify({ kind: KEY_HISTORY_KIND, version: 1, keys: entries }, null, 2)}\n`,
    );
    await handle.sync();
  } finally {
    await handle.close();
  }
  await rename(temp, file);
}
