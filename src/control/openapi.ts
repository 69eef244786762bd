// The OpenAPI document served at /v1/spec, generated from the route table: request bodies are the schemas
// the routes validate with; responses name component schemas of Baseten's published management API (the
// published document, reformatted, ships in ./reference/baseten-management-api.json), with the fields
// Meridian adds to them marked `x-meridian`. A route Baseten's API lacks is Meridian's, tagged `meridian`.

import { readFileSync } from "node:fs";
import { EGRESS_POLICIES, STANDARD_ENDPOINT_POLICIES } from "../core/domain.ts";

export interface RouteDoc {
  method: "GET" | "POST" | "PUT" | "PATCH" | "DELETE";
  url: string;
  summary: string;
  body?: object;
  query?: { properties: Record<string, object> };
  /** The component schema of the 200 response; a route of Baseten's API defaults to Baseten's. */
  response?: string;
  /**
   * A Meridian schema the 200 response takes instead of `response` when the request asks for it (`when`
   * names the body field), published as a component under `name`.
   */
  alternative?: { name: string; schema: object; when: string };
  /** A route Meridian adds to the reference's API (also implied when Baseten's API has no such route). */
  meridian?: boolean;
  /** The body is a raw byte stream, not JSON. */
  raw?: boolean;
}

export type JsonSchema = Record<string, unknown>;

export interface ReferenceDocument {
  paths: Record<string, Record<string, unknown>>;
  components: { schemas: Record<string, JsonSchema>; securitySchemes?: unknown };
}

/** Baseten's full management API, the source of every mirrored route's path, method and shape. */
export const BASETEN_SPEC = new URL("./reference/baseten-management-api.json", import.meta.url);
/**
 * The smaller subset Baseten published earlier. Only read for schemas the full API no longer has, which
 * Meridian's own routes still answer: RegionV1 and RegionsV1 (`GET /v1/regions`), EnvironmentTombstoneV1
 * (`DELETE …/environments/{env_name}`), RequestBackpressureSettingsV1.
 */
export const BASETEN_SUBSET = new URL("./reference/baseten-management-api.subset.json", import.meta.url);

export function readReference(file: URL | string): ReferenceDocument {
  return JSON.parse(readFileSync(file, "utf8")) as ReferenceDocument;
}

const ref = (name: string) => ({ $ref: `#/components/schemas/${name}` });
const nullable = (schema: object) => ({ anyOf: [schema, { type: "null" }] });

const REGION_RESTRICTION = {
  ...nullable({
    type: "object",
    required: ["region", "standard_endpoint_policy"],
    properties: {
      region: { type: "string" },
      standard_endpoint_policy: { type: "string", enum: STANDARD_ENDPOINT_POLICIES },
    },
  }),
  description:
    "The environment group's region restriction (DESIGN.md §2.2–2.4): the region whose planes alone serve it, and what its standard endpoint does; null when unrestricted.",
};

const REQUEST_BACKPRESSURE = {
  ...ref("RequestBackpressureSettingsV1"),
  description: "Effective request backpressure settings (from Baseten's earlier published API).",
};

/**
 * The fields Meridian adds to Baseten's response schemas, by schema. The served document lists them as
 * properties marked `x-meridian: true`; the conformance test allows exactly these beyond Baseten's own.
 */
export const MERIDIAN_FIELDS: Record<string, Record<string, JsonSchema>> = {
  APIKeyInfoV1: {
    owner: {
      ...nullable({
        type: "object",
        required: ["user_id", "email", "name"],
        properties: {
          user_id: { type: "string" },
          email: { type: "string" },
          name: nullable({ type: "string" }),
        },
      }),
      description: "The user a personal key acts as; null for workspace keys.",
    },
    regions: {
      ...nullable({ type: "array", items: { type: "string" } }),
      description: "The regions whose planes accept the key for inference; null: every region.",
    },
  },
  DeploymentV1: {
    region: {
      ...nullable(ref("RegionV1")),
      description: "The region the deployment's replicas are restricted to; null when unrestricted.",
    },
    request_backpressure_settings: REQUEST_BACKPRESSURE,
    status_message: {
      ...nullable({ type: "string" }),
      description:
        "Why the deployment is in its status: a load() error, a build failure, waiting for capacity.",
    },
    egress: {
      type: "string",
      enum: EGRESS_POLICIES,
      description: "The egress policy its replicas run under, fixed when it was created (DESIGN.md §2.8).",
    },
  },
  EnvironmentV1: {
    region_restriction: REGION_RESTRICTION,
    request_backpressure_settings: REQUEST_BACKPRESSURE,
  },
  EnvironmentGroupV1: {
    region_restriction: REGION_RESTRICTION,
    egress: {
      type: "string",
      enum: EGRESS_POLICIES,
      description: "Whether the group's replicas may reach the network (DESIGN.md §2.8); set by org admins.",
    },
  },
  UpdateAutoscalingSettingsResponseV1: {
    environment: { ...ref("EnvironmentV1"), description: "The environment after the update." },
  },
  GetLogsResponseV1: {
    unreachable_planes: {
      type: "array",
      items: { type: "string" },
      description: "Planes running replicas of the deployment that did not answer; their lines are missing.",
    },
  },
  LogV1: {
    plane: { type: "string", description: "The workload plane that captured the line." },
    stream: {
      type: "string",
      enum: ["stdout", "stderr", "driver", "build"],
      description:
        "Where the line came from; `driver` lines are the plane's notes on the replica, `build` lines the output of preparing what it runs on (a truss package's virtualenv). The `component` filter matches it.",
    },
  },
  PrepareModelUploadResponseV1: {
    upload_url: { type: "string", description: "Where to PUT the archive on the control plane itself." },
    upload_method: { type: "string", const: "PUT" },
    s3_endpoint_url: {
      ...nullable({ type: "string" }),
      description: "The control plane's S3-compatible upload endpoint (null on a dry run).",
    },
    expires_at: {
      ...nullable({ type: "string" }),
      description: "When the upload credentials stop working (ISO 8601; null on a dry run).",
    },
  },
};

