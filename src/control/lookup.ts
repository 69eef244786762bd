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

export async function renderDeployment(db: Db, d: DeploymentRow): Promise<DeploymentView> {
  const [envs, ready, region] = await Promise.all([
    db
      .selectFrom("environments")
      .select("name")
      .where("current_deployment_id", "=", d.id)
      .orderBy("name")
      .execute(),
    db
      .selectFrom("replicas")
      .select((eb) => eb.fn.countAll<string | number>().as("n"))
      .where("deployment_id", "=", d.id)
      .where("state", "=", "READY")
      .executeTakeFirstOrThrow(),
    d.region === null
      ? Promise.resolve(undefined)
      : db.selectFrom("regions").selectAll().where("slug", "=", d.region).executeTakeFirst(),
  ]);
  const environment = envs.some((e) => e.name === "production") ? "production" : (envs[0]?.name ?? null);
  return deploymentView(d, { environment, active_replica_count: Number(ready.n), region: region ?? null });
}

export async function renderModel(db: Db, m: ModelRow) {
  const [team, count, prod, dev] = await Promise.all([
    db.selectFrom("teams").select("name").where("id", "=", m.team_id).executeTakeFirstOrThrow(),
    db
      .selectFrom("deployments")
      .select((eb) => eb.fn.countAll<string | number>().as("n"))
      .where("model_id", "=", m.id)
      .executeTakeFirstOrThrow(),
    db
      .selectFrom("environments")
      .select("current_deployment_id")
      .where("model_id", "=", m.id)
      .where("name", "=", "production")
      .executeTakeFirst(),
    db
      .selectFrom("deployments")
      .select("id")
      .where("model_id", "=", m.id)
      .where("is_development", "=", 1)
      .executeTakeFirst(),
  ]);
  return modelView(m, {
    team_name: team.name,
    deployments_count: Number(count.n),
    production_deployment_id: prod?.current_deployment_id ?? null,
    development_deployment_id: dev?.id ?? null,
  });
}
