// Per-plane keys on the control plane (issue 10 item 4): a key is trusted because it arrives in the plane's
// report over its credential; a new key retires the previous one (kept, and carried for the hop window);
// a retired key is never trusted again; a rotated credential drops the keys reported over the old one.
// Snapshots carry public keys only, and the store keeps no shared secret.

import { mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import SQLite from "better-sqlite3";
import { Kysely, Migrator, SqliteDialect } from "kysely";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CONTROL_KEY_META } from "../../src/control/keys.ts";
import { startControl } from "../../src/control/main.ts";
import { generateSigningKey, type SigningKey } from "../../src/lib/keys.ts";
import { migrationProvider } from "../../src/store/migrations.ts";
import type { Schema } from "../../src/store/schema.ts";
import { startTestControl, type TestControl } from "../support/control.ts";
import { createTestDatabase } from "../support/databases.ts";

describe("plane keys", () => {
  let t: TestControl;
  const credentials: Record<string, string> = {};

  beforeAll(async () => {
    t = await startTestControl("sqlite");
    for (const [name, region] of [
      ["eu-1", "eu"],
      ["uk-1", "uk"],
    ] as const) {
      const plane = await t.admin.post("/v1/admin/planes", {
        name,
        region,
        ingress: [`${name}.test:8443`],
        capacity: 4,
      });
      credentials[name] = plane.body.credential;
    }
  });
  afterAll(async () => t?.stop());

  const asPlane = (name: string, credential = credentials[name]!) => ({
    snapshot: async () =>
      (
        await t.admin.as(null).call("GET", `/v1/internal/planes/${name}/snapshot?wait=0`, undefined, {
          authorization: `Bearer ${credential}`,
        })
      ).body,
    report: (publicKey: string | undefined) =>
      t.admin.as(null).call(
        "POST",
        `/v1/internal/planes/${name}/report`,
        {
          revision: 1,
          replicas: [],
          request_counts: [],
          ...(publicKey === undefined ? {} : { public_key: publicKey }),
        },
        { authorization: `Bearer ${credential}`, "content-type": "application/json" },
      ),
  });
  const keyRows = (plane: string) =>
    t.control.ctx.store.db
      .selectFrom("plane_keys")
      .selectAll()
      .where("plane", "=", plane)
      .orderBy("first_seen_at")
      .execute();
  const seenBy = async (viewer: string) =>
    ((await asPlane(viewer).snapshot()).plane_keys as Array<Record<string, unknown>>).map((k) => [
      k["plane"],
      k["key_id"],
      k["retired_at"] === null ? "current" : "retired",
    ]);

  let k1: SigningKey;
  let k2: SigningKey;

  it("trusts the key a plane reports over its credential, and hands it to the other planes only", async () => {
    k1 = generateSigningKey();
    expect((await asPlane("eu-1").report(k1.publicKey)).status).toBe(200);
    expect(await seenBy("uk-1")).toEqual([["eu-1", k1.keyId, "current"]]);
    expect(await seenBy("eu-1")).toEqual([]); // its own key is not among those it verifies hops with
    const [row] = await keyRows("eu-1");
    expect(row).toMatchObject({ key_id: k1.keyId, public_key: k1.publicKey, retired_at: null });
    const snap = await asPlane("uk-1").snapshot();
    expect(snap.plane_keys[0].public_key).toBe(k1.publicKey);
  });

  it("does not bump the revision for a key it already trusts", async () => {
    const before = await t.control.ctx.store.revision();
    for (let i = 0; i < 3; i++) expect((await asPlane("eu-1").report(k1.publicKey)).status).toBe(200);
    expect(await t.control.ctx.store.revision()).toBe(before);
  });

  it("retires the previous key when a new one is reported, keeps it, and carries it for the hop window", async () => {
    k2 = generateSigningKey();
    const before = await t.control.ctx.store.revision();
    expect((await asPlane("eu-1").report(k2.publicKey)).status).toBe(200);
    expect(await t.control.ctx.store.revision()).toBeGreaterThan(before);
    const rows = await keyRows("eu-1");
    expect(rows.map((r) => [r.key_id, r.retired_at === null])).toEqual([
      [k1.keyId, false],
      [k2.keyId, true],
    ]);
    expect(await seenBy("uk-1")).toEqual([
      ["eu-1", k2.keyId, "current"],
      ["eu-1", k1.keyId, "retired"],
    ]);
  });

  it("never trusts a retired key again (409 plane_key_retired), and changes nothing", async () => {
    const res = await asPlane("eu-1").report(k1.publicKey);
    expect(res.status).toBe(409);
    expect(res.body).toMatchObject({
      error_code: "plane_key_retired",
      detail: { plane: "eu-1", key_id: k1.keyId },
    });
    expect((await keyRows("eu-1")).filter((r) => r.retired_at === null).map((r) => r.key_id)).toEqual([
      k2.keyId,
    ]);
  });

  it("refuses a key that is not a raw Ed25519 public key (400)", async () => {
    for (const bad of ["", "AAAA", `${"A".repeat(42)}B`, "-----BEGIN PUBLIC KEY-----"]) {
      const res = await asPlane("eu-1").report(bad);
      expect(res.status, bad).toBe(400);
    }
  });

  it("drops the keys reported over a rotated credential until the plane reports over the new one", async () => {
    const rotated = await t.admin.post("/v1/admin/planes/eu-1/credential");
    expect(rotated.status).toBe(200);
    expect(await seenBy("uk-1")).toEqual([]);
    // The old credential is refused outright, so it cannot report a key either.
    expect((await asPlane("eu-1").report(generateSigningKey().publicKey)).status).toBe(401);
    credentials["eu-1"] = rotated.body.credential;
    expect((await asPlane("eu-1").report(k2.publicKey)).status).toBe(200);
    expect(await seenBy("uk-1")).toEqual([["eu-1", k2.keyId, "current"]]);
  });

  it("serves the control plane's public key, and no secret or private key, in every snapshot", async () => {
    const jwk = JSON.parse((await t.control.ctx.store.getMeta(CONTROL_KEY_META))!) as {
      x: string;
      d: string;
    };
    for (const name of ["eu-1", "uk-1"]) {
      const snap = await asPlane(name).snapshot();
      expect(snap.control_key.public_key).toBe(jwk.x);
      const text = JSON.stringify(snap);
      expect(text).not.toContain(jwk.d);
      expect(text).not.toMatch(/hop_secret|PRIVATE KEY|"d":/);
      for (const credential of Object.values(credentials))
        expect(text).not.toContain(credential.split(".")[1]);
    }
    expect(await t.control.ctx.store.getMeta("hop_secret")).toBeUndefined();
  });
});

