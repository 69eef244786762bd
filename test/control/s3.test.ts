// Baseten's upload flow against a real control plane (in this process, on a loopback port) on SQLite and on
// PostgreSQL: prepare_model_upload to the letter of the published spec, then boto3 (the machine's
// `python3` on PATH, pyenv's 3.11.7) uploading single-part and multipart plain tars with the issued
// credentials, after which a deployment built from the s3_key; and every attacker's attempt, refused
// with S3's XML and leaving nothing stored.

import { createHash, randomBytes } from "node:crypto";
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { connect, type Server } from "node:net";
import { join, resolve } from "node:path";
import { createServer as createTlsServer } from "node:tls";
import { Ajv } from "ajv";
import { sql } from "kysely";
import pino from "pino";
import { create as createTar } from "tar";
import { request } from "undici";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { buildControlApp } from "../../src/control/app.ts";
import { LocalArtifactStore } from "../../src/control/artifacts.ts";
import { type RunningControl, startControl } from "../../src/control/main.ts";
import { ensureLocalCa, ensurePlaneCertificate } from "../../src/up/tls.ts";
import { type Boto3Spec, runBoto3 } from "../support/boto3.ts";
import { ApiClient, EXAMPLES, startTestControl, type TestControl, tempDir } from "../support/control.ts";
import { createTestDatabase, STORE_KINDS } from "../support/databases.ts";

// Each boto3 step list is a Python process; a test that runs a dozen of them on a busy machine needs time.
vi.setConfig({ testTimeout: 120_000 });

/** The full published management API (the worktree's own copy, or the shared one beside the checkout). */
function fullReference(): { components: { schemas: Record<string, object> } } {
  const name = "baseten-management-api.json";
  const candidates = [
    resolve(import.meta.dirname, "../../src/control/reference", name),
    resolve(import.meta.dirname, "../../../shared/reference", name),
    resolve(import.meta.dirname, "../../../../shared/reference", name),
  ];
  const found = candidates.find((c) => existsSync(c));
  if (!found) throw new Error(`the published spec ${name} is in none of ${candidates.join(", ")}`);
  return JSON.parse(readFileSync(found, "utf8"));
}

const ajv = new Ajv({ strict: false, allErrors: true });
ajv.addSchema({ $id: "full", components: fullReference().components });
function expectSpecShape(name: string, body: unknown) {
  const validate = ajv.getSchema(`full#/components/schemas/${name}`)!;
  expect(validate(body), `${name}: ${ajv.errorsText(validate.errors)}`).toBe(true);
}

const sha256 = (b: Buffer) => createHash("sha256").update(b).digest("hex");

/** A package as truss sends it: an uncompressed tar despite its `.tgz` name, with `extra` bytes of data. */
async function plainTarPackage(dir: string, name: string, extraBytes = 0): Promise<string> {
  const src = join(dir, `${name}-src`);
  cpSync(join(EXAMPLES, "hello-js"), src, { recursive: true });
  if (extraBytes > 0) {
    mkdirSync(join(src, "data"), { recursive: true });
    writeFileSync(join(src, "data", "weights.bin"), randomBytes(extraBytes));
  }
  const file = join(dir, `${name}.tgz`);
  await createTar({ gzip: false, cwd: src, file, portable: true }, ["."]);
  return file;
}

interface Prepared {
  creds: { aws_access_key_id: string; aws_secret_access_key: string; aws_session_token: string };
  s3_bucket: string;
  s3_key: string;
  s3_region: string;
  s3_endpoint_url: string;
  upload_url: string;
}

async function prepare(client: ApiClient, body: Record<string, unknown> = {}): Promise<Prepared> {
  const res = await client.post("/v1/prepare_model_upload", {
    name: `m-${randomBytes(4).toString("hex")}`,
    deployment: { config: {} },
    ...body,
  });
  expect(res.status, JSON.stringify(res.body)).toBe(200);
  return res.body as Prepared;
}

function spec(p: Prepared, steps: Boto3Spec["steps"], extra: Partial<Boto3Spec> = {}): Boto3Spec {
  return {
    endpoint_url: p.s3_endpoint_url,
    region_name: p.s3_region,
    creds: p.creds,
    bucket: p.s3_bucket,
    key: p.s3_key,
    steps,
    ...extra,
  };
}

