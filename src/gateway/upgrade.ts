// Websocket upgrades through the ingress (DESIGN.md §3; docs/realtime.md): which requests are upgrades is
// rules.ts's (`upgradeAsk`); this is the relay of an upgraded connection to the replica (or to the peer
// plane a standard-endpoint request is handed to). Both transports hand an upgrade here once the gateway
// planned it, with the raw client socket. The relay owns the bytes from then on:
// - the upstream handshake is a fresh connection (never a pooled one: it will not come back), answered 101
//   with the proof headers and the receipt, or relayed as the upstream's refusal and closed;
// - frames are checked both ways as they pass (src/lib/websocket.ts FrameReader: masking, reserved bits,
//   opcodes, control frames) and a frame whose declared payload is over `websocketMaxFrameBytes` is refused
//   with close 1009 before any byte of its payload passes; a violation closes both sides (1002);
// - a connection with no byte either way for `websocketIdleTimeoutMs` is closed on both sides (1001);
// - when either side goes away the other is closed; the ingress stopping closes every relay (1001).

import http, { type IncomingMessage } from "node:http";
import https from "node:https";
import type net from "node:net";
import type { ConnectionOptions } from "node:tls";
import { acceptKey, CLOSE, closeFrame, type FrameFault, FrameReader, OPCODE } from "../lib/websocket.ts";
import type { Gateway } from "./gateway.ts";
import type { IngressLimits } from "./options.ts";
import { type Exchange, type Forward, type Refusal, refuse, type Target } from "./plan.ts";

/** What the relay needs from the transport that hands it a socket. */
export interface UpgradeContext {
  gw: Gateway;
  limits: IngressLimits;
  peerConnect?: Pick<ConnectionOptions, "ca" | "servername" | "rejectUnauthorized">;
  relays: Set<WebSocketRelay>;
}

const CONNECT_CODES = new Set(["ECONNREFUSED", "ENOENT", "EHOSTUNREACH", "ENETUNREACH", "EADDRNOTAVAIL"]);

/** How long a closing side may take to answer a close frame before its socket is destroyed. */
const CLOSE_GRACE_MS = 2_000;

/**
 * One upgraded exchange, from the planned request to both sockets closed. `head`: bytes the client sent
 * after its request head (frames it sent before the 101; held until then). `done` runs once at the end.
 */
export class WebSocketRelay {
  readonly #ctx: UpgradeContext;
  readonly #ex: Exchange;
  readonly #forward: Forward;
  readonly #client: net.Socket;
  readonly #key: string;
  readonly #done: (status: number, aborted: boolean) => void;
  #pending: Buffer[];
  #attempt = 0;
  #request: http.ClientRequest | null = null;
  #upstream: net.Socket | null = null;
  #acquired: Target | null = null;
  #status = 0;
  #finished = false;
  #last = Date.now();
  #idleTimer: NodeJS.Timeout | null = null;
  #closing = false;
  #readers: { client: FrameReader; upstream: FrameReader } | null = null;

