// Bounds on a GraphQL document, checked before it is validated or executed, so a hostile query costs little:
// tokens (counted by graphql-js's own lexer, before parsing), then, over every operation with fragments
// expanded, selection depth, fields selected, aliases and root fields. The truss CLI's documents are far
// inside every bound (docs/truss-cli.md#limits).

import {
  type DocumentNode,
  type FragmentDefinitionNode,
  Kind,
  Lexer,
  type SelectionSetNode,
  Source,
  TokenKind,
} from "graphql";

export interface DocumentLimits {
  /** Lexical tokens of the document (a string, however long, is one token). */
  maxTokens: number;
  /** Nesting of selection sets: `{ a { b } }` is 2. */
  maxDepth: number;
  /**
   * Selections (fields, fragment spreads, inline fragments) visited with fragments expanded: counted once
   * per place a fragment is spread, so spreads that only spread other fragments count too.
   */
  maxSelections: number;
  /** Fields selected under an alias, counted the same way. */
  maxAliases: number;
  /** Top-level fields of a query. */
  maxRootFields: number;
  /** Top-level fields of a mutation: one change per request. */
  maxMutationFields: number;
}

export const DEFAULT_LIMITS: DocumentLimits = {
  maxTokens: 2000,
  maxDepth: 8,
  maxSelections: 500,
  maxAliases: 20,
  maxRootFields: 10,
  maxMutationFields: 1,
};

export type LimitOutcome = { ok: true } | { ok: false; limit: keyof DocumentLimits; message: string };

/**
 * Counts tokens up to the limit, stopping there. A syntax error stops the count too: the parser that
 * runs next reports it with its location.
 */
export function checkTokens(query: string, limits: DocumentLimits = DEFAULT_LIMITS): LimitOutcome {
  const lexer = new Lexer(new Source(query));
  let count = 0;
  try {
    while (lexer.advance().kind !== TokenKind.EOF) {
      if (++count > limits.maxTokens) {
        return {
          ok: false,
          limit: "maxTokens",
          message: `The document has more than ${limits.maxTokens} tokens.`,
        };
      }
    }
  } catch {
    // Not lexable: left to the parser's error.
  }
  return { ok: true };
}

class LimitExceeded extends Error {
  constructor(
    readonly limit: keyof DocumentLimits,
    message: string,
  ) {
    super(message);
  }
}

/**
 * Walks each operation with its fragments expanded, stopping at the first bound crossed, so a document
 * whose expansion is exponential (fragments spreading fragments) costs at most `maxSelections` steps. A
 * fragment spread inside itself is not followed (validation refuses the cycle).
 */
export function checkDocument(doc: DocumentNode, limits: DocumentLimits = DEFAULT_LIMITS): LimitOutcome {
  const fragments = new Map<string, FragmentDefinitionNode>();
  for (const def of doc.definitions)
    if (def.kind === Kind.FRAGMENT_DEFINITION) fragments.set(def.name.value, def);
  let selections = 0;
  let aliases = 0;
  const walk = (set: SelectionSetNode, depth: number, spreading: Set<string>): number => {
    if (depth > limits.maxDepth) {
      throw new LimitExceeded("maxDepth", `The document nests selections deeper than ${limits.maxDepth}.`);
    }
    let here = 0;
    for (const selection of set.selections) {
      if (++selections > limits.maxSelections) {
        throw new LimitExceeded(
          "maxSelections",
          `The document makes more than ${limits.maxSelections} selections, with its fragments expanded.`,
        );
      }
      switch (selection.kind) {
        case Kind.FIELD:
          here++;
          if (selection.alias && ++aliases > limits.maxAliases) {
            throw new LimitExceeded(
              "maxAliases",
              `The document uses more than ${limits.maxAliases} aliases.`,
            );
          }
          if (selection.selectionSet) walk(selection.selectionSet, depth + 1, spreading);
          break;
        case Kind.INLINE_FRAGMENT:
          here += walk(selection.selectionSet, depth, spreading);
          break;
        case Kind.FRAGMENT_SPREAD: {
          const name = selection.name.value;
          const fragment = fragments.get(name);
          if (!fragment || spreading.has(name)) break;
          spreading.add(name);
          here += walk(fragment.selectionSet, depth, spreading);
          spreading.delete(name);
          break;
        }
      }
    }
    return here;
  };
  try {
    for (const def of doc.definitions) {
      if (def.kind !== Kind.OPERATION_DEFINITION) continue;
      const roots = walk(def.selectionSet, 1, new Set());
      const [max, limit] =
        def.operation === "mutation"
          ? [limits.maxMutationFields, "maxMutationFields" as const]
          : [limits.maxRootFields, "maxRootFields" as const];
      if (roots > max) {
        throw new LimitExceeded(limit, `A ${def.operation} may select at most ${max} top-level field(s).`);
      }
    }
  } catch (err) {
    if (err instanceof LimitExceeded) return { ok: false, limit: err.limit, message: err.message };
    throw err;
  }
  return { ok: true };
}
