// Placement (DESIGN.md §2.1): which planes run a deployment's replicas. A deployment restricted to region R
// is placed only on planes of R; no capacity there means it waits — it is never placed elsewhere. Pure.

import type { EgressPolicy, SandboxMode } from "./domain.ts";

export interface PlaneCapacity {
  name: string;
  region: string;
  /** Replica slots in all. */
  capacity: number;
  /** Slots taken by replicas of other deployments. */
  used: number;
  global_ingress: boolean;
  /** The plane's sandbox as it last reported it; absent or null before its first report. */
  sandbox?: SandboxMode | null;
}

export interface PlacementInput {
  /** Replicas wanted. */
  want: number;
  /** Region restriction; null places anywhere. */
  region: string | null;
  /** This deployment's current replicas. */
  existing: ReadonlyArray<{ id: string; plane: string }>;
  planes: readonly PlaneCapacity[];
  /** The deployment's egress policy; `deny` needs a plane whose replicas have a network namespace. */
  egress?: EgressPolicy;
}

export interface PlacementPlan {
  keep: string[];
  /** Replicas to remove: beyond `want`, or on a plane that is gone or outside the region. */
  remove: string[];
  /** Planes to add one replica each on (a plane may appear more than once). */
  add: string[];
  /** Replicas that could not be placed for lack of capacity in the allowed planes. */
  unplaced: number;
}

/**
 * Planes a deployment may run on: those of its region (any, unrestricted), and of those the ones that can
 * start its replicas. A plane whose sandbox is unavailable refuses every replica, and one running replicas
 * without a sandbox (`--sandbox none`) refuses egress `deny`; they are passed over while a plane of the
 * region can run the deployment. When none can, they stay in, so that the plane's refusal, with its reason
 * and what to do, reaches the deployment's status instead of a wait that says nothing.
 */
export function allowedPlanes(
  planes: readonly PlaneCapacity[],
  region: string | null,
  egress: EgressPolicy = "allow",
): PlaneCapacity[] {
  const inRegion = region === null ? [...planes] : planes.filter((p) => p.region === region);
  const able = inRegion.filter((p) => canRun(p, egress));
  return able.length > 0 ? able : inRegion;
}

/** Whether a plane's sandbox, as reported, starts replicas under this egress policy. */
export function canRun(plane: Pick<PlaneCapacity, "sandbox">, egress: EgressPolicy): boolean {
  if (plane.sandbox === "unavailable") return false;
  return !(egress === "deny" && plane.sandbox === "none");
}

/**
 * Unrestricted replicas prefer the plane nearest the global ingress: the global ingress plane itself,
 * then planes of its region, then the rest; within a rank, the plane with fewest replicas of this
 * deployment already (so a second replica lands on another plane, and survives the first one's plane),
 * then the one with most free slots.
 */
function preferenceOrder(planes: PlaneCapacity[], mine: ReadonlyMap<string, number>): PlaneCapacity[] {
  const globalRegions = new Set(planes.filter((p) => p.global_ingress).map((p) => p.region));
  const rank = (p: PlaneCapacity) => (p.global_ingress ? 0 : globalRegions.has(p.region) ? 1 : 2);
  return planes.sort(
    (a, b) =>
      rank(a) - rank(b) ||
      (mine.get(a.name) ?? 0) - (mine.get(b.name) ?? 0) ||
      b.capacity - b.used - (a.capacity - a.used) ||
      a.name.localeCompare(b.name),
  );
}

export function planPlacement(input: PlacementInput): PlacementPlan {
  const allowed = allowedPlanes(input.planes, input.region, input.egress);
  const allowedNames = new Set(allowed.map((p) => p.name));
  const keep: string[] = [];
  const remove: string[] = [];
  for (const r of input.existing) {
    if (allowedNames.has(r.plane) && keep.length < input.want) keep.push(r.id);
    else remove.push(r.id);
  }

  const free = new Map(allowed.map((p) => [p.name, p.capacity - p.used]));
  const mine = new Map<string, number>();
  for (const r of input.existing) {
    if (!keep.includes(r.id)) continue;
    free.set(r.plane, (free.get(r.plane) ?? 0) - 1);
    mine.set(r.plane, (mine.get(r.plane) ?? 0) + 1);
  }
  const add: string[] = [];
  const order = preferenceOrder(allowed, mine);
  let missing = input.want - keep.length;
  // Spread across planes: one replica per plane per pass, so a region's planes share the load.
  while (missing > 0) {
    let placed = false;
    for (const p of order) {
      if (missing === 0) break;
      if ((free.get(p.name) ?? 0) <= 0) continue;
      free.set(p.name, (free.get(p.name) ?? 0) - 1);
      add.push(p.name);
      missing--;
      placed = true;
    }
    if (!placed) break;
  }
  return { keep, remove, add, unplaced: missing };
}
