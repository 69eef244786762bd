// The operator's API (`/v1/admin/…`, org admins only — Baseten's "contact support"): regions and workload
// planes, each plane with its own credential. Plus the public region list and the audit log query.

import type { Principal } from "../core/access.ts";
import type { SandboxMode } from "../core/domain.ts";
import { MeridianError } from "../core/errors.ts";
import { isSlug } from "../core/names.ts";
import type { SandboxReport } from "../core/snapshot.ts";
import type { PlaneRow } from "../store/schema.ts";
import { isUniqueViolation } from "../store/store.ts";
import { type ControlContext, recordAudit } from "./context.ts";
import { newCredential } from "./identity.ts";
import { retirePlaneKeys } from "./keys.ts";
import { loadModel, loadTeam, requireCapability, requireOrgAdmin } from "./lookup.ts";
import { change } from "./scheduler.ts";
import { regionView } from "./views.ts";

const ADMIN_ONLY = "Only org admins (operators) may use the admin API.";

export async function listRegions(ctx: ControlContext, p: Principal, teamId: string | null) {
  requireCapability(p, "read");
  if (teamId !== null) await loadTeam(ctx.store.db, p, teamId);
  const rows = await ctx.store.db
    .selectFrom("regions")
    .selectAll()
    .orderBy("created_at")
    .orderBy("slug")
    .execute();
  return { regions: rows.map(regionView) };
}

export async function createRegion(
  ctx: ControlContext,
  p: Principal,
  body: { slug: string; display_name: string },
) {
  requireOrgAdmin(p, ADMIN_ONLY);
  if (!isSlug(body.slug)) {
    throw new MeridianError(
      "invalid_request",
      "A region slug is lowercase letters, digits and inner hyphens.",
      {
        field: "slug",
      },
    );
  }
  try {
    await ctx.store.transaction(async (trx) => {
      await trx
        .insertInto("regions")
        .values({ ...body, created_at: ctx.now() })
        .execute();
      await recordAudit(ctx, trx, p, {
        team_id: null,
        model_id: null,
        action: "region.create",
        target: `region:${body.slug}`,
        after: body,
      });
    });
  } catch (err) {
    if (isUniqueViolation(err))
      throw new MeridianError("region_exists", `Region '${body.slug}' exists already.`);
    throw err;
  }
  return regionView(body);
}

/** How the plane runs its replicas, as it last reported; null for a plane that never said. */
function sandboxView(row: PlaneRow): SandboxReport | null {
  if (row.sandbox_mode === null) return null;
  return { mode: row.sandbox_mode as SandboxMode, detail: row.sandbox_detail };
}

function planeView(row: PlaneRow) {
  return {
    name: row.name,
    region: row.region,
    ingress: JSON.parse(row.ingress) as string[],
    capacity: row.capacity,
    global_ingress: row.global_ingress === 1,
    created_at: row.created_at,
    last_seen_at: row.last_seen_at,
    applied_revision: row.applied_revision,
  };
}

export async function listPlanes(ctx: ControlContext, p: Principal) {
  requireOrgAdmin(p, ADMIN_ONLY);
  const rows = await ctx.store.db
    .selectFrom("planes")
    .selectAll()
    .orderBy("region")
    .orderBy("name")
    .execute();
  const counts = await ctx.store.db
    .selectFrom("replicas")
    .select(["plane", "state", (eb) => eb.fn.countAll<string | number>().as("n")])
    .groupBy(["plane", "state"])
    .execute();
  return {
    planes: rows.map((r) => ({
      ...planeView(r),
      replicas: Object.fromEntries(
        counts.filter((c) => c.plane === r.name).map((c) => [c.state, Number(c.n)]),
      ),
      // An operator must see a plane that runs replicas without bwrap (`--sandbox none`) or cannot run any.
      sandbox: sandboxView(r),
    })),
  };
}

/**
 * Inference request counts as the planes reported them (DESIGN.md §2.6): per plane, model, environment
 * and status class, summed since the installation began. Aggregates only; request ids stay on the planes.
 */
