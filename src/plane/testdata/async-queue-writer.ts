// A test program that accepts async requests into a queue as fast as it can, forever, printing each id
// once its record is durable; the test SIGKILLs it mid-write and reopens the queue.
// Usage: node --import tsx async-queue-writer.ts QUEUE_DIR
import { AsyncQueue } from "../async-queue.ts";

const [dir] = process.argv.slice(2);
if (dir === undefined) throw new Error("usage: async-queue-writer.ts QUEUE_DIR");
// Small compactions so the kill also lands during rewrites.
const q = new AsyncQueue({ dir, compactBytes: 64 * 1024 });
await q.open();
let n = 0;
for (;;) {
  const batch = Array.from({ length: 8 }, () => `w${n++}`);
  await Promise.all(
    batch.map(async (id) => {
      await q.add({
        id,
        model_id: "abcd1234",
        team_id: "team1",
        environment: "prod-eu",
        target: { kind: "environment", name: "prod-eu" },
        deployment_id: "dep1",
        priority: 0,
        created_at: Date.now(),
        expires_at: Date.now() + 600_000,
        webhook: null,
        retry: { max_attempts: 3, initial_delay_ms: 10, max_delay_ms: 100 },
        status: "QUEUED",
        webhook_status: "NO_WEBHOOK_PROVIDED",
        status_at: Date.now(),
        attempts: 0,
        errors: [],
        input: { pad: "p".repeat(512) },
        input_bytes: 100,
        output: null,
      });
      process.stdout.write(`${id}\n`);
    }),
  );
}
