// A deployment's status from its replicas (reference: DeploymentStatusV1), and how many replicas a
// deployment wants. Pure: the control plane recomputes both whenever a plane reports.

import type { DeploymentStatus, ReplicaState } from "./domain.ts";

/** Statuses in which a deployment runs replicas. */
export const RUNNING_STATUSES: readonly DeploymentStatus[] = [
  "DEPLOYING",
  "LOADING_MODEL",
  "ACTIVE",
  "UNHEALTHY",
  "DEPLOY_FAILED",
  "UPDATING",
  "WAKING_UP",
];

export function runsReplicas(status: DeploymentStatus): boolean {
  return RUNNING_STATUSES.includes(status);
}

/** Replicas wanted: at least one while running, following the serving environments' min/max. */
export function wantedReplicas(
  status: DeploymentStatus,
  environments: ReadonlyArray<{ min_replica: number; max_replica: number }>,
): number {
  if (!runsReplicas(status)) return 0;
  if (environments.length === 0) return 1;
  const min = Math.max(...environments.map((e) => e.min_replica));
  const max = Math.max(...environments.map((e) => e.max_replica));
  return Math.max(1, Math.min(min, Math.max(max, 1)));
}

export interface ReplicaFacts {
  state: ReplicaState;
  message: string | null;
}

export interface StatusInput {
  current: DeploymentStatus;
  want: number;
  replicas: readonly ReplicaFacts[];
  /** Replicas the scheduler could not place. */
  unplaced: number;
  /** Region the deployment is restricted to, for the waiting message. */
  region: string | null;
}

export interface DerivedStatus {
  status: DeploymentStatus;
  message: string | null;
}

export function deriveStatus(input: StatusInput): DerivedStatus {
  if (!runsReplicas(input.current)) return { status: input.current, message: null };
  const ready = input.replicas.filter((r) => r.state === "READY").length;
  if (ready > 0) return { status: "ACTIVE", message: null };
  const failed = input.replicas.filter((r) => r.state === "FAILED");
  if (failed.length > 0 && failed.length === input.replicas.length && input.unplaced === 0) {
    return { status: "DEPLOY_FAILED", message: failed[0]?.message ?? "The replica failed to start." };
  }
  const unhealthy = input.replicas.find((r) => r.state === "UNHEALTHY");
  if (unhealthy) return { status: "UNHEALTHY", message: unhealthy.message };
  if (input.replicas.length === 0 && input.unplaced > 0) {
    const where = input.region === null ? "" : ` in region '${input.region}'`;
    return {
      status: "DEPLOYING",
      message: `Waiting for capacity: no workload plane${where} has a free replica slot.`,
    };
  }
  if (input.replicas.some((r) => r.state === "STARTING")) return { status: "LOADING_MODEL", message: null };
  return { status: "DEPLOYING", message: input.unplaced > 0 ? "Waiting for capacity." : null };
}
