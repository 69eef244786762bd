// Loading resources the way every route needs them: visible to the principal or "not found" (existence
// never leaks across teams), and rendered into the reference's shapes with the facts they carry.

import {
  canSeeModel,
  canSeeTeam,
  decideManage,
  hasCapability,
  type Principal,
  type TouchedEnvironment,
} from "../core/access.ts";
import { MeridianError } from "../core/errors.ts";
import { secretNamesOf } from "../core/secrets.ts";
import type { DeploymentRow, EnvironmentGroupRow, ModelRow, PromotionRow, TeamRow } from "../store/schema.ts";
import type { Db } from "../store/store.ts";
import { type DeploymentView, deploymentView, modelView } from "./views.ts";

export function requireCapability(p: Principal, capability: Parameters<typeof hasCapability>[1]): void {
  if (!hasCapability(p, capability)) {
    throw new MeridianError("forbidden", `An API key of type ${p.category} may not do this.`);
  }
}

/** Operators: org admins' personal keys (the principal marks only personal keys as org admin). */
export function requireOrgAdmin(p: Principal, message = "Only org admins may do this."): void {
  if (!p.is_org_admin) throw new MeridianError("forbidden", message);
}

export async function loadTeam(db: Db, p: Principal, teamId: string): Promise<TeamRow> {
  const team = await db.selectFrom("teams").selectAll().where("id", "=", teamId).executeTakeFirst();
  if (!team || !canSeeTeam(p, team.id)) throw new MeridianError("team_not_found");
  return team;
}

/** The team a request without `/teams/{id}` acts in: a workspace key's team, or the user's default. */
export async function defaultTeam(db: Db, p: Principal): Promise<TeamRow> {
  const ids = [...p.teams.keys()];
  const teams = await db
    .selectFrom("teams")
    .selectAll()
    .$if(!p.is_org_admin, (q) => q.where("id", "in", ids.length ? ids : [""]))
    .orderBy("is_default", "desc")
    .orderBy("created_at")
    .execute();
  const team = teams[0];
  if (!team) throw new MeridianError("team_not_found", "This API key belongs to no team.");
  return team;
}

export async function loadModel(db: Db, p: Principal, modelId: string): Promise<ModelRow> {
  const model = await db.selectFrom("models").selectAll().where("id", "=", modelId).executeTakeFirst();
  if (!model || !canSeeModel(p, model.team_id, model.id)) {
    throw new MeridianError("model_not_found", `No model with id '${modelId}'.`);
  }
  return model;
}

export async function loadDeployment(db: Db, model: ModelRow, deploymentId: string): Promise<DeploymentRow> {
  const d = await db
    .selectFrom("deployments")
    .selectAll()
    .where("id", "=", deploymentId)
    .where("model_id", "=", model.id)
    .executeTakeFirst();
  if (!d)
    throw new MeridianError("deployment_not_found", `No deployment '${deploymentId}' on model ${model.id}.`);
  return d;
}

/** Resolves `development`, `production` or an id to a deployment of the model. */
export async function loadDeploymentAlias(
  db: Db,
  model: ModelRow,
  idOrAlias: string,
): Promise<DeploymentRow> {
  if (idOrAlias === "development") {
    const d = await db
      .selectFrom("deployments")
      .selectAll()
      .where("model_id", "=", model.id)
      .where("is_development", "=", 1)
      .executeTakeFirst();
    if (!d)
      throw new MeridianError("deployment_not_found", `Model ${model.id} has no development deployment.`);
    return d;
  }
  if (idOrAlias === "production") {
    const env = await db
      .selectFrom("environments")
      .select("current_deployment_id")
      .where("model_id", "=", model.id)
      .where("name", "=", "production")
      .executeTakeFirst();
    if (!env?.current_deployment_id) {
      throw new MeridianError("deployment_not_found", `Model ${model.id} has no production deployment.`);
    }
    return loadDeployment(db, model, env.current_deployment_id);
  }
  return loadDeployment(db, model, idOrAlias);
}

