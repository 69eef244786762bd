// Loading resources the way every route needs them: visible to the principal or "not found" (existence
// never leaks across teams), and rendered into the reference's shapes with the facts they carry.

import { canSeeModel, canSeeTeam, hasCapability, type Principal } from "../core/access.ts";
import { MeridianError } from "../core/errors.ts";
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
