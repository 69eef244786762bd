import { spawn } from "node:child_process";
import {
  createHash,
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  type KeyObject,
} from "node:crypto";
import { mkdtemp, readdir, readFile, rm, stat, truncate, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { type DirectoryKey, keyDirectory } from "../core/key-directory.ts";
import {
  type AuditSeal,
  type AuditSigningKey,
  checkAuditDirectory,
  checkAuditExport,
  crcList,
  directorySealKeys,
  sealBatch,
} from "../lib/audit-chain.ts";
import { AuditLog, type AuditRecord, parseAuditRetention } from "./audit.ts";

const dirs: string[] = [];
async function tempDir(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), "meridian-audit-"));
  dirs.push(d);
  return d;
}
afterEach(async () => {
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
});

function rec(i: number, over: Partial<AuditRecord> = {}): AuditRecord {
  return {
    time: new Date(Date.UTC(2025, 0, 1, 0, 0, i)).toISOString(),
    request_id: `req-${i}`,
    model_id: i % 2 === 0 ? "aaaaaaa1" : "bbbbbbb2",
    environment: i % 3 === 0 ? "prod-eu" : "production",
    deployment_id: "d1",
    hostname_form: "regional",
    route: ["eu-1"],
    status: i % 5 === 0 ? 503 : 200,
    latency_ms: 1.5,
    plane: "eu-1",
    region: "eu",
    processed_by: "eu-1",
    forwarded_from: null,
    error_code: null,
    aborted: false,
    ...over,
  };
}

interface TestKey extends AuditSigningKey {
  raw: string;
  publicKey: KeyObject;
}
function testKey(seedByte?: number): TestKey & { seedHex: string } {
  const seed = seedByte === undefined ? null : Buffer.alloc(32, seedByte);
  const privateKey =
    seed === null
      ? generateKeyPairSync("ed25519").privateKey
      : createPrivateKey({
          key: Buffer.concat([Buffer.from("302e020100300506032b657004220420", "hex"), seed]),
          format: "der",
          type: "pkcs8",
        });
  const publicKey = createPublicKey(privateKey);
  const raw = publicKey.export({ format: "jwk" }).x!;
  const keyId = createHash("sha256").update(Buffer.from(raw, "base64url")).digest("hex").slice(0, 16);
  return { keyId, privateKey, publicKey, raw, seedHex: seed?.toString("hex") ?? "" };
}

function dirEntry(k: TestKey, plane: string, region: string): DirectoryKey {
  return {
    key_id: k.keyId,
    plane,
    region,
    alg: "ed25519",
    public_key: k.raw,
    valid_from: "2020-01-01T00:00:00.000Z",
    retired_at: null,
  };
}

const eu1 = testKey();
const us1 = testKey();
const directory = keyDirectory([dirEntry(eu1, "eu-1", "eu"), dirEntry(us1, "us-1", "us")], new Date());
const keys = directorySealKeys(directory);
const PLANE = { name: "eu-1", region: "eu" };

/** The lines of a file with their offsets. */
async function linesOf(path: string): Promise<Array<{ offset: number; text: string }>> {
  const text = await readFile(path, "utf8");
  const out: Array<{ offset: number; text: string }> = [];
  let offset = 0;
  for (const line of text.split("\n")) {
    if (line.length > 0) out.push({ offset, text: line });
    offset += Buffer.byteLength(line) + 1;
  }
  return out;
}

async function chainFiles(dir: string): Promise<string[]> {
  return (await readdir(dir)).filter((n) => n.startsWith("audit-")).sort();
}

/** A log with a few batches: 3 records each, flushed one by one. */
async function writtenLog(
  dir: string,
  batches = 3,
  over: Partial<ConstructorParameters<typeof AuditLog>[0]> = {},
) {
  const log = new AuditLog({ dir, plane: PLANE, signingKey: eu1, ...over });
  await log.start();
  for (let b = 0; b < batches; b++) {
    for (let i = 0; i < 3; i++) log.record(rec(b * 3 + i));
    await log.flush();
  }
  await log.stop();
  return log;
}