/** Everything the control plane keeps of uploads: blobs, staged parts, multipart state, target states. */
async function storage(control: RunningControl) {
  const ctx = control.ctx;
  const db = ctx.store.db;
  const walk = (dir: string): string[] =>
    existsSync(dir)
      ? readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
          e.isDirectory() ? walk(join(dir, e.name)) : [join(dir, e.name)],
        )
      : [];
  const blobs =
    ctx.artifacts instanceof LocalArtifactStore
      ? walk(join(ctx.artifacts.dir, "sha256")).map((f) => f.split("/").pop()!)
      : (
          await db
            .selectFrom("artifact_chunks")
            .select("blob")
            .distinct()
            .where("blob", "not like", "tmp:%")
            .execute()
        ).map((r) => r.blob);
  const count = async (table: "s3_multipart_uploads" | "s3_parts" | "s3_part_chunks") =>
    Number((await db.selectFrom(table).select(sql<number>`count(*)`.as("n")).executeTakeFirstOrThrow()).n);
  return {
    blobs: blobs.sort(),
    stagedFiles:
      ctx.artifacts instanceof LocalArtifactStore ? walk(join(ctx.artifacts.dir, "s3-parts")).length : 0,
    partialFiles:
      ctx.artifacts instanceof LocalArtifactStore ? walk(join(ctx.artifacts.dir, "tmp")).length : 0,
    partialChunks: Number(
      (
        await db
          .selectFrom("artifact_chunks")
          .select(sql<number>`count(*)`.as("n"))
          .where("blob", "like", "tmp:%")
          .executeTakeFirstOrThrow()
      ).n,
    ),
    uploads: await count("s3_multipart_uploads"),
    parts: await count("s3_parts"),
    chunks: await count("s3_part_chunks"),
  };
}

async function targetState(control: RunningControl, key: string) {
  return control.ctx.store.db
    .selectFrom("artifacts")
    .select(["state", "sha256", "size"])
    .where("key", "=", key)
    .executeTakeFirstOrThrow();
}

