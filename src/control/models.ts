// Models, deployments and model-package uploads (reference: /v1/models…, /v1/prepare_model_upload).
// A push is: prepare an upload target, upload the tar (gzipped or plain) there — with the API key to
// `upload_url`, or with the issued credentials to the S3-compatible endpoint — then create the model or
// deployment from the `model_archive` source, optionally straight into an environment.

import type { Readable } from "node:stream";
import type { Principal } from "../core/access.ts";
import { MeridianError } from "../core/errors.ts";
import { checkEnvironmentName, PRODUCTION } from "../core/names.ts";
import type { DeploymentRow, ModelRow, TeamRow } from "../store/schema.ts";
import { type Db, isUniqueViolation } from "../store/store.ts";
import { setActive } from "./activation.ts";
import { BlobTooLargeError } from "./artifacts.ts";
import { type ControlContext, recordAudit } from "./context.ts";
import { ensureEnvironment, promoteInTransaction } from "./environments.ts";
import { newId } from "./identity.ts";
import {
  defaultTeam,
  loadDeployment,
  loadDeploymentAlias,
  loadModel,
  loadTeam,
  renderDeployment,
  renderDeployments,
  renderModel,
  renderModels,
  requireCapability,
  requireManageAccess,
} from "./lookup.ts";
import { checkPackage } from "./package-check.ts";
import { issueCredentials, UPLOAD_BUCKET, UPLOAD_REGION } from "./s3/credentials.ts";
import { change } from "./scheduler.ts";
import { missingSecretsReason } from "./secrets.ts";
import { DEFAULT_AUTOSCALING } from "./views.ts";

export interface DeploymentPayload {
  config: Record<string, unknown>;
  raw_config?: string | null;
  environment_name?: string | null;
  deployment_name?: string | null;
  labels?: Record<string, unknown> | null;
  is_development?: boolean;
  /**
   * Whether the environment's previous deployment is handled by its promotion_cleanup_strategy (the
   * default) or kept running (false: truss's `--preserve-previous-production-deployment`). Not in the REST
   * body, which has no such field; the truss CLI's GraphQL push sets it.
   */
  scale_down_previous?: boolean;
}

/** The body of `POST /v1/prepare_model_upload` (PrepareModelUploadRequestV1). */
export interface PrepareUploadRequest {
  deployment: DeploymentPayload;
  name?: string | null;
  team_id?: string | null;
  model_id?: string | null;
  dry_run?: boolean;
}

/**
 * Validates a push as the commit (`POST /v1/models` or `…/deployments`) will, then issues an upload target
 * and credentials for it, unless `dry_run`, which issues and stores nothing.
 */
export async function prepareUpload(ctx: ControlContext, p: Principal, body: PrepareUploadRequest) {
  requireCapability(p, "manage");
  const db = ctx.store.db;
  const name = body.name ?? null;
  const modelId = body.model_id ?? null;
  const teamId = body.team_id ?? null;
  if ((name === null) === (modelId === null)) {
    throw new MeridianError(
      "invalid_request",
      "Send exactly one of name (to push a new model) or model_id (to add a deployment to a model).",
      { rule: "exactly_one_of_name_or_model_id", fields: ["name", "model_id"] },
    );
  }
  let team: TeamRow;
  if (modelId !== null) {
    if (teamId !== null) {
      throw new MeridianError(
        "invalid_request",
        "team_id is only valid with name: an existing model already has its team.",
        { rule: "team_id_only_with_name", field: "team_id" },
      );
    }
    const model = await loadModel(db, p, modelId);
    team = await loadTeam(db, p, model.team_id);
  } else {
    team = teamId === null ? await defaultTeam(db, p) : await loadTeam(db, p, teamId);
    const trimmed = name!.trim();
    if (trimmed.length === 0) {
      throw new MeridianError("invalid_request", "name cannot be empty.", { field: "name", rule: "empty" });
    }
    const taken = await db
      .selectFrom("models")
      .select("id")
      .where("team_id", "=", team.id)
      .where("name", "=", trimmed)
      .executeTakeFirst();
    if (taken) {
      throw new MeridianError(
        "model_name_taken",
        `A model named '${trimmed}' already exists in team ${team.name}; push with model_id ${taken.id} to add a deployment.`,
      );
    }
  }
  validatePayload(body.deployment);
  if (body.dry_run) {
    return {
      creds: null,
      s3_bucket: null,
      s3_key: null,
      s3_region: null,
      s3_endpoint_url: null,
      upload_url: null,
    };
  }
  return issueUploadTarget(ctx, team);
}

