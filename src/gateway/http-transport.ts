// The node:http transport of the ingress (the fallback; see ingress.ts): node:http in front, undici
// `dispatch` with raw header arrays behind (PERFORMANCE-NOTES.md). The decisions are the gateway's.

import http, { type IncomingMessage, type ServerResponse } from "node:http";
import https from "node:https";
import type { Socket } from "node:net";
import type { Readable } from "node:stream";
import { Agent, type Dispatcher, Pool } from "undici";
import {
  bareErrorAnswer,
  createGateway,
  type Exchange,
  type Forward,
  type Gateway,
  listenOn,
  type Refusal,
  refuse,
} from "./gateway.ts";
import { HopBeforeBody, HopSender } from "./http-hop.ts";
import type { Ingress, IngressLimits, IngressOptions } from "./options.ts";
import { awaitsContinue, declaresBody, readsWholeFirst, upgradeAsk, upstreamTimeoutMs } from "./rules.ts";
import { sniServerOptions, withdrawSessionsOnChange } from "./tls-options.ts";
import { type UpgradeContext, WebSocketRelay } from "./upgrade.ts";

class ClientGone extends Error {
  override name = "ClientGone";
}
class BodyTooLarge extends Error {
  override name = "BodyTooLarge";
}

interface HttpExchange extends Exchange {
  req: IncomingMessage;
  res: ServerResponse;
  /** Aborts the upstream call in progress. */
  cancel: ((err: Error) => void) | null;
  clientGone: boolean;
  /** Whether the request declared a body (Content-Length > 0 or Transfer-Encoding); null until planned. */
  bodyDeclared: boolean | null;
  /** The request body went through its digest whole (or there is none): the receipt binds it. */
  bodyDone: boolean;
}

type Body = { kind: "none" } | { kind: "buffer"; data: Buffer } | { kind: "stream"; state: StreamState };

interface StreamState {
  started: boolean;
  bytes: number;
}

interface Call {
  ex: HttpExchange;
  forward: Forward;
  body: Body;
}

const NO_BODY: Body = { kind: "none" };
/** Pools kept for replicas on Unix sockets; a plane runs far fewer replicas than this. */
const MAX_SOCKET_POOLS = 1_024;

