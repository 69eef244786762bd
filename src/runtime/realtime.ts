// What a replica serves beyond predict (docs/realtime.md): the routes the ingress's `/sync/{path}` reaches,
// and websocket upgrades. A JavaScript model serves OpenAI-style routes through its optional methods
// (`chatCompletions`, `completions`, `embeddings`) and websockets through `websocket(ws)`; a custom server
// gets every other path, and every upgrade, as it was sent.

import type { IncomingMessage, ServerResponse } from "node:http";
import net from "node:net";
import type { Duplex } from "node:stream";
import { type ErrorCode, errorBody, errorStatus } from "../core/errors.ts";
import { acceptKey, validKey, WebSocketEndpoint } from "../lib/websocket.ts";
import { readBody, sendError } from "./http.ts";
import { classifyPrediction, errorMessage } from "./js-model.ts";

/** The replica's websocket route for a JavaScript model (the ingress's `/websocket` arrives here). */
export const WEBSOCKET_PATH = "/v1/websocket";

/** A message of a websocket handed to a model: reassembled up to this size (1009 beyond). */
export const WEBSOCKET_MAX_MESSAGE_BYTES = 16 * 1024 * 1024;

/**
 * Serves an OpenAI-style route with the model's method: a JSON body in; a JSON answer, or for an async
 * iterable (a `stream: true` call) Server-Sent Events: each object yielded is one `data:` event, strings
 * are sent as they are (the model frames its own events), and `data: [DONE]` ends a stream of objects, as
 * OpenAI's API does.
 */
export async function serveOpenAiRoute(
  method: (input: unknown) => unknown,
  req: IncomingMessage,
  res: ServerResponse,
  maxBodyBytes: number,
): Promise<void> {
  if (req.method !== "POST") {
    res.setHeader("allow", "POST");
    return sendError(res, "method_not_allowed");
  }
  const body = await readBody(req, maxBodyBytes);
  if (!body.ok) {
    if (body.reason === "too_large") {
      res.setHeader("connection", "close");
      sendError(res, "payload_too_large", undefined, { limit_bytes: maxBodyBytes });
    }
    return;
  }
  let input: unknown;
  try {
    input = JSON.parse(body.body.toString("utf8"));
  } catch (err) {
    return sendError(res, "invalid_json", undefined, { reason: errorMessage(err) });
  }
  let prediction: ReturnType<typeof classifyPrediction>;
  try {
    prediction = classifyPrediction(await method(input));
  } catch (err) {
    return sendError(res, "internal_error", errorMessage(err));
  }
  if (prediction.kind === "json") {
    res.writeHead(200, {
      "content-type": "application/json",
      "content-length": Buffer.byteLength(prediction.body),
    });
    res.end(prediction.body);
    return;
  }
  if (prediction.kind === "bytes") {
    res.writeHead(200, { "content-type": "application/octet-stream" });
    res.end(prediction.body);
    return;
  }
  const chunks = prediction.chunks;
  let finished = false;
  res.on("close", () => {
    if (!finished) void Promise.resolve(chunks.return?.()).catch(() => undefined);
  });
  res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
  res.flushHeaders();
  let objects = false;
  try {
    for (let step = await chunks.next(); !step.done; step = await chunks.next()) {
      if (res.destroyed) return;
      const v = step.value;
      let text: string | Uint8Array;
      if (typeof v === "string" || v instanceof Uint8Array) text = v;
      else {
        objects = true;
        text = `data: ${JSON.stringify(v ?? null)}\n\n`;
      }
      if (!res.write(text)) {
        await new Promise((resolve) => {
          res.once("drain", resolve);
          res.once("close", resolve);
        });
      }
    }
    finished = true;
    res.end(objects ? "data: [DONE]\n\n" : undefined);
  } catch (err) {
    finished = true;
    // The status line is out: an SSE error event, then the end (a client sees the stream did not finish).
    res.end(`event: error\ndata: ${JSON.stringify(errorBody("internal_error", errorMessage(err)))}\n\n`);
  }
}

/** A refusal on a socket that asked to upgrade: a whole HTTP/1.1 answer, then close. */
export function refuseUpgrade(socket: Duplex, code: ErrorCode, message?: string): void {
  const body = JSON.stringify(errorBody(code, message));
  const status = errorStatus(code);
  socket.end(
    `HTTP/1.1 ${status} ${code}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
  );
}

/**
 * Accepts a websocket for a JavaScript model's `websocket(ws)` (RFC 6455 §4.2.2) and hands it the
 * endpoint: `ws.on("message", ({type, data}) => …)`, `ws.send(string | Uint8Array)`, `ws.close(code?)`,
 * `ws.on("close", (code) => …)`. A handler that throws closes the socket with 1011.
 */
export function acceptWebSocket(
  req: IncomingMessage,
  socket: Duplex,
  head: Buffer,
  handler: (ws: WebSocketEndpoint) => unknown,
  log: { warn(obj: object, msg: string): void },
): WebSocketEndpoint | null {
  const key = req.headers["sec-websocket-key"];
  if (typeof key !== "string" || !validKey(key) || req.headers["sec-websocket-version"] !== "13") {
    refuseUpgrade(socket, "websocket_upgrade_required");
    return null;
  }
  socket.write(
    "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n" +
      `sec-websocket-accept: ${acceptKey(key)}\r\n\r\n`,
  );
  const ws = new WebSocketEndpoint(socket, head, WEBSOCKET_MAX_MESSAGE_BYTES);
  Promise.resolve()
    .then(() => handler(ws))
    .catch((err: unknown) => {
      log.warn({ err: { message: errorMessage(err) } }, "websocket handler failed");
      ws.close(1011, "handler failed");
    });
  return ws;
}

/**
 * Relays an upgrade to a custom server as it was sent (its own websocket path), then bytes both ways until
 * either side closes.
 */
export function pipeUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer, port: number): void {
  const upstream = net.connect(port, "127.0.0.1");
  let text = `${req.method} ${req.url} HTTP/1.1\r\n`;
  for (let i = 0; i < req.rawHeaders.length; i += 2) {
    text += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
  }
  upstream.on("connect", () => {
    upstream.write(`${text}\r\n`);
    if (head.length > 0) upstream.write(head);
    upstream.pipe(socket);
    socket.pipe(upstream);
  });
  upstream.on("error", () => {
    if (upstream.bytesRead === 0)
      refuseUpgrade(socket, "replica_failed", "The model server is not reachable.");
    else socket.destroy();
  });
  socket.on("error", () => upstream.destroy());
  socket.on("close", () => upstream.destroy());
  upstream.on("close", () => socket.destroy());
}
