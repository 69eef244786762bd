// The passthrough routes of DESIGN.md §3: `/sync/{path}` (any method, to the replica's own server, path
// and query as sent) and `/websocket` (an RFC 6455 upgrade relayed to the replica). Each is answered by the
// same authentication, resolution and residency rules as predict: decideRoute, asked about the matching
// predict route, so a wrong-region plane refuses (421) and no ready replica fails closed (503) exactly as
// predict does. Pure.

import type { HostnameForm } from "./domain.ts";
import { decideRoute, type RouteDecision, type RouteIndex, type RouteRequest } from "./routing.ts";

/** The replica's websocket route (what `/websocket` reaches; truss's path). */
export const REPLICA_WEBSOCKET_PATH = "/v1/websocket";

/**
 * Methods `/sync/{path}` passes on. CONNECT has no origin-form target; TRACE would echo the request's
 * fields (RFC 9110 §9.3.8), the ingress's forwarding fields included, back to whoever sent it.
 */
export const SYNC_METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";
const SYNC_METHOD_SET = new Set(SYNC_METHODS.split(", "));

export type RealtimeRoute =
  /** `/sync/{path}`: `replicaPath` is `/{path}` with the query, as the client sent them. */
  | { kind: "sync"; predictPath: string; replicaPath: string }
  | { kind: "websocket"; predictPath: string; replicaPath: string };

/**
 * The passthrough route `path` names on a host of `form`, or null when it is not one (then it is predict's
 * to answer, or refuse). `query` is the target's query with its `?`, or "". Path-based forms on a regional
 * hostname are left to decideRoute, which refuses them (`regional_path_not_allowed`).
 */
export function matchRealtimePath(form: HostnameForm, path: string, query: string): RealtimeRoute | null {
  let base: string;
  let rest: string;
  if (form === "regional") {
    base = "";
    rest = path;
  } else {
    const m = /^(\/(?:production|development|environments\/[^/]+|deployment\/[^/]+))(\/.*)$/.exec(path);
    if (m === null) return null;
    base = m[1]!;
    rest = m[2]!;
  }
  const predictPath = `${base}/predict`;
  if (rest === "/websocket") {
    return { kind: "websocket", predictPath, replicaPath: REPLICA_WEBSOCKET_PATH + query };
  }
  if (rest === "/sync" || rest.startsWith("/sync/")) {
    const tail = rest.slice("/sync".length);
    return { kind: "sync", predictPath, replicaPath: (tail === "" ? "/" : tail) + query };
  }
  return null;
}

/** Decides how this plane answers a passthrough request. Total: every input yields a decision. */
export function decideRealtime(index: RouteIndex, req: RouteRequest, route: RealtimeRoute): RouteDecision {
  const allowed = route.kind === "websocket" ? req.method === "GET" : SYNC_METHOD_SET.has(req.method);
  if (!allowed) {
    return {
      kind: "refuse",
      context: { form: req.host.form, modelId: null, environment: null, deploymentId: null, region: null },
      code: "method_not_allowed",
      message: null,
      detail: null,
      allow: route.kind === "websocket" ? "GET" : SYNC_METHODS,
    };
  }
  return decideRoute(index, { ...req, method: "POST", path: route.predictPath });
}