/**
 * A new upload target of `team` and the credentials for it: S3's (bucket, key, region, temporary keys,
 * and Meridian's endpoint) and Meridian's own `upload_url` (a PUT with the API key). Either fills it once.
 */
export async function issueUploadTarget(ctx: ControlContext, team: TeamRow) {
  const key = `uploads/${team.id}/${newId(20)}.tgz`;
  const now = ctx.now();
  const creds = await ctx.store.transaction(async (trx) => {
    await trx
      .insertInto("artifacts")
      .values({ key, sha256: null, size: null, state: "PENDING", team_id: team.id, created_at: now })
      .execute();
    return issueCredentials(trx, { artifactKey: key, teamId: team.id }, now);
  });
  return {
    creds: {
      aws_access_key_id: creds.aws_access_key_id,
      aws_secret_access_key: creds.aws_secret_access_key,
      aws_session_token: creds.aws_session_token,
    },
    s3_bucket: UPLOAD_BUCKET,
    s3_key: key,
    s3_region: UPLOAD_REGION,
    // Meridian's extensions: the S3-compatible endpoint (path-style, on this listener), when the credentials
    // stop working, and the upload target on the management API (PUT the archive with the API key).
    s3_endpoint_url: ctx.publicUrl,
    expires_at: creds.expires_at,
    upload_url: `${ctx.publicUrl}/v1/artifacts/${key}`,
    upload_method: "PUT",
  };
}

export async function receiveUpload(
  ctx: ControlContext,
  p: Principal,
  key: string,
  body: Readable,
  maxBytes: number,
) {
  requireCapability(p, "manage");
  const row = await ctx.store.db
    .selectFrom("artifacts")
    .selectAll()
    .where("key", "=", key)
    .executeTakeFirst();
  if (!row || !(p.is_org_admin || p.teams.has(row.team_id))) throw new MeridianError("artifact_not_found");
  // Claim the target atomically: of two uploads racing to one target, exactly one proceeds.
  if ((await claimUploadTarget(ctx.store.db, key)) !== "claimed") {
    throw new MeridianError(
      "conflict",
      "This upload target has been used already, or an upload to it is under way.",
    );
  }
  let blob: { sha256: string; size: number };
  try {
    blob = await ctx.artifacts.put(body, maxBytes);
  } catch (err) {
    await releaseUploadTarget(ctx.store.db, key);
    if (err instanceof BlobTooLargeError) throw new MeridianError("payload_too_large", err.message);
    throw err;
  }
  if (!(await storeUploadTarget(ctx.store.db, key, blob))) {
    throw new MeridianError("conflict", "This upload target was released while the archive arrived.");
  }
  return { s3_key: key, sha256: blob.sha256, size: blob.size };
}

/**
 * The upload target's state machine, shared by `PUT /v1/artifacts/{key}` and the S3 endpoint:
 * `PENDING` → `UPLOADING` (claimed by exactly one upload) → `STORED`, or back to `PENDING` if it fails.
 */
export async function claimUploadTarget(
  db: Db,
  key: string,
): Promise<"claimed" | "in_progress" | "used" | "missing"> {
  const claimed = await db
    .updateTable("artifacts")
    .set({ state: "UPLOADING" })
    .where("key", "=", key)
    .where("state", "=", "PENDING")
    .executeTakeFirst();
  if (Number(claimed.numUpdatedRows) === 1) return "claimed";
  const row = await db.selectFrom("artifacts").select("state").where("key", "=", key).executeTakeFirst();
  if (!row) return "missing";
  return row.state === "STORED" ? "used" : "in_progress";
}

