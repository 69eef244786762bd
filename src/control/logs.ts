// Replica logs through the management API (issue 3), shaped as Baseten's logs routes (GetLogsResponseV1):
// fetched on demand from the planes that run a deployment's replicas, then windowed, filtered and ordered
// (src/core/log-query.ts), never stored by the control plane — a replica's output stays in its plane's
// region. A plane that cannot be asked is named in `unreachable_planes` and its lines are missing.

import { request } from "undici";
import type { Principal } from "../core/access.ts";
import { MeridianError } from "../core/errors.ts";
import {
  type CapturedLine,
  type LogEntry,
  type LogQuery,
  type LogQueryInput,
  resolveLogQuery,
  selectLogs,
} from "../core/log-query.ts";
import { CONTROL_ACCESS_HEADER, signControlAccess } from "../lib/control-access.ts";
import type { SigningKey } from "../lib/keys.ts";
import type { ControlContext } from "./context.ts";
import { controlSigningKey } from "./keys.ts";
import { activePromotion, loadDeploymentAlias, loadModel, requireCapability } from "./lookup.ts";

/** How long one plane may take to answer before it counts as unreachable. */
const PLANE_TIMEOUT_MS = 3_000;
/**
 * Lines asked of a plane per replica: more than a plane holds (its ring keeps the newest 2000 by default),
 * so the window and filters apply to everything it has. The plane's route takes no time range.
 */
const PLANE_LINES_PER_REPLICA = 5_000;

export interface LogsResponse {
  logs: LogEntry[];
  /** Planes running replicas of the deployment that did not answer; their lines are missing. */
  unreachable_planes: string[];
}

/**
 * The GET routes' query: every value is a string (the app coerces nothing), repeated keys are arrays.
 * Numbers are checked as digit strings by the schema (src/control/schemas.ts `logsQuery`).
 */
export interface LogsQueryString {
  start_epoch_millis?: string;
  end_epoch_millis?: string;
  direction?: "asc" | "desc";
  limit?: string;
  min_level?: "DEBUG" | "INFO" | "WARNING" | "ERROR";
  replica?: string;
  request_id?: string;
  component?: string;
  search_pattern?: string;
  includes?: string | string[];
  excludes?: string | string[];
}

export function fromQueryString(q: LogsQueryString): LogQueryInput {
  const list = (v: string | string[] | undefined) => (v === undefined ? undefined : [v].flat());
  const num = (v: string | undefined) => (v === undefined ? undefined : Number(v));
  return {
    start_epoch_millis: num(q.start_epoch_millis),
    end_epoch_millis: num(q.end_epoch_millis),
    limit: num(q.limit),
    direction: q.direction,
    min_level: q.min_level,
    replica: q.replica,
    request_id: q.request_id,
    component: q.component,
    search_pattern: q.search_pattern,
    includes: list(q.includes),
    excludes: list(q.excludes),
  };
}

function resolve(ctx: ControlContext, input: LogQueryInput): LogQuery {
  const outcome = resolveLogQuery(input, Date.parse(ctx.now()));
  if (!outcome.ok) throw new MeridianError("invalid_request", outcome.message, { field: outcome.field });
  return outcome.query;
}

export async function deploymentLogs(
  ctx: ControlContext,
  p: Principal,
  modelId: string,
  deploymentId: string,
  input: LogQueryInput,
): Promise<LogsResponse> {
  requireCapability(p, "read");
  const model = await loadModel(ctx.store.db, p, modelId);
  const d = await loadDeploymentAlias(ctx.store.db, model, deploymentId);
  return collectLogs(ctx, [d.id], resolve(ctx, input));
}

