// Opens the control plane's store — SQLite (a file, the embedded default) or PostgreSQL (production) —
// behind one Kysely instance, applies the migrations, and offers transactions and the revision counter.

import { mkdirSync } from "node:fs";
import { dirname } from "node:path";
import SQLite from "better-sqlite3";
import {
  type DatabaseConnection,
  type Driver,
  Kysely,
  Migrator,
  PostgresDialect,
  SqliteDialect,
  SqliteDriver,
  sql,
  type Transaction,
} from "kysely";
import pg from "pg";
import { type Dialect, migrationProvider } from "./migrations.ts";
import type { Schema } from "./schema.ts";

export type StoreConfig =
  | { kind: "sqlite"; file: string }
  | { kind: "postgres"; url: string; poolSize?: number };

/** A Kysely handle inside or outside a transaction: query functions accept either. */
export type Db = Kysely<Schema> | Transaction<Schema>;

/**
 * PostgreSQL advisory locks of the control plane: the two-key form, the first key Meridian's namespace
 * (ASCII "MERI"), the second what is locked. Kysely's migrator takes its own single-key lock.
 */
/** The channel a revision bump notifies on PostgreSQL (src/control/revision-feed.ts listens). */
export const REVISION_CHANNEL = "meridian_revision";

export const ADVISORY_NAMESPACE = 0x4d455249;
export const ADVISORY_LOCKS = {
  /** The first-start bootstrap (src/control/accounts.ts). */
  bootstrap: 1,
  /** The leader lease of the background loops (src/control/lease.ts), session-scoped. */
  leader: 2,
} as const;

export class Store {
  readonly db: Kysely<Schema>;
  readonly dialect: Dialect;

  /** The PostgreSQL URL, for the connections that are not the pool's (LISTEN); null on SQLite. */
  private readonly postgresUrl: string | null;

  private constructor(db: Kysely<Schema>, dialect: Dialect, postgresUrl: string | null = null) {
    this.db = db;
    this.dialect = dialect;
    this.postgresUrl = postgresUrl;
  }

  /** Opens the store and brings its schema up to date. */
  static async open(config: StoreConfig): Promise<Store> {
    const store =
      config.kind === "sqlite"
        ? new Store(openSqlite(config.file), "sqlite")
        : new Store(openPostgres(config), "postgres", config.url);
    await store.migrate();
    return store;
  }

  private async migrate(): Promise<void> {
    const migrator = new Migrator({ db: this.db, provider: migrationProvider(this.dialect) });
    const { error } = await migrator.migrateToLatest();
    if (error) throw error instanceof Error ? error : new Error(String(error));
  }

  /**
   * Runs `fn` in one transaction. PostgreSQL runs it at SERIALIZABLE isolation would cost retries; instead
   * every writer takes the revision row's lock first (`bumpRevision`), which serializes the writers that
   * change what planes see, and unique indexes settle the races that remain.
   */
  transaction<T>(fn: (trx: Transaction<Schema>) => Promise<T>): Promise<T> {
    return this.db.transaction().execute(fn);
  }

  /**
   * Runs `fn` in one transaction that the database itself refuses to write in (answers that must change
   * nothing, such as a promotion's dry run): PostgreSQL's READ ONLY at REPEATABLE READ, so every read sees
   * one snapshot; SQLite's `query_only` for the transaction's length (its one connection is held by the
   * transaction, and a deferred transaction reads one snapshot in WAL mode).
   */
  readOnly<T>(fn: (trx: Transaction<Schema>) => Promise<T>): Promise<T> {
    if (this.dialect === "postgres") {
      return this.db
        .transaction()
        .setIsolationLevel("repeatable read")
        .setAccessMode("read only")
        .execute(fn);
    }
    return this.db.transaction().execute(async (trx) => {
      await sql`pragma query_only = on`.execute(trx);
      try {
        return await fn(trx);
      } finally {
        await sql`pragma query_only = off`.execute(trx);
      }
    });
  }

