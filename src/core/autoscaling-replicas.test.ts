// The scheduler's count and status from the autoscaler's desire: bounds at once, booting comes up, zero
// is SCALED_TO_ZERO, and asleep wakes only when asked.

import { describe, expect, it } from "vitest";
import { scaledReplicas, wakingStatus } from "./autoscaling-replicas.ts";
import { DEFAULT_AUTOSCALING } from "./autoscaling-settings.ts";
import type { DeploymentStatus } from "./domain.ts";

const s = (over: Partial<typeof DEFAULT_AUTOSCALING> = {}) => ({ ...DEFAULT_AUTOSCALING, ...over });

describe("scaledReplicas", () => {
  it.each<[DeploymentStatus, Partial<typeof DEFAULT_AUTOSCALING>, number | null, DeploymentStatus, number]>([
    // No decision yet: max(1, min_replica), as before the autoscaler.
    ["ACTIVE", {}, null, "ACTIVE", 1],
    ["ACTIVE", { min_replica: 2, max_replica: 3 }, null, "ACTIVE", 2],
    // The decision, within the bounds that apply at once.
    ["ACTIVE", { max_replica: 4 }, 3, "ACTIVE", 3],
    ["ACTIVE", { max_replica: 2 }, 3, "ACTIVE", 2],
    ["ACTIVE", { min_replica: 2, max_replica: 4 }, 1, "ACTIVE", 2],
    // Zero scales to zero; a booting deployment comes up anyway.
    ["ACTIVE", {}, 0, "SCALED_TO_ZERO", 0],
    ["UNHEALTHY", {}, 0, "SCALED_TO_ZERO", 0],
    ["DEPLOYING", {}, 0, "DEPLOYING", 1],
    ["WAKING_UP", {}, 0, "WAKING_UP", 1],
    ["DEPLOY_FAILED", {}, 0, "DEPLOY_FAILED", 1],
    // A plane building its environment is coming up too: a count of zero does not stop the build.
    ["BUILDING", { min_replica: 0 }, 0, "BUILDING", 1],
    ["BUILDING", { min_replica: 0, max_replica: 3 }, 2, "BUILDING", 2],
    // Asleep: wakes only when asked, within max_replica.
    ["SCALED_TO_ZERO", { min_replica: 0 }, null, "SCALED_TO_ZERO", 0],
    ["SCALED_TO_ZERO", {}, 0, "SCALED_TO_ZERO", 0],
    ["SCALED_TO_ZERO", { max_replica: 4 }, 3, "WAKING_UP", 3],
    ["SCALED_TO_ZERO", { max_replica: 2 }, 5, "WAKING_UP", 2],
    // Not running: nothing, whatever the count.
    ["INACTIVE", { min_replica: 1 }, 3, "INACTIVE", 0],
    ["BUILD_FAILED", {}, 1, "BUILD_FAILED", 0],
  ])("%s %j desired %s → %s × %i", (status, over, desired, wantStatus, want) => {
    expect(scaledReplicas({ status, settings: s(over), desired })).toEqual({ status: wantStatus, want });
  });
});

describe("wakingStatus", () => {
  it("says WAKING_UP while a woken deployment's replica starts, and ACTIVE once one is ready", () => {
    expect(wakingStatus("WAKING_UP", { status: "LOADING_MODEL", message: null }).status).toBe("WAKING_UP");
    expect(wakingStatus("WAKING_UP", { status: "DEPLOYING", message: "x" })).toEqual({
      status: "WAKING_UP",
      message: "x",
    });
    expect(wakingStatus("WAKING_UP", { status: "ACTIVE", message: null }).status).toBe("ACTIVE");
    expect(wakingStatus("DEPLOYING", { status: "LOADING_MODEL", message: null }).status).toBe(
      "LOADING_MODEL",
    );
  });
});
