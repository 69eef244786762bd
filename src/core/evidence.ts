// Residency evidence (issue 14, item 4; DESIGN.md §2.10): each plane's signed piece, made from its own
// audit for one environment and time range (counts by processing region and plane, the chain heads covered,
// every record of out-of-region processing), the document the control plane assembles from the pieces
// without holding request-level records, and the offline check of that document. Pure: signatures are
// checked through a function the caller passes.

import type { AuditRecord } from "./audit-record.ts";
import { canonicalJson } from "./canonical-json.ts";
import type { HostnameForm } from "./domain.ts";
import { findKey, type KeyDirectory, validityOf } from "./key-directory.ts";

export interface EvidenceScope {
  model_id: string;
  environment: string;
  /** The region the environment's group is restricted to; null when it is not (nothing is then claimed). */
  restricted_to: string | null;
  /** ISO 8601, inclusive. */
  from: string;
  /** ISO 8601, exclusive. */
  to: string;
}

export interface EvidenceCount {
  /** Region of the plane that processed the requests; null when none did, or its region is unknown. */
  processed_region: string | null;
  processed_by: string | null;
  hostname_form: HostnameForm | null;
  /** The plane that handed them over a hop; null when clients sent them to this plane. */
  forwarded_from: string | null;
  count: number;
}

/** The part of the plane's hash chain the piece's records come from. */
export interface ChainCoverage {
  /** The first covered seal's seq and prev (the head before it), and the last covered seal. */
  first: { seq: number; prev: string } | null;
  last: { seq: number; hash: string } | null;
  batches: number;
  unsigned_batches: number;
  /** The plane's own check of those batches: every hash, link and signature holds. */
  intact: boolean;
  /** Where it broke, when it did. */
  break: string | null;
}

export const EVIDENCE_PIECE_KIND = "meridian-evidence-piece";
export const EVIDENCE_KIND = "meridian-evidence";

export interface PieceSignature {
  alg: "ed25519";
  keyid: string;
  /** Ed25519 (base64url) of `pieceMessage(piece)`. */
  value: string;
}

export interface EvidencePiece {
  kind: typeof EVIDENCE_PIECE_KIND;
  version: 1;
  plane: string;
  region: string;
  scope: EvidenceScope;
  generated_at: string;
  /** Records of the scope in this plane's audit: the sum of `counts`. */
  requests: number;
  counts: EvidenceCount[];
  /** Every record of a request of the scope processed outside `restricted_to`. There must be none. */
  out_of_region: AuditRecord[];
  chain: ChainCoverage;
  signature: PieceSignature | null;
}

export interface EvidenceTotals {
  /** Requests recorded by any plane (a hop is recorded by both planes). */
  records: number;
  /** Requests as clients sent them: recorded by the plane they entered at, so each is counted once. */
  client_requests: number;
  counts: EvidenceCount[];
  out_of_region: number;
}

export interface EvidenceDocument {
  kind: typeof EVIDENCE_KIND;
  version: 1;
  scope: EvidenceScope;
  generated_at: string;
  pieces: EvidencePiece[];
  /** Planes asked for a piece that did not give one: without them the document is incomplete. */
  unreachable_planes: string[];
  totals: EvidenceTotals;
}

/** Whether a record belongs to the scope: its model and environment, and arrived in [from, to). */
export function inScope(r: AuditRecord, scope: EvidenceScope): boolean {
  if (r.model_id !== scope.model_id || r.environment !== scope.environment) return false;
  const t = Date.parse(r.time);
  return t >= Date.parse(scope.from) && t < Date.parse(scope.to);
}

/** The region a record's request was processed in: the recording plane's, a peer's, or null (none, unknown). */
export function processedRegion(
  r: AuditRecord,
  regionOf: (plane: string) => string | undefined,
): string | null {
  if (r.processed_by === null) return null;
  if (r.processed_by === r.plane) return r.region;
  return regionOf(r.processed_by) ?? null;
}

/**
 * Out-of-region processing: a request of a restricted environment that some plane processed, where that
 * plane is not in the restriction's region, or its region cannot be told (fail closed).
 */
export function isOutOfRegion(
  count: Pick<EvidenceCount, "processed_by" | "processed_region">,
  scope: EvidenceScope,
): boolean {
  return (
    scope.restricted_to !== null &&
    count.processed_by !== null &&
    count.processed_region !== scope.restricted_to
  );
}

export interface Summary {
  requests: number;
  counts: EvidenceCount[];
  out_of_region: AuditRecord[];
}

/** Counts and out-of-region records of a scope, record by record (a day of a busy plane does not fit in memory). */
export class Summarizer {
  readonly #counts = new Map<string, EvidenceCount>();
  readonly #out: AuditRecord[] = [];
  #requests = 0;

  constructor(
    readonly scope: EvidenceScope,
    readonly regionOf: (plane: string) => string | undefined,
  ) {}

