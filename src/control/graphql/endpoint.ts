// `POST /graphql/` (and `/graphql`): the endpoint `truss push` and `truss predict` talk to. The caller is
// authenticated before the body is read (401 with the JSON error body, as on every route); a GraphQL
// request then answers 200 with `data` and/or `errors`, each error carrying the catalog's code and the
// message in `extensions.description`, which the CLI shows. The document is bounded (./limits.ts) before
// it is validated, and introspection is refused (docs/truss-cli.md#limits).

import type { FastifyInstance, FastifyRequest } from "fastify";
import {
  type DocumentNode,
  type ExecutionResult,
  execute,
  type GraphQLError,
  type GraphQLFormattedError,
  NoSchemaIntrospectionCustomRule,
  parse,
  specifiedRules,
  validate,
} from "graphql";
import type { Principal } from "../../core/access.ts";
import { ERRORS, type ErrorCode, MeridianError } from "../../core/errors.ts";
import { illFormedInput } from "../../lib/unicode.ts";
import type { ControlContext } from "../context.ts";
import { keyFromAuthorization, resolvePrincipal } from "../identity.ts";
import { checkDocument, checkTokens, DEFAULT_LIMITS } from "./limits.ts";
import { RequestScope } from "./operations.ts";
import { type GraphqlContext, trussSchema } from "./schema.ts";

export const GRAPHQL_PATHS = ["/graphql/", "/graphql"] as const;

/** GraphQL over HTTP's JSON request body (graphql-over-http §5.1). */
const requestBody = {
  type: "object",
  additionalProperties: false,
  required: ["query"],
  properties: {
    query: { type: "string", minLength: 1 },
    variables: { anyOf: [{ type: "object" }, { type: "null" }] },
    operationName: { anyOf: [{ type: "string" }, { type: "null" }] },
    extensions: { anyOf: [{ type: "object" }, { type: "null" }] },
  },
} as const;

interface RequestBody {
  query: string;
  variables?: Record<string, unknown> | null;
  operationName?: string | null;
}

const MAX_ERRORS = 20;

/** A GraphQL error of the catalog's code: `description` is what the CLI prints, `status` the REST status. */
function formatted(
  code: ErrorCode,
  message: string,
  detail: unknown,
  from?: GraphQLError,
): GraphQLFormattedError {
  return {
    message,
    ...(from?.locations ? { locations: from.locations } : {}),
    ...(from?.path ? { path: from.path } : {}),
    extensions: {
      code,
      description: message,
      status: ERRORS[code].status,
      ...(detail === null || detail === undefined ? {} : { detail }),
    },
  };
}

/** A refusal of the whole request (syntax, limits, validation, variables): no `data`, as the spec says. */
function requestError(code: ErrorCode, errors: readonly GraphQLError[] | string) {
  if (typeof errors === "string") return { errors: [formatted(code, errors, null)] };
  return { errors: errors.slice(0, MAX_ERRORS).map((e) => formatted(code, e.message, null, e)) };
}

export async function registerGraphqlEndpoint(app: FastifyInstance, ctx: ControlContext): Promise<void> {
  const schema = trussSchema();
  const rules = [...specifiedRules, NoSchemaIntrospectionCustomRule];
  const callers = new WeakMap<FastifyRequest, Principal>();

  const answer = async (principal: Principal, body: RequestBody) => {
    const tokens = checkTokens(body.query);
    if (!tokens.ok) return requestError("query_too_complex", tokens.message);
    let document: DocumentNode;
    try {
      document = parse(body.query, { noLocation: false, maxTokens: DEFAULT_LIMITS.maxTokens });
    } catch (err) {
      return requestError("invalid_query", [err as GraphQLError]);
    }
    const bounded = checkDocument(document);
    if (!bounded.ok) return requestError("query_too_complex", bounded.message);
    const invalid = validate(schema, document, rules, { maxErrors: MAX_ERRORS });
    if (invalid.length > 0) return requestError("invalid_query", invalid);

    const context: GraphqlContext = { scope: new RequestScope(ctx, principal), extras: new Map() };
    const result: ExecutionResult = await execute({
      schema,
      document,
      contextValue: context,
      variableValues: body.variables ?? {},
      operationName: body.operationName ?? null,
    });
    const data = result.data as Record<string, unknown> | null | undefined;
    // Keys the CLI hands to boto3 without selecting them (see GraphqlContext.extras).
    for (const [key, extra] of context.extras) {
      const object = data?.[key];
      if (typeof object === "object" && object !== null) Object.assign(object, extra);
    }
    const errors = result.errors?.slice(0, MAX_ERRORS).map((e) => {
      const original = e.originalError;
      if (original instanceof MeridianError)
        return formatted(original.code, original.message, original.detail, e);
      // Without a path, graphql-js refused the request before running it: variables, the operation name.
      if (e.path === undefined) return formatted("invalid_query", e.message, null, e);
      ctx.logger.error({ err: original ?? e, path: e.path }, "graphql field failed");
      return formatted("internal_error", ERRORS.internal_error.message, null, e);
    });
    return { ...(errors ? { errors } : {}), ...(data !== undefined ? { data } : {}) };
  };

  for (const url of GRAPHQL_PATHS) {
    app.route<{ Body: RequestBody }>({
      method: "POST",
      url,
      schema: { body: requestBody },
      // Settled before the body is read or validated: a stranger learns nothing about the schema.
      onRequest: async (request) => {
        const token = keyFromAuthorization(request.headers.authorization);
        if (token === null)
          throw new MeridianError("unauthorized", "Send an API key: 'Authorization: Api-Key <key>'.");
        const principal = await resolvePrincipal(ctx.store.db, token);
        if (!principal) throw new MeridianError("unauthorized", "Unknown API key.");
        callers.set(request, principal);
      },
      // A lone surrogate in the query or the variables (src/lib/unicode.ts): refused as on every route.
      preValidation: async (request) => {
        const bad = illFormedInput(request.body);
        if (bad !== null) throw new MeridianError("invalid_request", bad.message, { field: bad.field });
      },
      handler: async (request) => answer(callers.get(request)!, request.body),
    });
  }
}
