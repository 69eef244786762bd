// Upload targets: used once, claimed atomically, and partial uploads cleaned at start.

import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startControl } from "../../src/control/main.ts";
import {
  ApiClient,
  NEW_MODEL_PUSH,
  packExample,
  startTestControl,
  type TestControl,
} from "../support/control.ts";
import { createTestDatabase } from "../support/databases.ts";

describe("model package uploads", () => {
  let t: TestControl;

  beforeAll(async () => {
    t = await startTestControl("sqlite");
  });
  afterAll(async () => t?.stop());

  it("stores exactly one of two uploads racing to the same target", async () => {
    const archive = await packExample("hello-js");
    const { s3_key } = (await t.admin.post("/v1/prepare_model_upload", NEW_MODEL_PUSH)).body;
    const put = () =>
      t.admin.call("PUT", `/v1/artifacts/${s3_key}`, archive, { "content-type": "application/gzip" });
    const results = await Promise.all([put(), put(), put()]);
    expect(results.map((r) => r.status).sort()).toEqual([200, 409, 409]);
    expect((await put()).body.error_code).toBe("conflict");
  });

  it("removes partial uploads of a killed process when it starts again", async () => {
    const tmp = join(t.db.dir, "control", "artifacts", "tmp");
    mkdirSync(tmp, { recursive: true });
    writeFileSync(join(tmp, "leftover.part"), "half an archive");
    await t.control.ctx.artifacts.start();
    expect(existsSync(join(tmp, "leftover.part"))).toBe(false);
  });

  it("grants manage access only to members of the team, without saying whether an id exists", async () => {
    const res = await t.admin.patch("/v1/environment_groups/locked", {
      manage_access: { is_restricted: true, user_ids: ["nosuchid"] },
    });
    expect(res.status).toBe(404);
    expect(res.body.error_code).toBe("user_not_found");
  });
});

describe("several control replicas on one PostgreSQL", () => {
  it("share model packages: uploaded through one, built and served to planes by the other", async () => {
    const db = await createTestDatabase("postgres");
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
      const viaB = new ApiClient(b.url, key);
      const s3Key = await viaA.upload(await packExample("hello-js"));
      const created = await viaB.post("/v1/models", {
        source: { kind: "model_archive", name: "shared", s3_key: s3Key, deployment: { config: {} } },
      });
      expect(created.status, JSON.stringify(created.body)).toBe(200);
      expect(created.body.deployment.status).toBe("DEPLOYING");
    } finally {
      await a.stop();
      await b.stop();
      await db.drop();
    }
  });
});
