// Models.

import type { ControlContext } from "../context.ts";
import * as models from "../models.ts";
import * as s from "../schemas.ts";
import { type Route, route } from "./route.ts";

export function modelsRoutes(ctx: ControlContext): Route[] {
  return [
    route({
      method: "GET",
      url: "/v1/models",
      summary: "Gets all models",
      auth: "key",
      query: s.modelsQuery,
      response: "ModelsV1",
      handler: (c) => models.listModels(ctx, c.principal, null, c.query.name ?? null),
    }),
    route({
      method: "POST",
      url: "/v1/models",
      summary: "Creates a new model from a source",
      auth: "key",
      body: s.createModelBody,
      response: "CreatedModelDeploymentV1",
      handler: (c) => models.createModel(ctx, c.principal, null, c.body.source),
    }),
    route({
      method: "GET",
      url: "/v1/teams/{team_id}/models",
      summary: "Gets all models",
      auth: "key",
      query: s.modelsQuery,
      response: "ModelsV1",
      handler: (c) => models.listModels(ctx, c.principal, c.params.team_id, c.query.name ?? null),
    }),
    route({
      method: "POST",
      url: "/v1/teams/{team_id}/models",
      summary: "Creates a new model from a source",
      auth: "key",
      body: s.createModelBody,
      response: "CreatedModelDeploymentV1",
      handler: (c) => models.createModel(ctx, c.principal, c.params.team_id, c.body.source),
    }),
    route({
      method: "GET",
      url: "/v1/models/{model_id}",
      summary: "Gets a model by ID",
      auth: "key",
      response: "ModelV1",
      handler: (c) => models.getModel(ctx, c.principal, c.params.model_id),
    }),
    route({
      method: "DELETE",
      url: "/v1/models/{model_id}",
      summary: "Deletes a model by ID",
      auth: "key",
      response: "ModelTombstoneV1",
      handler: (c) => models.deleteModel(ctx, c.principal, c.params.model_id),
    }),
  ];
}