  /**
   * On PostgreSQL, takes a transaction-scoped advisory lock (released at commit or rollback, or when the
   * session dies) that serializes transactions of every control replica doing the same `what`. SQLite
   * needs none: its transactions on the one connection never interleave.
   */
  async lockForTransaction(trx: Transaction<Schema>, what: keyof typeof ADVISORY_LOCKS): Promise<void> {
    if (this.dialect !== "postgres") return;
    await sql`select pg_advisory_xact_lock(${sql.lit(ADVISORY_NAMESPACE)}, ${sql.lit(ADVISORY_LOCKS[what])})`.execute(
      trx,
    );
  }

  /**
   * Increments and returns the installation-wide revision; call inside the transaction that changed state.
   * On PostgreSQL it also queues a notification on `REVISION_CHANNEL`, which PostgreSQL delivers to every
   * listening control replica when (and only if) the transaction commits.
   */
  async bumpRevision(trx: Db): Promise<number> {
    const row = await trx
      .updateTable("revision")
      .set({ value: sql<number>`value + 1` })
      .where("id", "=", 1)
      .returning("value")
      .executeTakeFirstOrThrow();
    if (this.dialect === "postgres") {
      await sql`select pg_notify(${REVISION_CHANNEL}, ${String(row.value)})`.execute(trx);
    }
    return Number(row.value);
  }

  /**
   * PostgreSQL: calls `onNotify` whenever a transaction of any control replica that bumped the revision
   * commits (LISTEN on a connection of its own); `onLost` when that connection ends, after which the
   * caller may listen again. SQLite: null (one process; its writers wake their own feed).
   */
  async listenRevisions(onNotify: () => void, onLost: () => void): Promise<{ stop(): Promise<void> } | null> {
    if (this.postgresUrl === null) return null;
    const client = new pg.Client({ connectionString: this.postgresUrl, connectionTimeoutMillis: 5_000 });
    let lost = false;
    const lose = () => {
      if (lost) return;
      lost = true;
      void client.end().catch(() => {});
      onLost();
    };
    client.on("error", lose);
    client.on("end", lose);
    client.on("notification", (n) => {
      if (n.channel === REVISION_CHANNEL) onNotify();
    });
    try {
      await client.connect();
      await client.query(`listen ${REVISION_CHANNEL}`);
    } catch (err) {
      lost = true;
      await client.end().catch(() => {});
      throw err;
    }
    return {
      async stop() {
        lost = true;
        await client.end().catch(() => {});
      },
    };
  }

  async revision(db: Db = this.db): Promise<number> {
    const row = await db.selectFrom("revision").select("value").where("id", "=", 1).executeTakeFirstOrThrow();
    return Number(row.value);
  }

  async getMeta(key: string, db: Db = this.db): Promise<string | undefined> {
    const row = await db.selectFrom("meta").select("value").where("key", "=", key).executeTakeFirst();
    return row?.value;
  }

  async setMeta(key: string, value: string, db: Db = this.db): Promise<void> {
    await db
      .insertInto("meta")
      .values({ key, value })
      .onConflict((oc) => oc.column("key").doUpdateSet({ value }))
      .execute();
  }

  async close(): Promise<void> {
    await this.db.destroy();
  }
}

function openSqlite(file: string): Kysely<Schema> {
  mkdirSync(dirname(file), { recursive: true });
  const database = new SQLite(file);
  // WAL keeps readers off writers' backs; a committed transaction survives a SIGKILL of the process.
  database.pragma("journal_mode = WAL");
  database.pragma("synchronous = NORMAL");
  database.pragma("foreign_keys = ON");
  database.pragma("busy_timeout = 5000");
  return new Kysely<Schema>({ dialect: new SqliteRollbackDialect(database) });
}

