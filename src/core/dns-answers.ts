// Authoritative DNS answers for the inference domain, computed from a `DnsSnapshot` (DESIGN.md §2.2, §4):
// standard names → global ingress, regional names → only their region's ingresses, SOA and NS at the apex.
// Pure: no I/O. The `src/dns` server encodes what this returns.

import { checkEnvironmentName, isModelId } from "./names.ts";
import type { DnsSnapshot } from "./snapshot.ts";

/** Response codes this responder sends (RFC 1035 §4.1.1). */
export type DnsRcode = "NOERROR" | "FORMERR" | "SERVFAIL" | "NXDOMAIN" | "NOTIMP" | "REFUSED";

/** A question as decoded from the wire: type and class by mnemonic (`A`, `IN`, `UNKNOWN_99`). */
export interface DnsQuestion {
  name: string;
  type: string;
  class: string;
}

export interface SoaData {
  mname: string;
  rname: string;
  serial: number;
  refresh: number;
  retry: number;
  expire: number;
  minimum: number;
}

export type DnsRecord =
  | { name: string; type: "A" | "AAAA" | "NS"; ttl: number; data: string }
  | { name: string; type: "SOA"; ttl: number; data: SoaData };

export interface DnsAnswer {
  rcode: DnsRcode;
  /** AA bit: set for every answer about a name inside the zone (RFC 1035 §4.1.1). */
  authoritative: boolean;
  answers: DnsRecord[];
  authorities: DnsRecord[];
  additionals: DnsRecord[];
}

/** The zone this responder is authoritative for, with its own name server. Build it with `dnsZone`. */
export interface DnsZone {
  /** Normalized apex, e.g. `meridian.localhost`. */
  readonly domain: string;
  /** The responder's own host name, the SOA MNAME and the apex NS target. */
  readonly nsName: string;
  /** Addresses of `nsName`, answered (and given as glue) when `nsName` lies inside the zone. */
  readonly nsAddresses: readonly string[];
  /** SOA RNAME: the zone contact's mailbox in domain-name form (RFC 1035 §3.3.13). */
  readonly hostmaster: string;
  /** TTL of positive answers, seconds. */
  readonly ttl: number;
  /** SOA MINIMUM: how long resolvers cache NXDOMAIN and NODATA (RFC 2308 §4). */
  readonly negativeTtl: number;
}

export interface DnsZoneOptions {
  domain: string;
  nsName?: string;
  nsAddresses?: readonly string[];
  hostmaster?: string;
  ttl?: number;
  negativeTtl?: number;
}

/** Short by default: the answers follow the control plane within seconds (issue 4 item 4). */
export const DEFAULT_DNS_TTL = 5;

/** SOA timers. Nothing transfers this zone (AXFR is refused), so they only need to be sane. */
const SOA_REFRESH = 60;
const SOA_RETRY = 30;
const SOA_EXPIRE = 86_400;

/** RFC 2181 §8: a TTL is an unsigned 31-bit number of seconds. */
const TTL_MAX = 2 ** 31 - 1;

export function dnsZone(options: DnsZoneOptions): DnsZone {
  const domain = normalizeDnsName(options.domain);
  const ttl = options.ttl ?? DEFAULT_DNS_TTL;
  const negativeTtl = options.negativeTtl ?? ttl;
  for (const [what, value] of [
    ["ttl", ttl],
    ["negativeTtl", negativeTtl],
  ] as const) {
    if (!Number.isInteger(value) || value < 0 || value > TTL_MAX) {
      throw new RangeError(`${what} must be an integer from 0 to ${TTL_MAX}, got ${value}`);
    }
  }
  if (!isDnsName(domain) || domain === "") throw new RangeError(`not a domain name: ${options.domain}`);
  const nsName = normalizeDnsName(options.nsName ?? `ns.${domain}`);
  if (!isDnsName(nsName)) throw new RangeError(`not a host name: ${options.nsName}`);
  const nsAddresses = Object.freeze(dedupe(options.nsAddresses ?? []));
  for (const address of nsAddresses) {
    if (ipFamily(address) === null) throw new RangeError(`not an IP address: ${address}`);
  }
  const hostmaster = normalizeDnsName(options.hostmaster ?? `hostmaster.${domain}`);
  if (!isDnsName(hostmaster)) throw new RangeError(`not a mailbox domain name: ${options.hostmaster}`);
  return Object.freeze({ domain, nsName, nsAddresses, hostmaster, ttl, negativeTtl });
}

/**
 * Lowercases ASCII letters only and drops one trailing dot. RFC 4343 §3: DNS name comparison is
 * case-insensitive for the 26 ASCII letters and for nothing else.
 */
export function normalizeDnsName(name: string): string {
  const trimmed = name.endsWith(".") ? name.slice(0, -1) : name;
  return trimmed.replace(/[A-Z]+/g, (s) => s.toLowerCase());
}

/** RFC 1035 §2.3.4: labels of 1–63 octets, at most 255 octets on the wire (253 in text form). */
function isDnsName(name: string): boolean {
  if (name.length > 253) return false;
  if (name === "") return true;
  return name.split(".").every((label) => label.length >= 1 && label.length <= 63);
}

