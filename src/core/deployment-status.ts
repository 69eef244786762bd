// A deployment's status from its replicas (reference: DeploymentStatusV1), and how many replicas a
// deployment wants. Pure: the control plane recomputes both whenever a plane reports.

import type { DeploymentStatus, ReplicaState } from "./domain.ts";

/**
 * Statuses in which a deployment runs replicas. `BUILDING` is one: a truss package's requirements are
 * installed by the plane that runs the replica (the control plane runs no Python), so the replica exists
 * while its environment is built.
 */
export const RUNNING_STATUSES: readonly DeploymentStatus[] = [
  "BUILDING",
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
  /** The plane it is placed on, named in the building message; absent for one not placed yet. */
  plane?: string;
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
  const failed = input.replicas.filter((r) => r.state === "FAILED" || r.state === "BUILD_FAILED");
  if (failed.length > 0 && failed.length === input.replicas.length && input.unplaced === 0) {
    // A replica whose environment could not be built says why (pip's error): the build failed, whatever
    // became of the others. Terminal, as a package the control plane refuses at push is.
    const build = failed.find((r) => r.state === "BUILD_FAILED");
    if (build)
      return {
        status: "BUILD_FAILED",
        message: build.message ?? "The replica's environment failed to build.",
      };
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
  // A cached environment never passes through here: the plane reports BUILDING only while it builds one.
  const building = input.replicas.filter((r) => r.state === "BUILDING");
  if (building.length > 0) {
    const planes = [...new Set(building.flatMap((r) => (r.plane === undefined ? [] : [r.plane])))].sort();
    return {
      status: "BUILDING",
      message:
        planes.length === 0 ? "Installing requirements." : `Installing requirements on ${planes.join(", ")}.`,
    };
  }
  return { status: "DEPLOYING", message: input.unplaced > 0 ? "Waiting for capacity." : null };
}
