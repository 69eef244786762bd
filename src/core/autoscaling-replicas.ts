// How many replicas the scheduler places for a deployment, and the status that goes with it, given the
// autoscaler's count (docs/autoscaling.md). Pure. The autoscaler's count is a desire; the settings' bounds
// apply at once whatever it says, a deployment being deployed or woken always comes up (it must become
// ready to be promoted, or to answer the request that woke it), and a count of zero is SCALED_TO_ZERO.

import type { AutoscalingSettings } from "./autoscaling-settings.ts";
import { runsReplicas } from "./deployment-status.ts";
import type { DeploymentStatus } from "./domain.ts";

/** Statuses of a deployment on its way up: it runs at least one replica until it is ready. */
const BOOTING: readonly DeploymentStatus[] = [
  "BUILDING",
  "DEPLOYING",
  "LOADING_MODEL",
  "WAKING_UP",
  "DEPLOY_FAILED",
];
/** Statuses from which a count of zero scales the deployment to zero. */
const SCALABLE_TO_ZERO: readonly DeploymentStatus[] = ["ACTIVE", "UNHEALTHY", "UPDATING"];

export interface ScaledReplicasInput {
  status: DeploymentStatus;
  settings: AutoscalingSettings;
  /** The autoscaler's count (`deployments.desired_replicas`); null until it decided for this deployment. */
  desired: number | null;
}

export interface ScaledReplicas {
  status: DeploymentStatus;
  want: number;
}

export function scaledReplicas(input: ScaledReplicasInput): ScaledReplicas {
  const { status, settings, desired } = input;
  if (status === "SCALED_TO_ZERO") {
    // Asleep until the autoscaler asks for replicas (a request, a wake, a raised min_replica).
    if (desired === null || desired === 0) return { status, want: 0 };
    return { status: "WAKING_UP", want: Math.max(1, Math.min(desired, settings.max_replica)) };
  }
  if (!runsReplicas(status)) return { status, want: 0 };
  // Before the autoscaler's first decision: what Meridian ran before it had one.
  const base = desired ?? Math.max(1, settings.min_replica);
  let want = Math.min(settings.max_replica, Math.max(settings.min_replica, base));
  if (BOOTING.includes(status)) want = Math.max(1, want);
  if (want === 0) {
    return SCALABLE_TO_ZERO.includes(status) ? { status: "SCALED_TO_ZERO", want: 0 } : { status, want: 1 };
  }
  return { status, want };
}

/**
 * The status once replicas are known: a deployment woken from zero says WAKING_UP until a replica is
 * ready (the reference's name), where a first deploy says DEPLOYING or LOADING_MODEL.
 */
export function wakingStatus(
  wanted: DeploymentStatus,
  derived: { status: DeploymentStatus; message: string | null },
): { status: DeploymentStatus; message: string | null } {
  if (wanted === "WAKING_UP" && (derived.status === "DEPLOYING" || derived.status === "LOADING_MODEL")) {
    return { status: "WAKING_UP", message: derived.message };
  }
  return derived;
}
