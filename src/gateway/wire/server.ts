// The wire transport of the ingress (the default; see ../ingress.ts): a node:net (or node:tls) server whose
// connections are parsed by Node's own llhttp in strict mode, and an own upstream socket pool
// (upstream.ts). It owns HTTP/1.1 framing in both directions, so the rules are written down here and
// tested byte by byte in ../framing.test.ts:
// - requests are parsed strictly (no lenient flag): CL+TE, duplicate or bad Content-Length, bare LF,
//   obs-fold, CR/NUL in fields and bad chunk framing are refused with 400 and the connection is closed;
// - the upstream request is framed afresh: Content-Length for bodies of known length, chunked otherwise,
//   never the client's framing fields; the response is framed afresh for the client the same way;
// - pipelined requests are answered in order, one at a time; reading pauses while one waits;
// - an answer given before the request body was read whole closes the connection;
// - header-read, request and keep-alive timeouts, and the body limit, are enforced here.

import { randomUUID } from "node:crypto";
import { STATUS_CODES } from "node:http";
import net from "node:net";
import tls from "node:tls";
import {
  bareErrorAnswer,
  createGateway,
  type Exchange,
  type Forward,
  type Gateway,
  httpDate,
  listenOn,
  type Refusal,
  refuse,
} from "../gateway.ts";
import type { Ingress, IngressLimits, IngressOptions } from "../options.ts";
import { awaitsContinue, declaresBody, readsWholeFirst, upstreamTimeoutMs } from "../rules.ts";
import { sniServerOptions, withdrawSessionsOnChange } from "../tls-options.ts";
import { type UpgradeContext, WebSocketRelay } from "../upgrade.ts";
import {
  feedParser,
  K_ON_BODY,
  K_ON_HEADERS,
  K_ON_HEADERS_COMPLETE,
  K_ON_MESSAGE_COMPLETE,
  type ParseError,
  type Parser,
  type ParserModule,
  type StreamHandle,
} from "./llhttp.ts";
import { Call, type CallSink, type HeadFailure, UpstreamPool } from "./upstream.ts";

/** Up to this many body bytes go out in one write together with the head. */
const SINGLE_WRITE_BYTES = 64 * 1024;

/** Bytes of request body held for a request that is not yet being sent upstream, before reading pauses. */
const HOLD_BYTES = 256 * 1024;

const CONTINUE = "HTTP/1.1 100 Continue\r\n\r\n";

interface WireExchange extends Exchange {
  conn: ClientConn;
  target: string;
  rawHeaders: string[];
  /** The client wants the connection kept (HTTP/1.1 default, or 1.0 with keep-alive). */
  keepAlive: boolean;
  http10: boolean;
  expectContinue: boolean;
  /** `100 Continue` went to the client (once, whether the request was forwarded or held first). */
  continueSent: boolean;
  upgrade: boolean;
  /** Bytes the client sent after an upgrade request's head (frames for the relay), once parsed. */
  upgradeHead: Buffer | null;
  /** The request message was read whole. */
  complete: boolean;
  /** The request declared a body (Content-Length > 0 or chunked). */
  bodyDeclared: boolean;
  bodyBytes: number;
  /** Body chunks held until the request goes upstream. */
  held: Buffer[];
  heldBytes: number;
  /** Body chunks are dropped (the request was refused). */
  discard: boolean;
  forward: Forward | null;
  attempt: number;
  call: Call | null;
  /** The upstream takes the body as it arrives (set once its request head is written). */
  streaming: boolean;
  /** The upstream request head said `Transfer-Encoding: chunked`. */
  sentChunked: boolean;
  /** The target's busy count was raised (released once). */
  acquired: boolean;
  /** Dispatch waits for the whole (small) body. */
  waitWhole: boolean;
  /** Response state. */
  headSent: boolean;
  /** The response head, held back to go out in one write with the first body bytes. */
  pendingHead: string | null;
  status: number;
  chunkedOut: boolean;
  closeAfter: boolean;
  done: boolean;
}

