// A PostgreSQL cluster of a test's own (never the machine's shared one on 5432): initdb as `postgres` in a
// temp directory, listening on 127.0.0.1:`port` and a Unix socket in that directory, trust auth. A test
// stops and starts it at will (the database-down faults), and removes it after.

import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const PG_BIN = "/usr/lib/postgresql/15/bin";

/** Runs a command to its end; throws with its stderr on failure. libfaketime of the caller is not passed on. */
export function run(cmd: string, args: string[]): void {
  const env = { ...process.env };
  for (const k of Object.keys(env)) if (k === "LD_PRELOAD" || k.startsWith("FAKETIME")) delete env[k];
  const r = spawnSync(cmd, args, { encoding: "utf8", timeout: 60_000, env });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")}: ${r.status} ${r.stderr}`);
}

export class PrivatePostgres {
  readonly dir: string;
  readonly data: string;
  constructor(readonly port: number) {
    this.dir = mkdtempSync(join(tmpdir(), "meridian-pg-"));
    this.data = join(this.dir, "data");
  }
  /** The `postgres` database of the cluster. */
  get url(): string {
    return this.urlOf("postgres");
  }
  urlOf(database: string): string {
    return `postgres://postgres@127.0.0.1:${this.port}/${database}`;
  }
  #pg(bin: string, args: string[]): void {
    run("runuser", ["-u", "postgres", "--", join(PG_BIN, bin), ...args]);
  }
  /** initdb, then start. */
  init(): this {
    run("chown", ["postgres:postgres", this.dir]);
    this.#pg("initdb", ["-D", this.data, "-A", "trust", "-U", "postgres", "--no-sync"]);
    return this.start();
  }
  start(): this {
    this.#pg("pg_ctl", [
      "-D",
      this.data,
      "-l",
      join(this.dir, "log"),
      "-w",
      "-o",
      `-p ${this.port} -k ${this.dir} -c listen_addresses=127.0.0.1 -c fsync=off`,
      "start",
    ]);
    return this;
  }
  stop(): void {
    this.#pg("pg_ctl", ["-D", this.data, "-m", "fast", "-w", "stop"]);
  }
  createDatabase(name: string): void {
    this.#pg("createdb", ["-h", "127.0.0.1", "-p", String(this.port), "-U", "postgres", name]);
  }
  destroy(): void {
    try {
      this.stop();
    } catch {}
    rmSync(this.dir, { recursive: true, force: true });
  }
}
