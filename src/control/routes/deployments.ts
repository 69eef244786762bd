// Deployments of a model.

import * as autoscaling from "../autoscaling.ts";
import type { ControlContext } from "../context.ts";
import * as environments from "../environments.ts";
import * as logs from "../logs.ts";
import * as metrics from "../metrics.ts";
import * as models from "../models.ts";
import * as s from "../schemas.ts";
import { type Route, route } from "./route.ts";

export function deploymentsRoutes(ctx: ControlContext): Route[] {
  return [
    route({
      method: "GET",
      url: "/v1/models/{model_id}/deployments",
      summary: "Gets all deployments of a model",
      auth: "key",
      response: "DeploymentsV1",
      handler: (c) => models.listDeployments(ctx, c.principal, c.params.model_id),
    }),
    route({
      method: "POST",
      url: "/v1/models/{model_id}/deployments",
      summary: "Adds a new deployment to a model",
      auth: "key",
      body: s.createDeploymentBody,
      response: "CreatedModelDeploymentV1",
      handler: (c) => models.createDeployment(ctx, c.principal, c.params.model_id, c.body.source),
    }),
    route({
      method: "GET",
      url: "/v1/models/{model_id}/deployments/{deployment_id}",
      summary: "Gets a model's deployment by ID (or `development`, `production`)",
      auth: "key",
      response: "DeploymentV1",
      handler: (c) => models.getDeployment(ctx, c.principal, c.params.model_id, c.params.deployment_id),
    }),
    route({
      method: "PATCH",
      url: "/v1/models/{model_id}/deployments/{deployment_id}",
      summary: "Updates a model's deployment by ID",
      auth: "key",
      body: s.updateDeploymentBody,
      response: "DeploymentV1",
      // A PATCH without a name changes nothing and answers the deployment as it is.
      handler: (c) =>
        c.body.name === undefined || c.body.name === null
          ? models.getDeployment(ctx, c.principal, c.params.model_id, c.params.deployment_id)
          : models.renameDeployment(ctx, c.principal, c.params.model_id, c.params.deployment_id, c.body.name),
    }),
    route({
      method: "DELETE",
      url: "/v1/models/{model_id}/deployments/{deployment_id}",
      summary: "Deletes a model's deployment by ID",
      auth: "key",
      response: "DeploymentTombstoneV1",
      handler: (c) => models.deleteDeployment(ctx, c.principal, c.params.model_id, c.params.deployment_id),
    }),
    route({
      method: "GET",
      url: "/v1/models/{model_id}/deployments/{deployment_id}/config",
      summary: "Gets a deployment's config",
      auth: "key",
      response: "DeploymentConfigResponseV1",
      handler: (c) => models.getDeploymentConfig(ctx, c.principal, c.params.model_id, c.params.deployment_id),
    }),
    route({
      method: "GET",
      url: "/v1/models/{model_id}/deployments/{deployment_id}/logs",
      summary: "Gets a deployment's replica logs, read from the planes that run them (newest first)",
      auth: "key",
      query: s.logsQuery,
      response: "GetLogsResponseV1",
      handler: (c) =>
        logs.deploymentLogs(
          ctx,
          c.principal,
          c.params.model_id,
          c.params.deployment_id,
          logs.fromQueryString(c.query),
        ),
    }),
    // Baseten keeps the POST form (deprecated there) because truss's `push --tail` and `model-logs` send it.
    route({
      method: "POST",
      url: "/v1/models/{model_id}/deployments/{deployment_id}/logs",
      summary: "Gets a deployment's replica logs for the time range in the body (the form truss sends)",
      auth: "key",
      body: s.deploymentLogsBody,
      response: "GetLogsResponseV1",
      handler: (c) =>
        logs.deploymentLogs(ctx, c.principal, c.params.model_id, c.params.deployment_id, c.body ?? {}),
    }),
    route({
      method: "GET",
      url: "/v1/models/{model_id}/deployments/{deployment_id}/metrics",
      summary: "Gets a deployment's metrics: replica counts and its environments' request counts",
      auth: "key",
      query: s.metricsQuery,
      response: "GetDeploymentMetricsResponseV1",
      handler: (c) =>
        metrics.getDeploymentMetrics(ctx, c.principal, c.params.model_id, c.params.deployment_id, c.query),
    }),
    route({
      method: "PATCH",
      url: "/v1/models/{model_id}/deployments/{deployment_id}/autoscaling_settings",
      summary: "Updates a deployment's autoscaling settings (or `development`, `production`)",
      auth: "key",
      body: s.autoscalingUpdate,
      response: "UpdateAutoscalingSettingsResponseV1",
      handler: (c) =>
        autoscaling.updateDeploymentAutoscaling(
          ctx,
          c.principal,
          c.params.model_id,
          c.params.deployment_id,
          c.body,
        ),
    }),
    route({
      method: "POST",
      url: "/v1/models/{model_id}/deployments/{deployment_id}/activate",
      summary: "Activates a deployment",
      auth: "key",
      response: "ActivateResponseV1",
      handler: (c) =>
        models.setDeploymentActive(ctx, c.principal, c.params.model_id, c.params.deployment_id, true),
    }),
    route({
      method: "POST",
      url: "/v1/models/{model_id}/deployments/{deployment_id}/deactivate",
      summary: "Deactivates a deployment",
      auth: "key",
      response: "DeactivateResponseV1",
      handler: (c) =>
        models.setDeploymentActive(ctx, c.principal, c.params.model_id, c.params.deployment_id, false),
    }),
    route({
      method: "POST",
      url: "/v1/models/{model_id}/deployments/{deployment_id}/retry",
      summary: "Retries a failed deployment",
      auth: "key",
      response: "RetryDeploymentResponseV1",
      handler: (c) => models.retryDeployment(ctx, c.principal, c.params.model_id, c.params.deployment_id),
    }),
    route({
      method: "POST",
      url: "/v1/models/{model_id}/deployments/{deployment_id}/promote",
      summary: "Promotes a deployment to production",
      auth: "key",
      body: s.promoteBody,
      response: "DeploymentV1",
      alternative: { name: "PromotionDryRunV1", schema: s.promotionDryRunSchema, when: "dry_run: true" },
      handler: (c) =>
        (c.body?.dry_run === true ? environments.promotionDryRun : environments.promote)(
          ctx,
          c.principal,
          c.params.model_id,
          "production",
          c.params.deployment_id,
          c.body?.scale_down_previous_production ?? true,
        ),
    }),
  ];
}
