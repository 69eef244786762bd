// The Python host's OpenAI-style routes and websocket handler (docs/realtime.md): the real
// `python3 truss_host.py` serving examples/openai-py and fixture packages, called over real sockets: JSON and
// SSE answers (events timed as they arrive), 404 for unknown routes, undici's WebSocket against
// `websocket(self, ws)` (close both ways, 1011 for a failing handler, 1001 on drain), and raw sockets for the
// frames a well-behaved client never sends.

import { once } from "node:events";
import http from "node:http";
import path from "node:path";
import OpenAI from "openai";
import { WebSocket } from "undici";
import { afterEach, describe, expect, it } from "vitest";
import { EXAMPLES, writePackage } from "../testing.ts";
import { call, type HostProcess, raw, spawnTrussHost, type Target, untilReady } from "./testing.ts";

const children: HostProcess[] = [];

afterEach(() => {
  for (const c of children.splice(0)) if (c.child.exitCode === null) c.child.kill("SIGKILL");
});

async function start(
  dir: string,
): Promise<{ proc: HostProcess; target: Target & { host: string; port: number } }> {
  const proc = spawnTrussHost([dir, "--listen", "127.0.0.1:0", "--environment", "prod-eu"]);
  children.push(proc);
  const target = (await proc.target()) as Target & { host: string; port: number };
  await untilReady(target);
  return { proc, target };
}

/** A POST whose answer's body pieces are recorded with the time each arrived. */
function timed(target: { host: string; port: number }, p: string, body: unknown) {
  return new Promise<{ status: number; type: string | undefined; pieces: { at: number; text: string }[] }>(
    (resolve, reject) => {
      const req = http.request({ ...target, method: "POST", path: p, agent: false }, (res) => {
        const pieces: { at: number; text: string }[] = [];
        res.setEncoding("utf8");
        res.on("data", (text: string) => pieces.push({ at: Date.now(), text }));
        res.on("end", () => resolve({ status: res.statusCode!, type: res.headers["content-type"], pieces }));
      });
      req.on("error", reject);
      req.end(JSON.stringify(body));
    },
  );
}

function wsUrl(target: { host: string; port: number }, p = "/v1/websocket"): string {
  return `ws://${target.host}:${target.port}${p}`;
}

/** The next message, as a string or the bytes of a binary one. */
function nextMessage(ws: WebSocket): Promise<string | Uint8Array> {
  return new Promise((resolve) =>
    ws.addEventListener(
      "message",
      (e) => resolve(typeof e.data === "string" ? e.data : new Uint8Array(e.data as ArrayBuffer)),
      { once: true },
    ),
  );
}

function closed(ws: WebSocket): Promise<{ code: number; reason: string; wasClean: boolean }> {
  return new Promise((resolve) =>
    ws.addEventListener("close", (e) => resolve({ code: e.code, reason: e.reason, wasClean: e.wasClean }), {
      once: true,
    }),
  );
}

async function opened(url: string): Promise<WebSocket> {
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  await once(ws as unknown as EventTarget, "open");
  return ws;
}

const UPGRADE = (key = "dGhlIHNhbXBsZSBub25jZQ==") =>
  `GET /v1/websocket HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n` +
  `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`;

describe("examples/openai-py: OpenAI-style routes", () => {
  it("answers chat completions as JSON, and streamed as SSE events spread in time, ending with [DONE]", async () => {
    const { target } = await start(path.join(EXAMPLES, "openai-py"));
    const messages = [{ role: "user", content: "a b c" }];
    const whole = await call(target, {
      method: "POST",
      path: "/v1/chat/completions",
      body: JSON.stringify({ messages }),
    });
    expect(whole.status).toBe(200);
    expect(whole.headers["content-type"]).toBe("application/json");
    expect(whole.json().choices[0].message.content).toBe("You said a b c (from prod-eu)");

    const streamed = await timed(target, "/v1/chat/completions", {
      stream: true,
      messages,
      metadata: { delay_ms: "80" },
    });
    expect(streamed.status).toBe(200);
    expect(streamed.type).toBe("text/event-stream");
    const events = streamed.pieces
      .map((p) => p.text)
      .join("")
      .split("\n\n")
      .filter(Boolean);
    expect(events.at(-1)).toBe("data: [DONE]");
    const chunks = events.slice(0, -1).map((e) => {
      expect(e.startsWith("data: {")).toBe(true);
      return JSON.parse(e.slice("data: ".length));
    });
    expect(chunks.map((c) => c.choices[0].delta.content ?? "").join("")).toBe(
      "You said a b c (from prod-eu)",
    );
    expect(chunks.at(-1).choices[0].finish_reason).toBe("stop");
    // 6 tokens 80 ms apart: the events arrived as they were yielded, not gathered at the end.
    expect(streamed.pieces.length).toBeGreaterThanOrEqual(5);
    expect(streamed.pieces.at(-1)!.at - streamed.pieces[0]!.at).toBeGreaterThanOrEqual(300);
  });

  it("serves completions and embeddings; unknown /v1 paths are 404 JSON, other methods 405, bad JSON 400", async () => {
    const { target } = await start(path.join(EXAMPLES, "openai-py"));
    const completion = await call(target, {
      method: "POST",
      path: "/v1/completions",
      body: '{"prompt": "x"}',
    });
    expect(completion.json().choices[0].text).toBe("You said x (from prod-eu)");
    const embeddings = await call(target, {
      method: "POST",
      path: "/v1/embeddings",
      body: JSON.stringify({ input: ["a", "b", "a"] }),
    });
    const data = embeddings.json().data as { embedding: number[] }[];
    expect(data).toHaveLength(3);
    expect(data[0]!.embedding).toHaveLength(8);
    expect(data[0]!.embedding).toEqual(data[2]!.embedding);
    expect(data[0]!.embedding).not.toEqual(data[1]!.embedding);

    const unknown = await call(target, { method: "POST", path: "/v1/responses", body: "{}" });
    expect(unknown.status).toBe(404);
    expect(unknown.headers["content-type"]).toBe("application/json");
    expect(unknown.json()).toMatchObject({
      error_code: "route_not_found",
      detail: { path: "/v1/responses" },
    });
    const get = await call(target, { path: "/v1/chat/completions" });
    expect(get.status).toBe(405);
    expect(get.headers["allow"]).toBe("POST");
    const bad = await call(target, { method: "POST", path: "/v1/chat/completions", body: "{not json" });
    expect(bad.status).toBe(400);
    expect(bad.json().error_code).toBe("invalid_json");
  });
});

