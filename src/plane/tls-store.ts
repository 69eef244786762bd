// The plane's certificates by hostname (`--tls-dir`): `{hostname}.pem` + `{hostname}.key.pem` pairs, loaded at
// start and again whenever the directory changes (watched, and rescanned every few seconds in case a watch
// event is lost), without a restart. The ingress serves each by SNI and its own certificate otherwise
// (src/gateway/tls-options.ts). What is not in the directory is not served: a removed pair is dropped at the
// next scan, and the ingress rotates its ticket keys so no session outlives it.

import { createPrivateKey, X509Certificate } from "node:crypto";
import { type FSWatcher, watch } from "node:fs";
import { readdir, readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { createSecureContext, type SecureContext } from "node:tls";
import type { Logger } from "pino";
import { isCertificateHostname, wildcardNames } from "../core/tls-plan.ts";
import type { SniCertificates } from "../gateway/tls-options.ts";

export interface TlsStoreOptions {
  dir: string;
  logger: Logger;
  /** Full rescan period, a safety net under the directory watch. Default 2000 ms. */
  rescanMs?: number;
}

interface Loaded {
  /** Identity of both files when they were loaded: a change is a reload. */
  signature: string;
  context: SecureContext;
}

/** The names a certificate covers, from its subjectAltName (`DNS:a, IP Address:1.2.3.4`). */
export function certificateNames(pem: string | Buffer): { dns: string[]; ips: string[] } {
  const san = new X509Certificate(pem).subjectAltName ?? "";
  const entries = san === "" ? [] : san.split(", ");
  return {
    dns: entries.filter((e) => e.startsWith("DNS:")).map((e) => e.slice(4).toLowerCase()),
    ips: entries.filter((e) => e.startsWith("IP Address:")).map((e) => e.slice(11)),
  };
}

/** The warning for a certificate with wildcard names, or null: each wildcard covers other regions' names. */
export function wildcardWarning(pem: string | Buffer): string | null {
  const wild = wildcardNames(certificateNames(pem).dns);
  if (wild.length === 0) return null;
  return `the certificate names ${wild.join(", ")}: a wildcard matches every regional hostname under it, so this plane holds a key clients accept for endpoints of other regions. Give the plane a certificate for its own addresses (--tls-cert) and one per hostname it may serve (--tls-dir).`;
}

export class TlsStore implements SniCertificates {
  readonly #options: TlsStoreOptions;
  #loaded = new Map<string, Loaded>();
  readonly #listeners = new Set<() => void>();
  /** Problems already logged, by file and reason: a broken file is logged once per change, not per scan. */
  readonly #logged = new Map<string, string>();
  #watcher: FSWatcher | null = null;
  #timer: NodeJS.Timeout | null = null;
  #debounce: NodeJS.Timeout | null = null;
  #scanning: Promise<void> | null = null;
  #again = false;

  constructor(options: TlsStoreOptions) {
    this.#options = options;
  }

  /** Loads the directory (which must exist) and starts following it. */
  async start(): Promise<void> {
    const info = await stat(this.#options.dir).catch(() => null);
    if (!info?.isDirectory()) throw new Error(`--tls-dir ${this.#options.dir} is not a directory`);
    await this.rescan();
    // Not persistent: the watch alone must not keep a plane process alive that failed to start.
    this.#watcher = watch(this.#options.dir, { persistent: false }, () => this.#soon());
    this.#watcher.on("error", (err) =>
      this.#options.logger.warn({ err, dir: this.#options.dir }, "tls directory watch failed; rescans go on"),
    );
    this.#timer = setInterval(() => void this.rescan(), this.#options.rescanMs ?? 2_000);
    this.#timer.unref();
  }

  async stop(): Promise<void> {
    this.#watcher?.close();
    this.#watcher = null;
    if (this.#timer) clearInterval(this.#timer);
    if (this.#debounce) clearTimeout(this.#debounce);
    this.#timer = this.#debounce = null;
    await this.#scanning;
  }

  contextFor(servername: string): SecureContext | undefined {
    return this.#loaded.get(servername)?.context;
  }

  /** Hostnames served now, sorted. */
  hostnames(): string[] {
    return [...this.#loaded.keys()].sort();
  }

  onWithdraw(listener: () => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Scans the directory now; concurrent calls share one scan, and a call during a scan runs one more. */
  rescan(): Promise<void> {
    if (this.#scanning) {
      this.#again = true;
      return this.#scanning;
    }
    this.#scanning = (async () => {
      try {
        do {
          this.#again = false;
          await this.#scan();
        } while (this.#again);
      } finally {
        this.#scanning = null;
      }
    })();
    return this.#scanning;
  }

  /** A burst of events (a pair is two renames) becomes one scan. */
  #soon(): void {
    if (this.#debounce) return;
    this.#debounce = setTimeout(() => {
      this.#debounce = null;
      void this.rescan();
    }, 10);
    this.#debounce.unref();
  }

  async #scan(): Promise<void> {
    const dir = this.#options.dir;
    let entries: string[];
    try {
      entries = await readdir(dir);
    } catch (err) {
      // A directory that is gone serves nothing: that is what its absence says.
      this.#once(
        dir,
        `unreadable: ${(err as Error).message}`,
        "error",
        "tls directory unreadable; no certificate served",
      );
      entries = [];
    }
    const names = new Set(entries);
    const next = new Map<string, Loaded>();
    let withdrawn = false;
    for (const entry of entries) {
      if (!entry.endsWith(".pem")) continue;
      const hostname = entry.slice(0, -".pem".length);
      if (!names.has(`${hostname}.key.pem`)) continue;
      if (!isCertificateHostname(hostname)) {
        this.#once(
          entry,
          "name",
          "warn",
          "tls file ignored: its name is not a hostname (no wildcards, lowercase)",
        );
        continue;
      }
      const previous = this.#loaded.get(hostname);
      const loaded = await this.#load(hostname, previous);
      if (loaded === null) continue;
      if (previous !== undefined && loaded !== previous) withdrawn = true;
      next.set(hostname, loaded);
    }
    for (const hostname of this.#loaded.keys()) {
      if (!next.has(hostname)) {
        withdrawn = true;
        this.#options.logger.info({ hostname }, "tls certificate removed");
      }
    }
    this.#loaded = next;
    if (withdrawn) for (const listener of this.#listeners) listener();
  }

  /**
   * The pair for `hostname`: `previous` when the files did not change, a new context when they did and are a
   * valid pair for exactly this name, else `previous` again while the files exist (a writer replaces the
   * key, then the certificate: between the two the pair does not match), or null.
   */
  async #load(hostname: string, previous: Loaded | undefined): Promise<Loaded | null> {
    const certFile = join(this.#options.dir, `${hostname}.pem`);
    const keyFile = join(this.#options.dir, `${hostname}.key.pem`);
    let signature: string;
    let cert: Buffer;
    let key: Buffer;
    try {
      const [c, k] = await Promise.all([stat(certFile), stat(keyFile)]);
      signature = `${c.ino}:${c.size}:${c.mtimeMs}/${k.ino}:${k.size}:${k.mtimeMs}`;
      if (previous?.signature === signature) return previous;
      if ((k.mode & 0o077) !== 0) {
        this.#once(
          keyFile,
          "mode",
          "warn",
          "tls key file is readable by others than the plane's user: make it 0600",
        );
      }
      [cert, key] = await Promise.all([readFile(certFile), readFile(keyFile)]);
    } catch {
      return null;
    }
    const problem = pairProblem(hostname, cert, key);
    if (problem !== null) {
      this.#once(certFile, problem, "error", "tls certificate not loaded");
      return previous ?? null;
    }
    const wildcard = wildcardWarning(cert);
    if (wildcard !== null) this.#once(certFile, "wildcard", "warn", wildcard);
    this.#logged.delete(certFile);
    this.#options.logger.info({ hostname }, previous ? "tls certificate replaced" : "tls certificate loaded");
    return { signature, context: createSecureContext({ cert, key }) };
  }

  #once(file: string, reason: string, level: "warn" | "error", message: string): void {
    if (this.#logged.get(file) === reason) return;
    this.#logged.set(file, reason);
    this.#options.logger[level]({ file, reason }, message);
  }
}

/** Why `cert` + `key` may not be served for `hostname`, or null. */
function pairProblem(hostname: string, cert: Buffer, key: Buffer): string | null {
  let x: X509Certificate;
  try {
    x = new X509Certificate(cert);
  } catch {
    return "not a PEM certificate";
  }
  // Exact names only: a wildcard certificate in a hostname's file is still served only for that hostname.
  if (x.checkHost(hostname, { wildcards: true }) === undefined) return `it does not name ${hostname}`;
  try {
    if (!x.checkPrivateKey(createPrivateKey(key))) return "the key is not the certificate's";
  } catch {
    return "the key is not a PEM private key";
  }
  if (Date.parse(x.validTo) < Date.now()) return `it expired on ${x.validTo}`;
  return null;
}
