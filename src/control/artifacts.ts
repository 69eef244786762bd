// Meridian's own artifact store for model packages: blobs stored content-addressed by sha256 under the
// data directory, written to a temporary file first so a crash never leaves a partial blob in place.

import { createHash } from "node:crypto";
import { createReadStream, createWriteStream } from "node:fs";
import { mkdir, rename, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import type { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
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
  private readonly dir: string;

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
