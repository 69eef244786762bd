// One conformance suite for every ArtifactStore: content addressing, streaming, the size limit, and no
// partial blob after a failed upload.

import { createHash, randomBytes } from "node:crypto";
import { Readable } from "node:stream";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { type ArtifactStore, BlobTooLargeError } from "./artifacts.ts";

export interface ArtifactStoreFixture {
  store: ArtifactStore;
  cleanup(): Promise<void>;
}

async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream as AsyncIterable<Buffer>) chunks.push(c);
  return Buffer.concat(chunks);
}

/** A stream of `bytes` in pieces of uneven size, as a network upload arrives. */
function uneven(bytes: Buffer): Readable {
  const pieces: Buffer[] = [];
  for (let i = 0; i < bytes.length; ) {
    const n = Math.min(bytes.length - i, 1 + ((i * 7919) % 300_000));
    pieces.push(bytes.subarray(i, i + n));
    i += n;
  }
  return Readable.from(pieces);
}

const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex");

export function describeArtifactStoreConformance(
  name: string,
  make: () => Promise<ArtifactStoreFixture>,
): void {
  describe(`artifact store conformance: ${name}`, () => {
    let fixture: ArtifactStoreFixture;
    beforeEach(async () => {
      fixture = await make();
      await fixture.store.start();
    });
    afterEach(async () => fixture?.cleanup());

    it("stores bytes under their sha256 and gives them back whole, across chunk boundaries", async () => {
      for (const size of [0, 1, 1024 * 1024, 1024 * 1024 + 1, 3 * 1024 * 1024 + 17]) {
        const bytes = randomBytes(size);
        const stored = await fixture.store.put(uneven(bytes), 10 * 1024 * 1024);
        expect(stored).toEqual({ sha256: sha(bytes), size });
        const back = await fixture.store.open(stored.sha256);
        expect(back).not.toBeNull();
        expect(sha(await readAll(back!))).toBe(stored.sha256);
      }
    });

    it("keeps one copy of identical content", async () => {
      const bytes = randomBytes(200_000);
      // Several at once, so they race to the same digest.
      const results = await Promise.all(
        Array.from({ length: 6 }, () => fixture.store.put(uneven(bytes), 1e9)),
      );
      const a = results[0]!;
      for (const b of results) expect(b).toEqual(a);
      expect(await readAll((await fixture.store.open(a.sha256))!)).toEqual(bytes);
    });

    it("refuses more than the limit and keeps nothing of it", async () => {
      const bytes = randomBytes(2 * 1024 * 1024);
      await expect(fixture.store.put(uneven(bytes), 1024 * 1024)).rejects.toBeInstanceOf(BlobTooLargeError);
      expect(await fixture.store.open(sha(bytes))).toBeNull();
    });

    it("keeps nothing of an upload whose stream fails midway", async () => {
      const bytes = randomBytes(1_500_000);
      const failing = Readable.from(
        (async function* () {
          yield bytes.subarray(0, 1_200_000);
          throw new Error("client went away");
        })(),
      );
      await expect(fixture.store.put(failing, 1e9)).rejects.toThrow("client went away");
      expect(await fixture.store.open(sha(bytes))).toBeNull();
      expect(await fixture.store.open(sha(bytes.subarray(0, 1_200_000)))).toBeNull();
    });

    it("answers null for unknown and malformed digests", async () => {
      expect(await fixture.store.open("0".repeat(64))).toBeNull();
      expect(await fixture.store.open("../../etc/passwd")).toBeNull();
    });
  });
}