export async function releaseUploadTarget(db: Db, key: string): Promise<void> {
  await db
    .updateTable("artifacts")
    .set({ state: "PENDING" })
    .where("key", "=", key)
    .where("state", "=", "UPLOADING")
    .execute();
}

/** Records the stored blob; false when the target was no longer this upload's to fill. */
export async function storeUploadTarget(
  db: Db,
  key: string,
  blob: { sha256: string; size: number },
): Promise<boolean> {
  const stored = await db
    .updateTable("artifacts")
    .set({ sha256: blob.sha256, size: blob.size, state: "STORED" })
    .where("key", "=", key)
    .where("state", "=", "UPLOADING")
    .executeTakeFirst();
  return Number(stored.numUpdatedRows) === 1;
}

async function storedArtifact(ctx: ControlContext, team: TeamRow, key: string | null | undefined) {
  if (!key) {
    throw new MeridianError("invalid_request", "source.s3_key is required: upload the package first.", {
      field: "source.s3_key",
    });
  }
  const row = await ctx.store.db
    .selectFrom("artifacts")
    .selectAll()
    .where("key", "=", key)
    .executeTakeFirst();
  if (!row || row.team_id !== team.id) throw new MeridianError("artifact_not_found", `No upload '${key}'.`);
  if (row.state !== "STORED" || row.sha256 === null) {
    throw new MeridianError("artifact_missing", `Nothing was uploaded to '${key}' yet.`);
  }
  return { key: row.key, sha256: row.sha256 };
}

/** Builds the package: validates its contents so a broken one fails here with its reason. */
async function build(ctx: ControlContext, sha256: string) {
  const stream = await ctx.artifacts.open(sha256);
  if (!stream) throw new MeridianError("artifact_missing", "The uploaded archive is missing from the store.");
  return checkPackage(stream);
}

export async function createModel(
  ctx: ControlContext,
  p: Principal,
  teamId: string | null,
  source: { name: string; s3_key?: string | null; deployment: DeploymentPayload },
) {
  requireCapability(p, "manage");
  const team = teamId === null ? await defaultTeam(ctx.store.db, p) : await loadTeam(ctx.store.db, p, teamId);
  const name = source.name.trim();
  if (name.length === 0) throw new MeridianError("invalid_request", "source.name cannot be empty.");
  validatePayload(source.deployment);
  const artifact = await storedArtifact(ctx, team, source.s3_key);
  const built = await build(ctx, artifact.sha256);
  try {
    return await change(ctx, async (trx, scope) => {
      const model: ModelRow = { id: await freeModelId(trx), team_id: team.id, name, created_at: ctx.now() };
      await trx.insertInto("models").values(model).execute();
      await ensureEnvironment(ctx, trx, model, PRODUCTION);
      await recordAudit(ctx, trx, p, {
        team_id: team.id,
        model_id: model.id,
        action: "model.create",
        target: `model:${model.id}`,
        after: { name },
      });
      const d = await insertDeployment(ctx, trx, p, model, team, artifact, built, source.deployment, scope);
      return { model: await renderModel(trx, model), deployment: await renderDeployment(trx, d) };
    });
  } catch (err) {
    if (isUniqueViolation(err)) {
      throw new MeridianError(
        "model_name_taken",
        `A model named '${name}' already exists in team ${team.name}.`,
      );
    }
    throw err;
  }
}

export async function createDeployment(
  ctx: ControlContext,
  p: Principal,
  modelId: string,
  source: { s3_key?: string | null; deployment: DeploymentPayload },
) {
  requireCapability(p, "manage");
  const model = await loadModel(ctx.store.db, p, modelId);
  const team = await loadTeam(ctx.store.db, p, model.team_id);
  validatePayload(source.deployment);
  const artifact = await storedArtifact(ctx, team, source.s3_key);
  const built = await build(ctx, artifact.sha256);
  return change(ctx, async (trx, scope) => {
    const d = await insertDeployment(ctx, trx, p, model, team, artifact, built, source.deployment, scope);
    return { model: await renderModel(trx, model), deployment: await renderDeployment(trx, d) };
  });
}

