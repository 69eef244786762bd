// Region-bound API keys through the management API on both stores: creating one (validated: regions that
// exist, never an empty list, only on keys that may call inference), its metadata, the audit entry, the
// grant every plane's snapshot carries, and that the management API itself is not region-bound. What
// the ingress does with the grant is tested in src/core/routing.test.ts and src/gateway/ingress.test.ts.

import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type ApiClient, startTestControl, type TestControl } from "../support/control.ts";
import { STORE_KINDS } from "../support/databases.ts";
import { expectError, expectReferenceShape } from "../support/reference.ts";

interface KeyInfo {
  prefix: string;
  type: string;
  regions: string[] | null;
}

describe.each(STORE_KINDS)("region-bound API keys on %s", (kind) => {
  let t: TestControl;
  let admin: ApiClient;
  let planeToken: string;

  beforeAll(async () => {
    t = await startTestControl(kind);
    admin = t.admin;
    const plane = await admin.post("/v1/admin/planes", {
      name: "us-1",
      region: "us",
      ingress: ["127.0.1.1:8443"],
      capacity: 4,
      global_ingress: true,
    });
    expect(plane.status, JSON.stringify(plane.body)).toBe(200);
    planeToken = plane.body.credential;
  });
  afterAll(async () => t?.stop());

  const keys = async (): Promise<KeyInfo[]> => {
    const list = await admin.get("/v1/api_keys");
    expect(list.status).toBe(200);
    expectReferenceShape("APIKeysV1", list.body);
    return list.body.keys;
  };
  const prefixOf = (key: string) => key.split(".")[0]!;

  async function grants(): Promise<Array<{ prefix: string; regions?: string[] | null }>> {
    const res = await admin.as(null).call("GET", "/v1/internal/planes/us-1/snapshot?wait=0", undefined, {
      authorization: `Bearer ${planeToken}`,
    });
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    return res.body.api_keys;
  }

  it("creates a key bound to regions, shows them in its metadata, audits them, and tells every plane", async () => {
    const created = await admin.post("/v1/api_keys", {
      type: "WORKSPACE_INVOKE",
      name: "eu-only",
      regions: ["eu", "uk", "eu"],
    });
    expect(created.status, JSON.stringify(created.body)).toBe(200);
    expectReferenceShape("APIKeyV1", created.body);
    const prefix = prefixOf(created.body.api_key);
    const plain = await admin.post("/v1/api_keys", { type: "WORKSPACE_INVOKE", name: "anywhere" });
    const everywhere = await admin.post("/v1/api_keys", { type: "PERSONAL", regions: null });
    expect(everywhere.status, JSON.stringify(everywhere.body)).toBe(200);

    const listed = await keys();
    expect(listed.find((k) => k.prefix === prefix)).toMatchObject({
      type: "WORKSPACE_INVOKE",
      regions: ["eu", "uk"],
    });
    expect(listed.find((k) => k.prefix === prefixOf(plain.body.api_key))?.regions).toBeNull();
    expect(listed.find((k) => k.prefix === prefixOf(everywhere.body.api_key))?.regions).toBeNull();

    const audit = (await admin.get("/v1/audit_logs?limit=10")).body.items as Array<{
      action: string;
      target: string;
      after: any;
    }>;
    expect(audit.find((e) => e.target === `api_key:${prefix}`)).toMatchObject({
      action: "api_key.create",
      after: { regions: ["eu", "uk"] },
    });

    // The plane (in us) gets the grant with its regions and refuses the key itself; null is everywhere.
    const snapshot = await grants();
    expect(snapshot.find((g) => g.prefix === prefix)?.regions).toEqual(["eu", "uk"]);
    expect(snapshot.find((g) => g.prefix === prefixOf(plain.body.api_key))?.regions).toBeNull();
    expect(snapshot.find((g) => g.prefix === prefixOf(admin.key!))?.regions).toBeNull();
  });

  it("binds personal and manage-all keys too, and their management API use is not region-bound", async () => {
    for (const type of ["PERSONAL", "WORKSPACE_MANAGE_ALL"]) {
      const created = await admin.post("/v1/api_keys", { type, regions: ["au"] });
      expect(created.status, JSON.stringify(created.body)).toBe(200);
      const bound = admin.as(created.body.api_key);
      // The control plane is in no region a key could be bound to: reads and changes work as before.
      expect((await bound.get("/v1/models")).status).toBe(200);
      const made = await bound.createModel(`bound-${type.toLowerCase()}`);
      expect(made.status, JSON.stringify(made.body)).toBe(200);
    }
  });

  it.each([
    [
      "an empty list",
      { type: "WORKSPACE_INVOKE", regions: [] },
      400,
      "invalid_request",
      { field: "regions" },
    ],
    [
      "a region that does not exist",
      { type: "WORKSPACE_INVOKE", regions: ["eu", "mars", "atlantis"] },
      404,
      "region_not_found",
      { field: "regions", regions: ["mars", "atlantis"] },
    ],
    [
      "regions on a key that cannot call inference",
      { type: "WORKSPACE_EXPORT_METRICS", regions: ["eu"] },
      400,
      "invalid_request",
      { field: "regions" },
    ],
    [
      "regions on a key-management key",
      { type: "WORKSPACE_MANAGE_API_KEYS", regions: ["eu"] },
      400,
      "invalid_request",
      { field: "regions" },
    ],
    [
      "a region that is not a string",
      { type: "WORKSPACE_INVOKE", regions: [7] },
      400,
      "invalid_request",
      null,
    ],
    [
      "regions that are not a list",
      { type: "WORKSPACE_INVOKE", regions: "eu" },
      400,
      "invalid_request",
      null,
    ],
  ])("refuses %s, creating nothing", async (_name, body, status, code, detail) => {
    const before = (await keys()).length;
    const res = await admin.post("/v1/api_keys", body);
    expectError(res, status, code);
    if (detail !== null) expect(res.body.detail).toMatchObject(detail);
    expect((await keys()).length).toBe(before);
  });
});
