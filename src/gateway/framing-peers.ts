// Raw-socket peers for the framing suite (framing.test.ts): an upstream stand-in that records every byte
// it receives per connection and answers with crafted bytes, a raw client, and one strict HTTP/1.1
// message parser used on both sides to check what actually crossed the wire. Used only by tests.

import { createHash } from "node:crypto";
import net, { type AddressInfo, type Socket } from "node:net";

export const sha256 = (data: Buffer | string): string => createHash("sha256").update(data).digest("hex");
export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

export type Header = [name: string, value: string];

/** Every value of a field (case-insensitive name). */
export function fieldValues(headers: readonly Header[], name: string): string[] {
  const n = name.toLowerCase();
  const out: string[] = [];
  for (const [k, v] of headers) if (k.toLowerCase() === n) out.push(v);
  return out;
}

/** The only value of a field, undefined when absent; throws when repeated. */
export function field(headers: readonly Header[], name: string): string | undefined {
  const values = fieldValues(headers, name);
  if (values.length > 1) throw new Error(`${name} appears ${values.length} times`);
  return values[0];
}

export interface Message {
  startLine: string;
  /** Response status (responses only; 0 for requests). */
  status: number;
  headers: Header[];
  /** The head exactly as received, blank line included. */
  rawHead: string;
  /** The decoded body (chunked framing removed). */
  body: Buffer;
  framing: "length" | "chunked" | "close" | "none";
  chunkCount: number;
  trailers: Header[];
  /** Offset just after the message. */
  end: number;
}

