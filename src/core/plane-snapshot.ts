// Which plane sees what (DESIGN.md §4): the projection of the control plane's rows onto one plane's
// snapshot. Pure: the control plane reads the rows once per revision and calls this per plane.
// - models: a global ingress sees every model; any other plane sees the models with an environment
//   restricted to its region or a replica in its region, and nothing of other regions' restricted models;
// - desired replicas: only those placed on this plane, each told the environment it is a candidate for,
//   or else the one it serves;
// - keys: every other plane's current public key (and one just retired, for the hop window), and the
//   control plane's public key. API-key hashes go to every plane (a request may land anywhere).
// References are consistent by construction, as the plane's check (snapshot-check.ts) demands: the rows
// are read without one transaction, so for a moment they may disagree (a model deleted between two
// reads); a dangling reference is dropped, and the revision that change bumped brings them in step.

import type { ApiKeyCategory, EgressPolicy, StandardEndpointPolicy } from "./domain.ts";
import type {
  ApiKeyGrant,
  ControlKey,
  DeploymentScale,
  DesiredReplica,
  ModelRoute,
  PlaneKey,
  PlaneRef,
  PlaneSnapshot,
} from "./snapshot.ts";

/** How long a hop stays acceptable (either side of its time); a just-retired key is carried this long. */
export const HOP_WINDOW_MS = 30_000;

/** The rows of the store's tables that snapshots are built from, as the store returns them. */
export interface SnapshotRows {
  revision: number;
  domain: string;
  planes: PlaneRowData[];
  /** Every key every plane has reported, current and retired (`plane_keys`). */
  plane_keys: PlaneKeyRowData[];
  control_key: ControlKey;
  api_keys: Array<{
    hash: string;
    prefix: string;
    team_id: string;
    category: string;
    /** JSON array of model ids, or null. */
    model_ids: string | null;
    /** JSON array of region slugs the key may call inference in, or null (everywhere); absent on old rows. */
    regions?: string | null;
  }>;
  models: Array<{ id: string; team_id: string; name: string }>;
  environments: Array<{ model_id: string; name: string; current_deployment_id: string | null }>;
  groups: Array<{
    team_id: string;
    name: string;
    region: string | null;
    standard_endpoint_policy: string;
  }>;
  deployments: Array<{
    id: string;
    model_id: string;
    region: string | null;
    is_development: number;
    artifact_key: string;
    /** The egress policy the deployment was placed under; null or absent on rows that predate it. */
    egress?: string | null;
    /** Status, autoscaling JSON and backpressure JSON: the route's `scale` (absent: no `scale`). */
    status?: string;
    autoscaling?: string;
    backpressure?: string | null;
  }>;
  replicas: Array<{ id: string; deployment_id: string; plane: string; state: string }>;
  /** Stored artifacts only. */
  artifacts: Array<{ key: string; sha256: string | null; size: number | string | null }>;
  /** Promotions in flight. */
  promotions: Array<{ candidate_deployment_id: string; environment: string }>;
}

export interface PlaneRowData {
  name: string;
  region: string;
  /** JSON array of `host:port`. */
  ingress: string;
  global_ingress: number;
  /** sha256 of the plane's current credential: a key counts only if it arrived over this credential. */
  credential_hash: string;
}

export interface PlaneKeyRowData {
  plane: string;
  key_id: string;
  public_key: string;
  /** The credential (sha256) the key was reported over. */
  credential_hash: string;
  first_seen_at: string;
  retired_at: string | null;
}

export function planeRef(p: PlaneRowData): PlaneRef {
  return {
    name: p.name,
    region: p.region,
    ingress: JSON.parse(p.ingress) as string[],
    global_ingress: p.global_ingress === 1,
  };
}

/**
 * The keys a plane verifies hops with: for each other plane, the keys it reported over its current
 * credential that are current, or retired less than `windowMs` ago. A rotated credential therefore drops
 * every key reported over the old one at once (it may have been stolen).
 */
