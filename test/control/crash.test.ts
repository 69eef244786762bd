// A control process killed with SIGKILL in the middle of writes restarts into a consistent state: the real
// `meridian control` child process on the same data directory (SQLite) or the same database (PostgreSQL),
// parallel writers (models, environments, promotions, keys, pushes), SIGKILL, restart, then the invariants
// checked through the API and in the store itself. Acknowledged writes must all have survived.

import { type ChildProcess, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { createServer } from "node:net";
import { join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { describe, expect, it } from "vitest";
import { DatabaseArtifactStore, LocalArtifactStore } from "../../src/control/artifacts.ts";
import { Store } from "../../src/store/store.ts";
import { ApiClient } from "../support/control.ts";
import { createTestDatabase, STORE_KINDS } from "../support/databases.ts";

const BIN = resolve(import.meta.dirname, "../../bin/meridian.js");

interface Control {
  child: ChildProcess;
  url: string;
  exited: Promise<number | null>;
}

function freePort(): Promise<number> {
  return new Promise((done, fail) => {
    const server = createServer();
    server.once("error", fail);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address ? address.port : 0;
      server.close(() => done(port));
    });
  });
}

/** Starts `meridian control` and resolves once it logs that it listens. */
function startControlProcess(dataDir: string, port: number, databaseUrl: string | null): Promise<Control> {
  const env = { ...process.env };
  delete env["MERIDIAN_DATABASE_URL"];
  const child = spawn(
    process.execPath,
    [
      BIN,
      "control",
      "--data-dir",
      dataDir,
      "--listen",
      `127.0.0.1:${port}`,
      ...(databaseUrl ? ["--database-url", databaseUrl] : []),
    ],
    { env, stdio: ["ignore", "pipe", "pipe"] },
  );
  const exited = new Promise<number | null>((done) => child.once("exit", (code) => done(code)));
  let stderr = "";
  child.stderr!.on("data", (c: Buffer) => {
    stderr += c.toString();
  });
  return new Promise((done, fail) => {
    const timer = setTimeout(() => fail(new Error(`control did not start in time:\n${stderr}`)), 20_000);
    void exited.then((code) => fail(new Error(`control exited with ${code}:\n${stderr}`)));
    createInterface({ input: child.stdout! }).on("line", (line) => {
      let entry: { msg?: string; url?: string };
      try {
        entry = JSON.parse(line);
      } catch {
        return;
      }
      if (entry.msg === "control plane listening" && entry.url) {
        clearTimeout(timer);
        done({ child, url: entry.url, exited });
      }
    });
  });
}

interface Acknowledged {
  models: Map<string, string>; // id -> name
  environments: Array<[string, string]>; // model id, environment
  keys: string[];
}

/**
 * Parallel writers until `stop()` is set; every write the server acknowledged (200) is recorded.
 * Failures after the kill end a writer.
 */
async function writeUntilStopped(
  client: ApiClient,
  tag: string,
  ack: Acknowledged,
  stopped: () => boolean,
): Promise<void> {
  const ok = (res: { status: number; body: unknown }, what: string) => {
    if (res.status !== 200) throw new Error(`${what}: ${res.status} ${JSON.stringify(res.body)}`);
    return res.body as any;
  };
  const writer = async (w: number) => {
    for (let i = 0; !stopped(); i++) {
      const name = `${tag}-${w}-${i}`;
      const created = ok(await client.createModel(name), "create model");
      ack.models.set(created.model.id, name);
      const id = created.model.id as string;
      const env = `env-${i}`;
      ok(await client.post(`/v1/models/${id}/environments`, { name: env }), "create environment");
      ack.environments.push([id, env]);
      ok(
        await client.post(`/v1/models/${id}/environments/${env}/promote`, {
          deployment_id: created.deployment.id,
        }),
        "promote",
      );
      const key = ok(await client.post("/v1/api_keys", { type: "WORKSPACE_MANAGE_ALL", name }), "key");
      ack.keys.push(key.api_key);
      ok(await client.createDeployment(id, "hello-js", { environment_name: "staging" }), "push");
      ack.environments.push([id, "staging"]);
    }
  };
  await Promise.allSettled([0, 1, 2, 3, 4, 5].map(writer));
}

