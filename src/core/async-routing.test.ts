// Where async calls are answered: a table of cases (queued here, handed into the region, refused as predict
// refuses, status calls to the plane the id names) and a property: a request of a restricted environment is
// never queued on, nor handed to, a plane outside its region.
import { createHash } from "node:crypto";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { newAsyncRequestId } from "./async.ts";
import { type AsyncDecision, decideAsync, matchAsyncPath, resolveAsyncTarget } from "./async-routing.ts";
import { parseHost } from "./host.ts";
import { indexSnapshot, type RouteIndex } from "./routing.ts";
import type { PlaneRef, PlaneSnapshot } from "./snapshot.ts";

const sha = (k: string) => createHash("sha256").update(k).digest("hex");
const DOMAIN = "meridian.test";
const PLANES: PlaneRef[] = [
  { name: "us-1", region: "us", ingress: ["127.0.1.1:80"], global_ingress: true },
  { name: "eu-1", region: "eu", ingress: ["127.0.2.1:80"], global_ingress: false },
  { name: "eu-2", region: "eu", ingress: ["127.0.2.2:80"], global_ingress: false },
  { name: "uk-1", region: "uk", ingress: ["127.0.3.1:80"], global_ingress: false },
];

function snapshotFor(plane: string): PlaneSnapshot {
  return {
    revision: 1,
    domain: DOMAIN,
    plane: PLANES.find((p) => p.name === plane)!,
    planes: PLANES,
    plane_keys: [],
    control_key: { key_id: "0123456789abcdef", public_key: "A".repeat(43) },
    api_keys: [
      { hash: sha("k1"), prefix: "k1", team_id: "t1", category: "PERSONAL", model_ids: null },
      {
        hash: sha("uk-key"),
        prefix: "uk",
        team_id: "t1",
        category: "PERSONAL",
        model_ids: null,
        regions: ["uk"],
      },
      { hash: sha("k2"), prefix: "k2", team_id: "t2", category: "PERSONAL", model_ids: null },
    ],
    models: [
      {
        id: "aaaaaaa1",
        team_id: "t1",
        name: "m1",
        development_deployment_id: "d-dev",
        environments: [
          { name: "production", deployment_id: "d-prod", region: null, standard_endpoint_policy: "allow" },
          { name: "prod-eu", deployment_id: "d-eu", region: "eu", standard_endpoint_policy: "allow" },
          { name: "eu-deny", deployment_id: "d-eud", region: "eu", standard_endpoint_policy: "deny" },
          { name: "eu-cold", deployment_id: "d-cold", region: "eu", standard_endpoint_policy: "allow" },
        ],
        deployments: [
          { id: "d-prod", region: null, ready_planes: ["uk-1"] },
          { id: "d-eu", region: "eu", ready_planes: ["eu-2"] },
          { id: "d-eud", region: "eu", ready_planes: ["eu-1"] },
          { id: "d-cold", region: "eu", ready_planes: [] },
          { id: "d-dev", region: null, ready_planes: [] },
        ],
      },
    ],
    replicas: [],
  };
}

const INDEX = new Map<string, RouteIndex>(PLANES.map((p) => [p.name, indexSnapshot(snapshotFor(p.name))]));

function decide(
  plane: string,
  host: string,
  method: string,
  path: string,
  opts: { key?: string; from?: string; ready?: string[] } = {},
): AsyncDecision | "not async" {
  const idx = INDEX.get(plane)!;
  const parsed = parseHost(host, DOMAIN);
  if (!parsed.ok) throw new Error(parsed.reason);
  const match = matchAsyncPath(parsed.host.form, path);
  if (match === null) return "not async";
  if ("refuse" in match) throw new Error(match.refuse);
  return decideAsync(
    idx,
    {
      host: parsed.host,
      method,
      path,
      keyHash: sha(opts.key ?? "k1"),
      forwardedFrom: opts.from ?? null,
      localReady: { has: (d) => (opts.ready ?? []).includes(d) },
      scheme: "http",
    },
    match,
  );
}

const summary = (d: AsyncDecision | "not async") =>
  d === "not async"
    ? d
    : d.kind === "refuse"
      ? `refuse ${d.code}`
      : d.kind === "forward"
        ? `forward ${d.planes.map((p) => p.name).join(",")}`
        : "async";

