// The durable async queue on real files: what is acknowledged survives a reopen and a SIGKILL mid-write, a
// torn or altered line is dropped and nothing else, running requests go back to the queue, ended ones lose
// their payload, and the journal is rewritten small.
import { spawn } from "node:child_process";
import { appendFileSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { describe, expect, it } from "vitest";
import { AsyncQueue, type AsyncRecord, QUEUE_FILE } from "./async-queue.ts";

function record(id: string, over: Partial<AsyncRecord> = {}): Omit<AsyncRecord, "seq"> {
  return {
    id,
    model_id: "abcd1234",
    team_id: "team1",
    environment: "prod-eu",
    target: { kind: "environment", name: "prod-eu" },
    deployment_id: "dep1",
    priority: 0,
    created_at: 1_000,
    expires_at: 601_000,
    webhook: "https://hooks.example/x",
    retry: { max_attempts: 3, initial_delay_ms: 10, max_delay_ms: 100 },
    status: "QUEUED",
    webhook_status: "PENDING",
    status_at: 1_000,
    attempts: 0,
    errors: [],
    input: { text: `input of ${id}` },
    input_bytes: 100,
    output: null,
    ...over,
  };
}

async function dir(): Promise<string> {
  return mkdtemp(join(tmpdir(), "meridian-async-queue-"));
}

describe("AsyncQueue", () => {
  it("keeps what it acknowledged across a reopen, and running requests run again", async () => {
    const d = await dir();
    const q = new AsyncQueue({ dir: d });
    await q.open();
    await q.add(record("a"));
    await q.add(record("b", { priority: 2 }));
    await q.add(record("c"));
    await q.start(q.get("a")!, "dep1");
    await q.start(q.get("c")!, "dep1");
    await q.finish(q.get("c")!, "SUCCEEDED", [], { out: 1 });
    await q.close();

    const again = new AsyncQueue({ dir: d });
    await again.open();
    expect(again.dropped).toBe(0);
    const a = again.get("a")!;
    expect([a.status, a.attempts, a.input]).toEqual(["QUEUED", 1, { text: "input of a" }]);
    expect(again.get("b")!.priority).toBe(2);
    const c = again.get("c")!;
    // Ended: the input is gone; the output stays while the webhook is due.
    expect([c.status, c.input, c.output, c.webhook_status]).toEqual([
      "SUCCEEDED",
      null,
      { out: 1 },
      "PENDING",
    ]);
    expect([...again.webhooksDue()].map((r) => r.id)).toEqual(["c"]);
    await again.webhookDone(c, "SUCCEEDED");
    expect(c.output).toBeNull();
    // Arrival order continues after the replayed records.
    await again.add(record("d"));
    expect(again.get("d")!.seq).toBeGreaterThan(again.get("c")!.seq);
    await again.close();
    // The payloads of ended requests are not in the journal any more once it is rewritten.
    const third = new AsyncQueue({ dir: d });
    await third.open();
    await third.close();
    const text = readFileSync(join(d, QUEUE_FILE), "utf8");
    expect(text).not.toContain("input of c");
    expect(text).toContain("input of a");
  });

  it("a cancelled request and a request without a webhook end with the webhook states of the reference", async () => {
    const d = await dir();
    const q = new AsyncQueue({ dir: d });
    await q.open();
    await q.add(record("x"));
    await q.add(record("y", { webhook: null, webhook_status: "NO_WEBHOOK_PROVIDED" }));
    await q.finish(q.get("x")!, "CANCELED", []);
    await q.start(q.get("y")!, "dep1");
    await q.finish(q.get("y")!, "SUCCEEDED", [], { big: "result" });
    expect(q.get("x")!.webhook_status).toBe("CANCELED");
    // No webhook: nothing to deliver, so the output is never kept.
    expect(q.get("y")!.output).toBeNull();
    expect([...q.webhooksDue()]).toEqual([]);
    await q.close();
  });

  it("a failed webhook after a success reads WEBHOOK_FAILED", async () => {
    const q = new AsyncQueue({ dir: await dir() });
    await q.open();
    await q.add(record("w"));
    await q.start(q.get("w")!, "dep1");
    await q.finish(q.get("w")!, "SUCCEEDED", [], 1);
    await q.webhookDone(q.get("w")!, "FAILED");
    expect([q.get("w")!.status, q.get("w")!.webhook_status]).toEqual(["WEBHOOK_FAILED", "FAILED"]);
    await q.close();
  });

  it("drops a torn last line and a line whose checksum does not match, and keeps the rest", async () => {
    const d = await dir();
    const q = new AsyncQueue({ dir: d });
    await q.open();
    await q.add(record("keep"));
    await q.add(record("altered"));
    await q.close();
    const path = join(d, QUEUE_FILE);
    // An attacker (or a bad disk) edits a line: its checksum no longer matches.
    const text = readFileSync(path, "utf8").replace("input of altered", "input of ALTERED");
    writeFileSync(path, text);
    // A crash mid-write: half a line, no newline.
    appendFileSync(path, text.split("\n")[0]!.slice(0, 40));
    const again = new AsyncQueue({ dir: d });
    await again.open();
    expect(again.dropped).toBe(2);
    expect(again.get("keep")?.status).toBe("QUEUED");
    expect(again.get("altered")).toBeUndefined();
    // The rewritten journal is whole again.
    await again.close();
    const third = new AsyncQueue({ dir: d });
    await third.open();
    expect(third.dropped).toBe(0);
    await third.close();
  });

  it("forgets ended requests past retention when the journal is rewritten", async () => {
    let now = 10_000;
    const d = await dir();
    const q = new AsyncQueue({ dir: d, retentionMs: 1_000, now: () => now });
    await q.open();
    await q.add(record("old", { webhook: null }));
    await q.add(record("live"));
    await q.finish(q.get("old")!, "EXPIRED", [{ code: "MODEL_UNAVAILABLE", message: "m" }]);
    await q.close();
    now += 5_000;
    const again = new AsyncQueue({ dir: d, retentionMs: 1_000, now: () => now });
    await again.open();
    expect(again.get("old")).toBeUndefined();
    expect(again.get("live")).toBeDefined();
    await again.close();
  });

  it("forgets ended requests past retention while running, not only at open", async () => {
    let now = 10_000;
    const d = await dir();
    const q = new AsyncQueue({ dir: d, retentionMs: 1_000, now: () => now });
    await q.open();
    await q.add(record("done", { webhook: null }));
    await q.finish(q.get("done")!, "SUCCEEDED", [], null);
    now += 5_000;
    q.maintain(60_000);
    expect(q.get("done")).toBeDefined(); // rewritten at open, less than a minute ago
    now += 60_000;
    q.maintain(60_000);
    await q.close();
    expect(q.get("done")).toBeUndefined();
    expect(readFileSync(join(d, QUEUE_FILE), "utf8")).not.toContain('"done"');
  });

  it("compacts while requests keep arriving, losing none", async () => {
    const d = await dir();
    const q = new AsyncQueue({ dir: d, compactBytes: 4_096 });
    await q.open();
    const ids: string[] = [];
    for (let round = 0; round < 20; round++) {
      const batch = Array.from({ length: 10 }, (_, i) => `r${round}-${i}`);
      ids.push(...batch);
      await Promise.all(batch.map((id) => q.add(record(id))));
      for (const id of batch.slice(0, 5)) {
        await q.start(q.get(id)!, "dep1");
        await q.finish(q.get(id)!, "SUCCEEDED", [], "x".repeat(100));
        await q.webhookDone(q.get(id)!, "SUCCEEDED");
      }
    }
    await q.close();
    expect(statSync(join(d, QUEUE_FILE)).size).toBeLessThan(200 * 1_000);
    const again = new AsyncQueue({ dir: d });
    await again.open();
    for (const id of ids) expect(again.get(id), id).toBeDefined();
    expect([...again.live()]).toHaveLength(100);
    await again.close();
  });

  it("keeps every acknowledged request when the process is SIGKILLed mid-write", async () => {
    const d = await dir();
    const script = resolve(import.meta.dirname, "testdata/async-queue-writer.ts");
    const child = spawn(process.execPath, ["--import", "tsx", script, d], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    const acked: string[] = [];
    let buf = "";
    let stderr = "";
    child.stderr.on("data", (c) => (stderr += c));
    await new Promise<void>((ok, fail) => {
      child.stdout.setEncoding("utf8");
      child.stdout.on("data", (chunk: string) => {
        buf += chunk;
        const lines = buf.split("\n");
        buf = lines.pop()!;
        acked.push(...lines.filter((l) => l.length > 0));
        // Killed while it is writing: it never stops between batches.
        if (acked.length >= 300) child.kill("SIGKILL");
      });
      child.once("exit", () =>
        acked.length >= 300 ? ok() : fail(new Error(`writer exited early: ${stderr}`)),
      );
    });
    const q = new AsyncQueue({ dir: d });
    await q.open();
    for (const id of acked) expect(q.get(id), id).toBeDefined();
    expect(q.dropped).toBeLessThanOrEqual(1);
    await q.close();
  }, 60_000);
});
