// What the fault tests share: a model that says in its log every time it executes a request (so a retry that
// ran a request twice is seen on the planes' side, not guessed from the client's), that can take its time or
// stream, and the counting of those executions across every replica log of every plane.

import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import type { Cluster } from "../support/cluster.ts";

/** The marker a replica logs when it starts executing request `id`. */
export const EXEC = "chaos exec";

/**
 * A JS model: `{ id, ms, stream }` logs `chaos exec <id>` and waits `ms` before answering, or with `stream`
 * sends one NDJSON chunk every 100 ms for `ms`.
 */
export function chaosModel(name: string): Record<string, string> {
  return {
    "config.yaml": `model_name: ${name}\n`,
    "model/model.js": `const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
export class Model {
  constructor({ environment }) { this.environment = environment?.name ?? null; }
  async load() {}
  async predict(input) {
    const id = String(input?.id ?? "-");
    const ms = Number(input?.ms ?? 0);
    process.stdout.write("${EXEC} " + id + "\\n");
    if (input?.stream) {
      const environment = this.environment;
      return (async function* () {
        for (let t = 0; t < ms; t += 100) {
          yield { id, t, environment };
          await sleep(100);
        }
        yield { id, done: true };
      })();
    }
    if (ms > 0) await sleep(ms);
    return { id, environment: this.environment, replica: process.env.MERIDIAN_DEPLOYMENT_ID };
  }
}
`,
  };
}

/** Every execution of request `id` the replicas logged, as `plane/replica`, across all planes. */
export function executions(cluster: Cluster, id: string): string[] {
  const found: string[] = [];
  const line = `${EXEC} ${id}`;
  for (const p of cluster.planes.values()) {
    const dir = join(p.dataDir, "logs");
    let files: string[] = [];
    try {
      files = readdirSync(dir).filter((f) => f.endsWith(".log"));
    } catch {
      continue;
    }
    for (const f of files) {
      const text = readFileSync(join(dir, f), "utf8");
      // The driver writes one JSON entry per line of the replica's output: {ts, stream, line}.
      for (const l of text.split("\n")) {
        if (!l.includes(line)) continue;
        try {
          if ((JSON.parse(l) as { line?: string }).line === line) found.push(`${p.name}/${f.slice(0, -4)}`);
        } catch {}
      }
    }
  }
  return found;
}

/** A unique request id for one test call. */
export function requestId(prefix: string): string {
  return `${prefix}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
}
