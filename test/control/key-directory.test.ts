// The published key directory (issue 14 item 1, DESIGN.md §2.10) and the evidence route's refusals, on a
// real control plane with both stores. A key is dated from when its plane says it first had it, bounded by
// what the control plane knows (registration, the plane's last report before the key, now); retired keys
// stay listed, a deleted plane's keys are retired and keep their region, one key never serves two planes,
// and the directory is public and validates as `meridian verify` reads it.

import { mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import SQLite from "better-sqlite3";
import { Kysely, Migrator, SqliteDialect } from "kysely";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { keyValidFrom } from "../../src/control/keys.ts";
import { startControl } from "../../src/control/main.ts";
import { parseKeyDirectory } from "../../src/core/key-directory.ts";
import { generateSigningKey } from "../../src/lib/keys.ts";
import { migrationProvider } from "../../src/store/migrations.ts";
import type { Schema } from "../../src/store/schema.ts";
import { ApiClient, startTestControl, type TestControl } from "../support/control.ts";
import { createTestDatabase, STORE_KINDS } from "../support/databases.ts";

describe("keyValidFrom", () => {
  const plane = { created_at: "2025-06-01T00:00:00.000Z", last_seen_at: "2025-06-02T00:00:00.000Z" };
  const now = "2025-06-03T00:00:00.000Z";
  it.each([
    ["no report of it: now", undefined, now],
    ["between the last report and now: as reported", "2025-06-02T06:00:00.000Z", "2025-06-02T06:00:00.000Z"],
    ["before the last report: the last report", "2025-05-20T00:00:00.000Z", "2025-06-02T00:00:00.000Z"],
    ["after now: now", "2025-06-04T00:00:00.000Z", now],
    ["not a time: now", "yesterday", now],
  ])("%s", (_name, reported, want) => {
    expect(keyValidFrom(plane, reported, now)).toBe(want);
  });
  it("a plane that never reported: no earlier than its registration", () => {
    expect(keyValidFrom({ ...plane, last_seen_at: null }, "2025-01-01T00:00:00.000Z", now)).toBe(
      plane.created_at,
    );
  });
});

describe.each(STORE_KINDS)("the key directory (%s)", (kind) => {
  let t: TestControl;
  const credentials: Record<string, string> = {};

  const register = async (name: string, region: string) => {
    const res = await t.admin.post("/v1/admin/planes", {
      name,
      region,
      ingress: [`${name}.test:8443`],
      capacity: 4,
    });
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    credentials[name] = res.body.credential;
  };
  const report = (name: string, publicKey: string, keyCreatedAt?: string) =>
    t.admin.as(null).call(
      "POST",
      `/v1/internal/planes/${name}/report`,
      {
        revision: 1,
        replicas: [],
        request_counts: [],
        public_key: publicKey,
        ...(keyCreatedAt === undefined ? {} : { key_created_at: keyCreatedAt }),
      },
      { authorization: `Bearer ${credentials[name]}`, "content-type": "application/json" },
    );
  const directory = async () => {
    const res = await new ApiClient(t.control.url, null).get("/v1/keys");
    expect(res.status).toBe(200);
    const parsed = parseKeyDirectory(res.body);
    expect(parsed.ok, JSON.stringify(parsed)).toBe(true);
    return { ...(parsed as Extract<typeof parsed, { ok: true }>).directory, headers: res.headers };
  };
  const planeRow = (name: string) =>
    t.control.ctx.store.db
      .selectFrom("planes")
      .selectAll()
      .where("name", "=", name)
      .executeTakeFirstOrThrow();

  beforeAll(async () => {
    t = await startTestControl(kind);
    expect((await t.admin.post("/v1/admin/regions", { slug: "ca", display_name: "Canada" })).status).toBe(
      200,
    );
  });
  afterAll(async () => t?.stop());

  it("is public, uncached, and lists each key with its plane, region and validity — public parts only", async () => {
    await register("eu-1", "eu");
    const k = generateSigningKey();
    expect((await report("eu-1", k.publicKey)).status).toBe(200);
    const d = await directory();
    expect(d.headers["cache-control"]).toBe("no-cache");
    const row = d.keys.find((x) => x.plane === "eu-1")!;
    expect(row).toEqual({
      key_id: k.keyId,
      plane: "eu-1",
      region: "eu",
      alg: "ed25519",
      public_key: k.publicKey,
      valid_from: expect.any(String),
      retired_at: null,
    });
    // Without a reported creation time, a key is valid from when the control plane first saw it.
    const stored = await t.control.ctx.store.db
      .selectFrom("plane_keys")
      .selectAll()
      .where("key_id", "=", k.keyId)
      .executeTakeFirstOrThrow();
    expect(row.valid_from).toBe(stored.first_seen_at);
    const text = JSON.stringify(d);
    expect(text).not.toContain('"d"');
    expect(text).not.toContain("credential");
    // An API key is not needed, and one that is wrong changes nothing: the document is the same for all.
    const bogus = await new ApiClient(t.control.url, "not-a-key").get("/v1/keys");
    expect(bogus.status).toBe(200);
  });

  it("dates a key from the plane's report, within registration, the last report and now", async () => {
    await register("uk-1", "uk");
    const registered = await planeRow("uk-1");
    // A key the plane had before it was registered (a reused data directory): from the registration.
    const k1 = generateSigningKey();
    expect((await report("uk-1", k1.publicKey, "2020-01-01T00:00:00.000Z")).status).toBe(200);
    let d = await directory();
    expect(d.keys.find((x) => x.key_id === k1.keyId)?.valid_from).toBe(registered.created_at);

    // The plane restarts with a new key while the control plane is down and signs with it: it reports,
    // later, when it first had the key. Dated from then — but never before its last report with k1.
    const lastReport = (await planeRow("uk-1")).last_seen_at!;
    const had = new Date(Date.parse(lastReport) + 1).toISOString();
    await new Promise((r) => setTimeout(r, 20));
    const k2 = generateSigningKey();
    expect((await report("uk-1", k2.publicKey, had)).status).toBe(200);
    d = await directory();
    const old = d.keys.find((x) => x.key_id === k1.keyId)!;
    const fresh = d.keys.find((x) => x.key_id === k2.keyId)!;
    expect(fresh.valid_from).toBe(had);
    expect(Date.parse(fresh.valid_from)).toBeLessThan(
      Date.parse(
        (
          await t.control.ctx.store.db
            .selectFrom("plane_keys")
            .select("first_seen_at")
            .where("key_id", "=", k2.keyId)
            .executeTakeFirstOrThrow()
        ).first_seen_at,
      ),
    );
    // The retired key stays, with when it was retired, so what it signed still verifies.
    expect(old.retired_at).not.toBeNull();
    expect(old.region).toBe("uk");

    // The attacker's try: a stolen credential reporting a new key "created" long ago, to sign the past.
    const k3 = generateSigningKey();
    const before = (await planeRow("uk-1")).last_seen_at!;
    expect((await report("uk-1", k3.publicKey, "2021-01-01T00:00:00.000Z")).status).toBe(200);
    d = await directory();
    expect(d.keys.find((x) => x.key_id === k3.keyId)?.valid_from).toBe(before);
    // …or in the future, to outlive a rotation: no later than now.
    const k4 = generateSigningKey();
    expect((await report("uk-1", k4.publicKey, "2999-01-01T00:00:00.000Z")).status).toBe(200);
    d = await directory();
    const k4row = d.keys.find((x) => x.key_id === k4.keyId)!;
    expect(Date.parse(k4row.valid_from)).toBeLessThanOrEqual(Date.now());
  });

  it("refuses a creation time that is not an RFC 3339 UTC time", async () => {
    const k = generateSigningKey();
    for (const bad of ["yesterday", "2025-06-02", "2025-06-02T00:00:00+02:00", "x".repeat(100)]) {
      const res = await report("eu-1", k.publicKey, bad);
      expect(res.status, bad).toBe(400);
      expect(res.body.error_code).toBe("invalid_request");
    }
    expect((await directory()).keys.some((x) => x.key_id === k.keyId)).toBe(false);
  });

  it("never lets one key serve two planes (a copied data directory)", async () => {
    await register("eu-2", "eu");
    const own = (await directory()).keys.find((x) => x.plane === "eu-1" && x.retired_at === null)!;
    const res = await report("eu-2", own.public_key);
    expect(res.status).toBe(409);
    expect(res.body.error_code).toBe("conflict");
    expect(res.body.error).toContain("eu-1");
    const d = await directory();
    expect(d.keys.filter((x) => x.key_id === own.key_id)).toEqual([own]);
  });

  it("keeps a deleted plane's keys, retired, in the region they were registered in", async () => {
    await register("ca-1", "ca");
    const k = generateSigningKey();
    expect((await report("ca-1", k.publicKey)).status).toBe(200);
    expect((await t.admin.delete("/v1/admin/planes/ca-1")).status).toBe(200);
    let d = await directory();
    const gone = d.keys.find((x) => x.key_id === k.keyId)!;
    expect(gone.plane).toBe("ca-1");
    expect(gone.region).toBe("ca");
    expect(gone.retired_at).not.toBeNull();
    // The name registered again, in another region, with the same key file: refused (the key is retired).
    await register("ca-1", "eu");
    const reused = await report("ca-1", k.publicKey);
    expect(reused.status).toBe(409);
    expect(reused.body.error_code).toBe("plane_key_retired");
    const k2 = generateSigningKey();
    expect((await report("ca-1", k2.publicKey)).status).toBe(200);
    d = await directory();
    expect(d.keys.find((x) => x.key_id === k.keyId)?.region).toBe("ca");
    expect(d.keys.find((x) => x.key_id === k2.keyId)?.region).toBe("eu");
  });
});

describe("the key directory after an upgrade", () => {
  it("dates older keys from when they were first seen, and retires those of planes deleted before", async () => {
    const db = await createTestDatabase("sqlite");
    const file = join(db.dir, "control", "meridian.db");
    try {
      mkdirSync(dirname(file), { recursive: true });
      const legacy = new Kysely<Schema>({ dialect: new SqliteDialect({ database: new SQLite(file) }) });
      const migrated = await new Migrator({ db: legacy, provider: migrationProvider("sqlite") }).migrateTo(
        "0007_key_regions",
      );
      expect(migrated.error).toBeUndefined();
      await legacy.insertInto("meta").values({ key: "organization_id", value: "org00001" }).execute();
      await legacy
        .insertInto("regions")
        .values({ slug: "eu", display_name: "Europe", created_at: "2025-01-01T00:00:00.000Z" })
        .execute();
      await legacy
        .insertInto("planes")
        .values({
          name: "eu-1",
          region: "eu",
          ingress: "[]",
          capacity: 1,
          global_ingress: 0,
          credential_hash: "h",
          created_at: "2025-01-01T00:00:00.000Z",
          last_seen_at: null,
          applied_revision: 0,
          admin_url: null,
          sandbox_mode: null,
          sandbox_detail: null,
        } as never)
        .execute();
      const [kept, orphan] = [generateSigningKey(), generateSigningKey()];
      for (const [plane, k] of [
        ["eu-1", kept],
        ["old-1", orphan],
      ] as const) {
        await (legacy as unknown as Kysely<Record<string, Record<string, unknown>>>)
          .insertInto("plane_keys")
          .values({
            plane,
            key_id: k.keyId,
            public_key: k.publicKey,
            credential_hash: "h",
            first_seen_at: "2025-02-01T00:00:00.000Z",
            retired_at: null,
          })
          .execute();
      }
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
        const res = await new ApiClient(control.url, null).get("/v1/keys");
        const parsed = parseKeyDirectory(res.body);
        expect(parsed.ok).toBe(true);
        if (!parsed.ok) return;
        expect(parsed.directory.keys).toEqual([
          expect.objectContaining({
            key_id: kept.keyId,
            plane: "eu-1",
            region: "eu",
            valid_from: "2025-02-01T00:00:00.000Z",
            retired_at: null,
          }),
        ]);
        const row = await control.ctx.store.db
          .selectFrom("plane_keys")
          .selectAll()
          .where("key_id", "=", orphan.keyId)
          .executeTakeFirstOrThrow();
        expect(row.region).toBeNull();
        expect(row.retired_at).not.toBeNull();
      } finally {
        await control.stop();
      }
    } finally {
      await db.drop();
    }
  });
});

