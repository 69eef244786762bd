// Autoscaling on the control plane (docs/autoscaling.md): a deployment's own settings route
// (`PATCH …/deployments/{id|production|development}/autoscaling_settings`) and the control loop that
// turns the planes' load reports into replica counts.

import type { Principal } from "../core/access.ts";
import {
  type AutoscalerState,
  decideScale,
  type LoadSample,
  type ScaleDecision,
} from "../core/autoscaler.ts";
import { scaledReplicas } from "../core/autoscaling-replicas.ts";
import { RUNNING_STATUSES } from "../core/deployment-status.ts";
import type { DeploymentStatus } from "../core/domain.ts";
import { MeridianError } from "../core/errors.ts";
import { allowedPlanes } from "../core/placement.ts";
import type { PlaneLoadReport } from "../core/snapshot.ts";
import type { PlaneRow } from "../store/schema.ts";
import { type ControlContext, recordAudit } from "./context.ts";
import { updatedAutoscaling } from "./environments.ts";
import { storeLoad } from "./internal.ts";
import { loadDeploymentAlias, loadModel, requireCapability, requireManageAccess } from "./lookup.ts";
import { change, placementPlanes } from "./scheduler.ts";
import { autoscalingOf } from "./views.ts";

/**
 * Updates a deployment's autoscaling settings (UpdateAutoscalingSettingsV1: only the fields passed in),
 * applied without a redeploy. A deployment serving an environment runs under the environment's settings,
 * so the environment's are updated with it: a deployment and the environment it serves never disagree.
 */
export async function updateDeploymentAutoscaling(
  ctx: ControlContext,
  p: Principal,
  modelId: string,
  deploymentId: string,
  body: unknown,
) {
  const model = await loadModel(ctx.store.db, p, modelId);
  requireCapability(p, "manage");
  return change(ctx, async (trx, scope) => {
    const d = await loadDeploymentAlias(trx, model, deploymentId);
    await requireManageAccess(trx, p, { kind: "deployment", model, deployment_id: d.id });
    const before = autoscalingOf(d.autoscaling);
    const after = updatedAutoscaling(before, body);
    const json = JSON.stringify(after);
    await trx
      .updateTable("deployments")
      .set({ autoscaling: json, updated_at: ctx.now() })
      .where("id", "=", d.id)
      .execute();
    const serves = await trx
      .selectFrom("environments")
      .select("name")
      .where("current_deployment_id", "=", d.id)
      .execute();
    if (serves.length > 0) {
      await trx
        .updateTable("environments")
        .set({ autoscaling: json })
        .where("current_deployment_id", "=", d.id)
        .execute();
    }
    scope.touch(d.id);
    await recordAudit(ctx, trx, p, {
      team_id: model.team_id,
      model_id: model.id,
      action: "deployment.update_autoscaling",
      target: `deployment:${d.id}`,
      before: { autoscaling: before },
      after: { autoscaling: after, environments: serves.map((e) => e.name) },
    });
    const unchanged = JSON.stringify(before) === json;
    return {
      status: unchanged ? ("UNCHANGED" as const) : ("ACCEPTED" as const),
      message: unchanged
        ? "The autoscaling settings already had these values."
        : `Autoscaling settings of deployment ${d.id} updated${serves.length > 0 ? ` (and of ${serves.map((e) => e.name).join(", ")}, which it serves)` : ""}; applied without a redeploy.`,
    };
  });
}

/** Statuses the autoscaler decides for: running ones, and asleep ones (which a request wakes). */
const SCALED_STATUSES: readonly DeploymentStatus[] = [...RUNNING_STATUSES, "SCALED_TO_ZERO"];
/** Statuses of a deployment coming up: each decision counts as a wake, so it stays up after it is ready. */
const BOOTING: readonly DeploymentStatus[] = ["BUILDING", "DEPLOYING", "LOADING_MODEL", "WAKING_UP"];
/** A plane's in-flight count is extrapolated at most this long past its report, then counts for nothing. */
const STALE_REPORT_MS = 10_000;

export interface AutoscalingLoopOptions {
  /** How often every deployment is decided (`--autoscaler-interval-ms`). Default 1 000 ms. */
  intervalMs: number;
}

interface Tracked {
  state: AutoscalerState | null;
  samples: LoadSample[];
  /** Per plane: the counter's epoch and its estimate at the previous tick (request·ms). */
  estimates: Map<string, { epoch: string; value: number }>;
  lastTickMs: number | null;
  /** An explicit or parked-request wake arrived since the last decision. */
  wake: boolean;
}

