// Meridian's own artifact store for model packages, content-addressed by sha256: local files under the
// data directory (the default with SQLite), or chunks in the database (the default with PostgreSQL, so
// several control replicas share them). Either way a crash never leaves a partial blob in place.

import { createHash } from "node:crypto";
import { createReadStream, createWriteStream } from "node:fs";
import { mkdir, rename, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { isUniqueViolation, type Store } from "../store/store.ts";
import { newId } from "./identity.ts";

export interface StoredBlob {
  sha256: string;
  size: number;
}

/** Where model packages live. Local files by default; an object store can implement the same. */
export interface ArtifactStore {
  start(): Promise<void>;
  /** Stores the stream's bytes, refusing more than `maxBytes`; returns their digest and size. */
  put(body: Readable, maxBytes: number): Promise<StoredBlob>;
  open(sha256: string): Promise<Readable | null>;
}

export class BlobTooLargeError extends Error {}

export class LocalArtifactStore implements ArtifactStore {
  /** Also where the S3 endpoint stages multipart parts (`s3-parts/`), on the same disk as the blobs. */
  readonly dir: string;

  constructor(dir: string) {
    this.dir = dir;
  }

  /** Removes partial uploads left by a process that was killed mid-upload. */
  async start(): Promise<void> {
    await rm(join(this.dir, "tmp"), { recursive: true, force: true });
    await mkdir(join(this.dir, "tmp"), { recursive: true });
  }

  async put(body: Readable, maxBytes: number): Promise<StoredBlob> {
    const tmpDir = join(this.dir, "tmp");
    await mkdir(tmpDir, { recursive: true });
    const tmp = join(tmpDir, `${newId(16)}.part`);
    const hash = createHash("sha256");
    let size = 0;
    try {
      await pipeline(
        body,
        async function* (source: AsyncIterable<Buffer>) {
          for await (const chunk of source) {
            size += chunk.length;
            if (size > maxBytes) throw new BlobTooLargeError(`artifact exceeds ${maxBytes} bytes`);
            hash.update(chunk);
            yield chunk;
          }
        },
        createWriteStream(tmp),
      );
      const sha256 = hash.digest("hex");
      const target = this.pathOf(sha256);
      await mkdir(join(target, ".."), { recursive: true });
      await rename(tmp, target);
      return { sha256, size };
    } catch (err) {
      await rm(tmp, { force: true });
      throw err;
    }
  }

  async open(sha256: string): Promise<Readable | null> {
    if (!/^[0-9a-f]{64}$/.test(sha256)) return null;
    const path = this.pathOf(sha256);
    try {
      await stat(path);
    } catch {
      return null;
    }
    return createReadStream(path);
  }

  private pathOf(sha256: string): string {
    return join(this.dir, "sha256", sha256.slice(0, 2), sha256);
  }
}

const CHUNK_BYTES = 1024 * 1024;
/** Chunks of an upload older than this with no blob to show for it belong to a process that died. */
const ABANDONED_UPLOAD_MS = 60 * 60 * 1000;

/**
 * Blobs as 1 MiB chunks in the store's `artifact_chunks` table. An upload writes its chunks under a
 * temporary name and renames them to the sha256 in one transaction at the end, so a reader never sees
 * a partial blob; an identical blob already stored is kept and the upload's chunks dropped.
 */
export class DatabaseArtifactStore implements ArtifactStore {
  private readonly store: Store;

  constructor(store: Store) {
    this.store = store;
  }

  async start(): Promise<void> {
    const cutoff = new Date(Date.now() - ABANDONED_UPLOAD_MS).toISOString();
    await this.store.db
      .deleteFrom("artifact_chunks")
      .where("blob", "like", "tmp:%")
      .where("created_at", "<", cutoff)
      .execute();
  }

  async put(body: Readable, maxBytes: number): Promise<StoredBlob> {
    const tmp = `tmp:${newId(20)}`;
    const hash = createHash("sha256");
    const db = this.store.db;
    let size = 0;
    let seq = 0;
    let pending: Buffer[] = [];
    let pendingBytes = 0;
    const flush = async (final: boolean) => {
      while (pendingBytes >= CHUNK_BYTES || (final && pendingBytes > 0)) {
        const all = Buffer.concat(pending);
        const data = all.subarray(0, CHUNK_BYTES);
        const rest = all.subarray(data.length);
        pending = rest.length ? [rest] : [];
        pendingBytes = rest.length;
        await db
          .insertInto("artifact_chunks")
          .values({ blob: tmp, seq: seq++, data: Buffer.from(data), created_at: new Date().toISOString() })
          .execute();
      }
    };
    try {
      for await (const chunk of body as AsyncIterable<Buffer>) {
        size += chunk.length;
        if (size > maxBytes) throw new BlobTooLargeError(`artifact exceeds ${maxBytes} bytes`);
        hash.update(chunk);
        pending.push(chunk);
        pendingBytes += chunk.length;
        await flush(false);
      }
      await flush(true);
      if (seq === 0) {
        // An empty blob still exists: one empty chunk marks it.
        await db
          .insertInto("artifact_chunks")
          .values({ blob: tmp, seq: seq++, data: Buffer.alloc(0), created_at: new Date().toISOString() })
          .execute();
      }
      const sha256 = hash.digest("hex");
      try {
        await this.store.transaction(async (trx) => {
          const exists = await trx
            .selectFrom("artifact_chunks")
            .select("seq")
            .where("blob", "=", sha256)
            .limit(1)
            .executeTakeFirst();
          if (exists) await trx.deleteFrom("artifact_chunks").where("blob", "=", tmp).execute();
          else
            await trx.updateTable("artifact_chunks").set({ blob: sha256 }).where("blob", "=", tmp).execute();
        });
      } catch (err) {
        // An identical upload renamed its chunks first: that copy stands, this one's chunks go.
        if (!isUniqueViolation(err)) throw err;
        await db.deleteFrom("artifact_chunks").where("blob", "=", tmp).execute();
      }
      return { sha256, size };
    } catch (err) {
      await db.deleteFrom("artifact_chunks").where("blob", "=", tmp).execute();
      throw err;
    }
  }

  async open(sha256: string): Promise<Readable | null> {
    if (!/^[0-9a-f]{64}$/.test(sha256)) return null;
    const db = this.store.db;
    const first = await db
      .selectFrom("artifact_chunks")
      .select("seq")
      .where("blob", "=", sha256)
      .limit(1)
      .executeTakeFirst();
    if (!first) return null;
    // One chunk in memory at a time, read as the consumer pulls.
    return Readable.from(
      (async function* () {
        for (let seq = 0; ; seq++) {
          const row = await db
            .selectFrom("artifact_chunks")
            .select("data")
            .where("blob", "=", sha256)
            .where("seq", "=", seq)
            .executeTakeFirst();
          if (!row) return;
          yield Buffer.from(row.data);
        }
      })(),
    );
  }
}