export function createHttpIngress(options: IngressOptions, limits: IngressLimits): Ingress {
  const gw = createGateway(options, limits);
  const { metrics, log, self } = gw;
  const poolOptions = {
    connections: null,
    pipelining: 1,
    keepAliveTimeout: 30_000,
    keepAliveMaxTimeout: 600_000,
  };
  const agent = new Agent({
    ...poolOptions,
    connect: { timeout: limits.connectTimeoutMs, ...options.peerConnect },
  });
  // Hops with a body wait for the peer's 100 Continue: node:http's client (http-hop.ts), not undici's.
  const hopSender = new HopSender(options.peerConnect);
  // Replicas on Unix sockets (egress deny): one pool per socket with the agent's settings, since an
  // Agent keys its pools by origin and every such replica's origin is http://localhost.
  const socketPools = new Map<string, Pool>();
  function dispatcherFor(socketPath: string | null): Dispatcher {
    if (socketPath === null) return agent;
    let pool = socketPools.get(socketPath);
    if (pool === undefined) {
      if (socketPools.size >= MAX_SOCKET_POOLS) {
        // Replicas come and go; the oldest pool goes (close() lets its requests in flight finish).
        const [oldest, old] = socketPools.entries().next().value as [string, Pool];
        socketPools.delete(oldest);
        void old.close();
      }
      pool = new Pool("http://localhost", {
        ...poolOptions,
        socketPath,
        connect: { timeout: limits.connectTimeoutMs },
      });
      socketPools.set(socketPath, pool);
    }
    return pool;
  }

  function hasUnreadBody(ex: HttpExchange): boolean {
    const { req } = ex;
    if (req.complete) return false;
    if (ex.bodyDeclared !== null) return ex.bodyDeclared;
    const cl = req.headers["content-length"];
    return (cl !== undefined && cl !== "0") || req.headers["transfer-encoding"] !== undefined;
  }

  /** Whether the receipt can bind the request body: it went through the digest whole, or there is none. */
  function bodyRead(ex: HttpExchange): boolean {
    if (ex.bodyDone) return true;
    if (ex.bodyDeclared !== null) return false;
    const { headers } = ex.req;
    const cl = headers["content-length"];
    return (cl === undefined || cl === "0") && headers["transfer-encoding"] === undefined;
  }

  function fail(ex: HttpExchange, r: Refusal): void {
    const { res } = ex;
    ex.errorCode = r.code;
    if (res.headersSent) {
      // The status line is out; the only honest signal left is an aborted response.
      res.destroy();
      return;
    }
    if (res.destroyed) return;
    const answer = gw.errorResponse(ex, r, bodyRead(ex));
    // An unread body would have to be drained to reuse the connection; closing is cheaper and safer.
    if (hasUnreadBody(ex)) answer.headers.push("connection", "close");
    res.writeHead(answer.status, answer.headers);
    headAfterContinue(res);
    res.end(answer.body);
  }

  function finish(ex: HttpExchange): void {
    const { res } = ex;
    const aborted = !res.writableFinished;
    if (aborted) {
      ex.clientGone = true;
      ex.cancel?.(new ClientGone("client went away"));
    }
    gw.end(ex, res.headersSent ? res.statusCode : 499, aborted);
  }

  function handle(req: IncomingMessage, res: ServerResponse, expectContinue: boolean): void {
    const base = gw.begin();
    // One literal (not a spread): a spread-built object with added fields is slow to access here.
    const ex: HttpExchange = {
      startedAt: base.startedAt,
      time: base.time,
      requestId: base.requestId,
      route: base.route,
      forwardedFrom: null,
      context: null,
      processedBy: null,
      errorCode: null,
      method: req.method ?? "",
      authority: null,
      path: null,
      bodyDigest: null,
      heldAnswer: null,
      req,
      res,
      cancel: null,
      clientGone: false,
      bodyDeclared: null,
      bodyDone: false,
    };
    res.once("close", () => finish(ex));
    // node:http destroys the connection once it has parsed a request whose method is PRI (HTTP/2's
    // preface), and with it the answers owed to the requests pipelined before it. It reads the name after
    // this handler: given another, the request is answered in its turn as on the wire transport (found by
    // the http-node fuzz target). The exchange keeps the method the client sent.
    if (req.method === "PRI") req.method = "pri";
    try {
      route(ex, expectContinue);
    } catch (err) {
      log.error({ err, request_id: ex.requestId }, "ingress handler failed");
      fail(ex, refuse("internal_error"));
    }
  }

  function route(ex: HttpExchange, expectContinue: boolean): void {
    const { req, res } = ex;
    if (req.httpVersionMajor !== 1) {
      // llhttp takes a request line without a version as HTTP/0.9: not HTTP/1.x, and never proxied.
      res.shouldKeepAlive = false;
      fail(ex, refuse("invalid_request", "Only HTTP/1.0 and HTTP/1.1 are served."));
      return;
    }
    const plan = gw.plan(ex, {
      method: ex.method,
      target: req.url ?? "/",
      rawHeaders: req.rawHeaders,
      remoteAddress: req.socket.remoteAddress ?? "",
    });
    if (plan.kind === "refuse") {
      fail(ex, plan);
      return;
    }
    if (plan.kind === "park") {
      // Held while the deployment wakes (src/gateway/parking.ts), then planned again. Its 100 goes now: a
      // hop waits for it (rules.ts, HOP_CONTINUE_TIMEOUT); once, the plan after the wait sends none.
      if (expectContinue) res.writeContinue();
      void plan.wait.then((outcome) => {
        if (ex.clientGone) return;
        if (outcome.kind === "go") route(ex, false);
        else fail(ex, gw.parkRefusal(outcome));
      });
      return;
    }
    ex.bodyDeclared = declaresBody(plan);
    ex.bodyDone = !ex.bodyDeclared;
    if (plan.contentLength !== null) plan.headers.push("content-length", String(plan.contentLength));
    if (expectContinue) res.writeContinue();
    const call: Call = { ex, forward: plan, body: NO_BODY };
    if (!ex.bodyDeclared) {
      dispatch(call, 0);
    } else if (readsWholeFirst(plan, limits)) {
      // A client that goes away mid-body gets no dispatch; finish() records it.
      readWhole(req, call, dispatchBuffered);
    } else {
      call.body = { kind: "stream", state: { started: false, bytes: 0 } };
      dispatch(call, 0);
    }
  }

  function dispatchBuffered(call: Call, data: Buffer): void {
    if (call.ex.clientGone) return;
    gw.hashBody(call.ex, data);
    call.ex.bodyDone = true;
    call.body = { kind: "buffer", data };
    dispatch(call, 0);
  }

  function bodyFor(ex: HttpExchange, body: Body): Dispatcher.DispatchOptions["body"] {
    switch (body.kind) {
      case "none":
        return null;
      case "buffer":
        return body.data;
      case "stream":
        // undici reads async iterables (documented), though its DispatchOptions type omits them.
        return streamBody(ex, gw, limits.maxBodyBytes, body.state) as unknown as Readable;
    }
  }

  function dispatch(call: Call, i: number): void {
    const { ex, forward } = call;
    const t = forward.targets[i]!;
    gw.acquire(t);
    const timeout = upstreamTimeoutMs(t, limits);
    if (t.kind === "plane" && awaitsContinue(t, forward, limits)) {
      hopSender.send(
        {
          origin: t.origin,
          path: t.path,
          method: ex.method || "POST",
          headers: gw.attemptHeaders(ex, forward, t),
          body: bodyFor(ex, call.body) as Buffer | AsyncIterable<Buffer>,
          continueMs: limits.hopContinueTimeoutMs,
          timeoutMs: timeout,
        },
        new UpstreamCall(call, i, gw, onUpstreamError),
      );
      return;
    }
    dispatcherFor(t.socketPath).dispatch(
      {
        origin: t.origin,
        path: t.path,
        // The client's method: POST for predict; GET and DELETE reach the async service and peer planes;
        // any of `/sync/{path}`'s reaches a replica's own routes.
        method: (ex.method || "POST") as Dispatcher.HttpMethod,
        headers: gw.attemptHeaders(ex, forward, t),
        body: bodyFor(ex, call.body),
        headersTimeout: timeout,
        bodyTimeout: timeout,
      },
      new UpstreamCall(call, i, gw, onUpstreamError),
    );
  }

  function onUpstreamError(call: Call, i: number, err: Error, connected: boolean): void {
    const { ex, body } = call;
    if (ex.clientGone || err instanceof ClientGone) return;
    const code = (err as { code?: string }).code ?? "";
    const next = gw.afterFailure(ex, call.forward, i, {
      code,
      message: err.message,
      // No byte reached the upstream: the connection never got to the request, and a streamed body was
      // never read.
      // A hop that failed before its 100 Continue never sent its body (http-hop.ts).
      touched:
        !(err instanceof HopBeforeBody) && (connected || (body.kind === "stream" && body.state.started)),
      timeout:
        code === "UND_ERR_HEADERS_TIMEOUT" || code === "UND_ERR_BODY_TIMEOUT" || code === "UPSTREAM_TIMEOUT",
      bodyTooLarge: err instanceof BodyTooLarge,
    });
    if (next === "retry") dispatch(call, i + 1);
    else fail(ex, next);
  }

  const handler = (req: IncomingMessage, res: ServerResponse) => handle(req, res, false);

  const serverOptions: http.ServerOptions = {
    keepAlive: true,
    keepAliveTimeout: limits.keepAliveTimeoutMs,
    headersTimeout: limits.headersTimeoutMs,
    requestTimeout: limits.requestTimeoutMs,
    maxHeaderSize: limits.maxHeaderBytes,
    // Timeouts are enforced on this tick; Node's 30 s default lets a slow client linger too long.
    connectionsCheckingInterval: Math.min(1_000, limits.headersTimeoutMs),
    // The ingress answers a missing Host itself, with the error body and proof headers.
    requireHostHeader: false,
    joinDuplicateHeaders: false,
  };
  const server = options.tls
    ? https.createServer(
        {
          ...serverOptions,
          cert: options.tls.cert,
          key: options.tls.key,
          ...sniServerOptions(options.tls.sni),
        },
        handler,
      )
    : http.createServer(serverOptions, handler);
  if (server instanceof https.Server) withdrawSessionsOnChange(server, options.tls?.sni);
  server.on("checkContinue", (req: IncomingMessage, res: ServerResponse) => handle(req, res, true));
  // Any other expectation: the plan refuses it with 417 and the JSON body (node:http's own 417 has neither).
  server.on("checkExpectation", handler);
  server.on("clientError", (err: NodeJS.ErrnoException, socket: Socket) => {
    metrics?.malformed(err.code ?? "unknown");
    if (err.code === "ECONNRESET" || !socket.writable) {
      socket.destroy();
      return;
    }
    const pending = socketMessage(socket);
    if (pending?.req !== undefined && !pending.req.complete) {
      // The bad bytes (or the timeout) are the current request's own: it will not be answered otherwise.
      if (pending.headersSent) socket.destroy();
      else {
        socket.end(gw.parseErrorAnswer(err.code));
        socket.destroySoon();
      }
      return;
    }
    // Bad bytes after whole requests: the answers owed to those go first, whole and in order (RFC 9112
    // §9.3.2), then the refusal, and the connection closes; nothing after the bad bytes is read. After a
    // request that said `Connection: close`, its answer ends the connection and nothing more is said
    // (§9.6). Before, the refusal was written at once, ahead of (or into) the answers owed.
    socket.pause();
    const closing = err.code === "HPE_CLOSED_CONNECTION";
    afterAnswers(socket, () => {
      if (!closing) socket.end(gw.parseErrorAnswer(err.code));
      socket.destroySoon();
    });
  });

  // Upgrades (src/gateway/upgrade.ts): node:http hands every request with `Connection: Upgrade` here.
  const relays = new Set<WebSocketRelay>();
  const upgradeContext: UpgradeContext = { gw, limits, peerConnect: options.peerConnect, relays };
  server.on("upgrade", (req: IncomingMessage, socket: Socket, head: Buffer) =>
    afterAnswers(socket, () => {
      if (req.method !== "GET" || upgradeAsk(req.rawHeaders).kind !== "websocket") {
        // Not a websocket: served as plain HTTP/1.1 (RFC 9110 §7.8 lets a server ignore Upgrade), so the head
        // goes back through node:http's parser without the Upgrade field, its body bytes behind it.
        socket.unshift(Buffer.concat([Buffer.from(withoutUpgrade(req), "latin1"), head]));
        server.emit(server instanceof https.Server ? "secureConnection" : "connection", socket);
        return;
      }
      onWebSocket(req, socket, head);
    }),
  );
  // CONNECT asks for a tunnel, which the ingress never opens (the `wire` transport refuses it alike). Without
  // a listener node:http destroys the connection, and with it the answers still owed to requests before it.
  server.on("connect", (_req: IncomingMessage, socket: Socket) =>
    afterAnswers(socket, () => {
      metrics?.malformed("CONNECT");
      socket.end(bareErrorAnswer("method_not_allowed", gw.self));
      socket.destroySoon();
    }),
  );

  /**
   * Runs `then` once the answers owed on `socket` to requests pipelined before an upgrade or a CONNECT are
   * out (RFC 9112 §9.3.2: responses in the order of the requests). node:http hands the socket over as soon
   * as it parses such a head; the response it is writing (`_httpMessage`, the queue's next one once it is
   * done) still goes out through the socket, and must go first, whole.
   */
  function afterAnswers(socket: Socket, then: () => void): void {
    // node:http took its error listener off the socket when it handed it over: without one, a reset while
    // the answers are owed would be an uncaught 'error' event, the end of the ingress.
    if (socket.listenerCount("error") === 0) socket.on("error", () => socket.destroy());
    if (socket.destroyed) return;
    const owed = socketMessage(socket);
    if (owed !== null && owed !== undefined) {
      owed.once("close", () => afterAnswers(socket, then));
      return;
    }
    // An answer before it carried `Connection: close` and ended the connection: nothing after it is read
    // or answered (RFC 9112 §9.6), and writing to the ended socket would throw.
    if (socket.writableEnded || !socket.writable) {
      // Not destroy(): that would drop what of the last answer is still queued for the socket.
      socket.destroySoon();
      return;
    }
    then();
  }

  function onWebSocket(req: IncomingMessage, socket: Socket, head: Buffer): void {
    const ex = gw.begin();
    ex.method = "GET";
    planWebSocket(ex, req, socket, head);
  }

  function planWebSocket(ex: Exchange, req: IncomingMessage, socket: Socket, head: Buffer): void {
    let plan: ReturnType<Gateway["plan"]>;
    try {
      plan = gw.plan(ex, {
        method: "GET",
        target: req.url ?? "/",
        rawHeaders: req.rawHeaders,
        remoteAddress: socket.remoteAddress ?? "",
      });
    } catch (err) {
      log.error({ err, request_id: ex.requestId }, "ingress handler failed");
      plan = refuse("internal_error");
    }
    if (plan.kind === "park") {
      // Held while the deployment wakes (src/gateway/parking.ts), then planned again; frames the client
      // sends meanwhile wait in the socket.
      socket.pause();
      void plan.wait.then((outcome) => {
        if (socket.destroyed) {
          gw.end(ex, 499, true);
          return;
        }
        if (outcome.kind === "go") planWebSocket(ex, req, socket, head);
        else {
          answerUpgrade(
            ex,
            socket,
            refuse("model_unavailable", "No replica became ready in time.", { region: self.region }),
          );
        }
      });
      return;
    }
    if (plan.kind === "forward" && plan.upgrade === null) plan = refuse("websocket_upgrade_required");
    if (plan.kind === "refuse") {
      answerUpgrade(ex, socket, plan);
      return;
    }
    new WebSocketRelay(upgradeContext, ex, plan, socket, head, (status, aborted) =>
      gw.end(ex, status, aborted),
    ).start();
  }

  /** A refused upgrade: the JSON error answer, then the connection closes. */
  function answerUpgrade(ex: Exchange, socket: Socket, r: Refusal): void {
    const answer = gw.errorResponse(ex, r, true);
    let text = `HTTP/1.1 ${answer.status} ${http.STATUS_CODES[answer.status] ?? ""}\r\n`;
    for (let i = 0; i < answer.headers.length; i += 2) {
      text += `${answer.headers[i]}: ${answer.headers[i + 1]}\r\n`;
    }
    socket.end(`${text}connection: close\r\n\r\n${answer.body}`);
    gw.end(ex, answer.status, false);
  }

  let address: { host: string; port: number } | null = null;

  return {
    transport: "http",
    metrics,
    get address() {
      return address;
    },
    async start() {
      address = await listenOn(server, options.listen ?? { host: "127.0.0.1", port: 0 });
      log.info(
        { plane: self.name, region: self.region, ...address, scheme: gw.scheme, transport: "http" },
        "ingress listening",
      );
    },
    async stop() {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeIdleConnections();
      for (const relay of relays) relay.shutdown();
      await gw.drain();
      server.closeAllConnections();
      await closed;
      await Promise.all([agent.destroy(), ...[...socketPools.values()].map((p) => p.destroy())]);
      hopSender.close();
      socketPools.clear();
      address = null;
    },
  };
}