type SchemaRef = { $ref?: string; oneOf?: Array<{ $ref?: string }> };
type Operation = { responses?: Record<string, { content?: Record<string, { schema?: SchemaRef }> }> };

/**
 * The operations of a reference document, `METHOD path` (path templates as the document spells them) to
 * the component schema of the 200 answer (null when it names none).
 */
export function referenceRoutes(doc: ReferenceDocument): Map<string, string | null> {
  const methods = new Set(["get", "post", "put", "patch", "delete"]);
  const out = new Map<string, string | null>();
  for (const [path, ops] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(ops)) {
      if (!methods.has(method)) continue;
      const schema = (op as Operation).responses?.["200"]?.content?.["application/json"]?.schema;
      out.set(`${method.toUpperCase()} ${path}`, schema?.$ref?.split("/").pop() ?? null);
    }
  }
  return out;
}

function refsOf(schema: unknown, into: Set<string>): void {
  if (Array.isArray(schema)) {
    for (const s of schema) refsOf(s, into);
  } else if (typeof schema === "object" && schema !== null) {
    for (const [key, value] of Object.entries(schema)) {
      if (key === "$ref" && typeof value === "string" && value.startsWith("#/components/schemas/")) {
        into.add(value.slice("#/components/schemas/".length));
      } else {
        refsOf(value, into);
      }
    }
  }
}

/**
 * The component schemas `roots` need, with everything they reference: each from the first document that
 * has it (Baseten's full API, then the earlier subset), with Meridian's fields added. A name no document
 * has is a bug in the route table, so it throws.
 */
export function componentSchemas(
  roots: Iterable<string>,
  sources: readonly ReferenceDocument[],
): Record<string, JsonSchema> {
  const out: Record<string, JsonSchema> = {};
  const pending = [...roots];
  while (pending.length > 0) {
    const name = pending.pop()!;
    if (out[name] !== undefined) continue;
    const found = sources.map((d) => d.components.schemas[name]).find((s) => s !== undefined);
    if (found === undefined) throw new Error(`no reference schema ${name}`);
    const fields = MERIDIAN_FIELDS[name];
    const schema: JsonSchema = fields
      ? {
          ...found,
          properties: {
            ...(found["properties"] as Record<string, unknown> | undefined),
            ...Object.fromEntries(Object.entries(fields).map(([k, v]) => [k, { ...v, "x-meridian": true }])),
          },
        }
      : found;
    out[name] = schema;
    const refs = new Set<string>();
    refsOf(schema, refs);
    pending.push(...refs);
  }
  return Object.fromEntries(Object.entries(out).sort(([a], [b]) => (a < b ? -1 : 1)));
}

/** The component schema an operation's 200 answer names in the document being built. */
function refName(op: unknown): string | null {
  const schema = (op as Operation).responses?.["200"]?.content?.["application/json"]?.schema;
  // A route with a Meridian alternative answers `oneOf: [Baseten's, Meridian's]`; Baseten's comes first.
  const first = schema?.oneOf?.[0] ?? schema;
  return first?.$ref?.split("/").pop() ?? null;
}

const ERROR_RESPONSE = {
  type: "object",
  required: ["error", "error_code", "detail"],
  properties: { error: { type: "string" }, error_code: { type: "string" }, detail: {} },
  additionalProperties: false,
  "x-meridian": true,
};

export function openApiDocument(routes: readonly RouteDoc[]) {
  const full = readReference(BASETEN_SPEC);
  const sources = [full, readReference(BASETEN_SUBSET)];
  const basetens = referenceRoutes(full);
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
    const key = `${route.method} ${url}`;
    const meridian = route.meridian === true || !basetens.has(key);
    // A route of Baseten's API answers Baseten's schema unless it names one (the test checks they agree).
    const response = route.response ?? basetens.get(key) ?? null;
    paths[url] ??= {};
    paths[url][route.method.toLowerCase()] = {
      summary: route.summary,
      ...(meridian ? { tags: ["meridian"] } : {}),
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
              schema:
                route.alternative && response
                  ? { oneOf: [ref(response), ref(route.alternative.name)] }
                  : response
                    ? ref(response)
                    : { type: "object" },
            },
          },
        },
        default: {
          description: "Error",
          content: { "application/json": { schema: ref("ErrorResponse") } },
        },
      },
    };
    if (route.alternative) meridianSchemas[route.alternative.name] = route.alternative.schema;
  }
  const named = Object.values(paths).flatMap((ops) =>
    Object.values(ops).flatMap((op) => {
      const name = refName(op);
      return name === null ? [] : [name];
    }),
  );
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
      schemas: {
        ...componentSchemas(named, sources),
        ...meridianSchemas,
        ErrorResponse: ERROR_RESPONSE,
      },
      securitySchemes: full.components.securitySchemes ?? {},
    },
  };
}
