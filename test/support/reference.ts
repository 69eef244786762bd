// Validates responses against the public reference schemas in ../shared/reference (Baseten's management
// API subset), so a field renamed or a type changed fails a test.

import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { Ajv } from "ajv";
import { expect } from "vitest";

const REFERENCE = resolve(
  import.meta.dirname,
  "../../../shared/reference/baseten-management-api.subset.json",
);
const FALLBACK = resolve(
  import.meta.dirname,
  "../../src/control/reference/baseten-management-api.subset.json",
);

function loadReference(): { components: { schemas: Record<string, object> } } {
  try {
    return JSON.parse(readFileSync(REFERENCE, "utf8"));
  } catch {
    return JSON.parse(readFileSync(FALLBACK, "utf8"));
  }
}

const ajv = new Ajv({ strict: false, allErrors: true });
ajv.addFormat("date-time", /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$/);
ajv.addSchema({ $id: "reference", components: loadReference().components });

/** Asserts that `body` is a valid instance of the reference's component schema `name`. */
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
