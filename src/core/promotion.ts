// Promotion decisions (DESIGN.md §2.5): whether a promotion reuses the deployment or copies it (a forced
// redeploy), where the candidate's replicas may run and under which egress policy, and what happens to the
// previous deployment; and a dry run's forecast of all that, placement included. Pure.

import { deriveStatus, wantedReplicas } from "./deployment-status.ts";
import type { DeploymentStatus, EgressPolicy, PromotionCleanupStrategy, ReplicaState } from "./domain.ts";
import { type PlaneCapacity, planPlacement } from "./placement.ts";

/**
 * Why a promotion copies its source. `region`: it ran outside the environment's region restriction;
 * `egress`: it ran under the other egress policy (a replica's network namespace cannot change while it
 * runs). Both are guarantees, so they hold even with `redeploy_on_promotion` off.
 */
export type CopyReason = "region" | "egress" | "bound_elsewhere" | "redeploy_on_promotion" | "development";
export type PromotionReason = "reuse" | CopyReason;

export interface PromotionTarget {
  name: string;
  /** Region the environment's group is restricted to; null when unrestricted. */
  region: string | null;
  /** The egress policy of the environment's group. */
  egress: EgressPolicy;
  current_deployment_id: string | null;
  redeploy_on_promotion: boolean;
  promotion_cleanup_strategy: PromotionCleanupStrategy;
  promotion_in_progress: boolean;
}

export interface PromotionSource {
  id: string;
  status: DeploymentStatus;
  is_development: boolean;
  /** Region restriction the deployment's replicas run under; null when it ran unrestricted. */
  region: string | null;
  /** The egress policy the deployment's replicas run under. */
  egress: EgressPolicy;
  /** Other environments this deployment currently serves (not counting the target). */
  bound_environments: string[];
}

export type PromotionDecision =
  | { kind: "refuse"; code: "promotion_in_progress" | "conflict"; message: string }
  | { kind: "already_current" }
  | {
      kind: "promote";
      candidate: "reuse" | "copy";
      reason: PromotionReason;
      /** Region restriction the candidate's replicas are placed under. */
      candidate_region: string | null;
      /** Egress policy the candidate's replicas run under: always the environment's group's. */
      candidate_egress: EgressPolicy;
      cleanup: PromotionCleanupStrategy;
    };

const UNPROMOTABLE: readonly DeploymentStatus[] = [
  "BUILD_FAILED",
  "BUILD_STOPPED",
  "DEPLOY_FAILED",
  "FAILED",
];

/**
 * Decides a promotion of `source` into `target`. Copy reasons are checked in order of importance: the
 * region restriction first, then the egress policy, because both are guarantees and hold even with
 * `redeploy_on_promotion` off.
 */
export function decidePromotion(
  target: PromotionTarget,
  source: PromotionSource,
  scaleDownPrevious: boolean,
): PromotionDecision {
  if (target.promotion_in_progress) {
    return {
      kind: "refuse",
      code: "promotion_in_progress",
      message: `A promotion into '${target.name}' is already in progress; cancel it or wait for it to finish.`,
    };
  }
  if (UNPROMOTABLE.includes(source.status)) {
    return {
      kind: "refuse",
      code: "conflict",
      message: `Deployment ${source.id} is ${source.status} and cannot be promoted; push a new deployment or retry it.`,
    };
  }
  const reason = copyReason(target, source);
  // Re-promoting what already serves is a no-op — unless it runs outside the environment's region or under
  // the other egress policy, which is how a changed group migrates an environment (DESIGN.md §2.4).
  if (target.current_deployment_id === source.id && !source.is_development && !isGuarantee(reason)) {
    return { kind: "already_current" };
  }

  const cleanup: PromotionCleanupStrategy = scaleDownPrevious ? target.promotion_cleanup_strategy : "KEEP";
  return {
    kind: "promote",
    candidate: reason === "reuse" ? "reuse" : "copy",
    reason,
    candidate_region: target.region ?? (reason === "reuse" ? source.region : null),
    // A reused source already runs under the target's policy (else the reason would be `egress`).
    candidate_egress: target.egress,
    cleanup,
  };
}

function isGuarantee(reason: PromotionReason): boolean {
  return reason === "region" || reason === "egress";
}