/**
 * One upstream exchange, on undici's dispatch handler interface with raw header arrays (the cheapest
 * path measured). Streams the response to the client with backpressure both ways.
 */
class UpstreamCall implements Dispatcher.DispatchHandler {
  connected = false;
  private readonly ex: HttpExchange;
  private released = false;
  private resume: (() => void) | null = null;
  /** The body of an answer whose receipt covers it (`ex.heldAnswer`): its first chunk, then the others. */
  private first: Buffer | null = null;
  private rest: Buffer[] | null = null;
  private bytes = 0;

  constructor(
    private readonly call: Call,
    private readonly attempt: number,
    private readonly gw: Gateway,
    private readonly failed: (call: Call, attempt: number, err: Error, connected: boolean) => void,
  ) {
    this.ex = call.ex;
  }

  private release(): void {
    if (this.released) return;
    this.released = true;
    this.gw.release(this.call.forward.targets[this.attempt]!);
  }

  onConnect(abort: (err?: Error) => void): void {
    this.connected = true;
    this.ex.cancel = abort;
    if (this.ex.clientGone) abort(new ClientGone("client went away"));
  }

  onHeaders(
    statusCode: number,
    rawHeaders: (string | Buffer)[],
    resume: () => void,
    _statusText?: string,
    beforeBody = false,
  ): boolean {
    if (statusCode < 200) return true; // interim responses are not relayed
    const { ex, call } = this;
    const refused = this.gw.hopRefused(call.forward.targets[this.attempt]!, statusCode, rawHeaders);
    if (refused !== null) {
      // A failed attempt, not an answer (rules.ts, HOP_REFUSED, HOP_NO_REPLICA): untouched when none of the
      // body left.
      const err = Object.assign(
        beforeBody || !ex.bodyDeclared
          ? new HopBeforeBody(refused.message, refused.code)
          : new Error(refused.message),
        { code: refused.code },
      );
      ex.cancel?.(err);
      return false;
    }
    const headers = this.gw.responseHeaders(
      ex,
      call.forward.targets[this.attempt]!,
      call.forward.warning,
      rawHeaders,
      statusCode,
      ex.bodyDone,
    );
    // A receipt that covers the body: nothing goes out before the body is whole (a failure meanwhile is
    // still answered 502).
    if (ex.heldAnswer !== null) return true;
    return this.writeHead(statusCode, headers, resume);
  }