export function createWireIngress(options: IngressOptions, limits: IngressLimits, P: ParserModule): Ingress {
  const gw = createGateway(options, limits);
  const { metrics, log, self } = gw;
  const pool = new UpstreamPool(P, limits.connectTimeoutMs, options.peerConnect);
  const conns = new Set<ClientConn>();
  const upgrade: UpgradeContext = { gw, limits, peerConnect: options.peerConnect, relays: new Set() };
  const ctx: Context = { gw, limits, P, pool, conns, upgrade };

  const onSocket = (socket: net.Socket) => {
    const conn = new ClientConn(socket, ctx);
    conns.add(conn);
  };
  const server = options.tls
    ? tls.createServer(
        {
          cert: options.tls.cert,
          key: options.tls.key,
          ...sniServerOptions(options.tls.sni),
          ALPNProtocols: ["http/1.1"],
          handshakeTimeout: limits.headersTimeoutMs,
        },
        // Half-open only once secure: a client that closes during the handshake (a Node client that refused
        // the certificate does) can never finish it, and must not hold its socket until handshakeTimeout.
        (socket: tls.TLSSocket) => {
          socket.allowHalfOpen = true;
          onSocket(socket);
        },
      )
    : net.createServer({ allowHalfOpen: true, noDelay: true }, onSocket);
  if (server instanceof tls.Server) withdrawSessionsOnChange(server, options.tls?.sni);
  server.on("tlsClientError", (_err: Error, socket: net.Socket) => socket.destroy());
  server.on("error", (err) => log.error({ err }, "ingress server error"));

  // Client timeouts are checked on one tick for all connections.
  let timer: NodeJS.Timeout | null = null;
  const tick = () => {
    const now = Date.now();
    for (const c of conns) c.checkTimeouts(now);
  };

  let address: { host: string; port: number } | null = null;
  return {
    transport: "wire",
    metrics,
    get address() {
      return address;
    },
    async start() {
      address = await listenOn(server, options.listen ?? { host: "127.0.0.1", port: 0 });
      timer = setInterval(tick, Math.min(1_000, limits.headersTimeoutMs, limits.keepAliveTimeoutMs) / 2);
      timer.unref();
      log.info(
        { plane: self.name, region: self.region, ...address, scheme: gw.scheme, transport: "wire" },
        "ingress listening",
      );
    },
    async stop() {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const c of conns) c.stopping();
      for (const relay of upgrade.relays) relay.shutdown();
      await gw.drain();
      for (const c of conns) c.destroy();
      await closed;
      if (timer !== null) clearInterval(timer);
      pool.close();
      address = null;
    },
  };
}

interface Context {
  gw: Gateway;
  limits: IngressLimits;
  P: ParserModule;
  pool: UpstreamPool;
  conns: Set<ClientConn>;
  /** Websocket relays (../upgrade.ts): connections handed over after an upgrade was planned. */
  upgrade: UpgradeContext;
}

/** One client connection: its parser, its queue of pipelined requests, its timeouts. */
class ClientConn {
  private readonly parser: Parser;
  private readonly remoteAddress: string;
  /** Requests in order; the first is the one being answered. */
  private readonly queue: WireExchange[] = [];
  /** The request whose message is being read (the last in the queue), or null between messages. */
  private reading: WireExchange | null = null;
  private pieces: string[] = [];
  private piecesUrl = "";
  /** Start of the current request head (headers timeout), of its message (request timeout). */
  private headStart: number;
  private messageStart = 0;
  private idleSince = 0;
  /** No more requests are read: after an error, `Connection: close`, an upgrade, or a shutdown. */
  private noMore = false;
  /** A parse error's answer, written once the requests before it are answered. */
  private pendingError: string | null = null;
  private paused = false;
  /** The libuv handle the parser reads from directly (plain TCP), or null (TLS: `data` events). */
  private readonly handle: StreamHandle | null;
  /** Whether the read being parsed completed a request head, or ended a message. */
  private sawHead = false;
  private sawEnd = false;
  private closed = false;
  private drainWaiter: WireExchange | null = null;
  /** A request parsed in the current read, to start once the read is parsed whole. */
  private pendingStart: WireExchange | null = null;
  /** An upgrade request's head was parsed in the current read: the bytes after it are kept for it. */
  private upgradeSeen: WireExchange | null = null;
  /** The socket was handed to a websocket relay: nothing here touches it any more. */
  private detached = false;

  constructor(
    readonly socket: net.Socket,
    readonly ctx: Context,
  ) {
    this.remoteAddress = socket.remoteAddress ?? "";
    this.headStart = Date.now();
    const { P, limits } = ctx;
    const parser = P.create();
    parser.initialize(P.REQUEST, {}, limits.maxHeaderBytes, P.STRICT);
    parser[K_ON_HEADERS] = (h, url) => {
      for (const x of h) this.pieces.push(x);
      this.piecesUrl += url;
    };
    parser[K_ON_HEADERS_COMPLETE] = (major, minor, headers, method, url, _s, _sm, upgrade, keepAlive) =>
      this.onHeadersComplete(major, minor, headers, method ?? -1, url, upgrade, keepAlive);
    parser[K_ON_BODY] = (chunk) => this.onBody(chunk);
    parser[K_ON_MESSAGE_COMPLETE] = () => this.onMessageComplete();
    this.parser = parser;
    this.handle = feedParser(
      socket,
      parser,
      (r) => this.afterExecute(r),
      (chunk) => this.onData(chunk),
    );
    socket.on("end", () => this.onEnd());
    socket.on("error", () => this.onClose());
    socket.on("close", () => this.onClose());
    socket.on("drain", () => this.onDrain());
  }

  // —— reading ——

  private onData(chunk: Buffer): void {
    if (this.detached) return;
    // After the last request (an error, `Connection: close`), only its own body is still read.
    if (this.noMore && this.reading === null) return;
    this.socket.cork();
    const r = this.parser.execute(chunk);
    if (typeof r !== "number") this.parseError(r.code);
    else if (r < chunk.length && !this.noMore) this.stopReading(); // an upgrade: the rest is not HTTP/1.1
    if (typeof r === "number") this.keepUpgradeHead(chunk, r);
    this.noteRead();
    this.startPending();
    this.socket.uncork();
    this.updateReading();
  }

