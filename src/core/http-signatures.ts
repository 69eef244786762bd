// HTTP Message Signatures (RFC 9421) as Meridian's receipts use them, without the cryptography: the
// Structured Field values they are written in (RFC 8941), the signature base (RFC 9421 §2.5), the derived
// components a receipt covers, and `Content-Digest` values (RFC 9530). Signing and verifying are in
// src/lib/receipts.ts; everything here is pure.

// ---------------------------------------------------------------------------------------------------------
// Structured Field Values (RFC 8941): the subset RFC 9421 and RFC 9530 fields need (no Dates, RFC 9651).

export type BareItem =
  | { type: "string"; value: string }
  | { type: "token"; value: string }
  | { type: "integer"; value: number }
  | { type: "decimal"; value: number }
  | { type: "bytes"; value: Uint8Array }
  | { type: "boolean"; value: boolean };

/** Parameters keep their order; a repeated key overwrites the earlier value in place (RFC 8941 §4.2.3.2). */
export type Parameters = Map<string, BareItem>;
export interface Item {
  value: BareItem;
  params: Parameters;
}
export interface InnerList {
  items: Item[];
  params: Parameters;
}
export type Member = Item | InnerList;
export type Dictionary = Map<string, Member>;

export function isInnerList(m: Member): m is InnerList {
  return "items" in m;
}

export class StructuredFieldError extends Error {}

export const sf = {
  string: (value: string): BareItem => ({ type: "string", value }),
  token: (value: string): BareItem => ({ type: "token", value }),
  integer: (value: number): BareItem => ({ type: "integer", value }),
  bytes: (value: Uint8Array): BareItem => ({ type: "bytes", value }),
  boolean: (value: boolean): BareItem => ({ type: "boolean", value }),
  item: (value: BareItem, params: Parameters = new Map()): Item => ({ value, params }),
};

