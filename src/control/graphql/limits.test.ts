// The document bounds, table-tested: each limit at its edge (allowed) and one past it (refused), and the
// documents whose cost grows exponentially with their size refused within the step budget.

import fc from "fast-check";
import { parse } from "graphql";
import { describe, expect, it } from "vitest";
import { checkDocument, checkTokens, DEFAULT_LIMITS, type DocumentLimits } from "./limits.ts";

const nest = (depth: number) => `{ ${"a { ".repeat(depth - 1)}b${" }".repeat(depth - 1)} }`;
const fields = (n: number, f: (i: number) => string) =>
  `{ ${Array.from({ length: n }, (_, i) => f(i)).join(" ")} }`;

describe("checkDocument", () => {
  const cases: Array<[string, string, keyof DocumentLimits | null]> = [
    ["depth at the limit", nest(DEFAULT_LIMITS.maxDepth), null],
    ["depth past the limit", nest(DEFAULT_LIMITS.maxDepth + 1), "maxDepth"],
    ["aliases at the limit", `{ t { ${Array.from({ length: 20 }, (_, i) => `a${i}: x`).join(" ")} } }`, null],
    [
      "aliases past the limit",
      `{ t { ${Array.from({ length: 21 }, (_, i) => `a${i}: x`).join(" ")} } }`,
      "maxAliases",
    ],
    ["root fields at the limit", fields(10, () => "teams { id }"), null],
    ["root fields past the limit", fields(11, () => "teams { id }"), "maxRootFields"],
    [
      "root fields through fragments",
      `{ ...A ...A } fragment A on Query { ${"x ".repeat(6)}}`,
      "maxRootFields",
    ],
    ["one mutation", "mutation { a { id } }", null],
    ["two mutations", "mutation { a { id } b { id } }", "maxMutationFields"],
    [
      "two mutations through an inline fragment",
      "mutation { a { id } ... on Mutation { b { id } } }",
      "maxMutationFields",
    ],
    ["selections past the budget", `{ t { ${"x ".repeat(DEFAULT_LIMITS.maxSelections)}} }`, "maxSelections"],
  ];
  it.each(cases)("%s", (_name, query, limit) => {
    const outcome = checkDocument(parse(query));
    if (limit === null) expect(outcome).toEqual({ ok: true });
    else expect(outcome).toMatchObject({ ok: false, limit });
  });

  it("stops an exponential fan-out of fragments within the budget", () => {
    for (const leaf of ["teams { id }", "...F0", ""]) {
      const defs = Array.from(
        { length: 40 },
        (_, i) => `fragment F${i} on Query { ...F${i + 1} ...F${i + 1} }`,
      );
      const doc = parse(`{ ...F0 } ${defs.join(" ")} fragment F40 on Query { ${leaf || "...F40"} }`);
      expect(checkDocument(doc)).toMatchObject({ ok: false, limit: "maxSelections" });
    }
  });

  it("does not follow a fragment into itself (validation reports the cycle)", () => {
    expect(checkDocument(parse("{ ...A } fragment A on Query { x ...A }"))).toEqual({ ok: true });
  });

  it("never throws, whatever the document", () => {
    fc.assert(
      fc.property(
        fc.array(fc.constantFrom("a", "b", "{", "}", "...A", "x: y", "c"), { maxLength: 60 }),
        (parts) => {
          let doc: ReturnType<typeof parse>;
          try {
            doc = parse(`{ ${parts.join(" ")} } fragment A on Q { a ...A }`);
          } catch {
            return;
          }
          const outcome = checkDocument(doc);
          expect(typeof outcome.ok).toBe("boolean");
        },
      ),
    );
  });
});

describe("checkTokens", () => {
  it("counts tokens, a string of any length being one", () => {
    expect(checkTokens(`{ m(config: "${"A".repeat(500_000)}") { id } }`)).toEqual({ ok: true });
    const many = `{ ${"x ".repeat(DEFAULT_LIMITS.maxTokens - 2)}}`;
    expect(checkTokens(many)).toEqual({ ok: true });
    expect(checkTokens(`${many} x`)).toMatchObject({ ok: false, limit: "maxTokens" });
  });

  it("leaves a lexical error to the parser", () => {
    expect(checkTokens('{ "unterminated')).toEqual({ ok: true });
  });
});