  /**
   * A request whose head was parsed in the read just done starts only now, once the parser is through the
   * read: llhttp checks some framing (a Transfer-Encoding that is not chunked) just after the head
   * callback, and a refused request must not have gone upstream in the meantime.
   */
  private startPending(): void {
    const ex = this.pendingStart;
    if (ex === null) return;
    this.pendingStart = null;
    if (!ex.done && this.queue[0] === ex) this.startExchange(ex);
  }

  /** After the parser read from the handle by itself (see `consume`). */
  private afterExecute(r: number | ParseError): void {
    this.socket.cork();
    if (typeof r !== "number") this.parseError(r.code);
    else if (this.upgradeSeen !== null) this.keepUpgradeHead(this.parser.getCurrentBuffer(), r);
    this.noteRead();
    this.startPending();
    this.socket.uncork();
    this.updateReading();
  }

  /**
   * After an upgrade request's head the parser stops (llhttp pauses on upgrade): the rest of the read is not
   * HTTP/1.1 but whatever the upgraded protocol sends, kept for the relay; reading stops until it takes over.
   */
  private keepUpgradeHead(read: Buffer, parsed: number): void {
    const ex = this.upgradeSeen;
    if (ex === null) return;
    this.upgradeSeen = null;
    if (parsed < read.length) ex.upgradeHead = Buffer.from(read.subarray(parsed));
    // A websocket's frames wait in the socket until its relay takes over (the request may be parked while
    // its deployment wakes, or queued behind a pipelined one); an upgrade with a body is still read.
    if (parsed < read.length || (ex.method === "GET" && !declaredBody(ex.rawHeaders))) this.pause();
  }

  /**
   * The headers timeout runs from the first read of a new request head. There is no parser callback per
   * message begin (one C++ to JS call less per request): a read that neither completed a head nor ended a
   * message, with no message being read, can only be the start of a head. Bytes of a new head that arrive
   * in the same read as the end of the previous message are covered by the keep-alive timeout instead.
   */
  private noteRead(): void {
    if (!this.sawHead && !this.sawEnd && this.reading === null && this.headStart === 0 && !this.noMore) {
      this.headStart = Date.now();
      this.idleSince = 0;
    }
    this.sawHead = false;
    this.sawEnd = false;
  }

  private onHeadersComplete(
    major: number,
    minor: number,
    headers: string[] | undefined,
    method: number,
    url: string | undefined,
    upgrade: boolean,
    keepAlive: boolean,
  ): number {
    const h = headers ?? this.pieces;
    const target = url ?? this.piecesUrl;
    this.pieces = [];
    this.piecesUrl = "";
    this.sawHead = true;
    this.headStart = 0;
    this.idleSince = 0;
    this.messageStart = Date.now();
    if (this.noMore) return 0;
    if (major !== 1) {
      // HTTP/0.9 (a request line without a version) and any other major version: not HTTP/1.x.
      this.refuseConnection("HPE_INVALID_VERSION");
      return 0;
    }
    const { gw } = this.ctx;
    const base = gw.begin();
    const ex: WireExchange = {
      startedAt: base.startedAt,
      time: base.time,
      requestId: base.requestId,
      route: base.route,
      forwardedFrom: null,
      context: null,
      processedBy: null,
      errorCode: null,
      method: this.ctx.P.methods[method] ?? "",
      authority: null,
      path: null,
      bodyDigest: null,
      heldAnswer: null,
      conn: this,
      target,
      rawHeaders: h,
      keepAlive,
      http10: major === 1 && minor === 0,
      expectContinue: false,
      continueSent: false,
      upgrade,
      upgradeHead: null,
      complete: false,
      bodyDeclared: false,
      bodyBytes: 0,
      held: [],
      heldBytes: 0,
      discard: false,
      forward: null,
      attempt: 0,
      call: null,
      streaming: false,
      sentChunked: false,
      acquired: false,
      waitWhole: false,
      headSent: false,
      pendingHead: null,
      status: 0,
      chunkedOut: false,
      closeAfter: !keepAlive || upgrade,
      done: false,
    };
    if (ex.closeAfter) this.noMore = true;
    if (upgrade) this.upgradeSeen = ex;
    this.reading = ex;
    this.queue.push(ex);
    if (this.queue.length === 1) this.pendingStart = ex;
    return 0;
  }

  private onBody(chunk: Buffer): void {
    const ex = this.reading;
    if (ex === null || ex.done || ex.discard) return;
    ex.bodyBytes += chunk.length;
    if (ex.bodyBytes > this.ctx.limits.maxBodyBytes) {
      this.bodyTooLarge(ex);
      return;
    }
    this.ctx.gw.hashBody(ex, chunk);
    if (ex.streaming) {
      this.sendBody(ex, chunk);
      return;
    }
    ex.held.push(chunk);
    ex.heldBytes += chunk.length;
  }

