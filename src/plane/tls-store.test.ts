// The plane's certificate directory behind a real ingress (both transports): the certificate of the name
// asked for by SNI, the plane's own for anything else (so a client asking for a name the plane may not hold
// fails verification before it sends a byte), reloads without a restart, and what a hostile or careless
// directory cannot make the plane serve. Certificates are issued as `meridian up` and `meridian tls issue`
// issue them (src/up/tls.ts).

import { execFileSync } from "node:child_process";
import { X509Certificate } from "node:crypto";
import {
  chmodSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  renameSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import tls from "node:tls";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createIngress, type Ingress, type IngressTransport } from "../gateway/ingress.ts";
import { generateSigningKey } from "../lib/keys.ts";
import {
  type CertificateAuthority,
  ensureLocalCa,
  ensurePlaneCertificate,
  issueCertificate,
  removeCertificatePair,
  writeCertificatePair,
} from "../up/tls.ts";
import { certificateNames, TlsStore, wildcardWarning } from "./tls-store.ts";

const DOMAIN = "meridian.test";
const EU = `model-abcd1234-prod-eu.${DOMAIN}`;
const UK = `model-abcd1234-prod-uk.${DOMAIN}`;
const STD = `model-abcd1234.${DOMAIN}`;

type Handshake =
  | { ok: true; san: string | undefined; fingerprint: string; reused: boolean; session: Buffer | null }
  | { ok: false; code: string | undefined };

/** A TLS client with the CA trusted, as `meridian predict` and the seed's client are. */
function handshake(
  port: number,
  ca: string,
  servername: string | undefined,
  session?: Buffer | null,
  /** Wait (up to 2 s) for the server's session ticket, which TLS 1.3 sends after the handshake. */
  ticket = false,
): Promise<Handshake> {
  return new Promise((resolve) => {
    const socket = tls.connect({
      host: "127.0.0.1",
      port,
      ca,
      ...(servername ? { servername } : {}),
      ...(session ? { session } : {}),
    });
    let saved: Buffer | null = null;
    let done: (() => void) | null = null;
    socket.on("session", (s) => {
      saved = s;
      done?.();
    });
    socket.once("secureConnect", () => {
      const peer = socket.getPeerCertificate();
      const finish = () => {
        done = null;
        clearTimeout(timer);
        resolve({
          ok: true,
          san: peer.subjectaltname,
          fingerprint: peer.fingerprint256,
          reused: socket.isSessionReused(),
          session: saved,
        });
        socket.end();
      };
      // TLS 1.3 tickets arrive after the handshake: a moment for them, or, when the caller needs one, until
      // it comes (a loaded machine takes more than a few ms), at most 2 s.
      const timer = setTimeout(finish, ticket ? 2_000 : 30);
      if (ticket) done = finish;
      if (ticket && saved !== null) finish();
    });
    socket.once("error", (err: NodeJS.ErrnoException) => resolve({ ok: false, code: err.code }));
  });
}