function validatePayload(payload: DeploymentPayload): void {
  if (payload.is_development && (payload.environment_name || payload.deployment_name)) {
    throw new MeridianError(
      "invalid_request",
      "A development push leaves environment_name and deployment_name unset.",
      { field: "deployment.is_development" },
    );
  }
  if (payload.environment_name !== undefined && payload.environment_name !== null) {
    const check = checkEnvironmentName(payload.environment_name);
    if (!check.ok) {
      throw new MeridianError("invalid_environment_name", check.message, {
        field: "deployment.environment_name",
        rule: check.rule,
      });
    }
  }
}

async function freeModelId(trx: Parameters<Parameters<typeof change>[1]>[0]): Promise<string> {
  for (;;) {
    const id = newId(8);
    const taken = await trx.selectFrom("models").select("id").where("id", "=", id).executeTakeFirst();
    if (!taken) return id;
  }
}

async function insertDeployment(
  ctx: ControlContext,
  trx: Parameters<Parameters<typeof change>[1]>[0],
  p: Principal,
  model: ModelRow,
  team: TeamRow,
  artifact: { key: string; sha256: string },
  built: Awaited<ReturnType<typeof checkPackage>>,
  payload: DeploymentPayload,
  scope: { touch(id: string): void },
): Promise<DeploymentRow> {
  const now = ctx.now();
  const envName = payload.environment_name ?? null;
  // Both create routes (and their team forms) push through here: one check, in the push's transaction.
  await requireManageAccess(trx, p, {
    kind: "push",
    model,
    environment_name: envName,
    development: payload.is_development === true,
  });
  // A push into an environment runs under that environment's region restriction and egress policy from the
  // start, so the promotion that follows reuses it instead of redeploying.
  const group =
    envName === null
      ? undefined
      : await trx
          .selectFrom("environment_groups")
          .select(["region", "egress"])
          .where("team_id", "=", team.id)
          .where("name", "=", envName)
          .executeTakeFirst();
  const fields = {
    status: built.ok ? "DEPLOYING" : "BUILD_FAILED",
    status_message: built.ok ? null : built.message,
    artifact_key: artifact.key,
    config: JSON.stringify(built.ok ? built.config : payload.config),
    labels: payload.labels ? JSON.stringify(payload.labels) : null,
    updated_at: now,
  };

  if (payload.is_development) {
    const existing = await trx
      .selectFrom("deployments")
      .selectAll()
      .where("model_id", "=", model.id)
      .where("is_development", "=", 1)
      .executeTakeFirst();
    if (existing) {
      // The development slot is mutable: overwritten in place, its replicas replaced.
      await trx.deleteFrom("replicas").where("deployment_id", "=", existing.id).execute();
      await trx.updateTable("deployments").set(fields).where("id", "=", existing.id).execute();
      scope.touch(existing.id);
      await recordAudit(ctx, trx, p, {
        team_id: team.id,
        model_id: model.id,
        action: "deployment.update_development",
        target: `deployment:${existing.id}`,
        before: { artifact_key: existing.artifact_key },
        after: { artifact_key: artifact.key },
      });
      return loadDeployment(trx, model, existing.id);
    }
  }

  const count = await trx
    .selectFrom("deployments")
    .select((eb) => eb.fn.countAll<string | number>().as("n"))
    .where("model_id", "=", model.id)
    .executeTakeFirstOrThrow();
  const d: DeploymentRow = {
    id: newId(7),
    model_id: model.id,
    name: payload.is_development
      ? "development"
      : (payload.deployment_name ?? `deployment-${Number(count.n) + 1}`),
    is_development: payload.is_development ? 1 : 0,
    region: group?.region ?? null,
    egress: group?.egress ?? "allow",
    copied_from: null,
    autoscaling: JSON.stringify(DEFAULT_AUTOSCALING),
    backpressure: null,
    desired_replicas: null,
    created_at: now,
    ...fields,
  };
  await trx.insertInto("deployments").values(d).execute();
  scope.touch(d.id);
  await recordAudit(ctx, trx, p, {
    team_id: team.id,
    model_id: model.id,
    action: "deployment.create",
    target: `deployment:${d.id}`,
    after: { name: d.name, status: d.status, artifact_key: artifact.key, environment_name: envName },
  });
  if (envName !== null && built.ok) {
    const env = await ensureEnvironment(ctx, trx, model, envName);
    await promoteInTransaction(
      ctx,
      trx,
      p,
      model,
      env,
      d,
      { scaleDownPrevious: payload.scale_down_previous ?? true },
      scope,
    );
  }
  return loadDeployment(trx, model, d.id);
}

