// Team secrets (reference: /v1/secrets, /v1/teams/{team_id}/secrets): upsert, list without values, and
// delete, each sealed at rest with the key file's key (src/lib/secret-box.ts); the start-up check of that
// key file against the database; and the delivery of a replica's secrets to the plane that starts it, the
// only place a value ever leaves the control plane.

import { sql } from "kysely";
import type { Logger } from "pino";
import type { Principal } from "../core/access.ts";
import { RUNNING_STATUSES } from "../core/deployment-status.ts";
import type { DeploymentStatus } from "../core/domain.ts";
import { MeridianError } from "../core/errors.ts";
import { checkSecretName, checkSecretValue, missingSecretsMessage, secretNamesOf } from "../core/secrets.ts";
import { type SecretBox, SecretOpenError, SecretsKeyError } from "../lib/secret-box.ts";
import type { PlaneRow, SecretRow, TeamRow } from "../store/schema.ts";
import type { Db, Store } from "../store/store.ts";
import { type ControlContext, recordAudit } from "./context.ts";
import { newId } from "./identity.ts";
import { defaultTeam, loadTeam, requireCapability, requireManageAccess } from "./lookup.ts";

/** The meta key holding the id of the key this installation seals new values with. */
const KEY_ID_META = "secrets_key_id";

/**
 * Statuses in which a deployment starts replicas without a new push or an explicit activation: running, or
 * scaled to zero (woken by a promotion back or by traffic). Its secrets may not be deleted.
 */
const IN_USE_STATUSES: readonly DeploymentStatus[] = [...RUNNING_STATUSES, "SCALED_TO_ZERO"];

/** SecretV1: metadata only. There is no route, and no code path, that renders a value to an API caller. */
function secretView(row: Pick<SecretRow, "id" | "name" | "created_at">, team: TeamRow) {
  return { id: row.id, created_at: row.created_at, name: row.name, team_name: team.name };
}

async function teamFor(ctx: ControlContext, p: Principal, teamId: string | null): Promise<TeamRow> {
  return teamId === null ? defaultTeam(ctx.store.db, p) : loadTeam(ctx.store.db, p, teamId);
}

/**
 * Takes the lock every writer takes first (the revision row, see Store.transaction) without bumping the
 * revision: a secret changes nothing a plane's snapshot holds, but its manage check and its in-use check
 * must see what concurrent pushes and promotions commit.
 */
async function lockWriters(trx: Db): Promise<void> {
  await trx.updateTable("revision").set({ value: sql<number>`value` }).where("id", "=", 1).execute();
}

export async function listSecrets(ctx: ControlContext, p: Principal, teamId: string | null) {
  requireCapability(p, "read");
  const team = await teamFor(ctx, p, teamId);
  const rows = await ctx.store.db
    .selectFrom("secrets")
    .select(["id", "name", "created_at"])
    .where("team_id", "=", team.id)
    .orderBy("name")
    .execute();
  return { secrets: rows.map((r) => secretView(r, team)) };
}

/**
 * Creates the secret, or replaces its value (its id and created_at stay). Running replicas keep the value
 * they started with; replicas started from now on get the new one. A secret that a restricted environment's
 * deployment names is managed like that environment.
 */
export async function upsertSecret(
  ctx: ControlContext,
  p: Principal,
  teamId: string | null,
  body: { name: string; value: string },
) {
  requireCapability(p, "manage");
  const nameCheck = checkSecretName(body.name);
  if (!nameCheck.ok) {
    throw new MeridianError("invalid_secret_name", nameCheck.message, {
      field: "name",
      rule: nameCheck.rule,
    });
  }
  const valueCheck = checkSecretValue(body.value);
  if (!valueCheck.ok) {
    throw new MeridianError("invalid_secret_value", valueCheck.message, {
      field: "value",
      rule: valueCheck.rule,
    });
  }
  const team = await teamFor(ctx, p, teamId);
  const name = body.name;
  const sealed = ctx.secrets.seal(body.value, { team_id: team.id, name });
  return ctx.store.transaction(async (trx) => {
    await lockWriters(trx);
    await requireManageAccess(trx, p, { kind: "secret", team_id: team.id, name });
    const now = ctx.now();
    const existing = await trx
      .selectFrom("secrets")
      .select(["id", "name", "created_at"])
      .where("team_id", "=", team.id)
      .where("name", "=", name)
      .executeTakeFirst();
    const row = existing ?? { id: newId(7), name, created_at: now };
    if (existing) {
      await trx
        .updateTable("secrets")
        .set({ key_id: sealed.key_id, sealed: sealed.sealed, updated_at: now })
        .where("id", "=", existing.id)
        .execute();
    } else {
      await trx
        .insertInto("secrets")
        .values({ ...row, team_id: team.id, ...sealed, updated_at: now })
        .execute();
    }
    // Never the value, nor anything derived from it (a hash of a short value is as good as the value).
    await recordAudit(ctx, trx, p, {
      team_id: team.id,
      model_id: null,
      action: existing ? "secret.update" : "secret.create",
      target: `secret:${team.id}/${name}`,
      after: { id: row.id, name },
    });
    return secretView(row, team);
  });
}

