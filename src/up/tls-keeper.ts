// `meridian up` keeps each plane's certificate directory (`--tls-dir`) in step with the DNS snapshot: a plane
// holds a certificate for exactly the hostnames DNS sends clients to it for (src/core/tls-plan.ts), each
// issued by the local CA for that plane alone, and nothing else. A name that leaves a plane (a restriction
// moved to another region) is removed there before it is issued elsewhere. Silent unless something fails.

import { X509Certificate } from "node:crypto";
import { readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { join } from "node:path";
import { Agent, request } from "undici";
import { checkDnsSnapshot } from "../core/dns-answers.ts";
import type { DnsSnapshot } from "../core/snapshot.ts";
import { certificatePlan, isCertificateHostname } from "../core/tls-plan.ts";
import { SnapshotWatcher } from "../lib/watch.ts";
import {
  type CertificateAuthority,
  HOSTNAME_CERT_DAYS,
  issueCertificate,
  RENEW_BEFORE_MS,
  reasonToReissue,
  type Subject,
  writeCertificatePair,
} from "./tls.ts";

export interface KeptPlane {
  name: string;
  /** The address the plane is registered with (what DNS answers). */
  address: string;
  /** The plane's `--tls-dir`. */
  dir: string;
}

export interface TlsKeeperOptions {
  ca: CertificateAuthority;
  planes: readonly KeptPlane[];
  /** One line per failure (printed by `up`); each distinct failure once until it clears. */
  report: (line: string) => void;
  /** How often the directories are checked against the last snapshot (stray or deleted files, renewals). */
  recheckMs?: number;
  now?: () => Date;
}

/** What was last verified on disk for a hostname: the files' identity and the certificate's end. */
interface Verified {
  signature: string;
  renewAt: number;
}

export class TlsKeeper {
  readonly #options: TlsKeeperOptions;
  readonly #verified = new Map<string, Verified>();
  readonly #failures = new Set<string>();
  #snapshot: DnsSnapshot | null = null;
  #queue: Promise<void> = Promise.resolve();
  #timer: NodeJS.Timeout | null = null;

  constructor(options: TlsKeeperOptions) {
    this.#options = options;
  }

  /**
   * Brings every directory in step with `snapshot`, or with a newer one already applied (a fetched snapshot
   * may arrive after the long-poll brought a later one); passes run one at a time, in order.
   */
  apply(snapshot: DnsSnapshot): Promise<void> {
    if (this.#snapshot === null || snapshot.revision >= this.#snapshot.revision) this.#snapshot = snapshot;
    return this.#enqueue();
  }

  /** Checks the directories against the last snapshot again, every `recheckMs` (default 5 s) until stop(). */
  start(): void {
    this.#timer = setInterval(() => void this.#enqueue(), this.#options.recheckMs ?? 5_000);
    this.#timer.unref();
  }

  async stop(): Promise<void> {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
    await this.#queue;
  }

  #enqueue(): Promise<void> {
    // A pass reports its own failures; anything else it throws is reported here, so the chain goes on.
    this.#queue = this.#queue
      .then(() => this.#pass())
      .catch((err) => this.#fail("keeping certificates", err));
    return this.#queue;
  }

  async #pass(): Promise<void> {
    const snapshot = this.#snapshot;
    if (snapshot === null) return;
    const plan = certificatePlan(
      snapshot,
      this.#options.planes.map((p) => ({ name: p.name, addresses: [p.address] })),
    );
    // Removals first, on every plane, so a name that moves is gone from its old region before it is issued
    // in the new one. A directory that cannot be cleaned gets nothing new in this pass.
    const clean = this.#options.planes.filter((plane) =>
      this.#attempt(`${plane.name}: cleaning ${plane.dir}`, () =>
        this.#removeUnwanted(plane, new Set(plan.get(plane.name) ?? [])),
      ),
    );
    for (const plane of clean) {
      for (const hostname of plan.get(plane.name) ?? []) {
        await this.#attemptAsync(`${plane.name}: the certificate of ${hostname}`, () =>
          this.#ensure(plane, hostname),
        );
      }
    }
  }

  #removeUnwanted(plane: KeptPlane, wanted: ReadonlySet<string>): void {
    const keep = new Set([...wanted].flatMap((h) => [`${h}.pem`, `${h}.key.pem`]));
    for (const entry of readdirSync(plane.dir)) {
      // A temporary file is a write that did not finish (it may hold a key), and any other PEM file is a
      // certificate or key this plane may not hold: neither is left behind.
      if (!entry.endsWith(".tmp") && (!entry.endsWith(".pem") || keep.has(entry))) continue;
      rmSync(join(plane.dir, entry), { force: true });
    }
    for (const base of this.#verified.keys()) {
      if (base.startsWith(`${plane.dir}/`) && !wanted.has(base.slice(plane.dir.length + 1))) {
        this.#verified.delete(base);
      }
    }
  }

  async #ensure(plane: KeptPlane, hostname: string): Promise<void> {
    if (!isCertificateHostname(hostname)) return;
    const base = join(plane.dir, hostname);
    const now = this.#now();
    const known = this.#verified.get(base);
    const signature = fileSignature(base);
    if (known && signature === known.signature && now.getTime() < known.renewAt) return;
    const subject: Subject = { kind: "hostname", hostname };
    if (signature !== null) {
      const reason = reasonToReissue(
        this.#options.ca,
        readFileSync(`${base}.pem`, "utf8"),
        readFileSync(`${base}.key.pem`, "utf8"),
        subject,
        now,
      );
      if (reason === null) {
        this.#verified.set(base, { signature, renewAt: renewAt(`${base}.pem`) });
        return;
      }
    }
    const issued = await issueCertificate(this.#options.ca, subject, HOSTNAME_CERT_DAYS, now);
    writeCertificatePair(plane.dir, hostname, issued);
    this.#verified.set(base, {
      signature: fileSignature(base) ?? "",
      renewAt: issued.notAfter.getTime() - RENEW_BEFORE_MS,
    });
  }

  #attempt(what: string, body: () => void): boolean {
    try {
      body();
      this.#failures.delete(what);
      return true;
    } catch (err) {
      this.#fail(what, err);
      return false;
    }
  }

  async #attemptAsync(what: string, body: () => Promise<void>): Promise<void> {
    try {
      await body();
      this.#failures.delete(what);
    } catch (err) {
      this.#fail(what, err);
    }
  }

  #fail(what: string, err: unknown): void {
    if (this.#failures.has(what)) return;
    this.#failures.add(what);
    this.#options.report(`! tls: ${what} failed: ${(err as Error).message}`);
  }

  #now(): Date {
    return this.#options.now?.() ?? new Date();
  }
}

