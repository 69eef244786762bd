// Issue 13's realtime paths against a real `meridian up` (docs/realtime.md): examples/openai-js pushed into
// prod-eu (restricted to eu), then called as its users call it. The unmodified `openai` package, pointed at
// https://model-{id}-prod-eu.{domain}/sync/v1 with the installation's CA trusted and names resolved by
// Meridian's own DNS responder, streams a chat completion; the proof headers name eu. A websocket echo
// through the same regional hostname (undici's WebSocket), the default frame limit refusing a frame over
// 16 MiB (1009), and an upgrade sent to a plane of another region refused with 421. examples/openai-py, its
// Python twin, is pushed beside it: the same SDK stream and a websocket echo closed by the client.

import { type ChildProcess, execFile, spawn } from "node:child_process";
import { Resolver } from "node:dns/promises";
import { once } from "node:events";
import { readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import tls from "node:tls";
import { promisify } from "node:util";
import OpenAI from "openai";
import { Agent, fetch as undiciFetch, WebSocket } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BIN, freePort } from "../support/cluster.ts";
import { tempDir } from "../support/control.ts";

const run = promisify(execFile);
const EXAMPLES = resolve(import.meta.dirname, "../../examples");

async function until<T>(what: string, probe: () => Promise<T | null>, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== null) return value;
    if (Date.now() > deadline) throw new Error(`not within ${timeoutMs / 1000} s: ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe("/sync and websockets on `meridian up`", () => {
  const dir = tempDir();
  const dataDir = join(dir, ".meridian");
  let child: ChildProcess;
  let output = "";
  let httpsPort: number;
  let dnsPort: number;
  let ca: Buffer;
  let apiKey: string;
  let domain: string;
  let regional: string;
  let regionalPy: string;
  let dispatcher: Agent;
  let resolved: string[] = [];

  async function meridian(...args: string[]): Promise<string> {
    const env: NodeJS.ProcessEnv = { ...process.env, XDG_CONFIG_HOME: join(dir, "config") };
    for (const k of ["MERIDIAN_API_URL", "MERIDIAN_API_KEY", "MERIDIAN_DNS", "MERIDIAN_CA_FILE"])
      delete env[k];
    const { stdout } = await run(process.execPath, [BIN, ...args], { cwd: dir, env, timeout: 120_000 });
    return stdout;
  }

  beforeAll(async () => {
    httpsPort = await freePort("127.0.1.1");
    dnsPort = await freePort("127.0.0.1");
    const flags = [
      "--control-port",
      String(await freePort("127.0.0.1")),
      "--https-port",
      String(httpsPort),
      "--admin-port",
      String(await freePort("127.0.1.1")),
      "--dns",
      `127.0.0.1:${dnsPort}`,
    ];
    child = spawn(process.execPath, [BIN, "up", ...flags], { cwd: dir, stdio: ["ignore", "pipe", "pipe"] });
    child.stdout!.on("data", (d: Buffer) => (output += d.toString()));
    child.stderr!.on("data", (d: Buffer) => (output += d.toString()));
    await until(
      "meridian up is up",
      async () => {
        if (child.exitCode !== null) throw new Error(`meridian up exited ${child.exitCode}:\n${output}`);
        return output.includes("Stop with Ctrl-C") ? true : null;
      },
      120_000,
    );
    const manifest = JSON.parse(readFileSync(join(dataDir, "up.json"), "utf8"));
    ca = readFileSync(manifest.ca_file);
    apiKey = readFileSync(manifest.api_key_file, "utf8").trim();
    domain = manifest.domain;
    const pushed = JSON.parse(
      await meridian("push", join(EXAMPLES, "openai-js"), "--environment", "prod-eu", "--wait", "--json"),
    );
    expect(pushed.deployment.status).toBe("ACTIVE");
    regional = `model-${pushed.model.id}-prod-eu.${domain}`;
    // The Python twin (truss's chat_completions and websocket on the Python host).
    const pushedPy = JSON.parse(
      await meridian("push", join(EXAMPLES, "openai-py"), "--environment", "prod-eu", "--wait", "--json"),
    );
    expect(pushedPy.deployment.status).toBe("ACTIVE");
    regionalPy = `model-${pushedPy.model.id}-prod-eu.${domain}`;

    // Names are resolved by Meridian's own DNS responder, as a client told to use it would.
    const resolver = new Resolver();
    resolver.setServers([`127.0.0.1:${dnsPort}`]);
    dispatcher = new Agent({
      connect: {
        ca,
        lookup: (host: string, opts: { all?: boolean }, cb: (...a: unknown[]) => void) => {
          resolver.resolve4(host).then(
            (addresses) => {
              resolved = addresses;
              if (opts.all)
                cb(
                  null,
                  addresses.map((address) => ({ address, family: 4 })),
                );
              else cb(null, addresses[0], 4);
            },
            (err: Error) => cb(err),
          );
        },
      } as object,
    });
  }, 300_000);

  afterAll(async () => {
    await dispatcher?.close();
    if (child && child.exitCode === null) {
      const exited = new Promise((ok) => child.once("exit", ok));
      child.kill("SIGINT");
      await exited;
    }
  }, 60_000);

  it("the unmodified openai package streams a chat completion from the regional hostname; processed in eu", async () => {
    const client = new OpenAI({
      apiKey,
      baseURL: `https://${regional}:${httpsPort}/sync/v1`,
      // The installation's CA and Meridian's DNS: the package's own fetch hook, the package unchanged.
      fetch: ((url: string, init: object) => undiciFetch(url, { ...init, dispatcher })) as never,
      maxRetries: 0,
    });
    const started = Date.now();
    const { data: stream, response } = await client.chat.completions
      .create({
        model: "openai-js",
        stream: true,
        messages: [{ role: "user", content: "where do you run" }],
        metadata: { delay_ms: "150" },
      })
      .withResponse();
    expect(resolved).toEqual(["127.0.2.1"]); // eu-1's ingress: DNS answers nothing else for this name
    expect(response.headers.get("x-meridian-region")).toBe("eu");
    expect(response.headers.get("x-meridian-plane")).toBe("eu-1");
    expect(response.headers.get("signature-input")).toContain("receipt=");
    const arrivals: number[] = [];
    let text = "";
    let finish: string | null = null;
    for await (const chunk of stream) {
      arrivals.push(Date.now() - started);
      text += chunk.choices[0]?.delta?.content ?? "";
      finish = chunk.choices[0]?.finish_reason ?? finish;
    }
    expect(text).toBe("You said where do you run (from prod-eu)");
    expect(finish).toBe("stop");
    expect(arrivals.length).toBeGreaterThan(5);

    // Not streamed: one JSON answer.
    const whole = await client.chat.completions.create({
      model: "openai-js",
      messages: [{ role: "user", content: "hello" }],
    });
    expect(whole.choices[0]?.message.content).toBe("You said hello (from prod-eu)");
    expect(whole.usage?.completion_tokens).toBe(4);
  }, 60_000);

  it("echoes over a websocket through the regional hostname; a frame over 16 MiB closes it with 1009", async () => {
    const ws = new WebSocket(`wss://${regional}:${httpsPort}/websocket`, {
      dispatcher,
      headers: { authorization: `Bearer ${apiKey}` },
    } as ConstructorParameters<typeof WebSocket>[1]);
    await once(ws as unknown as EventTarget, "open");
    const reply = new Promise<string>((ok) =>
      ws.addEventListener("message", (e) => ok(String(e.data)), { once: true }),
    );
    ws.send("bonjour");
    expect(await reply).toBe("prod-eu: bonjour");
    const closed = once(ws as unknown as EventTarget, "close");
    ws.send(new Uint8Array(16 * 1024 * 1024 + 1));
    const [event] = (await closed) as [{ code: number }];
    expect(event.code).toBe(1009);
  }, 60_000);

  it("examples/openai-py (the Python host): the openai package streams from it, and its websocket echoes and closes", async () => {
    const client = new OpenAI({
      apiKey,
      baseURL: `https://${regionalPy}:${httpsPort}/sync/v1`,
      fetch: ((url: string, init: object) => undiciFetch(url, { ...init, dispatcher })) as never,
      maxRetries: 0,
    });
    const { data: stream, response } = await client.chat.completions
      .create({
        model: "openai-py",
        stream: true,
        messages: [{ role: "user", content: "where do you run" }],
        metadata: { delay_ms: "100" },
      })
      .withResponse();
    expect(response.headers.get("x-meridian-region")).toBe("eu");
    const arrivals: number[] = [];
    let text = "";
    for await (const chunk of stream) {
      arrivals.push(Date.now());
      text += chunk.choices[0]?.delta?.content ?? "";
    }
    expect(text).toBe("You said where do you run (from prod-eu)");
    // Relayed event by event: 7 tokens 100 ms apart did not arrive together.
    expect(arrivals.at(-1)! - arrivals[0]!).toBeGreaterThanOrEqual(400);

    const ws = new WebSocket(`wss://${regionalPy}:${httpsPort}/websocket`, {
      dispatcher,
      headers: { authorization: `Bearer ${apiKey}` },
    } as ConstructorParameters<typeof WebSocket>[1]);
    await once(ws as unknown as EventTarget, "open");
    const reply = new Promise<string>((ok) =>
      ws.addEventListener("message", (e) => ok(String(e.data)), { once: true }),
    );
    ws.send("hallo");
    expect(await reply).toBe("prod-eu: hallo");
    const closed = once(ws as unknown as EventTarget, "close");
    ws.close(4000, "done");
    const [event] = (await closed) as [{ code: number; wasClean: boolean }];
    expect(event.code).toBe(4000);
    expect(event.wasClean).toBe(true);
  }, 60_000);

  it("an upgrade sent to a plane of another region is refused with 421", async () => {
    // A client that ignores the certificate (us-1 holds none for this name) reaches us-1 anyway.
    const socket = tls.connect({
      host: "127.0.1.1",
      port: httpsPort,
      servername: regional,
      rejectUnauthorized: false,
    });
    await once(socket, "secureConnect");
    socket.write(
      `GET /websocket HTTP/1.1\r\nHost: ${regional}\r\nAuthorization: Api-Key ${apiKey}\r\n` +
        "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" +
        "Sec-WebSocket-Version: 13\r\n\r\n",
    );
    let answer = "";
    socket.on("data", (d: Buffer) => (answer += d.toString("latin1")));
    await once(socket, "close");
    expect(answer).toMatch(/^HTTP\/1\.1 421 /);
    expect(answer.toLowerCase()).toContain("x-meridian-region: us");
    expect(answer).toContain('"error_code":"misdirected_request"');
  });
});
