// The OpenAPI document served at /v1/spec, generated from the route table: request bodies are the schemas
// the routes validate with; responses name the reference's component schemas (a copy of Baseten's
// management API subset ships in ./reference/). Meridian's own routes are tagged `meridian`.

import { readFileSync } from "node:fs";

export interface RouteDoc {
  method: "GET" | "POST" | "PUT" | "PATCH" | "DELETE";
  url: string;
  summary: string;
  body?: object;
  query?: { properties: Record<string, object> };
  /** The reference component schema of the 200 response. */
  response?: string;
  /**
   * A Meridian schema the 200 response takes instead of `response` when the request asks for it (`when`
   * names the body field), published as a component under `name`.
   */
  alternative?: { name: string; schema: object; when: string };
  /** A route Meridian adds to the reference's API. */
  meridian?: boolean;
  /** The body is a raw byte stream, not JSON. */
  raw?: boolean;
}

const ERROR_RESPONSE = {
  type: "object",
  required: ["error", "error_code", "detail"],
  properties: { error: { type: "string" }, error_code: { type: "string" }, detail: {} },
};

export function openApiDocument(routes: readonly RouteDoc[]) {
  const reference = JSON.parse(
    readFileSync(new URL("./reference/baseten-management-api.subset.json", import.meta.url), "utf8"),
  ) as { components: { schemas: Record<string, unknown>; securitySchemes?: unknown } };
  const paths: Record<string, Record<string, unknown>> = {};
  const meridianSchemas: Record<string, object> = {};
  for (const route of routes) {
    const url = route.url.replace("/*", "/{key}");
    const params = [...url.matchAll(/\{(\w+)\}/g)].map((m) => ({
      name: m[1],
      in: "path",
      required: true,
      schema: { type: "string" },
    }));
    const query = Object.entries(route.query?.properties ?? {}).map(([name, schema]) => ({
      name,
      in: "query",
      required: false,
      schema,
    }));
    paths[url] ??= {};
    paths[url][route.method.toLowerCase()] = {
      summary: route.summary,
      ...(route.meridian ? { tags: ["meridian"] } : {}),
      parameters: [...params, ...query],
      ...(route.body
        ? { requestBody: { required: true, content: { "application/json": { schema: route.body } } } }
        : {}),
      ...(route.raw
        ? {
            requestBody: {
              required: true,
              content: { "application/gzip": { schema: { type: "string", format: "binary" } } },
            },
          }
        : {}),
      responses: {
        "200": {
          description: route.alternative
            ? `OK: ${route.response}; with \`${route.alternative.when}\`, ${route.alternative.name} (Meridian's)`
            : "OK",
          content: {
            "application/json": {
              schema: route.alternative
                ? {
                    oneOf: [
                      { $ref: `#/components/schemas/${route.response}` },
                      { $ref: `#/components/schemas/${route.alternative.name}` },
                    ],
                  }
                : route.response
                  ? { $ref: `#/components/schemas/${route.response}` }
                  : { type: "object" },
            },
          },
        },
        default: {
          description: "Error",
          content: { "application/json": { schema: { $ref: "#/components/schemas/ErrorResponse" } } },
        },
      },
    };
    if (route.alternative) meridianSchemas[route.alternative.name] = route.alternative.schema;
  }
  return {
    openapi: "3.1.0",
    info: {
      title: "Meridian management API",
      version: "1",
      description:
        "Baseten's management API for the parts Meridian covers, plus Meridian's operator API (/v1/admin) and the plane wire contract (/v1/internal). Authenticate with 'Authorization: Api-Key <key>' or 'Bearer <key>'.",
    },
    paths,
    components: {
      schemas: { ...reference.components.schemas, ...meridianSchemas, ErrorResponse: ERROR_RESPONSE },
      securitySchemes: reference.components.securitySchemes ?? {},
    },
  };
}
