// The store's conformance suite (STYLE.md: a swappable backend gets one shared suite), run by
// `store.test.ts` against SQLite and PostgreSQL alike: migrations, the revision counter, transactions,
// the one-active-promotion index, unique-violation detection and JSON text columns.

import { sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { DeploymentRow, PromotionRow } from "./schema.ts";
import { type Db, isUniqueViolation, Store, type StoreConfig } from "./store.ts";

export interface StoreFixture {
  config: StoreConfig;
  /** Removes the database (and its files). */
  drop(): Promise<void>;
}

export interface ConformanceOptions {
  /** A fresh, empty database for each call. */
  fresh(): Promise<StoreFixture>;
  /**
   * Whether several processes (control replicas) may open the database at once: PostgreSQL yes; SQLite is
   * the embedded store of one control process.
   */
  sharedByReplicas: boolean;
}

const NOW = "2026-01-01T00:00:00.000Z";

async function insertTeam(db: Db, id: string, name = `team ${id}`) {
  await db.insertInto("teams").values({ id, name, is_default: 0, created_at: NOW }).execute();
}

async function insertModel(db: Db, id: string, teamId: string, name = `model ${id}`) {
  await db.insertInto("models").values({ id, team_id: teamId, name, created_at: NOW }).execute();
}

function promotion(id: string, modelId: string, environment: string, active: number): PromotionRow {
  return {
    id,
    model_id: modelId,
    environment,
    source_deployment_id: "d000001",
    candidate_deployment_id: "d000001",
    previous_deployment_id: null,
    reason: "reuse",
    status: active ? "RELEASING" : "SUCCEEDED",
    active,
    error_message: null,
    cleanup_strategy: "SCALE_TO_ZERO",
    created_by: null,
    created_at: NOW,
    updated_at: NOW,
  };
}

/** Resolves to the error `promise` rejects with; fails if it resolves. */
async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (err) {
    return err;
  }
  throw new Error("expected the statement to fail");
}

async function migrationNames(store: Store): Promise<string[]> {
  const result = await sql<{ name: string }>`select name from kysely_migration order by name`.execute(
    store.db,
  );
  return result.rows.map((r) => r.name);
}

