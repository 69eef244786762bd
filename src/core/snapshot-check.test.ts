// The plane's check of the snapshots it receives: a table of broken snapshots, each refused naming the
// field, and fuzzing (any JSON, and valid snapshots with any part replaced): a decision, never a throw.
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { decideRoute, indexSnapshot } from "./routing.ts";
import type { PlaneSnapshot } from "./snapshot.ts";
import { checkPlaneSnapshot } from "./snapshot-check.ts";

const SHA = "a".repeat(64);
const KEY = `${"B".repeat(42)}A`;
const OWNER = { plane: "eu-1", region: "eu" };

function valid(): PlaneSnapshot {
  return {
    revision: 9,
    domain: "meridian.test",
    plane: { name: "eu-1", region: "eu", ingress: ["127.0.2.1:8443"], global_ingress: false },
    planes: [
      { name: "eu-1", region: "eu", ingress: ["127.0.2.1:8443"], global_ingress: false },
      { name: "us-1", region: "us", ingress: ["[::1]:8443", "us-1.internal:8443"], global_ingress: true },
    ],
    plane_keys: [
      { plane: "us-1", key_id: "0123456789abcdef", public_key: KEY, retired_at: null },
      { plane: "us-1", key_id: "fedcba9876543210", public_key: KEY, retired_at: "2025-01-01T00:00:00.000Z" },
    ],
    control_key: { key_id: "00000000000000cc", public_key: KEY },
    api_keys: [
      { hash: SHA, prefix: "abcd1234", team_id: "team0001", category: "PERSONAL", model_ids: null },
      {
        hash: "b".repeat(64),
        prefix: "k2",
        team_id: "team0001",
        category: "WORKSPACE_INVOKE",
        model_ids: ["aaaaaaa1"],
      },
    ],
    models: [
      {
        id: "aaaaaaa1",
        team_id: "team0001",
        name: "any name, even with spaces",
        development_deployment_id: "dev0001",
        environments: [
          { name: "production", deployment_id: "dep0001", region: null, standard_endpoint_policy: "allow" },
          { name: "prod-eu", deployment_id: null, region: "eu", standard_endpoint_policy: "deny" },
        ],
        deployments: [
          { id: "dep0001", region: null, ready_planes: ["us-1", "eu-1"] },
          { id: "dev0001", region: "eu", ready_planes: [] },
        ],
      },
    ],
    replicas: [
      {
        id: "rep000000001",
        deployment_id: "dep0001",
        model_id: "aaaaaaa1",
        environment: "production",
        artifact: { key: SHA, sha256: SHA, size: 10 },
        egress: "allow",
      },
    ],
  };
}