const REG = `model-aaaaaaa1-prod-eu.${DOMAIN}`;
const STD = `model-aaaaaaa1.${DOMAIN}`;

describe("decideAsync", () => {
  const cases: Array<[string, string, string, string, string, Parameters<typeof decide>[4], string]> = [
    ["queued on a plane of the region", "eu-2", REG, "POST", "/async_predict", { ready: ["d-eu"] }, "async"],
    [
      "queued in region with no replica ready yet (waits for one)",
      "eu-1",
      REG,
      "POST",
      "/async_predict",
      {},
      "async",
    ],
    [
      "regional hostname on another region's plane: 421",
      "us-1",
      REG,
      "POST",
      "/async_predict",
      {},
      "refuse misdirected_request",
    ],
    [
      "standard form at the global ingress: handed into eu, ready plane first",
      "us-1",
      STD,
      "POST",
      "/environments/prod-eu/async_predict",
      {},
      "forward eu-2,eu-1",
    ],
    [
      "standard form of a cold regional environment: still handed into eu",
      "us-1",
      STD,
      "POST",
      "/environments/eu-cold/async_predict",
      {},
      "forward eu-1,eu-2",
    ],
    [
      "standard form under deny: refused as predict is",
      "us-1",
      STD,
      "POST",
      "/environments/eu-deny/async_predict",
      {},
      "refuse standard_endpoint_denied",
    ],
    [
      "a hop from outside the region is not handed on again",
      "uk-1",
      STD,
      "POST",
      "/environments/prod-eu/async_predict",
      { from: "us-1" },
      "refuse misdirected_request",
    ],
    [
      "unrestricted: queued where it arrives when the replica is here",
      "us-1",
      STD,
      "POST",
      "/production/async_predict",
      { ready: ["d-prod"] },
      "async",
    ],
    [
      "unrestricted, ready only in another region: handed there (no residency is promised)",
      "us-1",
      STD,
      "POST",
      "/production/async_predict",
      {},
      "forward uk-1",
    ],
    [
      "development deployment, unrestricted, ready nowhere: queued here to wait",
      "us-1",
      STD,
      "POST",
      "/development/async_predict",
      {},
      "async",
    ],
    [
      "a deployment by id follows its restriction",
      "us-1",
      STD,
      "POST",
      "/deployment/d-eu/async_predict",
      {},
      "forward eu-2,eu-1",
    ],
    [
      "a key bound to uk may not put a request into eu",
      "us-1",
      STD,
      "POST",
      "/environments/prod-eu/async_predict",
      { key: "uk-key" },
      "refuse key_region_forbidden",
    ],
    [
      "another team's key: 404, nothing about the model",
      "eu-1",
      REG,
      "POST",
      "/async_predict",
      { key: "k2" },
      "refuse model_not_found",
    ],
    ["no key: 401", "eu-1", REG, "POST", "/async_predict", { key: "nope" }, "refuse unauthorized"],
    ["GET on async_predict: 405", "eu-1", REG, "GET", "/async_predict", {}, "refuse method_not_allowed"],
    ["queue status on the regional form", "eu-1", REG, "GET", "/async_queue_status", {}, "async"],
    [
      "queue status of a regional environment at the global ingress",
      "us-1",
      STD,
      "GET",
      "/environments/prod-eu/async_queue_status",
      {},
      "forward eu-2,eu-1",
    ],
    ["predict itself is not an async path", "eu-1", REG, "POST", "/predict", {}, "not async"],
  ];
  for (const [name, plane, host, method, path, opts, want] of cases) {
    it(name, () => expect(summary(decide(plane, host, method, path, opts))).toBe(want));
  }

  const euId = newAsyncRequestId("eu-1", new Uint8Array(12));
  const ukId = newAsyncRequestId("uk-1", new Uint8Array(12));
  const requestCases: Array<[string, string, string, string, string, Parameters<typeof decide>[4], string]> =
    [
      ["status on the plane that holds it", "eu-1", REG, "GET", `/async_request/${euId}`, {}, "async"],
      [
        "status at the global ingress: to the plane the id names",
        "us-1",
        STD,
        "GET",
        `/async_request/${euId}`,
        {},
        "forward eu-1",
      ],
      ["cancel at the global ingress", "us-1", STD, "DELETE", `/async_request/${euId}`, {}, "forward eu-1"],
      [
        "a regional hostname never reaches a plane outside its region",
        "eu-1",
        REG,
        "GET",
        `/async_request/${ukId}`,
        {},
        "refuse async_request_not_found",
      ],
      [
        "a hop is not handed on again",
        "eu-2",
        STD,
        "GET",
        `/async_request/${euId}`,
        { from: "us-1" },
        "refuse async_request_not_found",
      ],
      ["a malformed id", "us-1", STD, "GET", "/async_request/..%2f", {}, "refuse async_request_not_found"],
      [
        "a key bound to uk may not read eu's queue",
        "us-1",
        STD,
        "GET",
        `/async_request/${euId}`,
        { key: "uk-key" },
        "refuse key_region_forbidden",
      ],
      [
        "another team's key",
        "us-1",
        STD,
        "GET",
        `/async_request/${euId}`,
        { key: "k2" },
        "refuse model_not_found",
      ],
      [
        "POST is not a status call",
        "eu-1",
        REG,
        "POST",
        `/async_request/${euId}`,
        {},
        "refuse method_not_allowed",
      ],
    ];
  for (const [name, plane, host, method, path, opts, want] of requestCases) {
    it(name, () => expect(summary(decide(plane, host, method, path, opts))).toBe(want));
  }

  it("never queues a restricted environment's request outside its region, nor hands it there", () => {
    const envs = ["prod-eu", "eu-deny", "eu-cold"];
    fc.assert(
      fc.property(
        fc.constantFrom(...PLANES.map((p) => p.name)),
        fc.constantFrom(...envs),
        fc.boolean(),
        fc.option(fc.constantFrom(...PLANES.map((p) => p.name)), { nil: undefined }),
        fc.subarray(["d-eu", "d-cold"]),
        (plane, env, regionalForm, from, ready) => {
          const host = regionalForm ? `model-aaaaaaa1-${env}.${DOMAIN}` : STD;
          const path = regionalForm ? "/async_predict" : `/environments/${env}/async_predict`;
          const d = decide(plane, host, "POST", path, {
            ready,
            ...(from !== undefined && from !== plane ? { from } : {}),
          });
          if (d === "not async") throw new Error("an async path");
          if (d.kind === "async") expect(INDEX.get(plane)!.plane.region).toBe("eu");
          if (d.kind === "forward") for (const p of d.planes) expect(p.region).toBe("eu");
        },
      ),
    );
  });
});

