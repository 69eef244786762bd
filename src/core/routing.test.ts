// Routing decisions: a table of cases for every rule of DESIGN.md §2.2–2.3 and §3, and properties
// (a regional decision never names a plane outside the environment's region; decisions are total).
import { createHash } from "node:crypto";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import type { ApiKeyCategory, StandardEndpointPolicy } from "./domain.ts";
import { parseHost } from "./host.ts";
import { decideRoute, indexSnapshot, type RouteDecision, type RouteIndex } from "./routing.ts";
import type { PlaneRef, PlaneSnapshot } from "./snapshot.ts";

const sha = (key: string) => createHash("sha256").update(key).digest("hex");
const DOMAIN = "meridian.test";
const PLANES: PlaneRef[] = [
  { name: "us-1", region: "us", ingress: ["127.0.1.1:80"], global_ingress: true },
  { name: "us-2", region: "us", ingress: ["127.0.1.2:80"], global_ingress: false },
  { name: "eu-1", region: "eu", ingress: ["127.0.2.1:80"], global_ingress: false },
  { name: "eu-2", region: "eu", ingress: ["127.0.2.2:80"], global_ingress: false },
  { name: "uk-1", region: "uk", ingress: ["127.0.3.1:80"], global_ingress: false },
  { name: "eu-x", region: "eu", ingress: [], global_ingress: false },
];
const env = (
  name: string,
  deployment_id: string | null,
  region: string | null,
  p: StandardEndpointPolicy,
) => ({
  name,
  deployment_id,
  region,
  standard_endpoint_policy: p,
});
const dep = (id: string, region: string | null, ready_planes: string[]) => ({ id, region, ready_planes });
const key = (
  k: string,
  team_id: string,
  category: ApiKeyCategory,
  model_ids: string[] | null = null,
  regions?: string[] | null,
) => ({
  hash: sha(k),
  prefix: k.slice(0, 4),
  team_id,
  category,
  model_ids,
  // Left out unless given: a snapshot from a control plane older than region-bound keys has no field.
  ...(regions === undefined ? {} : { regions }),
});

function snapshotFor(plane: string): PlaneSnapshot {
  return {
    revision: 7,
    domain: `${DOMAIN}.`,
    plane: PLANES.find((p) => p.name === plane)!,
    planes: PLANES,
    plane_keys: [],
    control_key: { key_id: "0123456789abcdef", public_key: "A".repeat(43) },
    api_keys: [
      key("personal1", "t1", "PERSONAL"),
      key("manage1", "t1", "WORKSPACE_MANAGE_ALL"),
      key("invoke-m1", "t1", "WORKSPACE_INVOKE", ["aaaaaaa1"]),
      key("invoke-other", "t1", "WORKSPACE_INVOKE", ["ccccccc3"]),
      key("invoke-all", "t1", "WORKSPACE_INVOKE", null),
      key("metrics1", "t1", "WORKSPACE_EXPORT_METRICS"),
      key("keys1", "t1", "WORKSPACE_MANAGE_API_KEYS"),
      key("personal2", "t2", "PERSONAL"),
      key("eu-bound", "t1", "PERSONAL", null, ["eu"]),
      key("us-eu-bound", "t1", "WORKSPACE_INVOKE", null, ["us", "eu"]),
      key("uk-bound", "t1", "WORKSPACE_MANAGE_ALL", null, ["uk"]),
      key("us-bound", "t1", "PERSONAL", null, ["us"]),
      key("everywhere", "t1", "PERSONAL", null, null),
    ],
    models: [
      {
        id: "aaaaaaa1",
        team_id: "t1",
        name: "m1",
        development_deployment_id: "d-dev",
        environments: [
          env("production", "d-prod", null, "allow"),
          env("prod-eu", "d-eu", "eu", "allow"),
          env("eu-warn", "d-euw", "eu", "warn"),
          env("eu-deny", "d-eud", "eu", "deny"),
          env("staging", null, null, "allow"),
          env("regional-empty", null, "eu", "allow"),
          env("uk-only", "d-uk", "uk", "allow"),
          env("moving", "d-moving", "eu", "allow"),
        ],
        deployments: [
          dep("d-prod", null, ["us-2", "eu-1"]),
          dep("d-eu", "eu", ["eu-1", "eu-2"]),
          dep("d-euw", "eu", ["eu-2"]),
          dep("d-eud", "eu", ["eu-1"]),
          dep("d-dev", null, ["us-2"]),
          dep("d-old", "eu", ["eu-1"]),
          dep("d-uk", "uk", []),
          // Mid-move (guarantee 4): ready on a us plane and an eu plane; the regional endpoint uses eu only.
          dep("d-moving", null, ["us-2", "eu-2", "ghost", "eu-x"]),
        ],
      },
      {
        id: "bbbbbbb2",
        team_id: "t2",
        name: "m2",
        development_deployment_id: null,
        environments: [env("production", "d2", null, "allow")],
        deployments: [dep("d2", null, ["us-1"])],
      },
    ],
    replicas: [],
  };
}

