// The node:http transport's sender for plane-to-plane hops that carry a body. The hop waits for the peer's
// `100 Continue` before its body (rules.ts, HOP_CONTINUE_TIMEOUT), and undici's HTTP/1.1 client refuses an
// `Expect` field (NotSupportedError "expect header not supported"), so these go through node:http's
// client, which implements the expectation (its `continue` event). Every other upstream call stays on undici.

import http from "node:http";
import https from "node:https";
import type { ConnectionOptions } from "node:tls";
import { HOP_CONTINUE_TIMEOUT } from "./rules.ts";

/** What the hop reports, the subset of undici's dispatch handler that the transport's UpstreamCall is. */
export interface HopHandler {
  onConnect(abort: (err?: Error) => void): void;
  /** `beforeBody`: a final answer that came before the 100, so none of the body left (undici passes no such). */
  onHeaders(
    statusCode: number,
    rawHeaders: string[],
    resume: () => void,
    statusText: string,
    beforeBody: boolean,
  ): boolean;
  onData(chunk: Buffer): boolean;
  onComplete(): void;
  onError(err: Error): void;
}

export type HopBody = Buffer | AsyncIterable<Buffer>;

export interface HopCall {
  origin: string;
  path: string;
  method: string;
  /** Flat `[name, value, …]`, Host and Content-Length included (the transport adds them). */
  headers: string[];
  body: HopBody;
  /** Waiting for the 100 (or any answer) after the head: past it, HOP_CONTINUE_TIMEOUT. */
  continueMs: number;
  /** After the 100: for the answer's head, then between its chunks (no byte either way for this long). */
  timeoutMs: number;
}

/** An error the peer could not have acted on: the body never left (a failure before its 100). */
export class HopBeforeBody extends Error {
  override name = "HopBeforeBody";
  constructor(
    message: string,
    readonly code: string,
  ) {
    super(message);
  }
}

export class HopSender {
  readonly #http: http.Agent;
  readonly #https: https.Agent;

  constructor(peerConnect?: Pick<ConnectionOptions, "ca" | "servername" | "rejectUnauthorized">) {
    this.#http = new http.Agent({ keepAlive: true, keepAliveMsecs: 30_000 });
    this.#https = new https.Agent({ keepAlive: true, keepAliveMsecs: 30_000, ...peerConnect });
  }

  send(call: HopCall, handler: HopHandler): void {
    const url = new URL(call.origin);
    const secure = url.protocol === "https:";
    const headers = call.headers.concat(["expect", "100-continue"]);
    const req = (secure ? https : http).request({
      host: url.hostname.replace(/^\[|\]$/g, ""),
      port: url.port,
      method: call.method,
      path: call.path,
      headers,
      agent: secure ? this.#https : this.#http,
      setHost: false,
    });
    let bodySent = false;
    let settled = false;
    const fail = (err: Error) => {
      if (settled) return;
      settled = true;
      clearTimeout(continueTimer);
      req.destroy();
      handler.onError(bodySent ? err : new HopBeforeBody(err.message, (err as { code?: string }).code ?? ""));
    };
    const continueTimer = setTimeout(() => {
      fail(new HopBeforeBody("the peer plane did not answer the request head in time", HOP_CONTINUE_TIMEOUT));
    }, call.continueMs);
    handler.onConnect((err) => fail(err ?? new Error("aborted")));
    req.on("error", fail);
    req.on("continue", () => {
      if (settled || bodySent) return;
      clearTimeout(continueTimer);
      bodySent = true;
      req.setTimeout(call.timeoutMs, () => {
        const e = new Error("the peer plane did not answer in time") as Error & { code: string };
        e.code = "UPSTREAM_TIMEOUT";
        fail(e);
      });
      void writeBody(req, call.body).catch(fail);
    });
    req.on("response", (res) => {
      clearTimeout(continueTimer);
      if (settled) {
        res.destroy();
        return;
      }
      // A final answer before the 100 (a refusal): the body is not wanted (RFC 9110 §10.1.1) nor sent.
      const early = !bodySent;
      bodySent = true;
      if (early) req.setTimeout(call.timeoutMs, () => fail(new Error("the peer plane stalled")));
      const resume = () => res.resume();
      if (!handler.onHeaders(res.statusCode ?? 502, res.rawHeaders, resume, res.statusMessage ?? "", early)) {
        fail(new Error("the peer plane's answer cannot be relayed"));
        return;
      }
      res.on("data", (chunk: Buffer) => {
        if (!settled && !handler.onData(chunk)) res.pause();
      });
      res.on("end", () => {
        if (settled) return;
        settled = true;
        // An early answer leaves the request unfinished: the socket is not reused.
        if (early) req.destroy();
        handler.onComplete();
      });
      res.on("error", fail);
      res.on("close", () => {
        if (!res.complete) fail(new Error("the peer plane closed the answer"));
      });
    });
    req.flushHeaders();
  }

  close(): void {
    this.#http.destroy();
    this.#https.destroy();
  }
}

async function writeBody(req: http.ClientRequest, body: HopBody): Promise<void> {
  if (Buffer.isBuffer(body)) {
    req.end(body);
    return;
  }
  for await (const chunk of body) {
    if (!req.write(chunk)) await new Promise<void>((resolve) => req.once("drain", resolve));
  }
  req.end();
}
