// Activating (run replicas again) or deactivating (stop them) a deployment, for the deployment routes and
// the environment routes alike. A failed build cannot be activated; a failed deployment restarts fresh.

import type { Principal } from "../core/access.ts";
import { MeridianError } from "../core/errors.ts";
import type { DeploymentRow, ModelRow } from "../store/schema.ts";
import { type ControlContext, recordAudit } from "./context.ts";
import { requireManageAccess } from "./lookup.ts";
import { change } from "./scheduler.ts";

export async function setActive(
  ctx: ControlContext,
  p: Principal,
  model: ModelRow,
  d: DeploymentRow,
  active: boolean,
  audit: { action: string; target: string },
): Promise<{ success: true }> {
  if (active && d.status === "BUILD_FAILED") {
    throw new MeridianError(
      "conflict",
      `Deployment ${d.id} failed to build: ${d.status_message ?? ""}`.trim(),
    );
  }
  await change(ctx, async (trx, scope) => {
    // What the deployment serves or is a candidate for: every environment that starts or stops with it.
    await requireManageAccess(trx, p, { kind: "deployment", model, deployment_id: d.id });
    const status = active ? (d.status === "ACTIVE" ? "ACTIVE" : "DEPLOYING") : "INACTIVE";
    if (active && (d.status === "DEPLOY_FAILED" || d.status === "UNHEALTHY")) {
      await trx.deleteFrom("replicas").where("deployment_id", "=", d.id).execute();
    }
    await trx
      .updateTable("deployments")
      .set({ status, status_message: null, updated_at: ctx.now() })
      .where("id", "=", d.id)
      .execute();
    scope.touch(d.id);
    await recordAudit(ctx, trx, p, {
      team_id: model.team_id,
      model_id: model.id,
      action: audit.action,
      target: audit.target,
      before: { status: d.status },
      after: { status },
    });
  });
  return { success: true };
}
