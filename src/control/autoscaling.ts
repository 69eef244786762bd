// Autoscaling on the control plane (docs/autoscaling.md): a deployment's own settings route
// (`PATCH …/deployments/{id|production|development}/autoscaling_settings`).

import type { Principal } from "../core/access.ts";
import { type ControlContext, recordAudit } from "./context.ts";
import { updatedAutoscaling } from "./environments.ts";
import { loadDeploymentAlias, loadModel, requireCapability, requireManageAccess } from "./lookup.ts";
import { change } from "./scheduler.ts";
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