  private onMessageComplete(): void {
    this.sawEnd = true;
    const ex = this.reading;
    this.reading = null;
    if (ex === null) return;
    ex.complete = true;
    this.messageStart = 0;
    if (ex.done || ex.discard) return;
    if (ex.streaming) {
      this.endBody(ex);
    } else if (ex.waitWhole) {
      ex.waitWhole = false;
      this.dispatch(ex);
    }
  }

  private parseError(code: string): void {
    // Bytes after the last request are not read as requests: what they contain does not matter.
    if (this.noMore && this.reading === null) return;
    const { gw } = this.ctx;
    gw.metrics?.malformed(code);
    this.noMore = true;
    const ex = this.reading;
    this.reading = null;
    if (ex !== null) {
      // The request being read is broken (its body's framing): it is not sent on, or is cut off. When it
      // is the one being answered and nothing was sent yet, its error answer is the connection's last.
      const answered = this.queue[0] === ex && !ex.headSent;
      this.failExchange(ex, code === "HPE_HEADER_OVERFLOW" ? "headers_too_large" : "invalid_request");
      if (answered) return;
    }
    this.refuseConnection(code);
  }

  /** No more requests on this connection: answer the error once those before it are answered, and close. */
  private refuseConnection(code: string): void {
    const { gw } = this.ctx;
    this.noMore = true;
    if (this.queue.length === 0) this.writeBareError(gw.parseErrorAnswer(code));
    else this.pendingError = gw.parseErrorAnswer(code);
  }

  /**
   * The client closed its side. As node:http and nginx do, that is taken as the client going away: what it
   * asked for and is not yet answered is abandoned (499), and the upstream calls are cancelled.
   */
  private onEnd(): void {
    if (this.detached) return;
    this.noMore = true;
    if (this.queue.length === 0 && this.reading === null) this.endConnection();
    else this.destroy();
  }

  private onClose(): void {
    if (this.closed) return;
    this.closed = true;
    this.ctx.conns.delete(this);
    for (const ex of this.queue.splice(0)) {
      ex.call?.abort();
      this.finish(ex, true);
    }
    this.reading = null;
    // Not inside a callback of the parser itself: it is freed once the current call stack is done.
    const parser = this.parser;
    setImmediate(() => parser.close());
  }

  /** Pause reading while a pipelined request waits, or while a body cannot be passed on fast enough. */
  updateReading(): void {
    if (this.closed) return;
    const head = this.queue[0];
    const reading = this.reading;
    const hold =
      this.queue.length > 1 ||
      (reading !== null && !reading.streaming && reading.heldBytes > HOLD_BYTES) ||
      this.drainWaiter !== null ||
      (head?.streaming && head.call?.conn?.socket.writableNeedDrain === true);
    if (hold && !this.paused) {
      this.pause();
    } else if (!hold && this.paused) {
      this.paused = false;
      if (this.handle !== null) {
        if (!this.socket.destroyed) this.handle.readStart();
      } else {
        this.socket.resume();
      }
    }
  }

  private pause(): void {
    this.paused = true;
    if (this.handle !== null) this.handle.readStop();
    else this.socket.pause();
  }

  private stopReading(): void {
    this.noMore = true;
    this.pause();
  }

  // —— one request ——

  private startExchange(ex: WireExchange): void {
    const { gw, limits } = this.ctx;
    let plan: ReturnType<Gateway["plan"]>;
    try {
      plan = gw.plan(ex, {
        method: ex.method,
        target: ex.target,
        rawHeaders: ex.rawHeaders,
        remoteAddress: this.remoteAddress,
      });
    } catch (err) {
      gw.log.error({ err, request_id: ex.requestId }, "ingress handler failed");
      plan = refuse("internal_error");
    }
    const declared = declaredBody(ex.rawHeaders);
    ex.bodyDeclared = declared;
    if (plan.kind === "refuse") {
      this.respondError(ex, plan);
      return;
    }
    if (plan.kind === "park") {
      // Held while the deployment wakes (src/gateway/parking.ts); its body is held meanwhile, as for any
      // request not yet dispatched. Then planned again. Its 100 goes now: a hop waits for it (rules.ts).
      this.sendContinue(ex);
      void plan.wait.then((outcome) => {
        if (ex.done || this.closed) return;
        if (outcome.kind === "go") this.startExchange(ex);
        else this.respondError(ex, gw.parkRefusal(outcome));
      });
      return;
    }
    ex.forward = plan;
    if (plan.upgrade !== null) {
      this.handOver(ex, plan);
      return;
    }
    this.sendContinue(ex);
    // A body already complete is as good as read whole: dispatched at once.
    if (ex.complete || !readsWholeFirst(plan, limits)) {
      this.dispatch(ex);
    } else {
      ex.waitWhole = true;
    }
  }