describe("AuditLog", () => {
  it("flushes a batch within the interval without being asked, and seals it", async () => {
    const log = new AuditLog({ dir: await tempDir(), flushIntervalMs: 50 });
    await log.start();
    log.record(rec(1));
    log.record(rec(2));
    await new Promise((r) => setTimeout(r, 150));
    const lines = (await readFile(log.path, "utf8")).trim().split("\n");
    const records = lines.filter((l) => !l.startsWith('{"t":'));
    expect(records.map((l) => JSON.parse(l).request_id)).toEqual(["req-1", "req-2"]);
    expect(JSON.parse(lines.at(-1)!)).toMatchObject({ t: "seal", seq: 1, n: 2 });
    await log.stop();
  });

  it("queries by time range, model, environment and request id, newest first, with a limit", async () => {
    const log = new AuditLog({ dir: await tempDir() });
    await log.start();
    for (let i = 0; i < 30; i++) log.record(rec(i));
    const all = await log.query({ limit: 1000 });
    expect(all.map((r) => r.request_id)).toEqual(Array.from({ length: 30 }, (_, i) => `req-${29 - i}`));
    expect((await log.query({ request_id: "req-7" })).map((r) => r.request_id)).toEqual(["req-7"]);
    const m = await log.query({ model_id: "aaaaaaa1", environment: "prod-eu" });
    expect(m.map((r) => r.request_id)).toEqual(["req-24", "req-18", "req-12", "req-6", "req-0"]);
    const ranged = await log.query({
      from: "2025-01-01T00:00:10Z",
      to: new Date(Date.UTC(2025, 0, 1, 0, 0, 13)),
    });
    expect(ranged.map((r) => r.request_id)).toEqual(["req-12", "req-11", "req-10"]);
    expect(await log.query({ limit: 2 })).toHaveLength(2);
    await log.stop();
  });

  it("starts a new file past maxFileBytes, keeps every record, and queries across files", async () => {
    const dir = await tempDir();
    const log = new AuditLog({ dir, plane: PLANE, signingKey: eu1, maxFileBytes: 2_000 });
    await log.start();
    for (let i = 0; i < 40; i++) {
      log.record(rec(i));
      await log.flush();
    }
    expect((await chainFiles(dir)).length).toBeGreaterThan(3);
    const recent = await log.query({ limit: 1000 });
    expect(recent.map((r) => r.request_id)).toEqual(Array.from({ length: 40 }, (_, i) => `req-${39 - i}`));
    await log.stop();
    const check = await checkAuditDirectory(dir, { keys });
    expect(check).toMatchObject({ ok: true, records: 40, batches: 41, unsigned: 0, break: null });
  });

  it("reads the size-rotated files of older versions, and never chains them", async () => {
    const dir = await tempDir();
    await writeFile(join(dir, "audit.jsonl.1"), `${JSON.stringify(rec(1))}\n`);
    await writeFile(join(dir, "audit.jsonl"), `${JSON.stringify(rec(2))}\n`);
    const log = new AuditLog({ dir });
    await log.start();
    log.record(rec(3));
    expect((await log.query()).map((r) => r.request_id)).toEqual(["req-3", "req-2", "req-1"]);
    await log.stop();
    expect(await checkAuditDirectory(dir)).toMatchObject({
      ok: true,
      legacy: ["audit.jsonl", "audit.jsonl.1"],
    });
  });

  it("aggregates counts by model, environment and status class; take drains, restore puts back", async () => {
    const log = new AuditLog({ dir: await tempDir() });
    await log.start();
    for (let i = 0; i < 10; i++) log.record(rec(i));
    log.record(rec(99, { model_id: null, status: 400 })); // an invalid Host: no model to count
    const counts = log.takeRequestCounts();
    const key = (c: { model_id: string; environment: string | null; status_class: string }) =>
      `${c.model_id}/${c.environment}/${c.status_class}`;
    expect(Object.fromEntries(counts.map((c) => [key(c), c.count]))).toEqual({
      "aaaaaaa1/prod-eu/5xx": 1,
      "aaaaaaa1/production/2xx": 3,
      "aaaaaaa1/prod-eu/2xx": 1,
      "bbbbbbb2/prod-eu/2xx": 2,
      "bbbbbbb2/production/2xx": 2,
      "bbbbbbb2/production/5xx": 1,
    });
    expect(log.takeRequestCounts()).toEqual([]);
    log.restoreRequestCounts(counts);
    log.record(rec(2));
    const again = Object.fromEntries(log.takeRequestCounts().map((c) => [key(c), c.count]));
    expect(again["aaaaaaa1/production/2xx"]).toBe(4);
    await log.stop();
  });

  it("never writes keys or bodies: records hold only their fields, seals only hashes of them", async () => {
    const log = new AuditLog({ dir: await tempDir(), plane: PLANE, signingKey: eu1 });
    await log.start();
    log.record(rec(1));
    await log.flush();
    const lines = (await readFile(log.path, "utf8")).trim().split("\n");
    const records = lines.filter((l) => !l.startsWith('{"t":'));
    expect(records).toHaveLength(1);
    expect(Object.keys(JSON.parse(records[0]!)).sort()).toEqual(Object.keys(rec(1)).sort());
    for (const seal of lines.filter((l) => l.startsWith('{"t":'))) {
      expect(Object.keys(JSON.parse(seal)).sort()).toEqual(
        expect.arrayContaining([
          "t",
          "v",
          "seq",
          "prev",
          "n",
          "bytes",
          "crc",
          "hash",
          "keyid",
          "sig",
          "sealed_at",
        ]),
      );
      expect(seal).not.toContain("req-1");
    }
    await log.stop();
  });
});

