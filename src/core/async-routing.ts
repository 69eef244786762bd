// Where an async inference call is answered (DESIGN.md §2.9: an async request, its queue, payload and result
// live on planes of its environment's region). The same authentication, resolution and residency rules as
// predict (decideRoute, asked about the matching predict route), then the async rule: a request is queued
// on this plane only if this plane is in the environment's region, else handed to one that is, before any
// byte of it is stored; a status or cancel call goes to the plane its id names. Pure.

import { planeTag, requestIdTag } from "./async.ts";
import type { HostnameForm } from "./domain.ts";
import type { ErrorCode } from "./errors.ts";
import { PRODUCTION } from "./names.ts";
import { decideRoute, type RouteContext, type RouteIndex, type RouteRequest } from "./routing.ts";
import type { PlaneRef, PlaneSnapshot } from "./snapshot.ts";

/** What a request to an async path asks for. */
export type AsyncOp =
  | { kind: "predict"; predictPath: string }
  | { kind: "queue_status"; predictPath: string }
  | { kind: "request"; requestId: string };

/** How the async path of a request says what it targets (resolved again when the request runs). */
export type AsyncTarget =
  | { kind: "environment"; name: string }
  | { kind: "development" }
  | { kind: "deployment"; deploymentId: string };

export type AsyncPathMatch = { op: AsyncOp; allow: string } | { refuse: ErrorCode; message: string | null };

const PATH_BASED_PREFIXES = ["/production/", "/development/", "/environments/", "/deployment/"];

/**
 * The async paths of DESIGN.md §3 for the host's form, or null when `path` is not one (then it is predict's
 * to answer). The predict path they map to is what decideRoute authenticates and resolves.
 */
export function matchAsyncPath(form: HostnameForm, path: string): AsyncPathMatch | null {
  const request = /^\/async_request\/([^/]*)$/.exec(path);
  if (request !== null) {
    return { op: { kind: "request", requestId: request[1]! }, allow: "GET, DELETE" };
  }
  if (form === "regional") {
    if (path === "/async_predict") return { op: { kind: "predict", predictPath: "/predict" }, allow: "POST" };
    if (path === "/async_queue_status") {
      return { op: { kind: "queue_status", predictPath: "/predict" }, allow: "GET" };
    }
    if (PATH_BASED_PREFIXES.some((p) => path.startsWith(p)) && /\/async_(predict|queue_status)$/.test(path)) {
      return { refuse: "regional_path_not_allowed", message: null };
    }
    return null;
  }
  const m =
    /^(\/(?:production|development|environments\/[^/]+|deployment\/[^/]+))\/(async_predict|async_queue_status)$/.exec(
      path,
    );
  if (m === null) return null;
  const predictPath = `${m[1]}/predict`;
  return m[2] === "async_predict"
    ? { op: { kind: "predict", predictPath }, allow: "POST" }
    : { op: { kind: "queue_status", predictPath }, allow: "GET" };
}

/** The target named by a standard-form predict path (the regional form names its environment by host). */
export function asyncTargetOf(
  form: HostnameForm,
  predictPath: string,
  hostEnvironment: string | null,
): AsyncTarget {
  if (form === "regional") return { kind: "environment", name: hostEnvironment ?? "" };
  if (predictPath === "/production/predict") return { kind: "environment", name: PRODUCTION };
  if (predictPath === "/development/predict") return { kind: "development" };
  const parts = predictPath.split("/");
  return parts[1] === "deployment"
    ? { kind: "deployment", deploymentId: parts[2]! }
    : { kind: "environment", name: parts[2]! };
}

export type AsyncDecision =
  /** Answer on this plane (its async service). */
  | { kind: "async"; context: RouteContext; warning: string | null; teamId: string }
  /** Hand to these planes (the first that answers), each of the region the request must stay in. */
  | { kind: "forward"; context: RouteContext; planes: PlaneRef[]; warning: string | null }
  | {
      kind: "refuse";
      context: RouteContext;
      code: ErrorCode;
      message: string | null;
      detail: unknown;
      allow: string | null;
    };

/** Refusals that end an async call too: decideRoute said the caller may not, or the target is not there. */
const FINAL_REFUSALS: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  "unauthorized",
  "forbidden",
  "key_region_forbidden",
  "model_not_found",
  "environment_not_found",
  "environment_not_regional",
  "deployment_not_found",
  "misdirected_request",
  "standard_endpoint_denied",
  "route_not_found",
  "regional_path_not_allowed",
]);

