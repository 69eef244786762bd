// Encryption of team secrets at rest: AES-256-GCM (NIST SP 800-38D) with a random 96-bit nonce per value
// and the team id and secret name as associated data, so a ciphertext moved to another row fails to open.
// The keys live in a file apart from the database; each is named by an id derived from the key itself,
// stored beside every ciphertext, so a new key can encrypt while older ones still decrypt (rotation).

import { createCipheriv, createDecipheriv, createHmac, randomBytes } from "node:crypto";
import { closeSync, fsyncSync, linkSync, openSync, readFileSync, rmSync, statSync, writeSync } from "node:fs";
import { dirname } from "node:path";

const KEY_BYTES = 32;
/** 96 bits: the IV length SP 800-38D §8.2.2 recommends for random IVs. */
const NONCE_BYTES = 12;
const TAG_BYTES = 16;
/** A key file is a few lines; anything much larger is not one. */
const MAX_KEY_FILE_BYTES = 64 * 1024;
const FORMAT = "meridian-secret";
const FORMAT_VERSION = 1;

/** A key file that cannot be used. Its message never contains key material, so it may be printed. */
export class SecretsKeyError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "SecretsKeyError";
  }
}

/** A ciphertext that does not open: another key, another row, or damaged. Never carries a value. */
export class SecretOpenError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "SecretOpenError";
  }
}

/** What a value is sealed for: the row it may be read from. */
export interface SecretContext {
  team_id: string;
  name: string;
}

export interface SealedSecret {
  /** The id of the key that sealed it (`SecretBox.keyIds`). */
  key_id: string;
  /** base64 of nonce ‖ ciphertext ‖ GCM tag. */
  sealed: string;
}

/** A key's id: an HMAC of a fixed label under the key, so the id names the key without revealing it. */
function keyIdOf(key: Buffer): string {
  return createHmac("sha256", key).update("meridian secrets key id").digest("hex").slice(0, 16);
}

/** Associated data, unambiguous for any team id and name (JSON array). */
function associatedData(context: SecretContext): Buffer {
  return Buffer.from(JSON.stringify([FORMAT, FORMAT_VERSION, context.team_id, context.name]), "utf8");
}

export class SecretBox {
  /** By key id; private fields are invisible to util.inspect, JSON and loggers. */
  readonly #keys: Map<string, Buffer>;
  /** The key that seals new values: the first of the file. */
  readonly currentKeyId: string;
  /** Where the keys came from, for messages. */
  readonly source: string;

  private constructor(keys: Buffer[], source: string) {
    this.#keys = new Map(keys.map((k) => [keyIdOf(k), k]));
    this.currentKeyId = keyIdOf(keys[0]!);
    this.source = source;
  }

  /**
   * Parses a key file: one base64-encoded 32-byte key per line, the first seals, all of them open; blank
   * lines and lines starting with `#` are ignored.
   */
  static parse(text: string, source: string): SecretBox {
    const keys: Buffer[] = [];
    const lines = text.split(/\r?\n/);
    for (const [i, raw] of lines.entries()) {
      const line = raw.trim();
      if (line === "" || line.startsWith("#")) continue;
      const key = /^[A-Za-z0-9+/]{43}=$/.test(line) ? Buffer.from(line, "base64") : null;
      // The line itself is never quoted: it may be a key with a typo.
      if (key === null || key.length !== KEY_BYTES) {
        throw new SecretsKeyError(
          `${source}: line ${i + 1} is not a key (each key is ${KEY_BYTES} random bytes in base64, 44 characters).`,
        );
      }
      keys.push(key);
    }
    if (keys.length === 0) throw new SecretsKeyError(`${source} holds no key.`);
    return new SecretBox(keys, source);
  }