describe("the audit chain", () => {
  it("chains and signs every batch; a plane without a key still writes a chain, unsigned", async () => {
    const dir = await tempDir();
    await writtenLog(dir);
    const check = await checkAuditDirectory(dir, { keys });
    // One opening seal and three batches.
    expect(check).toMatchObject({ ok: true, batches: 4, records: 9, unsigned: 0, torn: [], break: null });
    expect(check.first).toEqual({ seq: 0, prev: "0".repeat(64) });

    const bare = await tempDir();
    await writtenLog(bare, 2, { signingKey: null });
    expect(await checkAuditDirectory(bare, { keys })).toMatchObject({
      ok: true,
      batches: 3,
      records: 6,
      unsigned: 3,
    });
    // A key that arrives later signs from then on.
    let key: AuditSigningKey | null = null;
    const later = new AuditLog({ dir: bare, plane: PLANE, signingKey: () => key });
    await later.start();
    key = eu1;
    later.record(rec(50));
    await later.stop();
    expect(await checkAuditDirectory(bare, { keys })).toMatchObject({ ok: true, records: 7, unsigned: 4 });
    // A log first written without its plane's name may be given one; another plane's name is a break.
    const unnamed = await tempDir();
    await writtenLog(unnamed, 1, { plane: undefined });
    await writtenLog(unnamed, 1);
    expect(await checkAuditDirectory(unnamed, { keys })).toMatchObject({ ok: true, records: 6 });
    await writtenLog(unnamed, 1, { plane: { name: "eu-2", region: "eu" } });
    expect((await checkAuditDirectory(unnamed, { keys })).break).toMatchObject({ kind: "other_plane" });
  });

  /** Rewrites one file of a fresh three-batch log and returns what the checker says. */
  async function tampered(edit: (lines: Array<{ offset: number; text: string }>) => string[]) {
    const dir = await tempDir();
    await writtenLog(dir);
    const [file] = await chainFiles(dir);
    const path = join(dir, file!);
    const lines = await linesOf(path);
    await writeFile(path, `${edit(lines).join("\n")}\n`);
    return { check: await checkAuditDirectory(dir, { keys }), lines, file: file! };
  }
  const isSeal = (l: { text: string }) => l.text.startsWith('{"t":"seal"');

  it("says where a record was modified", async () => {
    // Lines: opening seal, r0 r1 r2 seal1, r3 r4 r5 seal2, r6 r7 r8 seal3.
    const { check, lines, file } = await tampered((ls) =>
      ls.map((l, i) => (i === 6 ? l.text.replace('"status":200', '"status":201') : l.text)),
    );
    expect(check.break).toEqual({
      kind: "record_modified",
      file,
      offset: lines[6]!.offset,
      seq: 2,
      message: "record 2 of batch 2 was modified",
    });
    expect(check.ok).toBe(false);
  });

  it("says where a record was deleted", async () => {
    const { check, lines, file } = await tampered((ls) => ls.filter((_, i) => i !== 2).map((l) => l.text));
    // The record that followed the deleted one now sits where the deleted one was.
    expect(check.break).toMatchObject({ kind: "record_deleted", file, offset: lines[2]!.offset, seq: 1 });
  });

  it("says where records were reordered", async () => {
    const { check, lines, file } = await tampered((ls) => {
      const t = ls.map((l) => l.text);
      [t[5], t[6]] = [t[6]!, t[5]!];
      return t;
    });
    expect(check.break).toMatchObject({ kind: "records_reordered", file, offset: lines[5]!.offset, seq: 2 });
  });

  it("says a batch is missing, and where the chain resumes", async () => {
    const { check, lines, file } = await tampered((ls) =>
      ls.filter((_, i) => i < 5 || i > 8).map((l) => l.text),
    );
    expect(check.break).toMatchObject({
      kind: "batch_missing",
      file,
      offset: lines[5]!.offset, // where batch 3's records now start
      seq: 3,
      message: "batch 2 is missing: after seal 1 comes seal 3",
    });
  });

  it("says a seal was altered, or removed", async () => {
    const altered = await tampered((ls) =>
      ls.map((l, i) =>
        i === 4 ? l.text.replace(/"sealed_at":"[^"]+"/, '"sealed_at":"2030-01-01T00:00:00.000Z"') : l.text,
      ),
    );
    expect(altered.check.break).toMatchObject({
      kind: "seal_modified",
      offset: altered.lines[4]!.offset,
      seq: 1,
    });
    const removed = await tampered((ls) => ls.filter((_, i) => i !== 4).map((l) => l.text));
    expect(removed.check.break).toMatchObject({
      kind: "unsealed_records",
      offset: removed.lines[1]!.offset,
      seq: 2,
    });
  });

  it("catches a rewrite that recomputes the hashes, by its signature", async () => {
    const { check, lines, file } = await tampered((ls) => {
      const out = ls.map((l) => l.text);
      // Change a record, then reseal its batch (and every later one) correctly, with no key or another's.
      let prev = JSON.parse(out[0]!) as AuditSeal;
      let records: string[] = [];
      for (let i = 1; i < out.length; i++) {
        if (!isSeal({ text: out[i]! })) {
          records.push(i === 2 ? out[i]!.replace('"status":503', '"status":200') : out[i]!);
          if (i === 2) out[i] = records.at(-1)!;
          continue;
        }
        const old = JSON.parse(out[i]!) as AuditSeal;
        const data = Buffer.from(records.map((r) => `${r}\n`).join(""));
        const { t: _t, v: _v, hash: _h, keyid: _k, sig: _s, ...fields } = old;
        const crc = crcList(
          data,
          records.map((r) => Buffer.byteLength(r) + 1),
        );
        const forged = sealBatch({ ...fields, prev: prev.hash, crc }, data, us1);
        out[i] = JSON.stringify(forged);
        prev = forged;
        records = [];
      }
      return out;
    });
    expect(check.break).toMatchObject({ kind: "other_plane", file, offset: lines[4]!.offset, seq: 1 });
  });

  it("says a file is missing, from the middle or the start", async () => {
    const dir = await tempDir();
    await writtenLog(dir, 6, { maxFileBytes: 1_500 });
    const files = await chainFiles(dir);
    expect(files.length).toBeGreaterThanOrEqual(3);
    await rm(join(dir, files[1]!));
    const middle = await checkAuditDirectory(dir, { keys });
    expect(middle.break).toMatchObject({ kind: "batch_missing", file: files[2], offset: 0 });
    await rm(join(dir, files[0]!));
    const start = await checkAuditDirectory(dir, { keys });
    expect(start.break).toMatchObject({ kind: "file_missing", file: files[2], offset: 0 });
  });

  it("takes a torn last batch for a crash, not tampering, and the next start records it", async () => {
    const dir = await tempDir();
    await writtenLog(dir);
    const [file] = await chainFiles(dir);
    const path = join(dir, file!);
    const lines = await linesOf(path);
    // Cut the last batch in the middle of its second record: what a SIGKILL mid-write leaves.
    const cut = lines[10]!.offset + 17;
    await truncate(path, cut);
    const torn = await checkAuditDirectory(dir, { keys });
    expect(torn).toMatchObject({
      ok: true,
      records: 6,
      torn: [
        { file, offset: lines[9]!.offset, bytes: cut - lines[9]!.offset, records: 1, acknowledged: false },
      ],
      break: null,
    });
    // A restart continues the chain in a new file and records the torn bytes in its first seal.
    const log = new AuditLog({ dir, plane: PLANE, signingKey: eu1 });
    await log.start();
    log.record(rec(100));
    await log.stop();
    const after = await checkAuditDirectory(dir, { keys });
    expect(after).toMatchObject({ ok: true, records: 7, break: null });
    expect(after.torn).toEqual([
      { file, offset: lines[9]!.offset, bytes: cut - lines[9]!.offset, records: 1, acknowledged: true },
    ]);
    // Torn bytes in the middle of the chain that no seal acknowledges are not a crash.
    await truncate(path, lines[5]!.offset + 10);
    const hidden = await checkAuditDirectory(dir, { keys });
    expect(hidden.break).toMatchObject({ kind: "unsealed_records", file, offset: lines[5]!.offset });
  });

  it("loses at most the unflushed window when the writer is SIGKILLed mid-write", async () => {
    const dir = await tempDir();
    const key = testKey(7);
    const child = spawn(
      process.execPath,
      ["--import", "tsx", join(import.meta.dirname, "testdata", "audit-writer.ts"), dir, key.seedHex],
      { stdio: ["ignore", "pipe", "inherit"] },
    );
    let durable = 0;
    let out = "";
    await new Promise<void>((resolve, reject) => {
      child.on("exit", (code) => reject(new Error(`writer exited early (${code})`)));
      child.stdout.on("data", (chunk: Buffer) => {
        out += chunk.toString();
        for (const m of out.matchAll(/durable (\d+)\n/g)) durable = Math.max(durable, Number(m[1]));
        // Kill it while it is busy writing, some batches in.
        if (durable >= 5_000) resolve();
      });
    });
    child.removeAllListeners("exit");
    const exited = new Promise((r) => child.once("exit", r));
    child.kill("SIGKILL");
    await exited;
    const seen = durable;

    const own = directorySealKeys(keyDirectory([dirEntry(key, "eu-1", "eu")], new Date()));
    const check = await checkAuditDirectory(dir, { keys: own });
    expect(check.ok, JSON.stringify(check.break)).toBe(true);
    // Every record a completed flush returned for is there, and what is there has no hole.
    const log = new AuditLog({ dir, plane: PLANE, signingKey: key });
    await log.start();
    const ids: number[] = [];
    for await (const item of log.export()) {
      if (item.type === "batch")
        for (const r of item.records) ids.push(Number(JSON.parse(r).request_id.slice(4)));
    }
    await log.stop();
    expect(ids.length).toBeGreaterThanOrEqual(seen);
    expect(ids.every((id, i) => id === i)).toBe(true);
    // The restart recorded any torn tail, and the whole chain still checks.
    const after = await checkAuditDirectory(dir, { keys: own });
    expect(after.ok).toBe(true);
    expect(after.torn.every((t) => t.acknowledged)).toBe(true);
  });
});

