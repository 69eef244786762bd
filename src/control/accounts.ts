// Teams, users and API keys (reference: /v1/teams, /v1/users, /v1/api_keys), the first-start bootstrap of
// the organization, and the org-admin operations that create teams and users (`/v1/admin/…`).

import { isTeamAdmin, type Principal } from "../core/access.ts";
import { API_KEY_CATEGORIES, type ApiKeyCategory, type TeamRole } from "../core/domain.ts";
import { MeridianError } from "../core/errors.ts";
import { INVOKE_CATEGORIES } from "../core/routing.ts";
import type { TeamRow } from "../store/schema.ts";
import { type Db, isUniqueViolation, type Store } from "../store/store.ts";
import { type ControlContext, recordAudit } from "./context.ts";
import { newApiKey, newId } from "./identity.ts";
import { ensureControlKey } from "./keys.ts";
import { defaultTeam, loadTeam, requireCapability, requireOrgAdmin } from "./lookup.ts";
import { apiKeyView, teamView, userView } from "./views.ts";

export const SEED_REGIONS = [
  { slug: "us", display_name: "United States" },
  { slug: "eu", display_name: "European Union" },
  { slug: "uk", display_name: "United Kingdom" },
  { slug: "au", display_name: "Australia" },
] as const;

export interface Bootstrap {
  /** The admin's API key, present only on the start that created it. */
  admin_key: string | null;
}

/**
 * First start: the organization, a default team, an admin user with a personal key, the seed regions
 * and the control plane's signing key. Idempotent, and atomic: a crash leaves either nothing or all of it.
 */
export async function bootstrap(
  store: Store,
  now: string,
  /** Saves the admin key before the transaction commits, so a crash never loses the only copy. */
  saveAdminKey: (key: string) => Promise<void>,
): Promise<Bootstrap> {
  return store.transaction(async (trx) => {
    // Control replicas started together on an empty PostgreSQL would each see no organization and each
    // create one (the second failing on `teams_name_key`). The first to take this lock bootstraps; the
    // others wait for its commit, then read its organization (READ COMMITTED: each statement sees the
    // latest commit) and start as a non-first start. SQLite's one writer settles it by itself.
    await store.lockForTransaction(trx, "bootstrap");
    if (await store.getMeta("organization_id", trx)) return { admin_key: null };
    const orgId = newId(8);
    const teamId = newId(8);
    const userId = newId(8);
    const key = newApiKey();
    await store.setMeta("organization_id", orgId, trx);
    await store.setMeta("organization_name", "Meridian", trx);
    await ensureControlKey(store, trx);
    await trx
      .insertInto("teams")
      .values({ id: teamId, name: "Default Team", is_default: 1, created_at: now })
      .execute();
    await trx
      .insertInto("users")
      .values({ id: userId, email: "admin@meridian.local", name: "Admin", is_org_admin: 1, created_at: now })
      .execute();
    await trx
      .insertInto("team_members")
      .values({ team_id: teamId, user_id: userId, role: "TEAM_ADMIN" })
      .execute();
    await trx
      .insertInto("api_keys")
      .values({
        prefix: key.prefix,
        hash: key.hash,
        name: "admin",
        category: "PERSONAL",
        team_id: teamId,
        user_id: userId,
        model_ids: null,
        created_at: now,
      })
      .execute();
    // Seed regions keep their listed order: each is created a millisecond after the previous.
    const start = Date.parse(now);
    for (const [i, r] of SEED_REGIONS.entries()) {
      await trx
        .insertInto("regions")
        .values({ ...r, created_at: new Date(start + i).toISOString() })
        .execute();
    }
    await store.bumpRevision(trx);
    await saveAdminKey(key.key);
    return { admin_key: key.key };
  });
}

export async function listTeams(ctx: ControlContext, p: Principal) {
  requireCapability(p, "read");
  const rows = await ctx.store.db
    .selectFrom("teams")
    .selectAll()
    .orderBy("created_at")
    .orderBy("id")
    .execute();
  return { teams: rows.filter((t) => p.is_org_admin || p.teams.has(t.id)).map(teamView) };
}