type Edit = (s: any) => void;
const cases: Array<[string, Edit, string]> = [
  ["no revision", (s) => delete s.revision, "revision"],
  ["a negative revision", (s) => (s.revision = -1), "revision"],
  ["a fractional revision", (s) => (s.revision = 1.5), "revision"],
  ["a domain with a space", (s) => (s.domain = "meridian test"), "domain"],
  ["another plane's snapshot", (s) => (s.plane.name = "eu-2"), "plane.name"],
  ["another region", (s) => (s.plane.region = "us"), "plane.region"],
  ["a plane name that is not a slug", (s) => (s.planes[1].name = "US_1"), "planes[1].name"],
  ["an ingress that is not host:port", (s) => (s.planes[1].ingress = ["us-1"]), "planes[1].ingress[0]"],
  ["a port out of range", (s) => (s.planes[1].ingress = ["h:70000"]), "planes[1].ingress[0]"],
  ["global_ingress as a string", (s) => (s.planes[1].global_ingress = "yes"), "planes[1].global_ingress"],
  ["a plane listed twice", (s) => s.planes.push(s.planes[1]), "planes[2].name"],
  ["planes without this plane", (s) => s.planes.shift(), "planes"],
  ["planes placing this plane elsewhere", (s) => (s.planes[0].region = "us"), "planes"],
  ["a key of an unknown plane", (s) => (s.plane_keys[0].plane = "zz-9"), "plane_keys[0].plane"],
  ["a key id that is not hex", (s) => (s.plane_keys[0].key_id = "XYZ"), "plane_keys[0].key_id"],
  [
    "a key that does not decode to 32 bytes",
    (s) => (s.plane_keys[0].public_key = "AAAA"),
    "plane_keys[0].public_key",
  ],
  [
    "a non-canonical key encoding",
    (s) => (s.plane_keys[0].public_key = `${"B".repeat(42)}B`),
    "plane_keys[0].public_key",
  ],
  [
    "a private JWK instead of a public key",
    (s) => (s.plane_keys[0].public_key = { d: KEY, x: KEY }),
    "plane_keys[0].public_key",
  ],
  [
    "a retirement that is not a time",
    (s) => (s.plane_keys[1].retired_at = "yesterday"),
    "plane_keys[1].retired_at",
  ],
  ["a key listed twice", (s) => (s.plane_keys[1].key_id = "0123456789abcdef"), "plane_keys[1].key_id"],
  ["no control key", (s) => (s.control_key = null), "control_key"],
  ["a broken control key", (s) => (s.control_key.public_key = 7), "control_key.public_key"],
  [
    "the old shared secret and no keys",
    (s) => {
      delete s.plane_keys;
      s.hop_secret = "hop.secret";
    },
    "plane_keys",
  ],
  ["an API-key hash in upper case", (s) => (s.api_keys[0].hash = SHA.toUpperCase()), "api_keys[0].hash"],
  ["an unknown key category", (s) => (s.api_keys[0].category = "ROOT"), "api_keys[0].category"],
  ["a scope naming a bad model id", (s) => (s.api_keys[1].model_ids = ["x"]), "api_keys[1].model_ids[0]"],
  ["a team id with a slash", (s) => (s.api_keys[0].team_id = "../etc"), "api_keys[0].team_id"],
  ["a model id with a hyphen", (s) => (s.models[0].id = "aaaa-aa1"), "models[0].id"],
  ["a model listed twice", (s) => s.models.push(s.models[0]), "models[1].id"],
  [
    "a bad environment name",
    (s) => (s.models[0].environments[1].name = "Prod EU"),
    "models[0].environments[1].name",
  ],
  [
    "the reserved environment name",
    (s) => (s.models[0].environments[1].name = "development"),
    "models[0].environments[1].name",
  ],
  [
    "an environment listed twice",
    (s) => (s.models[0].environments[1].name = "production"),
    "models[0].environments[1].name",
  ],
  [
    "an environment serving another model's deployment",
    (s) => (s.models[0].environments[1].deployment_id = "nope001"),
    "models[0].environments[1].deployment_id",
  ],
  [
    "an unknown policy",
    (s) => (s.models[0].environments[0].standard_endpoint_policy = "maybe"),
    "models[0].environments[0].standard_endpoint_policy",
  ],
  [
    "a region that is not a slug",
    (s) => (s.models[0].environments[1].region = "EU!"),
    "models[0].environments[1].region",
  ],
  [
    "a development deployment that is not the model's",
    (s) => (s.models[0].development_deployment_id = "nope001"),
    "models[0].development_deployment_id",
  ],
  [
    "a deployment id with a dot",
    (s) => (s.models[0].deployments[0].id = "a.b"),
    "models[0].deployments[0].id",
  ],
  [
    "a ready plane that is not a plane",
    (s) => (s.models[0].deployments[0].ready_planes = ["zz-9"]),
    "models[0].deployments[0].ready_planes[0]",
  ],
  [
    "a ready plane listed twice",
    (s) => (s.models[0].deployments[0].ready_planes = ["us-1", "us-1"]),
    "models[0].deployments[0].ready_planes[1]",
  ],
  [
    "a replica id that climbs out of its directory",
    (s) => (s.replicas[0].id = "../../snapshot"),
    "replicas[0].id",
  ],
  ["a replica listed twice", (s) => s.replicas.push(s.replicas[0]), "replicas[1].id"],
  [
    "a replica of a model not in models",
    (s) => (s.replicas[0].model_id = "zzzzzzz9"),
    "replicas[0].model_id",
  ],
  [
    "a replica of a deployment not in its model's routes",
    (s) => (s.replicas[0].deployment_id = "other01"),
    "replicas[0].deployment_id",
  ],
  ["a replica told a bad environment", (s) => (s.replicas[0].environment = "-x"), "replicas[0].environment"],
  [
    "an artifact without a sha256",
    (s) => (s.replicas[0].artifact.sha256 = "abc"),
    "replicas[0].artifact.sha256",
  ],
  ["an artifact of negative size", (s) => (s.replicas[0].artifact.size = -1), "replicas[0].artifact.size"],
  ["an unknown egress policy", (s) => (s.replicas[0].egress = "some"), "replicas[0].egress"],
  ["replicas that are not an array", (s) => (s.replicas = {}), "replicas"],
];

