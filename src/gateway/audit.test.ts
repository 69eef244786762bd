import { mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { AuditLog, type AuditRecord } from "./audit.ts";

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

describe("AuditLog", () => {
  it("flushes a batch within the interval without being asked", async () => {
    const log = new AuditLog({ dir: await tempDir(), flushIntervalMs: 50 });
    await log.start();
    log.record(rec(1));
    log.record(rec(2));
    await new Promise((r) => setTimeout(r, 150));
    const lines = (await readFile(log.path, "utf8")).trim().split("\n");
    expect(lines.map((l) => JSON.parse(l).request_id)).toEqual(["req-1", "req-2"]);
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

  it("rotates by size, keeps maxFiles, and still queries across files", async () => {
    const dir = await tempDir();
    const log = new AuditLog({ dir, maxFileBytes: 2_000, maxFiles: 2 });
    await log.start();
    for (let i = 0; i < 40; i++) {
      log.record(rec(i));
      await log.flush();
    }
    const files = (await readdir(dir)).sort();
    expect(files).toEqual(["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]);
    const recent = await log.query({ limit: 1000 });
    expect(recent[0]!.request_id).toBe("req-39");
    expect(recent.length).toBeLessThan(40); // the oldest were rotated away
    for (let i = 1; i < recent.length; i++) {
      expect(Number(recent[i - 1]!.request_id.slice(4))).toBe(Number(recent[i]!.request_id.slice(4)) + 1);
    }
    await log.stop();
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

  it("never writes keys or bodies: only the record's fields", async () => {
    const log = new AuditLog({ dir: await tempDir() });
    await log.start();
    log.record(rec(1));
    await log.flush();
    const line = JSON.parse((await readFile(log.path, "utf8")).trim());
    expect(Object.keys(line).sort()).toEqual(Object.keys(rec(1)).sort());
    await log.stop();
  });
});