describe("examples/openai-py with the unmodified openai package", () => {
  it("streams a chat completion token by token, and answers a plain one and embeddings", async () => {
    const { target } = await start(path.join(EXAMPLES, "openai-py"));
    const client = new OpenAI({
      apiKey: "unused",
      baseURL: `http://${target.host}:${target.port}/v1`,
      maxRetries: 0,
    });
    const messages = [{ role: "user" as const, content: "where do you run" }];
    const stream = await client.chat.completions.create({
      model: "openai-py",
      stream: true,
      messages,
      metadata: { delay_ms: "60" },
    });
    const arrivals: number[] = [];
    let text = "";
    for await (const chunk of stream) {
      arrivals.push(Date.now());
      text += chunk.choices[0]?.delta?.content ?? "";
    }
    expect(text).toBe("You said where do you run (from prod-eu)");
    expect(arrivals.at(-1)! - arrivals[0]!).toBeGreaterThanOrEqual(300);
    const plain = await client.chat.completions.create({ model: "openai-py", messages, max_tokens: 2 });
    expect(plain.choices[0]!.message.content).toBe("You said");
    expect(plain.choices[0]!.finish_reason).toBe("length");
    // The package asks for base64 float32s and decodes them: the same vector as the JSON floats.
    const embedded = await client.embeddings.create({ model: "openai-py", input: "hello" });
    const floats = await client.embeddings.create({
      model: "openai-py",
      input: "hello",
      encoding_format: "float",
    });
    expect(embedded.data[0]!.embedding).toHaveLength(8);
    expect(embedded.data[0]!.embedding.some((x) => x !== 0)).toBe(true);
    for (const [i, x] of embedded.data[0]!.embedding.entries())
      expect(x).toBeCloseTo(floats.data[0]!.embedding[i]!, 6);
  });
});

