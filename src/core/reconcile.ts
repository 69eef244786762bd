// The reconcile plan of a workload plane: desired replicas (from the snapshot) minus observed replicas
// (from the driver) = which replicas to start, which to stop and which to leave alone. Pure; the agent
// applies the plan through a ReplicaDriver.

import type { ReplicaState } from "./domain.ts";
import type { DesiredReplica } from "./snapshot.ts";

/** What the plan needs to know of a running replica; a driver's ReplicaStatus is one. */
export interface ObservedReplica {
  id: string;
  deployment_id: string;
  state: ReplicaState;
}

export type StopReason =
  /** The snapshot no longer lists the replica. */
  | "not_desired"
  /** The id is desired but names another deployment now: the running process is not what is wanted. */
  | "replaced";

export type StartReason =
  /** Nothing runs under this id. */
  | "missing"
  /** The driver is still stopping an earlier replica with this id; the driver starts the new one after it. */
  | "stopping"
  /** Paired with a `replaced` stop of the same id. */
  | "replaced";

export interface ReconcilePlan {
  /** Applied first, so capacity is freed before new replicas start. */
  stop: Array<{ id: string; reason: StopReason }>;
  start: Array<{ replica: DesiredReplica; reason: StartReason }>;
  /** Desired and present: never touched, whatever their state (the driver restarts crashed ones itself). */
  keep: string[];
}

/**
 * Plans the step from `actual` to `desired`. Replicas are matched by id. A desired replica that is present
 * is kept in every state: READY ones so a returning control plane never restarts healthy replicas
 * (issue 3), UNHEALTHY/STARTING ones because the driver owns restarts and backoff, FAILED ones so a model
 * whose load() fails is not restarted in a loop (the control plane sees FAILED and stops desiring it).
 * A change of `environment` alone keeps the replica: the model learns its environment at start, and a
 * redeploy is expressed by the control plane as new replica ids. Output order is deterministic (by id).
 */
export function planReconcile(
  desired: readonly DesiredReplica[],
  actual: readonly ObservedReplica[],
): ReconcilePlan {
  const wanted = new Map<string, DesiredReplica>();
  for (const replica of desired) if (!wanted.has(replica.id)) wanted.set(replica.id, replica);
  const present = new Map<string, ObservedReplica>();
  for (const replica of actual) present.set(replica.id, replica);

  const plan: ReconcilePlan = { stop: [], start: [], keep: [] };
  for (const observed of present.values()) {
    const want = wanted.get(observed.id);
    if (want === undefined) {
      if (observed.state !== "STOPPING") plan.stop.push({ id: observed.id, reason: "not_desired" });
    } else if (want.deployment_id !== observed.deployment_id) {
      if (observed.state !== "STOPPING") plan.stop.push({ id: observed.id, reason: "replaced" });
      plan.start.push({ replica: want, reason: "replaced" });
    } else if (observed.state === "STOPPING") {
      plan.start.push({ replica: want, reason: "stopping" });
    } else {
      plan.keep.push(observed.id);
    }
  }
  for (const want of wanted.values()) {
    if (!present.has(want.id)) plan.start.push({ replica: want, reason: "missing" });
  }

  plan.stop.sort((a, b) => compare(a.id, b.id));
  plan.start.sort((a, b) => compare(a.replica.id, b.replica.id));
  plan.keep.sort(compare);
  return plan;
}

function compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