describe("retention", () => {
  it("parses --audit-retention", () => {
    expect(parseAuditRetention("30d")).toEqual({ ok: true, ms: 30 * 86_400_000 });
    expect(parseAuditRetention("30")).toEqual({ ok: true, ms: 30 * 86_400_000 });
    expect(parseAuditRetention("12h")).toEqual({ ok: true, ms: 12 * 3_600_000 });
    expect(parseAuditRetention("90m")).toEqual({ ok: true, ms: 90 * 60_000 });
    for (const bad of ["", "30 days", "-1d", "1.5d", "10m", "0"]) {
      expect(parseAuditRetention(bad), bad).toMatchObject({ ok: false });
    }
  });

  it("removes whole files older than the retention, declared in the chain first", async () => {
    const dir = await tempDir();
    const DAY = 86_400_000;
    let now = Date.UTC(2025, 0, 1);
    const log = new AuditLog({
      dir,
      plane: PLANE,
      signingKey: eu1,
      retentionMs: 30 * DAY,
      rotateIntervalMs: DAY,
      now: () => now,
    });
    await log.start();
    // One request a day for 40 days, each in the day's file.
    for (let day = 0; day < 40; day++) {
      log.record(rec(0, { time: new Date(now).toISOString(), request_id: `day-${day}` }));
      await log.flush();
      now += DAY;
      await log.enforceRetention();
    }
    const kept = (await log.query({ limit: 100 })).map((r) => r.request_id);
    // Day 39 was written at now − 1 day; records of days older than 30 days are gone, whole files at a time.
    expect(kept[0]).toBe("day-39");
    expect(kept.at(-1)).toBe("day-10");
    await log.stop();
    const check = await checkAuditDirectory(dir, { keys });
    expect(check).toMatchObject({ ok: true, break: null });
    expect(check.first!.seq).toBeGreaterThan(0);

    // A failing sweep is reported and stops nothing: writes go on.
    const { symlink } = await import("node:fs/promises");
    await symlink(join(dir, "gone"), join(dir, "audit.jsonl.1")); // stat fails on it
    const errors: unknown[] = [];
    const again = new AuditLog({
      dir,
      plane: PLANE,
      signingKey: eu1,
      retentionMs: 30 * DAY,
      now: () => now,
      onError: (e) => errors.push(e),
    });
    await again.start();
    again.record(rec(0, { time: new Date(now).toISOString(), request_id: "after" }));
    expect((await again.query({ request_id: "after" })).map((r) => r.request_id)).toEqual(["after"]);
    await again.stop();
    expect(errors).toEqual([expect.objectContaining({ code: "ENOENT" })]);
    await rm(join(dir, "audit.jsonl.1"));

    // Removing a file retention would still keep is not retention.
    const files = await chainFiles(dir);
    await rm(join(dir, files[0]!));
    expect((await checkAuditDirectory(dir, { keys })).break).toMatchObject({ kind: "file_missing" });
  });
});

