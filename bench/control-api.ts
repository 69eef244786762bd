// Section 5 of the benchmark: the management API of a real `meridian control` process (SQLite) holding
// 10,000 models, seeded through the store between two starts of the process; list and get endpoints driven
// with wrk.

import { readFileSync } from "node:fs";
import { join } from "node:path";
import { request } from "undici";
import { Store } from "../src/store/store.ts";
import { startProcess } from "../test/support/cluster.ts";
import { fmt, freePort, median, runWrk, tempDir } from "./lib.ts";
import { seedModels } from "./seed.ts";
import { BENCH_DOMAIN, modelId } from "./snapshot.ts";

export interface ControlApiOptions {
  models: number;
  runs: number;
  durationS: number;
  /** How long one call may take before the endpoint is reported as not answering. */
  singleTimeoutMs: number;
}

export async function runControlApi(
  o: ControlApiOptions,
  log: (m: string) => void,
): Promise<{ markdown: string }> {
  const dir = join(tempDir(), "control");
  const port = await freePort();
  const args = ["control", "--data-dir", dir, "--listen", `127.0.0.1:${port}`, "--domain", BENCH_DOMAIN];
  const control = startProcess(args);
  try {
    await control.waitForLog("control plane listening");
    // Seeded while the process runs (SQLite in WAL mode: this second writer takes the lock for one
    // transaction); the control plane caches no models, so it serves the new rows at once.
    log(`  seeding ${fmt(o.models)} models through the store`);
    const store = await Store.open({ kind: "sqlite", file: join(dir, "meridian.db") });
    await seedModels(store.db, { count: o.models, environments: ["production"] });
    await store.close();
    log("  seeded");
    const key = readFileSync(join(dir, "admin.key"), "utf8").trim();
    const base = `http://127.0.0.1:${port}`;
    const m = modelId(Math.floor(o.models / 2));
    // List models last: with 10,000 models it may not answer in time, and the process stays busy after.
    const endpoints: Array<[string, string]> = [
      ["get model", `/v1/models/${m}`],
      ["list deployments of a model", `/v1/models/${m}/deployments`],
      ["get deployment", `/v1/models/${m}/deployments/${m}d0`],
      ["list environments of a model", `/v1/models/${m}/environments`],
      ["get environment", `/v1/models/${m}/environments/production`],
      ["list environment groups", "/v1/environment_groups"],
      [`list models (all ${fmt(o.models)})`, "/v1/models"],
    ];
    const rows: string[] = [];
    for (const [name, path] of endpoints) {
      // One call first: it must answer 200, and its time decides how long wrk must run to see several.
      const t = performance.now();
      let text: string;
      try {
        const res = await request(`${base}${path}`, {
          headers: { authorization: `Api-Key ${key}` },
          headersTimeout: o.singleTimeoutMs,
          bodyTimeout: o.singleTimeoutMs,
        });
        text = await res.body.text();
        if (res.statusCode !== 200) throw new Error(`${path}: ${res.statusCode} ${text.slice(0, 300)}`);
      } catch (err) {
        if ((err as { code?: string }).code !== "UND_ERR_HEADERS_TIMEOUT") throw err;
        rows.push(
          `| ${name} | \`GET ${path}\` | — | 1 | **no answer within ${fmt(o.singleTimeoutMs / 1000)} s** | — | — | — |`,
        );
        log(`  ${name}: no answer within ${o.singleTimeoutMs} ms`);
        continue;
      }
      const single = performance.now() - t;
      const samples = [];
      for (let i = 0; i < o.runs; i++) {
        samples.push(
          await runWrk({
            url: `${base}${path}`,
            method: "GET",
            headers: { Authorization: `Api-Key ${key}` },
            connections: single > 200 ? 2 : 16,
            threads: 1,
            durationS: single > 200 ? Math.max(o.durationS, Math.ceil((single * 6) / 1000)) : o.durationS,
          }),
        );
      }
      const bad = samples.reduce((n, s) => n + s.non2xx + s.errors, 0);
      rows.push(
        `| ${name} | \`GET ${path.replace(`${m}d0`, "{deployment}").replace(m, "{id}")}\` | ${fmt(text.length / 1024, 1)} KiB | ${single > 200 ? 2 : 16} | ${fmt(median(samples.map((s) => s.rps)), 1)} | ${fmt(median(samples.map((s) => s.p50us)) / 1000, 1)} | ${fmt(median(samples.map((s) => s.p99us)) / 1000, 1)} | ${bad} |`,
      );
      log(`  ${name}: ${fmt(median(samples.map((s) => s.rps)), 1)} req/s`);
    }
    return {
      markdown: [
        `A \`meridian control\` process (SQLite) with ${fmt(o.models)} models (one \`production\` environment and one deployment each) in the admin's team; the admin's PERSONAL key.`,
        "",
        "| endpoint | request | body | conc. | req/s | p50 ms | p99 ms | non-2xx/errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
        ...rows,
      ].join("\n"),
    };
  } finally {
    await control.stop();
  }
}
