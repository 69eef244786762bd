// The tamper-evident form of a plane's audit trail (issue 14, item 3), shared by the writer
// (src/gateway/audit.ts) and the offline checker (`meridian verify --audit`). A file is JSON lines: each
// batch's records, then one seal line that commits to them (their bytes, hashed with the seal's fields),
// chains to the previous seal by hash, and is signed with the plane's Ed25519 key. The checker walks the
// files and reports the first place the chain breaks, with file and byte offset.

import { createHash, type KeyObject, sign, verify } from "node:crypto";
import { open, readdir, stat } from "node:fs/promises";
import { join } from "node:path";
import { crc32 } from "node:zlib";
import { canonicalJson } from "../core/canonical-json.ts";
import { findKey, type KeyDirectory, validityOf } from "../core/key-directory.ts";
import { publicKeyOf } from "./receipts.ts";

/** `prev` of the very first seal of a plane's chain. */
export const GENESIS = "0".repeat(64);
/** Domain separation: what is hashed and what is signed can never be mistaken for another of the key's uses. */
const HASH_TAG = "meridian-audit/1\n";
const SIGNATURE_TAG = "meridian-audit-batch/1\n";

/** `audit-{seq of its first seal, 12 digits}-{UTC start, seconds}.jsonl`: sorted by name is sorted in time. */
const AUDIT_FILE = /^audit-(\d{12})-(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z\.jsonl$/;
/** Files of the size-rotated log before the chain existed; read by queries, never chained. */
export const LEGACY_FILE = /^audit\.jsonl(?:\.\d+)?$/;

export function auditFileName(seq: number, ms: number): string {
  const t = new Date(ms)
    .toISOString()
    .replace(/[-:]/g, "")
    .replace(/\.\d{3}Z$/, "Z");
  return `audit-${String(seq).padStart(12, "0")}-${t}.jsonl`;
}

export function parseAuditFileName(name: string): { seq: number; startMs: number } | null {
  const m = AUDIT_FILE.exec(name);
  if (m === null) return null;
  const [, seq, y, mo, d, h, mi, s] = m;
  return { seq: Number(seq), startMs: Date.UTC(+y!, +mo! - 1, +d!, +h!, +mi!, +s!) };
}

/** The chain's files in a directory, oldest first, and the legacy ones. */
export async function listAuditFiles(dir: string): Promise<{ chain: string[]; legacy: string[] }> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return { chain: [], legacy: [] };
    throw err;
  }
  return {
    chain: names.filter((n) => AUDIT_FILE.test(n)).sort(),
    legacy: names.filter((n) => LEGACY_FILE.test(n)).sort(),
  };
}

/** Bytes of the previous file left after its last seal when a process died mid-write (found at restart). */
export interface TornTail {
  file: string;
  offset: number;
  bytes: number;
}

/** Retention removed every file before the one whose first seal follows `seq`/`hash`. */
export interface PrunedThrough {
  files: string[];
  seq: number;
  hash: string;
}

/** What a seal commits to, besides the bytes of its records. */
export interface SealFields {
  plane: string | null;
  region: string | null;
  seq: number;
  prev: string;
  /** Records in the batch, and their bytes (each line with its newline). */
  n: number;
  bytes: number;
  /**
   * CRC-32 of each record line, 8 hex digits each: a locator that lets the checker say which record was
   * changed, removed or moved. Integrity rests on `hash`, never on these.
   */
  crc: string;
  min_time: string | null;
  max_time: string | null;
  sealed_at: string;
  /** Present on the first seal a process writes: it (re)started, and found these torn tails. */
  opened?: { recovered: TornTail[] };
  pruned?: PrunedThrough;
}

export interface AuditSeal extends SealFields {
  t: "seal";
  v: 1;
  /** sha256 (hex) of the tag, the canonical JSON of the fields, a newline, and the records' bytes. */
  hash: string;
  keyid: string | null;
  /** Ed25519 (base64url) of the signature tag and `hash`; null when the plane had no key yet. */
  sig: string | null;
}

export interface AuditSigningKey {
  keyId: string;
  privateKey: KeyObject;
}

