// Certificates without wildcards: the local CA of `meridian up` (made once per data directory; its key never
// leaves `{data-dir}/tls/`), and leaf certificates issued by a CA — `up`'s or an operator's — for one
// inference hostname each, or for a plane's own addresses (IP SANs, for hops and as its default certificate).
// Leaf keys are ECDSA P-256 through WebCrypto; @peculiar/x509 writes the X.509 structures, which Node cannot
// issue by itself. Node's own X509Certificate checks what is already on disk.

import {
  createPrivateKey,
  createPublicKey,
  type KeyObject,
  X509Certificate as NodeCertificate,
  webcrypto,
} from "node:crypto";
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
// @peculiar/x509 resolves its algorithms through tsyringe, which needs the Reflect metadata polyfill.
import "reflect-metadata";
import * as x509 from "@peculiar/x509";

x509.cryptoProvider.set(webcrypto as never);

type Key = webcrypto.CryptoKey;
type KeyPair = webcrypto.CryptoKeyPair;

const LEAF_ALG = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" } as const;
const DAY_MS = 86_400_000;

/** Leaf certificates of hostnames: short-lived, renewed in place by whoever keeps them (`up` does). */
export const HOSTNAME_CERT_DAYS = 90;
/** A plane's own certificate: read once at the plane's start, so it lasts longer; `up` renews it at start. */
export const PLANE_CERT_DAYS = 397;
/** What is left of a certificate's life when it is issued again. */
export const RENEW_BEFORE_MS = 30 * DAY_MS;

/** A CA that can sign: its certificate and private key, with the signature algorithm the key takes. */
export interface CertificateAuthority {
  cert: x509.X509Certificate;
  /** The same certificate, parsed by Node: checks what is on disk against it. */
  node: NodeCertificate;
  pem: string;
  key: Key;
  signing: webcrypto.EcdsaParams | webcrypto.RsaHashedImportParams;
}

/** A leaf certificate and its private key, both PEM. */
export interface IssuedCertificate {
  cert: string;
  key: string;
  notAfter: Date;
}

/** What a leaf certificate names: one hostname, or a plane's own addresses. Never both, never a wildcard. */
export type Subject =
  | { kind: "hostname"; hostname: string }
  | { kind: "addresses"; plane: string; ips: string[] };

export class CertificateError extends Error {
  override readonly name = "CertificateError";
}

function pemOf(label: string, der: ArrayBuffer | Buffer): string {
  const b64 = Buffer.from(der as ArrayBuffer)
    .toString("base64")
    .replace(/(.{64})/g, "$1\n");
  return `-----BEGIN ${label}-----\n${b64.trim()}\n-----END ${label}-----\n`;
}

async function exportKey(key: Key): Promise<string> {
  return pemOf("PRIVATE KEY", await webcrypto.subtle.exportKey("pkcs8", key));
}

function serial(): string {
  // A positive 128-bit serial (RFC 5280 §4.1.2.2: at most 20 octets, non-negative).
  return Buffer.from(webcrypto.getRandomValues(new Uint8Array(16)))
    .toString("hex")
    .replace(/^[89a-f]/, "1");
}

