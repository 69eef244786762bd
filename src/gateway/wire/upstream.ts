// The wire transport's upstream side: keep-alive sockets to replicas and peer planes, one request at a
// time per socket, responses read with Node's llhttp in strict mode. A socket goes back to the pool only
// when its request was written whole and its response was read whole with nothing after it; anything
// else (an error, an early response, bytes after the response, an abandoned response) destroys it.

import net from "node:net";
import tls from "node:tls";
import type { IngressOptions } from "../options.ts";
import { HOP_CONTINUE_TIMEOUT } from "../rules.ts";
import {
  feedParser,
  K_ON_BODY,
  K_ON_HEADERS,
  K_ON_HEADERS_COMPLETE,
  K_ON_MESSAGE_BEGIN,
  K_ON_MESSAGE_COMPLETE,
  type ParseError,
  type Parser,
  type ParserModule,
  type StreamHandle,
} from "./llhttp.ts";

/** Largest response header section accepted from an upstream. */
const MAX_RESPONSE_HEADER_BYTES = 64 * 1024;
/** Idle upstream sockets are closed after this unless the upstream's `Keep-Alive: timeout=` says less. */
const IDLE_MS = 4_000;
/** Margin kept before an upstream's advertised keep-alive timeout, to avoid reusing a closing socket. */
const IDLE_MARGIN_MS = 1_000;

/** What the call reports to the request it serves. */
export interface CallSink {
  /**
   * Interim (1xx) responses are not relayed. `beforeBody`: it came while the body waited for a 100 Continue
   * (so none of it left). Returns false when the response cannot be relayed, or the failure it is instead
   * (a peer plane's refusal of the hop, ../rules.ts HOP_REFUSED).
   */
  head(status: number, rawHeaders: string[], keepAlive: boolean, beforeBody: boolean): boolean | HeadFailure;
  /** A body chunk; returns false when the client pushes back (the upstream is paused until `resume`). */
  data(chunk: Buffer): boolean;
  /** The response was read whole. */
  complete(): void;
  /** The end of one read from the upstream: what was held back for it goes out now. */
  flush(): void;
  /** The call failed; `touched` says whether any byte may have reached the upstream. */
  failed(code: string, message: string, touched: boolean, afterHead: boolean): void;
  /** The upstream socket can take more request body. */
  drained(): void;
  /** A call sent head first (`awaitContinue`) got its 100 Continue, or its final answer: send the body. */
  continued(call: Call): void;
}

/** A response head that fails the call rather than going to the client. */
export interface HeadFailure {
  code: string;
  message: string;
  touched: boolean;
}

export interface UpstreamTarget {
  /** `host:port`, or `unix:/path` for a replica on a Unix socket (pooled and timed alike). */
  endpoint: string;
  tls: boolean;
}

/** One upstream socket with its response parser. */
class Conn {
  readonly parser: Parser;
  call: Call | null = null;
  /** Set while a `data` chunk is being parsed; the pool return and destruction wait for it. */
  parsing = false;
  idleUntil = 0;
  idleMs = IDLE_MS;
  dead = false;
  pieces: string[] = [];
  piecesUrl = "";
  paused = false;
  /** The libuv handle the parser reads from directly (plain TCP), or null (TLS: `data` events). */
  private readonly handle: StreamHandle | null;

  constructor(
    readonly socket: net.Socket,
    readonly key: string,
    readonly pool: UpstreamPool,
    P: ParserModule,
  ) {
    const parser = P.create();
    parser.initialize(P.RESPONSE, {}, MAX_RESPONSE_HEADER_BYTES, P.STRICT);
    // Every callback runs inside the parser's execute: `parsing` defers destroying the socket until after.
    parser[K_ON_MESSAGE_BEGIN] = () => {
      this.parsing = true;
      this.onMessageBegin();
    };
    parser[K_ON_HEADERS] = (h, url) => {
      for (const x of h) this.pieces.push(x);
      this.piecesUrl += url;
    };
    parser[K_ON_HEADERS_COMPLETE] = (_ma, _mi, headers, _m, _u, status, _sm, upgrade, keepAlive) => {
      this.parsing = true;
      return this.onHeadersComplete(headers, status ?? 0, upgrade, keepAlive);
    };
    parser[K_ON_BODY] = (chunk) => {
      this.parsing = true;
      this.call?.onBody(chunk);
    };
    parser[K_ON_MESSAGE_COMPLETE] = () => {
      this.parsing = true;
      this.call?.onMessageComplete();
    };
    this.parser = parser;
    this.handle = feedParser(
      socket,
      parser,
      (r) => this.afterExecute(r),
      (chunk) => this.onData(chunk),
    );
    socket.on("end", () => this.onEnd());
    socket.on("error", (err: NodeJS.ErrnoException) => this.onClose(err.code ?? "ECONNRESET", err.message));
    socket.on("close", () => this.onClose("ECONNRESET", "upstream closed the connection"));
    socket.on("drain", () => this.call?.onUpstreamDrain());
  }

