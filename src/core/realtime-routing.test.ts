// The passthrough routes: which paths they are on each hostname form, and that they take predict's rules.
import { describe, expect, it } from "vitest";
import { matchRealtimePath, REPLICA_WEBSOCKET_PATH } from "./realtime-routing.ts";

describe("matchRealtimePath", () => {
  it.each([
    [
      "regional",
      "/sync/v1/chat/completions",
      "?a=1",
      { kind: "sync", predictPath: "/predict", replicaPath: "/v1/chat/completions?a=1" },
    ],
    ["regional", "/sync", "", { kind: "sync", predictPath: "/predict", replicaPath: "/" }],
    ["regional", "/sync/", "", { kind: "sync", predictPath: "/predict", replicaPath: "/" }],
    ["regional", "/sync//x/../y", "", { kind: "sync", predictPath: "/predict", replicaPath: "//x/../y" }],
    [
      "regional",
      "/websocket",
      "?t=1",
      { kind: "websocket", predictPath: "/predict", replicaPath: `${REPLICA_WEBSOCKET_PATH}?t=1` },
    ],
    [
      "standard",
      "/environments/prod-eu/sync/v1/models",
      "",
      { kind: "sync", predictPath: "/environments/prod-eu/predict", replicaPath: "/v1/models" },
    ],
    [
      "standard",
      "/production/sync/v1/completions",
      "",
      { kind: "sync", predictPath: "/production/predict", replicaPath: "/v1/completions" },
    ],
    [
      "standard",
      "/development/websocket",
      "",
      { kind: "websocket", predictPath: "/development/predict", replicaPath: REPLICA_WEBSOCKET_PATH },
    ],
    [
      "standard",
      "/deployment/d1/sync/a",
      "",
      { kind: "sync", predictPath: "/deployment/d1/predict", replicaPath: "/a" },
    ],
  ] as const)("%s %s%s", (form, path, query, want) => {
    expect(matchRealtimePath(form, path, query)).toEqual(want);
  });

  it.each([
    ["regional", "/predict"],
    ["regional", "/syncx"],
    ["regional", "/websocket/extra"],
    // Path-based forms on a regional hostname are decideRoute's to refuse (regional_path_not_allowed).
    ["regional", "/environments/prod-eu/sync/x"],
    ["standard", "/sync/v1"],
    ["standard", "/websocket"],
    ["standard", "/environments/prod-eu/predict"],
    ["standard", "/environments/prod-eu/syncx"],
    ["standard", "/environments//sync/x"],
  ] as const)("%s %s is not a passthrough route", (form, path) => {
    expect(matchRealtimePath(form, path, "")).toBeNull();
  });
});