export type ParseResult =
  | { kind: "ok"; message: Message }
  | { kind: "incomplete"; head: { startLine: string; headers: Header[] } | null; bodyBytes: number }
  | { kind: "error"; error: string };

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
// Field values: VCHAR, obs-text, SP and HTAB (RFC 9110 §5.5); no CR, LF or NUL.
const FIELD_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/;
const REQUEST_LINE = /^([!#$%&'*+\-.^_`|~0-9A-Za-z]+) (\S+) HTTP\/1\.[01]$/;
const STATUS_LINE = /^HTTP\/1\.[01] ([1-9][0-9]{2}) [\t\x20-\x7e\x80-\xff]*$/;

/** Reads a CRLF-terminated line; bare CR or bare LF anywhere is an error. */
function readLine(buf: Buffer, from: number): { line: string; next: number } | null | { error: string } {
  const lf = buf.indexOf(10, from);
  if (lf < 0) {
    const cr = buf.indexOf(13, from);
    if (cr >= 0 && cr + 1 < buf.length) return { error: "bare CR" };
    return null;
  }
  if (lf === from || buf[lf - 1] !== 13) return { error: "bare LF" };
  const line = buf.toString("latin1", from, lf - 1);
  if (line.includes("\r")) return { error: "bare CR" };
  return { line, next: lf + 1 };
}

function readFields(
  buf: Buffer,
  from: number,
): { headers: Header[]; next: number } | null | { error: string } {
  const headers: Header[] = [];
  let at = from;
  for (;;) {
    const r = readLine(buf, at);
    if (r === null || "error" in r) return r;
    at = r.next;
    if (r.line === "") return { headers, next: at };
    if (r.line[0] === " " || r.line[0] === "\t") return { error: "obs-fold" };
    const colon = r.line.indexOf(":");
    if (colon <= 0) return { error: `no field name: ${JSON.stringify(r.line)}` };
    const name = r.line.slice(0, colon);
    if (!TOKEN.test(name)) return { error: `bad field name: ${JSON.stringify(name)}` };
    const value = r.line.slice(colon + 1).replace(/^[ \t]+|[ \t]+$/g, "");
    if (!FIELD_VALUE.test(value)) return { error: `bad field value in ${name}` };
    headers.push([name, value]);
  }
}

/**
 * Parses one HTTP/1.1 message strictly (RFC 9112): CRLF only, no obs-fold, token names, one framing. `closed`
 * says the peer has closed, which completes a close-delimited response. `noBody`: a response to HEAD.
 */
export function parseMessage(
  buf: Buffer,
  from: number,
  o: { kind: "request" | "response"; closed: boolean },
): ParseResult {
  const first = readLine(buf, from);
  if (first === null) return { kind: "incomplete", head: null, bodyBytes: 0 };
  if ("error" in first) return { kind: "error", error: first.error };
  const startLine = first.line;
  let status = 0;
  if (o.kind === "request") {
    if (!REQUEST_LINE.test(startLine))
      return { error: `bad request line ${JSON.stringify(startLine)}`, kind: "error" };
  } else {
    const m = STATUS_LINE.exec(startLine);
    if (m === null) return { kind: "error", error: `bad status line ${JSON.stringify(startLine)}` };
    status = Number(m[1]);
  }
  const fields = readFields(buf, first.next);
  if (fields === null) return { kind: "incomplete", head: null, bodyBytes: 0 };
  if ("error" in fields) return { kind: "error", error: fields.error };
  const { headers } = fields;
  const head = { startLine, headers };
  const bodyStart = fields.next;
  const rawHead = buf.toString("latin1", from, bodyStart);
  const cls = fieldValues(headers, "content-length");
  const tes = fieldValues(headers, "transfer-encoding");
  if (cls.length > 0 && tes.length > 0)
    return { kind: "error", error: "both Content-Length and Transfer-Encoding" };
  if (cls.length > 1) return { kind: "error", error: "more than one Content-Length" };
  if (tes.length > 1 || (tes.length === 1 && tes[0]!.toLowerCase() !== "chunked")) {
    return { kind: "error", error: `unexpected Transfer-Encoding ${JSON.stringify(tes)}` };
  }
  const base = { startLine, status, headers, rawHead, trailers: [] as Header[], chunkCount: 0 };
  const noBody = o.kind === "response" && (status < 200 || status === 204 || status === 304);
  if (noBody) {
    if (tes.length > 0 || (cls.length > 0 && cls[0] !== "0" && status !== 304)) {
      return { kind: "error", error: `${status} with a body framing` };
    }
    return { kind: "ok", message: { ...base, body: Buffer.alloc(0), framing: "none", end: bodyStart } };
  }
  if (tes.length === 1) return parseChunked(buf, bodyStart, base, head);
  if (cls.length === 1) {
    if (!/^[0-9]+$/.test(cls[0]!)) return { kind: "error", error: `bad Content-Length ${cls[0]}` };
    const n = Number(cls[0]);
    if (buf.length - bodyStart < n) return { kind: "incomplete", head, bodyBytes: buf.length - bodyStart };
    return {
      kind: "ok",
      message: {
        ...base,
        body: buf.subarray(bodyStart, bodyStart + n),
        framing: "length",
        end: bodyStart + n,
      },
    };
  }
  if (o.kind === "request") {
    return { kind: "ok", message: { ...base, body: Buffer.alloc(0), framing: "none", end: bodyStart } };
  }
  if (!o.closed) return { kind: "incomplete", head, bodyBytes: buf.length - bodyStart };
  return {
    kind: "ok",
    message: { ...base, body: buf.subarray(bodyStart), framing: "close", end: buf.length },
  };
}

function parseChunked(
  buf: Buffer,
  from: number,
  base: Omit<Message, "body" | "framing" | "end">,
  head: { startLine: string; headers: Header[] },
): ParseResult {
  const parts: Buffer[] = [];
  let bodyBytes = 0;
  let at = from;
  let chunkCount = 0;
  for (;;) {
    const r = readLine(buf, at);
    if (r === null) return { kind: "incomplete", head, bodyBytes };
    if ("error" in r) return { kind: "error", error: `chunk size line: ${r.error}` };
    const m =
      /^([0-9A-Fa-f]{1,15})(?:[ \t]*;[ \t]*[!#$%&'*+\-.^_`|~0-9A-Za-z]+(?:=(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+|"[^"\\]*"))?)*$/.exec(
        r.line,
      );
    if (m === null) return { kind: "error", error: `bad chunk size line ${JSON.stringify(r.line)}` };
    const size = Number.parseInt(m[1]!, 16);
    at = r.next;
    if (size === 0) {
      const t = readFields(buf, at);
      if (t === null) return { kind: "incomplete", head, bodyBytes };
      if ("error" in t) return { kind: "error", error: `trailers: ${t.error}` };
      return {
        kind: "ok",
        message: {
          ...base,
          chunkCount,
          trailers: t.headers,
          body: Buffer.concat(parts),
          framing: "chunked",
          end: t.next,
        },
      };
    }
    if (buf.length < at + size) return { kind: "incomplete", head, bodyBytes: bodyBytes + buf.length - at };
    parts.push(buf.subarray(at, at + size));
    bodyBytes += size;
    chunkCount++;
    at += size;
    if (buf.length < at + 2) return { kind: "incomplete", head, bodyBytes };
    if (buf[at] !== 13 || buf[at + 1] !== 10)
      return { kind: "error", error: "chunk data not followed by CRLF" };
    at += 2;
  }
}

/** Every complete message in `buf`, then what is left: an incomplete message, an error, or nothing. */
export function parseAll(
  buf: Buffer,
  o: { kind: "request" | "response"; closed: boolean },
): { messages: Message[]; rest: ParseResult | null } {
  const messages: Message[] = [];
  let at = 0;
  while (at < buf.length) {
    const r = parseMessage(buf, at, o);
    if (r.kind !== "ok") return { messages, rest: r };
    messages.push(r.message);
    at = r.message.end;
  }
  return { messages, rest: null };
}

// ---------------------------------------------------------------------------------------------------------
// Upstream stand-in

export interface UpRequest {
  conn: UpConn;
  /** Index of the request on its connection. */
  seq: number;
  method: string;
  target: string;
  headers: Header[];
  rawHead: string;
  body: Buffer;
  framing: Message["framing"];
  /** The `x-tag` request header (tests label their requests with it). */
  tag: string | undefined;
}

export interface UpConn {
  id: number;
  socket: Socket;
  /** Every byte received, in order. */
  received: Buffer;
  requests: UpRequest[];
  /** A framing error in what the ingress sent (the suite expects none, ever). */
  error: string | null;
  closed: boolean;
  whenClosed: Promise<void>;
  /** A responder switched protocols (101): bytes after it are recorded, never parsed as HTTP. */
  upgraded: boolean;
}

export type Responder = (req: UpRequest, conn: UpConn) => void;

/** The default answer: a JSON summary of what arrived, framed with Content-Length. */
export function echo(upstream: string): Responder {
  return (req, conn) => {
    const body = JSON.stringify({
      up: upstream,
      conn: conn.id,
      seq: req.seq,
      tag: req.tag ?? null,
      len: req.body.length,
      sha: sha256(req.body),
    });
    conn.socket.write(
      `HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
    );
  };
}

export interface EchoBody {
  up: string;
  conn: number;
  seq: number;
  tag: string | null;
  len: number;
  sha: string;
}

/** A raw `node:net` model-server stand-in. `respond` answers each complete request (swap it per test). */
export class RawUpstream {
  readonly conns: UpConn[] = [];
  readonly requests: UpRequest[] = [];
  respond: Responder;
  private server: net.Server;
  private nextId = 1;
  endpoint = "";

  constructor(readonly name: string) {
    this.respond = echo(name);
    this.server = net.createServer({ allowHalfOpen: true }, (socket) => this.accept(socket));
  }

  static async start(name: string): Promise<RawUpstream> {
    const up = new RawUpstream(name);
    await new Promise<void>((resolve) => up.server.listen(0, "127.0.0.1", resolve));
    up.endpoint = `127.0.0.1:${(up.server.address() as AddressInfo).port}`;
    return up;
  }

  resetResponder(): void {
    this.respond = echo(this.name);
  }

  private accept(socket: Socket): void {
    let closedResolve: () => void = () => {};
    const conn: UpConn = {
      id: this.nextId++,
      socket,
      received: Buffer.alloc(0),
      requests: [],
      error: null,
      closed: false,
      upgraded: false,
      whenClosed: new Promise<void>((r) => {
        closedResolve = r;
      }),
    };
    this.conns.push(conn);
    let parsedTo = 0;
    socket.on("data", (chunk: Buffer) => {
      conn.received = Buffer.concat([conn.received, chunk]);
      while (conn.error === null && !conn.upgraded && parsedTo < conn.received.length) {
        const r = parseMessage(conn.received, parsedTo, { kind: "request", closed: false });
        if (r.kind === "incomplete") break;
        if (r.kind === "error") {
          conn.error = r.error;
          break;
        }
        const m = r.message;
        parsedTo = m.end;
        const [method = "", target = ""] = m.startLine.split(" ");
        const req: UpRequest = {
          conn,
          seq: conn.requests.length,
          method,
          target,
          headers: m.headers,
          rawHead: m.rawHead,
          body: Buffer.from(m.body),
          framing: m.framing,
          tag: fieldValues(m.headers, "x-tag")[0],
        };
        conn.requests.push(req);
        this.requests.push(req);
        if (!socket.destroyed) this.respond(req, conn);
      }
    });
    socket.on("error", () => {});
    socket.on("end", () => socket.end());
    socket.on("close", () => {
      conn.closed = true;
      closedResolve();
    });
  }

  /** A point in the recording; `since()` reports what arrived after it. */
  mark(): { conns: number; requests: number; offsets: Map<number, number> } {
    return {
      conns: this.conns.length,
      requests: this.requests.length,
      offsets: new Map(this.conns.map((c) => [c.id, c.received.length])),
    };
  }

  since(mark: ReturnType<RawUpstream["mark"]>): { bytes: Buffer; requests: UpRequest[]; conns: UpConn[] } {
    const parts: Buffer[] = [];
    const touched: UpConn[] = [];
    for (const c of this.conns) {
      const off = mark.offsets.get(c.id) ?? 0;
      if (c.received.length > off) {
        parts.push(c.received.subarray(off));
        touched.push(c);
      }
    }
    return { bytes: Buffer.concat(parts), requests: this.requests.slice(mark.requests), conns: touched };
  }

  errors(): string[] {
    return this.conns.filter((c) => c.error !== null).map((c) => `conn ${c.id}: ${c.error}`);
  }

  async close(): Promise<void> {
    for (const c of this.conns) c.socket.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

// ---------------------------------------------------------------------------------------------------------
// Raw client

export class RawClient {
  data = Buffer.alloc(0);
  closed = false;
  /** ECONNRESET and the like (a reset is a close too). */
  error: string | null = null;
  private waiters: Array<() => void> = [];

  /** When set, the client reads slowly: after each chunk it stops reading for this long. */
  throttleMs = 0;

  private constructor(readonly socket: Socket) {
    socket.on("data", (c: Buffer) => {
      this.data = Buffer.concat([this.data, c]);
      if (this.throttleMs > 0) {
        socket.pause();
        setTimeout(() => socket.resume(), this.throttleMs);
      }
      this.wake();
    });
    socket.on("error", (err: NodeJS.ErrnoException) => {
      this.error = err.code ?? err.message;
    });
    // The peer's FIN ends its answer: from the client's side the connection is closed.
    socket.on("end", () => {
      this.closed = true;
      this.wake();
    });
    socket.on("close", () => {
      this.closed = true;
      this.wake();
    });
  }

  static connect(port: number, host = "127.0.0.1", allowHalfOpen = false): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ port, host, allowHalfOpen });
      socket.once("connect", () => resolve(new RawClient(socket)));
      socket.once("error", reject);
    });
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  write(bytes: string | Buffer): void {
    if (!this.socket.destroyed && this.socket.writable) this.socket.write(bytes);
  }

  /** Writes and waits until the bytes are flushed (or the socket fails). */
  writeAsync(bytes: string | Buffer): Promise<void> {
    return new Promise((resolve) => {
      if (this.socket.destroyed || !this.socket.writable) {
        resolve();
        return;
      }
      this.socket.write(bytes, () => resolve());
    });
  }

  end(): void {
    this.socket.end();
  }

  destroy(): void {
    this.socket.destroy();
  }

  /** Waits until `pred` holds or the connection closes; false on timeout. */
  async until(pred: () => boolean, timeoutMs: number): Promise<boolean> {
    const deadline = performance.now() + timeoutMs;
    while (!pred()) {
      if (this.closed) return pred();
      const left = deadline - performance.now();
      if (left <= 0) return false;
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
    return true;
  }

  waitClosed(timeoutMs: number): Promise<boolean> {
    return this.until(() => this.closed, timeoutMs);
  }

  parsed(): { messages: Message[]; rest: ParseResult | null } {
    return parseAll(this.data, { kind: "response", closed: this.closed });
  }

  /**
   * Waits for the next complete response (interim ones included) at the start of the buffer, removes it
   * and returns it; null on timeout, close or a framing error (then `data` keeps what arrived).
   */
  async next(timeoutMs: number): Promise<Message | null> {
    let found: Message | null = null;
    await this.until(() => {
      const r = parseMessage(this.data, 0, { kind: "response", closed: this.closed });
      if (r.kind === "ok") found = r.message;
      return r.kind !== "incomplete";
    }, timeoutMs);
    if (found === null) return null;
    const m: Message = found;
    this.data = this.data.subarray(m.end);
    return { ...m, body: Buffer.from(m.body) };
  }

  /** Final (non-1xx) responses received so far. */
  finals(): Message[] {
    return this.parsed().messages.filter((m) => m.status >= 200);
  }

  /** Waits for `n` complete final responses (or the close, or the timeout). */
  async responses(n: number, timeoutMs: number): Promise<Message[]> {
    await this.until(() => this.finals().length >= n, timeoutMs);
    return this.finals();
  }
}

/** A TCP port that refuses connections (bound, then released). */
export async function closedPort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((resolve) => s.listen(0, "127.0.0.1", resolve));
  const { port } = s.address() as AddressInfo;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}