/** The WebCrypto algorithm that signs with a CA key of this type, or a clear refusal. */
function signingAlgorithm(key: KeyObject): CertificateAuthority["signing"] {
  const details = key.asymmetricKeyDetails;
  if (key.asymmetricKeyType === "ec" && details?.namedCurve === "prime256v1") {
    return { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" } as webcrypto.EcdsaParams;
  }
  if (key.asymmetricKeyType === "ec" && details?.namedCurve === "secp384r1") {
    return { name: "ECDSA", namedCurve: "P-384", hash: "SHA-384" } as webcrypto.EcdsaParams;
  }
  if (key.asymmetricKeyType === "rsa")
    return { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" } as webcrypto.RsaHashedImportParams;
  throw new CertificateError(
    `the CA key is ${key.asymmetricKeyType ?? "unknown"}${details?.namedCurve ? ` (${details.namedCurve})` : ""}; an ECDSA P-256 or P-384 or an RSA key is needed`,
  );
}

/**
 * Loads a CA from PEM: the certificate must be a CA (basicConstraints cA) and the key its own. The key may
 * be PKCS #8, SEC 1 (`EC PRIVATE KEY`) or PKCS #1 (`RSA PRIVATE KEY`), unencrypted.
 */
export async function loadCertificateAuthority(
  certPem: string,
  keyPem: string,
): Promise<CertificateAuthority> {
  let node: NodeCertificate;
  try {
    node = new NodeCertificate(certPem);
  } catch (err) {
    throw new CertificateError(`the CA certificate is not a PEM certificate: ${(err as Error).message}`);
  }
  if (!node.ca) throw new CertificateError("the CA certificate is not a CA (basicConstraints has no cA)");
  let keyObject: KeyObject;
  try {
    keyObject = createPrivateKey(keyPem);
  } catch (err) {
    const message = (err as NodeJS.ErrnoException).code === "ERR_MISSING_PASSPHRASE" ? "it is encrypted" : "";
    throw new CertificateError(
      `the CA key is not an unencrypted PEM private key${message ? `: ${message}` : `: ${(err as Error).message}`}`,
    );
  }
  const spki = (k: KeyObject) => k.export({ type: "spki", format: "der" });
  if (!spki(createPublicKey(keyObject)).equals(spki(node.publicKey))) {
    throw new CertificateError("the CA key does not belong to the CA certificate");
  }
  const signing = signingAlgorithm(keyObject);
  const der = keyObject.export({ type: "pkcs8", format: "der" });
  const key = await webcrypto.subtle.importKey("pkcs8", der, signing, false, ["sign"]);
  return { cert: new x509.X509Certificate(certPem), node, pem: certPem, key, signing };
}

/**
 * Loads `up`'s CA from `dir` (`ca.pem`, `ca-key.pem`), creating it on first use. The wildcard certificate
 * earlier versions kept there (`server.pem`, `server-key.pem`) is deleted: no plane may hold it any more.
 */
export async function ensureLocalCa(
  dir: string,
  domain: string,
): Promise<{ ca: CertificateAuthority; caFile: string }> {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const caFile = join(dir, "ca.pem");
  const caKeyFile = join(dir, "ca-key.pem");
  for (const legacy of ["server.pem", "server-key.pem", "server.covers"])
    rmSync(join(dir, legacy), { force: true });
  if (!existsSync(caFile) || !existsSync(caKeyFile)) {
    const now = new Date(Date.now() - 60_000);
    const keys = (await webcrypto.subtle.generateKey(LEAF_ALG, true, ["sign", "verify"])) as KeyPair;
    const ca = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: serial(),
      name: `CN=Meridian local CA (${domain})`,
      notBefore: now,
      notAfter: new Date(now.getTime() + 10 * 365 * DAY_MS),
      keys: keys as never,
      signingAlgorithm: LEAF_ALG,
      extensions: [
        new x509.BasicConstraintsExtension(true, 0, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
        await x509.SubjectKeyIdentifierExtension.create(keys.publicKey as never),
      ],
    });
    writeSecretPem(caKeyFile, await exportKey(keys.privateKey));
    writeFileSync(caFile, ca.toString("pem"), { mode: 0o644 });
  }
  return {
    ca: await loadCertificateAuthority(readFileSync(caFile, "utf8"), readFileSync(caKeyFile, "utf8")),
    caFile,
  };
}

/** Issues a leaf certificate for `subject`, valid `days` (and never beyond the CA's own validity). */
export async function issueCertificate(
  ca: CertificateAuthority,
  subject: Subject,
  days: number,
  now: Date = new Date(),
): Promise<IssuedCertificate> {
  if (subject.kind === "hostname" && subject.hostname.includes("*")) {
    throw new CertificateError(`refusing to issue a wildcard certificate (${subject.hostname})`);
  }
  const keys = (await webcrypto.subtle.generateKey(LEAF_ALG, true, ["sign", "verify"])) as KeyPair;
  const notBefore = new Date(now.getTime() - 60_000);
  const notAfter = new Date(Math.min(now.getTime() + days * DAY_MS, ca.cert.notAfter.getTime()));
  const ski = ca.cert.getExtension(x509.SubjectKeyIdentifierExtension);
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serial(),
    subject: `CN=${subject.kind === "hostname" ? subject.hostname : subject.plane}`,
    issuer: ca.cert.subject,
    notBefore,
    notAfter,
    publicKey: keys.publicKey as never,
    signingKey: ca.key as never,
    signingAlgorithm: ca.signing,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
      new x509.SubjectAlternativeNameExtension(
        subject.kind === "hostname"
          ? [{ type: "dns", value: subject.hostname }]
          : subject.ips.map((ip) => ({ type: "ip" as const, value: ip })),
      ),
      ski
        ? new x509.AuthorityKeyIdentifierExtension(ski.keyId, false)
        : await x509.AuthorityKeyIdentifierExtension.create(ca.cert, false),
    ],
  });
  return { cert: `${cert.toString("pem")}\n`, key: await exportKey(keys.privateKey), notAfter };
}