const indexes = new Map<string, RouteIndex>(PLANES.map((p) => [p.name, indexSnapshot(snapshotFor(p.name))]));

interface Case {
  name: string;
  plane?: string;
  host: string;
  method?: string;
  path: string;
  key?: string | null;
  ready?: string[];
  from?: string | null;
}

function decide(c: Case): RouteDecision {
  const index = indexes.get(c.plane ?? "us-1")!;
  const parsed = parseHost(`${c.host}.${DOMAIN}`, DOMAIN);
  if (!parsed.ok) throw new Error(`bad host in test: ${c.host}`);
  return decideRoute(index, {
    host: parsed.host,
    method: c.method ?? "POST",
    path: c.path,
    keyHash: c.key === null ? null : sha(c.key ?? "personal1"),
    forwardedFrom: c.from ?? null,
    localReady: new Set(c.ready ?? []),
    scheme: "https",
  });
}

function summary(d: RouteDecision): string {
  switch (d.kind) {
    case "serve":
      return `serve ${d.context.deploymentId}${d.warning ? " +warning" : ""}`;
    case "forward":
      return `forward ${d.planes.map((p) => p.name).join(",")} ${d.context.deploymentId}${d.warning ? " +warning" : ""}`;
    case "refuse":
      return `refuse ${d.code}`;
  }
}

