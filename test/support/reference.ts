// Validates responses against Baseten's published management API (../shared/reference: the full spec, and
// the earlier subset for the few schemas the full spec no longer has), strictly: a missing required field,
// a wrong type or a field nobody declared fails. The only fields allowed beyond Baseten's own are the ones
// Meridian documents (src/control/openapi.ts MERIDIAN_FIELDS), each with its type checked.

import { existsSync } from "node:fs";
import { resolve } from "node:path";
import { Ajv2020 } from "ajv/dist/2020.js";
import { expect } from "vitest";
import {
  BASETEN_SPEC,
  BASETEN_SUBSET,
  componentSchemas,
  type JsonSchema,
  type ReferenceDocument,
  readReference,
} from "../../src/control/openapi.ts";

const SHARED = resolve(import.meta.dirname, "../../../shared/reference");
/** The published files when this checkout sits beside them; else the copies the control plane ships. */
export const PUBLISHED_SPEC = resolve(SHARED, "baseten-management-api.json");
const PUBLISHED_SUBSET = resolve(SHARED, "baseten-management-api.subset.json");

function load(published: string, shipped: URL): ReferenceDocument {
  return readReference(existsSync(published) ? published : shipped);
}

/** Baseten's full management API, as published. */
export const BASETEN: ReferenceDocument = load(PUBLISHED_SPEC, BASETEN_SPEC);
const SUBSET: ReferenceDocument = load(PUBLISHED_SUBSET, BASETEN_SUBSET);

/** Keywords whose values are data (examples, defaults), not schemas. */
const DATA_KEYWORDS = new Set(["default", "examples", "example", "const", "enum"]);

/** Every object schema that lists its properties is closed (`additionalProperties: false`) unless it says otherwise. */
function closed(node: unknown): unknown {
  if (Array.isArray(node)) return node.map(closed);
  if (typeof node !== "object" || node === null) return node;
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(node)) {
    if (DATA_KEYWORDS.has(key)) out[key] = value;
    else if (key === "properties" && typeof value === "object" && value !== null) {
      out[key] = Object.fromEntries(Object.entries(value).map(([name, s]) => [name, closed(s)]));
    } else out[key] = closed(value);
  }
  if ("properties" in out && !("additionalProperties" in out)) out["additionalProperties"] = false;
  return out;
}

const names = [
  ...new Set([...Object.keys(BASETEN.components.schemas), ...Object.keys(SUBSET.components.schemas)]),
];
const SCHEMAS = closed(componentSchemas(names, [BASETEN, SUBSET])) as Record<string, JsonSchema>;

const ajv = new Ajv2020({ strict: false, allErrors: true });
ajv.addFormat("date-time", /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$/);
ajv.addFormat("date", /^\d{4}-\d\d-\d\d$/);
ajv.addSchema({ $id: "reference", components: { schemas: SCHEMAS } });

/** The component schema `#/components/schemas/{name}` of Baseten's 200 answer to `METHOD path`, if Baseten has the route. */
export function basetenResponse(method: string, path: string): string | null | undefined {
  const op = BASETEN.paths[path]?.[method.toLowerCase()] as
    | { responses?: Record<string, { content?: Record<string, { schema?: { $ref?: string } }> }> }
    | undefined;
  if (op === undefined) return undefined;
  const schema = op.responses?.["200"]?.content?.["application/json"]?.schema;
  return schema?.$ref?.split("/").pop() ?? null;
}

/** Asserts that `body` is a valid instance of the reference's component schema `name` (strictly; see above). */
export function expectReferenceShape(name: string, body: unknown): void {
  const validate = ajv.getSchema(`reference#/components/schemas/${name}`);
  if (!validate) throw new Error(`no reference schema ${name}`);
  const ok = validate(body);
  expect(
    ok,
    `${name}: ${ajv.errorsText(validate.errors)}\n${JSON.stringify(body, null, 2).slice(0, 2000)}`,
  ).toBe(true);
}

/** Asserts the Meridian error body: {error, error_code, detail} with the given code. */
export function expectError(res: { status: number; body: any }, status: number, code: string): void {
  expect(res.status, JSON.stringify(res.body)).toBe(status);
  expect(res.body).toMatchObject({ error_code: code });
  expect(typeof res.body.error).toBe("string");
  expect(res.body).toHaveProperty("detail");
}
