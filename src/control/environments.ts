// Environments and promotions (reference: /v1/models/{model_id}/environments…): named slots on a model that
// a deployment is promoted into. `production` exists on every model and cannot be deleted. A promotion is
// persisted with its decision; the scheduler completes it when the candidate is ready.

import type { Transaction } from "kysely";
import type { Principal } from "../core/access.ts";
import {
  applyAutoscalingUpdate,
  applyBackpressureUpdate,
  type RequestBackpressureSettings,
} from "../core/autoscaling-settings.ts";
import type {
  DeploymentStatus,
  EgressPolicy,
  PromotionCleanupStrategy,
  ReplicaState,
} from "../core/domain.ts";
import { MeridianError } from "../core/errors.ts";
import { checkEnvironmentName, PRODUCTION } from "../core/names.ts";
import {
  AWAKE_STATUSES,
  type CopyReason,
  decidePromotion,
  type PromotionPlan,
  type PromotionSource,
  type PromotionTarget,
  planPromotion,
} from "../core/promotion.ts";
import type { DeploymentRow, EnvironmentRow, ModelRow, PromotionRow, Schema } from "../store/schema.ts";
import { type Db, isUniqueViolation } from "../store/store.ts";
import { setActive } from "./activation.ts";
import { type ControlContext, recordAudit } from "./context.ts";
import { newId } from "./identity.ts";
import {
  activePromotion,
  loadDeployment,
  loadDeploymentAlias,
  loadGroup,
  loadModel,
  renderDeployment,
  requireCapability,
  requireManageAccess,
} from "./lookup.ts";
import type { Infer } from "./routes/infer.ts";
import { type ChangeScope, change, completePromotion, placementPlanes } from "./scheduler.ts";
import type { createEnvironmentBody, updateEnvironmentBody } from "./schemas.ts";
import {
  type AutoscalingSettings,
  autoscalingOf,
  backpressureOf,
  DEFAULT_AUTOSCALING,
  DEFAULT_PROMOTION_SETTINGS,
  type DeploymentView,
  egressOf,
  environmentView,
  mergeSettings,
  type PromotionSettings,
  restrictionOf,
} from "./views.ts";

type Trx = Transaction<Schema>;

/** A PATCH of an environment's settings, as its schema validates it (null: leave as it is). */
export type EnvironmentSettingsUpdate = Infer<typeof updateEnvironmentBody>;
/** A new environment, as its schema validates it. */
export type NewEnvironment = Infer<typeof createEnvironmentBody>;

function requireValidName(name: string, field = "name"): void {
  const check = checkEnvironmentName(name);
  if (!check.ok)
    throw new MeridianError("invalid_environment_name", check.message, { field, rule: check.rule });
}

/** Applies an autoscaling update (UpdateAutoscalingSettingsV1) over `current`; a 400 names the rule broken. */
export function updatedAutoscaling(current: AutoscalingSettings, update: unknown): AutoscalingSettings {
  const check = applyAutoscalingUpdate(current, update);
  if (!check.ok) {
    throw new MeridianError("invalid_request", `${check.message} (rule ${check.rule})`, {
      field: check.field === null ? "autoscaling_settings" : `autoscaling_settings.${check.field}`,
      rule: check.rule,
    });
  }
  return check.settings;
}

/** Applies a backpressure update (absent or null keeps it; an object replaces it); a 400 names the rule. */
function updatedBackpressure(current: RequestBackpressureSettings, update: unknown) {
  const check = applyBackpressureUpdate(current, update);
  if (!check.ok) {
    throw new MeridianError("invalid_request", `${check.message} (rule ${check.rule})`, {
      field: "request_backpressure_settings",
      rule: check.rule,
    });
  }
  return check.settings;
}

/** The stored form of backpressure settings: null for no policy. */
function backpressureColumn(b: RequestBackpressureSettings): string | null {
  return b.policy === null ? null : JSON.stringify(b);
}