/** Decides how this plane answers a request to an async path. Total: every input yields a decision. */
export function decideAsync(
  index: RouteIndex,
  req: RouteRequest,
  match: { op: AsyncOp; allow: string },
): AsyncDecision {
  const allowed = match.allow.split(", ");
  if (!allowed.includes(req.method)) {
    const context: RouteContext = {
      form: req.host.form,
      modelId: null,
      environment: null,
      deploymentId: null,
      region: null,
    };
    return {
      kind: "refuse",
      context,
      code: "method_not_allowed",
      message: null,
      detail: null,
      allow: match.allow,
    };
  }
  return match.op.kind === "request"
    ? decideRequest(index, req, match.op.requestId)
    : decideQueue(index, req, match.op.predictPath);
}

/** `async_predict` and `async_queue_status`: the queue of the environment's region. */
function decideQueue(index: RouteIndex, req: RouteRequest, predictPath: string): AsyncDecision {
  const d = decideRoute(index, { ...req, method: "POST", path: predictPath });
  const self = index.plane;
  const ctx = d.context;
  if (d.kind === "refuse" && (FINAL_REFUSALS.has(d.code) || ctx.deploymentId === null)) return d;
  const teamId = teamOf(index, ctx);
  if (teamId === null) return refuse(ctx, "model_not_found");
  const warning = d.kind === "refuse" ? null : d.warning;
  // The region the request must stay in: the environment's (or deployment's) restriction.
  const region = ctx.region;
  if (region === null) {
    // Unrestricted: queued in the region that received it when a plane there can work it (this one first),
    // else on a plane where a replica is ready (no residency is promised); with none ready, here, to wait.
    if (d.kind === "forward" && req.forwardedFrom === null && !readyHere(req, ctx)) {
      const near = d.planes.filter((p) => p.region === self.region);
      return { kind: "forward", context: ctx, planes: near.length > 0 ? near : d.planes, warning };
    }
    return { kind: "async", context: ctx, warning, teamId };
  }
  if (self.region === region) return { kind: "async", context: ctx, warning, teamId };
  // Outside the region: hand it in, or refuse. Never stored here, never handed to another region.
  if (req.forwardedFrom !== null) {
    return refuse(
      ctx,
      "misdirected_request",
      `This plane is in region ${self.region}; the request belongs in region ${region}.`,
      {
        region,
        plane_region: self.region,
      },
    );
  }
  const keyRegions = keyRegionsOf(index, req);
  if (keyRegions !== null && !keyRegions.includes(region)) {
    return refuse(ctx, "key_region_forbidden", `This API key may not call inference in region ${region}.`, {
      key_regions: keyRegions,
      target_regions: [region],
    });
  }
  const planes = inRegion(index, ctx, region);
  if (planes.length === 0) {
    return refuse(ctx, "model_unavailable", `No plane of region ${region} can take the request.`, { region });
  }
  return { kind: "forward", context: ctx, planes, warning };
}

/** `GET`/`DELETE /async_request/{id}`: authenticated as predict is, answered by the plane the id names. */
function decideRequest(index: RouteIndex, req: RouteRequest, requestId: string): AsyncDecision {
  // The model (and, on the regional form, the environment) is resolved as predict resolves it.
  const probe = req.host.form === "regional" ? "/predict" : `/environments/${PRODUCTION}/predict`;
  const d = decideRoute(index, { ...req, method: "POST", path: probe });
  const ctx: RouteContext = { ...d.context, deploymentId: null };
  if (ctx.modelId === null && d.kind === "refuse") return d;
  if (req.host.form === "regional" && d.kind === "refuse" && FINAL_REFUSALS.has(d.code)) return d;
  if (req.host.form === "standard") {
    ctx.environment = null;
    ctx.region = null;
  }
  const teamId = teamOf(index, ctx);
  if (teamId === null) return refuse(ctx, "model_not_found");
  const tag = requestIdTag(requestId);
  if (tag === null) return refuse(ctx, "async_request_not_found");
  const self = index.plane;
  if (tag === planeTag(self.name)) return { kind: "async", context: ctx, warning: null, teamId };
  if (req.forwardedFrom !== null) return refuse(ctx, "async_request_not_found");
  let holder: PlaneRef | null = null;
  for (const p of index.planes.values()) if (planeTag(p.name) === tag) holder = p;
  // A regional hostname's requests are only on planes of its region; an id naming another is not one of them.
  if (
    holder === null ||
    holder.ingress.length === 0 ||
    (ctx.region !== null && holder.region !== ctx.region)
  ) {
    return refuse(ctx, "async_request_not_found");
  }
  const keyRegions = keyRegionsOf(index, req);
  if (keyRegions !== null && !keyRegions.includes(holder.region)) {
    return refuse(
      ctx,
      "key_region_forbidden",
      `This API key may not call inference in region ${holder.region}.`,
      {
        key_regions: keyRegions,
        target_regions: [holder.region],
      },
    );
  }
  return { kind: "forward", context: ctx, planes: [holder], warning: null };
}