/**
 * The control loop (docs/autoscaling.md): every `intervalMs`, for each deployment that runs or sleeps, the
 * load its region's planes reported becomes one sample, `decideScale` gives the count, and a changed count
 * is written (`deployments.desired_replicas`) in one `change()`, whose reconcile places it — on planes of
 * the deployment's region only, capped by what they hold (src/core/placement.ts). A wake from a plane
 * decides that deployment at once.
 */
export class AutoscalingLoop {
  readonly #ctx: ControlContext;
  readonly #o: AutoscalingLoopOptions;
  readonly #tracked = new Map<string, Tracked>();
  #timer: NodeJS.Timeout | null = null;
  #running: Promise<void> = Promise.resolve();
  #stopped = false;
  #passes = 0;
  #term = 0;

  constructor(ctx: ControlContext, options: AutoscalingLoopOptions) {
    this.#ctx = ctx;
    this.#o = options;
  }

  start(): void {
    // The periodic pass is the leader's alone (docs/high-availability.md): two replicas each deciding
    // from their own windows would undo each other's counts.
    this.#timer = setInterval(() => {
      if (!this.#leads()) return;
      // Windows kept in an earlier term are stale: a replica that takes the lease again starts from
      // what it sees now.
      const term = this.#ctx.lease?.term() ?? 0;
      if (term !== this.#term) {
        this.#term = term;
        this.#tracked.clear();
      }
      void this.tick();
    }, this.#o.intervalMs);
    this.#timer.unref();
  }

