// Residency evidence through the management API (issue 14, items 1 and 4; DESIGN.md §2.10): the key
// directory, built from every key planes have reported (retired ones kept), and an environment's evidence
// document, assembled from the signed pieces every plane makes from its own audit, fetched on demand from
// the planes' operator listeners with the control plane's signed request, as replica logs are. The control
// plane stores none of it: a piece holds counts and chain heads, and request-level records only where the
// region's guarantee was broken (DESIGN.md §2.9).

import { request } from "undici";
import type { Principal } from "../core/access.ts";
import { MeridianError } from "../core/errors.ts";
import {
  assembleEvidence,
  EVIDENCE_PIECE_KIND,
  type EvidenceDocument,
  type EvidencePiece,
  type EvidenceScope,
} from "../core/evidence.ts";
import { evidenceQuery, parseEvidenceRange } from "../core/evidence-scope.ts";
import { type KeyDirectory, keyDirectory } from "../core/key-directory.ts";
import { CONTROL_ACCESS_HEADER, signControlAccess } from "../lib/control-access.ts";
import type { SigningKey } from "../lib/keys.ts";
import type { ControlContext } from "./context.ts";
import { controlSigningKey } from "./keys.ts";
import { loadModel, requireCapability } from "./lookup.ts";

/**
 * How long one plane may take to make its piece before it counts as unreachable: it reads and checks
 * every audit batch of the range, which for a day of a busy plane is seconds, not milliseconds.
 */
const PIECE_TIMEOUT_MS = 60_000;
/**
 * The largest piece taken from a plane. A piece is counts (a few per plane) and out-of-region records,
 * which must be none; a plane answering more is refused rather than buffered without end.
 */
const PIECE_MAX_BYTES = 16 * 1024 * 1024;

/**
 * Every plane key the control plane has been told of, current and retired, with its plane's region and
 * validity (src/core/key-directory.ts). Public, like a JWKS: it holds public keys only, and an auditor
 * must get it without an account. Keys of planes deleted before their region was recorded (migration
 * 0008) have no region to vouch for and are left out.
 */
export async function keyDirectoryDocument(ctx: ControlContext): Promise<KeyDirectory> {
  const rows = await ctx.store.db
    .selectFrom("plane_keys")
    .select(["key_id", "plane", "region", "public_key", "valid_from", "first_seen_at", "retired_at"])
    .where("region", "is not", null)
    .orderBy("plane")
    .orderBy("valid_from")
    .orderBy("key_id")
    .execute();
  return keyDirectory(
    rows.map((r) => ({
      key_id: r.key_id,
      plane: r.plane,
      region: r.region!,
      alg: "ed25519" as const,
      public_key: r.public_key,
      valid_from: r.valid_from ?? r.first_seen_at,
      retired_at: r.retired_at,
    })),
    new Date(ctx.now()),
  );
}

export interface EvidenceQuery {
  from?: string;
  to?: string;
}

/**
 * The evidence document of one environment for [from, to) (default: the day before now). Every plane is
 * asked, not only the region's: out-of-region processing is recorded only by the plane that did it, most
 * likely a global ingress plane outside the region. A plane that does not answer, and a deleted plane
 * that had a key during the range, are named in `unreachable_planes`, and the document does not verify.
 * The region is the group's restriction now: a restriction changed during the range is judged by the
 * current one (docs/evidence.md).
 */
