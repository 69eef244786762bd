// The local certificate authority of `meridian up`: a CA made once per data directory and a certificate
// for `*.{domain}` (plus the ingress IPs, for plane-to-plane hops) signed by it. ECDSA P-256 through
// WebCrypto; @peculiar/x509 writes the X.509 structures, which Node cannot issue by itself.

import { webcrypto } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
// @peculiar/x509 resolves its algorithms through tsyringe, which needs the Reflect metadata polyfill.
import "reflect-metadata";
import * as x509 from "@peculiar/x509";

x509.cryptoProvider.set(webcrypto as never);

type Key = webcrypto.CryptoKey;
type KeyPair = webcrypto.CryptoKeyPair;

const ALG = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" } as const;

export interface LocalTls {
  caFile: string;
  certFile: string;
  keyFile: string;
  cert: string;
  key: string;
}

async function exportKey(key: Key): Promise<string> {
  const der = await webcrypto.subtle.exportKey("pkcs8", key);
  const b64 = Buffer.from(der)
    .toString("base64")
    .replace(/(.{64})/g, "$1\n");
  return `-----BEGIN PRIVATE KEY-----\n${b64.trim()}\n-----END PRIVATE KEY-----\n`;
}

async function importKey(pem: string): Promise<Key> {
  const der = Buffer.from(pem.replace(/-----[^-]+-----/g, "").replace(/\s+/g, ""), "base64");
  return webcrypto.subtle.importKey("pkcs8", der, ALG, true, ["sign"]);
}

function serial(): string {
  return Buffer.from(webcrypto.getRandomValues(new Uint8Array(16)))
    .toString("hex")
    .replace(/^[89a-f]/, "1");
}

/**
 * Loads the CA and server certificate from `dir`, creating what is missing. The server certificate is
 * made again when the domain or addresses it must cover change.
 */
export async function ensureLocalTls(
  dir: string,
  domain: string,
  addresses: readonly string[],
): Promise<LocalTls> {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const caFile = join(dir, "ca.pem");
  const caKeyFile = join(dir, "ca-key.pem");
  const certFile = join(dir, "server.pem");
  const keyFile = join(dir, "server-key.pem");
  const coversFile = join(dir, "server.covers");
  const covers = JSON.stringify({ domain, addresses: [...addresses].sort() });

  const now = new Date(Date.now() - 60_000);
  let ca: x509.X509Certificate;
  let caKey: Key;
  if (existsSync(caFile) && existsSync(caKeyFile)) {
    ca = new x509.X509Certificate(readFileSync(caFile, "utf8"));
    caKey = await importKey(readFileSync(caKeyFile, "utf8"));
  } else {
    const keys = (await webcrypto.subtle.generateKey(ALG, true, ["sign", "verify"])) as KeyPair;
    ca = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: serial(),
      name: `CN=Meridian local CA (${domain})`,
      notBefore: now,
      notAfter: new Date(now.getTime() + 10 * 365 * 86_400_000),
      keys: keys as never,
      signingAlgorithm: ALG,
      extensions: [
        new x509.BasicConstraintsExtension(true, 0, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
        await x509.SubjectKeyIdentifierExtension.create(keys.publicKey as never),
      ],
    });
    caKey = keys.privateKey;
    writeFileSync(caKeyFile, await exportKey(caKey), { mode: 0o600 });
    writeFileSync(caFile, ca.toString("pem"), { mode: 0o644 });
  }

  const fresh = existsSync(certFile) && existsSync(keyFile) && existsSync(coversFile);
  if (!fresh || readFileSync(coversFile, "utf8") !== covers) {
    const keys = (await webcrypto.subtle.generateKey(ALG, true, ["sign", "verify"])) as KeyPair;
    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: serial(),
      subject: `CN=*.${domain}`,
      issuer: ca.subject,
      notBefore: now,
      notAfter: new Date(now.getTime() + 397 * 86_400_000),
      publicKey: keys.publicKey as never,
      signingKey: caKey as never,
      signingAlgorithm: ALG,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
        new x509.SubjectAlternativeNameExtension([
          { type: "dns", value: `*.${domain}` },
          { type: "dns", value: domain },
          ...addresses.map((ip) => ({ type: "ip" as const, value: ip })),
        ]),
        await x509.AuthorityKeyIdentifierExtension.create(ca, false),
      ],
    });
    writeFileSync(keyFile, await exportKey(keys.privateKey), { mode: 0o600 });
    writeFileSync(certFile, `${cert.toString("pem")}\n`, { mode: 0o644 });
    writeFileSync(coversFile, covers);
  }
  return {
    caFile,
    certFile,
    keyFile,
    cert: readFileSync(certFile, "utf8"),
    key: readFileSync(keyFile, "utf8"),
  };
}