const M1 = "model-aaaaaaa1";
const cases: Array<[Case, string]> = [
  // Standard host, every path form.
  [
    { name: "production served locally", host: M1, path: "/production/predict", ready: ["d-prod"] },
    "serve d-prod",
  ],
  [
    { name: "production forwarded, own region first", host: M1, path: "/production/predict" },
    "forward us-2,eu-1 d-prod",
  ],
  [
    { name: "production from eu prefers eu", plane: "eu-2", host: M1, path: "/production/predict" },
    "forward eu-1,us-2 d-prod",
  ],
  [
    { name: "environment path", host: M1, path: "/environments/production/predict" },
    "forward us-2,eu-1 d-prod",
  ],
  [{ name: "development path", host: M1, path: "/development/predict" }, "forward us-2 d-dev"],
  [
    { name: "deployment path", host: M1, path: "/deployment/d-dev/predict", plane: "us-2", ready: ["d-dev"] },
    "serve d-dev",
  ],
  [
    { name: "unknown environment", host: M1, path: "/environments/nope/predict" },
    "refuse environment_not_found",
  ],
  [
    { name: "development is not an environment", host: M1, path: "/environments/development/predict" },
    "refuse environment_not_found",
  ],
  [{ name: "unknown deployment", host: M1, path: "/deployment/zzz/predict" }, "refuse deployment_not_found"],
  [
    { name: "environment without deployment", host: M1, path: "/environments/staging/predict" },
    "refuse deployment_not_found",
  ],
  [
    {
      name: "no development deployment",
      host: "model-bbbbbbb2",
      key: "personal2",
      path: "/development/predict",
    },
    "refuse deployment_not_found",
  ],
  [
    { name: "nothing ready anywhere", host: M1, path: "/environments/uk-only/predict" },
    "refuse model_unavailable",
  ],
  [{ name: "bare /predict on standard host", host: M1, path: "/predict" }, "refuse route_not_found"],
  [{ name: "unknown path", host: M1, path: "/v1/models/model:predict" }, "refuse route_not_found"],
  [
    { name: "trailing slash is not a route", host: M1, path: "/production/predict/" },
    "refuse route_not_found",
  ],
  [
    { name: "later endpoints are not served yet", host: M1, path: "/production/async_predict" },
    "refuse route_not_found",
  ],
  [
    { name: "GET is not allowed", host: M1, method: "GET", path: "/production/predict" },
    "refuse method_not_allowed",
  ],
  [
    {
      name: "PUT is not allowed (regional)",
      plane: "eu-1",
      host: `${M1}-prod-eu`,
      method: "PUT",
      path: "/predict",
    },
    "refuse method_not_allowed",
  ],
  // Standard endpoint policies of a region-restricted environment.
  [
    { name: "allow: served, eu planes", host: M1, path: "/environments/prod-eu/predict" },
    "forward eu-1,eu-2 d-eu",
  ],
  [
    { name: "warn: served with warning", host: M1, path: "/environments/eu-warn/predict" },
    "forward eu-2 d-euw +warning",
  ],
  [
    { name: "deny: refused", host: M1, path: "/environments/eu-deny/predict", ready: ["d-eud"] },
    "refuse standard_endpoint_denied",
  ],
  [
    { name: "deny follows the deployment path", host: M1, path: "/deployment/d-eud/predict" },
    "refuse standard_endpoint_denied",
  ],
  [
    { name: "warn follows the deployment path", host: M1, path: "/deployment/d-euw/predict" },
    "forward eu-2 d-euw +warning",
  ],
  [
    {
      name: "unbound regional deployment takes the strictest policy",
      host: M1,
      path: "/deployment/d-old/predict",
    },
    "refuse standard_endpoint_denied",
  ],
  [
    {
      name: "standard host of regional env: local out-of-region replica loses to in-region plane",
      plane: "us-2",
      host: M1,
      path: "/environments/moving/predict",
      ready: ["d-moving"],
    },
    "forward eu-2 d-moving",
  ],
  // Regional host.
  [
    {
      name: "regional served locally in region",
      plane: "eu-1",
      host: `${M1}-prod-eu`,
      path: "/predict",
      ready: ["d-eu"],
    },
    "serve d-eu",
  ],
  [
    { name: "regional forwarded in region", plane: "eu-1", host: `${M1}-eu-warn`, path: "/predict" },
    "forward eu-2 d-euw",
  ],
  [
    {
      name: "regional: no warning on the regional host",
      plane: "eu-2",
      host: `${M1}-eu-warn`,
      path: "/predict",
      ready: ["d-euw"],
    },
    "serve d-euw",
  ],
  [
    {
      name: "regional: deny does not apply to the regional host",
      plane: "eu-1",
      host: `${M1}-eu-deny`,
      path: "/predict",
      ready: ["d-eud"],
    },
    "serve d-eud",
  ],
  [
    {
      name: "regional: skips out-of-region, unknown and ingress-less planes",
      plane: "eu-1",
      host: `${M1}-moving`,
      path: "/predict",
    },
    "forward eu-2 d-moving",
  ],
  [
    {
      name: "regional uk environment reaching an eu plane",
      plane: "eu-1",
      host: `${M1}-uk-only`,
      path: "/predict",
    },
    "refuse misdirected_request",
  ],
  [
    { name: "regional in region with nothing ready", plane: "uk-1", host: `${M1}-uk-only`, path: "/predict" },
    "refuse model_unavailable",
  ],
  [
    {
      name: "regional arriving at another region",
      plane: "us-1",
      host: `${M1}-prod-eu`,
      path: "/predict",
      ready: ["d-eu"],
    },
    "refuse misdirected_request",
  ],
  [
    {
      name: "regional handed over from another region",
      plane: "eu-1",
      host: `${M1}-prod-eu`,
      path: "/predict",
      ready: ["d-eu"],
      from: "us-1",
    },
    "refuse misdirected_request",
  ],
  [
    {
      name: "regional env without deployment",
      plane: "eu-1",
      host: `${M1}-regional-empty`,
      path: "/predict",
    },
    "refuse deployment_not_found",
  ],
  [
    { name: "regional host of unrestricted env", plane: "eu-1", host: `${M1}-production`, path: "/predict" },
    "refuse environment_not_regional",
  ],
  [
    { name: "regional host of unknown env", plane: "eu-1", host: `${M1}-nope`, path: "/predict" },
    "refuse environment_not_found",
  ],
  [
    {
      name: "regional: /environments path refused",
      plane: "eu-1",
      host: `${M1}-prod-eu`,
      path: "/environments/prod-eu/predict",
    },
    "refuse regional_path_not_allowed",
  ],
  [
    {
      name: "regional: /production path refused",
      plane: "eu-1",
      host: `${M1}-prod-eu`,
      path: "/production/predict",
    },
    "refuse regional_path_not_allowed",
  ],
  [
    {
      name: "regional: /development path refused",
      plane: "eu-1",
      host: `${M1}-prod-eu`,
      path: "/development/predict",
    },
    "refuse regional_path_not_allowed",
  ],
  [
    {
      name: "regional: /deployment path refused",
      plane: "eu-1",
      host: `${M1}-prod-eu`,
      path: "/deployment/d-eu/predict",
    },
    "refuse regional_path_not_allowed",
  ],
  [
    {
      name: "regional: path refused before auth",
      plane: "eu-1",
      host: `${M1}-prod-eu`,
      path: "/production/predict",
      key: null,
    },
    "refuse regional_path_not_allowed",
  ],
  [
    { name: "regional: other path", plane: "eu-1", host: `${M1}-prod-eu`, path: "/wat" },
    "refuse route_not_found",
  ],
  // One hop at most.
  [
    {
      name: "forwarded request is not forwarded again",
      plane: "eu-1",
      host: `${M1}-eu-warn`,
      path: "/predict",
      from: "eu-2",
    },
    "refuse model_unavailable",
  ],
  [
    {
      name: "forwarded request served locally",
      plane: "eu-2",
      host: `${M1}-eu-warn`,
      path: "/predict",
      from: "eu-1",
      ready: ["d-euw"],
    },
    "serve d-euw",
  ],
  [
    {
      name: "forwarded standard request not forwarded again",
      host: M1,
      path: "/production/predict",
      from: "eu-1",
    },
    "refuse model_unavailable",
  ],
  // Authentication and authorization.
  [{ name: "no key", host: M1, path: "/production/predict", key: null }, "refuse unauthorized"],
  [{ name: "unknown key", host: M1, path: "/production/predict", key: "wrong" }, "refuse unauthorized"],
  [
    {
      name: "unknown key on unknown model",
      host: "model-zzzzzzzz",
      path: "/production/predict",
      key: "wrong",
    },
    "refuse unauthorized",
  ],
  [
    { name: "manage-all key", host: M1, path: "/production/predict", key: "manage1", ready: ["d-prod"] },
    "serve d-prod",
  ],
  [
    {
      name: "scoped invoke key, in scope",
      host: M1,
      path: "/production/predict",
      key: "invoke-m1",
      ready: ["d-prod"],
    },
    "serve d-prod",
  ],
  [
    {
      name: "unscoped invoke key",
      host: M1,
      path: "/production/predict",
      key: "invoke-all",
      ready: ["d-prod"],
    },
    "serve d-prod",
  ],
  [
    { name: "scoped invoke key, out of scope", host: M1, path: "/production/predict", key: "invoke-other" },
    "refuse model_not_found",
  ],
  [
    { name: "export-metrics key may not invoke", host: M1, path: "/production/predict", key: "metrics1" },
    "refuse forbidden",
  ],
  [
    { name: "manage-api-keys key may not invoke", host: M1, path: "/production/predict", key: "keys1" },
    "refuse forbidden",
  ],
  [
    { name: "other team's model is not found", host: "model-bbbbbbb2", path: "/production/predict" },
    "refuse model_not_found",
  ],
  [
    { name: "other team's key on our model", host: M1, path: "/production/predict", key: "personal2" },
    "refuse model_not_found",
  ],
  [{ name: "missing model", host: "model-zzzzzzzz", path: "/production/predict" }, "refuse model_not_found"],
  [
    {
      name: "regional: other team",
      plane: "eu-1",
      host: `${M1}-prod-eu`,
      path: "/predict",
      key: "personal2",
    },
    "refuse model_not_found",
  ],
  [
    { name: "regional: no key", plane: "eu-1", host: `${M1}-prod-eu`, path: "/predict", key: null },
    "refuse unauthorized",
  ],
];

