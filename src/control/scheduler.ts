// The scheduler: turns desired state into replica assignments on workload planes (placement, DESIGN.md
// §2.1), derives each deployment's status from its replicas, and moves promotions forward when their
// candidate becomes ready or fails. Every change to desired state goes through `change()`, which runs this
// in the same transaction and bumps the revision planes watch.

import type { Transaction } from "kysely";
import { scaledReplicas, wakingStatus } from "../core/autoscaling-replicas.ts";
import { deriveStatus } from "../core/deployment-status.ts";
import type {
  DeploymentStatus,
  EgressPolicy,
  PromotionCleanupStrategy,
  ReplicaState,
  SandboxMode,
} from "../core/domain.ts";
import { type PlaneCapacity, planPlacement } from "../core/placement.ts";
import { previousDeploymentFate } from "../core/promotion.ts";
import type { Schema } from "../store/schema.ts";
import type { Db } from "../store/store.ts";
import type { ControlContext } from "./context.ts";
import { newId } from "./identity.ts";
import { planeHealthOf } from "./plane-health.ts";
import { autoscalingOf } from "./views.ts";

type Trx = Transaction<Schema>;

export interface ChangeScope {
  /** Deployments whose replicas or status may need to change. */
  touch(deploymentId: string): void;
}

/**
 * Runs `fn` in a transaction, then reconciles the deployments it touched and bumps the revision, so a
 * change and its consequences commit together; wakes the long-polls after commit.
 */
export async function change<T>(
  ctx: ControlContext,
  fn: (trx: Trx, scope: ChangeScope) => Promise<T>,
): Promise<T> {
  const result = await ctx.store.transaction(async (trx) => {
    // Taking the revision row's lock first serializes writers that change what planes see.
    await ctx.store.bumpRevision(trx);
    const touched = new Set<string>();
    const value = await fn(trx, { touch: (id) => touched.add(id) });
    await reconcile(ctx, trx, touched);
    return value;
  });
  void ctx.feed.changed();
  return result;
}

/** Reconciles deployments until nothing more changes (a completed promotion frees the previous one). */
export async function reconcile(ctx: ControlContext, trx: Trx, ids: Iterable<string>): Promise<void> {
  const queue = [...new Set(ids)];
  const seen = new Map<string, number>();
  while (queue.length > 0) {
    const id = queue.shift()!;
    const visits = (seen.get(id) ?? 0) + 1;
    if (visits > 4) continue; // a promotion chain settles within a few passes; never loop forever
    seen.set(id, visits);
    for (const next of await reconcileDeployment(ctx, trx, id)) queue.push(next);
  }
}

/**
 * The planes a deployment's replicas may be placed on now (those not down), each with the slots replicas
 * of every other deployment take: what `planPlacement` is given, here and by a promotion's dry run.
 */
export async function placementPlanes(
  ctx: ControlContext,
  db: Db,
  deploymentId: string,
): Promise<PlaneCapacity[]> {
  const nowMs = Date.parse(ctx.now());
  const [planes, usage] = await Promise.all([
    db
      .selectFrom("planes")
      .select(["name", "region", "capacity", "global_ingress", "last_seen_at", "created_at", "sandbox_mode"])
      .execute(),
    db
      .selectFrom("replicas")
      .select(["plane", (eb) => eb.fn.countAll<string | number>().as("n")])
      .where("deployment_id", "!=", deploymentId)
      .groupBy("plane")
      .execute(),
  ]);
  const used = new Map(usage.map((u) => [u.plane, Number(u.n)]));
  // Fail-static (src/core/fail-static.ts): silence judges a plane down only while this process could hear.
  const down = planeHealthOf(ctx).down(planes, nowMs);
  return planes
    .filter((p) => !down.has(p.name))
    .map((p) => ({
      name: p.name,
      region: p.region,
      capacity: p.capacity,
      used: used.get(p.name) ?? 0,
      global_ingress: p.global_ingress === 1,
      sandbox: p.sandbox_mode as SandboxMode | null,
    }));
}

/** Places one deployment's replicas and updates its status; returns deployments affected in turn. */
async function reconcileDeployment(ctx: ControlContext, trx: Trx, id: string): Promise<string[]> {
  const d = await trx.selectFrom("deployments").selectAll().where("id", "=", id).executeTakeFirst();
  if (!d) return [];
  // A failed build places nothing and keeps what it has: a plane's failed build its replica, whose logs
  // hold pip's output, and the message saying why.
  if (d.status === "BUILD_FAILED") return [];
  // The autoscaler's count within the settings in effect (the environment's, kept in step on the row).
  const scaled = scaledReplicas({
    status: d.status as DeploymentStatus,
    settings: autoscalingOf(d.autoscaling),
    desired: d.desired_replicas ?? null,
  });
  const want = scaled.want;

  const [planes, existing] = await Promise.all([
    placementPlanes(ctx, trx, id),
    trx
      .selectFrom("replicas")
      .select(["id", "plane", "state", "message"])
      .where("deployment_id", "=", id)
      .orderBy("created_at")
      .execute(),
  ]);
  const plan = planPlacement({ want, region: d.region, existing, planes, egress: d.egress as EgressPolicy });
  const now = ctx.now();
  if (plan.remove.length > 0) await trx.deleteFrom("replicas").where("id", "in", plan.remove).execute();
  for (const plane of plan.add) {
    await trx
      .insertInto("replicas")
      .values({
        id: newId(12),
        deployment_id: id,
        plane,
        state: "PENDING",
        message: null,
        restarts: 0,
        created_at: now,
        updated_at: now,
      })
      .execute();
  }
  if (plan.add.length > 0) {
    ctx.logger.info({ deployment: id, planes: plan.add, region: d.region }, "replicas placed");
  }

  const kept = existing.filter((r) => plan.keep.includes(r.id));
  const derivedStatus = deriveStatus({
    current: scaled.status,
    want,
    replicas: [
      ...kept.map((r) => ({ state: r.state as ReplicaState, message: r.message, plane: r.plane })),
      ...plan.add.map(() => ({ state: "PENDING" as ReplicaState, message: null })),
    ],
    unplaced: plan.unplaced,
    region: d.region,
  });
  const derived = cappedMessage(wakingStatus(scaled.status, derivedStatus), want, plan.unplaced, d.region);
  if (derived.status === d.status && derived.message === d.status_message) return [];
  await trx
    .updateTable("deployments")
    .set({ status: derived.status, status_message: derived.message, updated_at: now })
    .where("id", "=", id)
    .execute();
  return advancePromotions(ctx, trx, id, derived.status, derived.message);
}

