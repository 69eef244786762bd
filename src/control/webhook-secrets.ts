// Team webhook secrets (async inference, docs/async.md): created with a random value shown once
// (`whsec_…`, as Baseten's look), listed without values, deleted; sealed at rest like team secrets. Several
// may be active at once, so a rotation is create-then-delete: planes sign with each (`v1=new,v1=old`). The
// only other reader is a plane, with its credential, when it has a webhook of the team to sign.

import { randomBytes } from "node:crypto";
import type { Principal } from "../core/access.ts";
import { MeridianError } from "../core/errors.ts";
import { SecretOpenError } from "../lib/secret-box.ts";
import type { PlaneRow, TeamRow } from "../store/schema.ts";
import { type ControlContext, recordAudit } from "./context.ts";
import { newId } from "./identity.ts";
import { defaultTeam, loadTeam, requireCapability } from "./lookup.ts";

/** Active secrets a team may have at once: enough for a rotation with room to spare. */
export const MAX_WEBHOOK_SECRETS = 5;

const sealContext = (teamId: string, id: string) => ({ team_id: teamId, name: `webhook:${id}` });

function view(row: { id: string; created_at: string }, team: TeamRow) {
  return { id: row.id, created_at: row.created_at, team_name: team.name };
}

async function teamFor(ctx: ControlContext, p: Principal, teamId: string | null): Promise<TeamRow> {
  return teamId === null ? defaultTeam(ctx.store.db, p) : loadTeam(ctx.store.db, p, teamId);
}

export async function listWebhookSecrets(ctx: ControlContext, p: Principal, teamId: string | null) {
  requireCapability(p, "read");
  const team = await teamFor(ctx, p, teamId);
  const rows = await ctx.store.db
    .selectFrom("webhook_secrets")
    .select(["id", "created_at"])
    .where("team_id", "=", team.id)
    .orderBy("created_at", "desc")
    .orderBy("id")
    .execute();
  return { webhook_secrets: rows.map((r) => view(r, team)) };
}

/** Creates a secret; the answer is the only time its value is shown. */
export async function createWebhookSecret(ctx: ControlContext, p: Principal, teamId: string | null) {
  requireCapability(p, "manage");
  const team = await teamFor(ctx, p, teamId);
  const id = newId(8);
  const secret = `whsec_${randomBytes(30).toString("base64url")}`;
  const sealed = ctx.secrets.seal(secret, sealContext(team.id, id));
  return ctx.store.transaction(async (trx) => {
    const have = await trx
      .selectFrom("webhook_secrets")
      .select((eb) => eb.fn.countAll<string | number>().as("n"))
      .where("team_id", "=", team.id)
      .executeTakeFirstOrThrow();
    if (Number(have.n) >= MAX_WEBHOOK_SECRETS) {
      throw new MeridianError(
        "conflict",
        `Team '${team.name}' has ${MAX_WEBHOOK_SECRETS} webhook secrets, the most it may have; delete one first.`,
        { limit: MAX_WEBHOOK_SECRETS },
      );
    }
    const now = ctx.now();
    await trx
      .insertInto("webhook_secrets")
      .values({ id, team_id: team.id, ...sealed, created_at: now })
      .execute();
    await recordAudit(ctx, trx, p, {
      team_id: team.id,
      model_id: null,
      action: "webhook_secret.create",
      target: `webhook_secret:${team.id}/${id}`,
      after: { id },
    });
    return { ...view({ id, created_at: now }, team), secret };
  });
}

export async function deleteWebhookSecret(
  ctx: ControlContext,
  p: Principal,
  teamId: string | null,
  id: string,
) {
  requireCapability(p, "manage");
  const team = await teamFor(ctx, p, teamId);
  return ctx.store.transaction(async (trx) => {
    const gone = await trx
      .deleteFrom("webhook_secrets")
      .where("team_id", "=", team.id)
      .where("id", "=", id)
      .executeTakeFirst();
    if (Number(gone.numDeletedRows) === 0) {
      throw new MeridianError(
        "webhook_secret_not_found",
        `Team '${team.name}' has no webhook secret '${id}'.`,
      );
    }
    await recordAudit(ctx, trx, p, {
      team_id: team.id,
      model_id: null,
      action: "webhook_secret.delete",
      target: `webhook_secret:${team.id}/${id}`,
      before: { id },
    });
    return { id, deleted: true };
  });
}

/**
 * The team's secret values, newest first, for a plane that signs the team's webhooks. Any plane may hold a
 * team's async requests (an unrestricted environment is queued where it arrives), so any registered plane
 * may ask; the answer is never cached on the way.
 */
export async function webhookSecretsForPlane(ctx: ControlContext, plane: PlaneRow, teamId: string) {
  const rows = await ctx.store.db
    .selectFrom("webhook_secrets")
    .select(["id", "key_id", "sealed", "created_at"])
    .where("team_id", "=", teamId)
    .orderBy("created_at", "desc")
    .orderBy("id")
    .execute();
  const secrets = rows.map((row) => {
    try {
      return {
        id: row.id,
        created_at: row.created_at,
        secret: ctx.secrets.open(row, sealContext(teamId, row.id)),
      };
    } catch (err) {
      if (!(err instanceof SecretOpenError)) throw err;
      ctx.logger.error(
        { team: teamId, webhook_secret: row.id, reason: err.message },
        "webhook secret does not open",
      );
      throw new MeridianError(
        "internal_error",
        "A webhook secret could not be decrypted; see the control plane's log.",
      );
    }
  });
  ctx.logger.info({ plane: plane.name, team: teamId, count: secrets.length }, "webhook secrets delivered");
  return { secrets };
}