  private writeHead(statusCode: number, headers: string[], resume: (() => void) | null): boolean {
    const { ex } = this;
    try {
      ex.res.writeHead(statusCode, headers);
      headAfterContinue(ex.res);
    } catch (err) {
      // An upstream header Node refuses to send (invalid characters): the response cannot be relayed.
      ex.cancel?.(err as Error);
      return false;
    }
    this.resume = resume;
    return true;
  }

  onData(chunk: Buffer): boolean {
    if (this.ex.heldAnswer !== null) {
      this.bytes += chunk.length;
      if (this.first === null) this.first = chunk;
      else if (this.rest === null) this.rest = [chunk];
      else this.rest.push(chunk);
      return true;
    }
    if (this.ex.res.write(chunk)) return true;
    // Backpressure: undici pauses until resumed. Listening only now spares most responses a listener.
    if (this.resume !== null) this.ex.res.once("drain", this.resume);
    return false;
  }

  onComplete(): void {
    this.release();
    const { ex } = this;
    if (ex.heldAnswer !== null) {
      const first = this.first;
      const body =
        this.rest === null ? (first ?? Buffer.alloc(0)) : Buffer.concat([first!, ...this.rest], this.bytes);
      this.first = null;
      this.rest = null;
      // undici ends a message of declared length only with that many bytes; anything else is an error.
      if (body.length !== ex.heldAnswer.length) {
        this.onError(new Error("the replica's answer is not the length it declared"));
        return;
      }
      const { status, headers } = this.gw.sealResponse(ex, body, ex.bodyDone);
      if (!this.writeHead(status, headers, null)) {
        // After the message ended, the cancel in writeHead reaches no one: answer the refusal here.
        this.failed(this.call, this.attempt, new Error("the replica's answer cannot be relayed"), true);
        return;
      }
      ex.res.end(body);
      return;
    }
    ex.res.end();
  }