  /**
   * `100 Continue` (RFC 9110 §15.2.1) once the head is planned and not refused, for a client that asked
   * and whose body has not all arrived: a hop's sender waits for it before its body (rules.ts).
   */
  private sendContinue(ex: WireExchange): void {
    if (ex.continueSent || ex.complete || !hasExpectContinue(ex.rawHeaders)) return;
    ex.continueSent = true;
    ex.expectContinue = true;
    this.socket.write(CONTINUE, "latin1");
  }

  /**
   * A websocket upgrade was planned: the socket goes to its relay (../upgrade.ts), which answers it from
   * here on. It is the connection's last request (an upgrade ends reading: `noMore`), and carries no body.
   */
  private handOver(ex: WireExchange, forward: Forward): void {
    const { gw, conns, upgrade } = this.ctx;
    this.queue.shift();
    this.detached = true;
    this.closed = true;
    conns.delete(this);
    if (this.handle !== null) {
      this.parser.unconsume();
    }
    const parser = this.parser;
    setImmediate(() => parser.close());
    const relay = new WebSocketRelay(
      upgrade,
      ex,
      forward,
      this.socket,
      ex.upgradeHead ?? Buffer.alloc(0),
      (status, aborted) => {
        ex.done = true;
        gw.end(ex, status, aborted);
      },
    );
    relay.start();
    if (this.handle !== null) {
      // Reads now reach the socket's own stream (`data` events to the relay). The stream still counts the
      // read it asked for before the parser took the handle, so it will not start one: started here
      // (stopped first: libuv refuses a second start with EALREADY), and marked as the stream marks it.
      this.handle.readStop();
      (this.handle as { reading?: boolean }).reading = true;
      this.handle.readStart();
    }
  }

  /** Sends the request to `forward.targets[ex.attempt]`. */
  private dispatch(ex: WireExchange): void {
    const { gw, limits, pool } = this.ctx;
    const forward = ex.forward!;
    const t = forward.targets[ex.attempt]!;
    gw.acquire(t);
    ex.acquired = true;
    const timeout = upstreamTimeoutMs(t, limits);
    const call = new Call(pool, new Sink(this, ex), this.socket, timeout);
    // A response to HEAD has no body, whatever its Content-Length says (RFC 9110 §9.3.2).
    call.skipBody = ex.method === "HEAD";
    ex.call = call;
    pool.open(call, { endpoint: t.endpoint, tls: t.origin.startsWith("https:") }, timeout, () =>
      this.writeRequest(ex, call),
    );
  }

  private writeRequest(ex: WireExchange, call: Call): void {
    const { gw } = this.ctx;
    const forward = ex.forward!;
    const t = forward.targets[ex.attempt]!;
    const headers = gw.attemptHeaders(ex, forward, t);
    // The client's method: POST for predict; GET and DELETE reach the async service and peer planes;
    // any of `/sync/{path}`'s reaches a replica's own routes.
    let head = `${ex.method} ${t.path} HTTP/1.1\r\n`;
    if (t.kind === "replica") head += `host: ${t.authority}\r\n`;
    for (let i = 0; i < headers.length; i += 2) head += `${headers[i]}: ${headers[i + 1]}\r\n`;
    const known = ex.complete ? ex.bodyBytes : forward.contentLength;
    // A hop with a body goes head first and waits for the peer's 100 Continue (rules.ts, HOP_CONTINUE_TIMEOUT).
    if (t.kind === "plane" && (known === null || known > 0) && awaitsContinue(t, forward, this.ctx.limits)) {
      head += "expect: 100-continue\r\n";
      if (known !== null) head += `content-length: ${known}\r\n\r\n`;
      else {
        head += "transfer-encoding: chunked\r\n\r\n";
        ex.sentChunked = true;
      }
      call.write(head);
      call.awaitContinue(this.ctx.limits.hopContinueTimeoutMs);
      return;
    }
    if (known !== null) {
      head += `content-length: ${known}\r\n\r\n`;
    } else {
      head += "transfer-encoding: chunked\r\n\r\n";
      ex.sentChunked = true;
    }
    this.writeBodyOut(ex, call, head);
  }

  /** The peer plane's 100 Continue (or its answer) came for a hop sent head first: the body goes now. */
  continued(ex: WireExchange, call: Call): void {
    if (ex.done || ex.call !== call) return;
    this.writeBodyOut(ex, call, "");
  }

  /** The request body after its head: what is held, then (`streaming`) what arrives. */
  private writeBodyOut(ex: WireExchange, call: Call, head: string): void {
    ex.streaming = true;
    const held = ex.held;
    const heldBytes = ex.heldBytes;
    ex.held = [];
    ex.heldBytes = 0;
    if (ex.complete && !ex.sentChunked && heldBytes <= SINGLE_WRITE_BYTES) {
      // The common case, a small body read whole: head and body leave in one write.
      call.write(joinLatin1(head, held, heldBytes));
      call.end();
      return;
    }
    call.corkUpstream();
    if (head !== "") call.write(head);
    for (const chunk of held) this.sendBody(ex, chunk);
    if (ex.complete) this.endBody(ex);
    call.uncorkUpstream();
    this.updateReading();
  }