describe("matchAsyncPath", () => {
  it("refuses path-based async routes on a regional hostname", () => {
    expect(matchAsyncPath("regional", "/environments/prod-eu/async_predict")).toEqual({
      refuse: "regional_path_not_allowed",
      message: null,
    });
  });
  it("leaves other paths to predict", () => {
    expect(matchAsyncPath("standard", "/environments/prod-eu/predict")).toBeNull();
    expect(matchAsyncPath("standard", "/async_predict")).toBeNull();
    expect(matchAsyncPath("standard", "/environments/a/b/async_predict")).toBeNull();
  });
});

describe("resolveAsyncTarget", () => {
  const snap = snapshotFor("eu-1");
  it("runs an environment's request on what the environment serves now", () => {
    expect(resolveAsyncTarget(snap, "eu", "aaaaaaa1", { kind: "environment", name: "prod-eu" })).toEqual({
      ok: true,
      deploymentId: "d-eu",
      wakeable: false,
    });
  });
  it("fails, never moves, a request whose target is now restricted to another region", () => {
    const r = resolveAsyncTarget(snap, "uk", "aaaaaaa1", { kind: "environment", name: "prod-eu" });
    expect(r).toMatchObject({ ok: false, final: true, code: "MODEL_UNAVAILABLE" });
  });
  it("fails a request whose model or environment is gone", () => {
    expect(resolveAsyncTarget(snap, "eu", "zzzzzzz9", { kind: "development" })).toMatchObject({
      final: true,
      code: "MODEL_DOES_NOT_EXIST",
    });
    expect(resolveAsyncTarget(snap, "eu", "aaaaaaa1", { kind: "environment", name: "gone" })).toMatchObject({
      final: true,
    });
  });
  it("waits while the plane has no snapshot", () => {
    expect(resolveAsyncTarget(null, "eu", "aaaaaaa1", { kind: "development" })).toMatchObject({
      ok: false,
      final: false,
    });
  });
});