async function until(check: () => Promise<boolean> | boolean, what: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`not within 10 s: ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe("TlsStore", () => {
  let root: string;
  let ca: CertificateAuthority;
  let caPem: string;
  let own: { cert: Buffer; key: Buffer };
  const lines: Array<{ msg: string; level: number; file?: string }> = [];
  const logger = pino({ level: "info" }, { write: (l: string) => void lines.push(JSON.parse(l)) });

  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), "meridian-tls-store-"));
    const local = await ensureLocalCa(join(root, "ca"), DOMAIN);
    ca = local.ca;
    caPem = readFileSync(local.caFile, "utf8");
    const files = await ensurePlaneCertificate(ca, root, "eu-1", ["127.0.0.1"]);
    own = { cert: readFileSync(files.certFile), key: readFileSync(files.keyFile) };
  });
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  const freshDir = () => {
    const dir = mkdtempSync(join(root, "dir-"));
    chmodSync(dir, 0o700);
    return dir;
  };
  const issue = async (dir: string, hostname: string) =>
    writeCertificatePair(dir, hostname, await issueCertificate(ca, { kind: "hostname", hostname }, 90));

  describe.each<IngressTransport>(["wire", "http"])("behind the %s ingress", (transport) => {
    let dir: string;
    let store: TlsStore;
    let ingress: Ingress;
    let port: number;

    beforeAll(async () => {
      dir = freshDir();
      await issue(dir, EU);
      store = new TlsStore({ dir, logger, rescanMs: 60_000 });
      await store.start();
      ingress = createIngress({
        plane: { name: "eu-1", region: "eu" },
        signingKey: generateSigningKey(),
        listen: { host: "127.0.0.1", port: 0 },
        tls: { ...own, sni: store },
        snapshot: () => null,
        localReplicas: () => [],
        transport,
      });
      await ingress.start();
      port = ingress.address!.port;
    });
    afterAll(async () => {
      await ingress.stop();
      await store.stop();
    });

    it("serves the certificate of the name asked for, and only that name", async () => {
      expect(store.hostnames()).toEqual([EU]);
      const r = await handshake(port, caPem, EU);
      expect(r).toMatchObject({ ok: true, san: `DNS:${EU}` });
      // SNI is case-insensitive (RFC 6066 §3: a DNS hostname) and may carry the root's trailing dot.
      expect(await handshake(port, caPem, EU.toUpperCase())).toMatchObject({ ok: true, san: `DNS:${EU}` });
    });

    it("answers a name it holds no certificate for with its own, which the client refuses", async () => {
      for (const name of [UK, STD, `other.${DOMAIN}`]) {
        expect(await handshake(port, caPem, name)).toEqual({
          ok: false,
          code: "ERR_TLS_CERT_ALTNAME_INVALID",
        });
      }
    });

    it("gives a client that sends no SNI (a hop to the plane's address) its own certificate, which verifies", async () => {
      expect(await handshake(port, caPem, undefined)).toMatchObject({
        ok: true,
        san: "IP Address:127.0.0.1",
      });
    });

    it("serves a certificate added to the directory, without a restart", async () => {
      const dir2 = dir;
      await issue(dir2, STD);
      await until(async () => (await handshake(port, caPem, STD)).ok, `${STD} served`);
      expect(store.hostnames()).toEqual([EU, STD]);
    });

    it("stops serving a removed certificate at once, resumed sessions included", async () => {
      const first = await handshake(port, caPem, EU, null, true);
      expect(first.ok).toBe(true);
      const session = first.ok ? first.session : null;
      expect(session).not.toBeNull();
      const resumed = await handshake(port, caPem, EU, session);
      expect(resumed).toMatchObject({ ok: true, reused: true });

      removeCertificatePair(dir, EU);
      await until(() => store.contextFor(EU) === undefined, `${EU} dropped`);
      // A session set up under the withdrawn certificate cannot be resumed: a full handshake, which fails.
      expect(await handshake(port, caPem, EU, session)).toEqual({
        ok: false,
        code: "ERR_TLS_CERT_ALTNAME_INVALID",
      });
      expect(await handshake(port, caPem, EU)).toEqual({ ok: false, code: "ERR_TLS_CERT_ALTNAME_INVALID" });
      // The others stay.
      expect((await handshake(port, caPem, STD)).ok).toBe(true);
    });

    it("replaces a renewed certificate with no moment where the name fails", async () => {
      const before = await handshake(port, caPem, STD);
      const renewed = await issueCertificate(ca, { kind: "hostname", hostname: STD }, 90);
      // As writeCertificatePair does: the key first. In between, the pair does not match.
      writeFileSync(join(dir, `${STD}.key.pem`), renewed.key, { mode: 0o600 });
      await store.rescan();
      const between = await handshake(port, caPem, STD);
      expect(between).toMatchObject({ ok: true, fingerprint: before.ok ? before.fingerprint : "" });
      writeFileSync(join(dir, `${STD}.pem`), renewed.cert, { mode: 0o600 });
      await store.rescan();
      const after = await handshake(port, caPem, STD);
      expect(after.ok).toBe(true);
      expect(after.ok && after.fingerprint).toBe(new X509Certificate(renewed.cert).fingerprint256);
    });
  });

  it("refuses what a hostile or careless directory holds: wrong names, foreign keys, wildcard file names", async () => {
    const dir = freshDir();
    const eu = await issueCertificate(ca, { kind: "hostname", hostname: EU }, 90);
    const uk = await issueCertificate(ca, { kind: "hostname", hostname: UK }, 90);
    // A certificate filed under another name: serving it for UK would not verify, and it is not UK's.
    writeCertificatePair(dir, UK, { ...eu });
    // A certificate with another certificate's key.
    writeCertificatePair(dir, STD, {
      ...(await issueCertificate(ca, { kind: "hostname", hostname: STD }, 90)),
    });
    writeFileSync(join(dir, `${STD}.key.pem`), uk.key, { mode: 0o600 });
    // A wildcard file name, a path-like one and an IP address are not hostnames.
    writeCertificatePair(dir, `*.${DOMAIN}`, eu);
    writeCertificatePair(dir, "127.0.0.1", eu);
    // Not PEM at all.
    writeFileSync(join(dir, `junk.${DOMAIN}.pem`), "junk");
    writeFileSync(join(dir, `junk.${DOMAIN}.key.pem`), "junk");
    lines.length = 0;
    const store = new TlsStore({ dir, logger, rescanMs: 60_000 });
    await store.start();
    try {
      expect(store.hostnames()).toEqual([]);
      const messages = lines.map((l) => `${l.msg} ${l.file ?? ""}`);
      expect(messages.some((m) => m.includes("not loaded") && m.includes(UK))).toBe(true);
      expect(messages.some((m) => m.includes("not loaded") && m.includes(STD))).toBe(true);
      expect(messages.some((m) => m.includes("not a hostname") && m.includes("*."))).toBe(true);
    } finally {
      await store.stop();
    }
  });

  it("serves a wildcard certificate filed under one hostname only for that name, and warns", async () => {
    const dir = freshDir();
    const key = join(dir, `${EU}.key.pem`);
    const csr = join(dir, "w.csr");
    execFileSync(
      "openssl",
      [
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        `/CN=*.${DOMAIN}`,
        "-keyout",
        key,
        "-out",
        csr,
      ],
      { stdio: "ignore" },
    );
    const ext = join(dir, "w.ext");
    writeFileSync(ext, `subjectAltName=DNS:*.${DOMAIN}\n`);
    execFileSync(
      "openssl",
      [
        "x509",
        "-req",
        "-in",
        csr,
        "-CA",
        join(root, "ca", "ca.pem"),
        "-CAkey",
        join(root, "ca", "ca-key.pem"),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        ext,
        "-out",
        join(dir, `${EU}.pem`),
      ],
      { stdio: "ignore" },
    );
    rmSync(csr);
    rmSync(ext);
    chmodSync(key, 0o644);
    lines.length = 0;
    const store = new TlsStore({ dir, logger, rescanMs: 60_000 });
    await store.start();
    try {
      expect(store.hostnames()).toEqual([EU]);
      expect(store.contextFor(UK)).toBeUndefined();
      const warnings = lines.filter((l) => l.level === 40).map((l) => l.msg);
      expect(warnings.some((m) => m.includes("a wildcard matches every regional hostname"))).toBe(true);
      expect(warnings.some((m) => m.includes("make it 0600"))).toBe(true);
    } finally {
      await store.stop();
    }
  });

  it("follows symlinked files, as a Kubernetes secret volume swaps them (..data → a new directory)", async () => {
    const dir = freshDir();
    const version = async (name: string) => {
      mkdirSync(join(dir, name));
      const issued = await issueCertificate(ca, { kind: "hostname", hostname: EU }, 90);
      writeCertificatePair(join(dir, name), EU, issued);
      return new X509Certificate(issued.cert).fingerprint256;
    };
    const first = await version("..2026_01");
    symlinkSync("..2026_01", join(dir, "..data"));
    for (const f of [`${EU}.pem`, `${EU}.key.pem`]) symlinkSync(join("..data", f), join(dir, f));
    const store = new TlsStore({ dir, logger, rescanMs: 60_000 });
    await store.start();
    try {
      expect(store.hostnames()).toEqual([EU]);
      const ctx = store.contextFor(EU);
      const second = await version("..2026_02");
      expect(second).not.toBe(first);
      // The kubelet's swap: a new symlink renamed over ..data, one atomic step for both files.
      symlinkSync("..2026_02", join(dir, "..data_tmp"));
      renameSync(join(dir, "..data_tmp"), join(dir, "..data"));
      await until(() => store.contextFor(EU) !== ctx, "the swapped pair loaded");
      rmSync(join(dir, "..data"));
      await until(() => store.contextFor(EU) === undefined, "dangling links dropped");
    } finally {
      await store.stop();
    }
  });

  it("refuses to start without its directory", async () => {
    const store = new TlsStore({ dir: join(root, "missing"), logger });
    await expect(store.start()).rejects.toThrow("--tls-dir");
    mkdirSync(join(root, "not-a-dir-parent"), { recursive: true });
    writeFileSync(join(root, "not-a-dir-parent", "f"), "");
    await expect(new TlsStore({ dir: join(root, "not-a-dir-parent", "f"), logger }).start()).rejects.toThrow(
      "is not a directory",
    );
  });

  it("names a wildcard --tls-cert, and not the plane's own certificate", () => {
    expect(wildcardWarning(own.cert)).toBeNull();
    expect(certificateNames(own.cert)).toEqual({ dns: [], ips: ["127.0.0.1"] });
  });
});