  /** Every key id this box opens, the sealing one first. */
  get keyIds(): string[] {
    return [this.currentKeyId, ...[...this.#keys.keys()].filter((id) => id !== this.currentKeyId)];
  }

  seal(value: string, context: SecretContext): SealedSecret {
    const nonce = randomBytes(NONCE_BYTES);
    const cipher = createCipheriv("aes-256-gcm", this.#keys.get(this.currentKeyId)!, nonce, {
      authTagLength: TAG_BYTES,
    });
    cipher.setAAD(associatedData(context));
    const body = Buffer.concat([cipher.update(value, "utf8"), cipher.final()]);
    return {
      key_id: this.currentKeyId,
      sealed: Buffer.concat([nonce, body, cipher.getAuthTag()]).toString("base64"),
    };
  }

  open(secret: SealedSecret, context: SecretContext): string {
    const key = this.#keys.get(secret.key_id);
    if (!key) {
      throw new SecretOpenError(`No key with id ${secret.key_id} in ${this.source}.`);
    }
    const bytes = Buffer.from(secret.sealed, "base64");
    if (bytes.length < NONCE_BYTES + TAG_BYTES) throw new SecretOpenError("The ciphertext is truncated.");
    const decipher = createDecipheriv("aes-256-gcm", key, bytes.subarray(0, NONCE_BYTES), {
      authTagLength: TAG_BYTES,
    });
    decipher.setAAD(associatedData(context));
    decipher.setAuthTag(bytes.subarray(bytes.length - TAG_BYTES));
    try {
      const plain = Buffer.concat([
        decipher.update(bytes.subarray(NONCE_BYTES, bytes.length - TAG_BYTES)),
        decipher.final(),
      ]);
      return plain.toString("utf8");
    } catch {
      throw new SecretOpenError(
        `The ciphertext does not open with key ${secret.key_id} for this team and name: it was sealed for another row, or it is damaged.`,
      );
    }
  }

  toJSON() {
    return { source: this.source, key_ids: this.keyIds };
  }
}

/** The text of a new key file: one fresh random key. */
export function newKeyFileText(): string {
  return (
    "# Meridian secrets key file: the first key encrypts, every key listed decrypts.\n" +
    "# Keep it apart from the database backups; every control replica needs the same file.\n" +
    `${randomBytes(KEY_BYTES).toString("base64")}\n`
  );
}

/**
 * Opens the key file at `path`. With `create`, a missing file is created with a new key, mode 0600,
 * exclusively (two processes starting at once end up with the same key). A file that group or others may
 * read or write is refused, as ssh refuses such a private key.
 */
export function loadSecretsKeyFile(path: string, options: { create: boolean }): SecretBox {
  let stat = statOrNull(path);
  if (stat === null) {
    if (!options.create) throw new SecretsKeyError(`The secrets key file ${path} does not exist.`);
    createExclusively(path, newKeyFileText());
    stat = statOrNull(path);
    if (stat === null) throw new SecretsKeyError(`The secrets key file ${path} could not be created.`);
  }
  if (!stat.isFile()) throw new SecretsKeyError(`The secrets key file ${path} is not a regular file.`);
  if ((stat.mode & 0o077) !== 0) {
    const mode = (stat.mode & 0o777).toString(8).padStart(4, "0");
    throw new SecretsKeyError(
      `The secrets key file ${path} is open to group or others (mode ${mode}); make it the owner's alone: chmod 600 ${path}.`,
    );
  }
  if (stat.size > MAX_KEY_FILE_BYTES) {
    throw new SecretsKeyError(`The secrets key file ${path} is larger than a key file can be.`);
  }
  return SecretBox.parse(readFileSync(path, "utf8"), path);
}

function statOrNull(path: string) {
  try {
    return statSync(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw new SecretsKeyError(`The secrets key file ${path} cannot be read: ${(err as Error).message}`);
  }
}

/**
 * Writes a temp file, then hard-links it into place: atomic, and it never replaces an existing file. Both
 * are flushed to disk first: a key lost in a crash would make every value sealed with it unreadable.
 */
function createExclusively(path: string, text: string): void {
  const tmp = `${path}.${process.pid}.${randomBytes(4).toString("hex")}.tmp`;
  const fd = openSync(tmp, "wx", 0o600);
  try {
    writeSync(fd, text);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  try {
    linkSync(tmp, path);
  } catch (err) {
    // Another process created it first: use theirs.
    if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
  } finally {
    rmSync(tmp, { force: true });
  }
  const dir = openSync(dirname(path), "r");
  try {
    fsyncSync(dir);
  } finally {
    closeSync(dir);
  }
}
