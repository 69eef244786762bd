// Routing decisions of a workload plane's ingress (DESIGN.md §2.2, §2.3, §3): from a parsed Host, a path,
// an API-key hash and the plane's snapshot to "serve here", "forward to these planes" or a typed refusal.
// Pure: the snapshot is indexed once per revision so each decision is a handful of Map lookups.

import type { ApiKeyCategory, HostnameForm, StandardEndpointPolicy } from "./domain.ts";
import type { ErrorCode } from "./errors.ts";
import { normalizeDomain, type ParsedHost, regionalHostname } from "./host.ts";
import { PRODUCTION } from "./names.ts";
import type {
  ApiKeyGrant,
  DeploymentRoute,
  EnvironmentRoute,
  ModelRoute,
  PlaneKey,
  PlaneRef,
  PlaneSnapshot,
} from "./snapshot.ts";

/** Key categories that may call inference endpoints (the reference's APIKeyCategory). */
export const INVOKE_CATEGORIES: ReadonlySet<ApiKeyCategory> = new Set<ApiKeyCategory>([
  "PERSONAL",
  "WORKSPACE_MANAGE_ALL",
  "WORKSPACE_INVOKE",
]);

export interface IndexedModel {
  route: ModelRoute;
  environments: Map<string, EnvironmentRoute>;
  deployments: Map<string, DeploymentRoute>;
  /** The environment each deployment currently serves. */
  environmentByDeployment: Map<string, EnvironmentRoute>;
}

export interface RouteIndex {
  revision: number;
  /** Normalized inference domain. */
  domain: string;
  plane: PlaneRef;
  planes: Map<string, PlaneRef>;
  /** API-key grants by sha256 hex. */
  keys: Map<string, ApiKeyGrant>;
  models: Map<string, IndexedModel>;
  /** The public keys each other plane's hops verify with (current first, then just retired). */
  planeKeys: Map<string, PlaneKey[]>;
}

/** Builds the lookup tables once per snapshot revision. */
export function indexSnapshot(snapshot: PlaneSnapshot): RouteIndex {
  const models = new Map<string, IndexedModel>();
  for (const route of snapshot.models) {
    const environments = new Map<string, EnvironmentRoute>();
    const environmentByDeployment = new Map<string, EnvironmentRoute>();
    for (const env of route.environments) {
      environments.set(env.name, env);
      if (env.deployment_id !== null) environmentByDeployment.set(env.deployment_id, env);
    }
    const deployments = new Map<string, DeploymentRoute>();
    for (const d of route.deployments) deployments.set(d.id, d);
    models.set(route.id, { route, environments, deployments, environmentByDeployment });
  }
  const planes = new Map<string, PlaneRef>();
  for (const p of snapshot.planes) planes.set(p.name, p);
  planes.set(snapshot.plane.name, snapshot.plane);
  const keys = new Map<string, ApiKeyGrant>();
  for (const k of snapshot.api_keys) keys.set(k.hash.toLowerCase(), k);
  const planeKeys = new Map<string, PlaneKey[]>();
  for (const k of snapshot.plane_keys) {
    const list = planeKeys.get(k.plane);
    if (list === undefined) planeKeys.set(k.plane, [k]);
    else list.push(k);
  }
  return {
    revision: snapshot.revision,
    domain: normalizeDomain(snapshot.domain),
    plane: snapshot.plane,
    planes,
    keys,
    models,
    planeKeys,
  };
}

export interface RouteRequest {
  host: ParsedHost;
  method: string;
  /** The request target's path, without the query. */
  path: string;
  /** sha256 (lowercase hex) of the presented API key; null when none was presented. */
  keyHash: string | null;
  /** The plane that handed this request over a verified hop; null when a client sent it. */
  forwardedFrom: string | null;
  /** Deployments with a READY replica on this plane. */
  localReady: { has(deploymentId: string): boolean };
  /** Scheme the client used; names the regional URL in warnings and denials. */
  scheme: "http" | "https";
}