  constructor(
    ctx: UpgradeContext,
    ex: Exchange,
    forward: Forward,
    client: net.Socket,
    head: Buffer,
    done: (status: number, aborted: boolean) => void,
  ) {
    this.#ctx = ctx;
    this.#ex = ex;
    this.#forward = forward;
    this.#client = client;
    this.#key = forward.upgrade!.key;
    this.#done = done;
    this.#pending = head.length > 0 ? [head] : [];
    ctx.relays.add(this);
    client.setNoDelay(true);
    client.setTimeout(0);
    // Until the 101, whatever the client sends waits (bounded: reading stops at the first chunk).
    client.on("data", this.#holdEarly);
    client.on("error", () => this.#abort());
    client.on("close", () => this.#abort());
  }

  readonly #holdEarly = (chunk: Buffer) => {
    this.#pending.push(chunk);
    this.#client.pause();
  };

  start(): void {
    this.#dispatch();
  }

  /** The ingress is stopping: both sides are told (1001) and closed. */
  shutdown(): void {
    if (this.#upstream === null) {
      this.#abort();
      return;
    }
    this.#closeBoth(CLOSE.goingAway, "ingress stopping");
  }

  #dispatch(): void {
    const { gw, limits, peerConnect } = this.#ctx;
    const forward = this.#forward;
    const t = forward.targets[this.#attempt]!;
    gw.acquire(t);
    this.#acquired = t;
    const headers = gw.attemptHeaders(this.#ex, forward, t).slice();
    if (t.kind === "replica") headers.push("host", t.authority);
    headers.push("connection", "Upgrade", "upgrade", "websocket");
    const https_ = t.origin.startsWith("https:");
    const path = t.kind === "replica" ? forward.upgrade!.replicaPath : t.path;
    const [host, port] = splitEndpoint(t.endpoint);
    const options: http.RequestOptions = {
      method: "GET",
      path,
      headers,
      agent: false,
      ...(t.socketPath !== null ? { socketPath: t.socketPath } : { host, port }),
    };
    const req = https_ ? https.request({ ...options, ...peerConnect }) : http.request(options);
    this.#request = req;
    let connected = false;
    req.on("socket", (s: net.Socket) => {
      s.once("connect", () => (connected = true));
      s.once("secureConnect", () => (connected = true));
    });
    const timer = setTimeout(() => {
      req.destroy(Object.assign(new Error("no answer to the upgrade"), { code: "UPSTREAM_TIMEOUT" }));
    }, limits.connectTimeoutMs + limits.predictTimeoutMs);
    req.on("upgrade", (res, socket, upHead) => {
      clearTimeout(timer);
      this.#upgraded(t, res, socket, upHead);
    });
    req.on("response", (res) => {
      clearTimeout(timer);
      this.#refused(t, res);
    });
    req.on("error", (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      if (this.#finished || this.#upstream !== null) return;
      this.#release();
      const code = err.code ?? "ERR";
      const touched = connected || !CONNECT_CODES.has(code);
      const next = gw.afterFailure(this.#ex, forward, this.#attempt, {
        code,
        message: err.message,
        touched,
        timeout: code === "UPSTREAM_TIMEOUT",
        bodyTooLarge: false,
      });
      if (next === "retry") {
        this.#attempt++;
        this.#dispatch();
        return;
      }
      this.#answerError(next);
    });
    req.end();
  }

  /** The upstream said 101: the client gets it (with the proof), then frames flow both ways. */
  #upgraded(t: Target, res: IncomingMessage, socket: net.Socket, upHead: Buffer): void {
    const { gw, limits } = this.#ctx;
    if (this.#finished || this.#client.destroyed) {
      socket.destroy();
      return;
    }
    // RFC 6455 §4.1: the accept value proves the upstream speaks websocket for this key; else 502.
    if (res.headers["sec-websocket-accept"] !== acceptKey(this.#key)) {
      socket.destroy();
      this.#release();
      gw.log.warn(
        { request_id: this.#ex.requestId, target: t.name },
        "upgrade answered without a valid accept",
      );
      this.#answerError(refuse("replica_failed", "The replica's websocket handshake is not valid."));
      return;
    }
    this.#upstream = socket;
    this.#status = 101;
    this.#last = Date.now();
    const headers = gw.responseHeaders(this.#ex, t, this.#forward.warning, res.rawHeaders, 101, true);
    let head = "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n";
    for (let i = 0; i < headers.length; i += 2) head += `${headers[i]}: ${headers[i + 1]}\r\n`;
    this.#client.write(`${head}\r\n`, "latin1");

    const extensions = res.headers["sec-websocket-extensions"] !== undefined;
    const max = limits.websocketMaxFrameBytes;
    const fromClient = new FrameReader({ masked: true, maxPayload: max, extensions });
    const fromUpstream = new FrameReader({ masked: false, maxPayload: max, extensions });
    this.#readers = { client: fromClient, upstream: fromUpstream };
    socket.setNoDelay(true);
    socket.setTimeout(0);
    this.#client.off("data", this.#holdEarly);
    this.#pipe(this.#client, socket, fromClient, "client");
    this.#pipe(socket, this.#client, fromUpstream, "upstream");
    socket.on("error", () => this.#gone("upstream"));
    socket.on("close", () => this.#gone("upstream"));
    socket.on("end", () => this.#gone("upstream"));
    this.#client.on("end", () => this.#gone("client"));
    this.#armIdle();
    const early = this.#pending;
    this.#pending = [];
    if (upHead.length > 0) socket.emit("data", upHead);
    for (const chunk of early) this.#client.emit("data", chunk);
    this.#client.resume();
  }

  /** The upstream answered the upgrade with something else: relayed as it is, then the connection closes. */
  #refused(t: Target, res: IncomingMessage): void {
    const { gw } = this.#ctx;
    const chunks: Buffer[] = [];
    let size = 0;
    res.on("data", (c: Buffer) => {
      size += c.length;
      if (size > 1024 * 1024) {
        res.destroy();
        return;
      }
      chunks.push(c);
    });
    res.on("error", () => undefined);
    res.on("close", () => {
      this.#release();
      if (this.#finished) return;
      if (!res.complete) {
        this.#answerError(refuse("replica_failed"));
        return;
      }
      const status = res.statusCode ?? 502;
      const body = Buffer.concat(chunks);
      let signed = gw.responseHeaders(this.#ex, t, this.#forward.warning, res.rawHeaders, status, true);
      // An answer the receipt covers (docs/evidence.md#receipts) is signed once its body is whole: it is.
      if (this.#ex.heldAnswer !== null) signed = gw.sealResponse(this.#ex, body, true).headers;
      const headers = signed.filter((_, i, a) =>
        i % 2 === 0 ? a[i] !== "content-length" : a[i - 1] !== "content-length",
      );
      headers.push("content-length", String(body.length));
      this.#writeWhole(status, headers, body);
    });
  }

  #pipe(from: net.Socket, to: net.Socket, reader: FrameReader, side: "client" | "upstream"): void {
    let carry: Buffer | null = null;
    from.on("data", (chunk: Buffer) => {
      if (this.#closing) return;
      this.#last = Date.now();
      const data = carry === null ? chunk : Buffer.concat([carry, chunk]);
      const { pass, fault } = reader.feed(data);
      if (pass > 0 && !to.write(pass === data.length ? data : data.subarray(0, pass))) {
        from.pause();
        to.once("drain", () => from.resume());
      }
      if (fault !== null) {
        this.#fault(side, fault);
        return;
      }
      carry = pass < data.length ? Buffer.from(data.subarray(pass)) : null;
    });
  }

  /** A frame that breaks the rules or the limit: both sides get a close frame with its code, then close. */
  #fault(side: "client" | "upstream", fault: FrameFault): void {
    const { gw } = this.#ctx;
    gw.metrics?.malformed(`WS_${fault.code}`);
    gw.log.info(
      { request_id: this.#ex.requestId, side, code: fault.code, reason: fault.reason },
      "websocket closed",
    );
    this.#closeBoth(fault.code, fault.reason);
  }

  #armIdle(): void {
    const idle = this.#ctx.limits.websocketIdleTimeoutMs;
    if (idle <= 0) return;
    const check = () => {
      const quiet = Date.now() - this.#last;
      if (quiet >= idle) this.#closeBoth(CLOSE.goingAway, "idle timeout");
      else {
        this.#idleTimer = setTimeout(check, idle - quiet);
        this.#idleTimer.unref();
      }
    };
    this.#idleTimer = setTimeout(check, idle);
    this.#idleTimer.unref();
  }

  #closeBoth(code: number, reason: string): void {
    if (this.#closing) return;
    this.#closing = true;
    const client = this.#client;
    const upstream = this.#upstream;
    if (!client.destroyed) client.end(closeFrame(code, reason, false));
    if (upstream !== null && !upstream.destroyed) upstream.end(closeFrame(code, reason, true));
    setTimeout(() => {
      client.destroy();
      upstream?.destroy();
    }, CLOSE_GRACE_MS).unref();
  }

  /** An error answer before any 101: the upgrade never happened; the connection closes after it. */
  #answerError(r: Refusal): void {
    const answer = this.#ctx.gw.errorResponse(this.#ex, r, true);
    this.#writeWhole(answer.status, answer.headers, Buffer.from(answer.body, "utf8"));
  }

  #writeWhole(status: number, headers: readonly string[], body: Buffer): void {
    this.#status = status;
    if (!this.#client.destroyed) {
      let head = `HTTP/1.1 ${status} ${http.STATUS_CODES[status] ?? "Unknown"}\r\n`;
      for (let i = 0; i < headers.length; i += 2) head += `${headers[i]}: ${headers[i + 1]}\r\n`;
      head += `connection: close\r\n\r\n`;
      this.#client.end(Buffer.concat([Buffer.from(head, "latin1"), body]));
      setTimeout(() => this.#client.destroy(), CLOSE_GRACE_MS).unref();
    }
    this.#finish(false);
  }

  /**
   * One side went away (FIN, reset or close) after the 101. When the closing handshake did not run (its last
   * frame was not a close), the other side is told: close 1001, "client went away" or "replica went away"
   * (1006 is never sent, RFC 6455 §7.4.1); then both close.
   */
  #gone(side: "client" | "upstream"): void {
    if (this.#finished) return;
    const gone = side === "client" ? this.#client : this.#upstream!;
    const other = side === "client" ? this.#upstream! : this.#client;
    const handshake = this.#readers?.[side].lastOpcode === OPCODE.close;
    if (!this.#closing && !handshake && !other.destroyed) {
      this.#closing = true;
      const reason = side === "client" ? "client went away" : "replica went away";
      other.end(closeFrame(CLOSE.goingAway, reason, side === "client"));
    } else if (!other.destroyed) {
      other.end();
    }
    gone.destroy();
    setTimeout(() => other.destroy(), CLOSE_GRACE_MS).unref();
    this.#release();
    this.#finish(false);
  }

  /** The client went away before the 101 (or after it: then this is the end). */
  #abort(): void {
    if (this.#upstream !== null) {
      this.#gone("client");
      return;
    }
    this.#request?.destroy();
    this.#release();
    this.#finish(true);
  }

  #release(): void {
    const t = this.#acquired;
    if (t === null) return;
    this.#acquired = null;
    this.#ctx.gw.release(t);
  }

  #finish(aborted: boolean): void {
    if (this.#finished) return;
    this.#finished = true;
    if (this.#idleTimer !== null) clearTimeout(this.#idleTimer);
    this.#ctx.relays.delete(this);
    this.#done(this.#status === 0 ? 499 : this.#status, aborted && this.#status === 0);
  }
}

/** `host:port` (an IPv6 host in brackets) into its parts. */
function splitEndpoint(endpoint: string): [string, number] {
  const colon = endpoint.lastIndexOf(":");
  const host = endpoint.slice(0, colon).replace(/^\[|\]$/g, "");
  return [host, Number(endpoint.slice(colon + 1))];
}