export async function loadGroup(
  db: Db,
  teamId: string,
  name: string,
): Promise<EnvironmentGroupRow | undefined> {
  return db
    .selectFrom("environment_groups")
    .selectAll()
    .where("team_id", "=", teamId)
    .where("name", "=", name)
    .executeTakeFirst();
}

export async function activePromotion(
  db: Db,
  modelId: string,
  env: string,
): Promise<PromotionRow | undefined> {
  return db
    .selectFrom("promotions")
    .selectAll()
    .where("model_id", "=", modelId)
    .where("environment", "=", env)
    .where("active", "=", 1)
    .executeTakeFirst();
}

/**
 * A change to what environments serve or how, as the routes that make one name it. Which environments it
 * touches is worked out here from the store, never by a route, so the same class of hole (a route that
 * changes a restricted environment without asking) has one place to be closed.
 */
export type ManagedChange =
  /** Create, change the settings of, delete or cancel the promotion of one environment (it may not exist yet). */
  | { kind: "environment"; model: ModelRow; name: string }
  /** Promote `source_deployment_id` into `name`. */
  | { kind: "promotion"; model: ModelRow; name: string; source_deployment_id: string }
  /** Push a deployment of `model`: into `environment_name` when given; `development` overwrites the dev slot. */
  | { kind: "push"; model: ModelRow; environment_name: string | null; development: boolean }
  /** Activate, deactivate, retry or delete one deployment. */
  | { kind: "deployment"; model: ModelRow; deployment_id: string }
  /** Delete a model with everything it has. */
  | { kind: "model"; model: ModelRow }
  /** Change an environment group: every environment of that name in the team. */
  | { kind: "group"; team_id: string; name: string }
  /** Create, change or delete a team secret: every environment whose deployment (or candidate) names it. */
  | { kind: "secret"; team_id: string; name: string };

/** Environments of a model that serve one of `ids`, or whose promotion in flight has one as candidate. */
async function stakesOf(
  db: Db,
  modelId: string,
  ids: readonly string[],
  only: "serving_or_candidate" | "candidate" = "serving_or_candidate",
): Promise<string[]> {
  if (ids.length === 0) return [];
  const [serving, candidate] = await Promise.all([
    only === "candidate"
      ? Promise.resolve([])
      : db
          .selectFrom("environments")
          .select("name")
          .where("model_id", "=", modelId)
          .where("current_deployment_id", "in", [...ids])
          .execute(),
    db
      .selectFrom("promotions")
      .select("environment as name")
      .where("model_id", "=", modelId)
      .where("active", "=", 1)
      .where("candidate_deployment_id", "in", [...ids])
      .execute(),
  ]);
  return [...serving, ...candidate].map((e) => e.name);
}

/**
 * An environment and every environment that shares a deployment with it (what it serves, or its candidate):
 * changing its settings changes how many replicas that shared deployment runs.
 */
async function environmentStakes(db: Db, model: ModelRow, name: string): Promise<string[]> {
  const [env, promotion] = await Promise.all([
    db
      .selectFrom("environments")
      .select("current_deployment_id")
      .where("model_id", "=", model.id)
      .where("name", "=", name)
      .executeTakeFirst(),
    activePromotion(db, model.id, name),
  ]);
  const ids = [env?.current_deployment_id, promotion?.candidate_deployment_id].filter(
    (id): id is string => typeof id === "string",
  );
  return [name, ...(await stakesOf(db, model.id, ids))];
}