export async function environmentEvidence(
  ctx: ControlContext,
  p: Principal,
  modelId: string,
  envName: string,
  query: EvidenceQuery,
): Promise<EvidenceDocument> {
  requireCapability(p, "read");
  const db = ctx.store.db;
  const model = await loadModel(db, p, modelId);
  const env = await db
    .selectFrom("environments")
    .select("name")
    .where("model_id", "=", model.id)
    .where("name", "=", envName)
    .executeTakeFirst();
  if (!env) {
    throw new MeridianError("environment_not_found", `Model ${model.id} has no environment '${envName}'.`);
  }
  const range = parseEvidenceRange(query, Date.parse(ctx.now()));
  if (!range.ok) throw new MeridianError("invalid_request", range.message, { field: range.field });
  const group = await db
    .selectFrom("environment_groups")
    .select("region")
    .where("team_id", "=", model.team_id)
    .where("name", "=", envName)
    .executeTakeFirst();
  const scope: EvidenceScope = {
    model_id: model.id,
    environment: envName,
    restricted_to: group?.region ?? null,
    from: range.from,
    to: range.to,
  };
  const [planes, keys, key] = await Promise.all([
    db.selectFrom("planes").select(["name", "admin_url"]).orderBy("name").execute(),
    db
      .selectFrom("plane_keys")
      .select(["plane", "valid_from", "retired_at"])
      .where("region", "is not", null)
      .execute(),
    controlSigningKey(ctx),
  ]);
  const pieces: EvidencePiece[] = [];
  const unreachable: string[] = [];
  await Promise.all(
    planes.map(async ({ name, admin_url }) => {
      try {
        if (admin_url === null) throw new Error("the plane has not reported an admin_url");
        pieces.push(await fetchPiece(admin_url, key, name, scope));
      } catch (err) {
        ctx.logger.warn({ plane: name, err: (err as Error).message }, "evidence piece unavailable");
        unreachable.push(name);
      }
    }),
  );
  // A plane deleted since: its keys are kept (and retired), so the range may need its piece, which no one
  // can ask for any more. Named, so the document says why it does not verify.
  const registered = new Set(planes.map((x) => x.name));
  const from = Date.parse(scope.from);
  const to = Date.parse(scope.to);
  for (const k of keys) {
    if (registered.has(k.plane) || unreachable.includes(k.plane)) continue;
    const end = k.retired_at === null ? Number.POSITIVE_INFINITY : Date.parse(k.retired_at);
    if (Date.parse(k.valid_from) < to && end > from) unreachable.push(k.plane);
  }
  pieces.sort((a, b) => (a.plane < b.plane ? -1 : a.plane > b.plane ? 1 : 0));
  return assembleEvidence(scope, pieces, unreachable, new Date(ctx.now()));
}

/** One plane's signed piece, asked with the control plane's signature (bound to the plane and the query). */
async function fetchPiece(
  adminUrl: string,
  key: SigningKey,
  plane: string,
  scope: EvidenceScope,
): Promise<EvidencePiece> {
  const target = `/v1/evidence?${evidenceQuery(scope)}`;
  const res = await request(`${adminUrl}${target}`, {
    method: "GET",
    headers: {
      [CONTROL_ACCESS_HEADER]: signControlAccess(key, { plane, method: "GET", target }, Date.now()),
    },
    headersTimeout: PIECE_TIMEOUT_MS,
    bodyTimeout: PIECE_TIMEOUT_MS,
    signal: AbortSignal.timeout(PIECE_TIMEOUT_MS),
  });
  if (res.statusCode !== 200) {
    await res.body.dump();
    throw new Error(`the plane answered ${res.statusCode}`);
  }
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of res.body) {
    size += (chunk as Buffer).length;
    if (size > PIECE_MAX_BYTES) {
      res.body.destroy();
      throw new Error(`the plane's piece is larger than ${PIECE_MAX_BYTES} bytes`);
    }
    chunks.push(chunk as Buffer);
  }
  const piece = JSON.parse(Buffer.concat(chunks).toString("utf8")) as EvidencePiece;
  // Only the shape is checked here: whether the plane signed it, for this scope, is the verifier's
  // business (`meridian verify --evidence`), which trusts nothing the control plane says.
  if (typeof piece !== "object" || piece === null || piece.kind !== EVIDENCE_PIECE_KIND) {
    throw new Error("the plane's answer is not an evidence piece");
  }
  if (piece.plane !== plane)
    throw new Error(`the plane answered with a piece of plane ${String(piece.plane)}`);
  return piece;
}
