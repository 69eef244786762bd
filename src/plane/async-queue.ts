// The plane's durable async queue (DESIGN.md §2.9): every accepted async request, its payload until it
// ends and its result until the webhook is done, in one append-only journal in the plane's data directory
// and nowhere else. A request is acknowledged only after its record is on disk (fdatasync, batched: one
// write and one sync for whatever arrived meanwhile). On open the journal is replayed (a torn last line,
// what a crash mid-write leaves, is dropped: it was never acknowledged), requests that were running go
// back to the queue, and the live state is rewritten to a fresh file (temp, fsync, rename, fsync dir).

import { createHash } from "node:crypto";
import { constants } from "node:fs";
import { type FileHandle, mkdir, open, readFile, rename, rm } from "node:fs/promises";
import { dirname, join } from "node:path";
import type { AsyncError, AsyncStatus, RetryConfig, WebhookStatus } from "../core/async.ts";
import type { AsyncTarget } from "../core/async-routing.ts";

/** The journal's file name in the queue directory. */
export const QUEUE_FILE = "queue.log";

export interface AsyncRecord {
  id: string;
  model_id: string;
  team_id: string;
  /** The environment the request was made to (null: the development deployment or a deployment id). */
  environment: string | null;
  target: AsyncTarget;
  /** The deployment that ran it (or, until it runs, the one the target named when it was accepted). */
  deployment_id: string | null;
  priority: 0 | 1 | 2;
  /** Arrival order on this plane: first in, first out within a priority. */
  seq: number;
  created_at: number;
  /** QUEUED past this ends EXPIRED (max_time_in_queue_seconds after creation). */
  expires_at: number;
  webhook: string | null;
  retry: RetryConfig;
  status: AsyncStatus;
  webhook_status: WebhookStatus;
  status_at: number;
  /** Predict attempts made. */
  attempts: number;
  errors: AsyncError[];
  /** model_input; dropped when the request ends (null from then on). */
  input: unknown;
  /** The accepted body's size (the plane bounds what it holds). */
  input_bytes: number;
  /** The model's output; kept only until the webhook is done (delivered, failed, or there is none). */
  output: unknown;
}

/** A journal entry: a whole record, or a change to one. */
type Entry =
  | { e: "put"; r: AsyncRecord }
  | { e: "start"; id: string; at: number; attempt: number; deployment_id: string }
  | { e: "requeue"; id: string; at: number; attempts: number }
  | { e: "done"; id: string; at: number; status: AsyncStatus; errors: AsyncError[]; output: unknown }
  | { e: "hook"; id: string; at: number; webhook_status: WebhookStatus; status: AsyncStatus };

export interface AsyncQueueOptions {
  /** The queue's directory, the plane's alone (created 0700). */
  dir: string;
  /** Ended requests stay readable this long after their last change. Default 24 h. */
  retentionMs?: number;
  /** Rewrite the journal once it grows past this. Default 64 MiB. */
  compactBytes?: number;
  now?: () => number;
}

export type AcceptOutcome = { ok: true } | { ok: false; reason: "closed" };

/** Ended: the request will not run (again). */
export function isFinal(status: AsyncStatus): boolean {
  return status !== "QUEUED" && status !== "IN_PROGRESS";
}

export class AsyncQueue {
  readonly #o: Required<Omit<AsyncQueueOptions, "now">> & { now: () => number };
  readonly #records = new Map<string, AsyncRecord>();
  #fh: FileHandle | null = null;
  #bytes = 0;
  #seq = 0;
  /** Entries waiting for the next write, and who waits for them to be durable. */
  #pending: string[] = [];
  #waiters: Array<{ ok: () => void; fail: (err: Error) => void }> = [];
  #flushing: Promise<void> | null = null;
  #compacting: Promise<void> | null = null;
  /** While the journal is being rewritten, entries wait in #pending (replaying them twice is harmless). */
  #paused = false;
  #rewrittenAt = 0;
  /** Lines dropped on open: a torn tail, or lines whose checksum did not match. */
  dropped = 0;