describe("export", () => {
  it("yields the batches of a range with the heads they cover, and verifies as a file", async () => {
    const dir = await tempDir();
    // The clock of the records' times (files are named by it, and an export reads by them).
    const log = new AuditLog({
      dir,
      plane: PLANE,
      signingKey: eu1,
      now: () => Date.UTC(2025, 0, 1, 0, 0, 30),
    });
    await log.start();
    for (let b = 0; b < 5; b++) {
      for (let i = 0; i < 4; i++) log.record(rec(b * 4 + i));
      await log.flush();
    }
    // Records 8…11 are batch 3 (seconds 8–11); ask for seconds 9–13: batches 3 and 4.
    const items = [];
    for await (const item of log.export({ from: "2025-01-01T00:00:09Z", to: "2025-01-01T00:00:14Z" }))
      items.push(item);
    const [header, ...batches] = items;
    expect(header).toMatchObject({
      type: "header",
      header: { first: { seq: 3 }, last: { seq: 4 }, batches: 2 },
    });
    expect(batches.map((b) => (b.type === "batch" ? b.seal.seq : -1))).toEqual([3, 4]);
    const path = join(dir, "export.jsonl");
    let text = "";
    for await (const line of log.exportLines({ from: "2025-01-01T00:00:09Z", to: "2025-01-01T00:00:14Z" }))
      text += line;
    await writeFile(path, text);
    await log.stop();
    const check = await checkAuditExport(path, { keys });
    expect(check).toMatchObject({ ok: true, batches: 2, records: 8, break: null });
    expect(check.head).toMatchObject({ seq: 4 });
    // An export with a changed record says where.
    await writeFile(path, text.replace('"request_id":"req-13"', '"request_id":"req-99"'));
    expect((await checkAuditExport(path, { keys })).break).toMatchObject({ kind: "record_modified", seq: 4 });
    // One whose last batch was dropped no longer ends where its header says.
    const cut = text.split("\n").slice(0, 6).join("\n");
    await writeFile(path, `${cut}\n`);
    expect((await checkAuditExport(path, { keys })).ok).toBe(false);
    expect((await stat(path)).size).toBeGreaterThan(0);
  });
});
