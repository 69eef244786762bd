// Synthetic plane snapshots for the gateway benchmark: N models × a few environments, shaped exactly as the
// control plane's buildPlaneSnapshot emits them (src/core/snapshot.ts), with one API key that may invoke.

import { createHash } from "node:crypto";
import type { EnvironmentRoute, ModelRoute, PlaneRef, PlaneSnapshot } from "../src/core/snapshot.ts";
import { type SigningKey, signingKeyFromSeed } from "../src/lib/keys.ts";

export const BENCH_DOMAIN = "meridian.bench";
export const BENCH_KEY = "bench.0123456789abcdef0123456789abcdef";
export const BENCH_TEAM = "teambench";

/**
 * A plane's key pair for the benchmark: derived from its name, so separate ingress processes agree on each
 * other's public keys without a control plane. Never a way to make real keys.
 */
export function benchPlaneKey(name: string): SigningKey {
  return signingKeyFromSeed(createHash("sha256").update(`meridian-bench:${name}`).digest());
}

/** The i-th model id: 8 lowercase alphanumerics (DESIGN.md §1). */
export function modelId(i: number): string {
  return `m${i.toString(36).padStart(7, "0")}`;
}

export interface SyntheticOptions {
  plane: PlaneRef;
  planes: PlaneRef[];
  models: number;
  /** Environment names per model; `prod-eu` is restricted to region eu. */
  environments: string[];
  /** Planes listed as ready for every deployment. */
  readyPlanes: string[];
}

export function syntheticSnapshot(o: SyntheticOptions): PlaneSnapshot {
  const models: ModelRoute[] = [];
  for (let i = 0; i < o.models; i++) {
    const id = modelId(i);
    const environments: EnvironmentRoute[] = o.environments.map((name, k) => ({
      name,
      deployment_id: `${id}d${k}`,
      region: name === "prod-eu" ? "eu" : null,
      standard_endpoint_policy: "allow",
    }));
    models.push({
      id,
      team_id: BENCH_TEAM,
      name: `model-${i}`,
      development_deployment_id: null,
      environments,
      deployments: environments.map((e) => ({
        id: e.deployment_id!,
        region: e.region,
        ready_planes: [...o.readyPlanes],
      })),
    });
  }
  return {
    revision: 1,
    domain: BENCH_DOMAIN,
    plane: o.plane,
    planes: o.planes,
    plane_keys: o.planes
      .filter((p) => p.name !== o.plane.name)
      .map((p) => {
        const k = benchPlaneKey(p.name);
        return { plane: p.name, key_id: k.keyId, public_key: k.publicKey, retired_at: null };
      }),
    control_key: { key_id: benchPlaneKey("control").keyId, public_key: benchPlaneKey("control").publicKey },
    api_keys: [
      {
        hash: createHash("sha256").update(BENCH_KEY).digest("hex"),
        prefix: "bench",
        team_id: BENCH_TEAM,
        category: "WORKSPACE_INVOKE",
        model_ids: null,
      },
    ],
    models,
    replicas: [],
  };
}