/** Creates the environment if the model does not have it yet (pushes into a new environment, `production`). */
export async function ensureEnvironment(
  ctx: ControlContext,
  trx: Db,
  model: ModelRow,
  name: string,
  settings: EnvironmentSettingsUpdate = {},
): Promise<EnvironmentRow> {
  const existing = await trx
    .selectFrom("environments")
    .selectAll()
    .where("model_id", "=", model.id)
    .where("name", "=", name)
    .executeTakeFirst();
  if (existing) return existing;
  const autoscaling = updatedAutoscaling(DEFAULT_AUTOSCALING, settings.autoscaling_settings);
  const backpressure = updatedBackpressure(backpressureOf(null), settings.request_backpressure_settings);
  const row: EnvironmentRow = {
    model_id: model.id,
    name,
    current_deployment_id: null,
    autoscaling: JSON.stringify(autoscaling),
    promotion_settings: JSON.stringify(
      mergeSettings(DEFAULT_PROMOTION_SETTINGS, settings.promotion_settings),
    ),
    created_at: ctx.now(),
    backpressure: backpressureColumn(backpressure),
  };
  await trx.insertInto("environments").values(row).execute();
  return row;
}

async function loadEnvironment(db: Db, model: ModelRow, name: string): Promise<EnvironmentRow> {
  const env = await db
    .selectFrom("environments")
    .selectAll()
    .where("model_id", "=", model.id)
    .where("name", "=", name)
    .executeTakeFirst();
  if (!env)
    throw new MeridianError("environment_not_found", `Model ${model.id} has no environment '${name}'.`);
  return env;
}

export async function renderEnvironment(db: Db, model: ModelRow, env: EnvironmentRow) {
  const [current, promotion, group] = await Promise.all([
    env.current_deployment_id === null
      ? Promise.resolve(null)
      : db
          .selectFrom("deployments")
          .selectAll()
          .where("id", "=", env.current_deployment_id)
          .executeTakeFirst(),
    activePromotion(db, model.id, env.name),
    loadGroup(db, model.team_id, env.name),
  ]);
  const candidate = promotion
    ? await db
        .selectFrom("deployments")
        .selectAll()
        .where("id", "=", promotion.candidate_deployment_id)
        .executeTakeFirst()
    : undefined;
  return environmentView(
    env,
    current ? await renderDeployment(db, current) : null,
    candidate ? await renderDeployment(db, candidate) : null,
    promotion ?? null,
    restrictionOf(group),
  );
}

export async function createEnvironment(
  ctx: ControlContext,
  p: Principal,
  modelId: string,
  body: NewEnvironment,
) {
  requireCapability(p, "manage");
  requireValidName(body.name);
  const model = await loadModel(ctx.store.db, p, modelId);
  try {
    return await change(ctx, async (trx) => {
      await requireManageAccess(trx, p, { kind: "environment", model, name: body.name });
      const exists = await trx
        .selectFrom("environments")
        .select("name")
        .where("model_id", "=", model.id)
        .where("name", "=", body.name)
        .executeTakeFirst();
      if (exists)
        throw new MeridianError("environment_exists", `Model ${model.id} already has '${body.name}'.`);
      const env = await ensureEnvironment(ctx, trx, model, body.name, body);
      await recordAudit(ctx, trx, p, {
        team_id: model.team_id,
        model_id: model.id,
        action: "environment.create",
        target: `environment:${model.id}/${body.name}`,
        after: {
          autoscaling: JSON.parse(env.autoscaling),
          promotion_settings: JSON.parse(env.promotion_settings),
        },
      });
      return renderEnvironment(trx, model, env);
    });
  } catch (err) {
    if (isUniqueViolation(err)) {
      throw new MeridianError("environment_exists", `Model ${model.id} already has '${body.name}'.`);
    }
    throw err;
  }
}

export async function listEnvironments(ctx: ControlContext, p: Principal, modelId: string) {
  requireCapability(p, "read");
  const db = ctx.store.db;
  const model = await loadModel(db, p, modelId);
  const rows = await db
    .selectFrom("environments")
    .selectAll()
    .where("model_id", "=", model.id)
    .orderBy("name")
    .execute();
  return { environments: await Promise.all(rows.map((e) => renderEnvironment(db, model, e))) };
}

