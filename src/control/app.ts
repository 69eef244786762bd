// Builds the control plane's HTTP app (fastify): auth, schema validation, the one error mapping, and the
// route table from which the OpenAPI document at /v1/spec is generated. Building is separate from
// listening so tests can call the app in-process.

import type { Readable } from "node:stream";
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from "fastify";
import type { Principal } from "../core/access.ts";
import { errorBody, MeridianError } from "../core/errors.ts";
import type { PlaneReport } from "../core/snapshot.ts";
import type { PlaneRow } from "../store/schema.ts";
import * as accounts from "./accounts.ts";
import * as admin from "./admin.ts";
import type { ControlContext } from "./context.ts";
import * as environments from "./environments.ts";
import * as groups from "./groups.ts";
import { keyFromAuthorization, resolvePrincipal } from "./identity.ts";
import * as internal from "./internal.ts";
import * as logs from "./logs.ts";
import * as models from "./models.ts";
import { openApiDocument, type RouteDoc } from "./openapi.ts";
import { registerS3Endpoint } from "./s3/endpoint.ts";
import * as s from "./schemas.ts";

export interface ControlAppOptions {
  /** Largest management request body (JSON). */
  bodyLimit?: number;
  /** Largest model package upload. */
  uploadLimit?: number;
  /** Longest long-poll wait a plane may ask for, in seconds. */
  maxWaitSeconds?: number;
  logRequests?: boolean;
}

/** `own_plane`: a plane credential for the plane named by the `{name}` path parameter. */
type Auth = "key" | "plane" | "own_plane";
type Params = Record<string, string>;
type Query = Record<string, string | undefined>;

interface Call {
  params: Params;
  query: Query;
  body: unknown;
  principal: Principal;
  plane: PlaneRow;
  request: FastifyRequest;
  reply: FastifyReply;
}

interface Route extends RouteDoc {
  auth: Auth;
  handler(call: Call): Promise<unknown>;
}

