// The control plane's own `/metrics` (issue 12): replicas desired and ready per environment and region,
// scale decisions by reason, and how long a wake takes from the first held request to a ready replica.
// Aggregates only, of environments that exist: no label takes its value from a request. Served to the
// operator (an org admin's key, as `Authorization: Bearer …` or `Api-Key …`), never to the public.

import { Counter, Gauge, Histogram, Registry } from "prom-client";
import { scaledReplicas } from "../core/autoscaling-replicas.ts";
import type { DeploymentStatus } from "../core/domain.ts";
import type { Db } from "../store/store.ts";
import { autoscalingOf } from "./views.ts";

/** Wake durations: from 50 ms (a warm plane) to the 20-minute predict timeout. */
const WAKE_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 1200];

export class ControlMetrics {
  readonly registry = new Registry();
  readonly #decisions: Counter<"reason" | "direction">;
  readonly #wakes: Histogram<never>;
  /** Deployments waking from zero: when the first held request asked (ms). */
  readonly #waking = new Map<string, number>();

  constructor(db: () => Db) {
    this.#decisions = new Counter({
      name: "meridian_control_scale_decisions_total",
      help: "Replica counts the autoscaler changed, by the decision's reason (min, max, load, panic, wake, from_zero, steady) and direction.",
      labelNames: ["reason", "direction"],
      registers: [this.registry],
    });
    this.#wakes = new Histogram({
      name: "meridian_control_wake_duration_seconds",
      help: "From a wake of a deployment with no ready replica until one of its region's replicas is ready.",
      buckets: WAKE_BUCKETS,
      registers: [this.registry],
    });
    // Read at scrape time, from the store every control replica shares: each one reports the same.
    let reading: Promise<void> | null = null;
    const read = (): Promise<void> => {
      reading ??= readReplicaGauges(db(), desired, ready).finally(() => {
        reading = null;
      });
      return reading;
    };
    const desired: Gauge<"model_id" | "environment" | "region"> = new Gauge({
      name: "meridian_control_desired_replicas",
      help: "Replicas the control plane wants for the deployment an environment serves.",
      labelNames: ["model_id", "environment", "region"],
      registers: [this.registry],
      collect: read,
    });
    const ready: Gauge<"model_id" | "environment" | "region"> = new Gauge({
      name: "meridian_control_ready_replicas",
      help: "Replicas reported READY for the deployment an environment serves, per region of their planes.",
      labelNames: ["model_id", "environment", "region"],
      registers: [this.registry],
      collect: read,
    });
  }

  scaleDecision(reason: string, from: number | null, to: number): void {
    this.#decisions.inc({ reason, direction: from === null || to > from ? "up" : "down" });
  }

  /** A wake reached a deployment that has no ready replica: the clock starts (once per wake). */
  wakeStarted(deploymentId: string, nowMs: number): void {
    if (!this.#waking.has(deploymentId)) this.#waking.set(deploymentId, nowMs);
  }

  /** The autoscaler's view of a deployment's ready replicas: a waking one that has one is awake. */
  observeReady(deploymentId: string, readyReplicas: number, nowMs: number): void {
    const started = this.#waking.get(deploymentId);
    if (started === undefined || readyReplicas === 0) return;
    this.#waking.delete(deploymentId);
    this.#wakes.observe(Math.max(0, nowMs - started) / 1000);
  }

  /** A deployment that is gone is no longer waking. */
  forget(deploymentId: string): void {
    this.#waking.delete(deploymentId);
  }
}

async function readReplicaGauges(
  db: Db,
  desired: Gauge<"model_id" | "environment" | "region">,
  ready: Gauge<"model_id" | "environment" | "region">,
): Promise<void> {
  const [envs, replicas] = await Promise.all([
    db
      .selectFrom("environments")
      .innerJoin("deployments", "deployments.id", "environments.current_deployment_id")
      .select([
        "environments.model_id",
        "environments.name",
        "deployments.id",
        "deployments.status",
        "deployments.region",
        "deployments.autoscaling",
        "deployments.desired_replicas",
      ])
      .execute(),
    db
      .selectFrom("replicas")
      .innerJoin("planes", "planes.name", "replicas.plane")
      .select(["replicas.deployment_id", "planes.region"])
      .where("replicas.state", "=", "READY")
      .execute(),
  ]);
  desired.reset();
  ready.reset();
  const readyBy = new Map<string, Map<string, number>>();
  for (const r of replicas) {
    const regions = readyBy.get(r.deployment_id) ?? new Map<string, number>();
    regions.set(r.region, (regions.get(r.region) ?? 0) + 1);
    readyBy.set(r.deployment_id, regions);
  }
  for (const e of envs) {
    const want = scaledReplicas({
      status: e.status as DeploymentStatus,
      settings: autoscalingOf(e.autoscaling),
      desired: e.desired_replicas ?? null,
    }).want;
    // An unrestricted deployment's desired count has no region of its own: `any`.
    desired.set({ model_id: e.model_id, environment: e.name, region: e.region ?? "any" }, want);
    for (const [region, n] of readyBy.get(e.id) ?? []) {
      ready.set({ model_id: e.model_id, environment: e.name, region }, n);
    }
  }
}