export function trustedPlaneKeys(
  rows: Pick<SnapshotRows, "planes" | "plane_keys">,
  self: string,
  nowMs: number,
  windowMs: number = HOP_WINDOW_MS,
): PlaneKey[] {
  const credential = new Map(rows.planes.map((p) => [p.name, p.credential_hash]));
  const out: PlaneKey[] = [];
  for (const k of rows.plane_keys) {
    if (k.plane === self || credential.get(k.plane) !== k.credential_hash) continue;
    if (k.retired_at !== null && !(Date.parse(k.retired_at) + windowMs > nowMs)) continue;
    out.push({ plane: k.plane, key_id: k.key_id, public_key: k.public_key, retired_at: k.retired_at });
  }
  // Stable order: by plane, the current key first, then the retired ones newest first.
  return out.sort(
    (a, b) =>
      compare(a.plane, b.plane) ||
      (a.retired_at === null ? 0 : 1) - (b.retired_at === null ? 0 : 1) ||
      compare(b.retired_at ?? "", a.retired_at ?? "") ||
      compare(a.key_id, b.key_id),
  );
}

/** The snapshot of `plane` at `rows.revision`. `nowMs` decides which retired keys are still carried. */
export function projectPlaneSnapshot(
  rows: SnapshotRows,
  plane: PlaneRowData,
  nowMs: number,
  hopWindowMs: number = HOP_WINDOW_MS,
): PlaneSnapshot {
  const planeRegion = new Map(rows.planes.map((p) => [p.name, p.region]));
  const groupOf = new Map(rows.groups.map((g) => [`${g.team_id}/${g.name}`, g]));
  const modelTeam = new Map(rows.models.map((m) => [m.id, m.team_id]));

  const relevant = new Set<string>();
  if (plane.global_ingress === 1) {
    for (const m of rows.models) relevant.add(m.id);
  } else {
    for (const e of rows.environments) {
      if (groupOf.get(`${modelTeam.get(e.model_id)}/${e.name}`)?.region === plane.region)
        relevant.add(e.model_id);
    }
    const depModel = new Map(rows.deployments.map((d) => [d.id, d.model_id]));
    for (const r of rows.replicas) {
      if (planeRegion.get(r.plane) === plane.region) {
        const m = depModel.get(r.deployment_id);
        if (m) relevant.add(m);
      }
    }
  }

  const readyPlanes = new Map<string, Set<string>>();
  for (const r of rows.replicas) {
    if (r.state !== "READY") continue;
    const s = readyPlanes.get(r.deployment_id) ?? new Set<string>();
    s.add(r.plane);
    readyPlanes.set(r.deployment_id, s);
  }
  const routes = new Map<string, ModelRoute>();
  for (const m of rows.models) {
    if (!relevant.has(m.id)) continue;
    routes.set(m.id, {
      id: m.id,
      team_id: m.team_id,
      name: m.name,
      development_deployment_id: null,
      environments: [],
      deployments: [],
    });
  }
  for (const e of rows.environments) {
    const route = routes.get(e.model_id);
    if (!route) continue;
    const g = groupOf.get(`${route.team_id}/${e.name}`);
    route.environments.push({
      name: e.name,
      deployment_id: e.current_deployment_id,
      region: g?.region ?? null,
      standard_endpoint_policy: (g?.standard_endpoint_policy ?? "allow") as StandardEndpointPolicy,
    });
  }
  for (const d of rows.deployments) {
    const route = routes.get(d.model_id);
    if (!route) continue;
    if (d.is_development === 1) route.development_deployment_id = d.id;
    route.deployments.push({
      id: d.id,
      region: d.region,
      ready_planes: [...(readyPlanes.get(d.id) ?? [])].filter((p) => planeRegion.has(p)).sort(),
      ...(d.status !== undefined ? { scale: deploymentScale(d.status, d.autoscaling, d.backpressure) } : {}),
    });
  }
  for (const route of routes.values()) {
    const own = new Set(route.deployments.map((d) => d.id));
    for (const env of route.environments) {
      if (env.deployment_id !== null && !own.has(env.deployment_id)) env.deployment_id = null;
    }
  }

  const artifacts = new Map(rows.artifacts.map((a) => [a.key, a]));
  const depById = new Map(rows.deployments.map((d) => [d.id, d]));
  // The environment a replica's model is told it serves: the one it is a promotion candidate for, or else
  // the one it serves (so a redeploy on promotion starts with the right name and is never restarted for it).
  const servingEnv = new Map<string, string>();
  for (const p of rows.promotions) servingEnv.set(p.candidate_deployment_id, p.environment);
  for (const e of rows.environments) {
    if (e.current_deployment_id && !servingEnv.has(e.current_deployment_id)) {
      servingEnv.set(e.current_deployment_id, e.name);
    }
  }
  const replicas: DesiredReplica[] = [];
  for (const r of rows.replicas) {
    if (r.plane !== plane.name) continue;
    const d = depById.get(r.deployment_id);
    const a = d ? artifacts.get(d.artifact_key) : undefined;
    if (!d || !a || a.sha256 === null || !routes.has(d.model_id)) continue;
    replicas.push({
      id: r.id,
      deployment_id: d.id,
      model_id: d.model_id,
      environment: servingEnv.get(d.id) ?? null,
      artifact: { key: a.sha256, sha256: a.sha256, size: Number(a.size) },
      egress: egressOf(d.egress),
    });
  }

  const apiKeys: ApiKeyGrant[] = rows.api_keys.map((k) => ({
    hash: k.hash,
    prefix: k.prefix,
    team_id: k.team_id,
    category: k.category as ApiKeyCategory,
    model_ids: k.model_ids === null ? null : (JSON.parse(k.model_ids) as string[]),
    regions: k.regions === undefined || k.regions === null ? null : (JSON.parse(k.regions) as string[]),
  }));

  return {
    revision: rows.revision,
    domain: rows.domain,
    plane: planeRef(plane),
    planes: rows.planes.map(planeRef),
    plane_keys: trustedPlaneKeys(rows, plane.name, nowMs, hopWindowMs),
    control_key: { key_id: rows.control_key.key_id, public_key: rows.control_key.public_key },
    api_keys: apiKeys,
    models: [...routes.values()],
    replicas,
  };
}

