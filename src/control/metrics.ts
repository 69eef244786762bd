// A deployment's metrics (`GET …/deployments/{id}/metrics`) from the aggregates the control plane holds:
// its replicas' states and restarts, and the request counts planes reported for the environments it
// serves. Never request-level data: that stays on the planes (DESIGN.md §2.6). The shape is decided in
// src/core/deployment-metrics.ts.

import type { Principal } from "../core/access.ts";
import {
  type DeploymentMetrics,
  deploymentMetrics,
  type MetricMode,
  resolveMetricsQuery,
} from "../core/deployment-metrics.ts";
import { MeridianError } from "../core/errors.ts";
import type { ControlContext } from "./context.ts";
import { loadDeploymentAlias, loadModel, requireCapability } from "./lookup.ts";

/** The route's query as the app hands it over: strings (digits checked by the schema), repeated keys arrays. */
export interface MetricsQueryString {
  mode?: MetricMode;
  start_epoch_millis?: string;
  end_epoch_millis?: string;
  metrics?: string | string[];
}

const STARTING = new Set(["PENDING", "STARTING"]);

export async function getDeploymentMetrics(
  ctx: ControlContext,
  p: Principal,
  modelId: string,
  deploymentId: string,
  q: MetricsQueryString,
): Promise<DeploymentMetrics> {
  requireCapability(p, "read");
  const db = ctx.store.db;
  const model = await loadModel(db, p, modelId);
  const d = await loadDeploymentAlias(db, model, deploymentId);
  const outcome = resolveMetricsQuery(
    {
      ...(q.mode === undefined ? {} : { mode: q.mode }),
      ...(q.start_epoch_millis === undefined ? {} : { start_epoch_millis: Number(q.start_epoch_millis) }),
      ...(q.end_epoch_millis === undefined ? {} : { end_epoch_millis: Number(q.end_epoch_millis) }),
      ...(q.metrics === undefined ? {} : { metrics: [q.metrics].flat() }),
    },
    Date.parse(ctx.now()),
  );
  if (!outcome.ok) throw new MeridianError("invalid_request", outcome.message, { field: outcome.field });

  const [replicas, served] = await Promise.all([
    db.selectFrom("replicas").select(["state", "restarts"]).where("deployment_id", "=", d.id).execute(),
    db
      .selectFrom("environments")
      .select("name")
      .where("model_id", "=", model.id)
      .where("current_deployment_id", "=", d.id)
      .execute(),
  ]);
  const names = served.map((e) => e.name);
  const counts =
    names.length === 0
      ? []
      : await db
          .selectFrom("request_counts")
          .select(["environment", "status_class", (eb) => eb.fn.sum<string | number>("count").as("n")])
          .where("model_id", "=", model.id)
          .where("environment", "in", names)
          .groupBy(["environment", "status_class"])
          .execute();
  return deploymentMetrics(outcome.query, {
    replicas: {
      ready: replicas.filter((r) => r.state === "READY").length,
      starting: replicas.filter((r) => STARTING.has(r.state)).length,
      // PostgreSQL answers integers of a sum as strings.
      restarts: replicas.reduce((sum, r) => sum + Number(r.restarts), 0),
    },
    environments: names.map((name) => ({
      name,
      counts: Object.fromEntries(
        counts.filter((c) => c.environment === name).map((c) => [c.status_class, Number(c.n)]),
      ),
    })),
  });
}