export async function getEnvironment(ctx: ControlContext, p: Principal, modelId: string, name: string) {
  requireCapability(p, "read");
  const db = ctx.store.db;
  const model = await loadModel(db, p, modelId);
  return renderEnvironment(db, model, await loadEnvironment(db, model, name));
}

export async function updateEnvironment(
  ctx: ControlContext,
  p: Principal,
  modelId: string,
  name: string,
  body: EnvironmentSettingsUpdate,
) {
  const model = await loadModel(ctx.store.db, p, modelId);
  requireCapability(p, "manage");
  return change(ctx, async (trx, scope) => {
    await requireManageAccess(trx, p, { kind: "environment", model, name });
    const env = await loadEnvironment(trx, model, name);
    const before = autoscalingOf(env.autoscaling);
    const autoscaling = updatedAutoscaling(before, body.autoscaling_settings);
    const backpressure = updatedBackpressure(
      backpressureOf(env.backpressure ?? null),
      body.request_backpressure_settings,
    );
    const promotion = mergeSettings(
      JSON.parse(env.promotion_settings) as PromotionSettings,
      body.promotion_settings,
    );
    await trx
      .updateTable("environments")
      .set({
        autoscaling: JSON.stringify(autoscaling),
        promotion_settings: JSON.stringify(promotion),
        backpressure: backpressureColumn(backpressure),
      })
      .where("model_id", "=", model.id)
      .where("name", "=", name)
      .execute();
    // The deployment serving the environment runs under its settings: applied at once, no redeploy.
    if (env.current_deployment_id) {
      await trx
        .updateTable("deployments")
        .set({ autoscaling: JSON.stringify(autoscaling), backpressure: backpressureColumn(backpressure) })
        .where("id", "=", env.current_deployment_id)
        .execute();
      scope.touch(env.current_deployment_id);
    }
    await recordAudit(ctx, trx, p, {
      team_id: model.team_id,
      model_id: model.id,
      action: "environment.update",
      target: `environment:${model.id}/${name}`,
      before: {
        autoscaling: JSON.parse(env.autoscaling),
        promotion_settings: JSON.parse(env.promotion_settings),
        request_backpressure_settings: backpressureOf(env.backpressure ?? null),
      },
      after: { autoscaling, promotion_settings: promotion, request_backpressure_settings: backpressure },
    });
    const updated = await loadEnvironment(trx, model, name);
    const unchanged =
      JSON.stringify(autoscaling) === JSON.stringify(before) &&
      backpressureColumn(backpressure) === (env.backpressure ?? null);
    return {
      environment: await renderEnvironment(trx, model, updated),
      status: unchanged ? "UNCHANGED" : "ACCEPTED",
      message: "Environment settings updated.",
    };
  });
}

export async function deleteEnvironment(ctx: ControlContext, p: Principal, modelId: string, name: string) {
  const model = await loadModel(ctx.store.db, p, modelId);
  requireCapability(p, "manage");
  await change(ctx, async (trx, scope) => {
    await requireManageAccess(trx, p, { kind: "environment", model, name });
    if (name === PRODUCTION) {
      throw new MeridianError("environment_protected", "The production environment exists on every model.");
    }
    const env = await loadEnvironment(trx, model, name);
    const promotion = await activePromotion(trx, model.id, name);
    if (promotion) {
      throw new MeridianError(
        "promotion_in_progress",
        `Cancel the promotion into '${name}' before deleting it.`,
      );
    }
    await trx.deleteFrom("environments").where("model_id", "=", model.id).where("name", "=", name).execute();
    if (env.current_deployment_id) scope.touch(env.current_deployment_id);
    await recordAudit(ctx, trx, p, {
      team_id: model.team_id,
      model_id: model.id,
      action: "environment.delete",
      target: `environment:${model.id}/${name}`,
      before: { current_deployment_id: env.current_deployment_id },
    });
  });
  return { name, model_id: model.id, deleted: true };
}