describe.each(STORE_KINDS)("the S3 upload flow on %s", (kind) => {
  let t: TestControl;
  let dir: string;
  let small: string;
  let large: string;

  beforeAll(async () => {
    t = await startTestControl(kind);
    dir = tempDir();
    small = await plainTarPackage(dir, "small");
    // Three 5 MiB parts and a bit: multipart with boto3's smallest part size.
    large = await plainTarPackage(dir, "large", 11 * 1024 * 1024);
  });
  afterAll(async () => t?.stop());

  it("answers prepare_model_upload as the published spec shapes it; dry_run issues and stores nothing", async () => {
    const before = await storage(t.control);
    const targets = async () =>
      (await t.control.ctx.store.db.selectFrom("artifacts").select("key").execute()).length;
    const n = await targets();
    const dry = await t.admin.post("/v1/prepare_model_upload", {
      name: "dry",
      dry_run: true,
      deployment: { config: {}, environment_name: "prod-eu" },
    });
    expect(dry.status, JSON.stringify(dry.body)).toBe(200);
    expectSpecShape("PrepareModelUploadResponseV1", dry.body);
    expect(dry.body).toMatchObject({ creds: null, s3_bucket: null, s3_key: null });
    expect(await targets()).toBe(n);
    const credentials = await t.control.ctx.store.db.selectFrom("s3_credentials").selectAll().execute();

    const real = await t.admin.post("/v1/prepare_model_upload", {
      name: "real",
      team_id: null,
      model_id: null,
      dry_run: false,
      deployment: { config: { model_name: "real" }, raw_config: "model_name: real\n", labels: { a: 1 } },
    });
    expect(real.status, JSON.stringify(real.body)).toBe(200);
    expectSpecShape("PrepareModelUploadResponseV1", real.body);
    expectSpecShape("AWSCredentialsV1", real.body.creds);
    expect(Object.keys(real.body.creds).sort()).toEqual([
      "aws_access_key_id",
      "aws_secret_access_key",
      "aws_session_token",
    ]);
    expect(real.body).toMatchObject({
      s3_bucket: "meridian-uploads",
      s3_region: "us-east-1",
      s3_endpoint_url: t.control.url,
      upload_url: `${t.control.url}/v1/artifacts/${real.body.s3_key}`,
    });
    expect(await targets()).toBe(n + 1);
    const after = await t.control.ctx.store.db.selectFrom("s3_credentials").selectAll().execute();
    expect(after.length).toBe(credentials.length + 1);
    // The session token is kept only as its hash.
    expect(JSON.stringify(after)).not.toContain(real.body.creds.aws_session_token);
    expect((await storage(t.control)).blobs).toEqual(before.blobs);
  });

  it("refuses a prepare_model_upload body that breaks the spec's rules, naming the rule", async () => {
    const model = (await t.admin.createModel(`rules-${kind}`)).body.model.id as string;
    const refused = async (body: unknown, status: number, code: string) => {
      const res = await t.admin.post("/v1/prepare_model_upload", body);
      expect(res.status, JSON.stringify(res.body)).toBe(status);
      expect(res.body.error_code).toBe(code);
      return res.body;
    };
    const deployment = { config: {} };
    expect((await refused({ deployment }, 400, "invalid_request")).detail).toMatchObject({
      rule: "exactly_one_of_name_or_model_id",
    });
    expect(
      (await refused({ deployment, name: "x", model_id: model }, 400, "invalid_request")).detail,
    ).toMatchObject({
      rule: "exactly_one_of_name_or_model_id",
    });
    expect(
      (await refused({ deployment, model_id: model, team_id: "whatever" }, 400, "invalid_request")).detail,
    ).toMatchObject({ rule: "team_id_only_with_name" });
    await refused({ name: "x" }, 400, "invalid_request");
    await refused({ name: "x", deployment: {} }, 400, "invalid_request");
    await refused({ name: "x", deployment, dry_run: "yes" }, 400, "invalid_request");
    await refused({ name: "x", deployment, bucket: "mine" }, 400, "invalid_request");
    await refused({ name: "   ", deployment }, 400, "invalid_request");
    await refused(
      { name: "x", deployment: { config: {}, environment_name: "Prod_EU" } },
      400,
      "invalid_environment_name",
    );
    await refused({ name: "x", deployment, team_id: "nosuchteam" }, 404, "team_not_found");
    await refused({ deployment, model_id: "zzzzzzzz" }, 404, "model_not_found");
    await refused({ deployment, name: `rules-${kind}` }, 409, "model_name_taken");
    // A new deployment of an existing model is prepared by model_id, in the model's team.
    const ok = await t.admin.post("/v1/prepare_model_upload", { deployment, model_id: model });
    expect(ok.status, JSON.stringify(ok.body)).toBe(200);

    // Another team's member sees neither the model nor the team.
    const team = await t.admin.post("/v1/admin/teams", { name: `Others ${kind}` });
    const user = await t.admin.post("/v1/admin/users", {
      email: `other-${kind}@example.com`,
      teams: [{ team_id: team.body.id, role: "TEAM_ADMIN" }],
    });
    const other = t.admin.as(user.body.api_key);
    const defaultTeam = (await t.admin.get("/v1/teams")).body.teams.find(
      (x: { default: boolean }) => x.default,
    ).id;
    const asOther = async (body: unknown, status: number, code: string) => {
      const res = await other.post("/v1/prepare_model_upload", body);
      expect(res.status, JSON.stringify(res.body)).toBe(status);
      expect(res.body.error_code).toBe(code);
    };
    await asOther({ deployment, model_id: model }, 404, "model_not_found");
    await asOther({ deployment, name: "x", team_id: defaultTeam }, 404, "team_not_found");
    // An invoke-only key may not push at all.
    const invoke = await t.admin.post("/v1/api_keys", { type: "WORKSPACE_INVOKE", name: "invoke" });
    const res = await t.admin
      .as(invoke.body.api_key)
      .post("/v1/prepare_model_upload", { deployment, name: "x" });
    expect(res.status).toBe(403);
    expect(res.body.error_code).toBe("forbidden");
  });

  it("takes a single-part plain tar from boto3, and a deployment built from its s3_key", async () => {
    const p = await prepare(t.admin, { name: `single-${kind}` });
    const [put] = await runBoto3(dir, spec(p, [{ op: "upload_file", file: small }]));
    expect(put, JSON.stringify(put)).toEqual({ ok: true });
    const bytes = readFileSync(small);
    expect(await targetState(t.control, p.s3_key)).toMatchObject({
      state: "STORED",
      sha256: sha256(bytes),
      size: bytes.length,
    });
    const created = await t.admin.post("/v1/models", {
      source: { kind: "model_archive", name: `single-${kind}`, s3_key: p.s3_key, deployment: { config: {} } },
    });
    expect(created.status, JSON.stringify(created.body)).toBe(200);
    expect(created.body.deployment).toMatchObject({ status: "DEPLOYING", status_message: null });
  });

  it("takes a multipart upload from boto3 with concurrent parts, and a new deployment built from it", async () => {
    const model = (await t.admin.createModel(`multi-${kind}`)).body.model.id as string;
    const p = await prepare(t.admin, { name: null, model_id: model });
    const [put] = await runBoto3(
      dir,
      spec(p, [
        {
          op: "upload_file",
          file: large,
          threshold: 5 * 1024 * 1024,
          chunksize: 5 * 1024 * 1024,
          concurrency: 4,
        },
      ]),
    );
    expect(put, JSON.stringify(put)).toEqual({ ok: true });
    const bytes = readFileSync(large);
    expect(await targetState(t.control, p.s3_key)).toMatchObject({
      state: "STORED",
      sha256: sha256(bytes),
      size: bytes.length,
    });
    const created = await t.admin.post(`/v1/models/${model}/deployments`, {
      source: { kind: "model_archive", s3_key: p.s3_key, deployment: { config: {} } },
    });
    expect(created.status, JSON.stringify(created.body)).toBe(200);
    expect(created.body.deployment.status).toBe("DEPLOYING");
    // The parts are gone once assembled.
    expect(await storage(t.control)).toMatchObject({ uploads: 0, parts: 0, chunks: 0, stagedFiles: 0 });
  });

  it("assembles parts sent out of order, a part sent twice as its last copy, and answers S3's ETags", async () => {
    const p = await prepare(t.admin);
    const bytes = readFileSync(large);
    const MiB = 1024 * 1024;
    const pieces = [bytes.subarray(0, 5 * MiB), bytes.subarray(5 * MiB, 10 * MiB), bytes.subarray(10 * MiB)];
    for (const [i, piece] of pieces.entries()) writeFileSync(join(dir, `piece-${i + 1}`), piece);
    writeFileSync(join(dir, "piece-wrong"), randomBytes(5 * MiB));
    const [created] = await runBoto3(
      dir,
      spec(p, [{ op: "create", params: { ChecksumAlgorithm: "CRC32" } }]),
    );
    const upload_id = created!.upload_id!;
    const parts = await runBoto3(
      dir,
      spec(p, [
        {
          op: "upload_part",
          upload_id,
          part: 3,
          file: join(dir, "piece-3"),
          params: { ChecksumAlgorithm: "CRC32" },
        },
        {
          op: "upload_part",
          upload_id,
          part: 1,
          file: join(dir, "piece-wrong"),
          params: { ChecksumAlgorithm: "CRC32" },
        },
        {
          op: "upload_part",
          upload_id,
          part: 2,
          file: join(dir, "piece-2"),
          params: { ChecksumAlgorithm: "CRC32" },
        },
        {
          op: "upload_part",
          upload_id,
          part: 1,
          file: join(dir, "piece-1"),
          params: { ChecksumAlgorithm: "CRC32" },
        },
      ]),
    );
    for (const part of parts) expect(part.ok, JSON.stringify(part)).toBe(true);
    const md5 = (b: Buffer) => createHash("md5").update(b).digest("hex");
    expect(parts.map((x) => x.etag)).toEqual([
      `"${md5(pieces[2]!)}"`,
      `"${md5(readFileSync(join(dir, "piece-wrong")))}"`,
      `"${md5(pieces[1]!)}"`,
      `"${md5(pieces[0]!)}"`,
    ]);
    const byNumber = { 1: parts[3]!, 2: parts[2]!, 3: parts[0]! };
    const [done] = await runBoto3(
      dir,
      spec(p, [
        {
          op: "complete",
          upload_id,
          parts: [1, 2, 3].map((n) => ({
            PartNumber: n,
            ETag: byNumber[n as 1 | 2 | 3].etag,
            ChecksumCRC32: byNumber[n as 1 | 2 | 3].crc32,
          })),
        },
      ]),
    );
    expect(done, JSON.stringify(done)).toMatchObject({ ok: true });
    const multipartEtag = createHash("md5")
      .update(Buffer.concat(pieces.map((x) => Buffer.from(md5(x), "hex"))))
      .digest("hex");
    expect(done!.etag).toBe(`"${multipartEtag}-3"`);
    expect(await targetState(t.control, p.s3_key)).toMatchObject({ state: "STORED", sha256: sha256(bytes) });
    expect(await storage(t.control)).toMatchObject({ uploads: 0, parts: 0, chunks: 0, stagedFiles: 0 });
  });

  describe("refuses every attacker's attempt with S3's XML, and stores nothing", () => {
    /** Runs one attempt and checks both the refusal and that storage and the target did not change. */
    async function attempt(
      p: Prepared,
      steps: Boto3Spec["steps"],
      expected: { code: string; status?: number },
      extra: Partial<Boto3Spec> = {},
    ) {
      const before = await storage(t.control);
      const state = await targetState(t.control, p.s3_key);
      const outcomes = await runBoto3(dir, spec(p, steps, extra));
      const last = outcomes[outcomes.length - 1]!;
      expect(last, JSON.stringify(outcomes)).toMatchObject({ ok: false, code: expected.code });
      if (expected.status !== undefined && last.status !== null) expect(last.status).toBe(expected.status);
      expect(await storage(t.control)).toEqual(before);
      expect(await targetState(t.control, p.s3_key)).toEqual(state);
      return outcomes;
    }

    it("wrong secret, forged or missing session token, unknown key, unsigned", async () => {
      const p = await prepare(t.admin);
      const put = [{ op: "put_object", file: small }];
      const creds = p.creds;
      const wrongSecret = { ...creds, aws_secret_access_key: `${creds.aws_secret_access_key.slice(0, -1)}A` };
      await attempt(p, put, { code: "SignatureDoesNotMatch", status: 403 }, { creds: wrongSecret });
      // Refused before its 11 MiB body is read; the answer still reaches the client whole.
      await attempt(
        p,
        [{ op: "put_object", file: large }],
        { code: "SignatureDoesNotMatch", status: 403 },
        {
          creds: wrongSecret,
        },
      );
      await attempt(
        p,
        put,
        { code: "InvalidToken", status: 403 },
        {
          creds: { ...creds, aws_session_token: `${creds.aws_session_token}x` },
        },
      );
      await attempt(
        p,
        put,
        { code: "InvalidAccessKeyId", status: 403 },
        {
          creds: { ...creds, aws_session_token: null },
        },
      );
      await attempt(
        p,
        put,
        { code: "InvalidAccessKeyId", status: 403 },
        {
          creds: { ...creds, aws_access_key_id: "MRDNAAAAAAAAAAAAAAAA" },
        },
      );
      await attempt(p, put, { code: "AccessDenied", status: 403 }, { unsigned: true });
      // Without any client at all: a bare PUT.
      const res = await request(`${p.s3_endpoint_url}/${p.s3_bucket}/${p.s3_key}`, {
        method: "PUT",
        body: readFileSync(small),
      });
      expect(res.statusCode).toBe(403);
      expect(res.headers["content-type"]).toMatch(/^application\/xml/);
      expect(await res.body.text()).toContain("<Code>AccessDenied</Code>");
      // The credentials were never used: they still work. Signed for another region, S3's answer names
      // the right one (AuthorizationHeaderMalformed with <Region>), and boto3 signs again for it.
      const [ok] = await runBoto3(dir, spec(p, put, { region_name: "eu-west-1" }));
      expect(ok, JSON.stringify(ok)).toMatchObject({ ok: true });
    });

    it("credentials for another key, another bucket, or another target", async () => {
      const p = await prepare(t.admin);
      const q = await prepare(t.admin);
      const put = (step: Record<string, unknown>) => [{ op: "put_object", file: small, ...step }];
      await attempt(p, put({ key: `${p.s3_key}.other` }), { code: "AccessDenied", status: 403 });
      await attempt(p, put({ key: q.s3_key }), { code: "AccessDenied", status: 403 });
      await attempt(p, put({ bucket: "another-bucket" }), { code: "AccessDenied", status: 403 });
      await attempt(p, put({ bucket: "v1", key: "models" }), { code: "AccessDenied", status: 403 });
      expect((await targetState(t.control, q.s3_key)).state).toBe("PENDING");
    });

    it("expired credentials", async () => {
      const p = await prepare(t.admin);
      await t.control.ctx.store.db
        .updateTable("s3_credentials")
        .set({ expires_at: new Date(Date.now() - 1000).toISOString() })
        .where("access_key_id", "=", p.creds.aws_access_key_id)
        .execute();
      await attempt(p, [{ op: "put_object", file: small }], { code: "ExpiredToken", status: 403 });
      await attempt(p, [{ op: "create" }], { code: "ExpiredToken", status: 403 });
    });

    it("reused credentials: a second PutObject, a second multipart upload, a second Complete", async () => {
      const p = await prepare(t.admin);
      const [first] = await runBoto3(dir, spec(p, [{ op: "put_object", file: small }]));
      expect(first!.ok).toBe(true);
      await attempt(p, [{ op: "put_object", file: small }], { code: "AccessDenied", status: 403 });
      await attempt(p, [{ op: "create" }], { code: "AccessDenied", status: 403 });
      await attempt(
        p,
        [{ op: "upload_file", file: large, threshold: 5 * 1024 * 1024, chunksize: 5 * 1024 * 1024 }],
        {
          code: "AccessDenied",
        },
      );

      const m = await prepare(t.admin);
      const [created] = await runBoto3(dir, spec(m, [{ op: "create" }]));
      const upload_id = created!.upload_id!;
      // One multipart upload at a time, and no PutObject beside it.
      await attempt(m, [{ op: "create" }], { code: "OperationAborted", status: 409 });
      await attempt(m, [{ op: "put_object", file: small }], { code: "OperationAborted", status: 409 });
      const [part] = await runBoto3(dir, spec(m, [{ op: "upload_part", upload_id, part: 1, file: small }]));
      const [done] = await runBoto3(
        dir,
        spec(m, [{ op: "complete", upload_id, parts: [{ PartNumber: 1, ETag: part!.etag }] }]),
      );
      expect(done, JSON.stringify(done)).toMatchObject({ ok: true });
      await attempt(m, [{ op: "complete", upload_id, parts: [{ PartNumber: 1, ETag: part!.etag }] }], {
        code: "NoSuchUpload",
        status: 404,
      });
      await attempt(m, [{ op: "upload_part", upload_id, part: 2, file: small }], {
        code: "NoSuchUpload",
        status: 404,
      });
      await attempt(m, [{ op: "create" }], { code: "AccessDenied", status: 403 });
    });

    it("a tampered body, a wrong checksum, a wrong Content-MD5", async () => {
      const p = await prepare(t.admin);
      const bytes = readFileSync(small);
      await attempt(
        p,
        [{ op: "put_object", file: small }],
        { code: "XAmzContentSHA256Mismatch", status: 400 },
        {
          tamper: true,
        },
      );
      const otherCrc = "AAAAAA==";
      await attempt(p, [{ op: "put_object", file: small, params: { ChecksumCRC32: otherCrc } }], {
        code: "BadDigest",
        status: 400,
      });
      const wrongMd5 = createHash("md5").update(bytes.subarray(1)).digest("base64");
      await attempt(p, [{ op: "put_object", file: small, params: { ContentMD5: wrongMd5 } }], {
        code: "BadDigest",
        status: 400,
      });
      // The same body with its true checksums is taken.
      const md5 = createHash("md5").update(bytes).digest("base64");
      const [ok] = await runBoto3(
        dir,
        spec(p, [{ op: "put_object", file: small, params: { ContentMD5: md5 } }]),
      );
      expect(ok, JSON.stringify(ok)).toMatchObject({ ok: true });
    });

    it("multipart: tampered and mismatched parts, bad part lists, unknown uploads; abort frees the target", async () => {
      const p = await prepare(t.admin);
      const [created] = await runBoto3(
        dir,
        spec(p, [{ op: "create", params: { ChecksumAlgorithm: "CRC32" } }]),
      );
      const upload_id = created!.upload_id!;
      const part = (n: number, extra: Record<string, unknown> = {}) => ({
        op: "upload_part",
        upload_id,
        part: n,
        file: small,
        params: { ChecksumAlgorithm: "CRC32" },
        ...extra,
      });
      await attempt(p, [part(1)], { code: "XAmzContentSHA256Mismatch", status: 400 }, { tamper: true });
      await attempt(p, [part(1, { params: { ChecksumCRC32: "AAAAAA==" } })], {
        code: "BadDigest",
        status: 400,
      });
      // The upload was created for CRC32: a part checked with another algorithm does not fit it.
      await attempt(p, [part(1, { params: { ChecksumAlgorithm: "SHA256" } })], {
        code: "InvalidRequest",
        status: 400,
      });
      await attempt(p, [part(10_001)], { code: "InvalidArgument", status: 400 });
      await attempt(p, [{ ...part(1), upload_id: "nosuchupload" }], { code: "NoSuchUpload", status: 404 });

      const uploaded = await runBoto3(dir, spec(p, [part(1), part(2)]));
      const [one, two] = uploaded;
      const list = (entries: Array<[number, string]>) =>
        entries.map(([PartNumber, ETag]) => ({ PartNumber, ETag }));
      await attempt(
        p,
        [{ op: "complete", upload_id, parts: list([[1, '"0123456789abcdef0123456789abcdef"']]) }],
        {
          code: "InvalidPart",
          status: 400,
        },
      );
      await attempt(p, [{ op: "complete", upload_id, parts: list([[3, one!.etag!]]) }], {
        code: "InvalidPart",
        status: 400,
      });
      await attempt(
        p,
        [
          {
            op: "complete",
            upload_id,
            parts: [{ PartNumber: 1, ETag: one!.etag, ChecksumCRC32: "AAAAAA==" }],
          },
        ],
        {
          code: "InvalidPart",
          status: 400,
        },
      );
      await attempt(
        p,
        [
          {
            op: "complete",
            upload_id,
            parts: list([
              [2, two!.etag!],
              [1, one!.etag!],
            ]),
          },
        ],
        { code: "InvalidPartOrder", status: 400 },
      );
      // Parts under 5 MiB may only be the last.
      await attempt(
        p,
        [
          {
            op: "complete",
            upload_id,
            parts: list([
              [1, one!.etag!],
              [2, two!.etag!],
            ]),
          },
        ],
        { code: "EntityTooSmall", status: 400 },
      );
      const [aborted] = await runBoto3(dir, spec(p, [{ op: "abort", upload_id }]));
      expect(aborted, JSON.stringify(aborted)).toEqual({ ok: true });
      expect(await storage(t.control)).toMatchObject({ uploads: 0, parts: 0, chunks: 0, stagedFiles: 0 });
      expect((await targetState(t.control, p.s3_key)).state).toBe("PENDING");
      // Unused, the credentials still upload once.
      const [ok] = await runBoto3(dir, spec(p, [{ op: "upload_file", file: small }]));
      expect(ok, JSON.stringify(ok)).toEqual({ ok: true });
    });

    it("leaves non-S3 requests to the management API's own answers", async () => {
      const res = await t.admin.call("POST", "/v1/nothing/here", { a: 1 });
      expect(res.status).toBe(404);
      expect(res.body.error_code).toBe("route_not_found");
    });
  });

  it("cleans up expired multipart uploads and staged leftovers when it starts again", async () => {
    const db = await createTestDatabase(kind);
    const start = () =>
      startControl({
        dataDir: join(db.dir, "control"),
        host: "127.0.0.1",
        port: 0,
        databaseUrl: db.url,
        domain: "meridian.test",
        publicUrl: null,
        logger: pino({ level: "silent" }),
      });
    let control = await start();
    try {
      const admin = new ApiClient(control.url, control.adminKey);
      const p = await prepare(admin);
      const [created] = await runBoto3(dir, spec(p, [{ op: "create" }]));
      const upload_id = created!.upload_id!;
      const [part] = await runBoto3(dir, spec(p, [{ op: "upload_part", upload_id, part: 1, file: small }]));
      expect(part!.ok).toBe(true);
      expect(await storage(control)).toMatchObject({ uploads: 1, parts: 1 });
      await control.stop();
      // Time passes past the credentials' expiry while the control plane is down; a killed process
      // also left a staged part that no upload owns.
      const { Store } = await import("../../src/store/store.ts");
      const store = await Store.open(
        db.url === null
          ? { kind: "sqlite", file: join(db.dir, "control", "meridian.db") }
          : { kind: "postgres", url: db.url },
      );
      await store.db
        .updateTable("s3_multipart_uploads")
        .set({ expires_at: new Date(Date.now() - 1000).toISOString() })
        .execute();
      if (db.url === null) {
        mkdirSync(join(db.dir, "control", "artifacts", "s3-parts", "ghost"), { recursive: true });
        writeFileSync(join(db.dir, "control", "artifacts", "s3-parts", "ghost", "1-x"), "debris");
      } else {
        await store.db
          .insertInto("s3_part_chunks")
          .values({
            ref: "ghost/1-x",
            seq: 0,
            upload_id: "ghost",
            data: Buffer.from("debris"),
            created_at: "x",
          })
          .execute();
      }
      await store.close();
      control = await start();
      expect(await storage(control)).toMatchObject({ uploads: 0, parts: 0, chunks: 0, stagedFiles: 0 });
      expect((await targetState(control, p.s3_key)).state).toBe("PENDING");
    } finally {
      await control.stop();
      await db.drop();
    }
  });
});

