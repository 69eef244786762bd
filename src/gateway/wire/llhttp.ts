// Node's own HTTP/1.1 parser (llhttp, the one node:http runs on), reached through the internal
// `_http_common` module. It is not a documented API: `loadParser()` checks the shape and runs a self-test
// before the ingress uses it, `llhttp.test.ts` pins the behaviour the wire transport relies on, and
// when either fails the ingress falls back to node:http (docs/gateway.md, "Transports").

import { createRequire } from "node:module";
import type net from "node:net";
import tls from "node:tls";

/** One parser: a request parser for a client connection, a response parser for an upstream socket. */
export interface Parser {
  initialize(type: number, resource: object, maxHeaderSize: number, lenient: number): void;
  /** Bytes parsed, or an Error with `code` (`HPE_*`), `reason` and `bytesParsed`. */
  execute(data: Buffer): number | ParseError;
  /** End of input: completes a close-delimited message, or reports an error for a truncated one. */
  finish(): undefined | ParseError;
  close(): void;
  free(): void;
  /**
   * Reads straight from a libuv stream handle (how node:http's server reads its sockets): the socket emits
   * no `data` events, and `K_ON_EXECUTE` reports each read's result.
   */
  consume(handle: object): void;
  unconsume(): void;
  /** The read being parsed, inside a `K_ON_EXECUTE` callback (the bytes after an upgrade's head). */
  getCurrentBuffer(): Buffer;
  [K_ON_MESSAGE_BEGIN]: (() => void) | null;
  [K_ON_HEADERS]: ((headers: string[], url: string) => void) | null;
  [K_ON_HEADERS_COMPLETE]: OnHeadersComplete | null;
  [K_ON_BODY]: ((chunk: Buffer) => void) | null;
  [K_ON_MESSAGE_COMPLETE]: (() => void) | null;
  [K_ON_EXECUTE]: ((result: number | ParseError) => void) | null;
}

export interface ParseError extends Error {
  code: string;
  reason: string;
  bytesParsed: number;
}

/**
 * Called once per message. `headers`/`url` are undefined when the parser already handed them over in
 * pieces through `K_ON_HEADERS` (many or large header fields). `method` is an index into `METHODS`
 * (requests); `statusCode` is set for responses. The return value must be 0 (parse the body as framed).
 */
export type OnHeadersComplete = (
  versionMajor: number,
  versionMinor: number,
  headers: string[] | undefined,
  method: number | undefined,
  url: string | undefined,
  statusCode: number | undefined,
  statusMessage: string | undefined,
  upgrade: boolean,
  shouldKeepAlive: boolean,
) => number;

// The callback slots (HTTPParser.kOnMessageBegin … kOnMessageComplete), checked by loadParser().
export const K_ON_MESSAGE_BEGIN = 0;
export const K_ON_HEADERS = 1;
export const K_ON_HEADERS_COMPLETE = 2;
export const K_ON_BODY = 3;
export const K_ON_MESSAGE_COMPLETE = 4;
export const K_ON_EXECUTE = 5;

export interface ParserModule {
  create(): Parser;
  REQUEST: number;
  RESPONSE: number;
  /** Strict parsing: no lenient flag at all. */
  STRICT: 0;
  /** Method names by the index `OnHeadersComplete` receives. */
  methods: readonly string[];
}

type Loaded = { ok: true; parser: ParserModule } | { ok: false; reason: string };

let loaded: Loaded | null = null;

/** The parser, or why it cannot be used on this Node (then the ingress runs on node:http). */
export function loadParser(): Loaded {
  loaded ??= tryLoad();
  return loaded;
}

interface HTTPParserClass {
  new (): Parser;
  REQUEST: number;
  RESPONSE: number;
  kOnMessageBegin: number;
  kOnHeaders: number;
  kOnHeadersComplete: number;
  kOnBody: number;
  kOnMessageComplete: number;
  kOnExecute: number;
  kLenientNone: number;
}

function tryLoad(): Loaded {
  let common: { HTTPParser?: HTTPParserClass; methods?: string[] };
  try {
    common = createRequire(import.meta.url)("_http_common");
  } catch (err) {
    return { ok: false, reason: `_http_common cannot be loaded: ${(err as Error).message}` };
  }
  const P = common.HTTPParser;
  const methods = common.methods;
  if (typeof P !== "function" || !Array.isArray(methods)) {
    return { ok: false, reason: "_http_common has no HTTPParser or methods" };
  }
  const slots: Array<[string, number, number]> = [
    ["kOnMessageBegin", P.kOnMessageBegin, K_ON_MESSAGE_BEGIN],
    ["kOnHeaders", P.kOnHeaders, K_ON_HEADERS],
    ["kOnHeadersComplete", P.kOnHeadersComplete, K_ON_HEADERS_COMPLETE],
    ["kOnBody", P.kOnBody, K_ON_BODY],
    ["kOnMessageComplete", P.kOnMessageComplete, K_ON_MESSAGE_COMPLETE],
    ["kOnExecute", P.kOnExecute, K_ON_EXECUTE],
    ["kLenientNone", P.kLenientNone, 0],
  ];
  for (const [name, actual, expected] of slots) {
    if (actual !== expected) return { ok: false, reason: `HTTPParser.${name} is ${actual}, not ${expected}` };
  }
  for (const method of [
    "initialize",
    "execute",
    "finish",
    "close",
    "consume",
    "unconsume",
    "getCurrentBuffer",
  ]) {
    if (typeof (P.prototype as unknown as Record<string, unknown>)[method] !== "function") {
      return { ok: false, reason: `HTTPParser has no ${method}()` };
    }
  }
  const module: ParserModule = {
    create: () => new P(),
    REQUEST: P.REQUEST,
    RESPONSE: P.RESPONSE,
    STRICT: 0,
    methods,
  };
  const failure = selfTest(module);
  return failure === null ? { ok: true, parser: module } : { ok: false, reason: `self-test: ${failure}` };
}