  constructor(options: AsyncQueueOptions) {
    this.#o = {
      dir: options.dir,
      retentionMs: options.retentionMs ?? 24 * 3600_000,
      compactBytes: options.compactBytes ?? 64 * 1024 * 1024,
      now: options.now ?? Date.now,
    };
  }

  get path(): string {
    return join(this.#o.dir, QUEUE_FILE);
  }

  /** Replays the journal and rewrites it with the live state. */
  async open(): Promise<void> {
    await mkdir(this.#o.dir, { recursive: true, mode: 0o700 });
    let text = "";
    try {
      text = await readFile(this.path, "utf8");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
    }
    const lines = text.split("\n");
    // The last piece is either "" (the file ends with a newline) or a line a crash cut short.
    if (lines[lines.length - 1] !== "") this.dropped++;
    lines.pop();
    for (const line of lines) {
      const entry = parseLine(line);
      if (entry === null) {
        this.dropped++;
        continue;
      }
      this.#apply(entry);
    }
    const now = this.#o.now();
    for (const r of this.#records.values()) {
      // Running when the plane stopped: the model's answer was never recorded, so it runs again.
      if (r.status === "IN_PROGRESS") {
        r.status = "QUEUED";
        r.status_at = now;
      }
      this.#seq = Math.max(this.#seq, r.seq + 1);
    }
    await this.#rewrite();
  }

  async close(): Promise<void> {
    await this.#compacting;
    await this.#flushing;
    await this.#compacting;
    await this.#fh?.close();
    this.#fh = null;
  }

  /**
   * Rewrites the journal when the last rewrite is older than `everyMs` (default 1 h): ended requests past
   * retention are forgotten on time even when the journal stays small. Called by the worker's sweep.
   */
  maintain(everyMs = 3_600_000): void {
    if (this.#fh === null || this.#compacting !== null || this.#o.now() - this.#rewrittenAt < everyMs) return;
    this.#compacting = this.#rewrite()
      .catch(() => {})
      .finally(() => {
        this.#compacting = null;
      });
  }

  get(id: string): AsyncRecord | undefined {
    return this.#records.get(id);
  }

  /** Every request not yet ended, in no particular order. */
  *live(): IterableIterator<AsyncRecord> {
    for (const r of this.#records.values()) if (!isFinal(r.status)) yield r;
  }

  /** Ended requests whose webhook is still to be delivered. */
  *webhooksDue(): IterableIterator<AsyncRecord> {
    for (const r of this.#records.values()) if (isFinal(r.status) && r.webhook_status === "PENDING") yield r;
  }

  get size(): number {
    return this.#records.size;
  }

  /** Accepts a new request; resolves once its record is durable. */
  async add(r: Omit<AsyncRecord, "seq">): Promise<AcceptOutcome> {
    if (this.#fh === null) return { ok: false, reason: "closed" };
    const record: AsyncRecord = { ...r, seq: this.#seq++ };
    this.#records.set(record.id, record);
    try {
      await this.#write({ e: "put", r: record });
    } catch (err) {
      // Not durable, so not accepted: forget it (the caller answers 5xx).
      this.#records.delete(record.id);
      throw err;
    }
    return { ok: true };
  }

  /** QUEUED → IN_PROGRESS (synchronously in memory: a cancel after this sees it running). */
  start(r: AsyncRecord, deploymentId: string): Promise<void> {
    const at = this.#o.now();
    r.status = "IN_PROGRESS";
    r.status_at = at;
    r.attempts++;
    r.deployment_id = deploymentId;
    return this.#write({ e: "start", id: r.id, at, attempt: r.attempts, deployment_id: deploymentId });
  }

  /** IN_PROGRESS → QUEUED: the replica was busy, or a retry waits its turn; the attempt is not counted. */
  requeue(r: AsyncRecord, countAttempt: boolean): Promise<void> {
    const at = this.#o.now();
    r.status = "QUEUED";
    r.status_at = at;
    if (!countAttempt) r.attempts = Math.max(0, r.attempts - 1);
    return this.#write({ e: "requeue", id: r.id, at, attempts: r.attempts });
  }

  /**
   * The request ends: SUCCEEDED (with the output), FAILED, EXPIRED or CANCELED. Its input is dropped; its
   * output is kept only while a webhook is due.
   */
  finish(r: AsyncRecord, status: AsyncStatus, errors: AsyncError[], output: unknown = null): Promise<void> {
    const at = this.#o.now();
    const entry: Entry = {
      e: "done",
      id: r.id,
      at,
      status,
      errors,
      output: r.webhook === null ? null : output,
    };
    this.#apply(entry);
    return this.#write(entry);
  }

  /** The webhook is done: delivered (SUCCEEDED) or given up (FAILED); the output is dropped. */
  webhookDone(r: AsyncRecord, webhookStatus: "SUCCEEDED" | "FAILED"): Promise<void> {
    const at = this.#o.now();
    const status: AsyncStatus =
      webhookStatus === "FAILED" && r.status === "SUCCEEDED" ? "WEBHOOK_FAILED" : r.status;
    const entry: Entry = { e: "hook", id: r.id, at, webhook_status: webhookStatus, status };
    this.#apply(entry);
    return this.#write(entry);
  }

  #apply(entry: Entry): void {
    if (entry.e === "put") {
      this.#records.set(entry.r.id, entry.r);
      return;
    }
    const r = this.#records.get(entry.id);
    if (r === undefined) return;
    switch (entry.e) {
      case "start":
        r.status = "IN_PROGRESS";
        r.status_at = entry.at;
        r.attempts = entry.attempt;
        r.deployment_id = entry.deployment_id;
        return;
      case "requeue":
        r.status = "QUEUED";
        r.status_at = entry.at;
        r.attempts = entry.attempts;
        return;
      case "done":
        r.status = entry.status;
        r.status_at = entry.at;
        r.errors = entry.errors;
        r.input = null;
        r.output = entry.output;
        if (r.webhook === null) r.webhook_status = "NO_WEBHOOK_PROVIDED";
        else if (entry.status === "CANCELED") r.webhook_status = "CANCELED";
        return;
      case "hook":
        r.webhook_status = entry.webhook_status;
        r.status = entry.status;
        r.status_at = entry.at;
        r.output = null;
        return;
    }
  }

  #write(entry: Entry): Promise<void> {
    if (this.#fh === null) return Promise.reject(new Error("the async queue is closed"));
    this.#pending.push(formatLine(entry));
    const done = new Promise<void>((ok, fail) => this.#waiters.push({ ok, fail }));
    if (this.#flushing === null && !this.#paused) this.#flushing = this.#flush();
    return done;
  }

  /** Writes and syncs batches until none is pending: group commit. */
  async #flush(): Promise<void> {
    try {
      while (this.#pending.length > 0 && !this.#paused) {
        const batch = this.#pending.join("");
        const waiters = this.#waiters;
        this.#pending = [];
        this.#waiters = [];
        try {
          const buf = Buffer.from(batch, "utf8");
          await this.#fh!.write(buf);
          await this.#fh!.datasync();
          this.#bytes += buf.length;
          for (const w of waiters) w.ok();
        } catch (err) {
          for (const w of waiters) w.fail(err as Error);
        }
      }
    } finally {
      this.#flushing = null;
    }
    if (this.#bytes > this.#o.compactBytes && this.#compacting === null && this.#fh !== null) {
      // A failed rewrite leaves the old journal in place (it is whole); the next flush tries again.
      this.#compacting = this.#rewrite()
        .catch(() => {})
        .finally(() => {
          this.#compacting = null;
        });
    }
  }

  /**
   * Writes the live state to a new journal and swaps it in; forgets ended requests past retention. Every
   * entry is idempotent (it sets, never adds), so one already reflected in the new file may follow it.
   */
  async #rewrite(): Promise<void> {
    this.#paused = true;
    try {
      await this.#flushing;
      await this.#swap();
    } finally {
      this.#paused = false;
      if (this.#pending.length > 0 && this.#flushing === null && this.#fh !== null) {
        this.#flushing = this.#flush();
      }
    }
  }

  async #swap(): Promise<void> {
    const cutoff = this.#o.now() - this.#o.retentionMs;
    for (const [id, r] of this.#records) {
      if (isFinal(r.status) && r.webhook_status !== "PENDING" && r.status_at < cutoff)
        this.#records.delete(id);
    }
    const tmp = `${this.path}.tmp`;
    await rm(tmp, { force: true });
    const fh = await open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600);
    let bytes = 0;
    try {
      const lines: string[] = [];
      for (const r of this.#records.values()) lines.push(formatLine({ e: "put", r }));
      const buf = Buffer.from(lines.join(""), "utf8");
      await fh.write(buf);
      await fh.datasync();
      bytes = buf.length;
    } finally {
      await fh.close();
    }
    await rename(tmp, this.path);
    await syncDir(dirname(this.path));
    await this.#fh?.close();
    this.#fh = await open(this.path, "a", 0o600);
    this.#bytes = bytes;
    this.#rewrittenAt = this.#o.now();
  }
}

function checksum(json: string): string {
  return createHash("sha256").update(json).digest("hex").slice(0, 16);
}

function formatLine(entry: Entry): string {
  const json = JSON.stringify(entry);
  return `${checksum(json)} ${json}\n`;
}

function parseLine(line: string): Entry | null {
  const space = line.indexOf(" ");
  if (space !== 16) return null;
  const json = line.slice(17);
  if (checksum(json) !== line.slice(0, 16)) return null;
  try {
    return JSON.parse(json) as Entry;
  } catch {
    return null;
  }
}

async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, "r");
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
