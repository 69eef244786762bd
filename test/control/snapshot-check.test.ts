// A plane checks every snapshot it receives (issue 10 item 4): a real plane (in this process) follows a real
// control plane whose store is then given a row no snapshot may carry. The plane refuses that snapshot
// naming the field, keeps serving its last good one, never writes the bad one over its cache, and moves on
// once the row is gone. At start, a cached snapshot that fails the check, or is another plane's, is ignored.

import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pino from "pino";
import { Agent, getGlobalDispatcher, setGlobalDispatcher } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type RunningPlane, startPlane } from "../../src/plane/main.ts";
import { eventually, freePort } from "../support/cluster.ts";
import { startTestControl, type TestControl } from "../support/control.ts";

describe("the plane's snapshot check", () => {
  let t: TestControl;
  let credential: string;
  const dir = mkdtempSync(join(tmpdir(), "meridian-snapcheck-"));
  const dataDir = join(dir, "eu-1");
  const cacheFile = join(dataDir, "snapshot.json");

  beforeAll(async () => {
    t = await startTestControl("sqlite");
    const registered = await t.admin.post("/v1/admin/planes", {
      name: "eu-1",
      region: "eu",
      ingress: ["127.0.0.1:9"],
      capacity: 2,
      global_ingress: true, // sees every model, including the one written below
    });
    credential = registered.body.credential;
  });
  afterAll(async () => {
    // The in-process plane's keep-alive connections to the control plane sit in undici's global pool;
    // closing them lets the control plane's close finish now rather than at its connections' timeout.
    const pool = getGlobalDispatcher();
    setGlobalDispatcher(new Agent());
    await pool.destroy();
    await t?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  async function start(controlUrl: string, name = "eu-1", region = "eu") {
    const lines: string[] = [];
    const plane = await startPlane({
      name,
      region,
      controlUrl,
      token: credential,
      dataDir,
      ingress: { host: "127.0.0.1", port: 0 },
      admin: null,
      tls: null,
      logger: pino({ level: "info" }, { write: (l: string) => lines.push(l) }),
    });
    return { plane, lines };
  }
  /** Changes the store as a broken or hostile writer would, and wakes the planes' long-polls. */
  async function write(sql: (db: TestControl["control"]["ctx"]["store"]["db"]) => Promise<unknown>) {
    const { store, feed } = t.control.ctx;
    await store.transaction(async (trx) => {
      await store.bumpRevision(trx);
      await sql(trx);
    });
    await feed.changed();
  }

  it("refuses a snapshot with a malformed model id, naming the field, and keeps the last good one", async () => {
    const { plane, lines } = await start(t.control.url);
    let running: RunningPlane | null = plane;
    try {
      // Settled: its first report (with its key, a revision change) is in, and it has the latest snapshot.
      const good = await eventually(async () => {
        const key = await t.control.ctx.store.db.selectFrom("plane_keys").select("key_id").executeTakeFirst();
        const rev = await t.control.ctx.store.revision();
        return key !== undefined && plane.watcher.revision === rev ? rev : null;
      });
      // The cache is written right after the snapshot is taken.
      const cached = await eventually(async () => {
        const text = existsSync(cacheFile) ? readFileSync(cacheFile, "utf8") : "{}";
        return JSON.parse(text).revision === good ? text : null;
      });

      const team = await t.control.ctx.store.db.selectFrom("teams").select("id").executeTakeFirstOrThrow();
      await write((db) =>
        db
          .insertInto("models")
          .values({
            id: "../../etc",
            team_id: team.id,
            name: "hostile",
            created_at: new Date().toISOString(),
          })
          .execute(),
      );
      const refusal = await eventually(async () =>
        lines.find((l) => l.includes("snapshot poll failed") && l.includes("models[")),
      );
      expect(refusal).toMatch(/snapshot rejected: models\[\d+\]\.id: '\.\.\/\.\.\/etc' is not a model id/);
      expect(plane.watcher.revision).toBe(good);
      expect(plane.watcher.current()!.models.map((m) => m.id)).not.toContain("../../etc");
      expect(readFileSync(cacheFile, "utf8")).toBe(cached);

      // The row goes: the next revision is whole again, and the plane takes it.
      await write((db) => db.deleteFrom("models").where("id", "=", "../../etc").execute());
      await eventually(async () => plane.watcher.revision > good, 30_000);
      await eventually(
        async () => JSON.parse(readFileSync(cacheFile, "utf8")).revision === plane.watcher.revision,
      );
      await plane.stop();
      running = null;
    } finally {
      await running?.stop();
    }
  });

  it.each([
    ["that fails the check", (s: any) => (s.plane_keys = [{ plane: "eu-1", key_id: "x" }]), "plane_keys[0]"],
    ["of another plane", (s: any) => (s.plane.name = "eu-2"), "plane.name"],
    [
      "carrying the old shared secret instead of keys",
      (s: any) => {
        s.hop_secret = "hop.x";
        delete s.control_key;
      },
      "control_key",
    ],
  ])("ignores a cached snapshot %s, and serves a good one", async (_name, edit, field) => {
    // No control plane answers here: the cache is all the plane has.
    const closed = `http://127.0.0.1:${await freePort("127.0.0.1")}`;
    const good = JSON.parse(readFileSync(cacheFile, "utf8"));
    const bad = structuredClone(good);
    edit(bad);
    writeFileSync(cacheFile, JSON.stringify(bad));
    const first = await start(closed);
    try {
      expect(first.plane.watcher.current()).toBeNull();
      const line = first.lines.find((l) => l.includes("snapshot cache invalid"));
      expect(line).toContain(field);
    } finally {
      await first.plane.stop();
    }
    writeFileSync(cacheFile, JSON.stringify(good));
    const second = await start(closed);
    try {
      expect(second.plane.watcher.current()?.revision).toBe(good.revision);
    } finally {
      await second.plane.stop();
    }
  });
});