/**
 * What is known about a request's target, for proof headers, audit and metrics, even on refusals. A name
 * enters the context only once it is **resolved**: the caller authenticated, and the model (visible to
 * the key) or the environment (of that model) exists. A caller's guesses never reach a metric label, an
 * audit field or a request count (DESIGN.md §2.8), so nobody can grow them by inventing names.
 */
export interface RouteContext {
  form: HostnameForm;
  /** The model, once the key authenticated and the model exists and is visible to it; else null. */
  modelId: string | null;
  /** The environment, once it exists on the resolved model; else null. */
  environment: string | null;
  deploymentId: string | null;
  /** Region the environment (or deployment) is restricted to; null when unrestricted. */
  region: string | null;
}

export type RouteDecision =
  | { kind: "serve"; context: RouteContext & { deploymentId: string }; warning: string | null }
  | {
      kind: "forward";
      context: RouteContext & { deploymentId: string };
      /** Planes to try, best first; a regional decision names only planes of the environment's region. */
      planes: PlaneRef[];
      warning: string | null;
    }
  | {
      kind: "refuse";
      context: RouteContext;
      code: ErrorCode;
      message: string | null;
      detail: unknown;
      /** For 405: the methods the route allows. */
      allow: string | null;
    };

type PathRoute =
  | { kind: "regional" }
  | { kind: "environment"; environment: string }
  | { kind: "development" }
  | { kind: "deployment"; deploymentId: string };

type PathMatch = { ok: true; route: PathRoute } | { ok: false; code: ErrorCode; message: string | null };

const PATH_BASED_PREFIXES = ["/production/", "/development/", "/environments/", "/deployment/"];

/** Whether a matched inference path is a wake (`POST /wake`, `…/{production|development}/wake`, …). */
export function isWakePath(path: string): boolean {
  return path.endsWith("/wake");
}

/** Matches the inference paths of DESIGN.md §3 for the host's form. */
function matchPath(form: HostnameForm, path: string): PathMatch {
  if (form === "regional") {
    // POST /wake (the reference's wakeRegional) is decided as a predict is; the ingress answers it 202.
    if (path === "/predict" || path === "/wake") return { ok: true, route: { kind: "regional" } };
    if (PATH_BASED_PREFIXES.some((p) => path.startsWith(p) || path === p.slice(0, -1))) {
      return { ok: false, code: "regional_path_not_allowed", message: null };
    }
    return { ok: false, code: "route_not_found", message: null };
  }
  if (path === "/production/predict" || path === "/production/wake") {
    return { ok: true, route: { kind: "environment", environment: PRODUCTION } };
  }
  if (path === "/development/predict" || path === "/development/wake") {
    return { ok: true, route: { kind: "development" } };
  }
  const parts = path.split("/");
  // ["", "environments", env, "predict" | "wake"]
  if (parts.length === 4 && parts[0] === "" && (parts[3] === "predict" || parts[3] === "wake")) {
    const [, first, name] = parts as [string, string, string, string];
    if (first === "environments") return { ok: true, route: { kind: "environment", environment: name } };
    if (first === "deployment") return { ok: true, route: { kind: "deployment", deploymentId: name } };
  }
  if (path === "/predict") {
    return {
      ok: false,
      code: "route_not_found",
      message: "POST /predict is served on regional hostnames (model-{id}-{env}.{domain}).",
    };
  }
  return { ok: false, code: "route_not_found", message: null };
}

export function regionalUrl(index: RouteIndex, req: RouteRequest, modelId: string, env: string): string {
  const port = req.host.port === null ? "" : `:${req.host.port}`;
  return `${req.scheme}://${regionalHostname(modelId, env, index.domain)}${port}/predict`;
}

