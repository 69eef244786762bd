// The signing keys the control plane keeps: its own Ed25519 key (in the store's meta, so every control
// replica on one PostgreSQL signs with the same key), and every public key each plane has reported
// (`plane_keys`, current and retired: issue 14's receipts stay checkable against retired keys).
//
// Trust: a plane's key is trusted because it arrives in the plane's report, over the plane's credential;
// it counts only while that credential is current. A newly reported key retires the previous one; a
// retired key is never trusted again (`plane_key_retired`).

import { MeridianError } from "../core/errors.ts";
import type { ControlKey } from "../core/snapshot.ts";
import {
  generateSigningKey,
  keyIdOf,
  privateJwkOf,
  type SigningKey,
  signingKeyFromJwk,
} from "../lib/keys.ts";
import type { PlaneRow } from "../store/schema.ts";
import type { Db, Store } from "../store/store.ts";
import type { ControlContext } from "./context.ts";

/** The meta row holding the control plane's private key as a JWK. */
export const CONTROL_KEY_META = "control_signing_key";

/** Retires every current key of a plane being deleted: it signs nothing from now on. */
export async function retirePlaneKeys(db: Db, plane: string, now: string): Promise<void> {
  await db
    .updateTable("plane_keys")
    .set({ retired_at: now })
    .where("plane", "=", plane)
    .where("retired_at", "is", null)
    .execute();
}

/**
 * Creates the control plane's key unless the store has one. Safe under concurrency: the insert does
 * nothing when another control replica's insert won, and every replica then reads the one that did.
 */
export async function ensureControlKey(store: Store, db: Db = store.db): Promise<void> {
  await db
    .insertInto("meta")
    .values({ key: CONTROL_KEY_META, value: privateJwkOf(generateSigningKey()) })
    .onConflict((oc) => oc.column("key").doNothing())
    .execute();
}

/** The public half of the stored key, without touching the private part's bytes (a JSON read). */
export function controlPublicKey(jwk: string): ControlKey {
  const x = (JSON.parse(jwk) as { x?: unknown }).x;
  if (typeof x !== "string") throw new Error("the control plane's stored key has no public part");
  return { key_id: keyIdOf(x), public_key: x };
}

export async function readControlPublicKey(store: Store, db: Db): Promise<ControlKey> {
  const jwk = await store.getMeta(CONTROL_KEY_META, db);
  if (jwk === undefined) throw new Error("the control plane has no signing key (ensureControlKey not run)");
  return controlPublicKey(jwk);
}

const signingKeys = new WeakMap<ControlContext, { jwk: string; key: SigningKey }>();

/** The key the control plane signs with, parsed once per process (and again only if the row changed). */
export async function controlSigningKey(ctx: ControlContext): Promise<SigningKey> {
  const jwk = await ctx.store.getMeta(CONTROL_KEY_META);
  if (jwk === undefined) throw new Error("the control plane has no signing key (ensureControlKey not run)");
  const cached = signingKeys.get(ctx);
  if (cached?.jwk === jwk) return cached.key;
  const key = signingKeyFromJwk(jwk);
  signingKeys.set(ctx, { jwk, key });
  return key;
}

/** What a reported key changes: nothing (it is the current one), or the plane's trusted keys. */
export type PlaneKeyChange = "unchanged" | "changed";

/**
 * Whether the key a plane reported changes its trusted keys. Throws `plane_key_retired` for a key that was
 * retired: a retired key may be compromised (that is why operators rotate), and a plane holding one is
 * told so instead of being trusted again.
 */
export async function planeKeyChange(db: Db, plane: PlaneRow, publicKey: string): Promise<PlaneKeyChange> {
  const keyId = keyIdOf(publicKey);
  const row = await db
    .selectFrom("plane_keys")
    .select(["public_key", "credential_hash", "retired_at"])
    .where("plane", "=", plane.name)
    .where("key_id", "=", keyId)
    .executeTakeFirst();
  // One key, one plane: a key file copied to another plane (a cloned data directory) would let each sign as
  // the other, possibly across regions, and would list one key id twice in the key directory.
  const elsewhere = await db
    .selectFrom("plane_keys")
    .select("plane")
    .where("key_id", "=", keyId)
    .where("plane", "!=", plane.name)
    .executeTakeFirst();
  if (elsewhere !== undefined) {
    throw new MeridianError(
      "conflict",
      `Key ${keyId} is plane ${elsewhere.plane}'s; each plane needs its own key: move plane ${plane.name}'s key file away and restart it to create one.`,
      { plane: plane.name, key_id: keyId },
    );
  }
  if (row !== undefined && row.public_key !== publicKey) {
    throw new MeridianError("conflict", `Key id ${keyId} of plane ${plane.name} names another key.`);
  }
  if (row !== undefined && row.retired_at !== null) {
    throw new MeridianError(
      "plane_key_retired",
      `Key ${keyId} of plane ${plane.name} was retired at ${row.retired_at}; move the plane's key file away and restart it to create a new key.`,
      { plane: plane.name, key_id: keyId },
    );
  }
  if (row === undefined || row.credential_hash !== plane.credential_hash) return "changed";
  const others = await db
    .selectFrom("plane_keys")
    .select("key_id")
    .where("plane", "=", plane.name)
    .where("key_id", "!=", keyId)
    .where("retired_at", "is", null)
    .executeTakeFirst();
  return others === undefined ? "unchanged" : "changed";
}

/**
 * The key directory's `valid_from` for a key first seen `now`: the time the plane says it first had the key
 * (it may have signed with it while the control plane was down), but never before the plane was registered
 * or before its last report (made with an earlier key, or none: the plane started with this key after
 * it), and never after now. Without a report of it, now. The bounds keep a stolen credential from
 * dating a new key back over what the plane really signed.
 */
export function keyValidFrom(
  plane: Pick<PlaneRow, "created_at" | "last_seen_at">,
  reported: string | undefined,
  now: string,
): string {
  const nowMs = Date.parse(now);
  const claimed = reported === undefined ? Number.NaN : Date.parse(reported);
  if (!Number.isFinite(claimed)) return now;
  const floor = Math.max(
    Date.parse(plane.created_at),
    plane.last_seen_at === null ? Number.NEGATIVE_INFINITY : Date.parse(plane.last_seen_at),
  );
  return new Date(Math.min(nowMs, Math.max(claimed, floor))).toISOString();
}

/**
 * Makes `publicKey` the plane's current key (inside the transaction that bumps the revision): every other
 * key of the plane is retired now, and the key is bound to the credential it arrived over. A key seen for
 * the first time is recorded with the plane's region and its `valid_from` (`keyValidFrom`).
 */
export async function trustPlaneKey(
  db: Db,
  plane: PlaneRow,
  publicKey: string,
  now: string,
  reportedCreatedAt?: string,
): Promise<void> {
  const keyId = keyIdOf(publicKey);
  await db
    .updateTable("plane_keys")
    .set({ retired_at: now })
    .where("plane", "=", plane.name)
    .where("key_id", "!=", keyId)
    .where("retired_at", "is", null)
    .execute();
  await db
    .insertInto("plane_keys")
    .values({
      plane: plane.name,
      key_id: keyId,
      public_key: publicKey,
      credential_hash: plane.credential_hash,
      first_seen_at: now,
      valid_from: keyValidFrom(plane, reportedCreatedAt, now),
      region: plane.region,
      retired_at: null,
    })
    .onConflict((oc) =>
      oc.columns(["plane", "key_id"]).doUpdateSet({ credential_hash: plane.credential_hash }),
    )
    .execute();
}
