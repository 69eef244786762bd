// The projection "which plane sees what" as a table: one installation's rows, and for each plane the
// models, desired replicas (with the environment each is told), keys and ready planes it is given.
import { describe, expect, it } from "vitest";
import { type PlaneRowData, projectPlaneSnapshot, type SnapshotRows } from "./plane-snapshot.ts";
import { checkPlaneSnapshot } from "./snapshot-check.ts";

const NOW = Date.parse("2025-01-01T12:00:00.000Z");
const ago = (s: number) => new Date(NOW - s * 1000).toISOString();
const SHA = "a".repeat(64);
const pk = (c: string) => `${c.repeat(42)}A`; // a well-formed raw public key
const plane = (name: string, region: string, global = false): PlaneRowData => ({
  name,
  region,
  ingress: JSON.stringify([`${name}.planes.test:8443`]),
  global_ingress: global ? 1 : 0,
  credential_hash: `cred-${name}`,
});
const PLANES = [plane("eu-1", "eu"), plane("eu-2", "eu"), plane("uk-1", "uk"), plane("us-1", "us", true)];
const replica = (id: string, deployment_id: string, on: string, state = "READY") => ({
  id,
  deployment_id,
  plane: on,
  state,
});
const deployment = (id: string, model_id: string, region: string | null, extra = {}) => ({
  id,
  model_id,
  region,
  is_development: 0,
  artifact_key: "art-1",
  ...extra,
});

const ROWS: SnapshotRows = {
  revision: 42,
  domain: "meridian.test",
  planes: PLANES,
  plane_keys: [
    {
      plane: "us-1",
      key_id: "0000000000000001",
      public_key: pk("B"),
      credential_hash: "cred-us-1",
      first_seen_at: ago(900),
      retired_at: null,
    },
    {
      plane: "eu-1",
      key_id: "0000000000000002",
      public_key: pk("C"),
      credential_hash: "cred-eu-1",
      first_seen_at: ago(60),
      retired_at: null,
    },
    // Retired 10 s ago: still carried for the hop window. Retired 31 s ago: no longer.
    {
      plane: "eu-1",
      key_id: "0000000000000003",
      public_key: pk("D"),
      credential_hash: "cred-eu-1",
      first_seen_at: ago(600),
      retired_at: ago(10),
    },
    {
      plane: "eu-1",
      key_id: "0000000000000004",
      public_key: pk("E"),
      credential_hash: "cred-eu-1",
      first_seen_at: ago(900),
      retired_at: ago(31),
    },
    // Reported over a credential that was rotated since: not trusted.
    {
      plane: "eu-2",
      key_id: "0000000000000005",
      public_key: pk("F"),
      credential_hash: "cred-eu-2-old",
      first_seen_at: ago(900),
      retired_at: null,
    },
    // A plane that no longer exists.
    {
      plane: "gone-1",
      key_id: "0000000000000006",
      public_key: pk("G"),
      credential_hash: "cred-gone-1",
      first_seen_at: ago(900),
      retired_at: null,
    },
  ],
  control_key: { key_id: "00000000000000cc", public_key: pk("H") },
  api_keys: [
    { hash: "b".repeat(64), prefix: "key1", team_id: "t1", category: "PERSONAL", model_ids: null },
    {
      hash: "c".repeat(64),
      prefix: "key2",
      team_id: "t2",
      category: "WORKSPACE_INVOKE",
      model_ids: '["ccccccc3"]',
    },
  ],
  models: [
    { id: "aaaaaaa1", team_id: "t1", name: "eu-model" },
    { id: "bbbbbbb2", team_id: "t1", name: "us-only" },
    { id: "ccccccc3", team_id: "t2", name: "uk-model" },
    { id: "ddddddd4", team_id: "t1", name: "unrestricted-in-eu" },
    { id: "eeeeeee5", team_id: "t2", name: "other-team-prod-eu" },
  ],
  environments: [
    { model_id: "aaaaaaa1", name: "production", current_deployment_id: "d1p" },
    { model_id: "aaaaaaa1", name: "prod-eu", current_deployment_id: "d1e" },
    { model_id: "bbbbbbb2", name: "production", current_deployment_id: "d2p" },
    { model_id: "ccccccc3", name: "prod-uk", current_deployment_id: "d3u" },
    { model_id: "ddddddd4", name: "staging", current_deployment_id: "d4s" },
    // A deployment deleted between two reads: the environment serves nothing in the snapshot.
    { model_id: "eeeeeee5", name: "prod-eu", current_deployment_id: "d-vanished" },
  ],
  groups: [
    { team_id: "t1", name: "prod-eu", region: "eu", standard_endpoint_policy: "warn" },
    { team_id: "t2", name: "prod-uk", region: "uk", standard_endpoint_policy: "deny" },
    // t2's prod-eu is not restricted: a restriction belongs to one team's group.
    { team_id: "t2", name: "prod-eu", region: null, standard_endpoint_policy: "allow" },
  ],
  deployments: [
    deployment("d1p", "aaaaaaa1", null),
    deployment("d1e", "aaaaaaa1", "eu", { egress: "deny" }),
    deployment("d1c", "aaaaaaa1", "eu"),
    deployment("d2p", "bbbbbbb2", null),
    { ...deployment("d2dev", "bbbbbbb2", null), is_development: 1 },
    deployment("d3u", "ccccccc3", "uk"),
    deployment("d4s", "ddddddd4", null),
    deployment("d4x", "ddddddd4", null, { artifact_key: "art-not-stored" }),
    deployment("d6", "fffffff6", "eu"), // its model was deleted between two reads
  ],
  replicas: [
    replica("r1p", "d1p", "us-1"),
    replica("r1e", "d1e", "eu-1"),
    replica("r1e2", "d1e", "eu-2", "STARTING"),
    replica("r1c", "d1c", "eu-2", "PENDING"),
    replica("r2p", "d2p", "us-1"),
    replica("r3u", "d3u", "uk-1"),
    replica("r4s", "d4s", "eu-1"),
    replica("r4x", "d4x", "eu-1"),
    replica("r6", "d6", "eu-1"),
  ],
  artifacts: [{ key: "art-1", sha256: SHA, size: "1234" }],
  promotions: [{ candidate_deployment_id: "d1c", environment: "prod-eu" }],
};

