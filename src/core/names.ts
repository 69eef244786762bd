// Names and ids of the domain: environment names (DNS labels, DESIGN.md §1), model ids, region slugs,
// plane names. Validators return a typed outcome naming the rule that was broken.

/** `model-` + 8-char id + `-` + 40 = 55, inside DNS's 63-octet label limit (RFC 1035 §2.3.4). */
export const ENVIRONMENT_NAME_MAX = 40;
export const MODEL_ID_LENGTH = 8;
export const RESERVED_ENVIRONMENT_NAMES: readonly string[] = ["development"];
export const PRODUCTION = "production";

export type NameRule =
  | "empty"
  | "too_long"
  | "invalid_characters"
  | "leading_hyphen"
  | "trailing_hyphen"
  | "reserved";

export type NameCheck = { ok: true } | { ok: false; rule: NameRule; message: string };

const LABEL_CHARS = /^[a-z0-9-]+$/;

/** Checks an environment name against DESIGN.md §1 and says which rule it broke. */
export function checkEnvironmentName(name: string): NameCheck {
  if (name.length === 0) return refuse("empty", "An environment name cannot be empty.");
  if (name.length > ENVIRONMENT_NAME_MAX) {
    return refuse("too_long", `An environment name has at most ${ENVIRONMENT_NAME_MAX} characters.`);
  }
  if (!LABEL_CHARS.test(name)) {
    return refuse(
      "invalid_characters",
      "An environment name may contain only lowercase letters, digits and hyphens.",
    );
  }
  if (name.startsWith("-"))
    return refuse("leading_hyphen", "An environment name cannot start with a hyphen.");
  if (name.endsWith("-")) return refuse("trailing_hyphen", "An environment name cannot end with a hyphen.");
  if (RESERVED_ENVIRONMENT_NAMES.includes(name)) {
    return refuse("reserved", `'${name}' is a reserved name and cannot be used for an environment.`);
  }
  return { ok: true };
}

export function isEnvironmentName(name: string): boolean {
  return checkEnvironmentName(name).ok;
}

const MODEL_ID = /^[a-z0-9]{8}$/;

/** Model ids are 8 lowercase alphanumerics and never contain a hyphen, so `model-{id}-{env}` parses. */
export function isModelId(id: string): boolean {
  return MODEL_ID.test(id);
}

const ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789";

/**
 * Makes an id of `length` lowercase alphanumerics from the given random bytes (one byte per character).
 * Bytes are rejection-sampled so every character is equally likely; the caller supplies randomness,
 * which keeps this module free of I/O.
 */
export function idFromBytes(bytes: Uint8Array, length: number): string | null {
  const limit = 256 - (256 % ID_ALPHABET.length);
  let id = "";
  for (const b of bytes) {
    if (b >= limit) continue;
    id += ID_ALPHABET[b % ID_ALPHABET.length];
    if (id.length === length) return id;
  }
  return null;
}

const SLUG = /^[a-z][a-z0-9-]{0,30}[a-z0-9]$|^[a-z]$/;

/** Region slugs and plane names: short DNS-label-like identifiers. */
export function isSlug(value: string): boolean {
  return SLUG.test(value);
}

function refuse(rule: NameRule, message: string): NameCheck {
  return { ok: false, rule, message };
}