export async function getTeam(ctx: ControlContext, p: Principal, teamId: string) {
  requireCapability(p, "read");
  return teamView(await loadTeam(ctx.store.db, p, teamId));
}

export async function createTeam(ctx: ControlContext, p: Principal, name: string) {
  requireOrgAdmin(p);
  const team: TeamRow = { id: newId(8), name: name.trim(), is_default: 0, created_at: ctx.now() };
  if (team.name.length === 0)
    throw new MeridianError("invalid_request", "A team needs a name.", { field: "name" });
  try {
    await ctx.store.transaction(async (trx) => {
      await trx.insertInto("teams").values(team).execute();
      await recordAudit(ctx, trx, p, {
        team_id: team.id,
        model_id: null,
        action: "team.create",
        target: `team:${team.id}`,
        after: { name: team.name },
      });
    });
  } catch (err) {
    if (isUniqueViolation(err))
      throw new MeridianError("conflict", `A team named '${team.name}' exists already.`);
    throw err;
  }
  return teamView(team);
}

async function workspaceName(db: Db): Promise<string | null> {
  const row = await db
    .selectFrom("meta")
    .select("value")
    .where("key", "=", "organization_name")
    .executeTakeFirst();
  return row?.value ?? null;
}

export async function me(ctx: ControlContext, p: Principal) {
  if (p.user_id === null) {
    throw new MeridianError("forbidden", "A workspace API key acts for no user; use a personal API key.");
  }
  const user = await ctx.store.db
    .selectFrom("users")
    .selectAll()
    .where("id", "=", p.user_id)
    .executeTakeFirstOrThrow();
  return userView(user, await workspaceName(ctx.store.db));
}

/** Users who share a team with the principal (org admins see everyone). */
export async function listUsers(ctx: ControlContext, p: Principal) {
  requireCapability(p, "read");
  const db = ctx.store.db;
  const teamIds = [...p.teams.keys()];
  const rows = await db
    .selectFrom("users")
    .selectAll()
    .$if(!p.is_org_admin, (q) =>
      q.where(
        "id",
        "in",
        db
          .selectFrom("team_members")
          .select("user_id")
          .where("team_id", "in", teamIds.length ? teamIds : [""]),
      ),
    )
    .orderBy("created_at")
    .orderBy("id")
    .execute();
  const ws = await workspaceName(db);
  return { items: rows.map((u) => userView(u, ws)), pagination: { has_more: false, cursor: null } };
}

export async function getUser(ctx: ControlContext, p: Principal, userId: string) {
  const { items } = await listUsers(ctx, p);
  const user = items.find((u) => u.user_id === userId);
  if (!user) throw new MeridianError("user_not_found", `No user '${userId}'.`);
  return user;
}

export interface NewUser {
  email: string;
  name?: string | null;
  is_org_admin?: boolean;
  teams?: Array<{ team_id: string; role: TeamRole }>;
}

