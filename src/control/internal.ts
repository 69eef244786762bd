// The control plane's side of the wire contract (`src/core/snapshot.ts`): each plane's snapshot, the DNS
// snapshot, plane reports and artifact downloads, all authenticated by plane credentials. Which plane sees
// what is decided in `src/core/plane-snapshot.ts`; this module reads the rows and caches them per revision.

import type { ReplicaState } from "../core/domain.ts";
import { MeridianError } from "../core/errors.ts";
import { projectPlaneSnapshot, type SnapshotRows } from "../core/plane-snapshot.ts";
import { resolveRequestCounts } from "../core/request-counts.ts";
import type { DnsSnapshot, PlaneLoadReport, PlaneReport, PlaneSnapshot } from "../core/snapshot.ts";
import type { PlaneRow } from "../store/schema.ts";
import type { Db } from "../store/store.ts";
import type { ControlContext } from "./context.ts";
import { sha256Hex } from "./identity.ts";
import { planeKeyChange, readControlPublicKey, trustPlaneKey } from "./keys.ts";
import { change } from "./scheduler.ts";

export async function authenticatePlane(ctx: ControlContext, token: string | null): Promise<PlaneRow> {
  if (token === null) throw new MeridianError("unauthorized", "A plane credential is required.");
  const plane = await ctx.store.db
    .selectFrom("planes")
    .selectAll()
    .where("credential_hash", "=", sha256Hex(token))
    .executeTakeFirst();
  if (!plane) throw new MeridianError("unauthorized", "Unknown plane credential.");
  return plane;
}

/** A plane may read only its own snapshot. */
export async function authenticatePlaneNamed(
  ctx: ControlContext,
  token: string | null,
  name: string,
): Promise<PlaneRow> {
  const plane = await authenticatePlane(ctx, token);
  if (plane.name !== name)
    throw new MeridianError("forbidden", "A plane credential gives access to its own plane only.");
  return plane;
}

function hostOf(address: string): string {
  const bracket = /^\[([^\]]+)\]:\d+$/.exec(address);
  if (bracket) return bracket[1]!;
  return address.slice(0, address.lastIndexOf(":"));
}

const IPV4 = /^(\d{1,3})(\.\d{1,3}){3}$/;

function isIp(host: string): boolean {
  return IPV4.test(host) || host.includes(":");
}

/** Everything plane snapshots are built from, read once per revision and shared by every plane's build. */
async function readSnapshotState(ctx: ControlContext, db: Db): Promise<SnapshotRows> {
  const revision = await ctx.store.revision(db);
  const [
    planes,
    planeKeys,
    controlKey,
    apiKeys,
    models,
    environments,
    groups,
    deployments,
    replicas,
    artifacts,
    promotions,
  ] = await Promise.all([
    db
      .selectFrom("planes")
      .select(["name", "region", "ingress", "global_ingress", "credential_hash"])
      .orderBy("name")
      .execute(),
    db.selectFrom("plane_keys").selectAll().execute(),
    readControlPublicKey(ctx.store, db),
    db
      .selectFrom("api_keys")
      .select(["hash", "prefix", "team_id", "category", "model_ids", "regions"])
      .execute(),
    db.selectFrom("models").select(["id", "team_id", "name"]).execute(),
    db.selectFrom("environments").select(["model_id", "name", "current_deployment_id"]).execute(),
    db
      .selectFrom("environment_groups")
      .select(["team_id", "name", "region", "standard_endpoint_policy"])
      .execute(),
    db
      .selectFrom("deployments")
      .select([
        "id",
        "model_id",
        "region",
        "egress",
        "is_development",
        "artifact_key",
        "status",
        "autoscaling",
        "backpressure",
      ])
      .execute(),
    db.selectFrom("replicas").select(["id", "deployment_id", "plane", "state"]).execute(),
    db.selectFrom("artifacts").select(["key", "sha256", "size"]).where("state", "=", "STORED").execute(),
    db
      .selectFrom("promotions")
      .select(["candidate_deployment_id", "environment"])
      .where("active", "=", 1)
      .execute(),
  ]);
  return {
    revision,
    domain: ctx.domain,
    planes,
    plane_keys: planeKeys,
    control_key: controlKey,
    api_keys: apiKeys,
    models,
    environments,
    groups,
    deployments,
    replicas,
    artifacts,
    promotions,
  };
}

const stateCache = new WeakMap<ControlContext, { revision: number; state: Promise<SnapshotRows> }>();

/**
 * The state at the current revision. When a change wakes every plane's long-poll, the first build reads it
 * and the others reuse it: one read per revision instead of one per plane. The state may be newer than the
 * revision it is filed under (a write landed in between), never older, so a plane never moves backwards.
 */