  private onMessageBegin(): void {
    const c = this.call;
    // A message with no request waiting for it: bytes after a response (smuggling or a broken upstream).
    if (c === null || c.completed) this.poison("bytes after the response");
  }

  private onHeadersComplete(
    headers: string[] | undefined,
    status: number,
    upgrade: boolean,
    keepAlive: boolean,
  ): number {
    const h = headers ?? this.pieces;
    this.pieces = [];
    this.piecesUrl = "";
    const c = this.call;
    if (c === null || c.completed) return 0;
    if (upgrade || status === 101) {
      c.fail("UPSTREAM_UPGRADE", "the upstream switched protocols", true);
      return 0;
    }
    if (status >= 200) this.learnKeepAlive(h);
    c.onHead(status, h, keepAlive);
    // 1: the message has no body (a response to HEAD), whatever its framing fields say.
    return c.skipBody && status >= 200 ? 1 : 0;
  }

  /** `Keep-Alive: timeout=N` (seconds): how long the upstream keeps an idle connection. */
  private learnKeepAlive(h: string[]): void {
    for (let i = 0; i < h.length; i += 2) {
      const name = h[i]!;
      if (name.length !== 10 || name.toLowerCase() !== "keep-alive") continue;
      const m = /timeout\s*=\s*(\d+)/i.exec(h[i + 1]!);
      if (m !== null) this.idleMs = Math.max(0, Math.min(IDLE_MS, Number(m[1]) * 1000 - IDLE_MARGIN_MS));
    }
  }

  /** After the parser read from the handle by itself (`consume`). */
  private afterExecute(r: number | ParseError): void {
    this.parsing = false;
    const call = this.call;
    if (this.dead || call === null) {
      if (this.dead || typeof r !== "number") this.destroy();
      return;
    }
    call.sink.flush();
    if (typeof r !== "number") {
      call.fail("UPSTREAM_PARSE_ERROR", `${r.code}: ${r.reason}`, true);
      this.destroy();
      return;
    }
    this.afterParse();
  }

  pause(): void {
    if (this.handle !== null) this.handle.readStop();
    else this.socket.pause();
    this.paused = true;
  }

  resume(): void {
    if (!this.paused || this.socket.destroyed) return;
    this.paused = false;
    if (this.handle !== null) this.handle.readStart();
    else this.socket.resume();
  }

  private onData(chunk: Buffer): void {
    if (this.dead) return;
    if (this.call === null) {
      this.poison("bytes on an idle connection");
      return;
    }
    const call = this.call;
    this.parsing = true;
    call.cork();
    const r = this.parser.execute(chunk);
    call.uncork();
    this.parsing = false;
    if (typeof r !== "number") {
      call.fail("UPSTREAM_PARSE_ERROR", `${r.code}: ${r.reason}`, true);
      this.destroy();
      return;
    }
    this.afterParse();
  }

  private onEnd(): void {
    if (this.dead) return;
    const call = this.call;
    if (call !== null && !call.completed) {
      // A close-delimited body ends here; anything else cut short is a failure.
      this.parsing = true;
      call.cork();
      const r = this.parser.finish();
      call.uncork();
      this.parsing = false;
      if (r !== undefined && !call.completed)
        call.fail("UPSTREAM_PARSE_ERROR", `${r.code}: ${r.reason}`, true);
      if (!call.completed) call.fail("ECONNRESET", "the upstream closed the connection", call.mayHaveActed());
    }
    this.destroy();
    this.afterParse();
  }

  private onClose(code: string, message: string): void {
    if (this.dead && this.call === null) return;
    const call = this.call;
    if (call !== null && !call.completed) call.fail(code, message, call.mayHaveActed());
    this.destroy();
  }

  /** After a chunk: a completed call releases the socket (to the pool, or destroyed). */
  afterParse(): void {
    const call = this.call;
    if (call === null || !call.completed) return;
    this.call = null;
    if (this.dead || !call.reusable()) {
      this.destroy();
      return;
    }
    // Paused for a slow client on the response's last chunk: an idle socket must be read again, or the
    // next response on it would wait forever (and bytes arriving while idle would go unnoticed).
    this.resume();
    this.idleUntil = Date.now() + this.idleMs;
    this.pool.putIdle(this);
  }

  poison(_why: string): void {
    this.dead = true;
    if (!this.parsing) this.destroy();
  }