/** A serving deployment the region cannot hold all of says so (issue 12: "a full region caps the count"). */
function cappedMessage(
  derived: { status: DeploymentStatus; message: string | null },
  want: number,
  unplaced: number,
  region: string | null,
): { status: DeploymentStatus; message: string | null } {
  if (derived.status !== "ACTIVE" || unplaced === 0 || derived.message !== null) return derived;
  const where = region === null ? "the workload planes have" : `region '${region}' has`;
  return {
    status: derived.status,
    message: `Capped at ${want - unplaced} of ${want} replicas: ${where} no free replica slot for the rest.`,
  };
}

/** Completes or fails the promotions whose candidate is `deploymentId`. */
async function advancePromotions(
  ctx: ControlContext,
  trx: Trx,
  deploymentId: string,
  status: DeploymentStatus,
  message: string | null,
): Promise<string[]> {
  const promotions = await trx
    .selectFrom("promotions")
    .selectAll()
    .where("candidate_deployment_id", "=", deploymentId)
    .where("active", "=", 1)
    .execute();
  const affected: string[] = [];
  for (const p of promotions) {
    if (status === "ACTIVE") {
      affected.push(...(await completePromotion(ctx, trx, p.id)));
    } else if (status === "DEPLOY_FAILED" || status === "BUILD_FAILED" || status === "FAILED") {
      await trx
        .updateTable("promotions")
        .set({ status: "FAILED", active: 0, error_message: message, updated_at: ctx.now() })
        .where("id", "=", p.id)
        .execute();
      ctx.logger.warn({ promotion: p.id, deployment: deploymentId, message }, "promotion failed");
    }
  }
  return affected;
}

/** Switches the environment to the candidate and applies the cleanup strategy to the previous one. */
export async function completePromotion(
  ctx: ControlContext,
  trx: Trx,
  promotionId: string,
): Promise<string[]> {
  const p = await trx
    .selectFrom("promotions")
    .selectAll()
    .where("id", "=", promotionId)
    .executeTakeFirstOrThrow();
  const now = ctx.now();
  const env = await trx
    .selectFrom("environments")
    .select("current_deployment_id")
    .where("model_id", "=", p.model_id)
    .where("name", "=", p.environment)
    .executeTakeFirst();
  if (!env) return [];
  const previous = env.current_deployment_id;
  await trx
    .updateTable("environments")
    .set({ current_deployment_id: p.candidate_deployment_id })
    .where("model_id", "=", p.model_id)
    .where("name", "=", p.environment)
    .execute();
  // The deployment now serves the environment: it runs under the environment's autoscaling settings.
  const envSettings = await trx
    .selectFrom("environments")
    .select(["autoscaling", "backpressure"])
    .where("model_id", "=", p.model_id)
    .where("name", "=", p.environment)
    .executeTakeFirst();
  if (envSettings) {
    await trx
      .updateTable("deployments")
      .set({ autoscaling: envSettings.autoscaling, backpressure: envSettings.backpressure ?? null })
      .where("id", "=", p.candidate_deployment_id)
      .execute();
  }
  await trx
    .updateTable("promotions")
    .set({ status: "SUCCEEDED", active: 0, previous_deployment_id: previous, updated_at: now })
    .where("id", "=", promotionId)
    .execute();
  ctx.logger.info(
    { promotion: p.id, model: p.model_id, environment: p.environment, deployment: p.candidate_deployment_id },
    "promotion succeeded",
  );
  const affected = [p.candidate_deployment_id];
  if (previous === null || previous === p.candidate_deployment_id) return affected;
  const stillServes = await trx
    .selectFrom("environments")
    .select("name")
    .where("current_deployment_id", "=", previous)
    .executeTakeFirst();
  const fate = previousDeploymentFate(
    p.cleanup_strategy as PromotionCleanupStrategy,
    stillServes !== undefined,
  );
  if (fate !== "keep") {
    await trx
      .updateTable("deployments")
      .set({
        status: fate === "deactivate" ? "INACTIVE" : "SCALED_TO_ZERO",
        status_message: null,
        // Asleep until a request wakes it: the autoscaler's count for it starts again from zero.
        desired_replicas: 0,
        updated_at: now,
      })
      .where("id", "=", previous)
      .execute();
  }
  affected.push(previous);
  return affected;
}

/** Deployments that run replicas: used at start and after plane changes to re-place everything. */
export async function reconcileAll(ctx: ControlContext): Promise<void> {
  await change(ctx, async (trx, scope) => {
    const rows = await trx.selectFrom("deployments").select("id").execute();
    for (const r of rows) scope.touch(r.id);
  });
}
