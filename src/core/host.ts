// Parses an inference request's Host header into the endpoint it names (DESIGN.md §3):
// `model-{id}.{domain}` (StandardEndpoint) or `model-{id}-{env}.{domain}` (RegionalEndpoint).
// Pure and total: any string yields a typed outcome, never an exception.

import { isEnvironmentName, MODEL_ID_LENGTH } from "./names.ts";

export type ParsedHost =
  | { form: "standard"; modelId: string; port: number | null }
  | { form: "regional"; modelId: string; environment: string; port: number | null };

export type HostRefusal = {
  ok: false;
  /** `invalid_host` (400): not a syntactically valid Host; `unknown_host` (404): valid, but not ours. */
  code: "invalid_host" | "unknown_host";
  reason: string;
};

export type HostParse = { ok: true; host: ParsedHost } | HostRefusal;

export const HOST_MAX_LENGTH = 255;
const MODEL_PREFIX = "model-";

/**
 * RFC 9110 §7.2: `Host = uri-host [ ":" port ]`; RFC 3986 §3.2.2: `host = IP-literal / IPv4address /
 * reg-name`, `reg-name = *( unreserved / pct-encoded / sub-delims )`, §3.2.3: `port = *DIGIT`.
 * Userinfo (`@`), paths, whitespace and control characters are not part of a Host and are refused.
 */
const REG_NAME = /^(?:[a-z0-9\-._~!$&'()*+,;=]|%[0-9a-f]{2})*$/;
const PORT = /^[0-9]*$/;
const NON_ASCII = /[\u0080-\uffff]/;
/** RFC 1035 §2.3.1 label syntax as relaxed by RFC 1123 §2.1 (a label may start with a digit). */
const DNS_LABEL = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;
const IPV4 = /^\d{1,3}(?:\.\d{1,3}){3}$/;

/** Normalizes an inference domain: lowercase, without a trailing dot. */
export function normalizeDomain(domain: string): string {
  const lower = domain.toLowerCase();
  return lower.endsWith(".") ? lower.slice(0, -1) : lower;
}

/**
 * Parses a Host header value against the inference `domain` (already normalized, see `normalizeDomain`).
 * Case-insensitive (RFC 3986 §3.2.2: host is case-insensitive), port ignored for routing but returned,
 * one trailing dot accepted (an absolute DNS name, RFC 1034 §3.1).
 */
export function parseHost(value: string | undefined, domain: string): HostParse {
  if (value === undefined || value.length === 0) return refuse("invalid_host", "The Host header is empty.");
  if (value.length > HOST_MAX_LENGTH) return refuse("invalid_host", "The Host header is too long.");
  // RFC 3986 §3.2.2 hosts are ASCII, checked before lowercasing: Unicode case mapping turns some non-ASCII
  // characters into ASCII ones (U+212A KELVIN SIGN → `k`, U+0130 → `i̇`), which would name a model that the
  // client's bytes do not.
  if (NON_ASCII.test(value)) return refuse("invalid_host", "The Host header is not ASCII.");
  const lower = value.toLowerCase();

  let name: string;
  let portText: string;
  if (lower.startsWith("[")) {
    // IP-literal (RFC 3986 §3.2.2): syntactically a host, but never a model host.
    const close = lower.indexOf("]");
    if (close < 0) return refuse("invalid_host", "The Host header has an unterminated IP literal.");
    const rest = lower.slice(close + 1);
    if (rest.length > 0 && !(rest.startsWith(":") && PORT.test(rest.slice(1)))) {
      return refuse("invalid_host", "The Host header has text after its IP literal.");
    }
    if (!/^\[[0-9a-f:.]+\]$|^\[v[0-9a-f]+\.[a-z0-9\-._~!$&'()*+,;=:]+\]$/.test(lower.slice(0, close + 1))) {
      return refuse("invalid_host", "The Host header has a malformed IP literal.");
    }
    return refuse("unknown_host", "An IP literal does not name a model endpoint.");
  }
  const colon = lower.indexOf(":");
  if (colon >= 0) {
    name = lower.slice(0, colon);
    portText = lower.slice(colon + 1);
  } else {
    name = lower;
    portText = "";
  }
  if (!REG_NAME.test(name)) return refuse("invalid_host", "The Host header is not a valid host name.");
  if (!PORT.test(portText)) return refuse("invalid_host", "The Host header's port is not a number.");
  if (name.length === 0) return refuse("invalid_host", "The Host header names no host.");
  const port = portText.length > 0 ? Number(portText) : null;
  if (port !== null && port > 65535) return refuse("invalid_host", "The Host header's port is out of range.");

  if (name.endsWith(".")) name = name.slice(0, -1);
  if (IPV4.test(name)) return refuse("unknown_host", "An IP address does not name a model endpoint.");
  const suffix = `.${domain}`;
  if (!name.endsWith(suffix)) return refuse("unknown_host", "The host is not in the inference domain.");
  const label = name.slice(0, -suffix.length);
  if (!DNS_LABEL.test(label) || !label.startsWith(MODEL_PREFIX)) {
    return refuse("unknown_host", "The host does not name a model.");
  }
  const idEnd = MODEL_PREFIX.length + MODEL_ID_LENGTH;
  const modelId = label.slice(MODEL_PREFIX.length, idEnd);
  if (!/^[a-z0-9]{8}$/.test(modelId)) return refuse("unknown_host", "The host does not name a model id.");
  if (label.length === idEnd) return { ok: true, host: { form: "standard", modelId, port } };
  // Model ids never contain a hyphen (DESIGN.md §1), so the environment starts right after the id.
  if (label[idEnd] !== "-") return refuse("unknown_host", "The host does not name a model id.");
  const environment = label.slice(idEnd + 1);
  if (!isEnvironmentName(environment)) {
    return refuse("unknown_host", "The host does not name a valid environment.");
  }
  return { ok: true, host: { form: "regional", modelId, environment, port } };
}

export function standardHostname(modelId: string, domain: string): string {
  return `${MODEL_PREFIX}${modelId}.${domain}`;
}

export function regionalHostname(modelId: string, environment: string, domain: string): string {
  return `${MODEL_PREFIX}${modelId}-${environment}.${domain}`;
}

export function hostnameOf(host: ParsedHost, domain: string): string {
  return host.form === "standard"
    ? standardHostname(host.modelId, domain)
    : regionalHostname(host.modelId, host.environment, domain);
}

function refuse(code: HostRefusal["code"], reason: string): HostRefusal {
  return { ok: false, code, reason };
}
