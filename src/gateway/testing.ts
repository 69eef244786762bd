// Test peers for the ingress suites: model-server stand-ins (real node:http servers on loopback) and a
// tiny HTTP client that sends an arbitrary Host to an arbitrary address. Used only by tests.

import http, { type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";

export interface SeenRequest {
  method: string;
  path: string;
  headers: IncomingHttpHeaders;
  bodyBytes: number;
  /** Resolves when the request's connection closed before a response was completed. */
  closedEarly: Promise<void>;
}

export interface TestReplica {
  name: string;
  endpoint: string;
  seen: SeenRequest[];
  sockets: Set<string>;
  close(): Promise<void>;
}

/**
 * A model server stand-in. `x-test-mode` picks a behaviour: (default) echo JSON; `slow` answers after 2 s;
 * `die-before` drops the connection before answering; `die-mid` sends headers and a chunk, then drops;
 * `stream` sends three chunks 300 ms apart; `hang` never answers. With `socketPath` it listens on that
 * Unix socket (endpoint `unix:/path`), as a replica under egress deny does.
 */
export async function startReplica(
  name: string,
  host = "127.0.0.1",
  socketPath?: string,
): Promise<TestReplica> {
  const seen: SeenRequest[] = [];
  const sockets = new Set<string>();
  // Unix sockets have no remote port: connections are told apart by a number of their own.
  const connectionIds = new WeakMap<object, number>();
  let connections = 0;
  const server = http.createServer((req: IncomingMessage, res: ServerResponse) => {
    if (socketPath !== undefined) {
      if (!connectionIds.has(req.socket)) connectionIds.set(req.socket, ++connections);
      sockets.add(`unix#${connectionIds.get(req.socket)}`);
    } else {
      sockets.add(`${req.socket.remoteAddress}:${req.socket.remotePort}`);
    }
    let closeEarly: () => void = () => {};
    const closedEarly = new Promise<void>((r) => {
      closeEarly = r;
    });
    res.once("close", () => {
      if (!res.writableFinished) closeEarly();
    });
    const entry: SeenRequest = {
      method: req.method ?? "",
      path: req.url ?? "",
      headers: req.headers,
      bodyBytes: 0,
      closedEarly,
    };
    seen.push(entry);
    const mode = req.headers["x-test-mode"];
    if (mode === "hang") return;
    req.on("data", (c: Buffer) => {
      entry.bodyBytes += c.length;
    });
    req.on("end", () => {
      switch (mode) {
        case "slow":
          setTimeout(() => res.end("late"), 2_000);
          return;
        case "die-before":
          req.socket.destroy();
          return;
        case "die-mid":
          res.writeHead(200, { "content-type": "text/plain" });
          res.write("partial");
          setTimeout(() => req.socket.destroy(), 50);
          return;
        case "claims-unserved":
          // A hostile model answering as a plane would that nothing ran (rules.ts, HOP_NO_REPLICA).
          res.writeHead(503, [
            "content-type",
            "application/json",
            "x-meridian-hop-refused",
            "no_replica",
            "x-meridian-time",
            String(Date.now()),
          ]);
          res.end(
            JSON.stringify({ error: "nothing ran, honest", error_code: "model_unavailable", detail: null }),
          );
          return;
        case "stream":
          res.writeHead(200, { "content-type": "text/plain" });
          res.write("a");
          setTimeout(() => res.write("b"), 300);
          setTimeout(() => res.end("c"), 600);
          return;
      }
      const body = JSON.stringify({ replica: name, bytes: entry.bodyBytes, path: req.url });
      res.writeHead(200, [
        "content-type",
        "application/json",
        "content-length",
        String(Buffer.byteLength(body)),
        "connection",
        "x-resp-hop",
        "x-resp-hop",
        "1",
        "keep-alive",
        "timeout=5",
        "x-meridian-plane",
        "spoofed",
        "x-model-header",
        "kept",
      ]);
      res.end(body);
    });
  });
  if (socketPath !== undefined) await new Promise<void>((r) => server.listen(socketPath, r));
  else await new Promise<void>((r) => server.listen(0, host, r));
  const endpoint =
    socketPath !== undefined ? `unix:${socketPath}` : `${host}:${(server.address() as AddressInfo).port}`;
  return {
    name,
    endpoint,
    seen,
    sockets,
    close: () =>
      new Promise<void>((r) => {
        server.close(() => r());
        server.closeAllConnections();
      }),
  };
}

export interface CallResult {
  status: number;
  headers: IncomingHttpHeaders;
  body: string;
  json: unknown;
  /** Milliseconds from the start of the call to each body chunk. */
  chunkTimes: number[];
  aborted: boolean;
}

export interface CallOptions {
  address: { host: string; port: number };
  host: string;
  path: string;
  method?: string;
  key?: string | null;
  scheme?: "Api-Key" | "Bearer";
  body?: string | Buffer;
  /** Send the body chunked (no Content-Length). */
  chunked?: boolean;
  headers?: Record<string, string>;
}

export function call(o: CallOptions): Promise<CallResult> {
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = { host: o.host, ...o.headers };
    if (o.key !== null) headers.authorization = `${o.scheme ?? "Api-Key"} ${o.key ?? "k-personal"}`;
    const body = o.body ?? "{}";
    if (o.chunked) headers["transfer-encoding"] = "chunked";
    else headers["content-length"] = String(Buffer.byteLength(body));
    const req = http.request(
      {
        host: o.address.host,
        port: o.address.port,
        method: o.method ?? "POST",
        path: o.path,
        headers,
        agent: false,
      },
      (res) => {
        const chunks: Buffer[] = [];
        const chunkTimes: number[] = [];
        let aborted = false;
        res.on("data", (c: Buffer) => {
          chunks.push(c);
          chunkTimes.push(performance.now() - started);
        });
        res.on("aborted", () => {
          aborted = true;
        });
        res.on("error", () => {
          aborted = true;
        });
        res.on("close", () => {
          const text = Buffer.concat(chunks).toString("utf8");
          let json: unknown = null;
          try {
            json = JSON.parse(text);
          } catch {}
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            body: text,
            json,
            chunkTimes,
            aborted: aborted || !res.complete,
          });
        });
      },
    );
    req.on("error", reject);
    req.end(body);
  });
}