/**
 * Deletes a secret. Refused (409, naming them) while a deployment that runs or may wake names it: its next
 * replica would fail to start. Deployments that are inactive may lose it; activating one fails, naming it.
 */
export async function deleteSecret(ctx: ControlContext, p: Principal, teamId: string | null, name: string) {
  requireCapability(p, "manage");
  const team = await teamFor(ctx, p, teamId);
  return ctx.store.transaction(async (trx) => {
    await lockWriters(trx);
    await requireManageAccess(trx, p, { kind: "secret", team_id: team.id, name });
    const row = await trx
      .selectFrom("secrets")
      .select(["id", "name"])
      .where("team_id", "=", team.id)
      .where("name", "=", name)
      .executeTakeFirst();
    if (!row) {
      throw new MeridianError("secret_not_found", `Team '${team.name}' has no secret named '${name}'.`);
    }
    const users = await deploymentsUsing(trx, team.id, name);
    if (users.length > 0) {
      const list = users.map((u) => `${u.deployment_id} (model ${u.model_id})`).join(", ");
      throw new MeridianError(
        "secret_in_use",
        `Secret '${name}' is used by ${users.length === 1 ? "deployment" : "deployments"} ${list}, which ` +
          `${users.length === 1 ? "runs or may wake" : "run or may wake"}: deactivate or delete ${users.length === 1 ? "it" : "them"} first.`,
        { deployments: users },
      );
    }
    await trx.deleteFrom("secrets").where("id", "=", row.id).execute();
    await recordAudit(ctx, trx, p, {
      team_id: team.id,
      model_id: null,
      action: "secret.delete",
      target: `secret:${team.id}/${name}`,
      before: { id: row.id, name },
    });
    return { name };
  });
}

/** Deployments of the team, running or able to wake, whose config names the secret. */
async function deploymentsUsing(db: Db, teamId: string, name: string) {
  const rows = await db
    .selectFrom("deployments")
    .innerJoin("models", "models.id", "deployments.model_id")
    .select(["deployments.id", "deployments.model_id", "deployments.config"])
    .where("models.team_id", "=", teamId)
    .where("deployments.status", "in", [...IN_USE_STATUSES])
    .orderBy("deployments.id")
    .execute();
  return rows
    .filter((d) => secretNamesOf(JSON.parse(d.config)).includes(name))
    .map((d) => ({ model_id: d.model_id, deployment_id: d.id }));
}

/** The names of `names` that the team has no secret for, sorted. */
export async function missingSecrets(db: Db, teamId: string, names: readonly string[]): Promise<string[]> {
  if (names.length === 0) return [];
  const found = await db
    .selectFrom("secrets")
    .select("name")
    .where("team_id", "=", teamId)
    .where("name", "in", [...names])
    .execute();
  const have = new Set(found.map((f) => f.name));
  return names.filter((n) => !have.has(n)).sort();
}

/** Why a deployment of the team cannot start for want of secrets, or null when it has them all. */
export async function missingSecretsReason(db: Db, teamId: string, config: string): Promise<string | null> {
  const missing = await missingSecrets(db, teamId, secretNamesOf(JSON.parse(config)));
  if (missing.length === 0) return null;
  const team = await db.selectFrom("teams").select("name").where("id", "=", teamId).executeTakeFirst();
  return missingSecretsMessage(missing, team?.name ?? teamId);
}

/**
 * The values of the secrets that the replica's deployment names, for the plane the replica is placed on,
 * as it starts the replica. Anything else is 404: another plane's replica, a replica no longer placed
 * there, one that never existed. A secret the team lacks is 409 naming it; the plane fails the replica
 * with that message, so the deployment ends DEPLOY_FAILED saying which secret to create.
 */
