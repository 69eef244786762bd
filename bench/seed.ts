// Seeds a control plane's store directly (not through the API, for speed): N models of one team, each with
// the given environments and one deployment per environment serving it. Deployments are SCALED_TO_ZERO, so
// the scheduler wants no replicas for them; the rows are otherwise what the API writes.

import type { Insertable, Kysely } from "kysely";
import { DEFAULT_AUTOSCALING, DEFAULT_PROMOTION_SETTINGS } from "../src/control/views.ts";
import type { Schema } from "../src/store/schema.ts";
import { modelId } from "./snapshot.ts";

export interface SeedOptions {
  count: number;
  environments: string[];
  /** Prefix of model names (unique per team). */
  name?: string;
}

export async function defaultTeam(db: Kysely<Schema>): Promise<string> {
  const team = await db
    .selectFrom("teams")
    .select("id")
    .where("is_default", "=", 1)
    .executeTakeFirstOrThrow();
  return team.id;
}

/** Inserts the models in one transaction, in batches; returns the model ids. */
export async function seedModels(db: Kysely<Schema>, o: SeedOptions): Promise<string[]> {
  const team = await defaultTeam(db);
  const now = new Date().toISOString();
  const artifactKey = "bench-artifact";
  const ids: string[] = [];
  await db.transaction().execute(async (trx) => {
    await trx
      .insertInto("artifacts")
      .values({
        key: artifactKey,
        sha256: "0".repeat(64),
        size: 1,
        state: "STORED",
        team_id: team,
        created_at: now,
      })
      .onConflict((oc) => oc.column("key").doNothing())
      .execute();
    const batch = 1000;
    for (let start = 0; start < o.count; start += batch) {
      const models: Schema["models"][] = [];
      const envs: Insertable<Schema["environments"]>[] = [];
      const deps: Insertable<Schema["deployments"]>[] = [];
      for (let i = start; i < Math.min(o.count, start + batch); i++) {
        const id = modelId(i);
        ids.push(id);
        models.push({ id, team_id: team, name: `${o.name ?? "bench"}-${i}`, created_at: now });
        o.environments.forEach((env, k) => {
          const d = `${id}d${k}`;
          deps.push({
            id: d,
            model_id: id,
            name: `deployment-${k + 1}`,
            status: "SCALED_TO_ZERO",
            status_message: null,
            is_development: 0,
            artifact_key: artifactKey,
            config: JSON.stringify({ model_name: `${o.name ?? "bench"}-${i}` }),
            region: env === "prod-eu" ? "eu" : null,
            egress: "allow",
            copied_from: null,
            autoscaling: JSON.stringify(DEFAULT_AUTOSCALING),
            labels: null,
            created_at: now,
            updated_at: now,
          });
          envs.push({
            model_id: id,
            name: env,
            current_deployment_id: d,
            autoscaling: JSON.stringify(DEFAULT_AUTOSCALING),
            promotion_settings: JSON.stringify(DEFAULT_PROMOTION_SETTINGS),
            created_at: now,
          });
        });
      }
      await trx.insertInto("models").values(models).execute();
      for (let i = 0; i < deps.length; i += 1000)
        await trx
          .insertInto("deployments")
          .values(deps.slice(i, i + 1000))
          .execute();
      for (let i = 0; i < envs.length; i += 1000)
        await trx
          .insertInto("environments")
          .values(envs.slice(i, i + 1000))
          .execute();
    }
    await trx
      .updateTable("revision")
      .set((eb) => ({ value: eb("value", "+", 1) }))
      .where("id", "=", 1)
      .execute();
  });
  return ids;
}
