// The JSON Canonicalization Scheme (RFC 8785) for what Meridian signs as JSON (audit seals, evidence
// pieces): the bytes signed do not depend on key order or whitespace, so a document re-serialized by any
// JSON library on the way (the control plane, an auditor's tooling) still verifies.

/**
 * RFC 8785 §3.2: object members sorted by the UTF-16 code units of their names, no whitespace, strings
 * and numbers as ECMAScript's JSON.stringify writes them (which is what §3.2.2 specifies). `undefined`
 * members are left out, as JSON.stringify does; non-finite numbers have no JSON form and throw.
 */
export function canonicalJson(value: unknown): string {
  if (value === null || typeof value === "boolean" || typeof value === "string") return JSON.stringify(value);
  if (typeof value === "number") {
    if (!Number.isFinite(value)) throw new TypeError("a non-finite number has no JSON form");
    return JSON.stringify(value);
  }
  if (Array.isArray(value))
    return `[${value.map((v) => (v === undefined ? "null" : canonicalJson(v))).join(",")}]`;
  if (typeof value === "object") {
    const entries = Object.entries(value as Record<string, unknown>).filter(([, v]) => v !== undefined);
    // Default sort compares UTF-16 code units, as §3.2.3 asks.
    entries.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(",")}}`;
  }
  throw new TypeError(`${typeof value} has no JSON form`);
}
