// The snapshots the fuzzing servers serve from and the snapshot target mutates: a plane `eu-1` in region
// `eu` with a regional environment, an unrestricted one, a model with a development deployment, a scoped key
// and a replica, so every branch of the checker has a valid value to start from.

import { createHash } from "node:crypto";
import type { DnsSnapshot, PlaneSnapshot } from "../../src/core/snapshot.ts";
import type { SigningKey } from "../../src/lib/keys.ts";

export const DOMAIN = "meridian.test";
export const MODEL = "aaaaaaa1";
export const OTHER_MODEL = "bbbbbbb2";
export const INGRESS_KEY = "k-fuzz-ingress-key";
export const OWNER = { plane: "eu-1", region: "eu" };

const sha256 = (s: string) => createHash("sha256").update(s).digest("hex");

export function ingressSnapshot(control: Pick<SigningKey, "keyId" | "publicKey">): PlaneSnapshot {
  const eu1 = { name: "eu-1", region: "eu", ingress: ["127.0.0.1:9"], global_ingress: true };
  return {
    revision: 7,
    domain: DOMAIN,
    plane: eu1,
    planes: [eu1, { name: "eu-2", region: "eu", ingress: ["127.0.0.2:9"], global_ingress: false }],
    plane_keys: [
      {
        plane: "eu-2",
        // The control key stands in for eu-2's: the checker reads its form, not whose it is.
        key_id: control.keyId,
        public_key: control.publicKey,
        retired_at: null,
      },
    ],
    control_key: { key_id: control.keyId, public_key: control.publicKey },
    api_keys: [
      { hash: sha256(INGRESS_KEY), prefix: "k-fu", team_id: "t1", category: "PERSONAL", model_ids: null },
      {
        hash: sha256("k-scoped"),
        prefix: "k-sc",
        team_id: "t1",
        category: "WORKSPACE_INVOKE",
        model_ids: [OTHER_MODEL],
        regions: ["eu"],
      },
    ],
    models: [
      {
        id: MODEL,
        team_id: "t1",
        name: "m1",
        development_deployment_id: "d-dev",
        environments: [
          { name: "prod-eu", deployment_id: "d-eu", region: "eu", standard_endpoint_policy: "deny" },
          { name: "production", deployment_id: "d-std", region: null, standard_endpoint_policy: "allow" },
          { name: "staging", deployment_id: null, region: null, standard_endpoint_policy: "warn" },
        ],
        deployments: [
          { id: "d-eu", region: "eu", ready_planes: ["eu-1"] },
          { id: "d-std", region: null, ready_planes: ["eu-1", "eu-2"] },
          {
            id: "d-dev",
            region: null,
            ready_planes: ["eu-1"],
            scale: { wakeable: true, concurrency_target: 4, policy: "QUEUE_ON_FULL" },
          },
        ],
      },
      {
        id: OTHER_MODEL,
        team_id: "t1",
        name: "m2",
        development_deployment_id: null,
        environments: [
          { name: "production", deployment_id: "d-b", region: "eu", standard_endpoint_policy: "warn" },
        ],
        deployments: [{ id: "d-b", region: "eu", ready_planes: [] }],
      },
    ],
    replicas: [
      {
        id: "r-1",
        deployment_id: "d-eu",
        model_id: MODEL,
        environment: "prod-eu",
        artifact: { key: "models/aaaaaaa1/d-eu.tgz", sha256: sha256("artifact"), size: 1234 },
        egress: "deny",
      },
    ],
  };
}

export const DNS_FIXTURE: DnsSnapshot = {
  revision: 1,
  domain: DOMAIN,
  global_ingress: ["127.0.0.10"],
  regions: {
    us: ["127.0.0.10"],
    eu: ["127.0.0.20", "127.0.0.21"],
    uk: ["127.0.0.30"],
    big: Array.from({ length: 40 }, (_, i) => `10.1.0.${i + 1}`),
    v6: ["::1", "fd00::20"],
  },
  models: [
    {
      id: MODEL,
      regional_environments: [
        { name: "prod-eu", region: "eu" },
        { name: "prod-uk", region: "uk" },
        { name: "huge", region: "big" },
        { name: "six", region: "v6" },
      ],
    },
    { id: OTHER_MODEL, regional_environments: [] },
  ],
};