/** The inference endpoint a single DNS label names (DESIGN.md §3), or null when it names none. */
export type EndpointLabel =
  | { form: "standard"; modelId: string }
  | { form: "regional"; modelId: string; environment: string };

const MODEL_PREFIX = "model-";

/**
 * Parses `model-{id}` and `model-{id}-{env}`. Model ids are 8 alphanumerics without a hyphen, so the
 * ninth character after the prefix is the only possible separator (DESIGN.md §1 "Names").
 */
export function parseEndpointLabel(label: string): EndpointLabel | null {
  if (!label.startsWith(MODEL_PREFIX)) return null;
  const rest = label.slice(MODEL_PREFIX.length);
  const modelId = rest.slice(0, 8);
  if (!isModelId(modelId)) return null;
  if (rest.length === 8) return { form: "standard", modelId };
  if (rest[8] !== "-") return null;
  const environment = rest.slice(9);
  if (!checkEnvironmentName(environment).ok) return null;
  return { form: "regional", modelId, environment };
}

/** 4 or 6 for a textual IPv4 (dotted quad) or IPv6 (RFC 4291 §2.2) address; null otherwise. */
export function ipFamily(address: string): 4 | 6 | null {
  if (isIPv4(address)) return 4;
  if (isIPv6(address)) return 6;
  return null;
}

const IPV4_OCTET = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]\d|\d)$/;

function isIPv4(address: string): boolean {
  const parts = address.split(".");
  return parts.length === 4 && parts.every((p) => IPV4_OCTET.test(p));
}

const HEX_GROUP = /^[0-9a-fA-F]{1,4}$/;

function isIPv6(address: string): boolean {
  const halves = address.split("::");
  if (halves.length > 2) return false;
  const groupsOf = (half: string): string[] | null => {
    if (half === "") return [];
    const groups = half.split(":");
    return groups.every((g) => g !== "") ? groups : null;
  };
  const head = groupsOf(halves[0]!);
  const tail = halves.length === 2 ? groupsOf(halves[1]!) : [];
  if (head === null || tail === null) return false;
  const groups = [...head, ...tail];
  let width = 0;
  for (const [i, g] of groups.entries()) {
    // RFC 4291 §2.2 form 3: an embedded IPv4 address may only be the last 32 bits.
    if (i === groups.length - 1 && g.includes(".")) {
      if (!isIPv4(g)) return false;
      width += 2;
    } else if (HEX_GROUP.test(g)) {
      width += 1;
    } else {
      return false;
    }
  }
  return halves.length === 2 ? width <= 7 : width === 8;
}

export type DnsSnapshotCheck =
  | { ok: true; snapshot: DnsSnapshot; warnings: string[] }
  | { ok: false; message: string };

/**
 * Validates a snapshot that arrived as JSON. Structure must match the contract exactly; an address that is
 * not an IP is only a warning (it can never be answered, and one bad plane must not freeze every update).
 */
export function checkDnsSnapshot(value: unknown): DnsSnapshotCheck {
  if (!isRecord(value)) return invalid("snapshot is not an object");
  const { revision, domain, global_ingress, regions, models } = value;
  if (typeof revision !== "number" || !Number.isSafeInteger(revision) || revision < 0) {
    return invalid("revision must be a non-negative integer");
  }
  if (typeof domain !== "string" || domain === "") return invalid("domain must be a non-empty string");
  if (!isStringArray(global_ingress)) return invalid("global_ingress must be an array of strings");
  if (!isRecord(regions) || !Object.values(regions).every(isStringArray)) {
    return invalid("regions must map region slugs to arrays of strings");
  }
  if (!Array.isArray(models)) return invalid("models must be an array");
  for (const [i, model] of models.entries()) {
    if (!isRecord(model) || typeof model.id !== "string" || !Array.isArray(model.regional_environments)) {
      return invalid(`models[${i}] must have an id and regional_environments`);
    }
    for (const env of model.regional_environments) {
      if (!isRecord(env) || typeof env.name !== "string" || typeof env.region !== "string") {
        return invalid(`models[${i}].regional_environments entries must have a name and a region`);
      }
    }
  }
  const snapshot = value as unknown as DnsSnapshot;
  const warnings: string[] = [];
  const addressLists: Array<[string, string[]]> = [
    ["global_ingress", snapshot.global_ingress],
    ...Object.entries(snapshot.regions).map(([r, a]): [string, string[]] => [`regions.${r}`, a]),
  ];
  for (const [where, addresses] of addressLists) {
    for (const address of addresses) {
      if (ipFamily(address) === null) warnings.push(`${where}: '${address}' is not an IP address; ignored`);
    }
  }
  return { ok: true, snapshot, warnings };
}

/**
 * Answers one question. Never throws: every name, type and class gets an answer.
 * - outside the zone → REFUSED without AA (we are authoritative only for `zone.domain`);
 * - no snapshot yet → SERVFAIL: we cannot tell what exists (RFC 1035 §4.1.1);
 * - a name with no records of the asked type → NODATA: NOERROR, empty answer, SOA in authority
 *   (RFC 2308 §2.2); a name that does not exist → NXDOMAIN with SOA (RFC 2308 §2.1).
 */
