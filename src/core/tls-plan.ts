// Which TLS certificates a plane may hold (DESIGN.md §2.2 and §2.9): one certificate per inference hostname,
// held only by the planes DNS sends clients to for that name. A regional name of an environment restricted to
// R is therefore held only by R's planes, a standard name only by the global-ingress planes. No wildcard.

import { normalizeDnsName, parseEndpointLabel } from "./dns-answers.ts";
import { regionalHostname, standardHostname } from "./host.ts";
import type { DnsSnapshot } from "./snapshot.ts";

/** A plane that receives certificates, by the ingress addresses it is registered with. */
export interface CertificateHolder {
  name: string;
  addresses: readonly string[];
}

/** RFC 1123 §2.1 label: letters, digits and inner hyphens, 1–63 octets, lowercase here. */
const LABEL = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;

/**
 * A name a leaf certificate may be issued for and a file may be named after: lowercase, at least two labels,
 * at most 253 octets (RFC 1035 §2.3.4), and no wildcard. The last rule is the point: `*.{domain}` matches
 * every regional hostname (each is a single label under the domain), whichever region it belongs to.
 */
export function isCertificateHostname(name: string): boolean {
  if (name.length === 0 || name.length > 253) return false;
  const labels = name.split(".");
  if (labels.length < 2 || !labels.every((l) => LABEL.test(l))) return false;
  // An IPv4 address is four numeric labels; it is a plane's own address (an IP SAN), never a hostname here.
  return !labels.every((l) => /^\d+$/.test(l));
}

/** The wildcard names (`*.…`) among a certificate's DNS names: each covers other regions' hostnames. */
export function wildcardNames(dnsNames: readonly string[]): string[] {
  return dnsNames.filter((n) => n.includes("*"));
}

/**
 * For each holder, the hostnames it must hold a certificate for, sorted: the standard hostname of every model
 * when DNS answers it with one of the holder's addresses (the global ingress), and the regional hostname of
 * every restricted environment when DNS answers it with one of them (planes of the environment's region).
 * An environment without a restriction has no regional name (DNS: NXDOMAIN), so no certificate.
 * Names that DNS could not answer either (an invalid id or environment name) are left out.
 */
export function certificatePlan(
  snapshot: DnsSnapshot,
  holders: readonly CertificateHolder[],
): Map<string, string[]> {
  const domain = normalizeDnsName(snapshot.domain);
  const wanted = new Map<string, Set<string>>(holders.map((h) => [h.name, new Set()]));
  const give = (hostname: string, addresses: readonly string[]) => {
    if (!isCertificateHostname(hostname)) return;
    const label = hostname.slice(0, hostname.indexOf("."));
    if (parseEndpointLabel(label) === null) return;
    for (const h of holders) {
      if (h.addresses.some((a) => addresses.includes(a))) wanted.get(h.name)!.add(hostname);
    }
  };
  for (const model of snapshot.models) {
    give(standardHostname(model.id, domain), snapshot.global_ingress);
    for (const env of model.regional_environments) {
      const inRegion = Object.hasOwn(snapshot.regions, env.region) ? snapshot.regions[env.region] : [];
      give(regionalHostname(model.id, env.name, domain), inRegion ?? []);
    }
  }
  return new Map([...wanted].map(([name, set]) => [name, [...set].sort()]));
}