/** Every reason that `source` would be copied for, in the order they are checked; empty: reused. */
export function copyReasons(target: PromotionTarget, source: PromotionSource): CopyReason[] {
  const reasons: CopyReason[] = [];
  if (target.region !== null && source.region !== target.region) reasons.push("region");
  if (source.egress !== target.egress) reasons.push("egress");
  if (source.bound_environments.length > 0) reasons.push("bound_elsewhere");
  if (target.redeploy_on_promotion) reasons.push("redeploy_on_promotion");
  if (source.is_development) reasons.push("development");
  return reasons;
}

function copyReason(target: PromotionTarget, source: PromotionSource): PromotionReason {
  return copyReasons(target, source)[0] ?? "reuse";
}

/** Statuses in which a reused deployment is already up; any other is woken (set `DEPLOYING`) by the promotion. */
export const AWAKE_STATUSES: readonly DeploymentStatus[] = [
  "ACTIVE",
  "BUILDING",
  "DEPLOYING",
  "LOADING_MODEL",
  "UNHEALTHY",
  "WAKING_UP",
  "UPDATING",
];

/** What becomes of the previous deployment once the candidate serves (DESIGN.md §2.5). */
export type PreviousDeploymentFate = "keep" | "scale_to_zero" | "deactivate";

export function previousDeploymentFate(
  cleanup: PromotionCleanupStrategy,
  previousStillServes: boolean,
): PreviousDeploymentFate {
  if (previousStillServes) return "keep";
  switch (cleanup) {
    case "KEEP":
      return "keep";
    case "SCALE_TO_ZERO":
      return "scale_to_zero";
    case "DEACTIVATE":
      return "deactivate";
  }
}

// —— the dry run ——

/** What a dry run needs beyond the decision's inputs: the placement facts the scheduler would use. */
export interface PromotionPlanInput {
  target: PromotionTarget;
  source: PromotionSource;
  scaleDownPrevious: boolean;
  /** The target environment's replica bounds: what the candidate wants once it serves. */
  targetScaling: { min_replica: number; max_replica: number };
  /** Planes that are up, each with the slots taken by replicas of every deployment but the source. */
  planes: readonly PlaneCapacity[];
  /** The source's replicas now: a reused candidate keeps them, a copy leaves them where they are. */
  sourceReplicas: ReadonlyArray<{ id: string; plane: string; state: ReplicaState; message: string | null }>;
  /** Environments other than the target that the target's current deployment serves. */
  previousServesElsewhere: readonly string[];
}

export interface PlacementForecast {
  /** Region the candidate's replicas are placed in; null: anywhere. */
  region: string | null;
  /** Replicas the candidate runs once it serves the environment. */
  replicas: number;
  /** Where they would run, by plane (kept and new together), busiest first. */
  planes: Array<{ name: string; region: string; replicas: number }>;
  /** Replicas no plane of the region has a free slot for now. */
  unplaced: number;
  /** Whether every replica it will run fits now. */
  has_capacity: boolean;
}

export type PromotionPlan =
  | { outcome: "refused"; code: "promotion_in_progress" | "conflict"; message: string }
  | { outcome: "already_current" }
  | {
      outcome: "promote";
      candidate: "reuse" | "copy";
      reason: PromotionReason;
      /** Every copy reason that holds, in order (the first is `reason`); empty for a reuse. */
      reasons: CopyReason[];
      candidate_region: string | null;
      candidate_egress: EgressPolicy;
      /** A reused deployment that is scaled down or inactive is woken. */
      wakes: boolean;
      /** The candidate's status as the promotion starts, with the message it would wait with. */
      status: DeploymentStatus;
      status_message: string | null;
      /** `at_once`: the candidate is ACTIVE, so the environment switches in the same change. */
      switches: "at_once" | "when_ready";
      placement: PlacementForecast;
      /** The target's current deployment and what becomes of it once the candidate serves. */
      previous: { id: string; fate: PreviousDeploymentFate; cleanup: PromotionCleanupStrategy } | null;
    };