describe("the control plane's key", () => {
  it("is shared by control replicas on one PostgreSQL, created once however they race", async () => {
    const db = await createTestDatabase("postgres");
    const start = (i: number) =>
      startControl({
        dataDir: join(db.dir, `control-${i}`),
        host: "127.0.0.1",
        port: 0,
        databaseUrl: db.url,
        domain: "meridian.test",
        publicUrl: null,
        // Every replica is given the same secrets key file (docs/operator-guide.md): the first one's.
        ...(i === 0 ? {} : { secretsKeyFile: join(db.dir, "control-0", "secrets.key") }),
        logger: pino({ level: "silent" }),
      });
    // The first start bootstraps; then the key is taken away, as on an installation that predates it,
    // and three replicas start at once: each runs the start-up step, one key wins.
    const first = await start(0);
    await first.ctx.store.db.deleteFrom("meta").where("key", "=", CONTROL_KEY_META).execute();
    await first.stop();
    const controls = await Promise.all([start(1), start(2), start(3)]);
    try {
      const keys = await Promise.all(controls.map((c) => c.ctx.store.getMeta(CONTROL_KEY_META)));
      expect(new Set(keys).size).toBe(1);
      expect(keys[0]).toContain('"crv":"Ed25519"');
    } finally {
      await Promise.all(controls.map((c) => c.stop()));
      await db.drop();
    }
  });

  it("is created at start on an installation that predates it, whose hop secret the migration removes", async () => {
    const db = await createTestDatabase("sqlite");
    const file = join(db.dir, "control", "meridian.db");
    try {
      // The store as the release before plane keys left it: migrated to 0003, bootstrapped, a hop secret.
      mkdirSync(dirname(file), { recursive: true });
      const legacy = new Kysely<Schema>({ dialect: new SqliteDialect({ database: new SQLite(file) }) });
      const migrated = await new Migrator({ db: legacy, provider: migrationProvider("sqlite") }).migrateTo(
        "0003_artifact_chunks",
      );
      expect(migrated.error).toBeUndefined();
      await legacy
        .insertInto("meta")
        .values([
          { key: "organization_id", value: "org00001" },
          { key: "hop_secret", value: "hop.legacy-shared-secret" },
        ])
        .execute();
      await legacy.destroy();

      const control = await startControl({
        dataDir: join(db.dir, "control"),
        host: "127.0.0.1",
        port: 0,
        databaseUrl: null,
        domain: "meridian.test",
        publicUrl: null,
        logger: pino({ level: "silent" }),
      });
      try {
        expect(control.adminKey).toBeNull(); // bootstrapped before: bootstrap did nothing
        expect(await control.ctx.store.getMeta("hop_secret")).toBeUndefined();
        expect(await control.ctx.store.getMeta(CONTROL_KEY_META)).toContain('"kty":"OKP"');
      } finally {
        await control.stop();
      }
    } finally {
      await db.drop();
    }
  });
});