  #leads(): boolean {
    return this.#ctx.lease?.isLeader() ?? true;
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#timer) clearInterval(this.#timer);
    await this.#running;
  }

  /** A plane holds requests for a deployment with nothing ready in its region: decide it now. */
  wake(deploymentId: string): Promise<void> {
    if (!this.#leads()) return this.#followerWake(deploymentId);
    this.#track(deploymentId).wake = true;
    return this.tick([deploymentId]);
  }

  /**
   * A wake that reaches a replica that does not lead is decided at once all the same (a cold start must
   * not wait for the leader's next pass), from nothing but what the planes reported, and may only raise
   * the count: it never undoes the leader's decisions, and the leader's next pass sees the replicas it
   * started (and the requests they wait for) before it could scale them down.
   */
  #followerWake(deploymentId: string): Promise<void> {
    const tracked = new Map<string, Tracked>();
    const fresh = this.#fresh();
    fresh.wake = true;
    tracked.set(deploymentId, fresh);
    const next = this.#running.then(() =>
      this.#stopped ? undefined : this.#pass([deploymentId], { tracked, raiseOnly: true }),
    );
    this.#running = next.catch((err) => this.#ctx.logger.error({ err }, "autoscaler wake failed"));
    return this.#running;
  }

  /** One pass (all deployments, or those named); passes never overlap. */
  tick(only?: readonly string[]): Promise<void> {
    const next = this.#running.then(() => (this.#stopped ? undefined : this.#pass(only)));
    this.#running = next.catch((err) => this.#ctx.logger.error({ err }, "autoscaler pass failed"));
    return this.#running;
  }

  #fresh(): Tracked {
    return { state: null, samples: [], estimates: new Map(), lastTickMs: null, wake: false };
  }

  #track(id: string, tracked = this.#tracked): Tracked {
    let t = tracked.get(id);
    if (t === undefined) {
      t = this.#fresh();
      tracked.set(id, t);
    }
    return t;
  }

  async #pass(
    only?: readonly string[],
    follower?: { tracked: Map<string, Tracked>; raiseOnly: true },
  ): Promise<void> {
    const ctx = this.#ctx;
    const db = ctx.store.db;
    const nowMs = Date.now();
    let query = db
      .selectFrom("deployments")
      .select(["id", "status", "region", "autoscaling", "desired_replicas"])
      .where("status", "in", [...SCALED_STATUSES]);
    if (only !== undefined) query = query.where("id", "in", [...only]);
    const deployments = await query.execute();
    if (only === undefined && follower === undefined) {
      const live = new Set(deployments.map((d) => d.id));
      for (const id of this.#tracked.keys()) {
        if (live.has(id)) continue;
        this.#tracked.delete(id);
        ctx.metrics?.forget(id);
      }
      // Counters of deleted deployments go, now and then (nothing references them).
      if (++this.#passes % 60 === 1) {
        await db
          .deleteFrom("plane_loads")
          .where(({ not, exists, selectFrom }) =>
            not(
              exists(
                selectFrom("deployments")
                  .select("id")
                  .whereRef("deployments.id", "=", "plane_loads.deployment_id"),
              ),
            ),
          )
          .execute();
      }
    }
    if (deployments.length === 0) return;
    const [serving, replicas, loads, planes] = await Promise.all([
      db
        .selectFrom("environments")
        .select("current_deployment_id")
        .where("current_deployment_id", "is not", null)
        .execute(),
      db.selectFrom("replicas").select(["deployment_id", "plane", "state"]).execute(),
      db.selectFrom("plane_loads").selectAll().execute(),
      placementPlanes(ctx, db, ""),
    ]);
    const serves = new Set(serving.map((e) => e.current_deployment_id));
    const planeRegion = new Map(planes.map((p) => [p.name, p.region]));
    const byDeployment = <T extends { deployment_id: string }>(rows: T[]) => {
      const m = new Map<string, T[]>();
      for (const r of rows) m.set(r.deployment_id, [...(m.get(r.deployment_id) ?? []), r]);
      return m;
    };
    const replicasOf = byDeployment(replicas);
    const loadsOf = byDeployment(loads);

    const changes: Array<{ id: string; from: number | null; to: number; decision: ScaleDecision }> = [];
    for (const d of deployments) {
      const t = this.#track(d.id, follower?.tracked);
      const status = d.status as DeploymentStatus;
      let settings = autoscalingOf(d.autoscaling);
      // A deployment asleep that serves no environment (a promotion's previous) wakes only when asked: a
      // request held for it at a plane (its deployment endpoint) asks with a wake. The planes' counters are
      // no such ask: a report sent just before a promotion switched its environment still counts requests
      // in flight for it, and they must not wake what the promotion just put to sleep.
      if (status === "SCALED_TO_ZERO" && !serves.has(d.id)) {
        if (!t.wake) continue;
        settings = { ...settings, min_replica: 0 };
      }
      const inRegion = (plane: string) => {
        const region = planeRegion.get(plane);
        return region !== undefined && (d.region === null || region === d.region);
      };
      const own = replicasOf.get(d.id) ?? [];
      const ready = own.filter((r) => r.state === "READY").length;
      // The control plane's /metrics: how long a wake from nothing ready takes to a ready replica.
      if (t.wake && ready === 0) ctx.metrics?.wakeStarted(d.id, nowMs);
      ctx.metrics?.observeReady(d.id, ready, nowMs);
      // Only the region's planes count (each reports its own); a down plane's report is not load.
      const rows = (loadsOf.get(d.id) ?? []).filter((r) => inRegion(r.plane));
      let growth = 0;
      let inFlight = 0;
      let lastRequest: number | null = null;
      for (const r of rows) {
        const age = Math.max(0, nowMs - Date.parse(r.reported_at));
        const fresh = age <= STALE_REPORT_MS;
        const value = Number(r.request_ms) + (fresh ? r.in_flight * age : r.in_flight * STALE_REPORT_MS);
        const prev = t.estimates.get(r.plane);
        if (prev !== undefined && prev.epoch === r.epoch) {
          growth += Math.max(0, value - prev.value);
          t.estimates.set(r.plane, { epoch: r.epoch, value: Math.max(prev.value, value) });
        } else {
          t.estimates.set(r.plane, { epoch: r.epoch, value });
        }
        if (fresh) inFlight += r.in_flight;
        if (r.last_request_at !== null) {
          const at = Date.parse(r.last_request_at);
          if (Number.isFinite(at)) lastRequest = Math.max(lastRequest ?? at, at);
        }
      }
      if (t.lastTickMs !== null && nowMs > t.lastTickMs) {
        t.samples.push({ from_ms: t.lastTickMs, to_ms: nowMs, request_ms: Math.round(growth) });
        const keepFrom = nowMs - settings.autoscaling_window * 1000 - 2 * this.#o.intervalMs;
        while (t.samples.length > 0 && t.samples[0]!.to_ms < keepFrom) t.samples.shift();
      }
      t.lastTickMs = nowMs;

      // What the region can hold for it: its replicas' slots plus the free slots of the planes it may use.
      const capacity = allowedPlanes(planes, d.region).reduce(
        (n, p) => n + Math.max(0, p.capacity - p.used + own.filter((r) => r.plane === p.name).length),
        0,
      );
      const input = {
        settings,
        replicas: { ready, starting: own.length - ready },
        samples: t.samples,
        in_flight: inFlight,
        last_request_at_ms: lastRequest !== null && lastRequest <= nowMs ? lastRequest : null,
        wake: t.wake || BOOTING.includes(status),
        capacity,
        now_ms: nowMs,
        state: t.state,
      };
      const decision = decideScale(input);
      t.state = decision.state;
      t.wake = false;
      // A full region caps what is placed, not what is asked for: the scheduler places what fits and the
      // deployment's status_message says the rest waits for capacity.
      const target = decision.capped_by_capacity
        ? decideScale({ ...input, capacity: settings.max_replica }).desired
        : decision.desired;
      // A deployment the autoscaler never decided for keeps the scheduler's count until a decision differs
      // from it: nothing is written (and no revision spent) for what would change nothing.
      const stored = d.desired_replicas ?? null;
      const effective = (desired: number | null) =>
        scaledReplicas({ status, settings: autoscalingOf(d.autoscaling), desired }).want;
      if (follower?.raiseOnly && effective(target) <= effective(stored)) continue;
      if (target !== stored && (stored !== null || effective(target) !== effective(null))) {
        changes.push({ id: d.id, from: d.desired_replicas ?? null, to: target, decision });
      }
    }
    if (changes.length === 0) return;
    const applied = await change(ctx, async (trx, scope) => {
      // The leader's decisions commit only while the database says it still leads; a follower's wake
      // only raises counts, which is safe from any replica.
      if (follower === undefined) await ctx.lease?.fence(trx);
      const done: typeof changes = [];
      for (const c of changes) {
        // Compare-and-set: a count another replica changed since this pass read it is not overwritten
        // with a decision made from the old one (the next pass decides again from the new).
        const res = await trx
          .updateTable("deployments")
          .set({ desired_replicas: c.to })
          .where("id", "=", c.id)
          .where((eb) =>
            c.from === null ? eb("desired_replicas", "is", null) : eb("desired_replicas", "=", c.from),
          )
          .executeTakeFirst();
        if (Number(res.numUpdatedRows) === 0) continue;
        scope.touch(c.id);
        done.push(c);
      }
      return done;
    });
    for (const c of applied) {
      ctx.metrics?.scaleDecision(c.decision.reason, c.from, c.to);
      ctx.logger.info(
        {
          deployment: c.id,
          from: c.from,
          to: c.to,
          reason: c.decision.reason,
          capped_by_capacity: c.decision.capped_by_capacity,
          panic: c.decision.panic,
          observed: c.decision.observed,
        },
        "scale decision",
      );
    }
  }
}