export function sealHash(fields: SealFields, records: Uint8Array): string {
  return createHash("sha256")
    .update(HASH_TAG)
    .update(canonicalJson({ t: "seal", v: 1, ...fields }))
    .update("\n")
    .update(records)
    .digest("hex");
}

/** The CRC list of the lines in `records`, given each line's length. */
export function crcList(records: Uint8Array, lineLengths: readonly number[]): string {
  let out = "";
  let offset = 0;
  for (const len of lineLengths) {
    out += crc32(records.subarray(offset, offset + len))
      .toString(16)
      .padStart(8, "0");
    offset += len;
  }
  return out;
}

export function sealBatch(fields: SealFields, records: Uint8Array, key: AuditSigningKey | null): AuditSeal {
  const hash = sealHash(fields, records);
  return {
    t: "seal",
    v: 1,
    ...fields,
    hash,
    keyid: key?.keyId ?? null,
    sig:
      key === null
        ? null
        : sign(null, Buffer.from(SIGNATURE_TAG + hash), key.privateKey).toString("base64url"),
  };
}

export function sealSignatureValid(seal: AuditSeal, publicKey: KeyObject): boolean {
  if (seal.sig === null || !/^[A-Za-z0-9_-]{86}$/.test(seal.sig)) return false;
  try {
    return verify(
      null,
      Buffer.from(SIGNATURE_TAG + seal.hash),
      publicKey,
      Buffer.from(seal.sig, "base64url"),
    );
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------------------------------------------------
// Reading.

export interface Line {
  offset: number;
  /** The line without its newline. */
  bytes: Buffer;
  /** False for a last line with no newline: a write cut short. */
  complete: boolean;
}

/** The lines of a file with their byte offsets, read in chunks (audit files are large). */
export async function* readLines(path: string, chunkBytes = 1 << 20): AsyncGenerator<Line> {
  const file = await open(path, "r");
  try {
    let carry = Buffer.alloc(0);
    let carryOffset = 0;
    let position = 0;
    const chunk = Buffer.allocUnsafe(chunkBytes);
    for (;;) {
      const { bytesRead } = await file.read(chunk, 0, chunkBytes, position);
      if (bytesRead === 0) break;
      position += bytesRead;
      const data =
        carry.length === 0
          ? chunk.subarray(0, bytesRead)
          : Buffer.concat([carry, chunk.subarray(0, bytesRead)]);
      let start = 0;
      for (let nl = data.indexOf(0x0a, start); nl >= 0; nl = data.indexOf(0x0a, start)) {
        yield { offset: carryOffset + start, bytes: Buffer.from(data.subarray(start, nl)), complete: true };
        start = nl + 1;
      }
      carryOffset += start;
      carry = Buffer.from(data.subarray(start));
    }
    if (carry.length > 0) yield { offset: carryOffset, bytes: carry, complete: false };
  } finally {
    await file.close();
  }
}

const SEAL_PREFIX = Buffer.from('{"t":"seal"');
const EXPORT_PREFIX = Buffer.from('{"t":"export"');

/** A seal line, parsed and shape-checked; null for a record line or anything else. */
export function parseSeal(bytes: Buffer): AuditSeal | null | "malformed" {
  if (!bytes.subarray(0, SEAL_PREFIX.length).equals(SEAL_PREFIX)) return null;
  let s: AuditSeal;
  try {
    s = JSON.parse(bytes.toString("utf8")) as AuditSeal;
  } catch {
    return "malformed";
  }
  const hex = /^[0-9a-f]{64}$/;
  const ok =
    s.v === 1 &&
    Number.isSafeInteger(s.seq) &&
    s.seq >= 0 &&
    typeof s.prev === "string" &&
    hex.test(s.prev) &&
    typeof s.hash === "string" &&
    hex.test(s.hash) &&
    Number.isSafeInteger(s.n) &&
    s.n >= 0 &&
    Number.isSafeInteger(s.bytes) &&
    typeof s.crc === "string" &&
    typeof s.sealed_at === "string";
  return ok ? s : "malformed";
}

// ---------------------------------------------------------------------------------------------------------
// Checking.

export type BreakKind =
  | "record_modified"
  | "record_deleted"
  | "record_inserted"
  | "records_reordered"
  | "seal_modified"
  | "seal_malformed"
  | "batch_missing"
  | "chain_broken"
  | "file_missing"
  | "unsealed_records"
  | "bad_signature"
  | "unknown_key"
  | "other_plane";

export interface ChainBreak {
  kind: BreakKind;
  file: string;
  offset: number;
  /** The seal the break was found at, when there is one. */
  seq: number | null;
  message: string;
}

export interface AuditCheck {
  /** No break. A torn tail after a crash is not a break. */
  ok: boolean;
  files: string[];
  batches: number;
  records: number;
  /** Seals written while the plane had no key: chained, but anyone could have written them. */
  unsigned: number;
  /** Signed seals whose key the checker's key source could not name (see SealKeys). */
  unverified: number;
  /** Whether signatures were checked (a key source was given). */
  signaturesChecked: boolean;
  /** Where the walked chain starts: its first seal's seq and prev. */
  first: { seq: number; prev: string } | null;
  head: { seq: number; hash: string; file: string; sealed_at: string } | null;
  /**
   * Bytes after a file's last seal: a write cut short by a crash. Acknowledged when the next process's
   * first seal lists them; the last file's is a crash not yet restarted from. Their records are not proven.
   */
  torn: Array<TornTail & { records: number; acknowledged: boolean }>;
  break: ChainBreak | null;
  legacy: string[];
}

/**
 * How the checker finds a seal's public key: from a key directory, or the plane's own keys. Null: this
 * source cannot tell (a plane's own check of a seal by a key it no longer holds); the seal is counted as
 * unverified, not as a break.
 */
export type SealKeys = (
  seal: AuditSeal,
) => { ok: true; key: KeyObject } | { ok: false; kind: BreakKind; message: string } | null;

export function directorySealKeys(directory: KeyDirectory): SealKeys {
  return (seal) => {
    const at = Math.floor(Date.parse(seal.sealed_at) / 1000);
    const found = findKey(directory, seal.keyid ?? "", Number.isFinite(at) ? at : 0);
    if (!found.ok) {
      return found.reason === "unknown_key"
        ? { ok: false, kind: "unknown_key", message: `key ${seal.keyid} is not in the key directory` }
        : {
            ok: false,
            kind: "bad_signature",
            message: `key ${seal.keyid} was not valid at ${seal.sealed_at} (${validityOf(found.key)})`,
          };
    }
    if (seal.plane !== null && (found.key.plane !== seal.plane || found.key.region !== seal.region)) {
      return {
        ok: false,
        kind: "other_plane",
        message: `the seal is for plane ${seal.plane} (${seal.region}) but key ${found.key.key_id} is plane ${found.key.plane}'s (${found.key.region})`,
      };
    }
    return { ok: true, key: publicKeyOf(found.key.public_key) };
  };
}

/** The plane's own keys: a seal by a key not among them is left unverified. */
export function keyMapSealKeys(keys: ReadonlyMap<string, KeyObject>): SealKeys {
  return (seal) => {
    const key = keys.get(seal.keyid ?? "");
    return key === undefined ? null : { ok: true, key };
  };
}

export interface CheckOptions {
  keys?: SealKeys;
}

/**
 * Walks one chain's lines file by file. After the first break it keeps reading, re-anchored at each seal,
 * only to collect retention declarations: the first break is what is reported.
 */
class ChainWalker {
  readonly out: AuditCheck;
  #expect: { seq: number; hash: string } | null;
  #pending: Line[] = [];
  #pendingFile = "";
  #unacknowledged: Array<TornTail & { records: number }> = [];
  #declared: PrunedThrough[] = [];
  #plane: { plane: string | null; region: string | null } | null = null;
  #firstAt: { file: string; offset: number } | null = null;

  constructor(
    readonly keys: SealKeys | undefined,
    anchor: { seq: number; hash: string } | null,
  ) {
    this.#expect = anchor;
    this.out = emptyCheck(keys !== undefined);
  }

  #break(kind: BreakKind, file: string, offset: number, seq: number | null, message: string): void {
    if (this.out.break === null) this.out.break = { kind, file, offset, seq, message };
    this.out.ok = false;
  }

  line(file: string, line: Line): void {
    const seal = line.complete ? parseSeal(line.bytes) : null;
    if (seal === "malformed") {
      this.#break("seal_malformed", file, line.offset, null, "a seal line that does not parse");
      this.#pending = [];
      return;
    }
    if (seal === null) {
      if (this.#pending.length === 0) this.#pendingFile = file;
      this.#pending.push(line);
      return;
    }
    this.#seal(file, line, seal);
  }

  #seal(file: string, line: Line, seal: AuditSeal): void {
    const records = this.#pending;
    this.#pending = [];
    const broken = this.out.break !== null;
    const at = (offset: number, kind: BreakKind, message: string) =>
      this.#break(kind, file, offset, seal.seq, message);
    if (this.#firstAt === null) {
      this.#firstAt = { file, offset: line.offset };
      this.out.first = { seq: seal.seq, prev: seal.prev };
    }

    // Torn tails of earlier files must be acknowledged by the next process's first seal, exactly.
    if (this.#unacknowledged.length > 0) {
      const claimed = seal.opened?.recovered ?? [];
      const same =
        claimed.length === this.#unacknowledged.length &&
        claimed.every(
          (c, i) =>
            c.file === this.#unacknowledged[i]!.file &&
            c.offset === this.#unacknowledged[i]!.offset &&
            c.bytes === this.#unacknowledged[i]!.bytes,
        );
      const t = this.#unacknowledged[0]!;
      if (!same) {
        this.#break(
          "unsealed_records",
          t.file,
          t.offset,
          null,
          `${t.bytes} bytes after the last seal of ${t.file} that no seal covers, and the next seal does not record them as a crash's torn tail`,
        );
      }
      for (const u of this.#unacknowledged) this.out.torn.push({ ...u, acknowledged: same });
      this.#unacknowledged = [];
    }

    const data = Buffer.concat(records.flatMap((r) => [r.bytes, NEWLINE]));
    const hash = sealHash(fieldsOf(seal), data);
    const selfConsistent = hash === seal.hash;
    if (!broken) {
      if (!selfConsistent) this.#locate(records, seal, file, line.offset);
      if (this.#expect !== null) {
        if (seal.seq !== this.#expect.seq + 1 || seal.prev !== this.#expect.hash) {
          if (seal.seq > this.#expect.seq + 1) {
            at(
              records[0]?.offset ?? line.offset,
              "batch_missing",
              `batch ${this.#expect.seq + 1}${seal.seq > this.#expect.seq + 2 ? `–${seal.seq - 1}` : ""} is missing: after seal ${this.#expect.seq} comes seal ${seal.seq}`,
            );
          } else {
            at(
              line.offset,
              "chain_broken",
              `seal ${seal.seq} does not follow seal ${this.#expect.seq} (${this.#expect.hash.slice(0, 12)}…)`,
            );
          }
        }
      }
      // A log first written without its plane's name (plane null) may be given one later, once.
      if (this.#plane === null || this.#plane.plane === null)
        this.#plane = { plane: seal.plane, region: seal.region };
      else if (this.#plane.plane !== seal.plane || this.#plane.region !== seal.region) {
        at(
          line.offset,
          "other_plane",
          `seal ${seal.seq} names plane ${seal.plane} (${seal.region}), not ${this.#plane.plane}`,
        );
      }
      if (seal.sig === null) {
        this.out.unsigned++;
      } else if (this.keys !== undefined && selfConsistent) {
        const k = this.keys(seal);
        if (k === null) this.out.unverified++;
        else if (!k.ok) at(line.offset, k.kind, k.message);
        else if (!sealSignatureValid(seal, k.key))
          at(
            line.offset,
            "bad_signature",
            `seal ${seal.seq}'s signature does not verify with key ${seal.keyid}`,
          );
      }
    }
    // A declaration counts only from a seal that holds together (and verifies, when keys are known).
    if (
      seal.pruned !== undefined &&
      selfConsistent &&
      (!this.keys || (seal.sig !== null && this.#verifies(seal)))
    ) {
      this.#declared.push(seal.pruned);
    }
    this.#expect = { seq: seal.seq, hash: seal.hash };
    this.out.batches++;
    this.out.records += seal.n;
    this.out.head = { seq: seal.seq, hash: seal.hash, file, sealed_at: seal.sealed_at };
  }

  #verifies(seal: AuditSeal): boolean {
    const k = this.keys!(seal);
    return k === null || (k.ok && sealSignatureValid(seal, k.key));
  }

  /** The seal's hash does not match: find what changed, from the CRC locator. */
  #locate(records: Line[], seal: AuditSeal, file: string, sealOffset: number): void {
    const found = locateChange(records, seal, sealOffset);
    this.#break(found.kind, file, found.offset, seal.seq, found.message);
  }

  endFile(file: string, size: number): void {
    this.out.files.push(file);
    if (this.#pending.length === 0) return;
    const first = this.#pending[0]!;
    const records = this.#pending.filter((l) => l.complete).length;
    this.#unacknowledged.push({
      file: this.#pendingFile,
      offset: first.offset,
      bytes: size - first.offset,
      records,
    });
    this.#pending = [];
  }

  finish(mode: "directory" | "export"): AuditCheck {
    // The last file's torn tail: the crash the process has not restarted from. Not tampering.
    for (const u of this.#unacknowledged) this.out.torn.push({ ...u, acknowledged: false });
    const first = this.out.first;
    if (mode === "directory" && first !== null && this.#firstAt !== null) {
      const genesis = first.seq === 0 && first.prev === GENESIS;
      const declared = this.#declared.some((d) => d.seq === first.seq - 1 && d.hash === first.prev);
      if (!genesis && !declared) {
        // It is the earliest position of all, so it is the first break, whatever was found later.
        this.out.break = null;
        this.#break(
          "file_missing",
          this.#firstAt.file,
          0,
          first.seq,
          `the chain starts at seal ${first.seq}, but seal ${first.seq - 1} is neither here nor declared removed by retention`,
        );
      }
    }
    return this.out;
  }
}

const NEWLINE = Buffer.from("\n");

/** What differs between a batch's lines and its seal's CRC list: which record, and how. */
function locateChange(
  records: readonly Line[],
  seal: AuditSeal,
  sealOffset: number,
): { kind: BreakKind; offset: number; message: string } {
  const want: string[] = seal.crc.match(/.{8}/g) ?? [];
  const have = records.map((r) =>
    crc32(Buffer.concat([r.bytes, NEWLINE]))
      .toString(16)
      .padStart(8, "0"),
  );
  const altered = {
    kind: "seal_modified" as const,
    offset: sealOffset,
    message: `seal ${seal.seq} was altered`,
  };
  if (want.length !== seal.n) return altered;
  let firstDiff = -1;
  for (let i = 0; i < Math.max(want.length, have.length) && firstDiff < 0; i++)
    if (want[i] !== have[i]) firstDiff = i;
  const offsetOf = (i: number) => records[i]?.offset ?? sealOffset;
  if (have.length < want.length) {
    const message = `record ${firstDiff + 1} of batch ${seal.seq} (of ${seal.n}) was removed`;
    return { kind: "record_deleted", offset: offsetOf(firstDiff), message };
  }
  if (have.length > want.length) {
    const extra = have.length - want.length;
    if (have.slice(extra).join() === want.join()) {
      const message = `${extra} records before batch ${seal.seq} are covered by no seal: the seal after them was removed`;
      return { kind: "unsealed_records", offset: offsetOf(0), message };
    }
    const message = `a record was added to batch ${seal.seq} (${have.length} lines, sealed ${seal.n})`;
    return { kind: "record_inserted", offset: offsetOf(firstDiff), message };
  }
  if (firstDiff < 0) return altered;
  const sorted = (xs: string[]) => [...xs].sort().join();
  if (sorted(want) === sorted(have)) {
    const message = `the records of batch ${seal.seq} are out of order from record ${firstDiff + 1}`;
    return { kind: "records_reordered", offset: offsetOf(firstDiff), message };
  }
  return {
    kind: "record_modified",
    offset: offsetOf(firstDiff),
    message: `record ${firstDiff + 1} of batch ${seal.seq} was modified`,
  };
}

function emptyCheck(signaturesChecked: boolean): AuditCheck {
  return {
    ok: true,
    files: [],
    batches: 0,
    records: 0,
    unsigned: 0,
    unverified: 0,
    signaturesChecked,
    first: null,
    head: null,
    torn: [],
    break: null,
    legacy: [],
  };
}

function fieldsOf(seal: AuditSeal): SealFields {
  const { t: _t, v: _v, hash: _h, keyid: _k, sig: _s, ...fields } = seal;
  return fields;
}

/** Checks every chained file of an audit directory, oldest first. */
export async function checkAuditDirectory(dir: string, options: CheckOptions = {}): Promise<AuditCheck> {
  const { chain, legacy } = await listAuditFiles(dir);
  const walker = new ChainWalker(options.keys, null);
  for (const name of chain) {
    const path = join(dir, name);
    for await (const line of readLines(path)) walker.line(name, line);
    walker.endFile(name, (await stat(path)).size);
  }
  const out = walker.finish("directory");
  out.legacy = legacy;
  return out;
}

/** The header line of an export: what it covers and the chain heads it starts and ends at. */
export interface AuditExportHeader {
  t: "export";
  v: 1;
  plane: string | null;
  region: string | null;
  from: string | null;
  to: string | null;
  /** The seal before the first exported one (`prev` of the first), and the last exported seal. */
  first: { seq: number; prev: string } | null;
  last: { seq: number; hash: string } | null;
  batches: number;
}

/** Checks an export file (a header line, then records and seals as in the audit files). */
export async function checkAuditExport(
  path: string,
  options: CheckOptions = {},
): Promise<AuditCheck & { header: AuditExportHeader | null }> {
  let header: AuditExportHeader | null = null;
  let walker: ChainWalker | null = null;
  let size = 0;
  for await (const line of readLines(path)) {
    size = line.offset + line.bytes.length + (line.complete ? 1 : 0);
    if (walker === null) {
      if (!line.bytes.subarray(0, EXPORT_PREFIX.length).equals(EXPORT_PREFIX)) break;
      header = JSON.parse(line.bytes.toString("utf8")) as AuditExportHeader;
      const anchor = header.first === null ? null : { seq: header.first.seq - 1, hash: header.first.prev };
      walker = new ChainWalker(options.keys, anchor);
      continue;
    }
    walker.line("export", line);
  }
  if (walker === null || header === null) {
    const message = "not an audit export: its first line is not an export header";
    return {
      ...emptyCheck(false),
      ok: false,
      break: { kind: "seal_malformed", file: "export", offset: 0, seq: null, message },
      header: null,
    };
  }
  walker.endFile("export", size);
  const out = walker.finish("export");
  if (
    out.ok &&
    header.last !== null &&
    (out.head?.seq !== header.last.seq || out.head?.hash !== header.last.hash)
  ) {
    out.ok = false;
    out.break = {
      kind: "batch_missing",
      file: "export",
      offset: size,
      seq: out.head?.seq ?? null,
      message: `the export says it ends at seal ${header.last.seq}, but its last seal is ${out.head?.seq ?? "none"}`,
    };
  }
  return { ...out, header };
}

/** Checks a run of batches as they come (an export's, before it leaves the plane); `anchor` is the seal before. */
export class BatchChecker {
  readonly #walker: ChainWalker;
  constructor(anchor: { seq: number; hash: string } | null, options: CheckOptions = {}) {
    this.#walker = new ChainWalker(options.keys, anchor);
  }

  add(b: { file: string; offset: number; seal: AuditSeal; records: readonly string[] }): void {
    let offset = b.offset;
    for (const r of b.records) {
      const bytes = Buffer.from(r, "utf8");
      this.#walker.line(b.file, { offset, bytes, complete: true });
      offset += bytes.length + 1;
    }
    this.#walker.line(b.file, { offset, bytes: Buffer.from(JSON.stringify(b.seal)), complete: true });
  }

  finish(): AuditCheck {
    return this.#walker.finish("export");
  }
}