async function snapshotState(ctx: ControlContext, db: Db): Promise<SnapshotRows> {
  const revision = await ctx.store.revision(db);
  const cached = stateCache.get(ctx);
  if (cached && cached.revision === revision) return cached.state;
  const state = readSnapshotState(ctx, db);
  stateCache.set(ctx, { revision, state });
  state.catch(() => {
    if (stateCache.get(ctx)?.state === state) stateCache.delete(ctx);
  });
  return state;
}

/** The plane's snapshot: the rows of the current revision projected onto it (src/core/plane-snapshot.ts). */
export async function buildPlaneSnapshot(
  ctx: ControlContext,
  db: Db,
  plane: PlaneRow,
): Promise<PlaneSnapshot> {
  return projectPlaneSnapshot(await snapshotState(ctx, db), plane, Date.now());
}

/** Whether a replica placed on `plane` runs a deployment built from the package with this sha256. */
export async function planeNeedsArtifact(
  ctx: ControlContext,
  plane: string,
  sha256: string,
): Promise<boolean> {
  const row = await ctx.store.db
    .selectFrom("replicas")
    .innerJoin("deployments", "deployments.id", "replicas.deployment_id")
    .innerJoin("artifacts", "artifacts.key", "deployments.artifact_key")
    .select("replicas.id")
    .where("replicas.plane", "=", plane)
    .where("artifacts.sha256", "=", sha256)
    .executeTakeFirst();
  return row !== undefined;
}

export async function buildDnsSnapshot(ctx: ControlContext, db: Db): Promise<DnsSnapshot> {
  const revision = await ctx.store.revision(db);
  const [planes, envs, groups, models] = await Promise.all([
    db.selectFrom("planes").selectAll().execute(),
    db.selectFrom("environments").select(["model_id", "name"]).execute(),
    db
      .selectFrom("environment_groups")
      .select(["team_id", "name", "region"])
      .where("region", "is not", null)
      .execute(),
    db.selectFrom("models").select(["id", "team_id"]).execute(),
  ]);
  const ips = (p: PlaneRow) => (JSON.parse(p.ingress) as string[]).map(hostOf).filter(isIp);
  const regions: Record<string, string[]> = {};
  for (const p of planes) regions[p.region] = [...new Set([...(regions[p.region] ?? []), ...ips(p)])].sort();
  const restricted = new Map(groups.map((g) => [`${g.team_id}/${g.name}`, g.region!]));
  const teamOf = new Map(models.map((m) => [m.id, m.team_id]));
  const byModel = new Map<string, Array<{ name: string; region: string }>>(models.map((m) => [m.id, []]));
  for (const e of envs) {
    const region = restricted.get(`${teamOf.get(e.model_id)}/${e.name}`);
    if (region) byModel.get(e.model_id)?.push({ name: e.name, region });
  }
  return {
    revision,
    domain: ctx.domain,
    global_ingress: [...new Set(planes.filter((p) => p.global_ingress === 1).flatMap(ips))].sort(),
    regions,
    models: [...byModel].map(([id, regional_environments]) => ({ id, regional_environments })),
  };
}

/**
 * Applies a plane's report: its key, replica states, then — only when a replica's state or the plane's
 * key changed — the scheduler (deployment status, promotions) and a revision bump so routes follow
 * readiness and peers verify the new key.
 */