/**
 * Kysely's SQLite dialect, but a rollback of a transaction SQLite has already rolled back is a no-op. A
 * commit that fails on I/O (the file refused the write: immutable, disk failing) makes SQLite roll the
 * transaction back itself; Kysely's ROLLBACK then fails with "cannot rollback - no transaction is active",
 * and that error would replace the one that says what happened (`isStoreUnavailable`: a typed 503).
 */
class SqliteRollbackDialect extends SqliteDialect {
  readonly #database: SQLite.Database;
  constructor(database: SQLite.Database) {
    super({ database });
    this.#database = database;
  }
  override createDriver(): Driver {
    const database = this.#database;
    return new (class extends SqliteDriver {
      override async rollbackTransaction(connection: DatabaseConnection): Promise<void> {
        if (database.inTransaction) await super.rollbackTransaction(connection);
      }
    })({ database });
  }
}

function openPostgres(config: { url: string; poolSize?: number }): Kysely<Schema> {
  // A database that does not answer a connection within 5 s is unreachable (a typed 503 to the caller,
  // `isStoreUnavailable`), rather than a request left waiting.
  const pool = new pg.Pool({
    connectionString: config.url,
    max: config.poolSize ?? 10,
    connectionTimeoutMillis: 5_000,
  });
  // An idle client's connection can end under it (a server restart, a failover, an administrator's
  // terminate). The pool drops that client and the next query opens a new one; without a listener the
  // 'error' event would crash the process.
  pool.on("error", () => {});
  // The pool listens for errors only on idle clients; a client checked out (a query or a transaction in
  // progress) whose connection ends (PostgreSQL stopped, `pg_ctl stop -m fast`) emits 'error' with no
  // listener, which would crash the process. Its queries fail instead (`isStoreUnavailable`: a typed 503),
  // and the pool drops it on release as no longer queryable.
  pool.on("connect", (client) => client.on("error", () => {}));
  return new Kysely<Schema>({ dialect: new PostgresDialect({ pool }) });
}

/** True when `err` is a unique-constraint violation on either database. */
export function isUniqueViolation(err: unknown): boolean {
  if (typeof err !== "object" || err === null) return false;
  const e = err as { code?: unknown; message?: unknown };
  return (
    e.code === "23505" || e.code === "SQLITE_CONSTRAINT_UNIQUE" || e.code === "SQLITE_CONSTRAINT_PRIMARYKEY"
  );
}

/**
 * True when `err` says the database cannot be reached, rather than that a statement failed: the pool's
 * connection errors, PostgreSQL's connection exceptions (SQLSTATE class 08) and its shutdown and startup
 * answers (57P01 admin_shutdown, 57P02 crash_shutdown, 57P03 cannot_connect_now), and a database that
 * cannot be written: PostgreSQL's disk full (53100), SQLite's I/O errors (`SQLITE_IOERR_*`: the file or its
 * WAL refused a write, e.g. made immutable, or its disk failing), a read-only or full database file, one it
 * cannot open. Such a statement changed nothing (SQLite rolls the transaction back), and reads go on.
 */
export function isStoreUnavailable(err: unknown): boolean {
  if (typeof err !== "object" || err === null) return false;
  const e = err as { code?: unknown; message?: unknown };
  const code = typeof e.code === "string" ? e.code : "";
  if (["ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "EPIPE", "EHOSTUNREACH", "ENOTFOUND"].includes(code))
    return true;
  if (code.startsWith("08") || code === "57P01" || code === "57P02" || code === "57P03") return true;
  if (code === "53100") return true;
  if (/^SQLITE_(IOERR|READONLY|FULL|CANTOPEN)(_|$)/.test(code)) return true;
  const message = typeof e.message === "string" ? e.message : "";
  return (
    message.startsWith("Connection terminated") ||
    message.includes("timeout exceeded when trying to connect") ||
    message === "Client has encountered a connection error and is not queryable"
  );
}