const KEY = /^[a-z*][a-z0-9_\-.*]*$/;
const TOKEN = /^[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*$/;
const MAX_INTEGER = 999_999_999_999_999;

/** RFC 8941 §4.1.6–4.1.9, 4.1.5, 4.1.4: a bare item. */
export function serializeBareItem(b: BareItem): string {
  switch (b.type) {
    case "string": {
      let out = '"';
      for (let i = 0; i < b.value.length; i++) {
        const c = b.value.charCodeAt(i);
        if (c < 0x20 || c > 0x7e) throw new StructuredFieldError("a String holds only visible ASCII and SP");
        if (c === 0x22 || c === 0x5c) out += "\\";
        out += b.value[i];
      }
      return `${out}"`;
    }
    case "token":
      if (!TOKEN.test(b.value)) throw new StructuredFieldError(`not a Token: ${b.value}`);
      return b.value;
    case "integer":
      if (!Number.isInteger(b.value) || Math.abs(b.value) > MAX_INTEGER) {
        throw new StructuredFieldError(`not an Integer: ${b.value}`);
      }
      return String(b.value);
    case "decimal": {
      // §4.1.5: round to three fractional digits, at most 12 integer digits, at least one fractional digit.
      const rounded = Math.round(b.value * 1000) / 1000;
      if (!Number.isFinite(rounded) || Math.abs(Math.trunc(rounded)) > 999_999_999_999) {
        throw new StructuredFieldError(`not a Decimal: ${b.value}`);
      }
      const text = String(rounded);
      return text.includes(".") ? text : `${text}.0`;
    }
    case "bytes":
      return `:${Buffer.from(b.value).toString("base64")}:`;
    case "boolean":
      return b.value ? "?1" : "?0";
  }
}

/** RFC 8941 §4.1.1.2. A `true` parameter is written as the bare key. */
export function serializeParameters(params: Parameters): string {
  let out = "";
  for (const [key, value] of params) {
    if (!KEY.test(key)) throw new StructuredFieldError(`not a Key: ${key}`);
    out += `;${key}`;
    if (!(value.type === "boolean" && value.value)) out += `=${serializeBareItem(value)}`;
  }
  return out;
}

export function serializeItem(item: Item): string {
  return serializeBareItem(item.value) + serializeParameters(item.params);
}

/** RFC 8941 §4.1.1.1. */
export function serializeInnerList(list: InnerList): string {
  return `(${list.items.map(serializeItem).join(" ")})${serializeParameters(list.params)}`;
}

/** RFC 8941 §4.1.2. */
export function serializeDictionary(dict: Dictionary): string {
  const members: string[] = [];
  for (const [key, member] of dict) {
    if (!KEY.test(key)) throw new StructuredFieldError(`not a Key: ${key}`);
    if (isInnerList(member)) {
      members.push(`${key}=${serializeInnerList(member)}`);
    } else if (member.value.type === "boolean" && member.value.value) {
      members.push(key + serializeParameters(member.params));
    } else {
      members.push(`${key}=${serializeItem(member)}`);
    }
  }
  return members.join(", ");
}

/** The parsing algorithms of RFC 8941 §4.2, over one field value (field lines already joined by ", "). */
class Parser {
  #pos = 0;
  constructor(readonly input: string) {}

  get done(): boolean {
    return this.#pos >= this.input.length;
  }
  #peek(): string {
    return this.input[this.#pos] ?? "";
  }
  #fail(what: string): never {
    throw new StructuredFieldError(`${what} at position ${this.#pos} of the field value`);
  }
  skipSP(): void {
    while (this.#peek() === " ") this.#pos++;
  }
  skipOWS(): void {
    while (this.#peek() === " " || this.#peek() === "\t") this.#pos++;
  }

  /** §4.2.2 */
  dictionary(): Dictionary {
    const dict: Dictionary = new Map();
    while (!this.done) {
      const key = this.key();
      let member: Member;
      if (this.#peek() === "=") {
        this.#pos++;
        member = this.itemOrInnerList();
      } else {
        member = { value: sf.boolean(true), params: this.parameters() };
      }
      dict.set(key, member);
      this.skipOWS();
      if (this.done) return dict;
      if (this.#peek() !== ",") this.#fail("expected a comma between dictionary members");
      this.#pos++;
      this.skipOWS();
      if (this.done) this.#fail("a trailing comma");
    }
    return dict;
  }

  /** §4.2.1.1 */
  itemOrInnerList(): Member {
    return this.#peek() === "(" ? this.innerList() : this.item();
  }

  /** §4.2.1.2 */
  innerList(): InnerList {
    this.#pos++; // "("
    const items: Item[] = [];
    while (!this.done) {
      this.skipSP();
      if (this.#peek() === ")") {
        this.#pos++;
        return { items, params: this.parameters() };
      }
      items.push(this.item());
      const c = this.#peek();
      if (c !== " " && c !== ")") this.#fail("expected SP or ')' in an inner list");
    }
    return this.#fail("an inner list without its ')'");
  }

  /** §4.2.3 */
  item(): Item {
    const value = this.bareItem();
    return { value, params: this.parameters() };
  }

  /** §4.2.3.1 */
  bareItem(): BareItem {
    const c = this.#peek();
    if (c === "-" || (c >= "0" && c <= "9")) return this.number();
    if (c === '"') return this.string();
    if (c === ":") return this.bytes();
    if (c === "?") return this.boolean();
    if (c === "*" || /[A-Za-z]/.test(c)) return this.token();
    return this.#fail("not the start of an item");
  }

  /** §4.2.3.2 */
  parameters(): Parameters {
    const params: Parameters = new Map();
    while (this.#peek() === ";") {
      this.#pos++;
      this.skipSP();
      const key = this.key();
      let value: BareItem = sf.boolean(true);
      if (this.#peek() === "=") {
        this.#pos++;
        value = this.bareItem();
      }
      params.set(key, value);
    }
    return params;
  }

  /** §4.2.3.3 */
  key(): string {
    const start = this.#pos;
    const first = this.#peek();
    if (!(first === "*" || (first >= "a" && first <= "z"))) this.#fail("not the start of a key");
    while (/[a-z0-9_\-.*]/.test(this.#peek()) && !this.done) this.#pos++;
    return this.input.slice(start, this.#pos);
  }

  /** §4.2.4, step by step. */
  number(): BareItem {
    let sign = 1;
    if (this.#peek() === "-") {
      this.#pos++;
      sign = -1;
    }
    if (!(this.#peek() >= "0" && this.#peek() <= "9")) this.#fail("a number needs a digit");
    let digits = "";
    let decimal = false;
    while (!this.done) {
      const c = this.#peek();
      if (c >= "0" && c <= "9") {
        digits += c;
      } else if (!decimal && c === ".") {
        if (digits.length > 12) this.#fail("a decimal with more than 12 integer digits");
        digits += c;
        decimal = true;
      } else {
        break;
      }
      this.#pos++;
      if (!decimal && digits.length > 15) this.#fail("an integer with more than 15 digits");
      if (decimal && digits.length > 16) this.#fail("a decimal too long");
    }
    if (!decimal) return sf.integer(sign * Number.parseInt(digits, 10));
    const fraction = digits.length - digits.indexOf(".") - 1;
    if (fraction < 1 || fraction > 3) this.#fail("a decimal needs 1 to 3 fractional digits");
    return { type: "decimal", value: sign * Number.parseFloat(digits) };
  }

  /** §4.2.5 */
  string(): BareItem {
    this.#pos++; // '"'
    let out = "";
    while (!this.done) {
      const c = this.input[this.#pos++]!;
      if (c === "\\") {
        const next = this.input[this.#pos++];
        if (next !== '"' && next !== "\\") this.#fail("a backslash escapes only '\"' and '\\'");
        out += next;
      } else if (c === '"') {
        return sf.string(out);
      } else {
        const code = c.charCodeAt(0);
        if (code < 0x20 || code > 0x7e) this.#fail("a String holds only visible ASCII and SP");
        out += c;
      }
    }
    return this.#fail("a String without its closing quote");
  }

  /** §4.2.6 */
  token(): BareItem {
    const start = this.#pos;
    this.#pos++;
    while (!this.done && /[!#$%&'*+\-.^_`|~0-9A-Za-z:/]/.test(this.#peek())) this.#pos++;
    return sf.token(this.input.slice(start, this.#pos));
  }

  /** §4.2.7 */
  bytes(): BareItem {
    this.#pos++; // ":"
    const end = this.input.indexOf(":", this.#pos);
    if (end < 0) this.#fail("a Byte Sequence without its closing ':'");
    const b64 = this.input.slice(this.#pos, end);
    if (!/^[A-Za-z0-9+/]*={0,2}$/.test(b64) || b64.length % 4 !== 0) {
      this.#fail("a Byte Sequence that is not padded base64");
    }
    this.#pos = end + 1;
    return sf.bytes(new Uint8Array(Buffer.from(b64, "base64")));
  }

  /** §4.2.8 */
  boolean(): BareItem {
    this.#pos++; // "?"
    const c = this.input[this.#pos++];
    if (c === "1") return sf.boolean(true);
    if (c === "0") return sf.boolean(false);
    return this.#fail("a Boolean is ?0 or ?1");
  }
}

/** RFC 8941 §4.2 for a Dictionary field (its field lines joined with ", "). Throws StructuredFieldError. */
export function parseDictionary(value: string): Dictionary {
  const p = new Parser(value);
  p.skipSP();
  const dict = p.dictionary();
  p.skipSP();
  if (!p.done) throw new StructuredFieldError("trailing characters after the dictionary");
  return dict;
}

// ---------------------------------------------------------------------------------------------------------
// RFC 9421: components and the signature base.

/** A covered component: a field name or a derived component (`@…`), `req` when taken from the request. */
export interface Component {
  name: string;
  req: boolean;
}

export function componentItem(c: Component): Item {
  const params: Parameters = new Map();
  if (c.req) params.set("req", sf.boolean(true));
  return sf.item(sf.string(c.name), params);
}

/** The component identifier as the signature base writes it (RFC 9421 §2.5: a serialized String item). */
export function componentId(c: Component): string {
  return serializeItem(componentItem(c));
}

/** A value may enter the signature base when it is visible ASCII, SP or HTAB (RFC 9421 §2.5, §2.1). */
export function signableValue(value: string): boolean {
  for (let i = 0; i < value.length; i++) {
    const c = value.charCodeAt(i);
    if ((c < 0x20 && c !== 0x09) || c > 0x7e) return false;
  }
  return true;
}

/**
 * A field's component value (RFC 9421 §2.1): each field line's value with leading and trailing whitespace
 * removed, the lines joined with ", ". Undefined when the field is absent.
 */
export function fieldValue(lines: readonly string[]): string | undefined {
  if (lines.length === 0) return undefined;
  return lines.map((v) => v.replace(/^[ \t]+|[ \t]+$/g, "")).join(", ");
}

/**
 * The signature base (RFC 9421 §2.5): one line per covered component, `"id": value`, then the
 * `"@signature-params"` line with the serialized inner list (components and signature parameters). No
 * trailing newline. `values` are in the order of `signatureParams.items`.
 */
export function signatureBase(signatureParams: InnerList, values: readonly string[]): string {
  if (values.length !== signatureParams.items.length) throw new Error("one value per covered component");
  let base = "";
  for (let i = 0; i < values.length; i++) {
    base += `${serializeItem(signatureParams.items[i]!)}: ${values[i]!}\n`;
  }
  return `${base}"@signature-params": ${serializeInnerList(signatureParams)}`;
}

/**
 * `@authority` (RFC 9421 §2.2.3): the target URI's authority, host lowercased and the scheme's default port
 * omitted (RFC 9110 §4.2.3).
 */
export function normalizeAuthority(authority: string, scheme: "http" | "https"): string {
  const lower = authority.toLowerCase();
  const defaultPort = scheme === "https" ? ":443" : ":80";
  return lower.endsWith(defaultPort) ? lower.slice(0, -defaultPort.length) : lower;
}

/**
 * `@path` (RFC 9421 §2.2.6) of a request target: the absolute path without the query, percent-encoding
 * kept as sent, an empty path as "/". The absolute-form (`http://host/p`) gives its path.
 */
export function pathOfTarget(target: string): string {
  let path = target;
  const scheme = /^[A-Za-z][A-Za-z0-9+.-]*:\/\/[^/?#]*/.exec(path);
  if (scheme !== null) path = path.slice(scheme[0].length);
  const q = path.search(/[?#]/);
  if (q >= 0) path = path.slice(0, q);
  return path === "" ? "/" : path;
}

// ---------------------------------------------------------------------------------------------------------
// RFC 9530: Content-Digest.

/** `Content-Digest: sha-256=:…:` (RFC 9530 §2) for a sha-256 digest of the content. */
export function contentDigestValue(sha256: Uint8Array): string {
  if (sha256.length !== 32) throw new Error("a sha-256 digest is 32 bytes");
  return serializeDictionary(new Map([["sha-256", sf.item(sf.bytes(sha256))]]));
}

/** The sha-256 member of a Content-Digest value (RFC 9530 §2), or null when it has none or is malformed. */
export function sha256OfContentDigest(value: string): Uint8Array | null {
  let dict: Dictionary;
  try {
    dict = parseDictionary(value);
  } catch {
    return null;
  }
  const m = dict.get("sha-256");
  if (m === undefined || isInnerList(m) || m.value.type !== "bytes" || m.value.value.length !== 32)
    return null;
  return m.value.value;
}