  private sendBody(ex: WireExchange, chunk: Buffer): void {
    const call = ex.call!;
    let ok: boolean;
    if (ex.sentChunked) {
      call.write(`${chunk.length.toString(16)}\r\n`);
      call.write(chunk);
      ok = call.write("\r\n");
    } else {
      ok = call.write(chunk);
    }
    if (!ok) this.updateReading();
  }

  private endBody(ex: WireExchange): void {
    const call = ex.call!;
    if (ex.sentChunked) call.write("0\r\n\r\n");
    call.end();
  }

  private bodyTooLarge(ex: WireExchange): void {
    const { limits } = this.ctx;
    ex.discard = true;
    ex.call?.abort();
    this.noMore = true;
    this.reading = null;
    if (this.queue[0] === ex) {
      this.respondError(ex, refuse("payload_too_large", null, { limit_bytes: limits.maxBodyBytes }));
    } else {
      this.failExchange(ex, "payload_too_large");
    }
  }

  /** The request cannot go on: answer it if nothing was sent yet, otherwise cut the response. */
  private failExchange(
    ex: WireExchange,
    code: "invalid_request" | "payload_too_large" | "headers_too_large",
  ) {
    ex.discard = true;
    ex.call?.abort();
    if (this.queue[0] !== ex) {
      // Not being answered yet: it never will be (everything after it is dropped with the connection).
      const i = this.queue.indexOf(ex);
      if (i >= 0) this.queue.splice(i, 1);
      this.finish(ex, true);
      return;
    }
    if (ex.headSent) {
      this.destroy();
      return;
    }
    const { limits } = this.ctx;
    this.respondError(
      ex,
      refuse(code, null, code === "payload_too_large" ? { limit_bytes: limits.maxBodyBytes } : null),
    );
  }

  // —— responses ——

  /** A refusal with the JSON error body; the connection closes when the body was not read whole. */
  respondError(ex: WireExchange, r: Refusal): void {
    if (ex.done) return;
    if (ex.headSent) {
      // The status line is out; the only honest signal left is an aborted response.
      ex.errorCode = r.code;
      this.destroy();
      return;
    }
    if (ex.requestId === "") ex.requestId = randomUUID(); // refused before it was planned
    // Every body byte went through the digest unless it was discarded (a refusal before the body's end).
    const answer = this.ctx.gw.errorResponse(ex, r, ex.complete && !ex.discard);
    if ((!ex.complete && ex.bodyDeclared) || ex.upgrade) {
      ex.closeAfter = true;
      ex.discard = true;
      this.noMore = true;
    }
    this.writeHead(ex, answer.status, answer.headers, true);
    // A response to HEAD has no body (RFC 9110 §9.3.2), though it says how long the body would be.
    if (ex.method !== "HEAD") this.socket.write(answer.body, "utf8");
    this.responseDone(ex);
  }

  /**
   * Writes the status line and headers, or holds them for the first body bytes (`hold`); picks the response
   * framing (`hasLength`: a Content-Length is in).
   */
  writeHead(ex: WireExchange, status: number, headers: string[], hasLength: boolean, hold = false): void {
    ex.headSent = true;
    ex.status = status;
    let head = `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? "Unknown"}\r\n`;
    let date = false;
    for (let i = 0; i < headers.length; i += 2) {
      const name = headers[i]!;
      if (name.length === 4 && name === "date") date = true;
      head += `${name}: ${headers[i + 1]}\r\n`;
    }
    if (!date) head += `date: ${httpDate()}\r\n`;
    const bodyless = status === 204 || status === 304;
    if (!hasLength && !bodyless) {
      if (ex.http10) ex.closeAfter = true;
      else {
        ex.chunkedOut = true;
        head += "transfer-encoding: chunked\r\n";
      }
    }
    // The connection closes after this response when the request asked for it, or when it is the last
    // one this connection will answer (requests queued behind it are still answered first).
    const last = this.noMore && this.queue.at(-1) === ex && this.pendingError === null;
    if (ex.closeAfter || last) {
      ex.closeAfter = true;
      head += "connection: close\r\n\r\n";
    } else {
      head += ex.http10 ? "connection: keep-alive\r\n\r\n" : "\r\n";
    }
    if (hold) ex.pendingHead = head;
    else this.socket.write(head, "latin1");
  }

  /** Writes a held response head, if any. */
  flushHead(ex: WireExchange): void {
    const head = ex.pendingHead;
    if (head === null) return;
    ex.pendingHead = null;
    this.socket.write(head, "latin1");
  }

  writeBody(ex: WireExchange, chunk: Buffer): boolean {
    const head = ex.pendingHead;
    if (head !== null && chunk.length <= SINGLE_WRITE_BYTES) {
      ex.pendingHead = null;
      const framed = ex.chunkedOut ? `${head}${chunk.length.toString(16)}\r\n` : head;
      const out = joinLatin1(framed, [chunk], chunk.length, ex.chunkedOut ? 2 : 0);
      if (ex.chunkedOut) out.write("\r\n", out.length - 2, "latin1");
      return this.socket.write(out);
    }
    this.socket.cork();
    this.flushHead(ex);
    let ok: boolean;
    if (ex.chunkedOut) {
      this.socket.write(`${chunk.length.toString(16)}\r\n`, "latin1");
      this.socket.write(chunk);
      ok = this.socket.write("\r\n", "latin1");
    } else {
      ok = this.socket.write(chunk);
    }
    this.socket.uncork();
    return ok;
  }