/** The store's invariants, read straight from the database the crashed process used. */
async function checkStore(store: Store, dataDir: string, ack: Acknowledged) {
  const db = store.db;
  const [models, envs, deployments, promotions, audit, artifacts, keys, teams, replicas] = await Promise.all([
    db.selectFrom("models").selectAll().execute(),
    db.selectFrom("environments").selectAll().execute(),
    db.selectFrom("deployments").selectAll().execute(),
    db.selectFrom("promotions").selectAll().execute(),
    db.selectFrom("audit_logs").select(["action", "model_id"]).execute(),
    db.selectFrom("artifacts").selectAll().execute(),
    db.selectFrom("api_keys").selectAll().execute(),
    db.selectFrom("teams").select("id").execute(),
    db.selectFrom("replicas").selectAll().execute(),
  ]);
  const modelIds = new Set(models.map((m) => m.id));
  const deploymentById = new Map(deployments.map((d) => [d.id, d]));

  // Every acknowledged write survived.
  for (const id of ack.models.keys()) expect(modelIds, `acknowledged model ${id}`).toContain(id);
  for (const [model, env] of ack.environments) {
    expect(
      envs.some((e) => e.model_id === model && e.name === env),
      `${model}/${env}`,
    ).toBe(true);
  }
  expect(models.length).toBeGreaterThanOrEqual(ack.models.size);

  for (const m of models) {
    expect(
      envs.some((e) => e.model_id === m.id && e.name === "production"),
      `${m.id} production`,
    ).toBe(true);
    expect(
      audit.some((a) => a.action === "model.create" && a.model_id === m.id),
      `audit for ${m.id}`,
    ).toBe(true);
  }
  for (const e of envs) {
    expect(modelIds).toContain(e.model_id);
    if (e.current_deployment_id === null) continue;
    expect(deploymentById.get(e.current_deployment_id)?.model_id, `${e.model_id}/${e.name}`).toBe(e.model_id);
  }
  const activeByEnv = new Map<string, number>();
  for (const p of promotions.filter((x) => x.active === 1)) {
    expect(deploymentById.get(p.candidate_deployment_id)?.model_id, `candidate of ${p.id}`).toBe(p.model_id);
    expect(deploymentById.has(p.source_deployment_id), `source of ${p.id}`).toBe(true);
    expect(envs.some((e) => e.model_id === p.model_id && e.name === p.environment)).toBe(true);
    const k = `${p.model_id}/${p.environment}`;
    activeByEnv.set(k, (activeByEnv.get(k) ?? 0) + 1);
  }
  for (const [k, n] of activeByEnv) expect(n, k).toBe(1);
  for (const r of replicas) expect(deploymentById.has(r.deployment_id)).toBe(true);
  const teamIds = new Set(teams.map((t) => t.id));
  for (const k of keys) expect(teamIds).toContain(k.team_id);

  // Artifacts: a row counts as stored only with its whole blob in place, under its own digest.
  const byKey = new Map(artifacts.map((a) => [a.key, a]));
  for (const d of deployments) {
    const a = byKey.get(d.artifact_key);
    expect(a?.state, `artifact of ${d.id}`).toBe("STORED");
  }
  // Through the store the control plane used (files with SQLite, the database with PostgreSQL).
  const blobStore =
    store.dialect === "sqlite"
      ? new LocalArtifactStore(join(dataDir, "artifacts"))
      : new DatabaseArtifactStore(store);
  for (const a of artifacts.filter((x) => x.state === "STORED")) {
    const blob = await blobStore.open(a.sha256!);
    expect(blob, `blob of ${a.key}`).not.toBeNull();
    const hash = createHash("sha256");
    let size = 0;
    for await (const chunk of blob! as AsyncIterable<Buffer>) {
      hash.update(chunk);
      size += chunk.length;
    }
    expect(hash.digest("hex"), `digest of ${a.key}`).toBe(a.sha256);
    expect(size).toBe(Number(a.size));
  }
  const blobs = join(dataDir, "artifacts", "sha256");
  for (const prefix of existsSync(blobs) ? readdirSync(blobs) : []) {
    for (const name of readdirSync(join(blobs, prefix))) {
      const digest = createHash("sha256")
        .update(readFileSync(join(blobs, prefix, name)))
        .digest("hex");
      expect(digest, `blob ${name}`).toBe(name);
    }
  }
  return { models: models.length };
}

