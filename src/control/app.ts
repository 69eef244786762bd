// Builds the control plane's HTTP app (fastify): auth, schema validation, the one error mapping, and the
// route table from which the OpenAPI document at /v1/spec is generated. Building is separate from
// listening so tests can call the app in-process.

import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from "fastify";
import type { Principal } from "../core/access.ts";
import { errorBody, MeridianError } from "../core/errors.ts";
import { illFormedInput } from "../lib/unicode.ts";
import type { PlaneRow } from "../store/schema.ts";
import { isStoreUnavailable } from "../store/store.ts";
import type { ControlContext } from "./context.ts";
import { keyDirectoryDocument } from "./evidence.ts";
import { registerGraphqlEndpoint } from "./graphql/endpoint.ts";
import { keyFromAuthorization, resolvePrincipal } from "./identity.ts";
import * as internal from "./internal.ts";
import { openApiDocument } from "./openapi.ts";
import { controlRoutes } from "./routes/index.ts";
import type { ErasedCall, Route } from "./routes/route.ts";
import { registerS3Endpoint } from "./s3/endpoint.ts";

export interface ControlAppOptions {
  /** Largest management request body (JSON). */
  bodyLimit?: number;
  /** Largest model package upload. */
  uploadLimit?: number;
  /** Longest long-poll wait a plane may ask for, in seconds. */
  maxWaitSeconds?: number;
  logRequests?: boolean;
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
    // Errors fastify raises before any route runs get the JSON error body too (both found by the api fuzz
    // target, answered with fastify's own bodies, which have no `error_code`): a path whose percent-encoding
    // does not decode (`/v1/teams/%zz`, FST_ERR_BAD_URL) and a path parameter over the router's 100
    // characters (FST_ERR_MAX_PARAM_LENGTH; no id or name of the API is that long).
    frameworkErrors: (err, _request, raw) => {
      // fastify types this reply by the route generics, which no route has here.
      const reply = raw as unknown as FastifyReply;
      if (err.code === "FST_ERR_BAD_URL") {
        return reply
          .status(400)
          .send(
            errorBody("invalid_request", "The request's path is not valid percent-encoding (RFC 3986 §2.1)."),
          );
      }
      if (err.code === "FST_ERR_MAX_PARAM_LENGTH") {
        return reply
          .status(400)
          .send(errorBody("invalid_request", "A path segment of the request is longer than 100 characters."));
      }
      ctx.logger.error({ err }, "request failed before routing");
      return reply.status(500).send(errorBody("internal_error"));
    },
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
    // The database gone (PostgreSQL stopped or cut off) is the installation's fault, not the caller's:
    // a typed 503 the caller may retry (docs/errors.md says what a write lost at its commit means).
    if (isStoreUnavailable(err)) {
      ctx.logger.warn({ err: e.message }, "request failed: database unreachable");
      return reply.status(503).send(errorBody("store_unavailable"));
    }
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

  const routes = controlRoutes(ctx, { uploadLimit, maxWaitSeconds: maxWait });
  // Who is calling is settled in onRequest, before the body is read or validated: an unauthenticated
  // caller gets 401 and learns nothing about a route's schema.
  const callers = new WeakMap<FastifyRequest, { principal?: Principal; plane?: PlaneRow }>();
  const define = (instance: FastifyInstance, route: Route) =>
    instance.route({
      method: route.method,
      url: route.url.replace(/\{(\w+)\}/g, ":$1"),
      schema: {
        params: route.params,
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
          const name = (request.params as { name: string }).name;
          callers.set(request, { plane: await internal.authenticatePlaneNamed(ctx, token, name) });
        }
      },
      // After the caller is known, before the schema: a string that is not well-formed Unicode (JSON can
      // spell a lone surrogate, `"\ud800"`) would be stored other than sent (src/lib/unicode.ts).
      preValidation: async (request) => {
        if (route.raw) return;
        const bad = illFormedInput(request.body, request.query);
        if (bad !== null) throw new MeridianError("invalid_request", bad.message, { field: bad.field });
      },
      handler: async (request, reply) => {
        const call: ErasedCall = {
          params: request.params,
          query: request.query ?? {},
          body: request.body,
          request,
          reply,
          ...callers.get(request),
        };
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
  // The GraphQL endpoint `truss push` and `truss predict` talk to (docs/truss-cli.md); not in the spec.
  await registerGraphqlEndpoint(app, ctx);
  const spec = openApiDocument(routes);
  app.get("/v1/spec", async () => spec);
  app.get("/healthz", async () => ({ ok: true, revision: ctx.feed.revision() }));
  // The control plane's own metrics (issue 12; src/control/control-metrics.ts), for the operator's
  // Prometheus: an org admin's key, as `Authorization: Bearer <key>`. Not in the spec, like /healthz.
  app.get("/metrics", async (request, reply) => {
    const key = keyFromAuthorization(request.headers.authorization);
    const principal = key === null ? null : await resolvePrincipal(ctx.store.db, key);
    if (principal === null) throw new MeridianError("unauthorized");
    if (!principal.is_org_admin) {
      throw new MeridianError("forbidden", "The control plane's /metrics is for org admins.");
    }
    if (ctx.metrics === undefined) throw new MeridianError("route_not_found");
    reply.header("content-type", ctx.metrics.registry.contentType);
    return ctx.metrics.registry.metrics();
  });
  // What a client needs to build endpoint URLs; public, like the OpenAPI document.
  app.get("/v1/info", async () => ({ product: "meridian", domain: ctx.domain }));
  // The key directory (issue 14): public keys, planes and regions, read by auditors who hold no API key.
  app.get("/v1/keys", async (_request, reply) => {
    reply.header("cache-control", "no-cache");
    return keyDirectoryDocument(ctx);
  });
  return app;
}
