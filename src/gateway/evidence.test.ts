import { createHash, generateKeyPairSync } from "node:crypto";
import { mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import type { AuditRecord } from "../core/audit-record.ts";
import {
  assembleEvidence,
  type EvidenceDocument,
  type EvidencePiece,
  type EvidenceScope,
} from "../core/evidence.ts";
import { type DirectoryKey, keyDirectory } from "../core/key-directory.ts";
import type { AuditSigningKey } from "../lib/audit-chain.ts";
import { verifyEvidence } from "../lib/evidence.ts";
import { AuditLog } from "./audit.ts";

const dirs: string[] = [];
afterEach(async () => {
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
});

function key(): AuditSigningKey & { raw: string } {
  const { privateKey, publicKey } = generateKeyPairSync("ed25519");
  const raw = publicKey.export({ format: "jwk" }).x!;
  return {
    keyId: createHash("sha256").update(Buffer.from(raw, "base64url")).digest("hex").slice(0, 16),
    privateKey,
    raw,
  };
}

const DAY_START = Date.UTC(2025, 5, 2);
const MINUTE = 60_000;
const PLANES = { "eu-1": "eu", "eu-2": "eu", "us-1": "us" } as const;
type PlaneName = keyof typeof PLANES;
const keys = Object.fromEntries(Object.keys(PLANES).map((p) => [p, key()])) as Record<
  PlaneName,
  ReturnType<typeof key>
>;
const directory = keyDirectory(
  (Object.keys(PLANES) as PlaneName[]).map(
    (p): DirectoryKey => ({
      key_id: keys[p].keyId,
      plane: p,
      region: PLANES[p],
      alg: "ed25519",
      public_key: keys[p].raw,
      valid_from: new Date(DAY_START - 30 * 86_400_000).toISOString(),
      retired_at: null,
    }),
  ),
  new Date(DAY_START + 2 * 86_400_000),
);
const regionOf = (plane: string) => PLANES[plane as PlaneName];
const scope: EvidenceScope = {
  model_id: "aaaaaaa1",
  environment: "prod-eu",
  restricted_to: "eu",
  from: new Date(DAY_START).toISOString(),
  to: new Date(DAY_START + 86_400_000).toISOString(),
};

function record(plane: PlaneName, t: number, over: Partial<AuditRecord>): AuditRecord {
  return {
    time: new Date(t).toISOString(),
    request_id: `r-${plane}-${t}`,
    model_id: "aaaaaaa1",
    environment: "prod-eu",
    deployment_id: "d1",
    hostname_form: "regional",
    route: [plane],
    status: 200,
    latency_ms: 2,
    plane,
    region: PLANES[plane],
    processed_by: plane,
    forwarded_from: null,
    error_code: null,
    aborted: false,
    ...over,
  };
}

/** A client's request as the test drives it: where it enters and what the planes record for it. */
interface ClientRequest {
  entry: PlaneName;
  processedBy: PlaneName | null;
  hostnameForm: "regional" | "standard";
}

/**
 * A compressed day of traffic: one client request a minute, regional ones into eu-1 or eu-2, standard
 * ones through us-1 handed to eu-1, some refused; and traffic the evidence must not count (other models,
 * the day before and after). Each plane's audit writes what its ingress would.
 */
async function dayOfTraffic(extra: (logs: Record<PlaneName, AuditLog>) => void = () => {}) {
  let now = DAY_START - 3600_000;
  const logs = {} as Record<PlaneName, AuditLog>;
  const auditDirs = {} as Record<PlaneName, string>;
  for (const p of Object.keys(PLANES) as PlaneName[]) {
    const dir = await mkdtemp(join(tmpdir(), `meridian-evidence-${p}-`));
    dirs.push(dir);
    auditDirs[p] = dir;
    logs[p] = new AuditLog({
      dir,
      plane: { name: p, region: PLANES[p] },
      signingKey: keys[p],
      rotateIntervalMs: 6 * 3600_000,
      now: () => now,
    });
    await logs[p].start();
  }
  const sent: ClientRequest[] = [];
  for (let m = -30; m < 24 * 60 + 30; m++) {
    now = DAY_START + m * MINUTE;
    const inDay = m >= 0 && m < 24 * 60;
    const kind = ((m % 7) + 7) % 7;
    const r: ClientRequest =
      kind === 6
        ? { entry: "us-1", processedBy: "eu-1", hostnameForm: "standard" }
        : kind === 5
          ? { entry: "eu-2", processedBy: null, hostnameForm: "regional" }
          : {
              entry: kind % 2 === 0 ? "eu-1" : "eu-2",
              processedBy: kind % 2 === 0 ? "eu-1" : "eu-2",
              hostnameForm: "regional",
            };
    const common = { hostname_form: r.hostnameForm } as const;
    if (r.processedBy === null) {
      logs[r.entry].record(
        record(r.entry, now, { ...common, processed_by: null, status: 503, error_code: "model_unavailable" }),
      );
    } else if (r.entry === r.processedBy) {
      logs[r.entry].record(record(r.entry, now, common));
    } else {
      const route = [r.entry, r.processedBy];
      logs[r.entry].record(record(r.entry, now, { ...common, route, processed_by: r.processedBy }));
      logs[r.processedBy].record(
        record(r.processedBy, now + 3, {
          ...common,
          route,
          forwarded_from: r.entry,
          processed_by: r.processedBy,
        }),
      );
    }
    // Another model's traffic on the same planes.
    logs["eu-1"].record(record("eu-1", now, { model_id: "bbbbbbb2" }));
    if (inDay) sent.push(r);
    if (m % 60 === 0) for (const l of Object.values(logs)) await l.flush();
  }
  extra(logs);
  now = DAY_START + 86_400_000 + 3600_000;
  for (const l of Object.values(logs)) await l.flush();
  return { logs, sent, auditDirs };
}

async function pieces(logs: Record<PlaneName, AuditLog>): Promise<EvidencePiece[]> {
  const out: EvidencePiece[] = [];
  for (const l of Object.values(logs)) out.push(await l.evidencePiece(scope, regionOf));
  return out;
}

function reSigned(doc: EvidenceDocument): EvidenceDocument {
  return JSON.parse(JSON.stringify(doc)) as EvidenceDocument;
}

describe("evidence", () => {
  it("verifies a day of traffic, and its counts are what the clients sent", async () => {
    const { logs, sent } = await dayOfTraffic();
    const ps = await pieces(logs);
    for (const l of Object.values(logs)) await l.stop();
    const doc = assembleEvidence(scope, ps, [], new Date(DAY_START + 86_400_000 + 3600_000));
    // Through JSON, as the control plane serves it: canonical signing makes key order irrelevant.
    const check = verifyEvidence(reSigned(doc), directory);
    expect(check.problems).toEqual([]);
    expect(check.ok).toBe(true);

    const byEntryAndProcessor = new Map<string, number>();
    for (const r of sent) {
      const k = `${r.entry}>${r.processedBy}>${r.hostnameForm}`;
      byEntryAndProcessor.set(k, (byEntryAndProcessor.get(k) ?? 0) + 1);
    }
    expect(doc.totals.client_requests).toBe(sent.length);
    const clientView = new Map<string, number>();
    for (const p of doc.pieces) {
      for (const c of p.counts) {
        if (c.forwarded_from !== null) continue;
        const k = `${p.plane}>${c.processed_by}>${c.hostname_form}`;
        clientView.set(k, (clientView.get(k) ?? 0) + c.count);
      }
    }
    expect(clientView).toEqual(byEntryAndProcessor);
    // The hops eu-1 received from us-1 are counted there too, as forwarded.
    const hops = sent.filter((r) => r.entry === "us-1").length;
    const eu1 = doc.pieces.find((p) => p.plane === "eu-1")!;
    expect(eu1.counts.filter((c) => c.forwarded_from === "us-1").reduce((n, c) => n + c.count, 0)).toBe(hops);
    expect(doc.totals.records).toBe(sent.length + hops);
    expect(doc.totals.out_of_region).toBe(0);
    expect(eu1.chain.intact).toBe(true);
    expect(eu1.chain.batches).toBeGreaterThan(20);
    // Nothing request-level left the planes: no piece lists a record.
    for (const p of doc.pieces) expect(p.out_of_region).toEqual([]);
  });

  it("names out-of-region processing, which fails the document", async () => {
    const { logs } = await dayOfTraffic((l) => {
      // us-1 processes a prod-eu request on its own replica: the guarantee was broken.
      l["us-1"].record(
        record("us-1", DAY_START + 5 * MINUTE + 1, { hostname_form: "standard", request_id: "oops" }),
      );
    });
    const ps = await pieces(logs);
    for (const l of Object.values(logs)) await l.stop();
    const us1 = ps.find((p) => p.plane === "us-1")!;
    expect(us1.out_of_region.map((r) => r.request_id)).toEqual(["oops"]);
    const check = verifyEvidence(assembleEvidence(scope, ps, [], new Date()), directory);
    expect(check.ok).toBe(false);
    expect(check.problems).toEqual(["1 request(s) of prod-eu were processed outside region eu"]);
  });

  it("fails when a piece is altered, re-signed by another plane, missing or its chain broken", async () => {
    const { logs, auditDirs } = await dayOfTraffic();
    const ps = await pieces(logs);
    const doc = assembleEvidence(scope, ps, [], new Date());

    const altered = reSigned(doc);
    altered.pieces[0]!.counts[0]!.count += 1;
    altered.pieces[0]!.requests += 1;
    expect(verifyEvidence(altered, directory).problems[0]).toMatch(/its signature does not verify/);

    const stolen = reSigned(doc);
    const eu2 = stolen.pieces.find((p) => p.plane === "eu-2")!;
    eu2.signature = { ...eu2.signature!, keyid: keys["us-1"].keyId };
    expect(verifyEvidence(stolen, directory).problems[0]).toMatch(/signed with key .* of plane us-1/);

    const missing = assembleEvidence(
      scope,
      ps.filter((p) => p.plane !== "eu-2"),
      [],
      new Date(),
    );
    expect(verifyEvidence(missing, directory).problems).toEqual([
      "plane eu-2 had a key during the range but gave no piece",
    ]);
    const unreachable = assembleEvidence(
      scope,
      ps.filter((p) => p.plane !== "eu-2"),
      ["eu-2"],
      new Date(),
    );
    expect(verifyEvidence(unreachable, directory).problems).toEqual([
      "plane eu-2 did not answer: its requests are not in the document",
    ]);

    const totals = reSigned(doc);
    totals.totals.client_requests -= 1;
    expect(verifyEvidence(totals, directory).problems).toEqual([
      "the document's totals are not the sum of its pieces",
    ]);

    const otherScope = reSigned(doc);
    otherScope.scope.environment = "prod-us";
    expect(verifyEvidence(otherScope, directory).problems[0]).toMatch(/its scope is not the document's/);

    // Someone edits eu-1's audit file on disk: eu-1's next piece says its chain is broken.
    const dir = auditDirs["eu-1"];
    const file = (await readdir(dir)).filter((n) => n.startsWith("audit-")).sort()[1]!;
    const text = await readFile(join(dir, file), "utf8");
    await writeFile(join(dir, file), text.replace('"status":200', '"status":500'));
    const broken = await logs["eu-1"].evidencePiece(scope, regionOf);
    expect(broken.chain).toMatchObject({ intact: false });
    expect(broken.chain.break).toMatch(/^record_modified at audit-/);
    const withBroken = assembleEvidence(
      scope,
      [broken, ...ps.filter((p) => p.plane !== "eu-1")],
      [],
      new Date(),
    );
    expect(verifyEvidence(withBroken, directory).problems[0]).toMatch(
      /its plane found its audit chain broken/,
    );
    for (const l of Object.values(logs)) await l.stop();
  });

  it("refuses an unsigned piece (a plane without a key) and anything that is not a document", async () => {
    const dir = await mkdtemp(join(tmpdir(), "meridian-evidence-bare-"));
    dirs.push(dir);
    const log = new AuditLog({ dir, plane: { name: "eu-1", region: "eu" } });
    await log.start();
    const piece = await log.evidencePiece(scope, regionOf);
    await log.stop();
    expect(piece.signature).toBeNull();
    const check = verifyEvidence(assembleEvidence(scope, [piece], [], new Date()), directory);
    expect(check.problems[0]).toBe("piece 0 (plane eu-1): it is not signed");
    expect(verifyEvidence({ kind: "other" }, directory)).toMatchObject({ ok: false });
    expect(verifyEvidence(null, directory)).toMatchObject({ ok: false });
  });
});