/** The team a change belongs to and the names of the environments it touches. */
export async function touchedEnvironments(
  db: Db,
  change: ManagedChange,
): Promise<{ team_id: string; names: string[] }> {
  const of = (team_id: string, names: readonly string[]) => ({ team_id, names: [...new Set(names)].sort() });
  switch (change.kind) {
    case "environment":
      return of(change.model.team_id, await environmentStakes(db, change.model, change.name));
    case "promotion":
      // A source that is another environment's candidate is reused, not copied: waking it (or not) is
      // that environment's promotion too. A source that serves elsewhere is always copied, so untouched.
      return of(change.model.team_id, [
        ...(await environmentStakes(db, change.model, change.name)),
        ...(await stakesOf(db, change.model.id, [change.source_deployment_id], "candidate")),
      ]);
    case "push": {
      const names =
        change.environment_name === null
          ? []
          : await environmentStakes(db, change.model, change.environment_name);
      if (change.development) {
        // The development slot is overwritten in place: whatever it is a stake in changes with it.
        const dev = await db
          .selectFrom("deployments")
          .select("id")
          .where("model_id", "=", change.model.id)
          .where("is_development", "=", 1)
          .executeTakeFirst();
        if (dev) names.push(...(await stakesOf(db, change.model.id, [dev.id])));
      }
      return of(change.model.team_id, names);
    }
    case "deployment":
      return of(change.model.team_id, await stakesOf(db, change.model.id, [change.deployment_id]));
    case "model": {
      const envs = await db
        .selectFrom("environments")
        .select("name")
        .where("model_id", "=", change.model.id)
        .execute();
      return of(
        change.model.team_id,
        envs.map((e) => e.name),
      );
    }
    case "group":
      return of(change.team_id, [change.name]);
    case "secret":
      return of(change.team_id, await secretStakes(db, change.team_id, change.name));
  }
}

/**
 * Environments of a team that serve, or are promoting to, a deployment whose config names the secret: its
 * value is what their replicas are given at their next start.
 */
async function secretStakes(db: Db, teamId: string, name: string): Promise<string[]> {
  const [serving, candidates] = await Promise.all([
    db
      .selectFrom("environments")
      .innerJoin("models", "models.id", "environments.model_id")
      .innerJoin("deployments", "deployments.id", "environments.current_deployment_id")
      .select(["environments.name", "deployments.config"])
      .where("models.team_id", "=", teamId)
      .execute(),
    db
      .selectFrom("promotions")
      .innerJoin("models", "models.id", "promotions.model_id")
      .innerJoin("deployments", "deployments.id", "promotions.candidate_deployment_id")
      .select(["promotions.environment as name", "deployments.config"])
      .where("models.team_id", "=", teamId)
      .where("promotions.active", "=", 1)
      .execute(),
  ]);
  return [...serving, ...candidates]
    .filter((e) => secretNamesOf(JSON.parse(e.config)).includes(name))
    .map((e) => e.name);
}

/**
 * The manage check of every route that changes what an environment serves or how: the principal must be
 * allowed to manage every restricted environment the change touches (`decideManage`). Call it inside the
 * change's transaction, so what it read is what the change acts on.
 */
export async function requireManageAccess(db: Db, p: Principal, change: ManagedChange): Promise<void> {
  const { team_id, names } = await touchedEnvironments(db, change);
  const groups =
    names.length === 0
      ? []
      : await db
          .selectFrom("environment_groups")
          .select(["name", "is_restricted", "manage_users"])
          .where("team_id", "=", team_id)
          .where("name", "in", names)
          .execute();
  const byName = new Map(groups.map((g) => [g.name, g]));
  const touched: TouchedEnvironment[] = names.map((name) => {
    const g = byName.get(name);
    return {
      name,
      access: {
        is_restricted: g?.is_restricted === 1,
        user_ids: g ? (JSON.parse(g.manage_users) as string[]) : [],
      },
    };
  });
  const decision = decideManage(p, team_id, touched);
  switch (decision.kind) {
    case "allowed":
      return;
    case "forbidden":
      throw new MeridianError("forbidden", `An API key of type ${p.category} may not do this.`);
    case "restricted": {
      const list = decision.environments.map((n) => `'${n}'`).join(", ");
      const which =
        decision.environments.length === 1 ? `Environment ${list} is` : `Environments ${list} are`;
      const why = decision.workspace_key
        ? " A workspace API key acts for no person: use the personal API key of a listed user or an admin."
        : "";
      throw new MeridianError(
        "environment_restricted",
        `${which} restricted: only its listed users and admins may manage ${decision.environments.length === 1 ? "it" : "them"}.${why}`,
        { environments: decision.environments },
      );
    }
  }
}