describe("decideRoute", () => {
  it.each(cases.map(([c, want]) => [c.name, c, want] as const))("%s", (_name, c, want) => {
    expect(summary(decide(c))).toBe(want);
  });

  it("names the regional URL in a denial and a warning", () => {
    const deny = decide({ name: "", host: M1, path: "/environments/eu-deny/predict" });
    expect(deny).toMatchObject({
      kind: "refuse",
      code: "standard_endpoint_denied",
      detail: { regional_url: `https://${M1}-eu-deny.${DOMAIN}/predict`, region: "eu" },
    });
    const warn = decide({ name: "", host: M1, path: "/environments/eu-warn/predict" });
    expect(warn.kind === "forward" && warn.warning).toBe(
      `299 - "Environment eu-warn is restricted to region eu; only https://${M1}-eu-warn.${DOMAIN}/predict guarantees that"`,
    );
  });

  it("carries the context for audit even on refusals", () => {
    const d = decide({ name: "", plane: "us-1", host: `${M1}-prod-eu`, path: "/predict" });
    expect(d.context).toEqual({
      form: "regional",
      modelId: "aaaaaaa1",
      environment: "prod-eu",
      deploymentId: null,
      region: "eu",
    });
    const s = decide({ name: "", host: M1, path: "/deployment/d-eu/predict" });
    expect(s.context).toMatchObject({ environment: "prod-eu", deploymentId: "d-eu", region: "eu" });
  });

  // DESIGN.md §2.8: what a caller invents never becomes a name in the context (audit, metrics, counts).
  const unresolved: Array<[string, Case, { modelId: string | null; environment: string | null }]> = [
    [
      "no key, a guessed environment",
      { name: "", host: M1, path: "/environments/guess-1/predict", key: null },
      { modelId: null, environment: null },
    ],
    [
      "a bad key, a real environment",
      { name: "", host: M1, path: "/environments/prod-eu/predict", key: "nope" },
      { modelId: null, environment: null },
    ],
    [
      "no key, a regional host",
      { name: "", host: `${M1}-guess-2`, path: "/predict", key: null },
      { modelId: null, environment: null },
    ],
    [
      "a key of another team",
      { name: "", host: "model-bbbbbbb2", path: "/production/predict" },
      { modelId: null, environment: null },
    ],
    [
      "a key that cannot invoke",
      { name: "", host: M1, path: "/production/predict", key: "metrics1" },
      { modelId: null, environment: null },
    ],
    [
      "a model that does not exist",
      { name: "", host: "model-zzzzzzz9", path: "/environments/x/predict" },
      { modelId: null, environment: null },
    ],
    [
      "an environment that does not exist",
      { name: "", host: M1, path: "/environments/guess-3/predict" },
      { modelId: "aaaaaaa1", environment: null },
    ],
    [
      "a regional environment that does not exist",
      { name: "", host: `${M1}-guess-4`, path: "/predict" },
      { modelId: "aaaaaaa1", environment: null },
    ],
    [
      "a wrong method",
      { name: "", host: M1, path: "/environments/guess-5/predict", method: "GET" },
      { modelId: null, environment: null },
    ],
  ];
  it.each(unresolved)("names nothing it did not resolve: %s", (_, c, want) => {
    const d = decide(c);
    expect(d.kind).toBe("refuse");
    expect(d.context).toMatchObject(want);
  });
});