export async function buildControlApp(
  ctx: ControlContext,
  options: ControlAppOptions = {},
): Promise<FastifyInstance> {
  const uploadLimit = options.uploadLimit ?? 2 * 1024 * 1024 * 1024;
  const maxWait = options.maxWaitSeconds ?? 30;
  const app = Fastify({
    logger: options.logRequests ? { level: "info" } : false,
    bodyLimit: options.bodyLimit ?? 1024 * 1024,
    // Refuse unknown fields and wrong types instead of silently dropping or coercing them.
    ajv: {
      customOptions: { removeAdditional: false, coerceTypes: false, useDefaults: true, allErrors: false },
    },
    return503OnClosing: true,
  });

  app.setErrorHandler((err, _request, reply) => {
    if (err instanceof MeridianError) return reply.status(err.status).send(err.toBody());
    const e = err as { code?: string; validation?: unknown; statusCode?: number; message: string };
    if (e.validation) {
      return reply.status(400).send(errorBody("invalid_request", e.message, { validation: e.validation }));
    }
    switch (e.code) {
      case "FST_ERR_CTP_INVALID_JSON_BODY":
      case "FST_ERR_CTP_EMPTY_JSON_BODY":
        return reply.status(400).send(errorBody("invalid_json", e.message));
      case "FST_ERR_CTP_BODY_TOO_LARGE":
        return reply.status(413).send(errorBody("payload_too_large"));
      case "FST_ERR_CTP_INVALID_MEDIA_TYPE":
        return reply.status(415).send(errorBody("unsupported_media_type", e.message));
    }
    if (e instanceof SyntaxError || e.statusCode === 400)
      return reply.status(400).send(errorBody("invalid_json", e.message));
    ctx.logger.error({ err }, "request failed");
    return reply.status(500).send(errorBody("internal_error"));
  });
  app.setNotFoundHandler((request, reply) => {
    reply
      .status(404)
      .send(errorBody("route_not_found", `No route ${request.method} ${request.url.split("?")[0]}.`));
  });

  // Every route but the upload takes JSON only. Fastify's default text/plain parser would hand a string to
  // the schema (a misleading 400); without it, text is a 415 like any other type.
  app.removeContentTypeParser("text/plain");

  const routes = controlRoutes(ctx, uploadLimit, maxWait);
  // Who is calling is settled in onRequest, before the body is read or validated: an unauthenticated
  // caller gets 401 and learns nothing about a route's schema.
  const callers = new WeakMap<FastifyRequest, { principal?: Principal; plane?: PlaneRow }>();
  const define = (instance: FastifyInstance, route: Route) =>
    instance.route({
      method: route.method,
      url: route.url.replace(/\{(\w+)\}/g, ":$1"),
      schema: {
        ...(route.body ? { body: route.body } : {}),
        ...(route.query ? { querystring: route.query } : {}),
      },
      ...(route.raw ? { bodyLimit: uploadLimit } : {}),
      onRequest: async (request) => {
        const token = keyFromAuthorization(request.headers.authorization);
        if (route.auth === "key") {
          if (token === null)
            throw new MeridianError("unauthorized", "Send an API key: 'Authorization: Api-Key <key>'.");
          const principal = await resolvePrincipal(ctx.store.db, token);
          if (!principal) throw new MeridianError("unauthorized", "Unknown API key.");
          callers.set(request, { principal });
        } else if (route.auth === "plane") {
          callers.set(request, { plane: await internal.authenticatePlane(ctx, token) });
        } else {
          const name = (request.params as Params)["name"]!;
          callers.set(request, { plane: await internal.authenticatePlaneNamed(ctx, token, name) });
        }
      },
      handler: async (request, reply) => {
        const call = {
          params: request.params as Params,
          query: request.query as Query,
          body: request.body,
          request,
          reply,
          ...callers.get(request),
        } as Call;
        const result = await route.handler(call);
        if (reply.sent) return reply;
        return result ?? {};
      },
    });
  for (const route of routes.filter((r) => !r.raw)) define(app, route);
  // Model packages are uploaded raw, and only there: in their own context, so a JSON route answers a
  // gzip body with 415 and the upload route answers JSON with 415.
  await app.register(async (scope) => {
    scope.removeAllContentTypeParsers();
    scope.addContentTypeParser(
      ["application/octet-stream", "application/gzip", "application/x-gzip", "application/x-tar"],
      (_req, payload, done) => done(null, payload),
    );
    for (const route of routes.filter((r) => r.raw)) define(scope, route);
  });
  // The S3-compatible upload endpoint for the credentials prepare_model_upload issues: `/{bucket}/{key}`
  // signed with SigV4; any other request under such a path falls through to the not-found answer.
  await registerS3Endpoint(app, ctx, { uploadLimit });
  const spec = openApiDocument(routes);
  app.get("/v1/spec", async () => spec);
  app.get("/healthz", async () => ({ ok: true, revision: ctx.feed.revision() }));
  // What a client needs to build endpoint URLs; public, like the OpenAPI document.
  app.get("/v1/info", async () => ({ product: "meridian", domain: ctx.domain }));
  return app;
}

const teamOf = (c: Call) => c.params["team_id"] ?? null;