  /** Waits for the client socket to drain before the upstream is read again. */
  waitDrain(ex: WireExchange): void {
    this.drainWaiter = ex;
  }

  private onDrain(): void {
    if (this.detached) return;
    const ex = this.drainWaiter;
    this.drainWaiter = null;
    if (ex !== null) ex.call?.resume();
    this.updateReading();
  }

  /** The response was written whole. */
  responseDone(ex: WireExchange): void {
    const head = ex.pendingHead;
    if (head !== null) {
      ex.pendingHead = null;
      this.socket.write(ex.chunkedOut ? `${head}0\r\n\r\n` : head, "latin1");
    } else if (ex.chunkedOut) {
      this.socket.write("0\r\n\r\n", "latin1");
    }
    if (!ex.complete && !ex.discard) {
      // Answered before the request body was read: the rest of it is dropped, with the connection.
      ex.discard = true;
      ex.closeAfter = true;
      this.noMore = true;
      ex.call?.abort();
    }
    this.finish(ex, false);
    this.queue.shift();
    if (ex.closeAfter || (this.noMore && this.queue.length === 0 && this.pendingError === null)) {
      this.endConnection();
      return;
    }
    this.idleSince = Date.now();
    const next = this.queue[0];
    if (next !== undefined) {
      this.startExchange(next);
    } else if (this.pendingError !== null) {
      this.writeBareError(this.pendingError);
      return;
    }
    this.updateReading();
  }

  private finish(ex: WireExchange, aborted: boolean): void {
    if (ex.done) return;
    ex.done = true;
    if (this.drainWaiter === ex) this.drainWaiter = null;
    this.release(ex);
    this.ctx.gw.end(ex, ex.headSent ? ex.status : 499, aborted);
  }

  private release(ex: WireExchange): void {
    if (!ex.acquired) return;
    ex.acquired = false;
    this.ctx.gw.release(ex.forward!.targets[ex.attempt]!);
  }

  /** An upstream attempt failed: retry it, answer with an error, or cut a response already started. */
  upstreamFailed(ex: WireExchange, code: string, message: string, touched: boolean): void {
    if (ex.done) return;
    const { gw } = this.ctx;
    const forward = ex.forward!;
    this.release(ex);
    ex.call = null;
    if (ex.headSent) {
      // The status line is out; the only honest signal left is an aborted response.
      ex.errorCode = "replica_failed";
      this.destroy();
      return;
    }
    const next = gw.afterFailure(ex, forward, ex.attempt, {
      code,
      message,
      touched,
      timeout: code === "UPSTREAM_TIMEOUT",
      bodyTooLarge: false,
    });
    if (next === "retry") {
      ex.attempt++;
      ex.streaming = false;
      // A hop that waited in vain for its 100 had framed a head: the next attempt frames its own.
      ex.sentChunked = false;
      this.dispatch(ex);
      return;
    }
    this.respondError(ex, next);
  }

  /** A parse error after everything before it was answered, then close. */
  private writeBareError(answer: string): void {
    this.pendingError = null;
    if (this.closed || !this.socket.writable) {
      this.destroy();
      return;
    }
    this.socket.write(answer, "latin1");
    this.endConnection();
  }

  private endConnection(): void {
    this.noMore = true;
    if (this.closed) return;
    this.socket.end();
    // A client that never reads its answer does not hold the connection open.
    this.socket.setTimeout(this.ctx.limits.headersTimeoutMs, () => this.destroy());
  }

  destroy(): void {
    if (!this.socket.destroyed) this.socket.destroy();
    this.onClose();
  }

  /** The ingress is stopping: idle connections close now, busy ones after their current response. */
  stopping(): void {
    this.noMore = true;
    if (this.queue.length === 0) this.destroy();
    else for (const ex of this.queue) ex.closeAfter = true;
  }

  checkTimeouts(now: number): void {
    const { limits } = this.ctx;
    const head = this.queue[0];
    if (this.reading === null && this.queue.length === 0) {
      if (this.headStart !== 0 && now - this.headStart > limits.headersTimeoutMs && this.idleSince === 0) {
        this.timeout();
      } else if (this.idleSince !== 0 && now - this.idleSince > limits.keepAliveTimeoutMs) {
        this.destroy();
      }
      return;
    }
    if (this.headStart !== 0 && now - this.headStart > limits.headersTimeoutMs) {
      this.timeout();
      return;
    }
    if (this.messageStart !== 0 && now - this.messageStart > limits.requestTimeoutMs && head !== undefined) {
      this.timeout();
    }
  }