  destroy(): void {
    this.dead = true;
    if (this.parsing) return; // destroyed by afterParse/onData once execute() returns
    const call = this.call;
    if (call !== null && !call.completed)
      call.fail("ECONNRESET", "the upstream connection was closed", call.mayHaveActed());
    this.pool.forget(this);
    if (!this.socket.destroyed) this.socket.destroy();
    this.socket.removeAllListeners("data");
    this.call = null;
  }
}

/** One request on one upstream socket. */
export class Call {
  conn: Conn | null = null;
  /** Some byte of the request was handed to a connected socket. */
  touched = false;
  /** The final response was read whole (or the call failed): nothing more goes to the sink. */
  completed = false;
  /** The request (head and body) was written whole. */
  requestDone = false;
  private upstreamKeepAlive = false;
  private headSeen = false;
  private failedOnce = false;
  /** Timeout bookkeeping: the deadline of the current wait (headers, or the next body chunk). */
  deadline = 0;
  private corked: net.Socket | null = null;
  /** The request was HEAD: the response is read without a body. */
  skipBody = false;
  /**
   * The head went out alone and the body waits for the upstream's 100 Continue (a hop, ../rules.ts): until
   * then the deadline is the continue bound, and missing it fails the call untouched.
   */
  awaitingContinue = false;

  constructor(
    readonly pool: UpstreamPool,
    readonly sink: CallSink,
    /** The client's socket (corked while a chunk of the response is relayed). */
    readonly client: net.Socket,
    private readonly timeoutMs: number,
  ) {}

  cork(): void {
    if (!this.client.destroyed) {
      this.client.cork();
      this.corked = this.client;
    }
  }
  uncork(): void {
    this.sink.flush();
    if (this.corked !== null) {
      this.corked.uncork();
      this.corked = null;
    }
  }

  /** Writes request bytes (the caller frames them); false when the upstream pushes back. */
  write(data: string | Buffer): boolean {
    const conn = this.conn;
    if (conn === null || conn.dead || this.completed) return true;
    this.touched = true;
    return typeof data === "string" ? conn.socket.write(data, "latin1") : conn.socket.write(data);
  }

  corkUpstream(): void {
    this.conn?.socket.cork();
  }
  uncorkUpstream(): void {
    this.conn?.socket.uncork();
  }

  /** Whether the upstream may have acted on the request: bytes reached it, and not a head alone that waits. */
  mayHaveActed(): boolean {
    return this.touched && !this.awaitingContinue;
  }

  /** The head is written; the body waits for a 100 Continue (or any answer) within `ms`. */
  awaitContinue(ms: number): void {
    this.awaitingContinue = true;
    this.deadline = Date.now() + ms;
  }

  /** The deadline passed: a call still waiting for its 100 never sent its body, so it is untouched. */
  expire(): void {
    if (this.awaitingContinue) {
      this.fail(HOP_CONTINUE_TIMEOUT, "the peer plane did not answer the request head in time", false);
    } else {
      this.fail("UPSTREAM_TIMEOUT", "the upstream did not answer in time", true);
    }
  }

  /** The whole request is written. */
  end(): void {
    this.requestDone = true;
    this.deadline = Date.now() + this.timeoutMs;
  }

  onHead(status: number, headers: string[], keepAlive: boolean): void {
    const beforeBody = this.awaitingContinue;
    if (this.awaitingContinue) {
      // The peer is alive and took the head: the attempt now has the whole timeout. A final answer before
      // the 100 (a refusal) means the body is not wanted (RFC 9110 §10.1.1): it is not sent.
      this.awaitingContinue = false;
      this.deadline = Date.now() + this.timeoutMs;
      if (status < 200) {
        this.sink.continued(this);
        return;
      }
    }
    if (status < 200) return; // 100 Continue, 103 Early Hints: not relayed
    this.headSeen = true;
    this.upstreamKeepAlive = keepAlive;
    this.deadline = Date.now() + this.timeoutMs;
    const relayed = this.sink.head(status, headers, keepAlive, beforeBody);
    if (relayed === false) this.fail("UPSTREAM_HEADERS", "unrelayable", true);
    else if (relayed !== true) this.fail(relayed.code, relayed.message, relayed.touched);
  }

  onBody(chunk: Buffer): void {
    if (this.completed || !this.headSeen) return;
    this.deadline = Date.now() + this.timeoutMs;
    if (!this.sink.data(chunk)) this.conn?.pause();
  }

  onMessageComplete(): void {
    if (this.completed || !this.headSeen) return; // an interim response ended
    this.completed = true;
    this.pool.active.delete(this);
    this.sink.complete();
  }

  /** The client drained: read from the upstream again. */
  resume(): void {
    this.conn?.resume();
  }

  onUpstreamDrain(): void {
    if (!this.completed) this.sink.drained();
  }

  reusable(): boolean {
    return this.upstreamKeepAlive && this.requestDone && !this.failedOnce;
  }

