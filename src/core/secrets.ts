// Secrets as truss and Baseten shape them: the naming rule, the size of a value, and the `secrets:`
// mapping of a package's config.yaml, whose keys name the team secrets a deployment's replicas are given.
// Pure: the control plane (API, build, delivery) and the plane (files under /secrets) share these rules.

/** truss's limit (truss/base/validation.py `validate_secret_name`): a Kubernetes object name's length. */
export const SECRET_NAME_MAX_LENGTH = 253;
/**
 * The largest value, in bytes of UTF-8. Large enough for a service-account JSON or a PEM chain; small
 * enough that a replica's secrets stay a few requests' worth of memory on the control plane.
 */
export const SECRET_VALUE_MAX_BYTES = 64 * 1024;
/** The most secrets one config.yaml may name, so one replica's delivery stays bounded. */
export const MAX_SECRETS_PER_DEPLOYMENT = 100;

// truss's SECRET_NAME_MATCH_REGEX. Every name is also a file name under /secrets, so `.` and `..` are out.
const SECRET_NAME = /^[-._a-zA-Z0-9]+$/;

export type SecretNameRule = "empty" | "too_long" | "characters" | "dot";

export type SecretNameCheck = { ok: true } | { ok: false; rule: SecretNameRule; message: string };

/** truss's rule for secret names: 1–253 of `A–Z a–z 0–9 - _ .`, and neither `.` nor `..`. */
export function checkSecretName(name: string): SecretNameCheck {
  if (name.length === 0) return { ok: false, rule: "empty", message: "A secret name cannot be empty." };
  if (name.length > SECRET_NAME_MAX_LENGTH) {
    return {
      ok: false,
      rule: "too_long",
      message: `A secret name is at most ${SECRET_NAME_MAX_LENGTH} characters; this one has ${name.length}.`,
    };
  }
  if (!SECRET_NAME.test(name)) {
    return {
      ok: false,
      rule: "characters",
      message: `Secret name ${JSON.stringify(name)} may contain only letters, digits, '-', '_' and '.'.`,
    };
  }
  if (name === "." || name === "..") {
    return { ok: false, rule: "dot", message: `A secret cannot be named '${name}'.` };
  }
  return { ok: true };
}

export type SecretValueCheck = { ok: true } | { ok: false; rule: "empty" | "too_large"; message: string };

/** A value is 1 to SECRET_VALUE_MAX_BYTES bytes of UTF-8 (truss treats an empty secret as missing). */
export function checkSecretValue(value: string): SecretValueCheck {
  if (value.length === 0) {
    return { ok: false, rule: "empty", message: "A secret's value cannot be empty." };
  }
  const bytes = new TextEncoder().encode(value).length;
  if (bytes > SECRET_VALUE_MAX_BYTES) {
    return {
      ok: false,
      rule: "too_large",
      message: `A secret's value is at most ${SECRET_VALUE_MAX_BYTES} bytes of UTF-8; this one has ${bytes}.`,
    };
  }
  return { ok: true };
}

export type SecretsConfigOutcome =
  | { ok: true; names: string[] }
  | { ok: false; key: string; message: string };

/**
 * The `secrets:` key of a config.yaml (truss-config.schema.json: a mapping of names to a string or null).
 * The values are placeholders: a value is never taken from the package, whose config is stored and shown
 * in plain text; every name must be a secret of the deployment's team.
 */
export function parseSecretsConfig(value: unknown): SecretsConfigOutcome {
  if (value === undefined || value === null) return { ok: true, names: [] };
  if (typeof value !== "object" || Array.isArray(value)) {
    return { ok: false, key: "secrets", message: "must be a mapping of secret names to null" };
  }
  const names = Object.keys(value);
  if (names.length > MAX_SECRETS_PER_DEPLOYMENT) {
    return {
      ok: false,
      key: "secrets",
      message: `names ${names.length} secrets; a deployment may use at most ${MAX_SECRETS_PER_DEPLOYMENT}`,
    };
  }
  for (const name of names) {
    const check = checkSecretName(name);
    if (!check.ok) return { ok: false, key: `secrets.${name}`, message: check.message };
    const placeholder = (value as Record<string, unknown>)[name];
    if (placeholder !== null && typeof placeholder !== "string") {
      return { ok: false, key: `secrets.${name}`, message: "must be null (a placeholder) or a string" };
    }
  }
  return { ok: true, names: [...names].sort() };
}

/** The secret names a deployment's stored config (JSON of its parsed config.yaml) gives its replicas. */
export function secretNamesOf(config: unknown): string[] {
  if (typeof config !== "object" || config === null) return [];
  const secrets = (config as Record<string, unknown>)["secrets"];
  if (typeof secrets !== "object" || secrets === null || Array.isArray(secrets)) return [];
  return Object.keys(secrets)
    .filter((n) => checkSecretName(n).ok)
    .sort();
}

/** The `secrets` entry a deployment's stored config carries: the names, each with a null placeholder. */
export function secretsEntry(names: readonly string[]): Record<string, null> {
  return Object.fromEntries(names.map((n) => [n, null]));
}

/**
 * Why a replica cannot start: the secrets its config names that its team lacks. Worded after truss's
 * `SecretNotFound` message, with what to do about it on Meridian.
 */
export function missingSecretsMessage(missing: readonly string[], teamName: string): string {
  const list = missing.map((n) => `'${n}'`).join(", ");
  const which = missing.length === 1 ? `Secret ${list} not found` : `Secrets ${list} not found`;
  return (
    `${which}: config.yaml names ${missing.length === 1 ? "it" : "them"} under 'secrets', but team ` +
    `'${teamName}' has no secret of that name. Create ${missing.length === 1 ? "it" : "them"} ` +
    "(POST /v1/secrets or /v1/teams/{team_id}/secrets), then retry the deployment."
  );
}