describe("plane snapshot check", () => {
  it("accepts a whole, consistent snapshot of this plane (unknown fields are ignored)", () => {
    const s = { ...valid(), added_by_a_newer_control_plane: true };
    expect(checkPlaneSnapshot(s, OWNER)).toEqual({ ok: true, snapshot: s });
  });

  it.each(cases)("refuses %s, naming the field", (_name, edit, field) => {
    const s = valid();
    edit(s);
    const check = checkPlaneSnapshot(s, OWNER);
    expect(check.ok).toBe(false);
    if (!check.ok) {
      expect(check.field).toBe(field);
      expect(check.message.length).toBeGreaterThan(0);
    }
  });

  it.each([null, 7, "snapshot", [], { revision: 1 }])("refuses %j", (value) => {
    expect(checkPlaneSnapshot(value, OWNER).ok).toBe(false);
  });

  it("quotes at most 64 characters of a refused value", () => {
    const s = valid() as any;
    s.models[0].id = "x".repeat(10_000);
    const check = checkPlaneSnapshot(s, OWNER);
    expect(!check.ok && check.message.length < 200).toBe(true);
  });

  it("any JSON in, a decision out, never a throw", () => {
    fc.assert(
      fc.property(fc.jsonValue(), (value) => {
        const check = checkPlaneSnapshot(value, OWNER);
        expect(typeof check.ok).toBe("boolean");
      }),
      { numRuns: 500 },
    );
  });

  it("a valid snapshot with any part replaced by any JSON: a decision, and what passes can be served", () => {
    /** Every path (object keys, array indexes) inside a value. */
    const paths = (v: unknown, at: Array<string | number> = []): Array<Array<string | number>> => {
      if (typeof v !== "object" || v === null) return [at];
      const entries = Array.isArray(v) ? v.map((x, i) => [i, x] as const) : Object.entries(v);
      return [at, ...entries.flatMap(([k, x]) => paths(x, [...at, k]))];
    };
    const all = paths(valid()).filter((p) => p.length > 0);
    fc.assert(
      fc.property(fc.constantFrom(...all), fc.jsonValue(), (path, replacement) => {
        const s = valid() as any;
        let node = s;
        for (const k of path.slice(0, -1)) node = node[k];
        node[path.at(-1)!] = replacement;
        const check = checkPlaneSnapshot(JSON.parse(JSON.stringify(s)), OWNER);
        if (check.ok) {
          // Whatever passes, the ingress can index and route on without throwing.
          const index = indexSnapshot(check.snapshot);
          decideRoute(index, {
            host: { form: "standard", modelId: "aaaaaaa1", port: null },
            method: "POST",
            path: "/production/predict",
            keyHash: SHA,
            forwardedFrom: null,
            localReady: { has: () => false },
            scheme: "https",
          });
        }
      }),
      { numRuns: 2000 },
    );
  });

  it("refuses exotic objects instead of throwing", () => {
    const hostile = new Proxy(
      {},
      {
        get() {
          throw new Error("boom");
        },
      },
    );
    expect(checkPlaneSnapshot(hostile, OWNER)).toMatchObject({ ok: false });
  });
});