  private timeout(): void {
    const { gw } = this.ctx;
    gw.metrics?.malformed("ERR_HTTP_REQUEST_TIMEOUT");
    this.noMore = true;
    const ex = this.reading;
    this.reading = null;
    this.messageStart = 0;
    this.headStart = 0;
    if (ex !== null) {
      if (this.queue[0] === ex && !ex.headSent) {
        ex.discard = true;
        ex.call?.abort();
        this.respondError(ex, refuse("request_timeout"));
        return;
      }
      this.failExchange(ex, "invalid_request");
      return;
    }
    if (this.queue.length === 0) this.writeBareError(bareErrorAnswer("request_timeout", this.ctx.gw.self));
  }
}

/** Relays one upstream response to the client. */
class Sink implements CallSink {
  /**
   * The body of an answer whose receipt covers it (`ex.heldAnswer`), held until it is whole: its first
   * chunk (usually the only one, never copied), then the others.
   */
  private first: Buffer | null = null;
  private rest: Buffer[] | null = null;
  private bytes = 0;

  constructor(
    private readonly conn: ClientConn,
    private readonly ex: WireExchange,
  ) {}

  head(
    status: number,
    rawHeaders: string[],
    _keepAlive: boolean,
    beforeBody: boolean,
  ): boolean | HeadFailure {
    const { ex, conn } = this;
    if (ex.done) return false;
    const gw = conn.ctx.gw;
    const forward = ex.forward!;
    const t = forward.targets[ex.attempt]!;
    const refused = gw.hopRefused(t, status, rawHeaders);
    if (refused !== null) {
      // Untouched when none of the body left: held for a 100 that never came, or there is none.
      return { ...refused, touched: !beforeBody && declaresBody(forward) };
    }
    const headers = gw.responseHeaders(
      ex,
      t,
      forward.warning,
      rawHeaders,
      status,
      ex.complete && !ex.discard,
    );
    // A receipt that covers the body: nothing goes out before the body is whole (a failure meanwhile is
    // still answered 502).
    if (ex.heldAnswer !== null) return true;
    conn.writeHead(ex, status, headers, hasContentLength(headers) || ex.method === "HEAD", true);
    return true;
  }

  data(chunk: Buffer): boolean {
    const { ex, conn } = this;
    if (ex.done) return true;
    if (ex.heldAnswer !== null) {
      this.bytes += chunk.length;
      if (this.first === null) this.first = chunk;
      else if (this.rest === null) this.rest = [chunk];
      else this.rest.push(chunk);
      return true;
    }
    if (conn.writeBody(ex, chunk)) return true;
    conn.waitDrain(ex);
    return false;
  }

  complete(): void {
    const { ex, conn } = this;
    if (ex.done) return;
    if (ex.heldAnswer !== null) {
      const first = this.first;
      const body = this.rest === null ? (first ?? EMPTY) : Buffer.concat([first!, ...this.rest], this.bytes);
      this.first = null;
      this.rest = null;
      const { status, headers } = conn.ctx.gw.sealResponse(ex, body, ex.complete && !ex.discard);
      conn.writeHead(ex, status, headers, true, true);
      if (body.length > 0) conn.writeBody(ex, body);
    }
    conn.responseDone(ex);
  }

  failed(code: string, message: string, touched: boolean): void {
    // A held answer cut short: its head never went out, so the client gets the refusal instead.
    this.first = null;
    this.rest = null;
    this.ex.heldAnswer = null;
    this.conn.upstreamFailed(this.ex, code, message, touched);
  }

  drained(): void {
    this.conn.updateReading();
  }

  continued(call: Call): void {
    this.conn.continued(this.ex, call);
  }

  flush(): void {
    if (!this.ex.done) this.conn.flushHead(this.ex);
  }
}

const EMPTY = Buffer.alloc(0);

/** `head` (latin1: one byte per character) followed by `chunks`, and `spare` bytes left at the end. */
function joinLatin1(head: string, chunks: readonly Buffer[], bytes: number, spare = 0): Buffer {
  const out = Buffer.allocUnsafe(head.length + bytes + spare);
  let at = out.write(head, 0, "latin1");
  for (const c of chunks) at += c.copy(out, at);
  return out;
}

function declaredBody(raw: readonly string[]): boolean {
  for (let i = 0; i < raw.length; i += 2) {
    const n = raw[i]!;
    if (n.length === 14 && n.toLowerCase() === "content-length") return raw[i + 1]!.trim() !== "0";
    if (n.length === 17 && n.toLowerCase() === "transfer-encoding") return true;
  }
  return false;
}

function hasExpectContinue(raw: readonly string[]): boolean {
  for (let i = 0; i < raw.length; i += 2) {
    const n = raw[i]!;
    if (n.length === 6 && n.toLowerCase() === "expect") return raw[i + 1]!.toLowerCase() === "100-continue";
  }
  return false;
}

function hasContentLength(headers: readonly string[]): boolean {
  for (let i = 0; i < headers.length; i += 2) if (headers[i] === "content-length") return true;
  return false;
}
