// API keys, plane credentials and the principal behind a request: keys are shown once and stored only as
// sha256 hashes; `Authorization: Api-Key <key>` and `Authorization: Bearer <key>` are both accepted.

import { createHash, randomBytes } from "node:crypto";
import type { Principal } from "../core/access.ts";
import type { ApiKeyCategory, TeamRole } from "../core/domain.ts";
import { idFromBytes } from "../core/names.ts";
import type { Db } from "../store/store.ts";

/** A random lowercase alphanumeric id of `length` characters. */
export function newId(length: number): string {
  for (;;) {
    const id = idFromBytes(randomBytes(length * 2), length);
    if (id !== null) return id;
  }
}

export function sha256Hex(value: string): string {
  return createHash("sha256").update(value).digest("hex");
}

/** A new API key: `{prefix}.{secret}`; the prefix (8 chars) names it in listings and deletion. */
export function newApiKey(): { key: string; prefix: string; hash: string } {
  const prefix = newId(8);
  const key = `${prefix}.${randomBytes(24).toString("base64url")}`;
  return { key, prefix, hash: sha256Hex(key) };
}

/** A plane credential: `{kind}.{secret}`, e.g. `plane-eu-1.…`; stored only as its sha256. */
export function newCredential(kind: string): { token: string; hash: string } {
  const token = `${kind}.${randomBytes(32).toString("base64url")}`;
  return { token, hash: sha256Hex(token) };
}

/** Extracts the key from `Api-Key <key>` or `Bearer <key>` (scheme case-insensitive, RFC 9110 §11.1). */
export function keyFromAuthorization(header: string | undefined): string | null {
  if (header === undefined) return null;
  const match = /^\s*(api-key|bearer)\s+(\S+)\s*$/i.exec(header);
  return match ? match[2]! : null;
}

export async function resolvePrincipal(db: Db, key: string): Promise<Principal | null> {
  const row = await db
    .selectFrom("api_keys")
    .leftJoin("users", "users.id", "api_keys.user_id")
    .select([
      "api_keys.prefix",
      "api_keys.category",
      "api_keys.team_id",
      "api_keys.user_id",
      "api_keys.model_ids",
      "users.is_org_admin",
    ])
    .where("api_keys.hash", "=", sha256Hex(key))
    .executeTakeFirst();
  if (!row) return null;
  const category = row.category as ApiKeyCategory;
  let teams: Map<string, TeamRole>;
  if (category === "PERSONAL" && row.user_id !== null) {
    const memberships = await db
      .selectFrom("team_members")
      .select(["team_id", "role"])
      .where("user_id", "=", row.user_id)
      .execute();
    teams = new Map(memberships.map((m) => [m.team_id, m.role as TeamRole]));
  } else {
    teams = new Map([[row.team_id, "MEMBER"]]);
  }
  return {
    key_prefix: row.prefix,
    category,
    user_id: row.user_id,
    is_org_admin: category === "PERSONAL" && row.is_org_admin === 1,
    teams,
    model_ids: row.model_ids === null ? null : (JSON.parse(row.model_ids) as string[]),
  };
}
