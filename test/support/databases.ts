// Stores for tests: a fresh SQLite file in a temp directory, or a fresh PostgreSQL database cloned per
// test from nothing on the machine's server (127.0.0.1:5432, trust auth; override with
// MERIDIAN_TEST_DATABASE_URL). Each is dropped when the test is done.

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";

export const ADMIN_DATABASE_URL =
  process.env["MERIDIAN_TEST_DATABASE_URL"] ?? "postgres://postgres@127.0.0.1:5432/test";

export interface TestDatabase {
  kind: "sqlite" | "postgres";
  /** PostgreSQL URL, or null for SQLite (a file under `dir`). */
  url: string | null;
  dir: string;
  drop(): Promise<void>;
}

export type StoreKind = "sqlite" | "postgres";
export const STORE_KINDS: StoreKind[] = ["sqlite", "postgres"];

export async function createTestDatabase(kind: StoreKind): Promise<TestDatabase> {
  const dir = mkdtempSync(join(tmpdir(), "meridian-test-"));
  if (kind === "sqlite") {
    return { kind, url: null, dir, drop: async () => rmSync(dir, { recursive: true, force: true }) };
  }
  const name = `meridian_${process.pid}_${Math.random().toString(36).slice(2, 10)}`;
  const admin = new pg.Client({ connectionString: ADMIN_DATABASE_URL });
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE ${name}`);
  } finally {
    await admin.end();
  }
  const url = new URL(ADMIN_DATABASE_URL);
  url.pathname = `/${name}`;
  return {
    kind,
    url: url.toString(),
    dir,
    async drop() {
      rmSync(dir, { recursive: true, force: true });
      const c = new pg.Client({ connectionString: ADMIN_DATABASE_URL });
      await c.connect();
      try {
        await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      } finally {
        await c.end();
      }
    },
  };
}