/** Identity of `{base}.pem` + `{base}.key.pem` as they are on disk, or null when either is missing. */
function fileSignature(base: string): string | null {
  try {
    const c = statSync(`${base}.pem`);
    const k = statSync(`${base}.key.pem`);
    return `${c.ino}:${c.size}:${c.mtimeMs}/${k.ino}:${k.size}:${k.mtimeMs}`;
  } catch {
    return null;
  }
}

function renewAt(certFile: string): number {
  return new Date(new X509Certificate(readFileSync(certFile, "utf8")).validTo).getTime() - RENEW_BEFORE_MS;
}

export interface TlsKeeping {
  /** Fetches the current DNS snapshot and applies it: resolves once the directories match it. */
  sync(): Promise<void>;
  stop(): Promise<void>;
}

/**
 * Starts keeping the directories: one pass with the current snapshot (resolved before this returns, so the
 * planes start with their certificates), then one per snapshot the long-poll brings, and a recheck every
 * few seconds.
 */
export async function startTlsKeeping(
  options: Omit<TlsKeeperOptions, "now"> & { snapshotUrl: string; token: string },
): Promise<TlsKeeping> {
  const keeper = new TlsKeeper(options);
  // Its own connections, closed on stop: an idle keep-alive socket would hold the control plane's drain.
  const dispatcher = new Agent();
  const fetchSnapshot = async (): Promise<DnsSnapshot> => {
    const res = await request(options.snapshotUrl, {
      dispatcher,
      headers: { authorization: `Bearer ${options.token}`, accept: "application/json" },
      headersTimeout: 10_000,
      bodyTimeout: 10_000,
    });
    if (res.statusCode !== 200) {
      const text = await res.body.text().catch(() => "");
      throw new Error(`the DNS snapshot answered ${res.statusCode}: ${text.slice(0, 200)}`);
    }
    return parseSnapshot(await res.body.json());
  };
  await keeper.apply(await fetchSnapshot());
  // No logger: `up` prints only failures, and the keeper reports its own.
  const watcher = new SnapshotWatcher<DnsSnapshot>({
    url: options.snapshotUrl,
    token: options.token,
    parse: parseSnapshot,
    dispatcher,
  });
  watcher.subscribe((snapshot) => void keeper.apply(snapshot));
  await watcher.start();
  keeper.start();
  return {
    sync: async () => keeper.apply(await fetchSnapshot()),
    stop: async () => {
      await watcher.stop();
      await keeper.stop();
      await dispatcher.destroy();
    },
  };
}

function parseSnapshot(body: unknown): DnsSnapshot {
  const check = checkDnsSnapshot(body);
  if (!check.ok) throw new Error(`not a DNS snapshot: ${check.message}`);
  return check.snapshot;
}
