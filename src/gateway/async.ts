// The ingress's side of async inference: the gateway routes an async path like predict (the same
// authentication, residency and hop rules, src/core/async-routing.ts) and, when this plane answers it,
// hands it to the plane's async service (src/plane/async-service.ts) over a Unix socket in the plane's data
// directory, with what it resolved in one header. The service trusts that header only with the token the
// plane gave both of them; a client's `x-meridian-*` fields never get there.

import { timingSafeEqual } from "node:crypto";
import type { AsyncDecision, AsyncOp, AsyncTarget } from "../core/async-routing.ts";
import { asyncTargetOf } from "../core/async-routing.ts";
import type { HostnameForm } from "../core/domain.ts";
import type { Target } from "./plan.ts";

/** Where this plane's async service listens, and the token that proves a request came from its ingress. */
export interface AsyncIngress {
  socketPath: string;
  token: string;
}

/** The header carrying the gateway's resolution to the async service. */
export const ASYNC_CONTEXT_HEADER = "x-meridian-async-context";

/** What the gateway resolved about an async call (JSON in ASYNC_CONTEXT_HEADER). */
export interface AsyncContext {
  token: string;
  op: AsyncOp["kind"];
  /** The request id of `GET`/`DELETE /async_request/{id}`; null otherwise. */
  request_id: string | null;
  form: HostnameForm;
  model_id: string;
  team_id: string;
  /** The environment named by the host or the path; null for the development deployment or a deployment id. */
  environment: string | null;
  /** The deployment the target names now; null for a status call. */
  deployment_id: string | null;
  /** The region the environment is restricted to; null when unrestricted. */
  region: string | null;
  target: AsyncTarget | null;
}

/** The service's target: its socket, the path as the client sent it. */
export function asyncServiceTarget(ingress: AsyncIngress, path: string): Target {
  return {
    kind: "replica",
    name: `unix:${ingress.socketPath}`,
    endpoint: `unix:${ingress.socketPath}`,
    socketPath: ingress.socketPath,
    authority: "localhost",
    origin: "http://localhost",
    path,
    plane: null,
  };
}

/**
 * The upstream headers for the async service: the request's end-to-end fields without any `x-meridian-*`
 * a client sent, then the context.
 */
export function asyncServiceHeaders(
  ingress: AsyncIngress,
  headers: readonly string[],
  decision: Extract<AsyncDecision, { kind: "async" }>,
  op: AsyncOp,
  hostEnvironment: string | null,
): string[] {
  const out: string[] = [];
  for (let i = 0; i < headers.length; i += 2) {
    if (!headers[i]!.startsWith("x-meridian-")) out.push(headers[i]!, headers[i + 1]!);
  }
  const ctx = decision.context;
  const context: AsyncContext = {
    token: ingress.token,
    op: op.kind,
    request_id: op.kind === "request" ? op.requestId : null,
    form: ctx.form,
    model_id: ctx.modelId!,
    team_id: decision.teamId,
    environment: ctx.environment,
    deployment_id: ctx.deploymentId,
    region: ctx.region,
    target: op.kind === "request" ? null : asyncTargetOf(ctx.form, op.predictPath, hostEnvironment),
  };
  out.push(ASYNC_CONTEXT_HEADER, Buffer.from(JSON.stringify(context)).toString("base64url"));
  return out;
}

/** Reads the context header; null when it is missing, malformed or not signed with `token`. */
export function readAsyncContext(value: string | undefined, token: string): AsyncContext | null {
  if (value === undefined) return null;
  try {
    const ctx = JSON.parse(Buffer.from(value, "base64url").toString("utf8")) as AsyncContext;
    if (typeof ctx !== "object" || ctx === null || typeof ctx.token !== "string") return null;
    const [a, b] = [Buffer.from(ctx.token), Buffer.from(token)];
    return a.length === b.length && timingSafeEqual(a, b) ? ctx : null;
  } catch {
    return null;
  }
}