// Region-bound API keys: such a key authenticates inference only on planes of its regions, is never
// handed to a plane outside them, and a plane re-checks the plane that handed a request over.
const keyCases: Array<[Case, string]> = [
  [
    {
      name: "regional, served in region",
      plane: "eu-1",
      host: `${M1}-prod-eu`,
      path: "/predict",
      key: "eu-bound",
      ready: ["d-eu"],
    },
    "serve d-eu",
  ],
  [
    {
      name: "regional, forwarded within the region",
      plane: "eu-1",
      host: `${M1}-prod-eu`,
      path: "/predict",
      key: "eu-bound",
    },
    "forward eu-2 d-eu",
  ],
  [
    {
      name: "regional host at a plane outside the key's regions (before 421)",
      plane: "us-1",
      host: `${M1}-prod-eu`,
      path: "/predict",
      key: "eu-bound",
    },
    "refuse key_region_forbidden",
  ],
  [
    {
      name: "standard host at the global ingress outside the key's regions",
      plane: "us-1",
      host: M1,
      path: "/environments/prod-eu/predict",
      key: "eu-bound",
    },
    "refuse key_region_forbidden",
  ],
  [
    {
      name: "standard host inside the key's regions: out-of-region planes dropped",
      plane: "eu-2",
      host: M1,
      path: "/production/predict",
      key: "eu-bound",
    },
    "forward eu-1 d-prod",
  ],
  [
    {
      name: "standard host, ready only outside the key's regions",
      plane: "eu-1",
      host: M1,
      path: "/development/predict",
      key: "eu-bound",
    },
    "refuse key_region_forbidden",
  ],
  [
    {
      name: "standard host, a better plane outside the key's regions: served here instead",
      plane: "us-2",
      host: M1,
      path: "/environments/moving/predict",
      key: "us-bound",
      ready: ["d-moving"],
    },
    "serve d-moving",
  ],
  [
    {
      name: "deployment path in region",
      plane: "eu-1",
      host: M1,
      path: "/deployment/d-eu/predict",
      key: "eu-bound",
      ready: ["d-eu"],
    },
    "serve d-eu",
  ],
  [
    {
      name: "key of two regions, entering at one, forwarded to the other",
      plane: "us-1",
      host: M1,
      path: "/environments/prod-eu/predict",
      key: "us-eu-bound",
    },
    "forward eu-1,eu-2 d-eu",
  ],
  [
    {
      name: "key of two regions at a plane of a third",
      plane: "uk-1",
      host: M1,
      path: "/environments/uk-only/predict",
      key: "us-eu-bound",
    },
    "refuse key_region_forbidden",
  ],
  [
    {
      name: "nothing ready anywhere stays 503",
      plane: "uk-1",
      host: M1,
      path: "/environments/uk-only/predict",
      key: "uk-bound",
    },
    "refuse model_unavailable",
  ],
  [
    {
      name: "received over a hop from a plane outside the key's regions",
      plane: "eu-1",
      host: M1,
      path: "/environments/prod-eu/predict",
      key: "eu-bound",
      ready: ["d-eu"],
      from: "us-1",
    },
    "refuse key_region_forbidden",
  ],
  [
    {
      name: "received over a hop within the key's regions",
      plane: "eu-2",
      host: `${M1}-prod-eu`,
      path: "/predict",
      key: "eu-bound",
      ready: ["d-eu"],
      from: "eu-1",
    },
    "serve d-eu",
  ],
  [
    {
      name: "regions null is every region",
      plane: "us-1",
      host: M1,
      path: "/environments/prod-eu/predict",
      key: "everywhere",
    },
    "forward eu-1,eu-2 d-eu",
  ],
  [
    {
      name: "a non-invoke key is still 403 forbidden",
      plane: "us-1",
      host: M1,
      path: "/production/predict",
      key: "metrics1",
    },
    "refuse forbidden",
  ],
];

