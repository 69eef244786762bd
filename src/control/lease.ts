// Which control replica leads the background loops (the autoscaler's periodic pass, the plane-health
// judgement that re-places replicas), and the one process a SQLite database may have. See
// docs/high-availability.md.

import { join } from "node:path";
import SQLite from "better-sqlite3";
import { sql } from "kysely";
import pg from "pg";
import type { Logger } from "pino";
import { ADVISORY_LOCKS, ADVISORY_NAMESPACE, type Db } from "../store/store.ts";

/** A leader-only write found that this replica no longer holds the lease: the write is rolled back. */
export class NotLeaderError extends Error {
  constructor() {
    super("this control replica no longer holds the leader lease; the write was rolled back");
    this.name = "NotLeaderError";
  }
}

/** A second `meridian control` on a data directory whose SQLite database another one already uses. */
export class ControlStoreInUseError extends Error {
  readonly code = "control_store_in_use";
  constructor(dataDir: string) {
    super(
      `Another meridian control already runs on ${dataDir} (its SQLite database is locked by that process). ` +
        "A SQLite store serves one control process; run several control replicas on PostgreSQL " +
        "(--database-url postgres://…), each with its own --data-dir. [control_store_in_use]",
    );
    this.name = "ControlStoreInUseError";
  }
}

export interface Leadership {
  /** True while this replica holds the lease and has confirmed it lately. */
  isLeader(): boolean;
  /** Grows each time this replica takes the lease: state kept while leading belongs to one term. */
  term(): number;
  /**
   * Inside a leader-only write's transaction: throws NotLeaderError unless the database itself says this
   * replica's lease session still holds the lock, so a replica that lost the lease (a stall, a cut
   * connection) while deciding commits nothing. The fence is the database's, not this process's belief.
   */
  fence(trx: Db): Promise<void>;
  start(): Promise<void>;
  stop(): Promise<void>;
}

/** SQLite: one control process per database (`holdSqliteControlLock`), which therefore always leads. */
export class SoleLeadership implements Leadership {
  isLeader(): boolean {
    return true;
  }
  term(): number {
    return 1;
  }
  async fence(): Promise<void> {}
  async start(): Promise<void> {}
  async stop(): Promise<void> {}
}

/**
 * Takes, for the life of this process, an exclusive lock on `control.lock` in the data directory (an
 * SQLite file in EXCLUSIVE locking mode: a POSIX lock the kernel drops when the process dies, SIGKILL
 * included). Two control processes on one SQLite file would race their first-start bootstraps and each
 * judge planes alone; the second is refused at once instead. Readers of `meridian.db` are not affected.
 */
export function holdSqliteControlLock(dataDir: string): { release(): void } {
  const lock = new SQLite(join(dataDir, "control.lock"), { timeout: 0 });
  try {
    lock.pragma("locking_mode = EXCLUSIVE");
    // The first write takes the exclusive lock; in EXCLUSIVE mode it is kept until the connection closes.
    lock.exec("create table if not exists holder (pid integer not null, since text not null)");
    lock.exec("begin exclusive");
    lock.prepare("delete from holder").run();
    lock.prepare("insert into holder (pid, since) values (?, ?)").run(process.pid, new Date().toISOString());
    lock.exec("commit");
  } catch (err) {
    lock.close();
    if ((err as { code?: unknown }).code === "SQLITE_BUSY") throw new ControlStoreInUseError(dataDir);
    throw err;
  }
  return { release: () => lock.close() };
}

/** A leader that has not confirmed its lease for this many intervals stops acting as leader. */
const STALE_INTERVALS = 5;

export interface PostgresLeaseOptions {
  url: string;
  /** How often a follower tries to take the lease and the leader confirms it holds it. Default 1 000 ms. */
  intervalMs?: number;
  logger: Logger;
  /** Told each time this replica becomes or stops being the leader. */
  onChange?: (leader: boolean) => void;
}

/**
 * The leader lease on PostgreSQL: a session-level advisory lock held by a connection of its own (not the
 * pool's). Whoever holds it leads; when the holder dies its session ends and PostgreSQL frees the lock at
 * once (a SIGKILLed replica's socket is closed by the kernel), so a follower takes over on its next try.
 * A leader whose heartbeat fails, or that has not confirmed its holding for five intervals (a stall),
 * stops acting as leader until it confirms again; writes are fenced by the database (`fence`).
 */