/** Org admins add people; the answer carries the user's first personal API key (shown once). */
export async function createUser(ctx: ControlContext, p: Principal, body: NewUser) {
  requireOrgAdmin(p);
  const memberships = body.teams?.length
    ? body.teams
    : [{ team_id: (await defaultTeam(ctx.store.db, p)).id, role: "MEMBER" as TeamRole }];
  for (const m of memberships) await loadTeam(ctx.store.db, p, m.team_id);
  const userId = newId(8);
  const key = newApiKey();
  const now = ctx.now();
  try {
    await ctx.store.transaction(async (trx) => {
      await trx
        .insertInto("users")
        .values({
          id: userId,
          email: body.email,
          name: body.name ?? null,
          is_org_admin: body.is_org_admin ? 1 : 0,
          created_at: now,
        })
        .execute();
      for (const m of memberships) {
        await trx
          .insertInto("team_members")
          .values({ team_id: m.team_id, user_id: userId, role: m.role })
          .execute();
      }
      await trx
        .insertInto("api_keys")
        .values({
          prefix: key.prefix,
          hash: key.hash,
          name: "personal",
          category: "PERSONAL",
          team_id: memberships[0]!.team_id,
          user_id: userId,
          model_ids: null,
          created_at: now,
        })
        .execute();
      await recordAudit(ctx, trx, p, {
        team_id: memberships[0]!.team_id,
        model_id: null,
        action: "user.create",
        target: `user:${userId}`,
        after: { email: body.email, is_org_admin: body.is_org_admin ?? false, teams: memberships },
      });
    });
  } catch (err) {
    if (isUniqueViolation(err))
      throw new MeridianError("conflict", `A user with email '${body.email}' exists already.`);
    throw err;
  }
  const user = await ctx.store.db
    .selectFrom("users")
    .selectAll()
    .where("id", "=", userId)
    .executeTakeFirstOrThrow();
  return { user: userView(user), api_key: key.key };
}

// —— API keys ——

export async function listApiKeys(ctx: ControlContext, p: Principal) {
  requireCapability(p, "manage_api_keys");
  const db = ctx.store.db;
  const teamIds = [...p.teams.keys()];
  const rows = await db
    .selectFrom("api_keys")
    .selectAll()
    .where((eb) =>
      p.category === "PERSONAL"
        ? eb.or([
            eb("user_id", "=", p.user_id),
            eb.and([
              eb("user_id", "is", null),
              eb("team_id", "in", teamIds.filter((t) => isTeamAdmin(p, t)).concat("")),
            ]),
          ])
        : eb.and([eb("user_id", "is", null), eb("team_id", "in", teamIds.length ? teamIds : [""])]),
    )
    .orderBy("created_at")
    .orderBy("prefix")
    .execute();
  const teams = new Map(
    (await db.selectFrom("teams").select(["id", "name"]).execute()).map((t) => [t.id, t.name]),
  );
  const users = new Map((await db.selectFrom("users").selectAll().execute()).map((u) => [u.id, u]));
  return {
    keys: rows.map((k) =>
      apiKeyView(
        k,
        k.user_id === null ? (teams.get(k.team_id) ?? null) : null,
        k.user_id === null ? null : (users.get(k.user_id) ?? null),
      ),
    ),
  };
}

export interface NewApiKey {
  name?: string | null;
  type: ApiKeyCategory;
  model_ids?: string[] | null;
  /** Regions whose planes may authenticate the key for inference; absent or null: every region. */
  regions?: string[] | null;
}

/**
 * The regions a new key is bound to: null for every region, else the distinct existing slugs. Only keys
 * that may call inference take regions (on any other the list would bind nothing), and an empty list is
 * refused rather than read as "everywhere" or as a key that works nowhere.
 */
async function keyRegions(db: Db, body: NewApiKey): Promise<string[] | null> {
  if (body.regions === undefined || body.regions === null) return null;
  if (!INVOKE_CATEGORIES.has(body.type)) {
    throw new MeridianError(
      "invalid_request",
      `regions applies only to keys that may call inference (${[...INVOKE_CATEGORIES].join(", ")}).`,
      { field: "regions" },
    );
  }
  if (body.regions.length === 0) {
    throw new MeridianError(
      "invalid_request",
      "regions must name at least one region; leave it out (or null) for a key that works in every region.",
      { field: "regions" },
    );
  }
  const wanted = [...new Set(body.regions)];
  const known = new Set(
    (await db.selectFrom("regions").select("slug").where("slug", "in", wanted).execute()).map((r) => r.slug),
  );
  const missing = wanted.filter((slug) => !known.has(slug));
  if (missing.length > 0) {
    throw new MeridianError("region_not_found", `No region ${missing.map((m) => `'${m}'`).join(", ")}.`, {
      field: "regions",
      regions: missing,
    });
  }
  return wanted;
}