describe("the websocket handler", () => {
  it("echoes text, binary and a 70 kB message; the client's close code reaches the model and is answered", async () => {
    const { target } = await start(path.join(EXAMPLES, "openai-py"));
    const ws = await opened(wsUrl(target));
    ws.send("hi");
    expect(await nextMessage(ws)).toBe("prod-eu: hi");
    ws.send(new Uint8Array([0, 1, 255]));
    expect(await nextMessage(ws)).toEqual(new Uint8Array([0, 1, 255]));
    const big = "x".repeat(70_000);
    ws.send(big);
    expect(await nextMessage(ws)).toBe(`prod-eu: ${big}`);
    const end = closed(ws);
    ws.close(4000, "bye");
    expect(await end).toMatchObject({ code: 4000, wasClean: true });
  });

  const FIXTURE = `
import asyncio

class Model:
    closes = []

    def predict(self, model_input):
        return {"closes": Model.closes}

    async def websocket(self, ws):
        await ws.accept()
        first = await ws.receive_text()
        if first == "fail":
            raise RuntimeError("the handler broke")
        if first == "close":
            await ws.send_text("closing")
            await ws.close(4001, "done")
            return
        if first == "return":
            return
        try:
            async for text in ws.iter_text():
                await ws.send_text(text.upper())
            Model.closes.append("iter ended")
        finally:
            pass
`;

  async function fixture() {
    const dir = await writePackage({ "config.yaml": "model_name: ws\n", "model/model.py": FIXTURE });
    return start(dir);
  }

  it("closes from the server side: ws.close(code, reason), 1000 when the handler returns, 1011 when it raises", async () => {
    const { target } = await fixture();
    const a = await opened(wsUrl(target));
    const aClosed = closed(a);
    a.send("close");
    expect(await nextMessage(a)).toBe("closing");
    expect(await aClosed).toEqual({ code: 4001, reason: "done", wasClean: true });

    const b = await opened(wsUrl(target));
    const bClosed = closed(b);
    b.send("return");
    expect(await bClosed).toMatchObject({ code: 1000, wasClean: true });

    const c = await opened(wsUrl(target));
    const cClosed = closed(c);
    c.send("fail");
    expect(await cClosed).toMatchObject({ code: 1011, reason: "handler failed", wasClean: true });

    // iter_text ends when the client closes; the host keeps serving.
    const d = await opened(wsUrl(target));
    d.send("echo");
    d.send("again");
    expect(await nextMessage(d)).toBe("AGAIN");
    const dClosed = closed(d);
    d.close(1000);
    expect((await dClosed).code).toBe(1000);
    const after = await call(target, { method: "POST", path: "/v1/models/model:predict", body: "{}" });
    expect(after.json()).toEqual({ closes: ["iter ended"] });
  });

  it("refuses what is not an upgrade (426), a bad key (426), another method (405), a model without websocket (404)", async () => {
    const { target } = await start(path.join(EXAMPLES, "openai-py"));
    const plain = await call(target, { path: "/v1/websocket" });
    expect(plain.status).toBe(426);
    expect(plain.headers["upgrade"]).toBe("websocket");
    expect(plain.json().error_code).toBe("websocket_upgrade_required");
    const badKey = await raw(target);
    badKey.socket.write(UPGRADE("short"));
    expect(await badKey.until("\r\n\r\n")).toMatch(/^HTTP\/1\.1 426 /);
    const post = await call(target, { method: "POST", path: "/v1/websocket", body: "{}" });
    expect(post.status).toBe(405);

    const hello = await start(path.join(EXAMPLES, "hello-py"));
    const none = await raw(hello.target);
    none.socket.write(UPGRADE());
    const answer = await none.until("}");
    expect(answer).toMatch(/^HTTP\/1\.1 404 /);
    expect(answer).toContain('"route_not_found"');
  });

  it("answers the handshake per RFC 6455, pongs pings, and closes 1002 on an unmasked client frame", async () => {
    const { target } = await start(path.join(EXAMPLES, "openai-py"));
    const conn = await raw(target);
    conn.socket.write(UPGRADE());
    const head = await conn.until("\r\n\r\n");
    expect(head).toMatch(/^HTTP\/1\.1 101 /);
    // RFC 6455 §1.3's worked example.
    expect(head.toLowerCase()).toContain("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=");
    // A masked ping (mask 0) with payload "p": a pong with the same payload comes back.
    conn.socket.write(Buffer.from([0x89, 0x81, 0, 0, 0, 0, 0x70]));
    await conn.until("\x8a\x01p");
    // An unmasked text frame: refused with close 1002 (0x03ea), and the socket closes.
    conn.socket.write(Buffer.from([0x81, 0x02, 0x68, 0x69]));
    await conn.closed;
    expect(conn.received()).toContain("\x88");
    expect(conn.received()).toContain("\x03\xea");
    expect(conn.received()).not.toContain("prod-eu: hi");
  });

  it("closes 1007 on text that is not UTF-8, and 1002 on a close code a client may not send", async () => {
    const { target } = await start(path.join(EXAMPLES, "openai-py"));
    for (const [frame, code] of [
      [[0x81, 0x82, 0, 0, 0, 0, 0xc3, 0x28], "\x03\xef"],
      [[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xee], "\x03\xea"],
    ] as const) {
      const conn = await raw(target);
      conn.socket.write(UPGRADE());
      await conn.until("\r\n\r\n");
      conn.socket.write(Buffer.from(frame));
      await conn.closed;
      expect(conn.received()).toMatch(new RegExp(`\x88[\\s\\S]${code}`));
    }
  });

  it("refuses to load a websocket that is not async def (exit code 3)", async () => {
    const dir = await writePackage({
      "config.yaml": "model_name: ws\n",
      "model/model.py":
        "class Model:\n    def predict(self, x):\n        return x\n\n    def websocket(self, ws):\n        pass\n",
    });
    const proc = spawnTrussHost([dir, "--listen", "127.0.0.1:0"]);
    children.push(proc);
    expect((await proc.exited).code).toBe(3);
    expect(proc.stdout.map((l) => l.msg).concat(proc.errors().map((l) => l.msg))).toContain(
      "model load failed",
    );
    expect(proc.stderr()).toContain("must be an `async def websocket(self, ws)`");
  });

  it("sends 1001 to an open websocket when the host drains on SIGTERM", async () => {
    const { proc, target } = await start(path.join(EXAMPLES, "openai-py"));
    const ws = await opened(wsUrl(target));
    ws.send("hi");
    expect(await nextMessage(ws)).toBe("prod-eu: hi");
    const end = closed(ws);
    proc.child.kill("SIGTERM");
    expect((await end).code).toBe(1001);
    expect((await proc.exited).code).toBe(0);
  });
});