export interface PromoteOptions {
  scaleDownPrevious: boolean;
  /**
   * Audit action; `environment.migrate_region` or `environment.migrate_egress` for a group's forced
   * redeploy.
   */
  action?: string;
}

/** What a promotion of `source` into `env` is decided from, read in the promotion's transaction. */
async function promotionFacts(
  db: Db,
  model: ModelRow,
  env: EnvironmentRow,
  source: DeploymentRow,
): Promise<{ target: PromotionTarget; source: PromotionSource; inFlight: PromotionRow | undefined }> {
  const [group, inFlight, bound] = await Promise.all([
    loadGroup(db, model.team_id, env.name),
    activePromotion(db, model.id, env.name),
    db
      .selectFrom("environments")
      .select("name")
      .where("current_deployment_id", "=", source.id)
      .where("name", "!=", env.name)
      .where("model_id", "=", model.id)
      .execute(),
  ]);
  const settings = JSON.parse(env.promotion_settings) as PromotionSettings;
  return {
    target: {
      name: env.name,
      region: group?.region ?? null,
      egress: egressOf(group),
      current_deployment_id: env.current_deployment_id,
      redeploy_on_promotion: settings.redeploy_on_promotion,
      promotion_cleanup_strategy: settings.promotion_cleanup_strategy as PromotionCleanupStrategy,
      promotion_in_progress: inFlight !== undefined,
    },
    source: {
      id: source.id,
      status: source.status as DeploymentStatus,
      is_development: source.is_development === 1,
      region: source.region,
      egress: source.egress as EgressPolicy,
      bound_environments: bound.map((b) => b.name),
    },
    inFlight,
  };
}

/**
 * Promotes inside an open transaction: decides reuse or copy (DESIGN.md §2.5), records the promotion
 * (a unique index allows one in flight per environment), and completes it at once when the candidate is
 * already serving-ready. Returns the candidate deployment.
 */
export async function promoteInTransaction(
  ctx: ControlContext,
  trx: Trx,
  p: Principal | null,
  model: ModelRow,
  env: EnvironmentRow,
  source: DeploymentRow,
  options: PromoteOptions,
  scope: ChangeScope,
): Promise<DeploymentRow> {
  const facts = await promotionFacts(trx, model, env, source);
  const decision = decidePromotion(facts.target, facts.source, options.scaleDownPrevious);
  if (decision.kind === "refuse") throw new MeridianError(decision.code, decision.message);
  if (decision.kind === "already_current") return source;

  const now = ctx.now();
  let candidate = source;
  if (decision.candidate === "copy") {
    candidate = {
      ...source,
      id: newId(7),
      name: `${source.name}-${env.name}`.slice(0, 255),
      status: "DEPLOYING",
      status_message: null,
      is_development: 0,
      region: decision.candidate_region,
      egress: decision.candidate_egress,
      copied_from: source.id,
      // A new deployment: the autoscaler has not decided for it yet.
      desired_replicas: null,
      created_at: now,
      updated_at: now,
    };
    await trx.insertInto("deployments").values(candidate).execute();
  } else if (!AWAKE_STATUSES.includes(source.status as DeploymentStatus)) {
    // Reusing a scaled-down or inactive deployment wakes it.
    await trx
      .updateTable("deployments")
      .set({ status: "DEPLOYING", status_message: null, region: decision.candidate_region, updated_at: now })
      .where("id", "=", source.id)
      .execute();
    candidate = { ...source, status: "DEPLOYING", region: decision.candidate_region };
  }
  const promotionId = newId(12);
  try {
    await trx
      .insertInto("promotions")
      .values({
        id: promotionId,
        model_id: model.id,
        environment: env.name,
        source_deployment_id: source.id,
        candidate_deployment_id: candidate.id,
        previous_deployment_id: env.current_deployment_id,
        reason: decision.reason,
        status: "RELEASING",
        active: 1,
        error_message: null,
        cleanup_strategy: decision.cleanup,
        created_by: p?.user_id ?? p?.key_prefix ?? null,
        created_at: now,
        updated_at: now,
      })
      .execute();
  } catch (err) {
    if (isUniqueViolation(err)) {
      throw new MeridianError(
        "promotion_in_progress",
        `A promotion into '${env.name}' is already in progress.`,
      );
    }
    throw err;
  }
  await recordAudit(ctx, trx, p, {
    team_id: model.team_id,
    model_id: model.id,
    action: options.action ?? "environment.promote",
    target: `environment:${model.id}/${env.name}`,
    before: { current_deployment_id: env.current_deployment_id },
    after: {
      source_deployment_id: source.id,
      candidate_deployment_id: candidate.id,
      reason: decision.reason,
    },
  });
  ctx.logger.info(
    {
      model: model.id,
      environment: env.name,
      source: source.id,
      candidate: candidate.id,
      reason: decision.reason,
    },
    "promotion started",
  );
  scope.touch(candidate.id);
  if (candidate.status === "ACTIVE") {
    for (const id of await completePromotion(ctx, trx, promotionId)) scope.touch(id);
  }
  return loadDeployment(trx, model, candidate.id);
}