describe("boto3 over HTTPS (a TLS-terminating proxy in front of the control plane)", () => {
  let t: TestControl;
  let dir: string;
  let proxy: Server;
  let endpoint: string;
  let caFile: string;

  beforeAll(async () => {
    t = await startTestControl("sqlite");
    dir = tempDir();
    const local = await ensureLocalCa(join(dir, "tls"), "meridian.test");
    const own = await ensurePlaneCertificate(local.ca, join(dir, "tls"), "proxy", ["127.0.0.1"]);
    const tls = { cert: readFileSync(own.certFile), key: readFileSync(own.keyFile) };
    caFile = local.caFile;
    const port = Number(new URL(t.control.url).port);
    // Bytes through unchanged, Host included, as a TCP-level TLS terminator passes them.
    proxy = createTlsServer({ cert: tls.cert, key: tls.key }, (client) => {
      const upstream = connect(port, "127.0.0.1");
      client.pipe(upstream).pipe(client);
      client.on("error", () => upstream.destroy());
      upstream.on("error", () => client.destroy());
    });
    await new Promise<void>((r) => proxy.listen(0, "127.0.0.1", r));
    endpoint = `https://127.0.0.1:${(proxy.address() as { port: number }).port}`;
  });
  afterAll(async () => {
    proxy?.close();
    await t?.stop();
  });

  it("takes aws-chunked bodies with trailing checksums, single-part and multipart", async () => {
    const small = await plainTarPackage(dir, "small");
    const large = await plainTarPackage(dir, "large", 11 * 1024 * 1024);
    for (const [file, threshold] of [
      [small, 8 * 1024 * 1024],
      [large, 5 * 1024 * 1024],
    ] as const) {
      const p = await prepare(t.admin);
      const [put] = await runBoto3(
        dir,
        spec(p, [{ op: "upload_file", file, threshold, chunksize: 5 * 1024 * 1024 }], {
          endpoint_url: endpoint,
          ca_file: caFile,
        }),
      );
      expect(put, JSON.stringify(put)).toEqual({ ok: true });
      expect(await targetState(t.control, p.s3_key)).toMatchObject({
        state: "STORED",
        sha256: sha256(readFileSync(file)),
      });
    }
    // A body changed on the way is caught by the trailing checksum.
    const p = await prepare(t.admin);
    const before = await storage(t.control);
    const [tampered] = await runBoto3(
      dir,
      spec(p, [{ op: "put_object", file: small }], { endpoint_url: endpoint, ca_file: caFile, tamper: true }),
    );
    // Only the trailing CRC32 covers the bytes in this form, so BadDigest shows it was the trailer checked.
    expect(tampered, JSON.stringify(tampered)).toMatchObject({ ok: false, code: "BadDigest", status: 400 });
    expect(await storage(t.control)).toEqual(before);
    expect((await targetState(t.control, p.s3_key)).state).toBe("PENDING");
  });
});