export function storeConformance(name: string, options: ConformanceOptions): void {
  describe(`store conformance: ${name}`, () => {
    let fixture: StoreFixture;
    let store: Store;

    beforeAll(async () => {
      fixture = await options.fresh();
      store = await Store.open(fixture.config);
      await insertTeam(store.db, "team0001");
      await insertModel(store.db, "model001", "team0001");
    });
    afterAll(async () => {
      await store?.close();
      await fixture?.drop();
    });

    it("applies its migrations on open, and opening again changes nothing", async () => {
      const own = await options.fresh();
      try {
        const first = await Store.open(own.config);
        const applied = await migrationNames(first);
        expect(applied.length).toBeGreaterThan(0);
        expect(await first.revision()).toBe(1);
        await insertTeam(first.db, "keepme01");
        await first.close();

        const second = await Store.open(own.config);
        expect(await migrationNames(second)).toEqual(applied);
        expect(await second.revision()).toBe(1);
        const teams = await second.db.selectFrom("teams").select("id").execute();
        expect(teams.map((t) => t.id)).toEqual(["keepme01"]);
        await second.close();
      } finally {
        await own.drop();
      }
    });

    it.runIf(options.sharedByReplicas)("lets several replicas open one fresh database at once", async () => {
      const own = await options.fresh();
      try {
        const stores = await Promise.all([1, 2, 3, 4].map(() => Store.open(own.config)));
        const names = await Promise.all(stores.map(migrationNames));
        for (const n of names) expect(n).toEqual(names[0]);
        // The seed row of the revision counter exists once, not once per replica.
        const rows = await stores[0]!.db.selectFrom("revision").selectAll().execute();
        expect(rows).toEqual([{ id: 1, value: 1 }]);
        await Promise.all(stores.map((s) => s.close()));
      } finally {
        await own.drop();
      }
    });

    it("hands out strictly increasing revisions to concurrent transactions", async () => {
      const start = await store.revision();
      const n = 25;
      const values = await Promise.all(
        Array.from({ length: n }, (_, i) =>
          store.transaction(async (trx) => {
            const value = await store.bumpRevision(trx);
            // Work after the bump, while holding it: nobody else may see or take this value.
            await insertTeam(trx, `rev${String(i).padStart(5, "0")}`);
            expect(await store.revision(trx)).toBe(value);
            return value;
          }),
        ),
      );
      expect([...values].sort((a, b) => a - b)).toEqual(Array.from({ length: n }, (_, i) => start + i + 1));
      expect(await store.revision()).toBe(start + n);
    });

    it("does not move the revision for a transaction that rolls back", async () => {
      const start = await store.revision();
      const err = await rejection(
        store.transaction(async (trx) => {
          await store.bumpRevision(trx);
          throw new Error("abandon");
        }),
      );
      expect((err as Error).message).toBe("abandon");
      expect(await store.revision()).toBe(start);
      await store.transaction((trx) => store.bumpRevision(trx));
      expect(await store.revision()).toBe(start + 1);
    });

    it("refuses every write in a read-only transaction, and writes again afterwards", async () => {
      const start = await store.revision();
      const attempt = store.readOnly(async (trx) => {
        const revision = await store.revision(trx);
        const writes = [
          () => store.bumpRevision(trx),
          () => insertTeam(trx, "readonly1"),
          () => store.setMeta("read-only", "no", trx),
          () => trx.deleteFrom("teams").execute(),
        ];
        for (const write of writes) {
          expect(await rejection(write())).toBeInstanceOf(Error);
          // PostgreSQL aborts the transaction at the first refused statement; SQLite carries on.
          if (store.dialect === "postgres") break;
        }
        return revision;
      });
      // PostgreSQL then refuses to commit the aborted transaction; SQLite commits what it read.
      if (store.dialect === "postgres") expect(await rejection(attempt)).toBeInstanceOf(Error);
      else expect(await attempt).toBe(start);
      expect(await store.revision()).toBe(start);
      expect(await store.getMeta("read-only")).toBeUndefined();
      expect(
        await store.db.selectFrom("teams").select("id").where("id", "=", "readonly1").executeTakeFirst(),
      ).toBeUndefined();
      // The connection is writable again once the read-only transaction is over.
      await store.transaction((trx) => store.bumpRevision(trx));
      expect(await store.revision()).toBe(start + 1);
      expect(await store.readOnly((trx) => store.revision(trx))).toBe(start + 1);
    });

    it("leaves nothing behind when a transaction fails, whether by a throw or a failing statement", async () => {
      const before = await store.db.selectFrom("teams").select("id").orderBy("id").execute();
      await rejection(
        store.transaction(async (trx) => {
          await insertTeam(trx, "ghost001");
          await insertModel(trx, "ghostm01", "ghost001");
          await store.setMeta("ghost", "yes", trx);
          throw new Error("abandon");
        }),
      );
      const failed = await rejection(
        store.transaction(async (trx) => {
          await insertTeam(trx, "ghost002");
          await insertModel(trx, "ghostm02", "ghost002");
          await insertTeam(trx, "team0001"); // primary key taken: the statement fails
        }),
      );
      expect(isUniqueViolation(failed)).toBe(true);
      expect(await store.db.selectFrom("teams").select("id").orderBy("id").execute()).toEqual(before);
      const ghosts = await store.db
        .selectFrom("models")
        .select("id")
        .where("id", "in", ["ghostm01", "ghostm02"])
        .execute();
      expect(ghosts).toEqual([]);
      expect(await store.getMeta("ghost")).toBeUndefined();
    });

    it("allows one active promotion per environment, and any number of finished ones", async () => {
      const db = store.db;
      await db
        .insertInto("promotions")
        .values(promotion("p01", "model001", "prod-eu", 1))
        .execute();
      const second = await rejection(
        db
          .insertInto("promotions")
          .values(promotion("p02", "model001", "prod-eu", 1))
          .execute(),
      );
      expect(isUniqueViolation(second)).toBe(true);
      // Finished promotions do not count; other environments and models are independent.
      for (const id of ["p03", "p04", "p05"]) {
        await db
          .insertInto("promotions")
          .values(promotion(id, "model001", "prod-eu", 0))
          .execute();
      }
      await db
        .insertInto("promotions")
        .values(promotion("p06", "model001", "staging", 1))
        .execute();
      await insertModel(db, "model002", "team0001");
      await db
        .insertInto("promotions")
        .values(promotion("p07", "model002", "prod-eu", 1))
        .execute();
      // Finishing the active one frees the environment; re-activating a finished one is refused.
      await db.updateTable("promotions").set({ active: 0 }).where("id", "=", "p01").execute();
      await db
        .insertInto("promotions")
        .values(promotion("p08", "model001", "prod-eu", 1))
        .execute();
      const reactivate = await rejection(
        db.updateTable("promotions").set({ active: 1 }).where("id", "=", "p03").execute(),
      );
      expect(isUniqueViolation(reactivate)).toBe(true);
      const active = await db
        .selectFrom("promotions")
        .select("id")
        .where("model_id", "=", "model001")
        .where("environment", "=", "prod-eu")
        .where("active", "=", 1)
        .execute();
      expect(active.map((p) => p.id)).toEqual(["p08"]);
    });

    it("settles two transactions racing for one environment's active promotion", async () => {
      await insertModel(store.db, "model003", "team0001");
      const results = await Promise.allSettled(
        ["r1", "r2", "r3"].map((id) =>
          store.transaction(async (trx) => {
            await trx
              .insertInto("promotions")
              .values(promotion(id, "model003", "race", 1))
              .execute();
          }),
        ),
      );
      expect(results.filter((r) => r.status === "fulfilled")).toHaveLength(1);
      for (const r of results) {
        if (r.status === "rejected") expect(isUniqueViolation(r.reason)).toBe(true);
      }
    });

    it("recognises unique and primary-key violations, and nothing else, as unique violations", async () => {
      const db = store.db;
      await insertTeam(db, "uniq0001", "Unique Name");
      const cases = {
        primaryKey: await rejection(insertTeam(db, "uniq0001", "Other Name")),
        uniqueColumn: await rejection(insertTeam(db, "uniq0002", "Unique Name")),
        compositeUnique: await rejection(
          (async () => {
            await insertModel(db, "uniqm001", "uniq0001", "same");
            await insertModel(db, "uniqm002", "uniq0001", "same");
          })(),
        ),
      };
      for (const [kind, err] of Object.entries(cases)) expect(isUniqueViolation(err), kind).toBe(true);

      const notUnique = {
        foreignKey: await rejection(insertModel(db, "orphan01", "noteam01")),
        notNull: await rejection(
          db
            .insertInto("teams")
            .values({ id: "nn000001", name: null as unknown as string, is_default: 0, created_at: NOW })
            .execute(),
        ),
        syntax: await rejection(sql`select * from no_such_table`.execute(db)),
      };
      for (const [kind, err] of Object.entries(notUnique)) expect(isUniqueViolation(err), kind).toBe(false);
      for (const value of [null, undefined, "23505", new Error("duplicate key"), { code: 23505 }]) {
        expect(isUniqueViolation(value)).toBe(false);
      }
    });

    it("round-trips JSON documents in text columns exactly", async () => {
      const documents: unknown[] = [
        { model_name: "héllo wörld ✓ 模型 🚀", nested: { list: [1, 2.5, -3e-7, null, true, "x"] } },
        { quote: 'a "quoted" \\ back\\slash', newline: "line1\nline2\r\n\ttab", nul: "\u0000", empty: "" },
        { big: Number.MAX_SAFE_INTEGER, small: Number.MIN_SAFE_INTEGER, zero: 0, deep: [[[[{}]]]] },
        [],
        "just a string",
        { long: "y".repeat(200_000) },
      ];
      for (const [i, doc] of documents.entries()) {
        const text = JSON.stringify(doc);
        const row: DeploymentRow = {
          id: `json${String(i).padStart(3, "0")}`,
          model_id: "model001",
          name: `json-${i}`,
          status: "DEPLOYING",
          status_message: null,
          is_development: 0,
          artifact_key: "uploads/none.tgz",
          config: text,
          region: null,
          egress: "allow",
          copied_from: null,
          autoscaling: JSON.stringify({ min_replica: 0, max_replica: 1 }),
          labels: JSON.stringify({ "team/owner": "ünïcode" }),
          created_at: NOW,
          updated_at: NOW,
          backpressure: null,
          desired_replicas: null,
        };
        await store.db.insertInto("deployments").values(row).execute();
        const back = await store.db
          .selectFrom("deployments")
          .selectAll()
          .where("id", "=", row.id)
          .executeTakeFirstOrThrow();
        expect(back.config).toBe(text);
        expect(JSON.parse(back.config)).toEqual(doc);
        expect(back).toEqual(row);
      }
    });

    it("reads integers back as numbers and upserts meta values", async () => {
      expect(typeof (await store.revision())).toBe("number");
      await store.setMeta("k", "one");
      await store.setMeta("k", "two");
      expect(await store.getMeta("k")).toBe("two");
      const rows = await store.db.selectFrom("meta").select("key").where("key", "=", "k").execute();
      expect(rows).toHaveLength(1);
      const row = await store.db
        .selectFrom("teams")
        .select("is_default")
        .where("id", "=", "team0001")
        .executeTakeFirstOrThrow();
      expect(row.is_default).toBe(0);
    });

    it("keeps a plane's load counter past 2^31 exactly and upserts it per plane and deployment", async () => {
      const big = 2 ** 40 + 7; // hours of thousands of requests in flight, in request·ms
      const row = (request_ms: number, in_flight: number) => ({
        plane: "plane-a",
        deployment_id: "dep0001",
        epoch: "2026-01-01T00:00:00.000Z",
        in_flight,
        request_ms,
        last_request_at: null,
        reported_at: "2026-01-01T00:00:01.000Z",
      });
      for (const [ms, n] of [
        [5, 1],
        [big, 3],
      ] as const) {
        await store.db
          .insertInto("plane_loads")
          .values(row(ms, n))
          .onConflict((oc) =>
            oc.columns(["plane", "deployment_id"]).doUpdateSet((eb) => ({
              request_ms: eb.ref("excluded.request_ms"),
              in_flight: eb.ref("excluded.in_flight"),
            })),
          )
          .execute();
      }
      const rows = await store.db.selectFrom("plane_loads").selectAll().execute();
      expect(rows).toHaveLength(1);
      expect(Number(rows[0]!.request_ms)).toBe(big);
      expect(rows[0]!.in_flight).toBe(3);
      // The autoscaling columns of 0009 exist and are nullable.
      const d = await store.db
        .selectFrom("environments")
        .select(["backpressure"])
        .where("model_id", "=", "model001")
        .execute();
      expect(d.every((e) => e.backpressure === null)).toBe(true);
    });
  });
}