  onError(err: Error): void {
    // A held answer cut short: its head never went out, so the client gets the refusal instead.
    this.first = null;
    this.rest = null;
    this.ex.heldAnswer = null;
    this.release();
    this.failed(this.call, this.attempt, err, this.connected);
  }
}

/**
 * Reads a small body whole (its length is known and bounded by `bufferBodyBytes`), then calls `done`; never
 * calls it when the client goes away first. Callbacks rather than a Promise: this runs on most requests.
 */
function readWhole<T>(req: IncomingMessage, arg: T, done: (arg: T, data: Buffer) => void): void {
  let first: Buffer | null = null;
  let chunks: Buffer[] | null = null;
  let size = 0;
  req.on("data", (c: Buffer) => {
    size += c.length;
    if (first === null) {
      first = c;
    } else {
      if (chunks === null) chunks = [first];
      chunks.push(c);
    }
  });
  req.once("end", () =>
    done(arg, chunks === null ? (first ?? Buffer.alloc(0)) : Buffer.concat(chunks, size)),
  );
  // "error" and "close" before "end" mean the client went away: finish() records it.
  req.once("error", noop);
}

/**
 * Keeps a response's head after the `100 Continue` it already holds. The response to a pipelined request
 * is buffered until the ones before it are done, and node:http puts its head at the front of that buffer
 * when the first body chunk is a Buffer (OutgoingMessage#_send unshifts it): the client read the final
 * head, then `100 Continue`, then the body, which it took for the start of the next answer (found by the
 * http-node fuzz target). Sent on its own as a string, the head stays in order.
 */
