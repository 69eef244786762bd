// Environment groups (reference: /v1/environment_groups…): every same-named environment of a team. Manage
// access and — Meridian's extensions, org admins only — the region restriction and the replicas' egress
// policy live here and apply team-wide by name, also to environments created later (DESIGN.md §2.4, §2.8).

import { isTeamAdmin, type Principal } from "../core/access.ts";
import { MeridianError } from "../core/errors.ts";
import { checkEnvironmentName } from "../core/names.ts";
import type { EnvironmentGroupRow, TeamRow } from "../store/schema.ts";
import type { Db } from "../store/store.ts";
import { type ControlContext, recordAudit } from "./context.ts";
import { cancelInTransaction, promoteInTransaction } from "./environments.ts";
import {
  activePromotion,
  defaultTeam,
  loadTeam,
  requireCapability,
  requireManageAccess,
  requireOrgAdmin,
} from "./lookup.ts";
import type { Infer } from "./routes/infer.ts";
import { change } from "./scheduler.ts";
import type { updateGroupBody } from "./schemas.ts";
import { egressOf, environmentGroupView, restrictionOf } from "./views.ts";

/** A PATCH of an environment group, as its schema validates it. */
export type GroupUpdate = Infer<typeof updateGroupBody>;

async function teamFor(ctx: ControlContext, p: Principal, teamId: string | null): Promise<TeamRow> {
  return teamId === null ? defaultTeam(ctx.store.db, p) : loadTeam(ctx.store.db, p, teamId);
}

async function render(db: Db, team: TeamRow, name: string, g: EnvironmentGroupRow | undefined) {
  const ids = g ? (JSON.parse(g.manage_users) as string[]) : [];
  const users = ids.length
    ? await db.selectFrom("users").selectAll().where("id", "in", ids).orderBy("id").execute()
    : [];
  return environmentGroupView(team.id, team.name, name, g, users);
}

/** Names of the team's groups: every environment name in use, plus groups configured before any exists. */
async function groupNames(db: Db, teamId: string): Promise<string[]> {
  const [envs, groups] = await Promise.all([
    db
      .selectFrom("environments")
      .innerJoin("models", "models.id", "environments.model_id")
      .select("environments.name")
      .distinct()
      .where("models.team_id", "=", teamId)
      .execute(),
    db.selectFrom("environment_groups").select("name").where("team_id", "=", teamId).execute(),
  ]);
  return [...new Set([...envs.map((e) => e.name), ...groups.map((g) => g.name)])].sort();
}

export async function listGroups(ctx: ControlContext, p: Principal, teamId: string | null) {
  requireCapability(p, "read");
  const db = ctx.store.db;
  const team = await teamFor(ctx, p, teamId);
  const names = await groupNames(db, team.id);
  const rows = await db.selectFrom("environment_groups").selectAll().where("team_id", "=", team.id).execute();
  const byName = new Map(rows.map((r) => [r.name, r]));
  return {
    items: await Promise.all(names.map((n) => render(db, team, n, byName.get(n)))),
    pagination: { has_more: false, cursor: null },
  };
}

export async function getGroup(ctx: ControlContext, p: Principal, teamId: string | null, name: string) {
  requireCapability(p, "read");
  const db = ctx.store.db;
  const team = await teamFor(ctx, p, teamId);
  if (!(await groupNames(db, team.id)).includes(name)) {
    throw new MeridianError(
      "environment_group_not_found",
      `Team ${team.name} has no environment group '${name}'.`,
    );
  }
  const g = await db
    .selectFrom("environment_groups")
    .selectAll()
    .where("team_id", "=", team.id)
    .where("name", "=", name)
    .executeTakeFirst();
  return render(db, team, name, g);
}

/**
 * Updates a group. Restricting manage access takes a team admin; the region restriction and the egress
 * policy take an org admin. A new or changed region restriction or egress policy forces a redeploy of every
 * environment of that name in the team whose deployment does not already run in the region under that
 * policy; each keeps serving from its old replicas until the switch.
 */
