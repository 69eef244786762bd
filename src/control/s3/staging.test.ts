// One conformance suite for both part stagings (files; the database on SQLite and on PostgreSQL): parts
// come back whole, a failed write leaves nothing, removal is per part or per upload, and refs cannot
// name anything outside the staging area.

import { createHash, randomBytes } from "node:crypto";
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { createTestDatabase } from "../../../test/support/databases.ts";
import { Store } from "../../store/store.ts";
import { DatabasePartStaging, FilePartStaging, type PartStaging } from "./staging.ts";

async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream as AsyncIterable<Buffer>) chunks.push(c);
  return Buffer.concat(chunks);
}

const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex");

interface Fixture {
  staging: PartStaging;
  cleanup(): Promise<void>;
}

function describeStaging(name: string, make: () => Promise<Fixture>) {
  describe(`part staging conformance: ${name}`, () => {
    let f: Fixture;
    beforeEach(async () => {
      f = await make();
    });
    afterEach(async () => f?.cleanup());

    it("gives parts back whole, from empty to several chunks, and lists their uploads", async () => {
      const sizes = [0, 1, 1024 * 1024, 2 * 1024 * 1024 + 3];
      const parts = sizes.map((n) => randomBytes(n));
      for (const [i, bytes] of parts.entries()) {
        const pieces = [];
        for (let at = 0; at < bytes.length; at += 300_001) pieces.push(bytes.subarray(at, at + 300_001));
        expect(await f.staging.write(`up${i % 2}/${i + 1}-n${i}`, Readable.from(pieces))).toBe(bytes.length);
      }
      for (const [i, bytes] of parts.entries()) {
        expect(sha(await readAll(f.staging.open(`up${i % 2}/${i + 1}-n${i}`)))).toBe(sha(bytes));
      }
      expect((await f.staging.uploadIds()).sort()).toEqual(["up0", "up1"]);
    });

    it("keeps nothing of a write whose stream fails", async () => {
      const failing = Readable.from(
        (async function* () {
          yield randomBytes(1_500_000);
          throw new Error("client went away");
        })(),
      );
      await expect(f.staging.write("gone/1-a", failing)).rejects.toThrow("client went away");
      await expect(readAll(f.staging.open("gone/1-a"))).rejects.toThrow();
    });

    it("removes one part, or everything of an upload", async () => {
      await f.staging.write("keep/1-a", Readable.from([Buffer.from("one")]));
      await f.staging.write("keep/2-b", Readable.from([Buffer.from("two")]));
      await f.staging.write("drop/1-c", Readable.from([Buffer.from("three")]));
      await f.staging.remove("keep/1-a");
      await expect(readAll(f.staging.open("keep/1-a"))).rejects.toThrow();
      expect((await readAll(f.staging.open("keep/2-b"))).toString()).toBe("two");
      await f.staging.removeUpload("drop");
      await expect(readAll(f.staging.open("drop/1-c"))).rejects.toThrow();
      expect(await f.staging.uploadIds()).toEqual(["keep"]);
      await f.staging.removeUpload("neverwas");
    });

    it("refuses refs that could reach outside the staging area", async () => {
      for (const ref of ["../x/1-a", "a/../../1-b", "/etc/1-c", "a/b/1-c", "a/1-a/..", "A/1-a", "a/x"]) {
        await expect(f.staging.write(ref, Readable.from([Buffer.from("x")])), ref).rejects.toThrow(
          /invalid staging ref/,
        );
      }
      await expect(f.staging.removeUpload("..")).rejects.toThrow(/invalid upload id/);
    });
  });
}

describeStaging("files", async () => {
  const dir = mkdtempSync(join(tmpdir(), "meridian-staging-"));
  return {
    staging: new FilePartStaging(join(dir, "s3-parts")),
    async cleanup() {
      // Nothing was written outside the staging directory.
      expect(readdirSync(dir).filter((n) => n !== "s3-parts")).toEqual([]);
      rmSync(dir, { recursive: true, force: true });
    },
  };
});

for (const kind of ["sqlite", "postgres"] as const) {
  describeStaging(`database (${kind})`, async () => {
    const db = await createTestDatabase(kind);
    const store = await Store.open(
      db.url === null
        ? { kind: "sqlite", file: join(db.dir, "meridian.db") }
        : { kind: "postgres", url: db.url },
    );
    return {
      staging: new DatabasePartStaging(store),
      async cleanup() {
        await store.close();
        await db.drop();
      },
    };
  });
}