/**
 * What the wire transport relies on, checked on this Node before use: callbacks and their arguments, body
 * and message boundaries across pipelined messages, headers handed over in pieces, strict refusals.
 * Returns null when all hold, or the first difference.
 */
export function selfTest(m: ParserModule): string | null {
  const events: string[] = [];
  const p = m.create();
  p.initialize(m.REQUEST, {}, 16 * 1024, m.STRICT);
  // Headers and URL arrive whole, or (after many or large fields) in pieces first: both are accepted.
  let pieces: string[] = [];
  let pieceUrl = "";
  p[K_ON_MESSAGE_BEGIN] = () => events.push("begin");
  p[K_ON_HEADERS] = (h, url) => {
    pieces = pieces.concat(h);
    pieceUrl += url;
  };
  p[K_ON_HEADERS_COMPLETE] = (major, minor, headers, method, url, _s, _m, upgrade, keepAlive) => {
    const h = headers ?? pieces;
    const u = url ?? pieceUrl;
    pieces = [];
    pieceUrl = "";
    events.push(`head:${major}.${minor}:${m.methods[method ?? -1]}:${u}:${h.length}:${upgrade}:${keepAlive}`);
    return 0;
  };
  p[K_ON_BODY] = (chunk) => events.push(`body:${chunk.toString("latin1")}`);
  p[K_ON_MESSAGE_COMPLETE] = () => events.push("end");
  const many = Array.from({ length: 40 }, (_, i) => `X-${i}: ${i}\r\n`).join("");
  const input =
    "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc" +
    `POST /b HTTP/1.1\r\nHost: h\r\n${many}Transfer-Encoding: chunked\r\n\r\n2\r\nxy\r\n0\r\n\r\n` +
    "GET /c HTTP/1.0\r\n\r\n";
  const n = p.execute(Buffer.from(input, "latin1"));
  const want = [
    "begin",
    "head:1.1:POST:/a:4:false:true",
    "body:abc",
    "end",
    "begin",
    "head:1.1:POST:/b:84:false:true",
    "body:xy",
    "end",
    "begin",
    "head:1.0:GET:/c:0:false:false",
    "end",
  ];
  if (n !== input.length) return `execute returned ${String(n)} for ${input.length} bytes`;
  if (events.join("|") !== want.join("|")) return `events ${events.join("|")}`;
  p.close();

  const refused: Array<[string, string]> = [
    ["POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", "CL+TE"],
    ["POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n", "duplicate CL"],
    ["POST / HTTP/1.1\nHost: h\n\n", "bare LF"],
    ["POST / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n", "obs-fold"],
    ["POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: identity\r\n\r\n", "TE identity"],
  ];
  for (const [bytes, what] of refused) {
    const q = m.create();
    q.initialize(m.REQUEST, {}, 16 * 1024, m.STRICT);
    q[K_ON_HEADERS_COMPLETE] = () => 0;
    const r = q.execute(Buffer.from(bytes, "latin1"));
    q.close();
    if (typeof r === "number" || typeof r?.code !== "string") return `${what} was accepted`;
  }

  const rs = m.create();
  rs.initialize(m.RESPONSE, {}, 16 * 1024, m.STRICT);
  const seen: string[] = [];
  rs[K_ON_HEADERS_COMPLETE] = (_a, _b, h, _m, _u, status, _sm, _up, keepAlive) => {
    seen.push(`${status}:${(h ?? []).length}:${keepAlive}`);
    return 0;
  };
  rs[K_ON_BODY] = (c) => seen.push(c.toString("latin1"));
  rs[K_ON_MESSAGE_COMPLETE] = () => seen.push("end");
  const resp = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\nto-eof";
  const rn = rs.execute(Buffer.from(resp, "latin1"));
  const fin = rs.finish();
  rs.close();
  if (rn !== resp.length || fin !== undefined) return "response parse failed";
  if (seen.join("|") !== "100:0:true|end|200:0:false|to-eof|end") return `response events ${seen.join("|")}`;
  return null;
}

/** A libuv stream handle (node:net's `socket._handle`), as far as the parser's `consume` needs it. */
export interface StreamHandle {
  isStreamBase?: boolean;
  _consumed?: boolean;
  readStart(): number;
  readStop(): number;
}

/** The handle the parser may read from directly: plain TCP sockets only, never one already consumed. */
export function consumable(socket: net.Socket): StreamHandle | null {
  if (socket instanceof tls.TLSSocket) return null;
  const handle = (socket as unknown as { _handle?: StreamHandle | null })._handle;
  if (handle == null || handle.isStreamBase !== true || handle._consumed === true) return null;
  if (typeof handle.readStart !== "function" || typeof handle.readStop !== "function") return null;
  return handle;
}

/**
 * Feeds a socket to its parser: on plain TCP the parser reads the libuv handle itself (`consume`, as
 * node:http's server does: no stream in between) and `afterExecute` follows each read; otherwise (TLS)
 * `data` events go to `onData`. Returns the consumed handle, for `readStop`/`readStart`, or null.
 */
export function feedParser(
  socket: net.Socket,
  parser: Parser,
  afterExecute: (result: number | ParseError) => void,
  onData: (chunk: Buffer) => void,
): StreamHandle | null {
  const handle = consumable(socket);
  if (handle === null) {
    socket.on("data", onData);
    return null;
  }
  handle._consumed = true;
  parser.consume(handle);
  parser[K_ON_EXECUTE] = afterExecute;
  return handle;
}