export async function promote(
  ctx: ControlContext,
  p: Principal,
  modelId: string,
  envName: string,
  deploymentId: string,
  scaleDownPrevious: boolean,
) {
  const model = await loadModel(ctx.store.db, p, modelId);
  requireCapability(p, "manage");
  return change(ctx, async (trx, scope) => {
    const env = await loadEnvironment(trx, model, envName);
    const source = await loadDeploymentAlias(trx, model, deploymentId);
    await requireManageAccess(trx, p, {
      kind: "promotion",
      model,
      name: envName,
      source_deployment_id: source.id,
    });
    const candidate = await promoteInTransaction(
      ctx,
      trx,
      p,
      model,
      env,
      source,
      { scaleDownPrevious },
      scope,
    );
    return renderDeployment(trx, await loadDeployment(trx, model, candidate.id));
  });
}

/**
 * A promotion's dry run (`dry_run: true` on either promote route): what `promote` would do, changing
 * nothing — in a transaction the database refuses to write in. The caller is checked exactly as for the
 * real call and in the same order (model, capability, environment, deployment, manage access), so a dry
 * run answers nobody a question the real call would refuse them. A promotion the state would refuse
 * (one in flight, a failed deployment) is an answer here, not an error: the plan says so and why.
 */
export async function promotionDryRun(
  ctx: ControlContext,
  p: Principal,
  modelId: string,
  envName: string,
  deploymentId: string,
  scaleDownPrevious: boolean,
) {
  const model = await loadModel(ctx.store.db, p, modelId);
  requireCapability(p, "manage");
  return ctx.store.readOnly(async (trx) => {
    const env = await loadEnvironment(trx, model, envName);
    const source = await loadDeploymentAlias(trx, model, deploymentId);
    await requireManageAccess(trx, p, {
      kind: "promotion",
      model,
      name: envName,
      source_deployment_id: source.id,
    });
    const facts = await promotionFacts(trx, model, env, source);
    const [planes, sourceReplicas, previousEnvs] = await Promise.all([
      placementPlanes(ctx, trx, source.id),
      trx
        .selectFrom("replicas")
        .select(["id", "plane", "state", "message"])
        .where("deployment_id", "=", source.id)
        .orderBy("created_at")
        .execute(),
      env.current_deployment_id === null
        ? Promise.resolve([])
        : trx
            .selectFrom("environments")
            .select("name")
            .where("current_deployment_id", "=", env.current_deployment_id)
            .where("model_id", "=", model.id)
            .where("name", "!=", env.name)
            .execute(),
    ]);
    const autoscaling = autoscalingOf(env.autoscaling);
    const plan = planPromotion({
      target: facts.target,
      source: facts.source,
      scaleDownPrevious,
      targetScaling: autoscaling,
      planes,
      sourceReplicas: sourceReplicas.map((r) => ({ ...r, state: r.state as ReplicaState })),
      previousServesElsewhere: previousEnvs.map((e) => e.name),
    });
    return promotionDryRunView({
      model,
      environment: env.name,
      source: await renderDeployment(trx, source),
      candidateName: `${source.name}-${env.name}`.slice(0, 255),
      plan,
      boundEnvironments: facts.source.bound_environments,
      inFlight: facts.inFlight ?? null,
    });
  });
}