export function answerQuestion(
  zone: DnsZone,
  snapshot: DnsSnapshot | null,
  question: DnsQuestion,
): DnsAnswer {
  const name = normalizeDnsName(question.name);
  if (!isInZone(name, zone.domain)) return refused();
  // Only the IN class is served; QCLASS * (ANY) matches it (RFC 1035 §3.2.5).
  if (question.class !== "IN" && question.class !== "ANY") return refused();
  // Zone transfers are not offered: the zone's source of truth is the control plane, not this server.
  if (question.type === "AXFR" || question.type === "IXFR") return refused();
  if (snapshot === null) return reply("SERVFAIL", false, [], [], []);

  const owner = question.name.endsWith(".") ? question.name.slice(0, -1) : question.name;
  const node = lookupNode(zone, snapshot, name, owner);
  const soa = soaRecord(zone, snapshot);
  if (node === null) return reply("NXDOMAIN", true, [], [soa], []);

  // RFC 8482 §4.2 lets a responder return a subset for ANY; returning the whole (small) node is simplest.
  const answers = question.type === "ANY" ? node : node.filter((r) => r.type === question.type);
  if (answers.length === 0) return reply("NOERROR", true, [], [soa], []);
  const additionals = answers.some((r) => r.type === "NS") ? nsGlue(zone) : [];
  return reply("NOERROR", true, answers, [], additionals);
}

/** The records owned by `name`, or null when the name does not exist in the zone. */
function lookupNode(zone: DnsZone, snapshot: DnsSnapshot, name: string, owner: string): DnsRecord[] | null {
  if (name === zone.domain) {
    return [soaRecord(zone, snapshot), { name: zone.domain, type: "NS", ttl: zone.ttl, data: zone.nsName }];
  }
  if (name === zone.nsName) return addressRecords(owner, zone.nsAddresses, zone.ttl);
  // An ancestor of the NS host inside the zone is an empty non-terminal: it exists, with no records
  // (RFC 8020 §2: NXDOMAIN would deny everything beneath it).
  if (isInZone(zone.nsName, zone.domain) && zone.nsName.endsWith(`.${name}`)) return [];

  const relative = name.slice(0, -(zone.domain.length + 1));
  if (relative.includes(".")) return null;
  const endpoint = parseEndpointLabel(relative);
  if (endpoint === null) return null;
  const model = snapshot.models.find((m) => m.id === endpoint.modelId);
  if (model === undefined) return null;
  if (endpoint.form === "standard") return addressRecords(owner, snapshot.global_ingress, zone.ttl);

  const environment = model.regional_environments.find((e) => e.name === endpoint.environment);
  if (environment === undefined) return null;
  // A restricted region with no planes (or none registered yet) still names an existing endpoint: it answers
  // NODATA, so clients fail closed and never learn another region's address (DESIGN.md §2.2).
  const inRegion = Object.hasOwn(snapshot.regions, environment.region)
    ? snapshot.regions[environment.region]
    : [];
  return addressRecords(owner, inRegion ?? [], zone.ttl);
}

function addressRecords(owner: string, addresses: readonly string[], ttl: number): DnsRecord[] {
  const records: DnsRecord[] = [];
  for (const address of dedupe(addresses)) {
    const family = ipFamily(address);
    if (family === 4) records.push({ name: owner, type: "A", ttl, data: address });
    if (family === 6) records.push({ name: owner, type: "AAAA", ttl, data: address });
  }
  return records;
}

function nsGlue(zone: DnsZone): DnsRecord[] {
  if (!isInZone(zone.nsName, zone.domain)) return [];
  return addressRecords(zone.nsName, zone.nsAddresses, zone.ttl);
}

/** RFC 1035 §3.3.13 SOA; the serial is the snapshot revision in 32-bit serial space (RFC 1982). */
function soaRecord(zone: DnsZone, snapshot: DnsSnapshot): DnsRecord {
  return {
    name: zone.domain,
    type: "SOA",
    ttl: zone.ttl,
    data: {
      mname: zone.nsName,
      rname: zone.hostmaster,
      serial: snapshot.revision % 2 ** 32,
      refresh: SOA_REFRESH,
      retry: SOA_RETRY,
      expire: SOA_EXPIRE,
      minimum: zone.negativeTtl,
    },
  };
}

function isInZone(name: string, domain: string): boolean {
  return name === domain || name.endsWith(`.${domain}`);
}

function refused(): DnsAnswer {
  return reply("REFUSED", false, [], [], []);
}

function reply(
  rcode: DnsRcode,
  authoritative: boolean,
  answers: DnsRecord[],
  authorities: DnsRecord[],
  additionals: DnsRecord[],
): DnsAnswer {
  return { rcode, authoritative, answers, authorities, additionals };
}

function dedupe(values: readonly string[]): string[] {
  return [...new Set(values)];
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function isStringArray(value: unknown): value is string[] {
  return Array.isArray(value) && value.every((v) => typeof v === "string");
}

function invalid(message: string): DnsSnapshotCheck {
  return { ok: false, message };
}