describe("the upload limit", () => {
  it("refuses an object, or parts that together exceed it, and keeps none of it", async () => {
    const t = await startTestControl("sqlite");
    const dir = tempDir();
    const MiB = 1024 * 1024;
    // A second app on the same control plane's state, with a 7 MiB limit.
    const app = await buildControlApp(t.control.ctx, { uploadLimit: 7 * MiB });
    await app.listen({ host: "127.0.0.1", port: 0 });
    const endpoint = `http://127.0.0.1:${(app.server.address() as { port: number }).port}`;
    try {
      const large = await plainTarPackage(dir, "large", 11 * MiB);
      const before = await storage(t.control);
      const p = await prepare(t.admin);
      const [put] = await runBoto3(
        dir,
        spec(p, [{ op: "put_object", file: large }], { endpoint_url: endpoint }),
      );
      expect(put, JSON.stringify(put)).toMatchObject({ ok: false, code: "EntityTooLarge", status: 400 });
      writeFileSync(join(dir, "five"), randomBytes(5 * MiB));
      const [created] = await runBoto3(dir, spec(p, [{ op: "create" }], { endpoint_url: endpoint }));
      const upload_id = created!.upload_id!;
      const parts = await runBoto3(
        dir,
        spec(
          p,
          [
            { op: "upload_part", upload_id, part: 1, file: join(dir, "five") },
            { op: "upload_part", upload_id, part: 2, file: join(dir, "five") },
            // Sent again, part 1 replaces itself and does not count twice.
            { op: "upload_part", upload_id, part: 1, file: join(dir, "five") },
          ],
          { endpoint_url: endpoint },
        ),
      );
      expect(parts.map((x) => x.ok && "ok")).toEqual(["ok", false, "ok"]);
      expect(parts[1]).toMatchObject({ code: "EntityTooLarge", status: 400 });
      expect(await storage(t.control)).toMatchObject({ uploads: 1, parts: 1, blobs: before.blobs });
      expect((await storage(t.control)).stagedFiles).toBe(1);
    } finally {
      await app.close();
      await t.stop();
    }
  });
});

