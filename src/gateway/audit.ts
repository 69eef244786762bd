// The per-request audit trail of a plane (DESIGN.md §2.6, §2.10): one JSON line per request in the plane's
// own data directory, written in batches that are fsynced, hash-chained and signed (src/lib/audit-chain.ts),
// kept for a retention period in whole files, queryable and exportable on the plane, summarised into counts
// for the control plane and into signed evidence pieces. Records hold metadata only: never bodies or keys.

import { createPublicKey, type KeyObject } from "node:crypto";
import { mkdir, open, readFile, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import type { AuditRecord } from "../core/audit-record.ts";
import { type EvidencePiece, type EvidenceScope, Summarizer } from "../core/evidence.ts";
import type { PlaneReport } from "../core/snapshot.ts";
import {
  type AuditExportHeader,
  type AuditSeal,
  type AuditSigningKey,
  auditFileName,
  BatchChecker,
  crcList,
  GENESIS,
  keyMapSealKeys,
  listAuditFiles,
  type PrunedThrough,
  parseAuditFileName,
  parseSeal,
  readLines,
  type SealFields,
  sealBatch,
  type TornTail,
} from "../lib/audit-chain.ts";
import { signPiece } from "../lib/evidence.ts";

export type { AuditRecord } from "../core/audit-record.ts";

/** Where an ingress sends its audit records. */
export interface AuditSink {
  record(entry: AuditRecord): void;
}

export type RequestCount = PlaneReport["request_counts"][number];

export interface AuditQuery {
  /** Inclusive lower bound on `time` (Date, ISO string or unix ms). */
  from?: Date | string | number;
  /** Exclusive upper bound on `time`. */
  to?: Date | string | number;
  model_id?: string;
  environment?: string;
  request_id?: string;
  /** Default 100, at most 10 000. */
  limit?: number;
}

export interface AuditLogOptions {
  /** The plane's data directory (or a subdirectory of it). */
  dir: string;
  /** The plane whose records these are; every seal names it. */
  plane?: { name: string; region: string };
  /**
   * The plane's key, or a function that returns its current one. Null (or absent) while the plane has none:
   * batches are then chained but unsigned, and the checker counts them as such.
   */
  signingKey?: AuditSigningKey | null | (() => AuditSigningKey | null);
  /**
   * The plane's public keys by key id, current and retired, for its own check of the batches an evidence
   * piece covers. Default: the current signing key's; seals by other keys are then left to the auditor.
   */
  verifyingKeys?: () => ReadonlyMap<string, KeyObject>;
  /** Whole files whose last batch is older than this are removed (`--audit-retention`). Default 30 days. */
  retentionMs?: number;
  /** A new file is started when the current one would grow past this. Default 64 MiB. */
  maxFileBytes?: number;
  /**
   * …or once it is this old, so retention removes records at most this late. Default a tenth of the
   * retention, between 1 minute and 1 day (1 day for the default 30).
   */
  rotateIntervalMs?: number;
  /** Buffered records are written and fsynced at most this long after they arrive. Default 100 ms. */
  flushIntervalMs?: number;
  /** Flush early when this many records are buffered. Default 5 000. */
  maxBufferedRecords?: number;
  /** How often retention is enforced while running. Default 1 hour (and at start). */
  retentionCheckMs?: number;
  /** Called when a write fails (the batch is kept for the next flush). */
  onError?: (err: unknown) => void;
  /** The clock (unix ms); for tests that compress time. */
  now?: () => number;
}

export const DEFAULT_AUDIT_RETENTION_MS = 30 * 24 * 3600 * 1000;
const RETENTION_MIN_MS = 3600 * 1000;

/**
 * `--audit-retention`: a whole number and a unit, `d` (days, also the unit of a bare number), `h`, `m` or
 * `s`; at least one hour, so a file is never removed while its records are still being answered for.
 */
export function parseAuditRetention(value: string): { ok: true; ms: number } | { ok: false; error: string } {
  const m = /^(\d{1,6})([dhms]?)$/.exec(value.trim());
  if (m === null)
    return { ok: false, error: `--audit-retention is a number and a unit (30d, 12h, 90m), got '${value}'` };
  const unit = { d: 86_400_000, h: 3_600_000, m: 60_000, s: 1000, "": 86_400_000 }[
    m[2] as "d" | "h" | "m" | "s" | ""
  ];
  const ms = Number(m[1]) * unit;
  if (ms < RETENTION_MIN_MS) return { ok: false, error: `--audit-retention is at least 1h, got '${value}'` };
  return { ok: true, ms };
}
const QUERY_LIMIT_MAX = 10_000;
/** An export reads files started up to this long after its range: a request's record is written when it ends. */
const EXPORT_LATE_MS = 24 * 3600 * 1000;
/** Size of the chunks audit lines are buffered in until a flush. */
const CHUNK_BYTES = 256 * 1024;

/** Records waiting for their seal: their bytes, each line's length, their count and time span. */
interface Batch {
  data: Buffer[];
  lines: number[];
  minTime: string | null;
  maxTime: string | null;
}

/** One batch of an export: its records' lines exactly as written, and its seal. */
export interface ExportedBatch {
  file: string;
  offset: number;
  seal: AuditSeal;
  records: string[];
}

export interface ExportRange {
  from?: Date | string | number;
  to?: Date | string | number;
}

export class AuditLog implements AuditSink {
  readonly #dir: string;
  readonly #opts: Required<Omit<AuditLogOptions, "onError" | "plane" | "signingKey" | "verifyingKeys">> &
    Pick<AuditLogOptions, "onError" | "plane" | "verifyingKeys">;
  readonly #key: () => AuditSigningKey | null;
  // Lines wait as bytes in off-heap chunks, not as strings: thousands of strings held for up to a flush
  // interval would be copied by every young-generation GC on the ingress's hot path.
  /** Bytes ready to write, in order: filled chunks' slices. */
  #ready: Buffer[] = [];
  /** The chunk being filled; bytes from `#start` to `#used` are not handed to a write yet. */
  #chunk: Buffer = Buffer.alloc(0);
  #start = 0;
  #used = 0;
  #lines: number[] = [];
  #minTime: string | null = null;
  #maxTime: string | null = null;
  /** A batch whose write failed: sealed again, first, by the next flush. */
  #retry: Batch | null = null;
  #timer: NodeJS.Timeout | null = null;
  #retentionTimer: NodeJS.Timeout | null = null;
  #file: Awaited<ReturnType<typeof open>> | null = null;
  #fileName: string | null = null;
  #fileStart = 0;
  #size = 0;
  /** The last seal written: the next one chains to it. */
  #head = { seq: -1, hash: GENESIS };
  /** Torn tails the next seal must record (a previous process died mid-write, or a write could not be undone). */
  #torn: TornTail[] = [];
  #opening = true;
  /** A retention declaration the next seal must carry. */
  #pruned: PrunedThrough | null = null;
  /** Write a seal even with no records (to rotate an idle file, or declare a retention removal). */
  #sealEmpty = false;
  #writing: Promise<void> = Promise.resolve();
  /** model → environment ("" for none) → status class digit → count. */
  #counts = new Map<string, Map<string, RequestCount[]>>();
  /** Last seal time of files no longer written (they never change). */
  #fileEnds = new Map<string, number>();
  #stopped = false;

  constructor(options: AuditLogOptions) {
    const { signingKey, ...rest } = options;
    const retentionMs = options.retentionMs ?? DEFAULT_AUDIT_RETENTION_MS;
    this.#opts = {
      retentionMs,
      maxFileBytes: 64 * 1024 * 1024,
      rotateIntervalMs: Math.min(Math.max(retentionMs / 10, 60_000), 24 * 3600 * 1000),
      flushIntervalMs: 100,
      maxBufferedRecords: 5_000,
      retentionCheckMs: 3600 * 1000,
      now: Date.now,
      ...rest,
    };
    this.#dir = options.dir;
    this.#key = typeof signingKey === "function" ? signingKey : () => signingKey ?? null;
  }

  /** The file being written. */
  get path(): string {
    return join(this.#dir, this.#fileName ?? "");
  }

  /** The chain's head: the last seal written (seq −1 and the genesis hash before the first). */
  get head(): { seq: number; hash: string } {
    return { ...this.#head };
  }

  /**
   * Finds where the chain ends (the last seal on disk) and any torn tail after it, then opens a new file
   * whose first seal records the restart and those torn bytes, so a crash is never taken for tampering.
   */
  async start(): Promise<void> {
    await mkdir(this.#dir, { recursive: true });
    const { chain } = await listAuditFiles(this.#dir);
    // A file created just before a crash, with nothing in it, holds nothing to keep.
    while (chain.length > 0 && (await stat(join(this.#dir, chain.at(-1)!))).size === 0) {
      await rm(join(this.#dir, chain.pop()!));
    }
    for (let i = chain.length - 1; i >= 0; i--) {
      const name = chain[i]!;
      const path = join(this.#dir, name);
      const size = (await stat(path)).size;
      let last: { seal: AuditSeal; end: number } | null = null;
      for await (const line of readLines(path)) {
        const seal = line.complete ? parseSeal(line.bytes) : null;
        if (seal !== null && seal !== "malformed") last = { seal, end: line.offset + line.bytes.length + 1 };
      }
      if (last === null) {
        this.#torn.unshift({ file: name, offset: 0, bytes: size });
        continue;
      }
      this.#head = { seq: last.seal.seq, hash: last.seal.hash };
      if (last.end < size) this.#torn.unshift({ file: name, offset: last.end, bytes: size - last.end });
      break;
    }
    this.#opening = true;
    this.#sealEmpty = true;
    await this.flush();
    if (this.#opening) throw new Error(`cannot write the audit log in ${this.#dir}`);
    await this.enforceRetention();
    this.#retentionTimer = setInterval(
      () => void this.enforceRetention().catch(this.#report),
      this.#opts.retentionCheckMs,
    );
    this.#retentionTimer.unref();
  }

  /** Buffers one record; cheap enough for the hot path (one JSON.stringify, one copy, two Map lookups). */
  record(entry: AuditRecord): void {
    this.#append(JSON.stringify(entry));
    if (this.#minTime === null || entry.time < this.#minTime) this.#minTime = entry.time;
    if (this.#maxTime === null || entry.time > this.#maxTime) this.#maxTime = entry.time;
    this.#count(entry);
    if (this.#stopped) return;
    if (this.#lines.length >= this.#opts.maxBufferedRecords) {
      void this.flush();
    } else if (this.#timer === null) {
      this.#timer = setTimeout(() => void this.flush(), this.#opts.flushIntervalMs);
      this.#timer.unref();
    }
  }

  /** Seals, writes and fsyncs every buffered record. Flushes are serialized, so records keep their order. */
  flush(): Promise<void> {
    if (this.#timer !== null) {
      clearTimeout(this.#timer);
      this.#timer = null;
    }
    this.#writing = this.#writing.then(() => this.#writeBatch());
    return this.#writing;
  }

  async stop(): Promise<void> {
    if (this.#retentionTimer !== null) clearInterval(this.#retentionTimer);
    this.#retentionTimer = null;
    await this.flush();
    this.#stopped = true;
    await this.#writing;
    await this.#file?.close();
    this.#file = null;
  }

  /** Requests since the last call, by (model, environment, status class); the plane reports these. */
  takeRequestCounts(): RequestCount[] {
    const out: RequestCount[] = [];
    for (const byEnv of this.#counts.values()) {
      for (const byClass of byEnv.values()) for (const c of byClass) if (c !== undefined) out.push(c);
    }
    this.#counts = new Map();
    return out;
  }

  /** Puts counts back when a report could not be delivered, so nothing is lost or counted twice. */
  restoreRequestCounts(counts: readonly RequestCount[]): void {
    for (const c of counts) {
      this.#add(c.model_id, c.environment, Number.parseInt(c.status_class, 10), c.count);
    }
  }

  /** Matching records, newest first, from every file kept (and the size-rotated files of old versions). */
  async query(q: AuditQuery = {}): Promise<AuditRecord[]> {
    await this.flush();
    const limit = Math.min(Math.max(q.limit ?? 100, 0), QUERY_LIMIT_MAX);
    const from = q.from === undefined ? null : new Date(q.from).getTime();
    const to = q.to === undefined ? null : new Date(q.to).getTime();
    const out: AuditRecord[] = [];
    const { chain, legacy } = await listAuditFiles(this.#dir);
    const files = this.#filesFrom(chain, from).reverse();
    // Legacy files: newest is `audit.jsonl`, then `.1`, `.2`, …
    files.push(...legacy.sort((a, b) => legacyIndex(a) - legacyIndex(b)));
    for (const file of files) {
      let text: string;
      try {
        text = await readFile(join(this.#dir, file), "utf8");
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === "ENOENT") continue; // removed by retention meanwhile
        throw err;
      }
      const lines = text.split("\n");
      for (let i = lines.length - 1; i >= 0 && out.length < limit; i--) {
        const line = lines[i]!;
        if (line.length === 0 || line.startsWith('{"t":')) continue;
        let r: AuditRecord;
        try {
          r = JSON.parse(line) as AuditRecord;
        } catch {
          continue; // a torn line after a crash
        }
        if (q.request_id !== undefined && r.request_id !== q.request_id) continue;
        if (q.model_id !== undefined && r.model_id !== q.model_id) continue;
        if (q.environment !== undefined && r.environment !== q.environment) continue;
        if (from !== null || to !== null) {
          const t = Date.parse(r.time);
          if (from !== null && t < from) continue;
          if (to !== null && t >= to) continue;
        }
        out.push(r);
      }
      if (out.length >= limit) break;
    }
    return out;
  }

  /**
   * The batches that hold records of [from, to), whole and in chain order, with every batch between them so
   * the run verifies as one piece of the chain: first a header with the heads the run starts and ends at.
   * Records outside the range but in those batches come along (a batch is verified whole).
   */
  async *export(
    range: ExportRange = {},
  ): AsyncGenerator<{ type: "header"; header: AuditExportHeader } | ({ type: "batch" } & ExportedBatch)> {
    await this.flush();
    const from = range.from === undefined ? null : new Date(range.from).getTime();
    const to = range.to === undefined ? null : new Date(range.to).getTime();
    const overlaps = (s: AuditSeal) =>
      s.n > 0 &&
      s.min_time !== null &&
      s.max_time !== null &&
      (to === null || Date.parse(s.min_time) < to) &&
      (from === null || Date.parse(s.max_time) >= from);
    const { chain } = await listAuditFiles(this.#dir);
    const files = this.#filesFrom(chain, from, to);
    let first: AuditSeal | null = null;
    let last: AuditSeal | null = null;
    for (const file of files) {
      for await (const b of this.#batchesOf(file, false)) {
        if (!overlaps(b.seal)) continue;
        first ??= b.seal;
        last = b.seal;
      }
    }
    const header: AuditExportHeader = {
      t: "export",
      v: 1,
      plane: this.#opts.plane?.name ?? null,
      region: this.#opts.plane?.region ?? null,
      from: from === null ? null : new Date(from).toISOString(),
      to: to === null ? null : new Date(to).toISOString(),
      first: first === null ? null : { seq: first.seq, prev: first.prev },
      last: last === null ? null : { seq: last.seq, hash: last.hash },
      batches: first === null || last === null ? 0 : last.seq - first.seq + 1,
    };
    yield { type: "header", header };
    if (first === null || last === null) return;
    for (const file of files) {
      for await (const b of this.#batchesOf(file, true)) {
        if (b.seal.seq < first.seq) continue;
        if (b.seal.seq > last.seq) return;
        yield { type: "batch", ...b };
      }
    }
  }

  /** The export as JSON lines, in the audit files' own format after one header line. */
  async *exportLines(range: ExportRange = {}): AsyncGenerator<string> {
    for await (const item of this.export(range)) {
      if (item.type === "header") {
        yield `${JSON.stringify(item.header)}\n`;
        continue;
      }
      for (const r of item.records) yield `${r}\n`;
      yield `${JSON.stringify(item.seal)}\n`;
    }
  }

  /**
   * This plane's signed evidence for one environment and range (issue 14, item 4): from the exported run of
   * its chain, checked before it is summarized. `regionOf` names the region of another plane (the snapshot's
   * planes) for requests this plane handed over a hop.
   */
  async evidencePiece(
    scope: EvidenceScope,
    regionOf: (plane: string) => string | undefined,
  ): Promise<EvidencePiece> {
    const key = this.#key();
    const own =
      this.#opts.verifyingKeys?.() ??
      new Map(key === null ? [] : [[key.keyId, createPublicKey(key.privateKey)] as const]);
    let header: AuditExportHeader | null = null;
    let checker: BatchChecker | null = null;
    const summary = new Summarizer(scope, regionOf);
    for await (const item of this.export({ from: scope.from, to: scope.to })) {
      if (item.type === "header") {
        header = item.header;
        const anchor = header.first ? { seq: header.first.seq - 1, hash: header.first.prev } : null;
        checker = new BatchChecker(anchor, { keys: keyMapSealKeys(own) });
        continue;
      }
      checker!.add(item);
      for (const r of item.records) summary.add(JSON.parse(r) as AuditRecord);
    }
    const check = checker!.finish();
    const s = summary.result();
    const plane = this.#opts.plane ?? { name: "unknown", region: "unknown" };
    return signPiece(
      {
        kind: "meridian-evidence-piece",
        version: 1,
        plane: plane.name,
        region: plane.region,
        scope,
        generated_at: new Date(this.#opts.now()).toISOString(),
        requests: s.requests,
        counts: s.counts,
        out_of_region: s.out_of_region,
        chain: {
          first: header?.first ?? null,
          last: header?.last ?? null,
          batches: header?.batches ?? 0,
          unsigned_batches: check.unsigned,
          intact: check.ok,
          break:
            check.break === null
              ? null
              : `${check.break.kind} at ${check.break.file}:${check.break.offset}: ${check.break.message}`,
        },
        signature: null,
      },
      key,
    );
  }

  /**
   * Removes whole files whose last batch is older than the retention, after a seal (fsynced) declares
   * the removal, so the checker can tell retention from deletion. Returns the files removed.
   */
  enforceRetention(): Promise<string[]> {
    let removed: string[] = [];
    // Errors are reported, never left in the chain of writes: a rejected link would stop every later flush.
    this.#writing = this.#writing.then(async () => {
      try {
        removed = await this.#sweep();
      } catch (err) {
        this.#report(err);
      }
    });
    return this.#writing.then(() => removed);
  }

  async #sweep(): Promise<string[]> {
    const now = this.#opts.now();
    const cutoff = now - this.#opts.retentionMs;
    // An idle file is rotated once it is old enough, so its records can expire with it.
    if (this.#fileName !== null && now - this.#fileStart >= this.#opts.rotateIntervalMs && this.#size > 0) {
      this.#sealEmpty = true;
      await this.#writeBatch();
    }
    const { chain, legacy } = await listAuditFiles(this.#dir);
    const removable: string[] = [];
    for (const [i, name] of chain.entries()) {
      if (name === this.#fileName || i + 1 >= chain.length) break;
      // A file ends before its successor starts (names carry whole seconds): read it only when that
      // bound does not already settle it.
      const next = parseAuditFileName(chain[i + 1]!);
      if (next === null || next.startMs + 1000 > cutoff) {
        const end = await this.#endOf(name);
        if (end === null || end >= cutoff) break;
      }
      removable.push(name);
    }
    for (const name of legacy) {
      const path = join(this.#dir, name);
      if ((await stat(path)).mtimeMs < cutoff) await rm(path, { force: true });
    }
    if (removable.length === 0) return [];
    const next = chain[removable.length]!;
    const firstSeal = await this.#firstSealOf(next);
    if (firstSeal === null) return [];
    this.#pruned = { files: removable, seq: firstSeal.seq - 1, hash: firstSeal.prev };
    this.#sealEmpty = true;
    await this.#writeBatch();
    if (this.#pruned !== null) return []; // the declaration was not written: remove nothing
    for (const name of removable) {
      await rm(join(this.#dir, name), { force: true });
      this.#fileEnds.delete(name);
    }
    await syncDir(this.#dir);
    return removable;
  }

  /** The time of a file's last seal (files other than the current one never change). */
  async #endOf(name: string): Promise<number | null> {
    const known = this.#fileEnds.get(name);
    if (known !== undefined) return known;
    let end: number | null = null;
    for await (const b of this.#batchesOf(name, false)) end = Date.parse(b.seal.sealed_at);
    if (end !== null) this.#fileEnds.set(name, end);
    return end;
  }

  async #firstSealOf(name: string): Promise<AuditSeal | null> {
    for await (const b of this.#batchesOf(name, false)) return b.seal;
    return null;
  }

  /** Each sealed batch of a file, with its records' lines when asked. Torn bytes after the last seal are skipped. */
  async *#batchesOf(name: string, withRecords: boolean): AsyncGenerator<ExportedBatch> {
    let records: string[] = [];
    let offset = -1;
    try {
      for await (const line of readLines(join(this.#dir, name))) {
        const seal = line.complete ? parseSeal(line.bytes) : null;
        if (seal === null || seal === "malformed") {
          if (offset < 0) offset = line.offset;
          if (withRecords && line.complete) records.push(line.bytes.toString("utf8"));
          continue;
        }
        yield { file: name, offset: offset < 0 ? line.offset : offset, seal, records };
        records = [];
        offset = -1;
      }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err; // removed by retention meanwhile
    }
  }

  /**
   * Chain files that may hold records of [from, to): a file ends before its successor starts, and one
   * started more than EXPORT_LATE_MS after `to` holds only requests that arrived after it, but for requests
   * (websockets) that lasted longer than that.
   */
  #filesFrom(chain: string[], from: number | null, to: number | null = null): string[] {
    let first = 0;
    let end = chain.length;
    for (let i = 0; i < chain.length; i++) {
      const start = parseAuditFileName(chain[i]!)?.startMs;
      if (start === undefined) continue;
      // Names carry whole seconds: the successor started before `from` by a full second at least.
      if (from !== null && i > 0 && start + 1000 <= from) first = i;
      if (to !== null && start > to + EXPORT_LATE_MS && end === chain.length) end = i;
    }
    return chain.slice(first, Math.max(end, first));
  }

  #count(entry: AuditRecord): void {
    if (entry.model_id === null) return;
    this.#add(entry.model_id, entry.environment, Math.floor(entry.status / 100), 1);
  }

  #add(model: string, environment: string | null, cls: number, n: number): void {
    let byEnv = this.#counts.get(model);
    if (byEnv === undefined) {
      byEnv = new Map();
      this.#counts.set(model, byEnv);
    }
    const env = environment ?? "";
    let byClass = byEnv.get(env);
    if (byClass === undefined) {
      byClass = [];
      byEnv.set(env, byClass);
    }
    const c = byClass[cls];
    if (c === undefined) {
      byClass[cls] = { model_id: model, environment, status_class: `${cls}xx`, count: n };
    } else {
      c.count += n;
    }
  }

  /** One line into the current chunk (a new chunk when it is full). */
  #append(line: string): void {
    const most = line.length * 3 + 1; // UTF-8 bytes of a UTF-16 string, at most, and the newline
    if (this.#used + most > this.#chunk.length) {
      if (this.#used > this.#start) this.#ready.push(this.#chunk.subarray(this.#start, this.#used));
      this.#chunk = Buffer.allocUnsafeSlow(Math.max(CHUNK_BYTES, most));
      this.#start = 0;
      this.#used = 0;
    }
    const before = this.#used;
    this.#used += this.#chunk.write(line, this.#used, "utf8");
    this.#chunk[this.#used++] = 0x0a;
    this.#lines.push(this.#used - before);
  }

  /** Takes what is buffered, after a failed batch's records if there is one. */
  #takeBatch(): Batch {
    if (this.#used > this.#start) {
      this.#ready.push(this.#chunk.subarray(this.#start, this.#used));
      this.#start = this.#used;
    }
    const retry = this.#retry;
    this.#retry = null;
    const batch: Batch = {
      data: [...(retry?.data ?? []), ...this.#ready],
      lines: retry === null ? this.#lines : [...retry.lines, ...this.#lines],
      minTime: minOf(retry?.minTime ?? null, this.#minTime),
      maxTime: maxOf(retry?.maxTime ?? null, this.#maxTime),
    };
    this.#ready = [];
    this.#lines = [];
    this.#minTime = null;
    this.#maxTime = null;
    return batch;
  }

  async #writeBatch(): Promise<void> {
    const batch = this.#takeBatch();
    if (batch.lines.length === 0 && !this.#sealEmpty && this.#pruned === null) return;
    const records = batch.data.length === 1 ? batch.data[0]! : Buffer.concat(batch.data);
    const now = this.#opts.now();
    const key = this.#key();
    let sizeBefore = this.#size;
    try {
      const rotate =
        this.#file === null ||
        this.#torn.length > 0 ||
        (this.#size > 0 && this.#size + records.length > this.#opts.maxFileBytes) ||
        now - this.#fileStart >= this.#opts.rotateIntervalMs;
      if (rotate) {
        await this.#openFile(this.#head.seq + 1, now);
        sizeBefore = 0;
      }
      const seals: Buffer[] = [];
      let head = this.#head;
      const seal = (
        fields: Omit<SealFields, "seq" | "prev" | "plane" | "region" | "sealed_at">,
        data: Buffer,
      ) => {
        const s = sealBatch(
          {
            plane: this.#opts.plane?.name ?? null,
            region: this.#opts.plane?.region ?? null,
            seq: head.seq + 1,
            prev: head.hash,
            ...fields,
            sealed_at: new Date(now).toISOString(),
          },
          data,
          key,
        );
        head = { seq: s.seq, hash: s.hash };
        seals.push(data, Buffer.from(`${JSON.stringify(s)}\n`));
      };
      const empty = { n: 0, bytes: 0, crc: "", min_time: null, max_time: null };
      if (this.#opening || this.#torn.length > 0) {
        seal({ ...empty, opened: { recovered: this.#torn } }, Buffer.alloc(0));
      }
      if (batch.lines.length > 0 || this.#pruned !== null || (this.#sealEmpty && !this.#opening)) {
        seal(
          {
            n: batch.lines.length,
            bytes: records.length,
            crc: crcList(records, batch.lines),
            min_time: batch.minTime,
            max_time: batch.maxTime,
            ...(this.#pruned === null ? {} : { pruned: this.#pruned }),
          },
          records,
        );
      }
      const out = Buffer.concat(seals);
      await writeAll(this.#file!, out, sizeBefore);
      await this.#file!.datasync();
      this.#size = sizeBefore + out.length;
      this.#head = head;
      this.#torn = [];
      this.#opening = false;
      this.#pruned = null;
      this.#sealEmpty = false;
    } catch (err) {
      this.#retry = batch;
      await this.#undo(sizeBefore);
      this.#report(err);
    }
  }

  /** After a failed write: cut the file back to its last seal, or, failing that, move on to a new file. */
  async #undo(size: number): Promise<void> {
    if (this.#file === null || this.#fileName === null) return;
    try {
      await this.#file.truncate(size);
      await this.#file.datasync();
      this.#size = size;
    } catch {
      let bytes = -1;
      try {
        bytes = (await stat(this.path)).size - size;
      } catch {
        // The next seal records the torn bytes as unknown; the checker will say they are unsealed.
      }
      if (bytes !== 0) this.#torn.push({ file: this.#fileName, offset: size, bytes });
      await this.#file.close().catch(() => {});
      this.#file = null;
    }
  }

  async #openFile(seq: number, now: number): Promise<void> {
    if (this.#file !== null && this.#fileName !== null) {
      await this.#file.close();
      this.#fileEnds.delete(this.#fileName);
    }
    this.#file = null;
    const name = auditFileName(seq, now);
    // `wx`: a name is never reused, so nothing already written can be appended to or overwritten.
    this.#file = await open(join(this.#dir, name), "wx", 0o600);
    this.#fileName = name;
    this.#fileStart = now;
    this.#size = 0;
    await syncDir(this.#dir);
  }

  readonly #report = (err: unknown) => this.#opts.onError?.(err);
}

async function writeAll(
  file: Awaited<ReturnType<typeof open>>,
  data: Buffer,
  position: number,
): Promise<void> {
  let done = 0;
  while (done < data.length) {
    const { bytesWritten } = await file.write(data, done, data.length - done, position + done);
    done += bytesWritten;
  }
}

/** fsync a directory, so a file created (or removed) in it survives a power loss. */
async function syncDir(dir: string): Promise<void> {
  const handle = await open(dir, "r");
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

function legacyIndex(name: string): number {
  const m = /\.(\d+)$/.exec(name);
  return m === null ? 0 : Number(m[1]);
}

function minOf(a: string | null, b: string | null): string | null {
  if (a === null) return b;
  if (b === null) return a;
  return a < b ? a : b;
}

function maxOf(a: string | null, b: string | null): string | null {
  if (a === null) return b;
  if (b === null) return a;
  return a > b ? a : b;
}
