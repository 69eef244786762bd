// Promotion decisions (DESIGN.md §2.5): whether a promotion reuses the deployment or copies it (a forced
// redeploy), where the candidate's replicas may run and under which egress policy, and what happens to the
// previous deployment. Pure.

import type { DeploymentStatus, EgressPolicy, PromotionCleanupStrategy } from "./domain.ts";

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

function copyReason(target: PromotionTarget, source: PromotionSource): PromotionReason {
  if (target.region !== null && source.region !== target.region) return "region";
  if (source.egress !== target.egress) return "egress";
  if (source.bound_environments.length > 0) return "bound_elsewhere";
  if (target.redeploy_on_promotion) return "redeploy_on_promotion";
  if (source.is_development) return "development";
  return "reuse";
}

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