/** Decides how this plane answers an inference request. Total: every input yields a decision. */
export function decideRoute(index: RouteIndex, req: RouteRequest): RouteDecision {
  const context: RouteContext = {
    form: req.host.form,
    modelId: null,
    environment: null,
    deploymentId: null,
    region: null,
  };
  const path = matchPath(req.host.form, req.path);
  if (!path.ok) return refuse(context, path.code, path.message);
  if (req.method !== "POST") {
    return {
      kind: "refuse",
      context,
      code: "method_not_allowed",
      message: null,
      detail: null,
      allow: "POST",
    };
  }
  // Authentication before any lookup, so an unauthenticated caller learns nothing about models.
  if (req.keyHash === null) return refuse(context, "unauthorized", null);
  const grant = index.keys.get(req.keyHash);
  if (grant === undefined) return refuse(context, "unauthorized", null);
  if (!INVOKE_CATEGORIES.has(grant.category)) {
    return refuse(context, "forbidden", `A ${grant.category} API key may not call inference endpoints.`);
  }
  // A region-bound key authenticates only on planes of its regions, and only for a request that came no
  // other way: the plane that handed it over is re-checked too. Before any lookup, so such a key learns
  // nothing about models on a plane where it does not count.
  const keyRegions = grant.regions ?? null;
  if (keyRegions !== null) {
    const from = req.forwardedFrom === null ? undefined : index.planes.get(req.forwardedFrom);
    const outside = !keyRegions.includes(index.plane.region)
      ? index.plane
      : from !== undefined && !keyRegions.includes(from.region)
        ? from
        : null;
    if (outside !== null) return keyRegionForbidden(index, context, keyRegions, outside, null);
  }
  // Another team's model, or a model outside a scoped key, is indistinguishable from a missing one.
  const model = index.models.get(req.host.modelId);
  if (
    model === undefined ||
    model.route.team_id !== grant.team_id ||
    (grant.model_ids !== null && !grant.model_ids.includes(model.route.id))
  ) {
    return refuse(context, "model_not_found", null);
  }
  context.modelId = model.route.id;

  switch (path.route.kind) {
    case "regional":
      return decideRegional(index, req, model, context, keyRegions);
    case "environment":
      return decideStandardEnvironment(index, req, model, context, keyRegions, path.route.environment);
    case "development":
      return decideDevelopment(index, req, model, context, keyRegions);
    case "deployment":
      return decideDeployment(index, req, model, context, keyRegions, path.route.deploymentId);
  }
}

/** Regions an API key may call inference in; null: every region. */
type KeyRegions = readonly string[] | null;

/**
 * 403 `key_region_forbidden`: the key is bound to regions that `plane` (this one, the one that handed the
 * request over) is not in, or that no plane the request could go on to is in (`targets`).
 */
function keyRegionForbidden(
  index: RouteIndex,
  context: RouteContext,
  keyRegions: readonly string[],
  plane: PlaneRef,
  targets: readonly string[] | null,
): RouteDecision {
  const list = keyRegions.join(", ");
  const message =
    targets === null
      ? `This API key is bound to region${keyRegions.length === 1 ? "" : "s"} ${list}; plane ${plane.name} is in region ${plane.region}.`
      : `This API key is bound to region${keyRegions.length === 1 ? "" : "s"} ${list}; the deployment is ready only in region${targets.length === 1 ? "" : "s"} ${targets.join(", ")}.`;
  return refuse(context, "key_region_forbidden", message, {
    plane_region: index.plane.region,
    key_regions: keyRegions,
    ...(plane.name === index.plane.name ? {} : { forwarded_from_region: plane.region }),
    ...(targets === null ? {} : { target_regions: targets }),
  });
}