describe.each(STORE_KINDS)("control killed with SIGKILL mid-write on %s", (kind) => {
  it("restarts into a consistent state, with every acknowledged write", async () => {
    const database = await createTestDatabase(kind);
    const dataDir = join(database.dir, "control");
    const port = await freePort();
    const ack: Acknowledged = { models: new Map(), environments: [], keys: [] };
    let control: Control | null = null;
    try {
      control = await startControlProcess(dataDir, port, database.url);
      const adminKey = readFileSync(join(dataDir, "admin.key"), "utf8").trim();

      for (const round of [1, 2]) {
        const client = new ApiClient(control.url, adminKey);
        let stop = false;
        const before = ack.models.size;
        const writing = writeUntilStopped(client, `r${round}`, ack, () => stop);
        // Kill while the writers are busy: wait for a few acknowledged models, then SIGKILL at once.
        const deadline = Date.now() + 15_000;
        while (ack.models.size < before + 8 && Date.now() < deadline)
          await new Promise((r) => setTimeout(r, 5));
        control.child.kill("SIGKILL");
        stop = true;
        await control.exited;
        await writing;
        expect(ack.models.size).toBeGreaterThanOrEqual(before + 8);

        control = await startControlProcess(dataDir, port, database.url);
        const after = new ApiClient(control.url, adminKey);
        // The admin key from the first start still works; no new one was made.
        expect((await after.get("/v1/users/me")).status).toBe(200);
        expect(readFileSync(join(dataDir, "admin.key"), "utf8").trim()).toBe(adminKey);
        for (const key of ack.keys) expect((await after.as(key).get("/v1/models")).status).toBe(200);
        const listed = (await after.get("/v1/models")).body.models as Array<{ id: string }>;
        const audit = (await after.get("/v1/audit_logs?limit=1000")).body.items as Array<{
          action: string;
          model_id: string;
        }>;
        for (const m of listed) {
          const envs = (await after.get(`/v1/models/${m.id}/environments`)).body.environments as Array<{
            name: string;
            current_deployment: { id: string } | null;
          }>;
          expect(envs.map((e) => e.name)).toContain("production");
          expect(audit.some((a) => a.action === "model.create" && a.model_id === m.id)).toBe(true);
        }
        // And it takes writes again.
        expect((await after.createModel(`after-${round}`)).status).toBe(200);
      }

      // Stop cleanly, then read the store the process used.
      control.child.kill("SIGTERM");
      expect(await control.exited).toBe(0);
      control = null;
      const store = await Store.open(
        database.url === null
          ? { kind: "sqlite", file: join(dataDir, "meridian.db") }
          : { kind: "postgres", url: database.url },
      );
      try {
        const { models } = await checkStore(store, dataDir, ack);
        expect(models).toBeGreaterThanOrEqual(ack.models.size + 2);
      } finally {
        await store.close();
      }
    } finally {
      if (control) {
        control.child.kill("SIGKILL");
        await control.exited;
      }
      await database.drop();
    }
  }, 60_000);
});