export async function applyReport(ctx: ControlContext, plane: PlaneRow, report: PlaneReport): Promise<void> {
  const now = ctx.now();
  const current = await ctx.store.db
    .selectFrom("replicas")
    .select(["id", "deployment_id", "state", "message", "restarts"])
    .where("plane", "=", plane.name)
    .execute();
  const byId = new Map(current.map((r) => [r.id, r]));
  // A replica the plane no longer runs (stopped plane, lost process) is not routable: back to PENDING.
  const reported = new Set(report.replicas.map((r) => r.id));
  const missing: PlaneReport["replicas"] = current
    .filter((c) => !reported.has(c.id) && c.state !== "PENDING")
    .map((c) => ({
      id: c.id,
      deployment_id: c.deployment_id,
      state: "PENDING",
      message: null,
      restarts: c.restarts,
    }));
  const changed = [...report.replicas, ...missing].filter((r) => {
    const c = byId.get(r.id);
    return c !== undefined && (c.state !== r.state || c.message !== r.message || c.restarts !== r.restarts);
  });
  const stateChanged = changed.some((r) => byId.get(r.id)?.state !== r.state);
  const counts = await knownRequestCounts(ctx, report.request_counts);
  const loadKnown = await knownDeployments(
    ctx.store.db,
    (report.load?.deployments ?? []).map((d) => d.deployment_id),
  );
  // A new key (or one re-bound to a new credential) changes what other planes verify: a revision change.
  const key = report.public_key;
  const keyChanged = key !== undefined && (await planeKeyChange(ctx.store.db, plane, key)) === "changed";

  const write = async (trx: Db) => {
    if (keyChanged) {
      // Checked again under the revision lock: a concurrent report may have retired this key meanwhile.
      await planeKeyChange(trx, plane, key);
      await trustPlaneKey(trx, plane, key, now, report.key_created_at);
    }
    for (const r of changed) {
      await trx
        .updateTable("replicas")
        .set({ state: r.state as ReplicaState, message: r.message, restarts: r.restarts, updated_at: now })
        .where("id", "=", r.id)
        .where("plane", "=", plane.name)
        .execute();
    }
    await trx
      .updateTable("planes")
      .set({
        last_seen_at: now,
        applied_revision: report.revision,
        // Absent (an older plane) leaves what was reported before.
        ...(report.admin_url !== undefined ? { admin_url: report.admin_url } : {}),
        ...(report.sandbox !== undefined
          ? { sandbox_mode: report.sandbox.mode, sandbox_detail: report.sandbox.detail }
          : {}),
      })
      .where("name", "=", plane.name)
      .execute();
    if (report.load !== undefined) await storeLoad(trx, plane.name, report.load, loadKnown, now);
    for (const c of counts) {
      const env = c.environment ?? "";
      await trx
        .insertInto("request_counts")
        .values({
          plane: plane.name,
          model_id: c.model_id,
          environment: env,
          status_class: c.status_class,
          count: c.count,
        })
        .onConflict((oc) =>
          oc.columns(["plane", "model_id", "environment", "status_class"]).doUpdateSet((eb) => ({
            count: eb("request_counts.count", "+", eb.ref("excluded.count")),
          })),
        )
        .execute();
    }
  };
  if (stateChanged || keyChanged) {
    await change(ctx, async (trx, scope) => {
      await write(trx);
      for (const r of changed) scope.touch(r.deployment_id);
    });
  } else {
    await ctx.store.transaction(write);
  }
}

/** Of `ids`, the deployments the store has: a plane's load for anything else is dropped. */
export async function knownDeployments(db: Db, ids: readonly string[]): Promise<Set<string>> {
  const known = new Set<string>();
  const unique = [...new Set(ids)];
  for (let i = 0; i < unique.length; i += 500) {
    const rows = await db
      .selectFrom("deployments")
      .select("id")
      .where("id", "in", unique.slice(i, i + 500))
      .execute();
    for (const r of rows) known.add(r.id);
  }
  return known;
}

/**
 * Keeps the plane's latest load counters per deployment (docs/autoscaling.md): the autoscaler on any
 * control replica reads them. Counts and times only (DESIGN.md §2.9).
 */
export async function storeLoad(
  db: Db,
  plane: string,
  load: PlaneLoadReport,
  known: ReadonlySet<string>,
  now: string,
): Promise<void> {
  for (const d of load.deployments) {
    if (!known.has(d.deployment_id)) continue;
    const row = {
      plane,
      deployment_id: d.deployment_id,
      epoch: load.epoch,
      in_flight: d.in_flight,
      request_ms: d.request_ms,
      last_request_at: d.last_request_at,
      reported_at: now,
    };
    await db
      .insertInto("plane_loads")
      .values(row)
      .onConflict((oc) =>
        oc.columns(["plane", "deployment_id"]).doUpdateSet({
          epoch: row.epoch,
          in_flight: row.in_flight,
          request_ms: row.request_ms,
          last_request_at: row.last_request_at,
          reported_at: row.reported_at,
        }),
      )
      .execute();
  }
}

/** The report's counts under names that exist (a model and environment the store knows) or fixed ones. */
async function knownRequestCounts(
  ctx: ControlContext,
  counts: PlaneReport["request_counts"],
): Promise<PlaneReport["request_counts"]> {
  if (counts.length === 0) return counts;
  const ids = [...new Set(counts.map((c) => c.model_id))];
  const environments = new Map<string, Set<string>>();
  // Bounded by the report schema's item limit; chunked to stay within either database's parameter limit.
  for (let i = 0; i < ids.length; i += 500) {
    const chunk = ids.slice(i, i + 500);
    const [models, envs] = await Promise.all([
      ctx.store.db.selectFrom("models").select("id").where("id", "in", chunk).execute(),
      ctx.store.db
        .selectFrom("environments")
        .select(["model_id", "name"])
        .where("model_id", "in", chunk)
        .execute(),
    ]);
    for (const m of models) environments.set(m.id, new Set());
    for (const e of envs) environments.get(e.model_id)?.add(e.name);
  }
  return resolveRequestCounts(counts, (id) => environments.get(id));
}