  /** Ends the call as failed (once) and destroys its socket. */
  fail(code: string, message: string, touched: boolean): void {
    if (this.completed) return;
    this.completed = true;
    this.failedOnce = true;
    this.pool.active.delete(this);
    const conn = this.conn;
    if (conn !== null) conn.poison(code);
    this.sink.failed(code, message, touched, this.headSeen);
  }

  /** The client went away, or the request cannot go on: drop the upstream socket without a report. */
  abort(): void {
    if (this.completed) return;
    this.completed = true;
    this.failedOnce = true;
    this.pool.active.delete(this);
    this.conn?.poison("aborted");
  }
}

/** Keep-alive sockets per upstream, and the timeouts of calls in flight. */
export class UpstreamPool {
  private readonly idle = new Map<string, Conn[]>();
  private readonly all = new Set<Conn>();
  readonly active = new Set<Call>();
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly P: ParserModule,
    private readonly connectTimeoutMs: number,
    private readonly peerConnect: IngressOptions["peerConnect"],
  ) {
    this.timer = setInterval(() => this.tick(), 500);
    this.timer.unref();
  }

  /**
   * Starts a call: an idle socket when there is one, otherwise a new connection. `ready` runs once the
   * socket can take the request; connection failures go to the sink with `touched: false`.
   */
  open(call: Call, target: UpstreamTarget, timeoutMs: number, ready: (call: Call) => void): void {
    const key = target.tls ? `tls:${target.endpoint}` : target.endpoint;
    call.deadline = Date.now() + timeoutMs;
    this.active.add(call);
    const list = this.idle.get(key);
    const now = Date.now();
    while (list !== undefined && list.length > 0) {
      const conn = list.pop()!;
      if (conn.dead || conn.socket.destroyed || conn.idleUntil < now) {
        conn.destroy();
        continue;
      }
      conn.call = call;
      call.conn = conn;
      ready(call);
      return;
    }
    this.connect(call, key, target, ready);
  }

  private connect(call: Call, key: string, target: UpstreamTarget, ready: (call: Call) => void): void {
    const socket = target.endpoint.startsWith("unix:")
      ? net.connect({ path: target.endpoint.slice("unix:".length) })
      : this.connectTcp(target);
    let connected = false;
    const timer = setTimeout(() => {
      socket.destroy();
      fail("CONNECT_TIMEOUT", `no connection to ${target.endpoint} within ${this.connectTimeoutMs} ms`);
    }, this.connectTimeoutMs);
    const fail = (code: string, message: string) => {
      if (connected) return;
      connected = true; // report once
      clearTimeout(timer);
      if (call.completed) return;
      call.completed = true;
      this.active.delete(call);
      call.sink.failed(code, message, false, false);
    };
    socket.once("error", (err: NodeJS.ErrnoException) => fail(err.code ?? "ECONNREFUSED", err.message));
    socket.once(target.tls ? "secureConnect" : "connect", () => {
      if (connected) return;
      connected = true;
      clearTimeout(timer);
      socket.removeAllListeners("error");
      const conn = new Conn(socket, key, this, this.P);
      this.all.add(conn);
      if (call.completed) {
        // The client left while connecting: keep the fresh socket for the next call.
        conn.idleUntil = Date.now() + conn.idleMs;
        this.putIdle(conn);
        return;
      }
      conn.call = call;
      call.conn = conn;
      ready(call);
    });
  }

  private connectTcp(target: UpstreamTarget): net.Socket {
    const colon = target.endpoint.lastIndexOf(":");
    const host = target.endpoint.slice(0, colon).replace(/^\[|\]$/g, "");
    const port = Number(target.endpoint.slice(colon + 1));
    if (!target.tls) return net.connect({ host, port, noDelay: true });
    const socket = tls.connect({ host, port, ALPNProtocols: ["http/1.1"], ...this.peerConnect });
    socket.setNoDelay(true);
    return socket;
  }

  putIdle(conn: Conn): void {
    let list = this.idle.get(conn.key);
    if (list === undefined) {
      list = [];
      this.idle.set(conn.key, list);
    }
    list.push(conn);
  }

  forget(conn: Conn): void {
    this.all.delete(conn);
    const list = this.idle.get(conn.key);
    if (list === undefined) return;
    const i = list.indexOf(conn);
    if (i >= 0) list.splice(i, 1);
  }

  private tick(): void {
    const now = Date.now();
    for (const call of this.active) {
      if (call.deadline < now) call.expire();
    }
    for (const list of this.idle.values()) {
      for (const conn of [...list]) if (conn.idleUntil < now) conn.destroy();
    }
  }

  close(): void {
    clearInterval(this.timer);
    for (const conn of [...this.all]) conn.destroy();
  }
}