/**
 * Whether `certPem` + `keyPem` is a pair this CA issued for exactly `subject`, with more than `renewBeforeMs`
 * of life left at `now`: the reason to issue it again, or null when it may stay.
 */
export function reasonToReissue(
  ca: CertificateAuthority,
  certPem: string,
  keyPem: string,
  subject: Subject,
  now: Date,
  renewBeforeMs: number = RENEW_BEFORE_MS,
): string | null {
  let cert: NodeCertificate;
  try {
    cert = new NodeCertificate(certPem);
  } catch {
    return "not a certificate";
  }
  if (!cert.checkIssued(ca.node) || !cert.verify(ca.node.publicKey)) return "not issued by this CA";
  const want =
    subject.kind === "hostname"
      ? `DNS:${subject.hostname}`
      : subject.ips.map((ip) => `IP Address:${ip}`).join(", ");
  if (cert.subjectAltName !== want) return `names ${cert.subjectAltName ?? "nothing"}, not ${want}`;
  if (new Date(cert.validTo).getTime() - now.getTime() <= renewBeforeMs) return "expires soon";
  try {
    if (!cert.checkPrivateKey(createPrivateKey(keyPem))) return "the key is not the certificate's";
  } catch {
    return "the key is unreadable";
  }
  return null;
}

/** Writes a file readable by its owner only: a temporary file in the same directory, then a rename. */
function writeSecretPem(path: string, content: string): void {
  const tmp = `${path}.${process.pid}.${Buffer.from(webcrypto.getRandomValues(new Uint8Array(4))).toString("hex")}.tmp`;
  writeFileSync(tmp, content, { mode: 0o600 });
  renameSync(tmp, path);
}

/**
 * Writes `{base}.pem` and `{base}.key.pem` in `dir` (both 0600), each replaced atomically: the key first, so a
 * reader that sees the new certificate finds its key (a reader between the two sees a mismatched pair and
 * keeps what it had, see src/plane/tls-store.ts).
 */
export function writeCertificatePair(dir: string, base: string, issued: IssuedCertificate): void {
  writeSecretPem(join(dir, `${base}.key.pem`), issued.key);
  writeSecretPem(join(dir, `${base}.pem`), issued.cert);
}

/** Removes `{base}.pem` and `{base}.key.pem`: the key first, so no reader pairs a certificate with it again. */
export function removeCertificatePair(dir: string, base: string): void {
  rmSync(join(dir, `${base}.key.pem`), { force: true });
  rmSync(join(dir, `${base}.pem`), { force: true });
}

/**
 * The plane's own certificate, for its registered addresses only (IP SANs): what hops verify, and what a
 * client asking for a name the plane holds no certificate for gets — which does not match, so the handshake
 * fails before the client sends a byte. `{dir}/ingress.pem` + `ingress.key.pem`, issued again when missing,
 * not this CA's, for other addresses, or within RENEW_BEFORE_MS of its end.
 */
export async function ensurePlaneCertificate(
  ca: CertificateAuthority,
  dir: string,
  plane: string,
  ips: string[],
  now: Date = new Date(),
): Promise<{ certFile: string; keyFile: string }> {
  const base = join(dir, "ingress");
  const subject: Subject = { kind: "addresses", plane, ips };
  const present = existsSync(`${base}.pem`) && existsSync(`${base}.key.pem`);
  const reason = present
    ? reasonToReissue(
        ca,
        readFileSync(`${base}.pem`, "utf8"),
        readFileSync(`${base}.key.pem`, "utf8"),
        subject,
        now,
      )
    : "missing";
  if (reason !== null)
    writeCertificatePair(dir, "ingress", await issueCertificate(ca, subject, PLANE_CERT_DAYS, now));
  return { certFile: `${base}.pem`, keyFile: `${base}.key.pem` };
}
