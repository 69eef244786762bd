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
    ["BUILDING", [{ min_replica: 0, max_replica: 2 }], 1],
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
    [
      "a replica building its environment: BUILDING, naming its plane",
      { replicas: [{ state: "BUILDING", message: "installing the package's requirements", plane: "eu-1" }] },
      { status: "BUILDING", message: "Installing requirements on eu-1." },
    ],
    [
      "replicas building on two planes name both, once each",
      {
        want: 3,
        replicas: [
          { state: "BUILDING", message: null, plane: "eu-2" },
          { state: "BUILDING", message: null, plane: "eu-1" },
          { state: "BUILDING", message: null, plane: "eu-2" },
        ],
      },
      { status: "BUILDING", message: "Installing requirements on eu-1, eu-2." },
    ],
    [
      "a building replica not placed by name yet",
      { replicas: [{ state: "BUILDING", message: null }] },
      { status: "BUILDING", message: "Installing requirements." },
    ],
    [
      "one plane built (or had it cached) and starts, another builds: LOADING_MODEL",
      {
        want: 2,
        replicas: [
          { state: "BUILDING", message: null, plane: "eu-1" },
          { state: "STARTING", message: null, plane: "eu-2" },
        ],
      },
      { status: "LOADING_MODEL", message: null },
    ],
    [
      "a READY replica beside a building one: ACTIVE",
      {
        current: "BUILDING",
        want: 2,
        replicas: [
          { state: "READY", message: null, plane: "eu-1" },
          { state: "BUILDING", message: null, plane: "eu-2" },
        ],
      },
      { status: "ACTIVE", message: null },
    ],
    [
      "BUILDING runs replicas: the next report moves it on",
      { current: "BUILDING", replicas: [{ state: "STARTING", message: null, plane: "eu-1" }] },
      { status: "LOADING_MODEL" },
    ],
    [
      "every replica's build failed: BUILD_FAILED with pip's error",
      {
        current: "BUILDING",
        replicas: [
          {
            state: "BUILD_FAILED",
            message:
              "pip could not install the requirements (exit code 1):\nERROR: No matching distribution found for x==9",
            plane: "eu-1",
          },
        ],
      },
      {
        status: "BUILD_FAILED",
        message:
          "pip could not install the requirements (exit code 1):\nERROR: No matching distribution found for x==9",
      },
    ],
    [
      "a build failure beside a replica that failed to start: BUILD_FAILED, the build's reason",
      {
        want: 2,
        replicas: [
          { state: "FAILED", message: "exited with code 1", plane: "eu-1" },
          { state: "BUILD_FAILED", message: "no fitting interpreter", plane: "eu-2" },
        ],
      },
      { status: "BUILD_FAILED", message: "no fitting interpreter" },
    ],
    [
      "a build failed on one plane while another still builds: BUILDING, not failed yet",
      {
        want: 2,
        replicas: [
          { state: "BUILD_FAILED", message: "pip failed", plane: "eu-1" },
          { state: "BUILDING", message: null, plane: "eu-2" },
        ],
      },
      { status: "BUILDING", message: "Installing requirements on eu-2." },
    ],
    [
      "a failed build with a replica still unplaced waits, as a failed start does",
      { want: 2, unplaced: 1, replicas: [{ state: "BUILD_FAILED", message: "pip failed", plane: "eu-1" }] },
      { status: "DEPLOYING", message: "Waiting for capacity." },
    ],
  ])("%s", (_name, over, expected) => {
    expect(deriveStatus(input(over))).toMatchObject(expected);
  });
});
