// Pins the behaviour of Node's internal HTTP parser that the wire transport relies on (llhttp.ts): if a
// Node upgrade changes it, this fails in CI; in production the ingress would fall back to node:http.
import net from "node:net";
import { pino } from "pino";
import { describe, expect, it } from "vitest";
import { generateSigningKey } from "../../lib/keys.ts";
import { createIngress } from "../ingress.ts";
import {
  K_ON_BODY,
  K_ON_EXECUTE,
  K_ON_HEADERS_COMPLETE,
  K_ON_MESSAGE_COMPLETE,
  loadParser,
  type ParseError,
  selfTest,
} from "./llhttp.ts";

const loaded = loadParser();

describe("Node's HTTP parser", () => {
  it("loads and passes the self-test on this Node", () => {
    expect(loaded).toMatchObject({ ok: true });
    if (!loaded.ok) return;
    expect(selfTest(loaded.parser)).toBeNull();
    expect(loaded.parser.methods[3]).toBe("POST");
  });

  it("refuses the smuggling vectors in strict mode with the codes the transport maps", () => {
    if (!loaded.ok) throw new Error(loaded.reason);
    const P = loaded.parser;
    const codes = (bytes: string) => {
      const p = P.create();
      p.initialize(P.REQUEST, {}, 1024, P.STRICT);
      p[K_ON_HEADERS_COMPLETE] = () => 0;
      const r = p.execute(Buffer.from(bytes, "latin1"));
      p.close();
      return typeof r === "number" ? r : (r as ParseError).code;
    };
    const head = "POST / HTTP/1.1\r\nHost: h\r\n";
    expect(codes(`${head}Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n`)).toMatch(/^HPE_/);
    expect(codes(`${head}Content-Length: 1\r\nContent-Length: 2\r\n\r\n`)).toMatch(/^HPE_/);
    expect(codes(`${head}Content-Length: 1x\r\n\r\n`)).toMatch(/^HPE_/);
    expect(codes(`${head}Transfer-Encoding: chunked, identity\r\n\r\n`)).toMatch(/^HPE_/);
    expect(codes(`${head}X: a\u0000b\r\n\r\n`)).toMatch(/^HPE_/);
    expect(codes(`${head}X: a\rb\r\n\r\n`)).toMatch(/^HPE_/);
    expect(codes(`${head}X: ${"a".repeat(2000)}\r\n\r\n`)).toBe("HPE_HEADER_OVERFLOW");
    expect(codes(`${head}Transfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\n`)).toMatch(/^HPE_/);
  });

  it("reads a socket's handle directly (consume), reports each read, and stops reading on readStop", async () => {
    if (!loaded.ok) throw new Error(loaded.reason);
    const P = loaded.parser;
    const seen: string[] = [];
    let handle: { readStop(): number; readStart(): number } | null = null;
    const server = net.createServer((socket) => {
      const h = (socket as unknown as { _handle: { readStop(): number; readStart(): number } })._handle;
      handle = h;
      const p = P.create();
      p.initialize(P.REQUEST, {}, 16 * 1024, P.STRICT);
      p[K_ON_HEADERS_COMPLETE] = () => {
        seen.push("head");
        return 0;
      };
      p[K_ON_BODY] = (c) => seen.push(`body:${c.toString()}`);
      let stopped = false;
      p[K_ON_MESSAGE_COMPLETE] = () => {
        seen.push("end");
        if (stopped) return;
        stopped = true;
        h.readStop(); // the next request is not read until readStart
      };
      p[K_ON_EXECUTE] = (r) => seen.push(`exec:${typeof r === "number" ? "n" : r.code}`);
      p.consume(h);
      socket.on("close", () => setImmediate(() => p.close()));
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const port = (server.address() as net.AddressInfo).port;
    const client = net.connect(port, "127.0.0.1");
    client.write("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nok");
    await until(() => seen.includes("end"));
    client.write("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n");
    await new Promise((r) => setTimeout(r, 100));
    expect(seen).toEqual(["head", "body:ok", "end", "exec:n"]);
    handle!.readStart();
    await until(() => seen.length > 4);
    expect(seen.slice(4)).toEqual(["head", "end", "exec:n"]);
    client.destroy();
    await new Promise<void>((r) => server.close(() => r()));
  });
});

describe("fallback", () => {
  it("runs the ingress on node:http when the parser is not usable", async () => {
    const lines: string[] = [];
    const logger = pino({ level: "warn" }, { write: (l: string) => lines.push(l) });
    const ingress = createIngress(
      {
        plane: { name: "eu-1", region: "eu" },
        signingKey: generateSigningKey(),
        snapshot: () => null,
        localReplicas: () => [],
        logger,
      },
      { ok: false, reason: "HTTPParser.kOnExecute is 7, not 5" },
    );
    expect(ingress.transport).toBe("http");
    expect(lines.join("")).toContain("HTTPParser.kOnExecute is 7, not 5");
    await ingress.start();
    const r = await fetch(`http://127.0.0.1:${ingress.address!.port}/predict`, { method: "POST" });
    expect(r.status).toBe(503); // no snapshot yet: the ingress answers, on node:http
    expect(r.headers.get("x-meridian-plane")).toBe("eu-1");
    await ingress.stop();
  });
});

async function until(cond: () => boolean): Promise<void> {
  const deadline = Date.now() + 3_000;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error("timed out");
    await new Promise((r) => setTimeout(r, 5));
  }
}