function headAfterContinue(res: ServerResponse): void {
  const r = res as ServerResponse & { _sent100?: boolean };
  if (r._sent100 === true && (res.socket === null || socketMessage(res.socket) !== res)) res.flushHeaders();
}

function socketMessage(socket: Socket): ServerResponse | null | undefined {
  return (socket as Socket & { _httpMessage?: ServerResponse | null })._httpMessage;
}

function noop(): void {}

/**
 * The request body as undici reads it: counted against the limit and digested for the receipt, never
 * destroying the client stream. A body of declared length is done with its last byte, before it is
 * yielded: the upstream may answer as soon as it has it, before this generator is resumed.
 */
async function* streamBody(
  ex: HttpExchange,
  gw: Gateway,
  limit: number,
  state: StreamState,
): AsyncGenerator<Buffer> {
  state.started = true;
  const cl = ex.req.headers["content-length"];
  const declared = cl === undefined ? -1 : Number(cl);
  for await (const chunk of ex.req.iterator({ destroyOnReturn: false }) as AsyncIterable<Buffer>) {
    state.bytes += chunk.length;
    if (state.bytes > limit) throw new BodyTooLarge("request body exceeds the limit");
    gw.hashBody(ex, chunk);
    if (state.bytes === declared) ex.bodyDone = true;
    yield chunk;
  }
  ex.bodyDone = true;
}

const KEEP_WHEN_NAMED = new Set(["content-length", "transfer-encoding", "host"]);

/**
 * The request head again, without `Upgrade`, and with `Connection: close` in place of the client's options:
 * a connection that asked to switch protocols ends after this answer, as on the wire transport.
 */
function withoutUpgrade(req: IncomingMessage): string {
  let head = `${req.method} ${req.url} HTTP/${req.httpVersion}\r\n`;
  const raw = req.rawHeaders;
  const named = new Set<string>();
  for (let i = 0; i < raw.length; i += 2) {
    if (raw[i]!.toLowerCase() !== "connection") continue;
    for (const t of raw[i + 1]!.split(",")) named.add(t.trim().toLowerCase());
  }
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    const value = raw[i + 1]!;
    const lower = name.toLowerCase();
    if (lower === "upgrade") continue;
    // The options it named are hop-by-hop fields (RFC 9110 §7.6.1): dropped with it, as the plan would;
    // never the framing fields or Host, which say where this request ends and what it is for.
    if (lower === "connection" || (named.has(lower) && !KEEP_WHEN_NAMED.has(lower))) continue;
    head += `${name}: ${value}\r\n`;
  }
  return `${head}connection: close\r\n\r\n`;
}