export async function listModels(
  ctx: ControlContext,
  p: Principal,
  teamId: string | null,
  name: string | null,
) {
  requireCapability(p, "read");
  const db = ctx.store.db;
  if (teamId !== null) await loadTeam(db, p, teamId);
  const teamIds = teamId !== null ? [teamId] : [...p.teams.keys()];
  const rows = await db
    .selectFrom("models")
    .selectAll()
    .$if(teamId !== null || !p.is_org_admin, (q) => q.where("team_id", "in", teamIds.length ? teamIds : [""]))
    .$if(name !== null, (q) => q.where("name", "=", name!))
    .$if(p.model_ids !== null, (q) => q.where("id", "in", p.model_ids!.length ? [...p.model_ids!] : [""]))
    .orderBy("created_at")
    .orderBy("id")
    .execute();
  return { models: await renderModels(db, rows) };
}

export async function getModel(ctx: ControlContext, p: Principal, modelId: string) {
  requireCapability(p, "read");
  return renderModel(ctx.store.db, await loadModel(ctx.store.db, p, modelId));
}

export async function deleteModel(ctx: ControlContext, p: Principal, modelId: string) {
  requireCapability(p, "manage");
  const model = await loadModel(ctx.store.db, p, modelId);
  await change(ctx, async (trx) => {
    await requireManageAccess(trx, p, { kind: "model", model });
    await trx.deleteFrom("promotions").where("model_id", "=", model.id).execute();
    await trx.deleteFrom("environments").where("model_id", "=", model.id).execute();
    const deps = trx.selectFrom("deployments").select("id").where("model_id", "=", model.id);
    await trx.deleteFrom("replicas").where("deployment_id", "in", deps).execute();
    await trx.deleteFrom("deployments").where("model_id", "=", model.id).execute();
    await trx.deleteFrom("models").where("id", "=", model.id).execute();
    await recordAudit(ctx, trx, p, {
      team_id: model.team_id,
      model_id: model.id,
      action: "model.delete",
      target: `model:${model.id}`,
      before: { name: model.name },
    });
  });
  return { id: model.id, deleted: true };
}

export async function listDeployments(ctx: ControlContext, p: Principal, modelId: string) {
  requireCapability(p, "read");
  const db = ctx.store.db;
  const model = await loadModel(db, p, modelId);
  const rows = await db
    .selectFrom("deployments")
    .selectAll()
    .where("model_id", "=", model.id)
    .orderBy("created_at")
    .orderBy("id")
    .execute();
  return { deployments: await renderDeployments(db, rows) };
}

export async function getDeployment(ctx: ControlContext, p: Principal, modelId: string, idOrAlias: string) {
  requireCapability(p, "read");
  const db = ctx.store.db;
  const model = await loadModel(db, p, modelId);
  return renderDeployment(db, await loadDeploymentAlias(db, model, idOrAlias));
}

export async function getDeploymentConfig(ctx: ControlContext, p: Principal, modelId: string, id: string) {
  requireCapability(p, "read");
  const db = ctx.store.db;
  const d = await loadDeploymentAlias(db, await loadModel(db, p, modelId), id);
  return { config: JSON.parse(d.config) as Record<string, unknown>, raw_config: null };
}

