// The per-request audit trail of a plane (DESIGN.md §2.6): one JSON line per request in the plane's own
// data directory, appended in batches, rotated by size, queryable on the plane, and summarised into counts
// for the control plane. Records hold metadata only: never bodies, never API keys.

import { mkdir, open, readFile, rename, rm } from "node:fs/promises";
import { join } from "node:path";
import type { HostnameForm } from "../core/domain.ts";
import type { PlaneReport } from "../core/snapshot.ts";

export interface AuditRecord {
  /** ISO 8601 time the request arrived. */
  time: string;
  request_id: string;
  model_id: string | null;
  environment: string | null;
  deployment_id: string | null;
  hostname_form: HostnameForm | null;
  /** Every plane the request passed through, as in `x-meridian-route`. */
  route: string[];
  /** Status the client saw; 499 when the client went away before a status was sent. */
  status: number;
  latency_ms: number;
  /** The plane that wrote this record, and its region. */
  plane: string;
  region: string;
  /** The plane whose replica processed the request, as in `x-meridian-plane`. */
  processed_by: string | null;
  /** The plane that handed the request over a verified hop; null when a client sent it here. */
  forwarded_from: string | null;
  /** Meridian's error code when the ingress (or a peer plane) refused or failed the request. */
  error_code: string | null;
  /** The response was cut short (client gone, or the replica died after the status was sent). */
  aborted: boolean;
}

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
  fileName?: string;
  /** Rotate when the current file would exceed this. Default 64 MiB. */
  maxFileBytes?: number;
  /** Rotated files kept (`audit.jsonl.1` … `.N`). Default 4. */
  maxFiles?: number;
  /** Buffered records are written at most this long after they arrive. Default 100 ms. */
  flushIntervalMs?: number;
  /** Flush early when this many records are buffered. Default 5 000. */
  maxBufferedRecords?: number;
  /** Called when a write fails (the batch is kept for the next flush). */
  onError?: (err: unknown) => void;
}

const QUERY_LIMIT_MAX = 10_000;
/** Size of the chunks audit lines are buffered in until a flush. */
const CHUNK_BYTES = 256 * 1024;

export class AuditLog implements AuditSink {
  readonly path: string;
  readonly #opts: Required<Omit<AuditLogOptions, "onError">> & Pick<AuditLogOptions, "onError">;
  // Lines wait as bytes in off-heap chunks, not as strings: thousands of strings held for up to a flush
  // interval would be copied by every young-generation GC on the ingress's hot path.
  /** Bytes ready to write, in order: filled chunks' slices. */
  #ready: Buffer[] = [];
  /** The chunk being filled; bytes from `#start` to `#used` are not handed to a write yet. */
  #chunk: Buffer = Buffer.alloc(0);
  #start = 0;
  #used = 0;
  #pending = 0;
  #timer: NodeJS.Timeout | null = null;
  #file: Awaited<ReturnType<typeof open>> | null = null;
  #size = 0;
  #writing: Promise<void> = Promise.resolve();
  /** model → environment ("" for none) → status class digit → count. */
  #counts = new Map<string, Map<string, RequestCount[]>>();
  #stopped = false;

  constructor(options: AuditLogOptions) {
    this.#opts = {
      fileName: "audit.jsonl",
      maxFileBytes: 64 * 1024 * 1024,
      maxFiles: 4,
      flushIntervalMs: 100,
      maxBufferedRecords: 5_000,
      ...options,
    };
    this.path = join(this.#opts.dir, this.#opts.fileName);
  }

  async start(): Promise<void> {
    await mkdir(this.#opts.dir, { recursive: true });
    await this.#openFile();
  }

  /** Buffers one record; cheap enough for the hot path (one JSON.stringify, one copy, two Map lookups). */
  record(entry: AuditRecord): void {
    this.#append(JSON.stringify(entry));
    this.#count(entry);
    if (this.#stopped) return;
    if (this.#pending >= this.#opts.maxBufferedRecords) {
      void this.flush();
    } else if (this.#timer === null) {
      this.#timer = setTimeout(() => void this.flush(), this.#opts.flushIntervalMs);
      this.#timer.unref();
    }
  }

  /** Writes every buffered record. Flushes are serialized, so records keep their order. */
  flush(): Promise<void> {
    if (this.#timer !== null) {
      clearTimeout(this.#timer);
      this.#timer = null;
    }
    this.#writing = this.#writing.then(() => this.#writeBatch());
    return this.#writing;
  }

  async stop(): Promise<void> {
    await this.flush();
    this.#stopped = true;
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

  /** Matching records, newest first, from the current file and the rotated ones. */
  async query(q: AuditQuery = {}): Promise<AuditRecord[]> {
    await this.flush();
    const limit = Math.min(Math.max(q.limit ?? 100, 0), QUERY_LIMIT_MAX);
    const from = q.from === undefined ? null : new Date(q.from).getTime();
    const to = q.to === undefined ? null : new Date(q.to).getTime();
    const out: AuditRecord[] = [];
    const files = [this.path];
    for (let i = 1; i <= this.#opts.maxFiles; i++) files.push(`${this.path}.${i}`);
    for (const file of files) {
      let text: string;
      try {
        text = await readFile(file, "utf8");
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === "ENOENT") continue;
        throw err;
      }
      const lines = text.split("\n");
      for (let i = lines.length - 1; i >= 0 && out.length < limit; i--) {
        const line = lines[i]!;
        if (line.length === 0) continue;
        let r: AuditRecord;
        try {
          r = JSON.parse(line) as AuditRecord;
        } catch {
          continue; // a torn last line after a crash
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
    this.#used += this.#chunk.write(line, this.#used, "utf8");
    this.#chunk[this.#used++] = 0x0a;
    this.#pending++;
  }

  async #openFile(): Promise<void> {
    this.#file = await open(this.path, "a");
    this.#size = (await this.#file.stat()).size;
  }

  async #writeBatch(): Promise<void> {
    if (this.#used > this.#start) {
      this.#ready.push(this.#chunk.subarray(this.#start, this.#used));
      this.#start = this.#used;
    }
    if (this.#ready.length === 0) return;
    const batch = this.#ready;
    const pending = this.#pending;
    this.#ready = [];
    this.#pending = 0;
    const data = batch.length === 1 ? batch[0]! : Buffer.concat(batch);
    try {
      if (this.#file === null) await this.#openFile();
      if (this.#file === null) throw new Error("audit file is not open");
      if (this.#size > 0 && this.#size + data.length > this.#opts.maxFileBytes) await this.#rotate();
      await this.#file.write(data);
      this.#size += data.length;
    } catch (err) {
      this.#ready = [data, ...this.#ready];
      this.#pending += pending;
      this.#opts.onError?.(err);
    }
  }

  async #rotate(): Promise<void> {
    await this.#file?.close();
    this.#file = null;
    await rm(`${this.path}.${this.#opts.maxFiles}`, { force: true });
    for (let i = this.#opts.maxFiles - 1; i >= 1; i--) {
      await rename(`${this.path}.${i}`, `${this.path}.${i + 1}`).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== "ENOENT") throw err;
      });
    }
    await rename(this.path, `${this.path}.1`);
    await this.#openFile();
  }
}
