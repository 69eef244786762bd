// `up`'s CA and the keeper of the planes' certificate directories, on real files: what each plane holds after
// a snapshot, a restriction that moves, hand-made strays, unfinished writes, renewals, and what is never
// issued (wildcards). Served by real planes in test/e2e/tls.test.ts.

import { X509Certificate } from "node:crypto";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { DnsSnapshot } from "../core/snapshot.ts";
import {
  type CertificateAuthority,
  ensureLocalCa,
  ensurePlaneCertificate,
  issueCertificate,
  loadCertificateAuthority,
  reasonToReissue,
} from "./tls.ts";
import { TlsKeeper } from "./tls-keeper.ts";

const D = "meridian.internal";
const ID = "abcd1234";
const EU = `model-${ID}-prod-eu.${D}`;
const STD = `model-${ID}.${D}`;

function snapshot(region: string, revision = 1): DnsSnapshot {
  return {
    revision,
    domain: D,
    global_ingress: ["127.0.1.1"],
    regions: { us: ["127.0.1.1"], eu: ["127.0.2.1"], uk: ["127.0.3.1"] },
    models: [{ id: ID, regional_environments: [{ name: "prod-eu", region }] }],
  };
}

describe("up's certificates", () => {
  let root: string;
  let ca: CertificateAuthority;

  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), "meridian-up-tls-"));
    ca = (await ensureLocalCa(join(root, "tls"), D)).ca;
  });
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  it("keeps its CA across starts, key 0600, and deletes the wildcard certificate of earlier versions", async () => {
    const dir = join(root, "tls");
    for (const f of ["server.pem", "server-key.pem", "server.covers"]) writeFileSync(join(dir, f), "legacy");
    const before = readFileSync(join(dir, "ca.pem"), "utf8");
    const again = await ensureLocalCa(dir, D);
    expect(readFileSync(again.caFile, "utf8")).toBe(before);
    expect(readdirSync(dir).sort()).toEqual(["ca-key.pem", "ca.pem"]);
    expect(statSync(join(dir, "ca-key.pem")).mode & 0o777).toBe(0o600);
  });

  it("issues for exactly one hostname or a plane's addresses, never a wildcard", async () => {
    const leaf = await issueCertificate(ca, { kind: "hostname", hostname: EU }, 90);
    const x = new X509Certificate(leaf.cert);
    expect(x.subjectAltName).toBe(`DNS:${EU}`);
    expect(x.checkIssued(ca.node) && x.verify(ca.node.publicKey)).toBe(true);
    expect(x.ca).toBe(false);
    const own = await issueCertificate(ca, { kind: "addresses", plane: "eu-1", ips: ["127.0.2.1"] }, 397);
    expect(new X509Certificate(own.cert).subjectAltName).toBe("IP Address:127.0.2.1");
    await expect(issueCertificate(ca, { kind: "hostname", hostname: `*.${D}` }, 90)).rejects.toThrow(
      "wildcard",
    );
  });

  it("says why a pair on disk must be issued again", async () => {
    const leaf = await issueCertificate(ca, { kind: "hostname", hostname: EU }, 90);
    const other = await issueCertificate(ca, { kind: "hostname", hostname: STD }, 90);
    const subject = { kind: "hostname", hostname: EU } as const;
    const now = new Date();
    expect(reasonToReissue(ca, leaf.cert, leaf.key, subject, now)).toBeNull();
    expect(reasonToReissue(ca, other.cert, other.key, subject, now)).toMatch(/^names DNS:model-abcd1234\./);
    expect(reasonToReissue(ca, leaf.cert, other.key, subject, now)).toBe("the key is not the certificate's");
    expect(reasonToReissue(ca, "junk", leaf.key, subject, now)).toBe("not a certificate");
    expect(reasonToReissue(ca, leaf.cert, leaf.key, subject, new Date(now.getTime() + 61 * 86_400_000))).toBe(
      "expires soon",
    );
    const foreign = (await ensureLocalCa(join(root, "other-ca"), D)).ca;
    expect(reasonToReissue(foreign, leaf.cert, leaf.key, subject, now)).toBe("not issued by this CA");
  });

  it("loads an operator's CA only with its own key", async () => {
    const other = join(root, "other-ca");
    await expect(
      loadCertificateAuthority(
        readFileSync(join(root, "tls", "ca.pem"), "utf8"),
        readFileSync(join(other, "ca-key.pem"), "utf8"),
      ),
    ).rejects.toThrow("does not belong");
    const leaf = await issueCertificate(ca, { kind: "hostname", hostname: EU }, 90);
    await expect(loadCertificateAuthority(leaf.cert, leaf.key)).rejects.toThrow("not a CA");
  });

  it("renews a plane's own certificate only when it must", async () => {
    const dir = join(root, "plane-eu");
    mkdirSync(dir);
    const first = await ensurePlaneCertificate(ca, dir, "eu-1", ["127.0.2.1"]);
    const pem = readFileSync(first.certFile, "utf8");
    await ensurePlaneCertificate(ca, dir, "eu-1", ["127.0.2.1"]);
    expect(readFileSync(first.certFile, "utf8")).toBe(pem);
    await ensurePlaneCertificate(ca, dir, "eu-1", ["127.0.2.9"]);
    expect(new X509Certificate(readFileSync(first.certFile)).subjectAltName).toBe("IP Address:127.0.2.9");
  });

  describe("TlsKeeper", () => {
    const planes = ["us-1", "eu-1", "uk-1"].map((name, i) => ({
      name,
      address: `127.0.${i + 1}.1`,
      dir: "",
    }));
    const reports: string[] = [];
    let now = new Date();
    let keeper: TlsKeeper;
    const files = (plane: string) => readdirSync(planes.find((p) => p.name === plane)!.dir).sort();

    beforeAll(() => {
      for (const p of planes) {
        p.dir = join(root, "keeper", p.name);
        mkdirSync(p.dir, { recursive: true, mode: 0o700 });
      }
      keeper = new TlsKeeper({ ca, planes, report: (l) => reports.push(l), now: () => now });
    });

    it("writes each name only into the directories of the planes DNS sends it to, 0600", async () => {
      await keeper.apply(snapshot("eu"));
      expect(files("us-1")).toEqual([`${STD}.key.pem`, `${STD}.pem`]);
      expect(files("eu-1")).toEqual([`${EU}.key.pem`, `${EU}.pem`]);
      expect(files("uk-1")).toEqual([]);
      for (const f of files("eu-1")) expect(statSync(join(planes[1]!.dir, f)).mode & 0o777).toBe(0o600);
      expect(reports).toEqual([]);
    });

    it("leaves valid pairs alone, so a pass without changes writes nothing", async () => {
      const before = statSync(join(planes[1]!.dir, `${EU}.pem`)).ino;
      await keeper.apply(snapshot("eu", 2));
      expect(statSync(join(planes[1]!.dir, `${EU}.pem`)).ino).toBe(before);
    });

    it("moves a name whose restriction moved: gone from eu, issued anew for uk", async () => {
      const euCert = readFileSync(join(planes[1]!.dir, `${EU}.pem`), "utf8");
      await keeper.apply(snapshot("uk", 3));
      expect(files("eu-1")).toEqual([]);
      expect(files("uk-1")).toEqual([`${EU}.key.pem`, `${EU}.pem`]);
      // Its own key, not eu's copied over.
      expect(readFileSync(join(planes[2]!.dir, `${EU}.pem`), "utf8")).not.toBe(euCert);
    });

    it("removes what a plane may not hold, whoever put it there, and unfinished writes", async () => {
      const eu = planes[1]!.dir;
      writeFileSync(join(eu, `${EU}.pem`), readFileSync(join(planes[2]!.dir, `${EU}.pem`)));
      writeFileSync(join(eu, `${EU}.key.pem`), readFileSync(join(planes[2]!.dir, `${EU}.key.pem`)));
      writeFileSync(join(eu, `${STD}.key.pem.123.ab.tmp`), "half a key");
      writeFileSync(join(eu, "wildcard.pem"), "anything");
      writeFileSync(join(eu, "README"), "not ours to judge");
      await keeper.apply(snapshot("uk", 4));
      expect(files("eu-1")).toEqual(["README"]);
    });

    it("issues again a pair that was damaged, deleted or is about to expire", async () => {
      const uk = planes[2]!.dir;
      writeFileSync(join(uk, `${EU}.key.pem`), "damaged", { mode: 0o600 });
      await keeper.apply(snapshot("uk", 5));
      const repaired = readFileSync(join(uk, `${EU}.pem`), "utf8");
      const subject = { kind: "hostname", hostname: EU } as const;
      expect(
        reasonToReissue(ca, repaired, readFileSync(join(uk, `${EU}.key.pem`), "utf8"), subject, now),
      ).toBeNull();

      rmSync(join(uk, `${EU}.pem`));
      await keeper.apply(snapshot("uk", 6));
      expect(existsSync(join(uk, `${EU}.pem`))).toBe(true);

      const current = readFileSync(join(uk, `${EU}.pem`), "utf8");
      now = new Date(Date.now() + 70 * 86_400_000);
      await keeper.apply(snapshot("uk", 7));
      const renewed = readFileSync(join(uk, `${EU}.pem`), "utf8");
      expect(renewed).not.toBe(current);
      expect(Date.parse(new X509Certificate(renewed).validTo)).toBeGreaterThan(
        now.getTime() + 60 * 86_400_000,
      );
      now = new Date();
      expect(reports).toEqual([]);
    });

    it("keeps the newest snapshot when an older one arrives late", async () => {
      await keeper.apply(snapshot("eu", 20));
      await keeper.apply(snapshot("uk", 10));
      expect(files("eu-1")).toEqual(["README", `${EU}.key.pem`, `${EU}.pem`]);
      expect(files("uk-1")).toEqual([]);
      await keeper.apply(snapshot("uk", 21));
      expect(files("eu-1")).toEqual(["README"]);
    });

    it("reports a failure once, in one line, and goes on with the other planes", async () => {
      const broken = { name: "gone-1", address: "127.0.2.1", dir: join(root, "keeper", "does-not-exist") };
      const k = new TlsKeeper({ ca, planes: [broken, planes[0]!], report: (l) => reports.push(l) });
      await k.apply(snapshot("eu", 8));
      await k.apply(snapshot("eu", 9));
      expect(reports).toHaveLength(1);
      expect(reports[0]).toMatch(/^! tls: gone-1: .* failed: /);
      expect(files("us-1")).toEqual([`${STD}.key.pem`, `${STD}.pem`]);
      reports.length = 0;
    });
  });
});
