// Temporary upload credentials, as Baseten's `prepare_model_upload` hands out STS credentials: an access
// key id, a secret and a session token, good for one upload target (bucket + key), for one hour, and for
// one stored object. Only the session token's hash is kept; the secret is kept because SigV4 is an HMAC.

import { createHash, randomBytes } from "node:crypto";
import type { Db } from "../../store/store.ts";

/** The one bucket of the endpoint; any other bucket name is refused. */
export const UPLOAD_BUCKET = "meridian-uploads";
/**
 * The region credentials are scoped to. S3 clients with no region configured sign for us-east-1, so that
 * is the one that needs no client setting at all; Meridian's own regions are about inference, not uploads.
 */
export const UPLOAD_REGION = "us-east-1";
/** As long as an STS session's default; a push uploads right after it prepares. */
export const CREDENTIAL_TTL_MS = 60 * 60 * 1000;

const BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

export interface IssuedCredentials {
  aws_access_key_id: string;
  aws_secret_access_key: string;
  aws_session_token: string;
  expires_at: string;
}

export function tokenHash(token: string): string {
  return createHash("sha256").update(token).digest("hex");
}

/** An access key id shaped like AWS's (20 characters, upper-case base32), prefixed to say whose it is. */
function newAccessKeyId(): string {
  const bytes = randomBytes(16);
  let id = "MRDN";
  for (const b of bytes) id += BASE32[b & 31];
  return id;
}

/** Issues credentials for `artifactKey` inside the caller's transaction (the target is created in it too). */
export async function issueCredentials(
  db: Db,
  target: { artifactKey: string; teamId: string },
  nowIso: string,
): Promise<IssuedCredentials> {
  const creds = {
    aws_access_key_id: newAccessKeyId(),
    aws_secret_access_key: randomBytes(30).toString("base64"),
    aws_session_token: `mrdn.${randomBytes(32).toString("base64url")}`,
    expires_at: new Date(Date.parse(nowIso) + CREDENTIAL_TTL_MS).toISOString(),
  };
  await db
    .insertInto("s3_credentials")
    .values({
      access_key_id: creds.aws_access_key_id,
      secret_access_key: creds.aws_secret_access_key,
      session_token_hash: tokenHash(creds.aws_session_token),
      artifact_key: target.artifactKey,
      team_id: target.teamId,
      region: UPLOAD_REGION,
      expires_at: creds.expires_at,
      created_at: nowIso,
    })
    .execute();
  return creds;
}
