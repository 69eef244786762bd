// Environments of a model, their promotions and logs.

import type { ControlContext } from "../context.ts";
import * as environments from "../environments.ts";
import * as logs from "../logs.ts";
import * as s from "../schemas.ts";
import { type Route, route } from "./route.ts";

export function environmentsRoutes(ctx: ControlContext): Route[] {
  return [
    route({
      method: "GET",
      url: "/v1/models/{model_id}/environments",
      summary: "Gets all environments",
      auth: "key",
      response: "EnvironmentsV1",
      handler: (c) => environments.listEnvironments(ctx, c.principal, c.params.model_id),
    }),
    route({
      method: "POST",
      url: "/v1/models/{model_id}/environments",
      summary: "Creates an environment",
      auth: "key",
      body: s.createEnvironmentBody,
      response: "EnvironmentV1",
      handler: (c) => environments.createEnvironment(ctx, c.principal, c.params.model_id, c.body),
    }),
    route({
      method: "GET",
      url: "/v1/models/{model_id}/environments/{env_name}",
      summary: "Gets an environment's details",
      auth: "key",
      response: "EnvironmentV1",
      handler: (c) => environments.getEnvironment(ctx, c.principal, c.params.model_id, c.params.env_name),
    }),
    route({
      method: "PATCH",
      url: "/v1/models/{model_id}/environments/{env_name}",
      summary: "Updates an environment's settings",
      auth: "key",
      body: s.updateEnvironmentBody,
      response: "UpdateAutoscalingSettingsResponseV1",
      handler: (c) =>
        environments.updateEnvironment(ctx, c.principal, c.params.model_id, c.params.env_name, c.body),
    }),
    route({
      method: "DELETE",
      url: "/v1/models/{model_id}/environments/{env_name}",
      summary: "Deletes an environment",
      auth: "key",
      response: "EnvironmentTombstoneV1",
      handler: (c) => environments.deleteEnvironment(ctx, c.principal, c.params.model_id, c.params.env_name),
    }),
    route({
      method: "POST",
      url: "/v1/models/{model_id}/environments/{env_name}/promote",
      summary: "Promotes a deployment to an environment",
      auth: "key",
      body: s.promoteToEnvironmentBody,
      response: "DeploymentV1",
      alternative: { name: "PromotionDryRunV1", schema: s.promotionDryRunSchema, when: "dry_run: true" },
      handler: (c) => {
        const b = c.body;
        return (b.dry_run === true ? environments.promotionDryRun : environments.promote)(
          ctx,
          c.principal,
          c.params.model_id,
          c.params.env_name,
          b.deployment_id,
          b.scale_down_previous_deployment ?? true,
        );
      },
    }),
    route({
      method: "POST",
      url: "/v1/models/{model_id}/environments/{env_name}/cancel_promotion",
      summary: "Cancels a promotion to an environment",
      auth: "key",
      response: "CancelPromotionResponseV1",
      handler: (c) => environments.cancelPromotion(ctx, c.principal, c.params.model_id, c.params.env_name),
    }),
    route({
      method: "GET",
      url: "/v1/models/{model_id}/environments/{env_name}/logs",
      summary: "Gets the replica logs of an environment's deployment (and promotion candidate), newest first",
      auth: "key",
      query: s.logsQuery,
      response: "GetLogsResponseV1",
      handler: (c) =>
        logs.environmentLogs(
          ctx,
          c.principal,
          c.params.model_id,
          c.params.env_name,
          logs.fromQueryString(c.query),
        ),
    }),
    route({
      method: "POST",
      url: "/v1/models/{model_id}/environments/{env_name}/activate",
      summary: "Activates a deployment associated with an environment",
      auth: "key",
      response: "ActivateResponseV1",
      handler: (c) =>
        environments.setEnvironmentActive(ctx, c.principal, c.params.model_id, c.params.env_name, true),
    }),
    route({
      method: "POST",
      url: "/v1/models/{model_id}/environments/{env_name}/deactivate",
      summary: "Deactivates a deployment associated with an environment",
      auth: "key",
      response: "DeactivateResponseV1",
      handler: (c) =>
        environments.setEnvironmentActive(ctx, c.principal, c.params.model_id, c.params.env_name, false),
    }),
  ];
}
