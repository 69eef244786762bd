// The control plane's PostgreSQL connection ended under it while a client is checked out (a transaction
// waiting between two queries): the backend is terminated from another session, as `pg_ctl stop -m fast`
// or a failover does to every session. The process must not crash (pg emits the error on the client, with
// no query to hand it to), the transaction fails with an error, and the store answers the next query on a
// new connection. Uses the machine's PostgreSQL through a database of its own (test/support/databases.ts).

import { execFileSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { sql } from "kysely";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "../../test/support/databases.ts";
import { isStoreUnavailable, isUniqueViolation, Store } from "./store.ts";

describe("a PostgreSQL backend terminated under a checked-out client", () => {
  let database: TestDatabase;
  let store: Store;
  const uncaught: unknown[] = [];
  const onUncaught = (err: unknown) => uncaught.push(err);

  beforeAll(async () => {
    database = await createTestDatabase("postgres");
    store = await Store.open({ kind: "postgres", url: database.url! });
    process.on("uncaughtException", onUncaught);
  }, 30_000);
  afterAll(async () => {
    process.off("uncaughtException", onUncaught);
    await store?.close();
    await database?.drop();
  }, 30_000);

  it("fails that transaction, crashes nothing, and serves the next query", async () => {
    const admin = new pg.Client({ connectionString: database.url! });
    await admin.connect();
    try {
      let backend = 0;
      const inside = store.transaction(async (trx) => {
        const { rows } = await sqlPid(trx);
        backend = rows[0]!.pid;
        // Between two queries, the client checked out: the moment the server ends the session.
        await new Promise((r) => setTimeout(r, 1_000));
        await sqlPid(trx);
      });
      const failed = inside.then(
        () => null,
        (err: unknown) => err,
      );
      await new Promise((r) => setTimeout(r, 300));
      expect(backend).toBeGreaterThan(0);
      await admin.query("SELECT pg_terminate_backend($1)", [backend]);
      const err = await failed;
      expect(err).toBeInstanceOf(Error);
      // …and the management API answers it 503 store_unavailable, not 500 (src/control/app.ts).
      expect(isStoreUnavailable(err), String(err)).toBe(true);
      expect(isUniqueViolation(err)).toBe(false);
      // The error event of the dead client fired while it was checked out: with no listener, a crash.
      await new Promise((r) => setTimeout(r, 200));
      expect(uncaught).toEqual([]);
      const { rows } = await store.transaction((trx) => sqlPid(trx));
      expect(rows[0]!.pid).not.toBe(backend);
    } finally {
      await admin.end();
    }
  }, 30_000);
});

describe("an SQLite database file that refuses writes under a running store", () => {
  it("fails the write whole and typed (store_unavailable), reads on, and writes again once it may", async () => {
    const dir = mkdtempSync(join(tmpdir(), "meridian-immutable-"));
    const file = join(dir, "meridian.db");
    const store = await Store.open({ kind: "sqlite", file });
    // The database file and its WAL made immutable (chattr +i: refused even to root, even through the
    // descriptors already open). Not the -shm file: SQLite maps it, and a write to a mapped page of an
    // immutable file is a SIGBUS, not an error.
    const files = [file, `${file}-wal`].filter((f) => existsSync(f));
    const team = () =>
      store.db
        .insertInto("teams")
        .values({
          id: randomUUID(),
          name: `t-${randomUUID()}`,
          is_default: 0,
          created_at: new Date().toISOString(),
        })
        .execute();
    const count = async () =>
      Number(
        (await store.db.selectFrom("teams").select(sql<number>`count(*)`.as("n")).executeTakeFirstOrThrow())
          .n,
      );
    try {
      const before = await count();
      execFileSync("chattr", ["+i", ...files]);
      const failed = await store
        .transaction(async (trx) => {
          await trx
            .insertInto("teams")
            .values({ id: randomUUID(), name: "half", is_default: 0, created_at: new Date().toISOString() })
            .execute();
          await trx
            .insertInto("teams")
            .values({
              id: randomUUID(),
              name: "written",
              is_default: 0,
              created_at: new Date().toISOString(),
            })
            .execute();
        })
        .then(
          () => null,
          (err: unknown) => err,
        );
      expect(failed, "the write went through an immutable file").toBeInstanceOf(Error);
      expect(isStoreUnavailable(failed), String(failed)).toBe(true);
      expect(await count()).toBe(before);
      execFileSync("chattr", ["-i", ...files]);
      await team();
      expect(await count()).toBe(before + 1);
    } finally {
      execFileSync("chattr", ["-i", ...files]);
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("isStoreUnavailable", () => {
  it("tells the database being away from an error of the request", async () => {
    // Nothing listens on port 1: a refused connection, as a stopped server gives.
    const away = await Store.open({ kind: "postgres", url: "postgres://postgres@127.0.0.1:1/none" }).then(
      () => null,
      (err: unknown) => err,
    );
    expect(isStoreUnavailable(away), String(away)).toBe(true);
    expect(isStoreUnavailable({ code: "57P01" })).toBe(true);
    expect(isStoreUnavailable({ code: "SQLITE_IOERR_WRITE" })).toBe(true);
    expect(isStoreUnavailable({ code: "SQLITE_READONLY" })).toBe(true);
    expect(isStoreUnavailable({ code: "SQLITE_CONSTRAINT_UNIQUE" })).toBe(false);
    expect(isStoreUnavailable({ code: "23505" })).toBe(false);
    expect(isStoreUnavailable(new Error("boom"))).toBe(false);
    expect(isStoreUnavailable(null)).toBe(false);
  });
});

async function sqlPid(trx: Parameters<Parameters<Store["transaction"]>[0]>[0]) {
  return sql<{ pid: number }>`SELECT pg_backend_pid() AS pid`.execute(trx);
}
