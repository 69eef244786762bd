// Replica logs through the management API (issue 3): fetched on demand from the planes that run a
// deployment's replicas and merged, never stored by the control plane — a replica's output stays in its
// plane's region. A plane that cannot be asked is named in `unreachable_planes` and its lines are missing.

import { request } from "undici";
import type { Principal } from "../core/access.ts";
import { MeridianError } from "../core/errors.ts";
import { CONTROL_ACCESS_HEADER, signControlAccess } from "../lib/control-access.ts";
import type { SigningKey } from "../lib/keys.ts";
import type { ControlContext } from "./context.ts";
import { controlSigningKey } from "./keys.ts";
import { activePromotion, loadDeploymentAlias, loadModel, requireCapability } from "./lookup.ts";

export const DEFAULT_LOG_LIMIT = 500;
export const MAX_LOG_LIMIT = 5000;
/** How long one plane may take to answer before it counts as unreachable. */
const PLANE_TIMEOUT_MS = 3_000;

export interface ReplicaLogLine {
  ts: string;
  replica_id: string;
  plane: string;
  stream: string;
  line: string;
}

export interface LogsResponse {
  /** Oldest first, so the newest line is last. */
  lines: ReplicaLogLine[];
  /** Planes running replicas of the deployment that did not answer; their lines are missing. */
  unreachable_planes: string[];
}

function limitOf(raw: string | undefined): number {
  if (raw === undefined) return DEFAULT_LOG_LIMIT;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1 || n > MAX_LOG_LIMIT) {
    throw new MeridianError("invalid_request", `limit is a whole number from 1 to ${MAX_LOG_LIMIT}.`, {
      field: "limit",
    });
  }
  return n;
}

export async function deploymentLogs(
  ctx: ControlContext,
  p: Principal,
  modelId: string,
  deploymentId: string,
  limit: string | undefined,
): Promise<LogsResponse> {
  requireCapability(p, "read");
  const n = limitOf(limit);
  const model = await loadModel(ctx.store.db, p, modelId);
  const d = await loadDeploymentAlias(ctx.store.db, model, deploymentId);
  return collectLogs(ctx, [d.id], n);
}

/** The environment's current deployment and, while a promotion is in flight, its candidate. */
export async function environmentLogs(
  ctx: ControlContext,
  p: Principal,
  modelId: string,
  envName: string,
  limit: string | undefined,
): Promise<LogsResponse> {
  requireCapability(p, "read");
  const n = limitOf(limit);
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
  const promotion = await activePromotion(db, model.id, envName);
  const ids = [env.current_deployment_id, promotion?.candidate_deployment_id].filter(
    (id): id is string => typeof id === "string",
  );
  return collectLogs(ctx, [...new Set(ids)], n);
}

async function collectLogs(
  ctx: ControlContext,
  deploymentIds: string[],
  limit: number,
): Promise<LogsResponse> {
  if (deploymentIds.length === 0) return { lines: [], unreachable_planes: [] };
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
  const byPlane = new Map<string, { admin_url: string | null; ids: string[] }>();
  for (const r of replicas) {
    const entry = byPlane.get(r.plane) ?? { admin_url: r.admin_url, ids: [] };
    entry.ids.push(r.id);
    byPlane.set(r.plane, entry);
  }
  const unreachable: string[] = [];
  const lines: ReplicaLogLine[] = [];
  await Promise.all(
    [...byPlane].map(async ([plane, { admin_url, ids }]) => {
      try {
        if (admin_url === null) throw new Error("the plane has not reported an admin_url");
        for (const got of await Promise.all(
          ids.map((id) => fetchReplicaLogs(admin_url, key, plane, id, limit)),
        )) {
          lines.push(
            ...got.map((l) => ({
              ts: l.ts,
              replica_id: l.replica_id,
              plane,
              stream: l.stream,
              line: l.line,
            })),
          );
        }
      } catch (err) {
        ctx.logger.warn({ plane, err: (err as Error).message }, "replica logs unavailable");
        unreachable.push(plane);
      }
    }),
  );
  // ISO-8601 timestamps of one format sort as strings; the sort is stable, so a replica's order holds.
  lines.sort((a, b) => (a.ts < b.ts ? -1 : a.ts > b.ts ? 1 : 0));
  return { lines: lines.slice(-limit), unreachable_planes: unreachable.sort() };
}

/** One replica's lines, asked of its plane with the control plane's signature (bound to plane and path). */
async function fetchReplicaLogs(
  adminUrl: string,
  key: SigningKey,
  plane: string,
  replicaId: string,
  limit: number,
): Promise<Array<{ ts: string; replica_id: string; stream: string; line: string }>> {
  const path = `/v1/replicas/${encodeURIComponent(replicaId)}/logs?limit=${limit}`;
  const signature = signControlAccess(key, { plane, method: "GET", target: path }, Date.now());
  const res = await request(`${adminUrl}${path}`, {
    method: "GET",
    headers: { [CONTROL_ACCESS_HEADER]: signature },
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
