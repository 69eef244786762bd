// docs/api.md is generated from the OpenAPI document at /v1/spec (scripts/gen-api-docs.ts): this fails when
// a route changed and the committed reference was not regenerated with `npm run docs`.

import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { API_DOC, fetchSpec, renderApiDocs } from "../scripts/gen-api-docs.ts";

describe("docs/api.md", () => {
  it("is what scripts/gen-api-docs.ts renders from /v1/spec (run `npm run docs` to update it)", async () => {
    const fresh = renderApiDocs(await fetchSpec());
    expect(readFileSync(API_DOC, "utf8")).toBe(fresh);
  });

  it("lists every route of the spec once", async () => {
    const spec = await fetchSpec();
    const doc = readFileSync(API_DOC, "utf8");
    for (const [path, ops] of Object.entries(spec.paths)) {
      for (const method of Object.keys(ops)) {
        const row = `| ${method.toUpperCase()} | \`${path}\` |`;
        expect(doc.split(row).length - 1, row).toBe(1);
      }
    }
  });
});