export async function createApiKey(
  ctx: ControlContext,
  p: Principal,
  teamId: string | null,
  body: NewApiKey,
) {
  requireCapability(p, "manage_api_keys");
  if (!API_KEY_CATEGORIES.includes(body.type))
    throw new MeridianError("invalid_request", `Unknown key type '${body.type}'.`);
  const scoped = body.type === "WORKSPACE_INVOKE" || body.type === "WORKSPACE_EXPORT_METRICS";
  if (body.model_ids && !scoped) {
    throw new MeridianError(
      "invalid_request",
      "model_ids applies only to WORKSPACE_INVOKE and WORKSPACE_EXPORT_METRICS keys.",
      {
        field: "model_ids",
      },
    );
  }
  if (body.type === "PERSONAL" && (p.category !== "PERSONAL" || teamId !== null)) {
    throw new MeridianError(
      "invalid_request",
      "A personal key is created with a personal key, on /v1/api_keys.",
    );
  }
  const team = teamId === null ? await defaultTeam(ctx.store.db, p) : await loadTeam(ctx.store.db, p, teamId);
  if (body.type !== "PERSONAL" && p.category === "PERSONAL" && !isTeamAdmin(p, team.id)) {
    throw new MeridianError("forbidden", "Only team admins may create workspace API keys.");
  }
  if (body.model_ids?.length) {
    const models = await ctx.store.db
      .selectFrom("models")
      .select("id")
      .where("team_id", "=", team.id)
      .where("id", "in", body.model_ids)
      .execute();
    const missing = body.model_ids.filter((id) => !models.some((m) => m.id === id));
    if (missing.length)
      throw new MeridianError("model_not_found", `No model ${missing.join(", ")} in team ${team.name}.`);
  }
  const regions = await keyRegions(ctx.store.db, body);
  const key = newApiKey();
  await ctx.store.transaction(async (trx) => {
    await trx
      .insertInto("api_keys")
      .values({
        prefix: key.prefix,
        hash: key.hash,
        name: body.name ?? null,
        category: body.type,
        team_id: team.id,
        user_id: body.type === "PERSONAL" ? p.user_id : null,
        model_ids: body.model_ids ? JSON.stringify([...new Set(body.model_ids)]) : null,
        regions: regions === null ? null : JSON.stringify(regions),
        created_at: ctx.now(),
      })
      .execute();
    await recordAudit(ctx, trx, p, {
      team_id: team.id,
      model_id: null,
      action: "api_key.create",
      target: `api_key:${key.prefix}`,
      after: { type: body.type, name: body.name ?? null, model_ids: body.model_ids ?? null, regions },
    });
    // Ingresses authenticate from their snapshot: a new key must reach every plane.
    await ctx.store.bumpRevision(trx);
  });
  void ctx.feed.changed();
  return { api_key: key.key };
}

export async function deleteApiKey(ctx: ControlContext, p: Principal, prefix: string) {
  requireCapability(p, "manage_api_keys");
  const row = await ctx.store.db
    .selectFrom("api_keys")
    .selectAll()
    .where("prefix", "=", prefix)
    .executeTakeFirst();
  const visible =
    row !== undefined &&
    // Workspace keys have no user: a null user_id on both sides is not "the caller's own key".
    ((row.user_id !== null && row.user_id === p.user_id) ||
      (row.user_id === null &&
        p.teams.has(row.team_id) &&
        (p.category !== "PERSONAL" || isTeamAdmin(p, row.team_id))) ||
      p.is_org_admin);
  if (!row || !visible) throw new MeridianError("api_key_not_found", `No API key with prefix '${prefix}'.`);
  await ctx.store.transaction(async (trx) => {
    await trx.deleteFrom("api_keys").where("prefix", "=", prefix).execute();
    await recordAudit(ctx, trx, p, {
      team_id: row.team_id,
      model_id: null,
      action: "api_key.delete",
      target: `api_key:${prefix}`,
      before: { type: row.category, name: row.name },
    });
    await ctx.store.bumpRevision(trx);
  });
  void ctx.feed.changed();
  return { prefix };
}