/** Runs `query` over `ids` in slices, so a long list never exceeds a database's parameter limit. */
async function bySlices<T>(ids: readonly string[], query: (slice: string[]) => Promise<T[]>): Promise<T[]> {
  const out: T[] = [];
  for (let i = 0; i < ids.length; i += 500) out.push(...(await query(ids.slice(i, i + 500))));
  return out;
}

/** Renders deployments with a fixed number of queries, however many there are. */
export async function renderDeployments(db: Db, list: readonly DeploymentRow[]): Promise<DeploymentView[]> {
  const ids = list.map((d) => d.id);
  const [envs, ready, regions] = await Promise.all([
    bySlices(ids, (slice) =>
      db
        .selectFrom("environments")
        .select(["name", "current_deployment_id"])
        .where("current_deployment_id", "in", slice)
        .orderBy("name")
        .execute(),
    ),
    bySlices(ids, (slice) =>
      db
        .selectFrom("replicas")
        .select(["deployment_id", (eb) => eb.fn.countAll<string | number>().as("n")])
        .where("deployment_id", "in", slice)
        .where("state", "=", "READY")
        .groupBy("deployment_id")
        .execute(),
    ),
    db.selectFrom("regions").selectAll().execute(),
  ]);
  const readyBy = new Map(ready.map((r) => [r.deployment_id, Number(r.n)]));
  const regionBy = new Map(regions.map((r) => [r.slug, r]));
  const envsBy = new Map<string, string[]>();
  for (const e of envs)
    envsBy.set(e.current_deployment_id!, [...(envsBy.get(e.current_deployment_id!) ?? []), e.name]);
  return list.map((d) => {
    const names = envsBy.get(d.id) ?? [];
    const environment = names.includes("production") ? "production" : (names[0] ?? null);
    return deploymentView(d, {
      environment,
      active_replica_count: readyBy.get(d.id) ?? 0,
      region: d.region === null ? null : (regionBy.get(d.region) ?? null),
    });
  });
}

export async function renderDeployment(db: Db, d: DeploymentRow): Promise<DeploymentView> {
  return (await renderDeployments(db, [d]))[0]!;
}

/** Renders models with a fixed number of queries, however many there are. */
export async function renderModels(db: Db, models: readonly ModelRow[]) {
  const ids = models.map((m) => m.id);
  const [teams, counts, prods, devs] = await Promise.all([
    db.selectFrom("teams").select(["id", "name"]).execute(),
    bySlices(ids, (slice) =>
      db
        .selectFrom("deployments")
        .select(["model_id", (eb) => eb.fn.countAll<string | number>().as("n")])
        .where("model_id", "in", slice)
        .groupBy("model_id")
        .execute(),
    ),
    bySlices(ids, (slice) =>
      db
        .selectFrom("environments")
        .select(["model_id", "current_deployment_id"])
        .where("model_id", "in", slice)
        .where("name", "=", "production")
        .execute(),
    ),
    bySlices(ids, (slice) =>
      db
        .selectFrom("deployments")
        .select(["model_id", "id"])
        .where("model_id", "in", slice)
        .where("is_development", "=", 1)
        .execute(),
    ),
  ]);
  const teamName = new Map(teams.map((t) => [t.id, t.name]));
  const count = new Map(counts.map((c) => [c.model_id, Number(c.n)]));
  const prod = new Map(prods.map((p) => [p.model_id, p.current_deployment_id]));
  const dev = new Map(devs.map((d) => [d.model_id, d.id]));
  return models.map((m) =>
    modelView(m, {
      team_name: teamName.get(m.team_id) ?? "",
      deployments_count: count.get(m.id) ?? 0,
      production_deployment_id: prod.get(m.id) ?? null,
      development_deployment_id: dev.get(m.id) ?? null,
    }),
  );
}

export async function renderModel(db: Db, m: ModelRow) {
  return (await renderModels(db, [m]))[0]!;
}
