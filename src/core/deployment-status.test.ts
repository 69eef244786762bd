import { describe, expect, it } from "vitest";
import { deriveStatus, type StatusInput, wantedReplicas } from "./deployment-status.ts";

const input = (over: Partial<StatusInput>): StatusInput => ({
  current: "DEPLOYING",
  want: 1,
  replicas: [],
  unplaced: 0,
  region: "eu",
  ...over,
});

describe("wantedReplicas", () => {
  it.each([
    ["ACTIVE", [], 1],
    ["DEPLOYING", [{ min_replica: 2, max_replica: 3 }], 2],
    ["ACTIVE", [{ min_replica: 0, max_replica: 3 }], 1],
    ["ACTIVE", [{ min_replica: 5, max_replica: 2 }], 2],
    [
      "ACTIVE",
      [
        { min_replica: 1, max_replica: 1 },
        { min_replica: 3, max_replica: 4 },
      ],
      3,
    ],
    ["INACTIVE", [{ min_replica: 2, max_replica: 3 }], 0],
    ["SCALED_TO_ZERO", [], 0],
    ["BUILD_FAILED", [], 0],
    ["DEPLOY_FAILED", [], 1],
  ] as const)("%s with %j wants %i", (status, envs, want) => {
    expect(wantedReplicas(status, envs)).toBe(want);
  });
});

describe("deriveStatus", () => {
  it.each<[string, Partial<StatusInput>, { status: string; message?: string | null }]>([
    [
      "a READY replica makes it ACTIVE",
      { replicas: [{ state: "READY", message: null }] },
      { status: "ACTIVE", message: null },
    ],
    [
      "ACTIVE while one of two is still starting",
      {
        want: 2,
        replicas: [
          { state: "READY", message: null },
          { state: "STARTING", message: null },
        ],
      },
      { status: "ACTIVE" },
    ],
    [
      "starting replicas: LOADING_MODEL",
      { replicas: [{ state: "STARTING", message: null }] },
      { status: "LOADING_MODEL" },
    ],
    [
      "placed, not started: DEPLOYING",
      { replicas: [{ state: "PENDING", message: null }] },
      { status: "DEPLOYING", message: null },
    ],
    [
      "every replica FAILED: DEPLOY_FAILED with the reason",
      { replicas: [{ state: "FAILED", message: "model load failed: boom" }] },
      { status: "DEPLOY_FAILED", message: "model load failed: boom" },
    ],
    [
      "an UNHEALTHY replica and none ready: UNHEALTHY",
      { replicas: [{ state: "UNHEALTHY", message: "not ready after 300 s" }] },
      { status: "UNHEALTHY", message: "not ready after 300 s" },
    ],
    [
      "nothing placed: waits for capacity in its region, never elsewhere",
      { unplaced: 1 },
      {
        status: "DEPLOYING",
        message: "Waiting for capacity: no workload plane in region 'eu' has a free replica slot.",
      },
    ],
    [
      "an unrestricted deployment waits for any plane",
      { unplaced: 1, region: null },
      { status: "DEPLOYING", message: "Waiting for capacity: no workload plane has a free replica slot." },
    ],
    [
      "INACTIVE stays INACTIVE",
      { current: "INACTIVE", replicas: [{ state: "READY", message: null }] },
      { status: "INACTIVE" },
    ],
    ["BUILD_FAILED stays", { current: "BUILD_FAILED" }, { status: "BUILD_FAILED" }],
  ])("%s", (_name, over, expected) => {
    expect(deriveStatus(input(over))).toMatchObject(expected);
  });
});
