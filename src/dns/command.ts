// `meridian dns`: the entry point of the authoritative DNS responder. Parses flags once into a frozen
// config, composes snapshot source (control-plane watcher or a static file) and server, drains on SIGTERM,
// and stops when the process that started it (`meridian up`) is gone.
import { readFile } from "node:fs/promises";
import { isIP } from "node:net";
import { join } from "node:path";
import pino, { type Logger } from "pino";
import { checkDnsSnapshot, DEFAULT_DNS_TTL, dnsZone, normalizeDnsName } from "../core/dns-answers.ts";
import type { DnsSnapshot } from "../core/snapshot.ts";
import { watchParent } from "../lib/shutdown.ts";
import { type SnapshotSource, SnapshotWatcher, staticSnapshotSource } from "../lib/watch.ts";
import { DnsServer } from "./server.ts";

/** Flags as commander hands them over (all strings). */
export interface DnsFlags {
  listen: string;
  domain: string;
  controlUrl?: string;
  tokenFile?: string;
  dataDir?: string;
  ttl?: string;
  snapshotFile?: string;
  nsName?: string;
  nsAddress?: string;
}

/** The control plane's DNS snapshot endpoint (long-poll: `?after={revision}&wait={seconds}`). */
export const DNS_SNAPSHOT_PATH = "v1/internal/dns/snapshot";
/** Name of the snapshot cache inside `--data-dir`. */
export const DNS_CACHE_FILE = "dns-snapshot.json";

export type DnsSnapshotOrigin =
  | {
      readonly kind: "control";
      readonly url: string;
      readonly tokenFile: string;
      readonly cacheFile: string | null;
    }
  | { readonly kind: "file"; readonly file: string };

export interface DnsConfig {
  readonly host: string;
  readonly port: number;
  readonly domain: string;
  readonly ttl: number;
  readonly nsName: string | null;
  readonly nsAddresses: readonly string[];
  readonly origin: DnsSnapshotOrigin;
}

export type DnsConfigOutcome = { ok: true; config: DnsConfig } | { ok: false; message: string };

export function parseDnsConfig(flags: DnsFlags): DnsConfigOutcome {
  const listen = parseListen(flags.listen);
  if (listen === null)
    return fail(`--listen must be IP:PORT (e.g. 127.0.0.1:5353), got ${JSON.stringify(flags.listen)}`);

  let ttl = DEFAULT_DNS_TTL;
  if (flags.ttl !== undefined) {
    if (!/^\d{1,10}$/.test(flags.ttl) || Number(flags.ttl) > 2 ** 31 - 1) {
      return fail("--ttl must be a whole number of seconds (RFC 2181 §8: at most 2147483647)");
    }
    ttl = Number(flags.ttl);
  }

  const nsAddresses =
    flags.nsAddress !== undefined
      ? flags.nsAddress
          .split(",")
          .map((a) => a.trim())
          .filter((a) => a !== "")
      : isUnspecified(listen.host)
        ? []
        : [listen.host];
  const bad = nsAddresses.find((a) => isIP(a) === 0);
  if (bad !== undefined) return fail(`--ns-address must list IP addresses, got ${JSON.stringify(bad)}`);
  try {
    dnsZone({ domain: flags.domain, ttl, nsAddresses, ...(flags.nsName ? { nsName: flags.nsName } : {}) });
  } catch (err) {
    return fail((err as Error).message);
  }

  let origin: DnsSnapshotOrigin;
  if (flags.snapshotFile !== undefined) {
    if (flags.controlUrl !== undefined) return fail("give either --snapshot-file or --control-url, not both");
    origin = { kind: "file", file: flags.snapshotFile };
  } else {
    if (flags.controlUrl === undefined) return fail("--control-url (or --snapshot-file) is required");
    if (flags.tokenFile === undefined) return fail("--token-file is required with --control-url");
    let base: URL;
    try {
      base = new URL(flags.controlUrl);
    } catch {
      return fail(`--control-url is not a URL: ${JSON.stringify(flags.controlUrl)}`);
    }
    if (base.protocol !== "http:" && base.protocol !== "https:") return fail("--control-url must be http(s)");
    if (!base.pathname.endsWith("/")) base.pathname += "/";
    origin = {
      kind: "control",
      url: new URL(DNS_SNAPSHOT_PATH, base).toString(),
      tokenFile: flags.tokenFile,
      cacheFile: flags.dataDir !== undefined ? join(flags.dataDir, DNS_CACHE_FILE) : null,
    };
  }

  return {
    ok: true,
    config: Object.freeze({
      host: listen.host,
      port: listen.port,
      domain: flags.domain,
      ttl,
      nsName: flags.nsName ?? null,
      nsAddresses: Object.freeze(nsAddresses),
      origin: Object.freeze(origin),
    }),
  };
}