/** Statuses whose requests an ingress holds while a replica starts: running ones and asleep ones. */
const WAKEABLE = new Set([
  "BUILDING",
  "DEPLOYING",
  "LOADING_MODEL",
  "ACTIVE",
  "UNHEALTHY",
  "UPDATING",
  "WAKING_UP",
  "SCALED_TO_ZERO",
]);

function deploymentScale(
  status: string,
  autoscaling: string | undefined,
  backpressure: string | null | undefined,
): DeploymentScale {
  let target = 1;
  try {
    const t = (JSON.parse(autoscaling ?? "{}") as { concurrency_target?: unknown }).concurrency_target;
    if (Number.isSafeInteger(t) && (t as number) >= 1) target = t as number;
  } catch {}
  let policy: DeploymentScale["policy"] = null;
  try {
    const p = backpressure ? (JSON.parse(backpressure) as { policy?: unknown }).policy : null;
    if (p === "QUEUE_ON_FULL" || p === "REJECT_ON_FULL") policy = p;
  } catch {}
  return { wakeable: WAKEABLE.has(status), concurrency_target: target, policy };
}

/** A row without a policy predates egress policies (allow); anything but `allow` fails closed. */
function egressOf(value: string | null | undefined): EgressPolicy {
  return value === undefined || value === null || value === "allow" ? "allow" : "deny";
}

function compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