/**
 * What a promotion would do, changing nothing: the decision of `decidePromotion`, then the placement the
 * scheduler would make with the same pure function (`planPlacement`) on the same facts — first the
 * replica a candidate runs while it is one, then the replicas it runs once it serves the environment —
 * and the status `deriveStatus` gives it, so a region without capacity shows the message it would wait
 * with. Slots the previous deployment frees once the candidate serves are not counted.
 */
export function planPromotion(input: PromotionPlanInput): PromotionPlan {
  const { target, source } = input;
  const decision = decidePromotion(target, source, input.scaleDownPrevious);
  if (decision.kind === "refuse")
    return { outcome: "refused", code: decision.code, message: decision.message };
  if (decision.kind === "already_current") return { outcome: "already_current" };

  const reuse = decision.candidate === "reuse";
  const wakes = reuse && !AWAKE_STATUSES.includes(source.status);
  const status: DeploymentStatus = reuse && !wakes ? source.status : "DEPLOYING";
  // A copy leaves the source's replicas where they are: they take slots like any other deployment's.
  const planes = reuse ? input.planes : withReplicas(input.planes, input.sourceReplicas);
  const existing = reuse ? input.sourceReplicas : [];

  // While it is a candidate it serves no environment (a reused one serves none: else it would be copied).
  const starting = planPlacement({
    want: wantedReplicas(status, []),
    region: decision.candidate_region,
    existing,
    planes,
  });
  const kept = existing.filter((r) => starting.keep.includes(r.id));
  const derived = deriveStatus({
    current: status,
    want: wantedReplicas(status, []),
    replicas: [...kept, ...starting.add.map(() => ({ state: "PENDING" as ReplicaState, message: null }))],
    unplaced: starting.unplaced,
    region: decision.candidate_region,
  });

  const want = wantedReplicas("ACTIVE", [input.targetScaling]);
  const serving = planPlacement({
    want,
    region: decision.candidate_region,
    existing: [
      ...kept.map((r) => ({ id: r.id, plane: r.plane })),
      ...starting.add.map((plane, i) => ({ id: `new-${i}`, plane })),
    ],
    planes,
  });
  const byPlane = new Map<string, number>();
  const keptPlanes = new Map([
    ...kept.map((r) => [r.id, r.plane] as const),
    ...starting.add.map((plane, i) => [`new-${i}`, plane] as const),
  ]);
  for (const id of serving.keep) {
    const plane = keptPlanes.get(id)!;
    byPlane.set(plane, (byPlane.get(plane) ?? 0) + 1);
  }
  for (const plane of serving.add) byPlane.set(plane, (byPlane.get(plane) ?? 0) + 1);
  const regionOf = new Map(input.planes.map((p) => [p.name, p.region]));

  const previousId = target.current_deployment_id;
  const previous =
    previousId === null || (reuse && previousId === source.id)
      ? null
      : {
          id: previousId,
          fate: previousDeploymentFate(decision.cleanup, input.previousServesElsewhere.length > 0),
          cleanup: decision.cleanup,
        };

  return {
    outcome: "promote",
    candidate: decision.candidate,
    reason: decision.reason,
    reasons: copyReasons(target, source),
    candidate_region: decision.candidate_region,
    candidate_egress: decision.candidate_egress,
    wakes,
    status: derived.status,
    status_message: derived.message,
    // As promoteInTransaction: an ACTIVE candidate completes the promotion in the same transaction.
    switches: status === "ACTIVE" ? "at_once" : "when_ready",
    placement: {
      region: decision.candidate_region,
      replicas: want,
      planes: [...byPlane]
        .map(([name, replicas]) => ({ name, region: regionOf.get(name) ?? "", replicas }))
        .sort((a, b) => b.replicas - a.replicas || a.name.localeCompare(b.name)),
      unplaced: serving.unplaced,
      has_capacity: serving.unplaced === 0,
    },
    previous,
  };
}

/** `planes` with `replicas` counted as taken slots. */
function withReplicas(
  planes: readonly PlaneCapacity[],
  replicas: ReadonlyArray<{ plane: string }>,
): PlaneCapacity[] {
  const taken = new Map<string, number>();
  for (const r of replicas) taken.set(r.plane, (taken.get(r.plane) ?? 0) + 1);
  return planes.map((p) => ({ ...p, used: p.used + (taken.get(p.name) ?? 0) }));
}