function decideRegional(
  index: RouteIndex,
  req: RouteRequest,
  model: IndexedModel,
  context: RouteContext,
  keyRegions: KeyRegions,
): RouteDecision {
  const env = req.host.form === "regional" ? model.environments.get(req.host.environment) : undefined;
  if (env === undefined) return refuse(context, "environment_not_found", null);
  context.environment = env.name;
  if (env.region === null) return refuse(context, "environment_not_regional", null);
  context.region = env.region;
  // The request is already on this plane: if this plane (or the plane that handed it over) is outside the
  // region, the residency promise is broken by processing it. Refuse without touching the body.
  const from = req.forwardedFrom === null ? null : index.planes.get(req.forwardedFrom);
  if (index.plane.region !== env.region || (from != null && from.region !== env.region)) {
    return refuse(
      context,
      "misdirected_request",
      `This plane is in region ${index.plane.region}; environment ${env.name} is served only in region ${env.region}.`,
      { region: env.region, plane_region: index.plane.region },
    );
  }
  if (env.deployment_id === null) return noDeployment(context);
  context.deploymentId = env.deployment_id;
  return place(
    index,
    req,
    model,
    { ...context, deploymentId: env.deployment_id },
    env.region,
    null,
    keyRegions,
  );
}

function decideStandardEnvironment(
  index: RouteIndex,
  req: RouteRequest,
  model: IndexedModel,
  context: RouteContext,
  keyRegions: KeyRegions,
  name: string,
): RouteDecision {
  const env = model.environments.get(name);
  if (env === undefined) return refuse(context, "environment_not_found", null);
  context.environment = env.name;
  context.region = env.region;
  return decideStandard(index, req, model, context, keyRegions, env.deployment_id, env);
}

function decideDevelopment(
  index: RouteIndex,
  req: RouteRequest,
  model: IndexedModel,
  context: RouteContext,
  keyRegions: KeyRegions,
): RouteDecision {
  const id = model.route.development_deployment_id;
  context.region = id === null ? null : (model.deployments.get(id)?.region ?? null);
  return decideStandard(index, req, model, context, keyRegions, id, null);
}

function decideDeployment(
  index: RouteIndex,
  req: RouteRequest,
  model: IndexedModel,
  context: RouteContext,
  keyRegions: KeyRegions,
  deploymentId: string,
): RouteDecision {
  const deployment = model.deployments.get(deploymentId);
  if (deployment === undefined) return refuse(context, "deployment_not_found", null);
  const serving = model.environmentByDeployment.get(deploymentId) ?? null;
  context.environment = serving?.name ?? null;
  context.region = serving?.region ?? deployment.region;
  // A regional environment's policy follows its deployment onto /deployment/{id}/predict, or `deny`
  // would be bypassed by naming the deployment instead of the environment.
  const governing =
    serving !== null && serving.region !== null
      ? serving
      : strictestRegional(model, deployment.region, serving?.name ?? null);
  return decideStandard(index, req, model, context, keyRegions, deploymentId, governing);
}

const POLICY_RANK: Record<StandardEndpointPolicy, number> = { allow: 0, warn: 1, deny: 2 };

/** The strictest region-restricted environment of the model in `region` (null when none). */
function strictestRegional(
  model: IndexedModel,
  region: string | null,
  preferred: string | null,
): EnvironmentRoute | null {
  if (region === null) return null;
  let best: EnvironmentRoute | null = null;
  for (const env of model.environments.values()) {
    if (env.region !== region) continue;
    if (
      best === null ||
      POLICY_RANK[env.standard_endpoint_policy] > POLICY_RANK[best.standard_endpoint_policy] ||
      (env.name === preferred &&
        POLICY_RANK[env.standard_endpoint_policy] === POLICY_RANK[best.standard_endpoint_policy])
    ) {
      best = env;
    }
  }
  return best;
}

