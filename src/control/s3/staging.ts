// Where the parts of a multipart upload wait until CompleteMultipartUpload assembles them: files under the
// artifact directory when packages are files, or 1 MiB chunks in the database when packages are in the
// database, so every control replica on one PostgreSQL can take a part of the same upload and assemble it.
// A staged part is named `{upload id}/{part number}-{nonce}`; it counts only once a part row names it, so
// anything else under an upload id is debris, removed with the upload.

import { createReadStream, createWriteStream } from "node:fs";
import { mkdir, readdir, rm } from "node:fs/promises";
import { join } from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { Store } from "../../store/store.ts";

export interface PartStaging {
  /** Writes the stream's bytes under `ref` (`{uploadId}/…`); on failure nothing of it remains. */
  write(ref: string, body: Readable): Promise<number>;
  open(ref: string): Readable;
  /** Removes one staged part (a part uploaded again replaces the earlier bytes). */
  remove(ref: string): Promise<void>;
  /** Removes everything staged for an upload. */
  removeUpload(uploadId: string): Promise<void>;
  /** Upload ids with anything staged, for the sweep of leftovers. */
  uploadIds(): Promise<string[]>;
}

const SAFE_REF = /^[a-z0-9]+\/[0-9]+-[a-z0-9]+$/;
const SAFE_UPLOAD_ID = /^[a-z0-9]+$/;

function checkRef(ref: string): string {
  if (!SAFE_REF.test(ref)) throw new Error(`invalid staging ref ${JSON.stringify(ref)}`);
  return ref;
}

function checkUploadId(id: string): string {
  if (!SAFE_UPLOAD_ID.test(id)) throw new Error(`invalid upload id ${JSON.stringify(id)}`);
  return id;
}

export class FilePartStaging implements PartStaging {
  private readonly dir: string;

  constructor(dir: string) {
    this.dir = dir;
  }

  async write(ref: string, body: Readable): Promise<number> {
    const path = join(this.dir, checkRef(ref));
    await mkdir(join(path, ".."), { recursive: true });
    let size = 0;
    try {
      await pipeline(
        body,
        async function* (source: AsyncIterable<Buffer>) {
          for await (const chunk of source) {
            size += chunk.length;
            yield chunk;
          }
        },
        createWriteStream(path, { flags: "wx" }),
      );
      return size;
    } catch (err) {
      await rm(path, { force: true });
      throw err;
    }
  }

  open(ref: string): Readable {
    return createReadStream(join(this.dir, checkRef(ref)));
  }

  async remove(ref: string): Promise<void> {
    await rm(join(this.dir, checkRef(ref)), { force: true });
  }

  async removeUpload(uploadId: string): Promise<void> {
    await rm(join(this.dir, checkUploadId(uploadId)), { recursive: true, force: true });
  }

  async uploadIds(): Promise<string[]> {
    try {
      return (await readdir(this.dir)).filter((name) => SAFE_UPLOAD_ID.test(name));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return [];
      throw err;
    }
  }
}

const CHUNK_BYTES = 1024 * 1024;

export class DatabasePartStaging implements PartStaging {
  private readonly store: Store;

  constructor(store: Store) {
    this.store = store;
  }

  async write(ref: string, body: Readable): Promise<number> {
    const uploadId = checkRef(ref).split("/")[0]!;
    const db = this.store.db;
    let size = 0;
    let seq = 0;
    let pending: Buffer[] = [];
    let pendingBytes = 0;
    const flush = async (final: boolean) => {
      while (pendingBytes >= CHUNK_BYTES || (final && (pendingBytes > 0 || seq === 0))) {
        const all = Buffer.concat(pending);
        const data = all.subarray(0, CHUNK_BYTES);
        const rest = all.subarray(data.length);
        pending = rest.length ? [rest] : [];
        pendingBytes = rest.length;
        await db
          .insertInto("s3_part_chunks")
          .values({
            ref,
            seq: seq++,
            upload_id: uploadId,
            data: Buffer.from(data),
            created_at: new Date().toISOString(),
          })
          .execute();
      }
    };
    try {
      for await (const chunk of body as AsyncIterable<Buffer>) {
        size += chunk.length;
        pending.push(chunk);
        pendingBytes += chunk.length;
        await flush(false);
      }
      await flush(true);
      return size;
    } catch (err) {
      await db.deleteFrom("s3_part_chunks").where("ref", "=", ref).execute();
      throw err;
    }
  }

  open(ref: string): Readable {
    const db = this.store.db;
    checkRef(ref);
    // One chunk in memory at a time, read as the consumer pulls.
    return Readable.from(
      (async function* () {
        for (let seq = 0; ; seq++) {
          const row = await db
            .selectFrom("s3_part_chunks")
            .select("data")
            .where("ref", "=", ref)
            .where("seq", "=", seq)
            .executeTakeFirst();
          if (!row) {
            if (seq === 0) throw new Error(`staged part ${ref} is missing`);
            return;
          }
          if (row.data.length > 0) yield Buffer.from(row.data);
        }
      })(),
    );
  }

  async remove(ref: string): Promise<void> {
    await this.store.db.deleteFrom("s3_part_chunks").where("ref", "=", checkRef(ref)).execute();
  }

  async removeUpload(uploadId: string): Promise<void> {
    await this.store.db
      .deleteFrom("s3_part_chunks")
      .where("upload_id", "=", checkUploadId(uploadId))
      .execute();
  }

  async uploadIds(): Promise<string[]> {
    const rows = await this.store.db.selectFrom("s3_part_chunks").select("upload_id").distinct().execute();
    return rows.map((r) => r.upload_id);
  }
}