/** The environment's current deployment and, while a promotion is in flight, its candidate. */
export async function environmentLogs(
  ctx: ControlContext,
  p: Principal,
  modelId: string,
  envName: string,
  input: LogQueryInput,
): Promise<LogsResponse> {
  requireCapability(p, "read");
  const db = ctx.store.db;
  const model = await loadModel(db, p, modelId);
  const env = await db
    .selectFrom("environments")
    .select("current_deployment_id")
    .where("model_id", "=", model.id)
    .where("name", "=", envName)
    .executeTakeFirst();
  if (!env)
    throw new MeridianError("environment_not_found", `Model ${model.id} has no environment '${envName}'.`);
  const query = resolve(ctx, input);
  const promotion = await activePromotion(db, model.id, envName);
  const ids = [env.current_deployment_id, promotion?.candidate_deployment_id].filter(
    (id): id is string => typeof id === "string",
  );
  return collectLogs(ctx, [...new Set(ids)], query);
}

async function collectLogs(
  ctx: ControlContext,
  deploymentIds: string[],
  query: LogQuery,
): Promise<LogsResponse> {
  if (deploymentIds.length === 0) return { logs: [], unreachable_planes: [] };
  const db = ctx.store.db;
  const [replicas, key] = await Promise.all([
    db
      .selectFrom("replicas")
      .innerJoin("planes", "planes.name", "replicas.plane")
      .select(["replicas.id", "replicas.plane", "planes.admin_url"])
      .where("replicas.deployment_id", "in", deploymentIds)
      .orderBy("replicas.id")
      .execute(),
    controlSigningKey(ctx),
  ]);
  // A replica filter asks only the plane that runs it.
  const wanted = query.replica === null ? replicas : replicas.filter((r) => r.id === query.replica);
  const byPlane = new Map<string, { admin_url: string | null; ids: string[] }>();
  for (const r of wanted) {
    const entry = byPlane.get(r.plane) ?? { admin_url: r.admin_url, ids: [] };
    entry.ids.push(r.id);
    byPlane.set(r.plane, entry);
  }
  const unreachable: string[] = [];
  const lines: CapturedLine[] = [];
  await Promise.all(
    [...byPlane].map(async ([plane, { admin_url, ids }]) => {
      try {
        if (admin_url === null) throw new Error("the plane has not reported an admin_url");
        for (const got of await Promise.all(ids.map((id) => fetchReplicaLogs(admin_url, key, plane, id)))) {
          lines.push(...got.map((l) => ({ ...l, plane })));
        }
      } catch (err) {
        ctx.logger.warn({ plane, err: (err as Error).message }, "replica logs unavailable");
        unreachable.push(plane);
      }
    }),
  );
  // Replicas in id order, each oldest first: the order selectLogs keeps for lines of one millisecond.
  lines.sort((a, b) => (a.replica_id < b.replica_id ? -1 : a.replica_id > b.replica_id ? 1 : 0));
  return { logs: selectLogs(lines, query), unreachable_planes: unreachable.sort() };
}

/** One replica's lines, asked of its plane with the control plane's signature (bound to plane and path). */
async function fetchReplicaLogs(
  adminUrl: string,
  key: SigningKey,
  plane: string,
  replicaId: string,
): Promise<Array<Omit<CapturedLine, "plane">>> {
  const path = `/v1/replicas/${encodeURIComponent(replicaId)}/logs?limit=${PLANE_LINES_PER_REPLICA}`;
  const res = await request(`${adminUrl}${path}`, {
    method: "GET",
    headers: {
      [CONTROL_ACCESS_HEADER]: signControlAccess(key, { plane, method: "GET", target: path }, Date.now()),
    },
    headersTimeout: PLANE_TIMEOUT_MS,
    bodyTimeout: PLANE_TIMEOUT_MS,
    signal: AbortSignal.timeout(PLANE_TIMEOUT_MS),
  });
  if (res.statusCode !== 200) {
    await res.body.dump();
    throw new Error(`the plane answered ${res.statusCode}`);
  }
  const body = (await res.body.json()) as { lines?: Array<{ ts: string; stream: string; line: string }> };
  if (!Array.isArray(body.lines)) throw new Error("the plane's answer has no lines");
  return body.lines.map((l) => ({ ts: l.ts, replica_id: replicaId, stream: l.stream, line: l.line }));
}