function controlRoutes(ctx: ControlContext, uploadLimit: number, maxWait: number): Route[] {
  const key = "key" as const;
  const r = (route: Route) => route;
  return [
    // —— identity ——
    r({
      method: "GET",
      url: "/v1/teams",
      summary: "Lists all teams",
      auth: key,
      response: "TeamsV1",
      handler: (c) => accounts.listTeams(ctx, c.principal),
    }),
    r({
      method: "GET",
      url: "/v1/teams/{team_id}",
      summary: "Gets a team by ID",
      auth: key,
      response: "TeamV1",
      handler: (c) => accounts.getTeam(ctx, c.principal, c.params["team_id"]!),
    }),
    r({
      method: "GET",
      url: "/v1/users",
      summary: "Lists users in the workspace",
      auth: key,
      response: "UsersResponseV1",
      handler: (c) => accounts.listUsers(ctx, c.principal),
    }),
    r({
      method: "GET",
      url: "/v1/users/me",
      summary: "Gets the authenticated user",
      auth: key,
      response: "UserInfoV1",
      handler: (c) => accounts.me(ctx, c.principal),
    }),
    r({
      method: "GET",
      url: "/v1/users/{user_id}",
      summary: "Gets a user by ID",
      auth: key,
      response: "UserInfoV1",
      handler: (c) => accounts.getUser(ctx, c.principal, c.params["user_id"]!),
    }),
    r({
      method: "GET",
      url: "/v1/api_keys",
      summary: "Lists API keys (metadata only, no plain text keys)",
      auth: key,
      response: "APIKeysV1",
      handler: (c) => accounts.listApiKeys(ctx, c.principal),
    }),
    r({
      method: "POST",
      url: "/v1/api_keys",
      summary: "Creates an API key",
      auth: key,
      body: s.createApiKeyBody,
      response: "APIKeyV1",
      handler: (c) => accounts.createApiKey(ctx, c.principal, null, c.body as accounts.NewApiKey),
    }),
    r({
      method: "POST",
      url: "/v1/teams/{team_id}/api_keys",
      summary: "Creates a team API key",
      auth: key,
      body: s.createApiKeyBody,
      response: "APIKeyV1",
      handler: (c) => accounts.createApiKey(ctx, c.principal, teamOf(c), c.body as accounts.NewApiKey),
    }),
    r({
      method: "DELETE",
      url: "/v1/api_keys/{api_key_prefix}",
      summary: "Deletes an API key by prefix",
      auth: key,
      response: "APIKeyTombstoneV1",
      handler: (c) => accounts.deleteApiKey(ctx, c.principal, c.params["api_key_prefix"]!),
    }),

    // —— regions ——
    r({
      method: "GET",
      url: "/v1/regions",
      summary: "Lists regions available to the organization",
      auth: key,
      response: "RegionsV1",
      handler: (c) => admin.listRegions(ctx, c.principal, null),
    }),
    r({
      method: "GET",
      url: "/v1/teams/{team_id}/regions",
      summary: "Lists regions available to a team",
      auth: key,
      response: "RegionsV1",
      handler: (c) => admin.listRegions(ctx, c.principal, teamOf(c)),
    }),

    // —— uploads ——
    r({
      method: "POST",
      url: "/v1/prepare_model_upload",
      summary: "Validates a model push payload and issues upload credentials",
      auth: key,
      body: s.prepareUploadBody,
      handler: (c) => models.prepareUpload(ctx, c.principal, c.body as models.PrepareUploadRequest),
    }),
    r({
      method: "PUT",
      url: "/v1/artifacts/*",
      summary: "Uploads a model package (gzipped tar) to its target",
      auth: key,
      raw: true,
      meridian: true,
      handler: (c) => models.receiveUpload(ctx, c.principal, c.params["*"]!, c.body as Readable, uploadLimit),
    }),

    // —— models ——
    r({
      method: "GET",
      url: "/v1/models",
      summary: "Gets all models",
      auth: key,
      query: s.modelsQuery,
      response: "ModelsV1",
      handler: (c) => models.listModels(ctx, c.principal, null, c.query["name"] ?? null),
    }),
    r({
      method: "POST",
      url: "/v1/models",
      summary: "Creates a new model from a source",
      auth: key,
      body: s.createModelBody,
      response: "CreatedModelDeploymentV1",
      handler: (c) =>
        models.createModel(
          ctx,
          c.principal,
          null,
          (c.body as { source: Parameters<typeof models.createModel>[3] }).source,
        ),
    }),
    r({
      method: "GET",
      url: "/v1/teams/{team_id}/models",
      summary: "Gets all models",
      auth: key,
      query: s.modelsQuery,
      response: "ModelsV1",
      handler: (c) => models.listModels(ctx, c.principal, teamOf(c), c.query["name"] ?? null),
    }),
    r({
      method: "POST",
      url: "/v1/teams/{team_id}/models",
      summary: "Creates a new model from a source",
      auth: key,
      body: s.createModelBody,
      response: "CreatedModelDeploymentV1",
      handler: (c) =>
        models.createModel(
          ctx,
          c.principal,
          teamOf(c),
          (c.body as { source: Parameters<typeof models.createModel>[3] }).source,
        ),
    }),
    r({
      method: "GET",
      url: "/v1/models/{model_id}",
      summary: "Gets a model by ID",
      auth: key,
      response: "ModelV1",
      handler: (c) => models.getModel(ctx, c.principal, c.params["model_id"]!),
    }),
    r({
      method: "DELETE",
      url: "/v1/models/{model_id}",
      summary: "Deletes a model by ID",
      auth: key,
      response: "ModelTombstoneV1",
      handler: (c) => models.deleteModel(ctx, c.principal, c.params["model_id"]!),
    }),

    // —— deployments ——
    r({
      method: "GET",
      url: "/v1/models/{model_id}/deployments",
      summary: "Gets all deployments of a model",
      auth: key,
      response: "DeploymentsV1",
      handler: (c) => models.listDeployments(ctx, c.principal, c.params["model_id"]!),
    }),
    r({
      method: "POST",
      url: "/v1/models/{model_id}/deployments",
      summary: "Adds a new deployment to a model",
      auth: key,
      body: s.createDeploymentBody,
      response: "CreatedModelDeploymentV1",
      handler: (c) =>
        models.createDeployment(
          ctx,
          c.principal,
          c.params["model_id"]!,
          (c.body as { source: Parameters<typeof models.createDeployment>[3] }).source,
        ),
    }),
    r({
      method: "GET",
      url: "/v1/models/{model_id}/deployments/{deployment_id}",
      summary: "Gets a model's deployment by ID (or `development`, `production`)",
      auth: key,
      response: "DeploymentV1",
      handler: (c) =>
        models.getDeployment(ctx, c.principal, c.params["model_id"]!, c.params["deployment_id"]!),
    }),
    r({
      method: "PATCH",
      url: "/v1/models/{model_id}/deployments/{deployment_id}",
      summary: "Updates a model's deployment by ID",
      auth: key,
      body: s.updateDeploymentBody,
      response: "DeploymentV1",
      handler: (c) => renameOrGet(ctx, c),
    }),
    r({
      method: "DELETE",
      url: "/v1/models/{model_id}/deployments/{deployment_id}",
      summary: "Deletes a model's deployment by ID",
      auth: key,
      response: "DeploymentTombstoneV1",
      handler: (c) =>
        models.deleteDeployment(ctx, c.principal, c.params["model_id"]!, c.params["deployment_id"]!),
    }),
    r({
      method: "GET",
      url: "/v1/models/{model_id}/deployments/{deployment_id}/config",
      summary: "Gets a deployment's config",
      auth: key,
      response: "DeploymentConfigResponseV1",
      handler: (c) =>
        models.getDeploymentConfig(ctx, c.principal, c.params["model_id"]!, c.params["deployment_id"]!),
    }),
    r({
      method: "GET",
      url: "/v1/models/{model_id}/deployments/{deployment_id}/logs",
      summary: "Reads a deployment's replica logs from the planes that run them (newest last)",
      auth: key,
      query: s.logsQuery,
      meridian: true,
      handler: (c) =>
        logs.deploymentLogs(
          ctx,
          c.principal,
          c.params["model_id"]!,
          c.params["deployment_id"]!,
          c.query["limit"],
        ),
    }),
    r({
      method: "POST",
      url: "/v1/models/{model_id}/deployments/{deployment_id}/activate",
      summary: "Activates a deployment",
      auth: key,
      response: "ActivateResponseV1",
      handler: (c) =>
        models.setDeploymentActive(ctx, c.principal, c.params["model_id"]!, c.params["deployment_id"]!, true),
    }),
    r({
      method: "POST",
      url: "/v1/models/{model_id}/deployments/{deployment_id}/deactivate",
      summary: "Deactivates a deployment",
      auth: key,
      response: "DeactivateResponseV1",
      handler: (c) =>
        models.setDeploymentActive(
          ctx,
          c.principal,
          c.params["model_id"]!,
          c.params["deployment_id"]!,
          false,
        ),
    }),
    r({
      method: "POST",
      url: "/v1/models/{model_id}/deployments/{deployment_id}/retry",
      summary: "Retries a failed deployment",
      auth: key,
      response: "RetryDeploymentResponseV1",
      handler: (c) =>
        models.retryDeployment(ctx, c.principal, c.params["model_id"]!, c.params["deployment_id"]!),
    }),
    r({
      method: "POST",
      url: "/v1/models/{model_id}/deployments/{deployment_id}/promote",
      summary: "Promotes a deployment to production",
      auth: key,
      body: s.promoteBody,
      response: "DeploymentV1",
      handler: (c) =>
        environments.promote(
          ctx,
          c.principal,
          c.params["model_id"]!,
          "production",
          c.params["deployment_id"]!,
          ((c.body ?? {}) as { scale_down_previous_production?: boolean }).scale_down_previous_production ??
            true,
        ),
    }),

    // —— environments ——
    r({
      method: "GET",
      url: "/v1/models/{model_id}/environments",
      summary: "Gets all environments",
      auth: key,
      response: "EnvironmentsV1",
      handler: (c) => environments.listEnvironments(ctx, c.principal, c.params["model_id"]!),
    }),
    r({
      method: "POST",
      url: "/v1/models/{model_id}/environments",
      summary: "Creates an environment",
      auth: key,
      body: s.createEnvironmentBody,
      response: "EnvironmentV1",
      handler: (c) =>
        environments.createEnvironment(ctx, c.principal, c.params["model_id"]!, c.body as { name: string }),
    }),
    r({
      method: "GET",
      url: "/v1/models/{model_id}/environments/{env_name}",
      summary: "Gets an environment's details",
      auth: key,
      response: "EnvironmentV1",
      handler: (c) =>
        environments.getEnvironment(ctx, c.principal, c.params["model_id"]!, c.params["env_name"]!),
    }),
    r({
      method: "PATCH",
      url: "/v1/models/{model_id}/environments/{env_name}",
      summary: "Updates an environment's settings",
      auth: key,
      body: s.updateEnvironmentBody,
      response: "UpdateEnvironmentResponseV1",
      handler: (c) =>
        environments.updateEnvironment(
          ctx,
          c.principal,
          c.params["model_id"]!,
          c.params["env_name"]!,
          c.body as environments.EnvironmentSettingsUpdate,
        ),
    }),
    r({
      method: "DELETE",
      url: "/v1/models/{model_id}/environments/{env_name}",
      summary: "Deletes an environment",
      auth: key,
      response: "EnvironmentTombstoneV1",
      handler: (c) =>
        environments.deleteEnvironment(ctx, c.principal, c.params["model_id"]!, c.params["env_name"]!),
    }),
    r({
      method: "POST",
      url: "/v1/models/{model_id}/environments/{env_name}/promote",
      summary: "Promotes a deployment to an environment",
      auth: key,
      body: s.promoteToEnvironmentBody,
      response: "DeploymentV1",
      handler: (c) => {
        const b = c.body as { deployment_id: string; scale_down_previous_deployment?: boolean };
        return environments.promote(
          ctx,
          c.principal,
          c.params["model_id"]!,
          c.params["env_name"]!,
          b.deployment_id,
          b.scale_down_previous_deployment ?? true,
        );
      },
    }),
    r({
      method: "POST",
      url: "/v1/models/{model_id}/environments/{env_name}/cancel_promotion",
      summary: "Cancels a promotion to an environment",
      auth: key,
      response: "CancelPromotionResponseV1",
      handler: (c) =>
        environments.cancelPromotion(ctx, c.principal, c.params["model_id"]!, c.params["env_name"]!),
    }),
    r({
      method: "GET",
      url: "/v1/models/{model_id}/environments/{env_name}/logs",
      summary: "Reads the replica logs of an environment's deployment (and promotion candidate), newest last",
      auth: key,
      query: s.logsQuery,
      meridian: true,
      handler: (c) =>
        logs.environmentLogs(
          ctx,
          c.principal,
          c.params["model_id"]!,
          c.params["env_name"]!,
          c.query["limit"],
        ),
    }),
    r({
      method: "POST",
      url: "/v1/models/{model_id}/environments/{env_name}/activate",
      summary: "Activates a deployment associated with an environment",
      auth: key,
      response: "ActivateResponseV1",
      handler: (c) =>
        environments.setEnvironmentActive(
          ctx,
          c.principal,
          c.params["model_id"]!,
          c.params["env_name"]!,
          true,
        ),
    }),
    r({
      method: "POST",
      url: "/v1/models/{model_id}/environments/{env_name}/deactivate",
      summary: "Deactivates a deployment associated with an environment",
      auth: key,
      response: "DeactivateResponseV1",
      handler: (c) =>
        environments.setEnvironmentActive(
          ctx,
          c.principal,
          c.params["model_id"]!,
          c.params["env_name"]!,
          false,
        ),
    }),

    // —— environment groups ——
    r({
      method: "GET",
      url: "/v1/environment_groups",
      summary: "Lists environment groups",
      auth: key,
      response: "EnvironmentGroupsV1",
      handler: (c) => groups.listGroups(ctx, c.principal, null),
    }),
    r({
      method: "GET",
      url: "/v1/environment_groups/{env_name}",
      summary: "Gets an environment group by name",
      auth: key,
      response: "EnvironmentGroupV1",
      handler: (c) => groups.getGroup(ctx, c.principal, null, c.params["env_name"]!),
    }),
    r({
      method: "PATCH",
      url: "/v1/environment_groups/{env_name}",
      summary: "Updates an environment group's restriction settings",
      auth: key,
      body: s.updateGroupBody,
      response: "EnvironmentGroupV1",
      handler: (c) =>
        groups.updateGroup(ctx, c.principal, null, c.params["env_name"]!, c.body as groups.GroupUpdate),
    }),
    r({
      method: "GET",
      url: "/v1/teams/{team_id}/environment_groups",
      summary: "Lists environment groups",
      auth: key,
      response: "EnvironmentGroupsV1",
      handler: (c) => groups.listGroups(ctx, c.principal, teamOf(c)),
    }),
    r({
      method: "GET",
      url: "/v1/teams/{team_id}/environment_groups/{env_name}",
      summary: "Gets an environment group by name",
      auth: key,
      response: "EnvironmentGroupV1",
      handler: (c) => groups.getGroup(ctx, c.principal, teamOf(c), c.params["env_name"]!),
    }),
    r({
      method: "PATCH",
      url: "/v1/teams/{team_id}/environment_groups/{env_name}",
      summary: "Updates an environment group's restriction settings",
      auth: key,
      body: s.updateGroupBody,
      response: "EnvironmentGroupV1",
      handler: (c) =>
        groups.updateGroup(ctx, c.principal, teamOf(c), c.params["env_name"]!, c.body as groups.GroupUpdate),
    }),

    // —— audit ——
    r({
      method: "GET",
      url: "/v1/audit_logs",
      summary: "Lists management audit log entries, newest first",
      auth: key,
      query: s.auditQuery,
      meridian: true,
      handler: (c) => admin.auditLogs(ctx, c.principal, auditQueryOf(c)),
    }),
    r({
      method: "GET",
      url: "/v1/models/{model_id}/audit_logs",
      summary: "Lists a model's audit log entries, newest first",
      auth: key,
      query: s.auditQuery,
      meridian: true,
      handler: (c) =>
        admin.auditLogs(ctx, c.principal, { ...auditQueryOf(c), model_id: c.params["model_id"]! }),
    }),

    // —— operator (org admins) ——
    r({
      method: "POST",
      url: "/v1/admin/regions",
      summary: "Adds a region",
      auth: key,
      body: s.createRegionBody,
      response: "RegionV1",
      meridian: true,
      handler: (c) => admin.createRegion(ctx, c.principal, c.body as { slug: string; display_name: string }),
    }),
    r({
      method: "GET",
      url: "/v1/admin/planes",
      summary: "Lists workload planes with their replica counts",
      auth: key,
      meridian: true,
      handler: (c) => admin.listPlanes(ctx, c.principal),
    }),
    r({
      method: "GET",
      url: "/v1/admin/request_counts",
      summary: "Lists inference request counts reported by the planes (aggregates only; no request records)",
      auth: key,
      meridian: true,
      handler: (c) => admin.requestCounts(ctx, c.principal),
    }),
    r({
      method: "POST",
      url: "/v1/admin/planes",
      summary: "Registers a workload plane and issues its credential (shown once)",
      auth: key,
      body: s.registerPlaneBody,
      meridian: true,
      handler: (c) => admin.registerPlane(ctx, c.principal, c.body as admin.PlaneRegistration),
    }),
    r({
      method: "PATCH",
      url: "/v1/admin/planes/{name}",
      summary: "Updates a workload plane",
      auth: key,
      body: s.updatePlaneBody,
      meridian: true,
      handler: (c) =>
        admin.updatePlane(
          ctx,
          c.principal,
          c.params["name"]!,
          c.body as Parameters<typeof admin.updatePlane>[3],
        ),
    }),
    r({
      method: "DELETE",
      url: "/v1/admin/planes/{name}",
      summary: "Removes a workload plane",
      auth: key,
      meridian: true,
      handler: (c) => admin.deletePlane(ctx, c.principal, c.params["name"]!),
    }),
    r({
      method: "POST",
      url: "/v1/admin/planes/{name}/credential",
      summary: "Issues a plane a new credential (the old one stops working)",
      auth: key,
      meridian: true,
      handler: (c) => admin.rotatePlaneCredential(ctx, c.principal, c.params["name"]!),
    }),
    r({
      method: "POST",
      url: "/v1/admin/teams",
      summary: "Creates a team",
      auth: key,
      body: s.createTeamBody,
      response: "TeamV1",
      meridian: true,
      handler: (c) => accounts.createTeam(ctx, c.principal, (c.body as { name: string }).name),
    }),
    r({
      method: "POST",
      url: "/v1/admin/users",
      summary: "Adds a user; returns their first personal API key (shown once)",
      auth: key,
      body: s.createUserBody,
      meridian: true,
      handler: (c) => accounts.createUser(ctx, c.principal, c.body as accounts.NewUser),
    }),

    // —— planes and DNS (plane credentials) ——
    r({
      method: "GET",
      url: "/v1/internal/planes/{name}/snapshot",
      summary: "Long-polls a plane's snapshot newer than `after`",
      auth: "own_plane",
      query: s.longPollQuery,
      meridian: true,
      handler: (c) => planeSnapshot(ctx, c, maxWait),
    }),
    r({
      method: "POST",
      url: "/v1/internal/planes/{name}/report",
      summary: "Reports a plane's replica states and request counts",
      auth: "own_plane",
      body: s.planeReportBody,
      meridian: true,
      handler: async (c) => {
        await internal.applyReport(ctx, c.plane, c.body as PlaneReport);
        return { revision: ctx.feed.revision() };
      },
    }),
    r({
      method: "GET",
      url: "/v1/internal/artifacts/{sha256}",
      summary: "Downloads a model package by its sha256",
      auth: "plane",
      meridian: true,
      handler: async (c) => {
        const sha256 = c.params["sha256"]!;
        // A plane reads only the packages of replicas placed on it (404 otherwise: nothing leaks).
        if (!(await internal.planeNeedsArtifact(ctx, c.plane.name, sha256))) {
          throw new MeridianError("artifact_not_found");
        }
        const stream = await ctx.artifacts.open(sha256);
        if (!stream) throw new MeridianError("artifact_not_found");
        return c.reply.type("application/gzip").send(stream);
      },
    }),
    r({
      method: "GET",
      url: "/v1/internal/dns/snapshot",
      summary: "Long-polls the DNS snapshot newer than `after`",
      auth: "plane",
      query: s.longPollQuery,
      meridian: true,
      handler: (c) => longPoll(ctx, c, maxWait, () => internal.buildDnsSnapshot(ctx, ctx.store.db)),
    }),
  ];
}