export async function requestCounts(ctx: ControlContext, p: Principal) {
  requireOrgAdmin(p, ADMIN_ONLY);
  const rows = await ctx.store.db
    .selectFrom("request_counts")
    .selectAll()
    .orderBy("plane")
    .orderBy("model_id")
    .orderBy("environment")
    .orderBy("status_class")
    .execute();
  return {
    request_counts: rows.map((r) => ({
      plane: r.plane,
      model_id: r.model_id,
      // Stored as "" for requests that named no environment (development, a bare deployment).
      environment: r.environment === "" ? null : r.environment,
      status_class: r.status_class,
      count: Number(r.count),
    })),
  };
}

export interface PlaneRegistration {
  name: string;
  region: string;
  ingress: string[];
  capacity: number;
  global_ingress?: boolean;
}

const HOST_PORT = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/;

function checkIngress(ingress: string[]): void {
  for (const a of ingress) {
    const m = HOST_PORT.exec(a);
    if (!m || Number(m[2]) < 1 || Number(m[2]) > 65535) {
      throw new MeridianError("invalid_request", `Ingress address '${a}' is not host:port.`, {
        field: "ingress",
      });
    }
  }
}

/** Registers a plane and issues its credential (shown once). Its region must exist. */
export async function registerPlane(ctx: ControlContext, p: Principal, body: PlaneRegistration) {
  requireOrgAdmin(p, ADMIN_ONLY);
  if (!isSlug(body.name)) {
    throw new MeridianError(
      "invalid_request",
      "A plane name is lowercase letters, digits and inner hyphens.",
      {
        field: "name",
      },
    );
  }
  checkIngress(body.ingress);
  const region = await ctx.store.db
    .selectFrom("regions")
    .select("slug")
    .where("slug", "=", body.region)
    .executeTakeFirst();
  if (!region) throw new MeridianError("region_not_found", `No region '${body.region}'.`);
  const credential = newCredential(`plane-${body.name}`);
  const row: PlaneRow = {
    name: body.name,
    region: body.region,
    ingress: JSON.stringify(body.ingress),
    capacity: body.capacity,
    global_ingress: body.global_ingress ? 1 : 0,
    credential_hash: credential.hash,
    created_at: ctx.now(),
    last_seen_at: null,
    applied_revision: 0,
    admin_url: null,
    sandbox_mode: null,
    sandbox_detail: null,
  };
  try {
    await change(ctx, async (trx, scope) => {
      await trx.insertInto("planes").values(row).execute();
      await recordAudit(ctx, trx, p, {
        team_id: null,
        model_id: null,
        action: "plane.register",
        target: `plane:${body.name}`,
        after: planeView(row),
      });
      // New capacity may let waiting deployments place their replicas.
      for (const d of await waitingDeployments(trx)) scope.touch(d);
    });
  } catch (err) {
    if (isUniqueViolation(err))
      throw new MeridianError("plane_exists", `Plane '${body.name}' exists already.`);
    throw err;
  }
  return { plane: planeView(row), credential: credential.token };
}

async function waitingDeployments(trx: Parameters<Parameters<typeof change>[1]>[0]): Promise<string[]> {
  const rows = await trx
    .selectFrom("deployments")
    .select("id")
    .where("status", "in", ["BUILDING", "DEPLOYING", "LOADING_MODEL", "UNHEALTHY", "ACTIVE"])
    .execute();
  return rows.map((r) => r.id);
}

export async function updatePlane(
  ctx: ControlContext,
  p: Principal,
  name: string,
  body: { ingress?: string[]; capacity?: number; global_ingress?: boolean },
) {
  requireOrgAdmin(p, ADMIN_ONLY);
  if (body.ingress) checkIngress(body.ingress);
  return change(ctx, async (trx, scope) => {
    const before = await trx.selectFrom("planes").selectAll().where("name", "=", name).executeTakeFirst();
    if (!before) throw new MeridianError("plane_not_found", `No plane '${name}'.`);
    const next: PlaneRow = {
      ...before,
      ingress: body.ingress ? JSON.stringify(body.ingress) : before.ingress,
      capacity: body.capacity ?? before.capacity,
      global_ingress: body.global_ingress === undefined ? before.global_ingress : body.global_ingress ? 1 : 0,
    };
    await trx.updateTable("planes").set(next).where("name", "=", name).execute();
    await recordAudit(ctx, trx, p, {
      team_id: null,
      model_id: null,
      action: "plane.update",
      target: `plane:${name}`,
      before: planeView(before),
      after: planeView(next),
    });
    for (const d of await waitingDeployments(trx)) scope.touch(d);
    return planeView(next);
  });
}