interface DryRunFacts {
  model: ModelRow;
  environment: string;
  source: DeploymentView;
  /** The name a copy would get (its id is chosen only when it is made). */
  candidateName: string;
  plan: PromotionPlan;
  boundEnvironments: readonly string[];
  inFlight: PromotionRow | null;
}

const REASON_TEXT: Record<CopyReason, (f: DryRunFacts, region: string | null) => string> = {
  region: (f, region) =>
    `it runs ${f.source.region === null ? "without a region restriction" : `restricted to region ${f.source.region.slug}`}, so promoting it into ${f.environment} is a forced redeploy into region ${region}, even with redeploy_on_promotion off`,
  egress: (f) =>
    `it runs under egress policy ${f.source.egress}, and ${f.environment}'s group has the other, so its copy runs under the group's`,
  bound_elsewhere: (f) => `it serves ${f.boundEnvironments.join(", ")}`,
  redeploy_on_promotion: (f) => `${f.environment} has redeploy_on_promotion on`,
  development: () => "it is the development deployment",
};

/** The answer to a dry run (PromotionDryRunV1, Meridian's extension next to the promote routes' DeploymentV1). */
function promotionDryRunView(f: DryRunFacts) {
  const { plan } = f;
  const inFlight =
    f.inFlight === null
      ? null
      : {
          id: f.inFlight.id,
          status: f.inFlight.status,
          source_deployment_id: f.inFlight.source_deployment_id,
          candidate_deployment_id: f.inFlight.candidate_deployment_id,
          created_at: f.inFlight.created_at,
        };
  const base = {
    dry_run: true as const,
    model_id: f.model.id,
    environment: f.environment,
    source: f.source,
    in_flight_promotion: inFlight,
  };
  const none = { candidate: null, placement: null, switches: null, previous_deployment: null };
  switch (plan.outcome) {
    case "refused":
      return {
        ...base,
        outcome: "refused" as const,
        message: `The promotion would be refused: ${plan.message}`,
        refusal: { error_code: plan.code, error: plan.message },
        ...none,
      };
    case "already_current":
      return {
        ...base,
        outcome: "already_current" as const,
        message: `Deployment ${f.source.id} already serves ${f.environment}; promoting it would change nothing.`,
        refusal: null,
        ...none,
      };
    case "promote": {
      const copy = plan.candidate === "copy";
      const why = plan.reasons.map((r) => REASON_TEXT[r](f, plan.candidate_region));
      const { placement } = plan;
      const inRegion = plan.candidate_region === null ? "" : ` of region ${plan.candidate_region}`;
      const placed = placement.replicas - placement.unplaced;
      const switches = `${f.environment} switches to it ${plan.switches === "at_once" ? "at once" : "once it is ready"}`;
      const where =
        placed === 0
          ? `No plane${inRegion} has a free slot for it now, so it would wait for capacity; ${switches}.`
          : `It would run ${placed} replica${placed === 1 ? "" : "s"} on ${placement.planes.map((p) => (p.replicas === 1 ? p.name : `${p.name} (${p.replicas})`)).join(", ")}${placement.unplaced > 0 ? `, and ${placement.unplaced} more once a plane${inRegion} has a free slot` : ""}; ${switches}.`;
      const fate =
        plan.previous === null
          ? ""
          : ` The previous deployment ${plan.previous.id} would be ${{ keep: "kept", scale_to_zero: "scaled to zero", deactivate: "deactivated" }[plan.previous.fate]} once it does.`;
      return {
        ...base,
        outcome: "promote" as const,
        message: `${copy ? `A copy of ${f.source.id}` : `Deployment ${f.source.id}`} would be promoted into ${f.environment}${why.length > 0 ? `: ${why.join("; ")}` : ""}. ${where}${fate}`,
        refusal: null,
        candidate: {
          kind: plan.candidate,
          reason: plan.reason,
          reasons: plan.reasons,
          // A copy gets its id when it is made; the dry run makes nothing.
          deployment_id: copy ? null : f.source.id,
          name: copy ? f.candidateName : f.source.name,
          copied_from: copy ? f.source.id : null,
          region: plan.candidate_region,
          egress: plan.candidate_egress,
          wakes: plan.wakes,
          status: plan.status,
          status_message: plan.status_message,
          bound_environments: [...f.boundEnvironments],
        },
        placement: plan.placement,
        switches: plan.switches,
        previous_deployment:
          plan.previous === null
            ? null
            : { id: plan.previous.id, fate: plan.previous.fate, cleanup_strategy: plan.previous.cleanup },
      };
    }
  }
}