  add(r: AuditRecord): void {
    if (!inScope(r, this.scope)) return;
    this.#requests++;
    const c: EvidenceCount = {
      processed_region: processedRegion(r, this.regionOf),
      processed_by: r.processed_by,
      hostname_form: r.hostname_form,
      forwarded_from: r.forwarded_from,
      count: 1,
    };
    const key = countKey(c);
    const seen = this.#counts.get(key);
    if (seen === undefined) this.#counts.set(key, c);
    else seen.count++;
    if (isOutOfRegion(c, this.scope)) this.#out.push(r);
  }

  /** In a stable order. */
  result(): Summary {
    return {
      requests: this.#requests,
      counts: sortCounts([...this.#counts.values()]),
      out_of_region: [...this.#out],
    };
  }
}

function countKey(c: EvidenceCount): string {
  return JSON.stringify([c.processed_region, c.processed_by, c.hostname_form, c.forwarded_from]);
}

function sortCounts(counts: EvidenceCount[]): EvidenceCount[] {
  return counts.sort((a, b) => (countKey(a) < countKey(b) ? -1 : countKey(a) > countKey(b) ? 1 : 0));
}

/** Sums counts with the same key. */
export function mergeCounts(lists: Iterable<readonly EvidenceCount[]>): EvidenceCount[] {
  const merged = new Map<string, EvidenceCount>();
  for (const list of lists) {
    for (const c of list) {
      const seen = merged.get(countKey(c));
      if (seen === undefined) merged.set(countKey(c), { ...c });
      else seen.count += c.count;
    }
  }
  return sortCounts([...merged.values()]);
}

/** What a plane signs for its piece (RFC 8785 canonical JSON, so any JSON re-serialization still verifies). */
export function pieceMessage(piece: EvidencePiece): string {
  return `${EVIDENCE_PIECE_KIND}/1\n${canonicalJson({ ...piece, signature: undefined })}`;
}

/** The document the control plane serves: the pieces as the planes signed them, and their totals. */
export function assembleEvidence(
  scope: EvidenceScope,
  pieces: readonly EvidencePiece[],
  unreachablePlanes: readonly string[],
  generatedAt: Date,
): EvidenceDocument {
  return {
    kind: EVIDENCE_KIND,
    version: 1,
    scope,
    generated_at: generatedAt.toISOString(),
    pieces: [...pieces],
    unreachable_planes: [...unreachablePlanes].sort(),
    totals: totalsOf(pieces, scope),
  };
}

function totalsOf(pieces: readonly EvidencePiece[], scope: EvidenceScope): EvidenceTotals {
  const counts = mergeCounts(pieces.map((p) => p.counts));
  return {
    records: counts.reduce((n, c) => n + c.count, 0),
    client_requests: counts.filter((c) => c.forwarded_from === null).reduce((n, c) => n + c.count, 0),
    counts,
    out_of_region: counts.filter((c) => isOutOfRegion(c, scope)).reduce((n, c) => n + c.count, 0),
  };
}

export type SignatureCheck = (publicKey: string, message: string, signature: string) => boolean;

export interface EvidenceCheck {
  ok: boolean;
  /** Each reason the document does not hold, first found first. */
  problems: string[];
  totals: EvidenceTotals | null;
  planes: Array<{ plane: string; region: string; keyId: string; requests: number }>;
}

/**
 * Checks an evidence document offline: every piece signed by a key of its plane valid when it was made,
 * for the document's scope; its counts add up and agree with its out-of-region records; its chain heads
 * are consistent and its plane found its chain intact; the totals are the pieces' sums; every plane with a
 * key valid during the range gave a piece (out-of-region processing is recorded only by the plane that did
 * it); and no request was processed outside the region.
 */
export function checkEvidence(
  doc: unknown,
  directory: KeyDirectory,
  verifySignature: SignatureCheck,
): EvidenceCheck {
  const problems: string[] = [];
  const planes: EvidenceCheck["planes"] = [];
  const d = doc as EvidenceDocument;
  if (typeof d !== "object" || d === null || d.kind !== EVIDENCE_KIND || d.version !== 1) {
    return {
      ok: false,
      problems: [`not an evidence document (kind "${EVIDENCE_KIND}", version 1)`],
      totals: null,
      planes,
    };
  }
  if (!Array.isArray(d.pieces) || !isScope(d.scope) || !Array.isArray(d.unreachable_planes)) {
    return {
      ok: false,
      problems: ["the document lacks its scope, pieces or unreachable_planes"],
      totals: null,
      planes,
    };
  }
  const scope = d.scope;
  const seen = new Set<string>();
  for (const [i, p] of d.pieces.entries()) {
    const name = typeof p?.plane === "string" ? `piece ${i} (plane ${p.plane})` : `piece ${i}`;
    const problem = checkPiece(p, scope, directory, verifySignature);
    if (problem !== null) {
      problems.push(`${name}: ${problem}`);
      continue;
    }
    if (seen.has(p.plane)) problems.push(`${name}: a second piece from the same plane`);
    seen.add(p.plane);
    planes.push({ plane: p.plane, region: p.region, keyId: p.signature!.keyid, requests: p.requests });
  }
  const from = Math.floor(Date.parse(scope.from) / 1000);
  const to = Math.floor(Date.parse(scope.to) / 1000);
  const expected = new Set(
    directory.keys
      .filter((k) => {
        const start = Math.floor(Date.parse(k.valid_from) / 1000);
        const end =
          k.retired_at === null ? Number.POSITIVE_INFINITY : Math.floor(Date.parse(k.retired_at) / 1000);
        return start < to && end > from;
      })
      .map((k) => k.plane),
  );
  for (const plane of [...expected].sort()) {
    if (seen.has(plane)) continue;
    problems.push(
      d.unreachable_planes.includes(plane)
        ? `plane ${plane} did not answer: its requests are not in the document`
        : `plane ${plane} had a key during the range but gave no piece`,
    );
  }
  const valid = d.pieces.filter((p) => planes.some((x) => x.plane === p?.plane));
  const totals = totalsOf(valid, scope);
  if (canonicalJson(totals) !== canonicalJson(d.totals)) {
    problems.push("the document's totals are not the sum of its pieces");
  }
  if (totals.out_of_region > 0) {
    problems.push(
      `${totals.out_of_region} request(s) of ${scope.environment} were processed outside region ${scope.restricted_to}`,
    );
  }
  return { ok: problems.length === 0, problems, totals, planes };
}

function checkPiece(
  p: EvidencePiece,
  scope: EvidenceScope,
  directory: KeyDirectory,
  verifySignature: SignatureCheck,
): string | null {
  if (typeof p !== "object" || p === null || p.kind !== EVIDENCE_PIECE_KIND || p.version !== 1) {
    return "not an evidence piece";
  }
  if (!isScope(p.scope) || canonicalJson(p.scope) !== canonicalJson(scope))
    return "its scope is not the document's";
  if (p.signature === null || typeof p.signature !== "object") return "it is not signed";
  const at = Math.floor(Date.parse(p.generated_at) / 1000);
  if (!Number.isFinite(at)) return "generated_at is not a time";
  const found = findKey(directory, p.signature.keyid, at);
  if (!found.ok) {
    return found.reason === "unknown_key"
      ? `key ${p.signature.keyid} is not in the key directory`
      : `key ${p.signature.keyid} was not valid at ${p.generated_at} (${validityOf(found.key)})`;
  }
  if (found.key.plane !== p.plane || found.key.region !== p.region) {
    return `signed with key ${found.key.key_id} of plane ${found.key.plane} (${found.key.region}), not of plane ${p.plane} (${p.region})`;
  }
  if (
    p.signature.alg !== "ed25519" ||
    !verifySignature(found.key.public_key, pieceMessage(p), p.signature.value)
  ) {
    return "its signature does not verify: the piece is not what the plane signed";
  }
  // Signed by its plane: from here on, a problem is the plane's own statement, not a forgery.
  if (!Array.isArray(p.counts) || !Array.isArray(p.out_of_region)) return "counts or out_of_region missing";
  const sum = p.counts.reduce((n, c) => n + c.count, 0);
  if (p.counts.some((c) => !Number.isSafeInteger(c.count) || c.count <= 0) || sum !== p.requests) {
    return `its counts add up to ${sum}, not the ${p.requests} requests it states`;
  }
  if (p.out_of_region.some((r) => !inScope(r, scope) || r.processed_by === null)) {
    return "it lists an out-of-region record outside its scope, or one no plane processed";
  }
  const outside = p.counts.filter((c) => isOutOfRegion(c, scope)).reduce((n, c) => n + c.count, 0);
  if (outside !== p.out_of_region.length) {
    return `it counts ${outside} out-of-region requests but lists ${p.out_of_region.length} records of them`;
  }
  const c = p.chain;
  if (typeof c !== "object" || c === null) return "no chain coverage";
  if ((c.first === null) !== (c.last === null)) return "its chain coverage has one end only";
  if (c.first !== null && c.last !== null && c.last.seq - c.first.seq + 1 !== c.batches) {
    return `its chain covers seals ${c.first.seq}–${c.last.seq} but states ${c.batches} batches`;
  }
  if (c.first === null && p.requests > 0) return "it counts requests but covers no batch of its chain";
  if (!c.intact) return `its plane found its audit chain broken: ${c.break ?? "(no detail)"}`;
  return null;
}

function isScope(s: unknown): s is EvidenceScope {
  const x = s as EvidenceScope;
  return (
    typeof x === "object" &&
    x !== null &&
    typeof x.model_id === "string" &&
    typeof x.environment === "string" &&
    (x.restricted_to === null || typeof x.restricted_to === "string") &&
    Number.isFinite(Date.parse(x.from)) &&
    Number.isFinite(Date.parse(x.to))
  );
}
