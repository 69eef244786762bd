// The control plane's PostgreSQL connection ended under it while a client is checked out (a transaction
// waiting between two queries): the backend is terminated from another session, as `pg_ctl stop -m fast`
// or a failover does to every session. The process must not crash (pg emits the error on the client, with
// no query to hand it to), the transaction fails with an error, and the store answers the next query on a
// new connection. Uses the machine's PostgreSQL through a database of its own (test/support/databases.ts).

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

describe("isStoreUnavailable", () => {
  it("tells the database being away from an error of the request", async () => {
    // Nothing listens on port 1: a refused connection, as a stopped server gives.
    const away = await Store.open({ kind: "postgres", url: "postgres://postgres@127.0.0.1:1/none" }).then(
      () => null,
      (err: unknown) => err,
    );
    expect(isStoreUnavailable(away), String(away)).toBe(true);
    expect(isStoreUnavailable({ code: "57P01" })).toBe(true);
    expect(isStoreUnavailable({ code: "23505" })).toBe(false);
    expect(isStoreUnavailable(new Error("boom"))).toBe(false);
    expect(isStoreUnavailable(null)).toBe(false);
  });
});

async function sqlPid(trx: Parameters<Parameters<Store["transaction"]>[0]>[0]) {
  const { sql } = await import("kysely");
  return sql<{ pid: number }>`SELECT pg_backend_pid() AS pid`.execute(trx);
}