export async function renameDeployment(
  ctx: ControlContext,
  p: Principal,
  modelId: string,
  id: string,
  name: string,
) {
  // Not a managed change: a name changes neither what an environment serves nor how (docs/decisions.md).
  requireCapability(p, "manage");
  const model = await loadModel(ctx.store.db, p, modelId);
  const d = await loadDeploymentAlias(ctx.store.db, model, id);
  return change(ctx, async (trx) => {
    const clash = await trx
      .selectFrom("deployments")
      .select("id")
      .where("model_id", "=", model.id)
      .where("name", "=", name)
      .where("id", "!=", d.id)
      .executeTakeFirst();
    if (clash) throw new MeridianError("conflict", `Another deployment of this model is named '${name}'.`);
    await trx
      .updateTable("deployments")
      .set({ name, updated_at: ctx.now() })
      .where("id", "=", d.id)
      .execute();
    await recordAudit(ctx, trx, p, {
      team_id: model.team_id,
      model_id: model.id,
      action: "deployment.update",
      target: `deployment:${d.id}`,
      before: { name: d.name },
      after: { name },
    });
    return renderDeployment(trx, await loadDeployment(trx, model, d.id));
  });
}

/** Activate (run replicas again) or deactivate (stop them) a deployment. */
export async function setDeploymentActive(
  ctx: ControlContext,
  p: Principal,
  modelId: string,
  id: string,
  active: boolean,
) {
  requireCapability(p, "manage");
  const model = await loadModel(ctx.store.db, p, modelId);
  const d = await loadDeploymentAlias(ctx.store.db, model, id);
  return setActive(ctx, p, model, d, active, {
    action: active ? "deployment.activate" : "deployment.deactivate",
    target: `deployment:${d.id}`,
  });
}

export async function retryDeployment(ctx: ControlContext, p: Principal, modelId: string, id: string) {
  requireCapability(p, "manage");
  const model = await loadModel(ctx.store.db, p, modelId);
  const d = await loadDeploymentAlias(ctx.store.db, model, id);
  // Asked before the status, so the answer to a caller who may not retry it never depends on its state.
  await requireManageAccess(ctx.store.db, p, { kind: "deployment", model, deployment_id: d.id });
  if (!["DEPLOY_FAILED", "UNHEALTHY", "FAILED"].includes(d.status)) {
    return {
      retried: false,
      reason: `Deployment is ${d.status}; only failed deployments are retried.`,
      deployment: await renderDeployment(ctx.store.db, d),
    };
  }
  // Restarting replicas that would fail again for the same missing secret helps no one: say so instead.
  const missing = await missingSecretsReason(ctx.store.db, model.team_id, d.config);
  if (missing !== null) {
    return { retried: false, reason: missing, deployment: await renderDeployment(ctx.store.db, d) };
  }
  await setDeploymentActive(ctx, p, modelId, d.id, true);
  return {
    retried: true,
    reason: null,
    deployment: await renderDeployment(ctx.store.db, await loadDeployment(ctx.store.db, model, d.id)),
  };
}

export async function deleteDeployment(ctx: ControlContext, p: Principal, modelId: string, id: string) {
  requireCapability(p, "manage");
  const model = await loadModel(ctx.store.db, p, modelId);
  const d = await loadDeployment(ctx.store.db, model, id);
  await change(ctx, async (trx) => {
    await requireManageAccess(trx, p, { kind: "deployment", model, deployment_id: d.id });
    const serving = await trx
      .selectFrom("environments")
      .select("name")
      .where("current_deployment_id", "=", d.id)
      .execute();
    if (serving.length > 0) {
      throw new MeridianError(
        "deployment_in_use",
        `Deployment ${d.id} serves ${serving.map((e) => `'${e.name}'`).join(", ")}; promote another deployment first.`,
      );
    }
    const candidate = await trx
      .selectFrom("promotions")
      .select("id")
      .where("candidate_deployment_id", "=", d.id)
      .where("active", "=", 1)
      .executeTakeFirst();
    if (candidate)
      throw new MeridianError("promotion_in_progress", "The deployment is a promotion's candidate.");
    await trx.deleteFrom("replicas").where("deployment_id", "=", d.id).execute();
    await trx.deleteFrom("deployments").where("id", "=", d.id).execute();
    await recordAudit(ctx, trx, p, {
      team_id: model.team_id,
      model_id: model.id,
      action: "deployment.delete",
      target: `deployment:${d.id}`,
      before: { name: d.name, status: d.status },
    });
  });
  return { id: d.id, deleted: true, model_id: model.id };
}