describe("decideRoute with region-bound API keys", () => {
  it.each(keyCases.map(([c, want]) => [c.name, c, want] as const))("%s", (_name, c, want) => {
    expect(summary(decide(c))).toBe(want);
  });

  it("names the plane's region and the key's regions, and learns nothing about the model", () => {
    const d = decide({
      name: "",
      plane: "us-1",
      host: M1,
      path: "/environments/prod-eu/predict",
      key: "eu-bound",
    });
    expect(d).toMatchObject({
      kind: "refuse",
      code: "key_region_forbidden",
      detail: { plane_region: "us", key_regions: ["eu"] },
    });
    expect(d.context).toMatchObject({ modelId: null, environment: null, deploymentId: null });
    // The same answer for a model that does not exist: a foreign plane tells such a key nothing.
    const ghost = decide({
      name: "",
      plane: "us-1",
      host: "model-zzzzzzz9",
      path: "/production/predict",
      key: "eu-bound",
    });
    expect(ghost).toMatchObject({ kind: "refuse", code: "key_region_forbidden" });
  });

  it("names the regions the request would have been forwarded to", () => {
    const d = decide({ name: "", plane: "eu-1", host: M1, path: "/development/predict", key: "eu-bound" });
    expect(d).toMatchObject({
      kind: "refuse",
      code: "key_region_forbidden",
      detail: { plane_region: "eu", key_regions: ["eu"], target_regions: ["us"] },
    });
  });

  it("names the region of the plane that handed the request over", () => {
    const d = decide({
      name: "",
      plane: "eu-1",
      host: M1,
      path: "/environments/prod-eu/predict",
      key: "eu-bound",
      ready: ["d-eu"],
      from: "us-1",
    });
    expect(d).toMatchObject({
      code: "key_region_forbidden",
      detail: { plane_region: "eu", key_regions: ["eu"], forwarded_from_region: "us" },
    });
  });

  it("never serves on, nor forwards to, a plane outside the key's regions", () => {
    const regions = ["us", "eu", "uk", "au"];
    fc.assert(
      fc.property(
        fc.constantFrom(...PLANES.map((p) => p.name)),
        fc.subarray(regions, { minLength: 1 }),
        fc.constantFrom(
          `${M1}-prod-eu /predict`,
          `${M1}-moving /predict`,
          `${M1} /production/predict`,
          `${M1} /development/predict`,
          `${M1} /environments/prod-eu/predict`,
          `${M1} /environments/moving/predict`,
          `${M1} /deployment/d-moving/predict`,
        ),
        fc.subarray(["d-prod", "d-eu", "d-dev", "d-moving"]),
        fc.option(fc.constantFrom(...PLANES.map((p) => p.name)), { nil: null }),
        (planeName, keyRegions, target, ready, from) => {
          const snap = snapshotFor(planeName);
          snap.api_keys.push(key("prop-key", "t1", "PERSONAL", null, keyRegions));
          const [host, path] = target.split(" ") as [string, string];
          const parsed = parseHost(`${host}.${DOMAIN}`, DOMAIN);
          if (!parsed.ok) throw new Error("bad host");
          const d = decideRoute(indexSnapshot(snap), {
            host: parsed.host,
            method: "POST",
            path,
            keyHash: sha("prop-key"),
            forwardedFrom: from === planeName ? null : from,
            localReady: new Set(ready),
            scheme: "https",
          });
          const self = PLANES.find((p) => p.name === planeName)!;
          const fromRegion = PLANES.find((p) => p.name === from && from !== planeName)?.region;
          if (
            !keyRegions.includes(self.region) ||
            (fromRegion !== undefined && !keyRegions.includes(fromRegion))
          ) {
            expect(d).toMatchObject({ kind: "refuse", code: "key_region_forbidden" });
          }
          if (d.kind === "serve") expect(keyRegions).toContain(self.region);
          if (d.kind === "forward") for (const p of d.planes) expect(keyRegions).toContain(p.region);
        },
      ),
      { numRuns: 1500 },
    );
  });
});

