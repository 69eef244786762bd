// What a replica serves beyond predict (src/runtime/realtime.ts): a JavaScript model's OpenAI-style routes
// (JSON and SSE) and websocket handler (examples/openai-js), and a custom server's own paths and upgrades,
// passed through as they were sent. Real runtime, real sockets, undici's WebSocket as the client.

import { once } from "node:events";
import net from "node:net";
import path from "node:path";
import pino from "pino";
import { WebSocket } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadModelPackage } from "./package.ts";
import { type ModelServer, serveModel } from "./server.ts";
import { EXAMPLES, waitFor, writePackage } from "./testing.ts";

const silent = pino({ level: "silent" });
const identity = { modelId: "abcd1234", deploymentId: "dep42", environment: "prod-eu" };

async function start(dir: string, serverPort?: number): Promise<ModelServer> {
  const server = serveModel({
    modelPackage: await loadModelPackage(dir),
    host: "127.0.0.1",
    port: 0,
    identity,
    logger: silent,
    inheritedEnv: process.env,
    readinessIntervalMs: 30,
    ...(serverPort === undefined ? {} : { serverPort }),
  });
  await server.start();
  await waitFor(() => server.state === "ready" || undefined, "the model is ready");
  return server;
}

/** A raw upgrade request and the answer's head. */
async function upgrade(address: string, target: string): Promise<{ status: number; socket: net.Socket }> {
  const [host, port] = address.split(":") as [string, string];
  const socket = net.connect(Number(port), host);
  await once(socket, "connect");
  socket.write(
    `GET ${target} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n` +
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
  );
  const [chunk] = (await once(socket, "data")) as [Buffer];
  return { status: Number(chunk.toString("latin1").slice(9, 12)), socket };
}

describe("a JavaScript model's OpenAI routes and websocket (examples/openai-js)", () => {
  let server: ModelServer;
  let hello: ModelServer;
  beforeAll(async () => {
    server = await start(path.join(EXAMPLES, "openai-js"));
    hello = await start(path.join(EXAMPLES, "hello-js"));
  });
  afterAll(async () => {
    await server.stop();
    await hello.stop();
  });
  const url = (p: string, s = server) => `http://${s.address}${p}`;

  it("answers a chat completion as JSON, and as SSE ending with [DONE] when streamed", async () => {
    const body = { messages: [{ role: "user", content: "a b" }] };
    const whole = await fetch(url("/v1/chat/completions"), { method: "POST", body: JSON.stringify(body) });
    expect(whole.status).toBe(200);
    expect(
      ((await whole.json()) as { choices: { message: { content: string } }[] }).choices[0]!.message.content,
    ).toBe("You said a b (from prod-eu)");
    const streamed = await fetch(url("/v1/chat/completions"), {
      method: "POST",
      body: JSON.stringify({ ...body, stream: true }),
    });
    expect(streamed.headers.get("content-type")).toBe("text/event-stream");
    const events = (await streamed.text()).split("\n\n").filter(Boolean);
    expect(events.at(-1)).toBe("data: [DONE]");
    expect(events.slice(0, -1).every((e) => e.startsWith("data: {"))).toBe(true);
  });

  it("refuses what the model does not serve: other methods (405), bad JSON (400), other routes (404)", async () => {
    const get = await fetch(url("/v1/chat/completions"));
    expect(get.status).toBe(405);
    expect(get.headers.get("allow")).toBe("POST");
    const bad = await fetch(url("/v1/chat/completions"), { method: "POST", body: "{not json" });
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { error_code: string }).error_code).toBe("invalid_json");
    const missing = await fetch(url("/v1/embeddings"), { method: "POST", body: "{}" });
    expect(missing.status).toBe(404);
    const none = await fetch(url("/v1/chat/completions", hello), { method: "POST", body: "{}" });
    expect(none.status).toBe(404);
  });

  it("serves websocket(ws) at /v1/websocket; other paths, and a model without the method, refuse the upgrade", async () => {
    const ws = new WebSocket(`ws://${server.address}/v1/websocket`);
    await once(ws as unknown as EventTarget, "open");
    const reply = new Promise<string>((ok) =>
      ws.addEventListener("message", (e) => ok(String(e.data)), { once: true }),
    );
    ws.send("hi");
    expect(await reply).toBe("prod-eu: hi");
    ws.close();
    for (const [address, target] of [
      [server.address!, "/elsewhere"],
      [hello.address!, "/v1/websocket"],
    ] as const) {
      const r = await upgrade(address, target);
      r.socket.destroy();
      expect(r.status).toBe(404);
    }
  });
});

const CUSTOM_SERVER = `
import http from "node:http";
import { createHash } from "node:crypto";
const server = http.createServer((req, res) => {
  if (req.url === "/health") return res.end("ok");
  let bytes = 0;
  req.on("data", (c) => (bytes += c.length));
  req.on("end", () => res.end(JSON.stringify({ method: req.method, url: req.url, bytes })));
});
server.on("upgrade", (req, socket) => {
  const accept = createHash("sha1").update(req.headers["sec-websocket-key"] + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest("base64");
  socket.write("HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\nSec-WebSocket-Accept: " + accept + "\\r\\nx-path: " + req.url + "\\r\\n\\r\\n");
  socket.on("data", (d) => socket.write(d));
});
server.listen(Number(process.env.PORT), "127.0.0.1");
`;

describe("a custom server's own paths and upgrades", () => {
  let server: ModelServer;
  beforeAll(async () => {
    const dir = await writePackage({
      "config.yaml": [
        "model_name: custom-js",
        "docker_server:",
        "  start_command: node server.mjs",
        "  server_port: 8000",
        "  predict_endpoint: /predict",
        "  readiness_endpoint: /health",
        "  liveness_endpoint: /health",
        "",
      ].join("\n"),
      "server.mjs": CUSTOM_SERVER,
    });
    server = await start(dir, 0);
  });
  afterAll(async () => {
    await server.stop();
  });

  it("passes any path, method, query and body through as sent", async () => {
    const r = await fetch(`http://${server.address}/v1/things/a%2Fb?x=1`, { method: "PUT", body: "12345" });
    expect(await r.json()).toEqual({ method: "PUT", url: "/v1/things/a%2Fb?x=1", bytes: 5 });
  });

  it("relays an upgrade to the server's own path, then bytes both ways", async () => {
    const [host, port] = server.address!.split(":") as [string, string];
    const socket = net.connect(Number(port), host);
    await once(socket, "connect");
    socket.write(
      "GET /ws/live?x=1 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" +
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
    let got = "";
    socket.on("data", (d: Buffer) => (got += d.toString("latin1")));
    await waitFor(() => got.includes("\r\n\r\n") || undefined, "the 101");
    expect(got).toMatch(/^HTTP\/1\.1 101 /);
    expect(got).toContain("x-path: /ws/live?x=1");
    socket.write("raw bytes");
    await waitFor(() => got.endsWith("raw bytes") || undefined, "the echo");
    socket.destroy();
  });
});