export async function rotatePlaneCredential(ctx: ControlContext, p: Principal, name: string) {
  requireOrgAdmin(p, ADMIN_ONLY);
  const credential = newCredential(`plane-${name}`);
  // A revision change: keys count only over the credential they arrived with, so snapshots drop the
  // plane's keys now, until it reports again with the new credential.
  await change(ctx, async (trx) => {
    const res = await trx
      .updateTable("planes")
      .set({ credential_hash: credential.hash })
      .where("name", "=", name)
      .executeTakeFirst();
    if (Number(res.numUpdatedRows) === 0) throw new MeridianError("plane_not_found", `No plane '${name}'.`);
    await recordAudit(ctx, trx, p, {
      team_id: null,
      model_id: null,
      action: "plane.rotate_credential",
      target: `plane:${name}`,
    });
  });
  return { credential: credential.token };
}

/** Removes a plane; its replicas are placed again on the planes that remain allowed. */
export async function deletePlane(ctx: ControlContext, p: Principal, name: string) {
  requireOrgAdmin(p, ADMIN_ONLY);
  await change(ctx, async (trx, scope) => {
    const before = await trx.selectFrom("planes").selectAll().where("name", "=", name).executeTakeFirst();
    if (!before) throw new MeridianError("plane_not_found", `No plane '${name}'.`);
    const affected = await trx
      .selectFrom("replicas")
      .select("deployment_id")
      .where("plane", "=", name)
      .execute();
    await trx.deleteFrom("replicas").where("plane", "=", name).execute();
    await trx.deleteFrom("planes").where("name", "=", name).execute();
    // Its keys stay in the key directory for what they signed, retired: the plane signs nothing more, and
    // evidence for later ranges expects no piece from it.
    await retirePlaneKeys(trx, name, ctx.now());
    for (const r of affected) scope.touch(r.deployment_id);
    await recordAudit(ctx, trx, p, {
      team_id: null,
      model_id: null,
      action: "plane.delete",
      target: `plane:${name}`,
      before: planeView(before),
    });
  });
  return { name, deleted: true };
}

export interface AuditQuery {
  model_id?: string;
  limit?: number;
  before_id?: number;
}

/** Management audit entries the principal may see: its teams' (org admins: all), newest first. */
export async function auditLogs(ctx: ControlContext, p: Principal, q: AuditQuery) {
  requireCapability(p, "read");
  const db = ctx.store.db;
  if (q.model_id) await loadModel(db, p, q.model_id);
  const teamIds = [...p.teams.keys()];
  const limit = Math.min(Math.max(q.limit ?? 100, 1), 1000);
  const rows = await db
    .selectFrom("audit_logs")
    .selectAll()
    .$if(!p.is_org_admin, (b) => b.where("team_id", "in", teamIds.length ? teamIds : [""]))
    .$if(q.model_id !== undefined, (b) => b.where("model_id", "=", q.model_id!))
    .$if(q.before_id !== undefined, (b) => b.where("id", "<", q.before_id!))
    .orderBy("id", "desc")
    .limit(limit + 1)
    .execute();
  const page = rows.slice(0, limit);
  return {
    items: page.map((r) => ({
      id: Number(r.id),
      at: r.at,
      team_id: r.team_id,
      model_id: r.model_id,
      actor: { user_id: r.actor_user_id, api_key_prefix: r.actor_key_prefix },
      action: r.action,
      target: r.target,
      before: r.before === null ? null : JSON.parse(r.before),
      after: r.after === null ? null : JSON.parse(r.after),
    })),
    pagination: {
      has_more: rows.length > limit,
      cursor: rows.length > limit ? String(page.at(-1)?.id) : null,
    },
  };
}