function auditQueryOf(c: Call) {
  return {
    ...(c.query["limit"] ? { limit: Number(c.query["limit"]) } : {}),
    ...(c.query["cursor"] ? { before_id: Number(c.query["cursor"]) } : {}),
  };
}

async function renameOrGet(ctx: ControlContext, c: Call) {
  const name = (c.body as { name?: string | null } | undefined)?.name;
  if (name === undefined || name === null)
    return models.getDeployment(ctx, c.principal, c.params["model_id"]!, c.params["deployment_id"]!);
  return models.renameDeployment(ctx, c.principal, c.params["model_id"]!, c.params["deployment_id"]!, name);
}

async function planeSnapshot(ctx: ControlContext, c: Call, maxWait: number) {
  const plane = c.plane;
  return longPoll(ctx, c, maxWait, async () => {
    const fresh = await ctx.store.db
      .selectFrom("planes")
      .selectAll()
      .where("name", "=", plane.name)
      .executeTakeFirst();
    if (!fresh) throw new MeridianError("plane_not_found");
    return internal.buildPlaneSnapshot(ctx, ctx.store.db, fresh);
  });
}

/** 200 with a snapshot newer than `after`, or 304 once `wait` seconds pass with no change. */
async function longPoll(
  ctx: ControlContext,
  c: Call,
  maxWait: number,
  build: () => Promise<{ revision: number }>,
) {
  const after = Number(c.query["after"] ?? 0);
  const wait = Math.min(Number(c.query["wait"] ?? maxWait), maxWait);
  if (ctx.feed.revision() <= after && wait > 0) {
    const gone = new AbortController();
    // The response's "close" before it was written means the plane went away: stop waiting for it.
    const onClose = () => gone.abort();
    c.reply.raw.once("close", onClose);
    await ctx.feed.wait(after, wait * 1000, gone.signal);
    c.reply.raw.off("close", onClose);
    if (gone.signal.aborted) return c.reply.status(204).send();
  }
  const snapshot = await build();
  if (snapshot.revision <= after) return c.reply.status(304).send();
  return snapshot;
}
