// Upload targets: used once, claimed atomically, and partial uploads cleaned at start.

import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { packExample, startTestControl, type TestControl } from "../support/control.ts";

describe("model package uploads", () => {
  let t: TestControl;

  beforeAll(async () => {
    t = await startTestControl("sqlite");
  });
  afterAll(async () => t?.stop());

  it("stores exactly one of two uploads racing to the same target", async () => {
    const archive = await packExample("hello-js");
    const { s3_key } = (await t.admin.post("/v1/prepare_model_upload", {})).body;
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