describe("two control replicas on one PostgreSQL", () => {
  it("take the parts of one multipart upload between them, and either assembles it", async () => {
    const db = await createTestDatabase("postgres");
    const dir = tempDir();
    const start = (name: string) =>
      startControl({
        dataDir: join(db.dir, name),
        host: "127.0.0.1",
        port: 0,
        databaseUrl: db.url,
        domain: "meridian.test",
        publicUrl: null,
        // Every replica is given the same secrets key file (docs/operator-guide.md): a's, made on its start.
        ...(name === "a" ? {} : { secretsKeyFile: join(db.dir, "a", "secrets.key") }),
        logger: pino({ level: "silent" }),
      });
    const a = await start("a");
    const b = await start("b");
    try {
      const key = readFileSync(join(db.dir, "a", "admin.key"), "utf8").trim();
      const viaA = new ApiClient(a.url, key);
      const p = await prepare(viaA);
      const large = await plainTarPackage(dir, "large", 11 * 1024 * 1024);
      const bytes = readFileSync(large);
      const MiB = 1024 * 1024;
      const pieces = [
        bytes.subarray(0, 5 * MiB),
        bytes.subarray(5 * MiB, 10 * MiB),
        bytes.subarray(10 * MiB),
      ];
      for (const [i, piece] of pieces.entries()) writeFileSync(join(dir, `piece-${i + 1}`), piece);
      const [created] = await runBoto3(dir, spec(p, [{ op: "create" }], { endpoint_url: a.url }));
      const upload_id = created!.upload_id!;
      const [one, three, two] = await Promise.all([
        runBoto3(
          dir,
          spec(p, [{ op: "upload_part", upload_id, part: 1, file: join(dir, "piece-1") }], {
            endpoint_url: a.url,
          }),
        ),
        runBoto3(
          dir,
          spec(p, [{ op: "upload_part", upload_id, part: 3, file: join(dir, "piece-3") }], {
            endpoint_url: b.url,
          }),
        ),
        runBoto3(
          dir,
          spec(p, [{ op: "upload_part", upload_id, part: 2, file: join(dir, "piece-2") }], {
            endpoint_url: b.url,
          }),
        ),
      ]);
      const parts = [one![0]!, two![0]!, three![0]!].map((x, i) => ({ PartNumber: i + 1, ETag: x.etag }));
      const [done] = await runBoto3(
        dir,
        spec(p, [{ op: "complete", upload_id, parts }], { endpoint_url: b.url }),
      );
      expect(done, JSON.stringify(done)).toMatchObject({ ok: true });
      expect(await targetState(a, p.s3_key)).toMatchObject({ state: "STORED", sha256: sha256(bytes) });
      const viaB = new ApiClient(b.url, key);
      const created2 = await viaB.post("/v1/models", {
        source: {
          kind: "model_archive",
          name: "shared-multipart",
          s3_key: p.s3_key,
          deployment: { config: {} },
        },
      });
      expect(created2.status, JSON.stringify(created2.body)).toBe(200);
      expect(created2.body.deployment.status).toBe("DEPLOYING");
    } finally {
      await a.stop();
      await b.stop();
      await db.drop();
    }
  });
});