export class PostgresLeadership implements Leadership {
  readonly #o: Required<Omit<PostgresLeaseOptions, "onChange">> & Pick<PostgresLeaseOptions, "onChange">;
  #client: pg.Client | null = null;
  #backendPid: number | null = null;
  #leader = false;
  #term = 0;
  #confirmedAtMs = 0;
  #timer: NodeJS.Timeout | null = null;
  #busy: Promise<void> = Promise.resolve();
  #stopped = false;

  constructor(options: PostgresLeaseOptions) {
    this.#o = { intervalMs: 1_000, ...options };
  }

  isLeader(): boolean {
    // The database's lock is the guarantee (`fence`); this is the process not acting on a lease it has
    // not been able to confirm for a while (a stall, a heartbeat that hangs).
    return this.#leader && Date.now() - this.#confirmedAtMs <= STALE_INTERVALS * this.#o.intervalMs;
  }

  term(): number {
    return this.#term;
  }

  async fence(trx: Db): Promise<void> {
    const pid = this.#backendPid;
    if (!this.isLeader() || pid === null) throw new NotLeaderError();
    const row = await sql<{ held: boolean }>`
      select exists (
        select 1 from pg_locks
        where locktype = 'advisory' and granted and pid = ${pid}
          and classid = ${sql.lit(ADVISORY_NAMESPACE)} and objid = ${sql.lit(ADVISORY_LOCKS.leader)}
          and objsubid = 2
      ) as held`.execute(trx);
    if (row.rows[0]?.held !== true) throw new NotLeaderError();
  }

  async start(): Promise<void> {
    await this.#round();
    this.#timer = setInterval(() => {
      this.#busy = this.#busy.then(() => this.#round());
    }, this.#o.intervalMs);
    this.#timer.unref();
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#timer) clearInterval(this.#timer);
    await this.#busy;
    this.#set(false);
    await this.#drop();
  }

  /** One try: connect if needed, then take the lease (follower) or confirm it (leader). Never throws. */
  async #round(): Promise<void> {
    if (this.#stopped) return;
    try {
      const client = this.#client ?? (await this.#connect());
      if (this.#leader) {
        await client.query("select 1");
        this.#confirmedAtMs = Date.now();
        return;
      }
      const res = await client.query<{ ok: boolean }>(
        `select pg_try_advisory_lock(${ADVISORY_NAMESPACE}, ${ADVISORY_LOCKS.leader}) as ok`,
      );
      if (res.rows[0]?.ok === true) {
        this.#confirmedAtMs = Date.now();
        this.#set(true);
      }
    } catch (err) {
      // The lease's session is gone or unusable: whatever it held, PostgreSQL frees with it.
      if (this.#leader) this.#o.logger.warn({ err: (err as Error).message }, "leader lease lost");
      this.#set(false);
      await this.#drop();
    }
  }

  async #connect(): Promise<pg.Client> {
    const client = new pg.Client({
      connectionString: this.#o.url,
      connectionTimeoutMillis: Math.max(1_000, 2 * this.#o.intervalMs),
      // A heartbeat that cannot finish within an interval counts as a lost lease.
      statement_timeout: Math.max(500, this.#o.intervalMs),
      query_timeout: Math.max(500, this.#o.intervalMs),
    });
    client.on("error", () => {
      this.#set(false);
      void this.#drop();
    });
    await client.connect();
    const pid = await client.query<{ pid: number }>("select pg_backend_pid() as pid");
    this.#client = client;
    this.#backendPid = pid.rows[0]?.pid ?? null;
    return client;
  }

  async #drop(): Promise<void> {
    const client = this.#client;
    this.#client = null;
    this.#backendPid = null;
    if (client) await client.end().catch(() => {});
  }

  #set(leader: boolean): void {
    if (leader === this.#leader) return;
    this.#leader = leader;
    if (leader) this.#term++;
    this.#o.logger.info({ leader }, leader ? "leader lease taken" : "leader lease released");
    this.#o.onChange?.(leader);
  }
}