/**
 * A plane's wake (`POST /v1/internal/planes/{name}/wake`): it holds requests for the deployment and nothing
 * is ready in the deployment's region. Only a plane the deployment may run on, or a global ingress, can
 * wake it (DESIGN.md §2.1: another region's plane has no business with a regional deployment); the plane's counters are kept as a
 * report's are, and the deployment is decided at once. Idempotent: concurrent wakes decide once each and
 * start what the requests held ask for, never one replica per wake.
 */
export async function wakeFromPlane(
  ctx: ControlContext,
  plane: PlaneRow,
  body: { deployment_id: string; load: PlaneLoadReport },
) {
  const d = await ctx.store.db
    .selectFrom("deployments")
    .select(["id", "status", "region"])
    .where("id", "=", body.deployment_id)
    .executeTakeFirst();
  if (!d) throw new MeridianError("deployment_not_found");
  // A global ingress takes standard-endpoint requests for every model, so it may wake any; a replica still
  // starts only in the deployment's region (placement), and the requests it holds are routed from there.
  if (d.region !== null && d.region !== plane.region && plane.global_ingress !== 1) {
    throw new MeridianError(
      "forbidden",
      `Plane ${plane.name} is in region ${plane.region}; deployment ${d.id} runs only in region ${d.region}.`,
    );
  }
  if (!SCALED_STATUSES.includes(d.status as DeploymentStatus)) {
    throw new MeridianError("conflict", `Deployment ${d.id} is ${d.status}; it does not wake on requests.`);
  }
  const load = { ...body.load, deployments: body.load.deployments.filter((x) => x.deployment_id === d.id) };
  await ctx.store.transaction((trx) => storeLoad(trx, plane.name, load, new Set([d.id]), ctx.now()));
  await ctx.autoscaler?.wake(d.id);
  const after = await ctx.store.db
    .selectFrom("deployments")
    .select(["status", "desired_replicas"])
    .where("id", "=", d.id)
    .executeTakeFirstOrThrow();
  return { deployment_id: d.id, status: after.status, desired_replicas: after.desired_replicas ?? null };
}