export async function replicaSecrets(ctx: ControlContext, plane: PlaneRow, replicaId: string) {
  const db = ctx.store.db;
  const replica = await db
    .selectFrom("replicas")
    .innerJoin("deployments", "deployments.id", "replicas.deployment_id")
    .innerJoin("models", "models.id", "deployments.model_id")
    .innerJoin("teams", "teams.id", "models.team_id")
    .select([
      "replicas.id",
      "replicas.deployment_id",
      "deployments.config",
      "models.team_id",
      "teams.name as team_name",
    ])
    .where("replicas.id", "=", replicaId)
    .where("replicas.plane", "=", plane.name)
    .executeTakeFirst();
  if (!replica) {
    throw new MeridianError(
      "replica_not_found",
      `No replica '${replicaId}' is placed on plane ${plane.name}.`,
    );
  }
  const names = secretNamesOf(JSON.parse(replica.config));
  if (names.length === 0) return { secrets: {} };
  const rows = await db
    .selectFrom("secrets")
    .select(["name", "key_id", "sealed"])
    .where("team_id", "=", replica.team_id)
    .where("name", "in", names)
    .execute();
  const missing = names.filter((n) => !rows.some((r) => r.name === n));
  if (missing.length > 0) {
    ctx.logger.warn(
      { plane: plane.name, replica: replica.id, deployment: replica.deployment_id, missing },
      "replica names secrets its team lacks",
    );
    throw new MeridianError("secret_missing", missingSecretsMessage(missing, replica.team_name), {
      missing,
    });
  }
  const values: Record<string, string> = {};
  for (const row of rows) {
    try {
      values[row.name] = ctx.secrets.open(row, { team_id: replica.team_id, name: row.name });
    } catch (err) {
      if (!(err instanceof SecretOpenError)) throw err;
      // The operator's problem (a key file that differs between control replicas, a damaged row), not
      // the plane's: logged here with what names the row, answered as an internal error.
      ctx.logger.error(
        { team: replica.team_id, secret: row.name, key_id: row.key_id, reason: err.message },
        "secret does not open",
      );
      throw new MeridianError(
        "internal_error",
        "A secret could not be decrypted; see the control plane's log.",
      );
    }
  }
  ctx.logger.info(
    { plane: plane.name, replica: replica.id, deployment: replica.deployment_id, secrets: names },
    "secrets delivered",
  );
  return { secrets: values };
}

/**
 * The start-up check of the key file against the database, so a wrong file refuses to start with a clear
 * message instead of failing every delivery later: every key that sealed a stored value must be in the
 * file, and the installation's sealing key (recorded in the store by the first replica to start) must be
 * too. A file whose first key differs from the recorded one but that still holds it is a rotation: the new
 * key is recorded, and seals from then on.
 */
export async function verifySecretsKey(store: Store, box: SecretBox, logger: Logger): Promise<void> {
  const used = [
    ...(await store.db
      .selectFrom("secrets")
      .select(["key_id", (eb) => eb.fn.countAll<string | number>().as("n")])
      .groupBy("key_id")
      .execute()),
    // Webhook secrets (src/control/webhook-secrets.ts) are sealed with the same keys.
    ...(await store.db
      .selectFrom("webhook_secrets")
      .select(["key_id", (eb) => eb.fn.countAll<string | number>().as("n")])
      .groupBy("key_id")
      .execute()),
  ];
  const lacking = used.filter((u) => !box.keyIds.includes(u.key_id));
  if (lacking.length > 0) {
    const count = lacking.reduce((n, u) => n + Number(u.n), 0);
    throw new SecretsKeyError(
      `${count} ${count === 1 ? "secret" : "secrets"} in the database ${count === 1 ? "is" : "are"} sealed with ` +
        `${lacking.length === 1 ? "key" : "keys"} ${lacking.map((u) => u.key_id).join(", ")}, which ${box.source} ` +
        "does not hold. Start with the key file that holds it (--secrets-key-file); every control replica needs the same one.",
    );
  }
  await store.db
    .insertInto("meta")
    .values({ key: KEY_ID_META, value: box.currentKeyId })
    .onConflict((oc) => oc.column("key").doNothing())
    .execute();
  const recorded = await store.getMeta(KEY_ID_META);
  if (recorded === box.currentKeyId) return;
  if (recorded === undefined || !box.keyIds.includes(recorded)) {
    throw new SecretsKeyError(
      `This installation seals its secrets with key ${recorded}, which ${box.source} does not hold ` +
        `(it holds ${box.keyIds.join(", ")}). Every control replica needs the same key file: copy the first ` +
        "replica's file and pass it with --secrets-key-file.",
    );
  }
  await store.setMeta(KEY_ID_META, box.currentKeyId);
  logger.info({ from: recorded, to: box.currentKeyId }, "secrets key rotated: new values use the new key");
}
