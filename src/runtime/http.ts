// HTTP plumbing shared by the runtime's handlers: JSON and error responses in the catalog's shape,
// bounded body reads, hop-by-hop header stripping and host:port formatting.

import type { IncomingHttpHeaders, IncomingMessage, OutgoingHttpHeaders, ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { type ErrorCode, errorBody, errorStatus } from "../core/errors.ts";

export function sendJson(res: ServerResponse, status: number, value: unknown): void {
  const body = JSON.stringify(value);
  res.writeHead(status, {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(body),
  });
  res.end(body);
}

/** Answers with the catalog's error body; a response already under way can only be cut off. */
export function sendError(
  res: ServerResponse,
  code: ErrorCode,
  message?: string,
  detail: unknown = null,
): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  sendJson(res, errorStatus(code), errorBody(code, message, detail));
}

export type BodyOutcome = { ok: true; body: Buffer } | { ok: false; reason: "too_large" | "aborted" };

/** Reads a request body of at most `limit` bytes. */
export function readBody(req: IncomingMessage, limit: number): Promise<BodyOutcome> {
  return new Promise((resolve) => {
    const declared = Number(req.headers["content-length"]);
    if (Number.isFinite(declared) && declared > limit) {
      resolve({ ok: false, reason: "too_large" });
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    let settled = false;
    const settle = (outcome: BodyOutcome) => {
      if (settled) return;
      settled = true;
      resolve(outcome);
    };
    req.on("data", (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        req.pause();
        settle({ ok: false, reason: "too_large" });
        return;
      }
      chunks.push(chunk);
    });
    req.on("end", () => settle({ ok: true, body: Buffer.concat(chunks) }));
    req.on("error", () => settle({ ok: false, reason: "aborted" }));
    req.on("close", () => settle({ ok: false, reason: "aborted" }));
  });
}

// Hop-by-hop fields (RFC 9110 §7.6.1): they describe one connection, so a proxy never forwards them, nor
// any field named in the Connection header. Proxy-Connection is the legacy spelling some clients send.
const HOP_BY_HOP = new Set([
  "connection",
  "proxy-connection",
  "keep-alive",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
]);

/** Copies headers without the hop-by-hop ones and without `host` (the hop sets its own). */
export function endToEndHeaders(headers: IncomingHttpHeaders): OutgoingHttpHeaders {
  const named = new Set(
    String(headers["connection"] ?? "")
      .split(",")
      .map((token) => token.trim().toLowerCase())
      .filter((token) => token !== ""),
  );
  const out: OutgoingHttpHeaders = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined || name === "host" || HOP_BY_HOP.has(name) || named.has(name)) continue;
    out[name] = value;
  }
  return out;
}

/** `host:port`, with an IPv6 host in brackets (RFC 3986 §3.2.2). */
export function formatAddress(info: AddressInfo): string {
  return info.family === "IPv6" ? `[${info.address}]:${info.port}` : `${info.address}:${info.port}`;
}