export async function updateGroup(
  ctx: ControlContext,
  p: Principal,
  teamId: string | null,
  name: string,
  update: GroupUpdate,
) {
  requireCapability(p, "manage");
  const check = checkEnvironmentName(name);
  if (!check.ok) throw new MeridianError("invalid_environment_name", check.message, { rule: check.rule });
  const team = await teamFor(ctx, p, teamId);
  if (update.manage_access !== undefined && update.manage_access !== null && !isTeamAdmin(p, team.id)) {
    throw new MeridianError("forbidden", "Only team admins may change who manages an environment group.");
  }
  if (update.region_restriction !== undefined) {
    requireOrgAdmin(p, "Only org admins (the operator) may set a region restriction.");
  }
  if (update.egress !== undefined) {
    requireOrgAdmin(p, "Only org admins (the operator) may set an environment group's egress policy.");
  }
  const restriction = update.region_restriction;
  if (restriction) {
    const region = await ctx.store.db
      .selectFrom("regions")
      .select("slug")
      .where("slug", "=", restriction.region)
      .executeTakeFirst();
    if (!region) throw new MeridianError("region_not_found", `No region '${restriction.region}'.`);
  }
  const userIds = update.manage_access?.user_ids ?? [];
  if (userIds.length > 0) {
    // Only members of the team may be granted; whether an id exists elsewhere is not revealed.
    const found = await ctx.store.db
      .selectFrom("team_members")
      .select("user_id")
      .where("team_id", "=", team.id)
      .where("user_id", "in", userIds)
      .execute();
    const missing = userIds.filter((id) => !found.some((f) => f.user_id === id));
    if (missing.length > 0) {
      throw new MeridianError("user_not_found", `No member ${missing.join(", ")} in team ${team.name}.`, {
        user_ids: missing,
      });
    }
  }

  return change(ctx, async (trx, scope) => {
    // Whatever the fields (and whoever else they need), changing a restricted group is managing it.
    await requireManageAccess(trx, p, { kind: "group", team_id: team.id, name });
    const before = await trx
      .selectFrom("environment_groups")
      .selectAll()
      .where("team_id", "=", team.id)
      .where("name", "=", name)
      .executeTakeFirst();
    const now = ctx.now();
    const next: EnvironmentGroupRow = {
      team_id: team.id,
      name,
      is_restricted: before?.is_restricted ?? 0,
      manage_users: before?.manage_users ?? "[]",
      region: before?.region ?? null,
      standard_endpoint_policy: before?.standard_endpoint_policy ?? "allow",
      egress: before?.egress ?? "allow",
      created_at: before?.created_at ?? now,
      updated_at: now,
    };
    if (update.manage_access) {
      next.is_restricted = update.manage_access.is_restricted ? 1 : 0;
      next.manage_users = JSON.stringify(update.manage_access.is_restricted ? [...new Set(userIds)] : []);
    }
    if (update.region_restriction !== undefined) {
      next.region = restriction?.region ?? null;
      next.standard_endpoint_policy = restriction?.standard_endpoint_policy ?? "allow";
    }
    if (update.egress !== undefined) next.egress = update.egress;
    if (before) {
      await trx
        .updateTable("environment_groups")
        .set(next)
        .where("team_id", "=", team.id)
        .where("name", "=", name)
        .execute();
    } else {
      await trx.insertInto("environment_groups").values(next).execute();
    }
    await recordAudit(ctx, trx, p, {
      team_id: team.id,
      model_id: null,
      action: "environment_group.update",
      target: `environment_group:${team.id}/${name}`,
      before: before ? groupAudit(before) : null,
      after: groupAudit(next),
    });
    const regionSet = next.region !== null && next.region !== (before?.region ?? null);
    if (regionSet || next.egress !== (before?.egress ?? "allow")) {
      await migrateGroup(ctx, trx, p, team, name, next, scope);
    }
    return render(trx, team, name, next);
  });
}

function groupAudit(g: EnvironmentGroupRow) {
  return {
    is_restricted: g.is_restricted === 1,
    user_ids: JSON.parse(g.manage_users) as string[],
    region_restriction: restrictionOf(g),
    egress: egressOf(g),
  };
}

/**
 * Forced redeploy of every environment named `name` in the team whose deployment runs outside the group's
 * region or under the other egress policy. A replica's region and network namespace are fixed for its life,
 * so the environment moves by a promotion of a copy, switched to only when the copy is ready.
 */
async function migrateGroup(
  ctx: ControlContext,
  trx: Parameters<Parameters<typeof change>[1]>[0],
  p: Principal,
  team: TeamRow,
  name: string,
  group: Pick<EnvironmentGroupRow, "region" | "egress">,
  scope: { touch(id: string): void },
) {
  const envs = await trx
    .selectFrom("environments")
    .innerJoin("models", "models.id", "environments.model_id")
    .selectAll("environments")
    .where("models.team_id", "=", team.id)
    .where("environments.name", "=", name)
    .execute();
  for (const env of envs) {
    const inFlight = await activePromotion(trx, env.model_id, name);
    // A promotion started under the old restriction or policy would start its candidate in the wrong
    // region or with the wrong network.
    if (inFlight) await cancelInTransaction(ctx, trx, inFlight.id, scope);
    if (env.current_deployment_id === null) continue;
    const current = await trx
      .selectFrom("deployments")
      .selectAll()
      .where("id", "=", env.current_deployment_id)
      .executeTakeFirstOrThrow();
    const outsideRegion = group.region !== null && current.region !== group.region;
    if (!outsideRegion && current.egress === group.egress) continue;
    const model = await trx
      .selectFrom("models")
      .selectAll()
      .where("id", "=", env.model_id)
      .executeTakeFirstOrThrow();
    const fresh = await trx
      .selectFrom("environments")
      .selectAll()
      .where("model_id", "=", env.model_id)
      .where("name", "=", name)
      .executeTakeFirstOrThrow();
    await promoteInTransaction(
      ctx,
      trx,
      p,
      model,
      fresh,
      current,
      {
        scaleDownPrevious: true,
        action: outsideRegion ? "environment.migrate_region" : "environment.migrate_egress",
      },
      scope,
    );
  }
}
