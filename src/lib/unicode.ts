// Well-formed Unicode in what callers send (issue 15's fuzzing found it): JSON may spell a lone surrogate
// (`"\ud800"`), a JS string holds it, and SQLite stores it as bytes that read back as U+FFFD, so a name would
// be stored other than sent, and echoed back unlike what is stored.

/** A high surrogate not followed by a low one, or a low one not preceded by a high one. */
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

/** Whether `s` is well-formed UTF-16 (ES2024's `String.prototype.isWellFormed`). */
export function isWellFormed(s: string): boolean {
  return !LONE_SURROGATE.test(s);
}

/**
 * The path (`name`, `items[2]`, `<key>`) of the first string in `value`, or object key, that is not
 * well-formed UTF-16, or null when there is none. Iterative: a deeply nested body does not overflow the
 * stack.
 */
export function firstIllFormedString(value: unknown): string | null {
  const stack: Array<{ v: unknown; at: string }> = [{ v: value, at: "" }];
  while (stack.length > 0) {
    const { v, at } = stack.pop()!;
    if (typeof v === "string") {
      if (!isWellFormed(v)) return at || "(the body)";
    } else if (Array.isArray(v)) {
      for (let i = v.length - 1; i >= 0; i--) stack.push({ v: v[i], at: `${at}[${i}]` });
    } else if (v !== null && typeof v === "object") {
      for (const [k, x] of Object.entries(v)) {
        if (!isWellFormed(k)) return at === "" ? "(a key)" : `${at} (a key)`;
        stack.push({ v: x, at: at === "" ? k : `${at}.${k}` });
      }
    }
  }
  return null;
}

/**
 * The refusal owed to a request whose body or query holds a string that is not well-formed, or null: the
 * management API and the GraphQL endpoint answer it 400 `invalid_request` with `detail.field`.
 */
export function illFormedInput(...values: unknown[]): { field: string; message: string } | null {
  for (const v of values) {
    const field = firstIllFormedString(v);
    if (field !== null)
      return {
        field,
        message: `The string at ${field} is not well-formed Unicode (a lone surrogate such as \\ud800); send UTF-8 text.`,
      };
  }
  return null;
}