function teamOf(index: RouteIndex, ctx: RouteContext): string | null {
  return ctx.modelId === null ? null : (index.models.get(ctx.modelId)?.route.team_id ?? null);
}

function keyRegionsOf(index: RouteIndex, req: RouteRequest): readonly string[] | null {
  return req.keyHash === null ? null : (index.keys.get(req.keyHash)?.regions ?? null);
}

function readyHere(req: RouteRequest, ctx: RouteContext): boolean {
  return ctx.deploymentId !== null && req.localReady.has(ctx.deploymentId);
}

/** Planes of `region` with an ingress: those with a ready replica of the deployment first, by name. */
function inRegion(index: RouteIndex, ctx: RouteContext, region: string): PlaneRef[] {
  const model = ctx.modelId === null ? undefined : index.models.get(ctx.modelId);
  const ready = new Set(
    ctx.deploymentId === null ? [] : (model?.deployments.get(ctx.deploymentId)?.ready_planes ?? []),
  );
  return [...index.planes.values()]
    .filter((p) => p.region === region && p.name !== index.plane.name && p.ingress.length > 0)
    .sort(
      (a, b) =>
        Number(ready.has(b.name)) - Number(ready.has(a.name)) ||
        (a.name < b.name ? -1 : a.name > b.name ? 1 : 0),
    );
}

function refuse(
  context: RouteContext,
  code: ErrorCode,
  message: string | null = null,
  detail: unknown = null,
): AsyncDecision {
  return { kind: "refuse", context, code, message, detail, allow: null };
}

/** What an accepted request's target names now, on the plane that holds it (in region `planeRegion`). */
export type AsyncResolution =
  /** `wakeable`: the deployment may be woken from zero (it scales to zero and is not stopped). */
  | { ok: true; deploymentId: string; wakeable: boolean }
  | {
      ok: false;
      final: boolean;
      code: "MODEL_DOES_NOT_EXIST" | "MODEL_UNAVAILABLE" | "MODEL_NOT_READY";
      message: string;
    };

/**
 * Resolves a queued request's target against the plane's current snapshot when it is its turn: an
 * environment runs on the deployment promoted into it now. A target that moved to another region fails
 * rather than run or travel there: the request's payload is this region's and stays here until it ends.
 */
export function resolveAsyncTarget(
  snapshot: PlaneSnapshot | null,
  planeRegion: string,
  modelId: string,
  target: AsyncTarget,
): AsyncResolution {
  if (snapshot === null)
    return {
      ok: false,
      final: false,
      code: "MODEL_NOT_READY",
      message: "The plane has no configuration yet.",
    };
  const model = snapshot.models.find((m) => m.id === modelId);
  if (model === undefined)
    return { ok: false, final: true, code: "MODEL_DOES_NOT_EXIST", message: "The model no longer exists." };
  let deploymentId: string | null;
  let region: string | null;
  switch (target.kind) {
    case "environment": {
      const env = model.environments.find((e) => e.name === target.name);
      if (env === undefined) {
        return {
          ok: false,
          final: true,
          code: "MODEL_DOES_NOT_EXIST",
          message: `Environment ${target.name} no longer exists.`,
        };
      }
      deploymentId = env.deployment_id;
      region = env.region;
      break;
    }
    case "development":
      deploymentId = model.development_deployment_id;
      region =
        deploymentId === null ? null : (model.deployments.find((d) => d.id === deploymentId)?.region ?? null);
      break;
    case "deployment": {
      const d = model.deployments.find((x) => x.id === target.deploymentId);
      if (d === undefined) {
        return {
          ok: false,
          final: true,
          code: "MODEL_DOES_NOT_EXIST",
          message: "The deployment no longer exists.",
        };
      }
      deploymentId = d.id;
      region = d.region;
      break;
    }
  }
  if (region !== null && region !== planeRegion) {
    return {
      ok: false,
      final: true,
      code: "MODEL_UNAVAILABLE",
      message: `The target is now restricted to region ${region}; a request held in region ${planeRegion} is never run or sent elsewhere.`,
    };
  }
  if (deploymentId === null) {
    return {
      ok: false,
      final: false,
      code: "MODEL_NOT_READY",
      message: "No deployment is promoted into the target.",
    };
  }
  const wakeable = model.deployments.find((d) => d.id === deploymentId)?.scale?.wakeable === true;
  return { ok: true, deploymentId, wakeable };
}