const snapshotOf = (name: string) => projectPlaneSnapshot(ROWS, PLANES.find((p) => p.name === name)!, NOW);

describe("plane snapshot projection", () => {
  it.each([
    // A global ingress sees every model.
    ["us-1", ["aaaaaaa1", "bbbbbbb2", "ccccccc3", "ddddddd4", "eeeeeee5"]],
    // A regional plane: models restricted to its region (by the model's own team's group) or with a replica
    // there; nothing of other regions' restricted models, nor of another team's unrestricted prod-eu.
    ["eu-1", ["aaaaaaa1", "ddddddd4"]],
    ["eu-2", ["aaaaaaa1", "ddddddd4"]],
    ["uk-1", ["ccccccc3"]],
  ])("%s sees models %j", (name, models) => {
    expect(snapshotOf(name).models.map((m) => m.id)).toEqual(models);
  });

  it.each([
    [
      "us-1",
      [
        ["r1p", "d1p", "production", "allow"],
        ["r2p", "d2p", "production", "allow"],
      ],
    ],
    // r4x: its package is not stored; r6: its model is gone.
    [
      "eu-1",
      [
        ["r1e", "d1e", "prod-eu", "deny"],
        ["r4s", "d4s", "staging", "allow"],
      ],
    ],
    // The candidate is told the environment it is a candidate for.
    [
      "eu-2",
      [
        ["r1e2", "d1e", "prod-eu", "deny"],
        ["r1c", "d1c", "prod-eu", "allow"],
      ],
    ],
    ["uk-1", [["r3u", "d3u", "prod-uk", "allow"]]],
  ])("%s is told to run %j (replica, deployment, environment, egress)", (name, want) => {
    const got = snapshotOf(name).replicas.map((r) => [r.id, r.deployment_id, r.environment, r.egress]);
    expect(got).toEqual(want);
    for (const r of snapshotOf(name).replicas) {
      expect(r.artifact).toEqual({ key: SHA, sha256: SHA, size: 1234 });
    }
  });

  it.each([
    // Every other plane's keys over its current credential: current, and retired within the window.
    [
      "us-1",
      [
        ["eu-1", "0000000000000002", null],
        ["eu-1", "0000000000000003", ago(10)],
      ],
    ],
    ["eu-1", [["us-1", "0000000000000001", null]]],
    [
      "eu-2",
      [
        ["eu-1", "0000000000000002", null],
        ["eu-1", "0000000000000003", ago(10)],
        ["us-1", "0000000000000001", null],
      ],
    ],
  ])("%s verifies hops with %j", (name, want) => {
    const s = snapshotOf(name);
    expect(s.plane_keys.map((k) => [k.plane, k.key_id, k.retired_at])).toEqual(want);
    expect(s.control_key).toEqual(ROWS.control_key);
  });

  it("gives each deployment its ready planes and each environment what it serves", () => {
    const eu = snapshotOf("eu-1");
    const m1 = eu.models.find((m) => m.id === "aaaaaaa1")!;
    expect(m1.deployments).toEqual([
      { id: "d1p", region: null, ready_planes: ["us-1"] },
      { id: "d1e", region: "eu", ready_planes: ["eu-1"] },
      { id: "d1c", region: "eu", ready_planes: [] },
    ]);
    expect(m1.environments).toEqual([
      { name: "production", deployment_id: "d1p", region: null, standard_endpoint_policy: "allow" },
      { name: "prod-eu", deployment_id: "d1e", region: "eu", standard_endpoint_policy: "warn" },
    ]);
    const us = snapshotOf("us-1");
    expect(us.models.find((m) => m.id === "bbbbbbb2")!.development_deployment_id).toBe("d2dev");
    const uk = us.models.find((m) => m.id === "ccccccc3")!;
    expect(uk.environments[0]).toMatchObject({ region: "uk", standard_endpoint_policy: "deny" });
    const dangling = us.models.find((m) => m.id === "eeeeeee5")!;
    expect(dangling.environments).toEqual([
      { name: "prod-eu", deployment_id: null, region: null, standard_endpoint_policy: "allow" },
    ]);
  });

  it("names the plane, lists every plane, and hands every plane every API-key hash", () => {
    const s = snapshotOf("uk-1");
    expect(s).toMatchObject({ revision: 42, domain: "meridian.test" });
    expect(s.plane).toEqual({
      name: "uk-1",
      region: "uk",
      ingress: ["uk-1.planes.test:8443"],
      global_ingress: false,
    });
    expect(s.planes.map((p) => p.name)).toEqual(["eu-1", "eu-2", "uk-1", "us-1"]);
    expect(s.api_keys.map((k) => [k.team_id, k.model_ids])).toEqual([
      ["t1", null],
      ["t2", ["ccccccc3"]],
    ]);
  });

  it("carries no credential, secret or private key", () => {
    for (const p of PLANES) {
      const text = JSON.stringify(snapshotOf(p.name));
      expect(text).not.toContain("cred-");
      expect(text).not.toMatch(/secret|private|"d":/i);
    }
  });

  it("produces snapshots that every plane's check accepts", () => {
    for (const p of PLANES) {
      const check = checkPlaneSnapshot(JSON.parse(JSON.stringify(snapshotOf(p.name))), {
        plane: p.name,
        region: p.region,
      });
      expect(check.ok ? "ok" : `${check.field}: ${check.message}`).toBe("ok");
    }
  });
});