export async function cancelPromotion(ctx: ControlContext, p: Principal, modelId: string, envName: string) {
  const model = await loadModel(ctx.store.db, p, modelId);
  requireCapability(p, "manage");
  return change(ctx, async (trx, scope) => {
    await requireManageAccess(trx, p, { kind: "environment", model, name: envName });
    await loadEnvironment(trx, model, envName);
    const promotion = await activePromotion(trx, model.id, envName);
    if (!promotion) {
      throw new MeridianError("no_promotion_in_progress", `No promotion into '${envName}' is in progress.`);
    }
    await cancelInTransaction(ctx, trx, promotion.id, scope);
    await recordAudit(ctx, trx, p, {
      team_id: model.team_id,
      model_id: model.id,
      action: "environment.cancel_promotion",
      target: `environment:${model.id}/${envName}`,
      before: { candidate_deployment_id: promotion.candidate_deployment_id },
    });
    return {
      status: "CANCELED",
      message: `Promotion into '${envName}' canceled; the environment keeps its deployment.`,
    };
  });
}

/** Cancels an in-flight promotion: a candidate made for it is deactivated; the environment is untouched. */
export async function cancelInTransaction(
  ctx: ControlContext,
  trx: Trx,
  promotionId: string,
  scope: ChangeScope,
) {
  const promotion = await trx
    .selectFrom("promotions")
    .selectAll()
    .where("id", "=", promotionId)
    .executeTakeFirstOrThrow();
  const now = ctx.now();
  await trx
    .updateTable("promotions")
    .set({ status: "CANCELED", active: 0, updated_at: now })
    .where("id", "=", promotion.id)
    .execute();
  if (promotion.candidate_deployment_id !== promotion.source_deployment_id) {
    await trx
      .updateTable("deployments")
      .set({ status: "INACTIVE", status_message: "Its promotion was canceled.", updated_at: now })
      .where("id", "=", promotion.candidate_deployment_id)
      .execute();
  }
  scope.touch(promotion.candidate_deployment_id);
}

/** Activate or deactivate the deployment an environment currently serves. */
export async function setEnvironmentActive(
  ctx: ControlContext,
  p: Principal,
  modelId: string,
  envName: string,
  active: boolean,
) {
  const model = await loadModel(ctx.store.db, p, modelId);
  // setActive asks, in its transaction, for every environment the deployment serves (this one included).
  requireCapability(p, "manage");
  const env = await loadEnvironment(ctx.store.db, model, envName);
  if (env.current_deployment_id === null) {
    throw new MeridianError("deployment_not_found", `Environment '${envName}' has no deployment yet.`);
  }
  const d = await loadDeployment(ctx.store.db, model, env.current_deployment_id);
  return setActive(ctx, p, model, d, active, {
    action: active ? "environment.activate" : "environment.deactivate",
    target: `environment:${model.id}/${envName}`,
  });
}