describe("decideRoute properties", () => {
  const planeNames = PLANES.map((p) => p.name);
  const regions = ["us", "eu", "uk", "au"];
  const arbSnapshot = fc
    .record({
      self: fc.constantFrom(...planeNames),
      envs: fc.array(
        fc.record({
          region: fc.option(fc.constantFrom(...regions), { nil: null }),
          policy: fc.constantFrom<StandardEndpointPolicy>("allow", "warn", "deny"),
          ready: fc.subarray([...planeNames, "ghost"]),
        }),
        { minLength: 1, maxLength: 5 },
      ),
    })
    .map(({ self, envs }) => {
      const snap = snapshotFor(self);
      const model = snap.models[0]!;
      model.environments = envs.map((e, i) => env(`env-${i}`, `dep-${i}`, e.region, e.policy));
      model.deployments = envs.map((e, i) => dep(`dep-${i}`, e.region, e.ready));
      return { snap, count: envs.length };
    });

  it("a regional decision never names a plane outside the environment's region, nor serves outside it", () => {
    fc.assert(
      fc.property(
        arbSnapshot,
        fc.nat(),
        fc.subarray(["dep-0", "dep-1", "dep-2", "dep-3", "dep-4"]),
        fc.option(fc.constantFrom(...planeNames), { nil: null }),
        ({ snap, count }, n, ready, from) => {
          const index = indexSnapshot(snap);
          const i = n % count;
          const envRoute = snap.models[0]!.environments[i]!;
          const parsed = parseHost(`${M1}-env-${i}.${DOMAIN}`, DOMAIN);
          if (!parsed.ok) throw new Error("bad host");
          const d = decideRoute(index, {
            host: parsed.host,
            method: "POST",
            path: "/predict",
            keyHash: sha("personal1"),
            forwardedFrom: from,
            localReady: new Set(ready),
            scheme: "http",
          });
          if (envRoute.region === null) {
            expect(d).toMatchObject({ kind: "refuse", code: "environment_not_regional" });
            return;
          }
          if (d.kind === "forward") {
            expect(from).toBeNull();
            for (const p of d.planes) expect(p.region).toBe(envRoute.region);
            expect(d.planes.map((p) => p.name)).not.toContain(snap.plane.name);
          }
          if (d.kind === "serve") {
            expect(snap.plane.region).toBe(envRoute.region);
            expect(ready).toContain(d.context.deploymentId);
          }
          if (snap.plane.region !== envRoute.region) {
            expect(d).toMatchObject({ kind: "refuse", code: "misdirected_request" });
          }
        },
      ),
      { numRuns: 1500 },
    );
  });

  it("every request gets a decision, and forwards never loop back to this plane", () => {
    fc.assert(
      fc.property(
        arbSnapshot,
        fc.constantFrom("POST", "GET", "DELETE"),
        fc.constantFrom(
          "/predict",
          "/production/predict",
          "/development/predict",
          "/environments/env-0/predict",
          "/environments/env-1/predict",
          "/deployment/dep-0/predict",
          "/x",
          "",
        ),
        fc.constantFrom(M1, `${M1}-env-0`, `${M1}-env-1`, "model-bbbbbbb2"),
        fc.constantFrom("personal1", "personal2", "metrics1", "invoke-m1", null),
        ({ snap }, method, path, host, k) => {
          const parsed = parseHost(`${host}.${DOMAIN}`, DOMAIN);
          if (!parsed.ok) throw new Error("bad host");
          const d = decideRoute(indexSnapshot(snap), {
            host: parsed.host,
            method,
            path,
            keyHash: k === null ? null : sha(k),
            forwardedFrom: null,
            localReady: new Set(["dep-0"]),
            scheme: "http",
          });
          expect(["serve", "forward", "refuse"]).toContain(d.kind);
          if (d.kind === "forward") {
            expect(d.planes.length).toBeGreaterThan(0);
            expect(d.planes.map((p) => p.name)).not.toContain(snap.plane.name);
          }
          if (k === null && d.kind !== "refuse") throw new Error("served without a key");
        },
      ),
      { numRuns: 1500 },
    );
  });
});