/** The standard endpoint: region restriction policy (DESIGN.md §2.3), then placement without a guarantee. */
function decideStandard(
  index: RouteIndex,
  req: RouteRequest,
  model: IndexedModel,
  context: RouteContext,
  keyRegions: KeyRegions,
  deploymentId: string | null,
  governing: EnvironmentRoute | null,
): RouteDecision {
  let warning: string | null = null;
  if (deploymentId !== null) context.deploymentId = deploymentId;
  if (governing !== null && governing.region !== null) {
    const url = regionalUrl(index, req, model.route.id, governing.name);
    switch (governing.standard_endpoint_policy) {
      case "allow":
        break;
      case "warn":
        // RFC 9111 §5.5 warn-code 299 ("miscellaneous persistent warning"), warn-agent "-".
        warning = `299 - "Environment ${governing.name} is restricted to region ${governing.region}; only ${url} guarantees that"`;
        break;
      case "deny":
        return refuse(
          context,
          "standard_endpoint_denied",
          `Environment ${governing.name} is restricted to region ${governing.region}; call ${url}`,
          { regional_url: url, region: governing.region },
        );
    }
  }
  if (deploymentId === null) return noDeployment(context);
  context.deploymentId = deploymentId;
  return place(
    index,
    req,
    model,
    { ...context, deploymentId },
    null,
    governing?.region ?? context.region,
    keyRegions,
    warning,
  );
}

function noDeployment(context: RouteContext): RouteDecision {
  return refuse(context, "deployment_not_found", "No deployment is promoted into this environment.");
}

/**
 * Chooses where the deployment is served. `restrictTo`: only planes of this region, ever (regional
 * endpoint). `prefer`: planes of this region first (standard endpoint of a regional environment).
 * `keyRegions`: a region-bound key is never handed to a plane outside its regions (this plane is inside,
 * decideRoute checked). A forwarded request is never forwarded again (one hop at most, so no loops).
 */
function place(
  index: RouteIndex,
  req: RouteRequest,
  model: IndexedModel,
  context: RouteContext & { deploymentId: string },
  restrictTo: string | null,
  prefer: string | null,
  keyRegions: KeyRegions,
  warning: string | null = null,
): RouteDecision {
  const self = index.plane;
  const localOk =
    (restrictTo === null || self.region === restrictTo) && req.localReady.has(context.deploymentId);
  const preferredHere = prefer === null || self.region === prefer;
  if (localOk && preferredHere) return { kind: "serve", context, warning };

  const planes: PlaneRef[] = [];
  /** Regions of planes that could serve but are outside the key's regions. */
  let barred: string[] | null = null;
  const deployment = model.deployments.get(context.deploymentId);
  if (req.forwardedFrom === null && deployment !== undefined) {
    for (const name of deployment.ready_planes) {
      if (name === self.name) continue;
      const plane = index.planes.get(name);
      if (plane === undefined || plane.ingress.length === 0) continue;
      if (restrictTo !== null && plane.region !== restrictTo) continue;
      if (keyRegions !== null && !keyRegions.includes(plane.region)) {
        barred ??= [];
        if (!barred.includes(plane.region)) barred.push(plane.region);
        continue;
      }
      planes.push(plane);
    }
  }
  const rank = (p: PlaneRef): number =>
    (prefer !== null && p.region === prefer ? 0 : 2) + (p.region === self.region ? 0 : 1);
  planes.sort((a, b) => rank(a) - rank(b) || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));

  if (localOk && (planes.length === 0 || rank(planes[0]!) >= rank(self))) {
    return { kind: "serve", context, warning };
  }
  if (planes.length > 0) return { kind: "forward", context, planes, warning };
  // Ready elsewhere, but only outside the key's regions: say so, rather than "nothing is ready".
  if (barred !== null && keyRegions !== null) {
    return keyRegionForbidden(index, context, keyRegions, self, barred.sort());
  }
  const region = restrictTo ?? prefer;
  return refuse(
    context,
    "model_unavailable",
    region === null
      ? "No replica of this deployment is ready."
      : `No replica of this deployment is ready in region ${region}.`,
    { region, deployment_id: context.deploymentId },
  );
}

function refuse(
  context: RouteContext,
  code: ErrorCode,
  message: string | null,
  detail: unknown = null,
): RouteDecision {
  return { kind: "refuse", context, code, message, detail, allow: null };
}