/**
 * Runs until SIGTERM or SIGINT, or until the process that started it is gone (then the caller's exit is due
 * within ORPHAN_STOP_LIMIT_MS, src/lib/shutdown.ts); returns the process exit code.
 */
export async function runDnsCommand(flags: DnsFlags, env: NodeJS.ProcessEnv = process.env): Promise<number> {
  const parent = watchParent(env, "dns");
  const parsed = parseDnsConfig(flags);
  if (!parsed.ok) {
    process.stderr.write(`meridian dns: ${parsed.message}\n`);
    return 2;
  }
  const config = parsed.config;
  const logger = pino({ name: "meridian-dns" });
  const signal = shutdownSignal();

  let source: SnapshotSource<DnsSnapshot>;
  let watcher: SnapshotWatcher<DnsSnapshot> | null = null;
  try {
    if (config.origin.kind === "file") {
      const snapshot = await readSnapshotFile(config.origin.file);
      if (normalizeDnsName(snapshot.domain) !== normalizeDnsName(config.domain)) {
        throw new Error(
          `the snapshot file ${config.origin.file} is for ${snapshot.domain}, not ${config.domain}`,
        );
      }
      source = staticSnapshotSource(snapshot);
    } else {
      const token = (await readFile(config.origin.tokenFile, "utf8")).trim();
      if (token === "") throw new Error(`the token file ${config.origin.tokenFile} is empty`);
      watcher = new SnapshotWatcher<DnsSnapshot>({
        url: config.origin.url,
        token,
        parse: (body) => parseSnapshot(body, logger),
        logger,
        ...(config.origin.cacheFile !== null ? { cacheFile: config.origin.cacheFile } : {}),
      });
      source = watcher;
    }
  } catch (err) {
    process.stderr.write(`meridian dns: ${(err as Error).message}\n`);
    return 1;
  }

  const server = new DnsServer({
    host: config.host,
    port: config.port,
    domain: config.domain,
    ttl: config.ttl,
    nsAddresses: [...config.nsAddresses],
    ...(config.nsName !== null ? { nsName: config.nsName } : {}),
    logger,
    snapshots: source,
  });
  try {
    // The watcher first, so a cached snapshot is in place before the first query arrives.
    await watcher?.start();
    await server.start();
  } catch (err) {
    logger.error({ err }, "dns failed to start");
    await watcher?.stop();
    return 1;
  }

  const received = await Promise.race([signal, parent.gone.then(() => null)]);
  logger.info(received === null ? { reason: "parent gone" } : { signal: received }, "dns draining");
  // Reverse order of start: stop answering, then stop following the control plane.
  await server.stop();
  await watcher?.stop();
  return 0;
}

async function readSnapshotFile(file: string): Promise<DnsSnapshot> {
  const text = await readFile(file, "utf8");
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch (err) {
    throw new Error(`the snapshot file ${file} is not JSON: ${(err as Error).message}`);
  }
  const check = checkDnsSnapshot(body);
  if (!check.ok) throw new Error(`the snapshot file ${file} is not a DNS snapshot: ${check.message}`);
  return check.snapshot;
}

function parseSnapshot(body: unknown, logger: Logger): DnsSnapshot {
  const check = checkDnsSnapshot(body);
  if (!check.ok) throw new Error(check.message);
  for (const warning of check.warnings)
    logger.warn({ revision: check.snapshot.revision, warning }, "dns snapshot warning");
  return check.snapshot;
}

function shutdownSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const stop = (signal: NodeJS.Signals) => {
      process.off("SIGTERM", stop);
      process.off("SIGINT", stop);
      resolve(signal);
    };
    process.on("SIGTERM", stop);
    process.on("SIGINT", stop);
  });
}

/** `IPv4:PORT` or `[IPv6]:PORT`; DNS clients are given addresses, so the host must be an IP. */
function parseListen(value: string): { host: string; port: number } | null {
  const match = /^\[([^\]]+)\]:(\d{1,5})$/.exec(value) ?? /^([^:[\]]+):(\d{1,5})$/.exec(value);
  if (!match) return null;
  const host = match[1]!;
  const port = Number(match[2]);
  if (isIP(host) === 0 || port > 65_535) return null;
  return { host, port };
}

function isUnspecified(host: string): boolean {
  return host === "0.0.0.0" || host === "::";
}

function fail(message: string): DnsConfigOutcome {
  return { ok: false, message };
}