describe("GET …/environments/{env}/evidence refusals", () => {
  let t: TestControl;
  let model: string;
  beforeAll(async () => {
    t = await startTestControl("sqlite");
    const created = await t.admin.createModel("evidence-refusals");
    expect(created.status, JSON.stringify(created.body)).toBe(200);
    model = created.body.model.id;
  });
  afterAll(async () => t?.stop());

  const evidence = (query: string, env = "production", id = model) =>
    t.admin.get(`/v1/models/${id}/environments/${env}/evidence${query}`);

  it.each([
    ["?from=yesterday", "from"],
    ["?to=2025-06-02", "to"],
    ["?from=2025-06-02T12:00:00Z&to=2025-06-02T11:00:00Z", "from"],
    ["?from=2020-01-01T00:00:00Z&to=2025-06-02T00:00:00Z", "from"],
    ["?to=2999-01-01T00:00:00Z&from=2998-12-31T00:00:00Z", "to"],
  ])("answers 400 invalid_request for %s, naming the field", async (query, field) => {
    const res = await evidence(query);
    expect(res.status).toBe(400);
    expect(res.body).toMatchObject({ error_code: "invalid_request", detail: { field } });
  });

  it("refuses unknown query fields, models and environments with their codes", async () => {
    expect((await evidence("?limit=5")).body.error_code).toBe("invalid_request");
    expect((await evidence("", "production", "zzzzzzzz")).body.error_code).toBe("model_not_found");
    expect((await evidence("", "prod-nowhere")).body.error_code).toBe("environment_not_found");
    expect((await t.admin.as(null).get(`/v1/models/${model}/environments/production/evidence`)).status).toBe(
      401,
    );
  });

  it("with no plane to ask, answers an empty document; a plane that cannot be asked is named", async () => {
    let res = await evidence("");
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({
      kind: "meridian-evidence",
      scope: { model_id: model, environment: "production", restricted_to: null },
      pieces: [],
      unreachable_planes: [],
      totals: { records: 0, client_requests: 0, out_of_region: 0 },
    });
    expect(Date.parse(res.body.scope.to) - Date.parse(res.body.scope.from)).toBe(86_400_000);
    // Registered, never started: it reported no operator listener.
    await t.admin.post("/v1/admin/planes", {
      name: "eu-1",
      region: "eu",
      ingress: ["eu-1.test:1"],
      capacity: 1,
    });
    res = await evidence("");
    expect(res.body.unreachable_planes).toEqual(["eu-1"]);
    // A plane deleted after it had a key: its piece cannot be asked for any more, and the document says so.
    const gone = await t.admin.post("/v1/admin/planes", {
      name: "gone-1",
      region: "eu",
      ingress: ["gone-1.test:1"],
      capacity: 1,
    });
    const reported = await t.admin
      .as(null)
      .call(
        "POST",
        "/v1/internal/planes/gone-1/report",
        { revision: 1, replicas: [], request_counts: [], public_key: generateSigningKey().publicKey },
        { authorization: `Bearer ${gone.body.credential}`, "content-type": "application/json" },
      );
    expect(reported.status).toBe(200);
    expect((await t.admin.delete("/v1/admin/planes/gone-1")).status).toBe(200);
    res = await evidence("");
    expect(res.body.unreachable_planes).toEqual(["eu-1", "gone-1"]);
    // A range that ended before its key existed does not expect it.
    res = await evidence("?from=2025-01-01T00:00:00Z&to=2025-01-02T00:00:00Z");
    expect(res.body.unreachable_planes).toEqual(["eu-1"]);
  });
});
