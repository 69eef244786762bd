// `/sync/{path}` and websockets through the ingress (docs/realtime.md), on both transports, against the real
// runtime serving examples/openai-js behind a counting TCP relay (so "no byte reached a replica" is
// measured, not assumed): the residency rules of predict (421 on a wrong-region plane, 503 with no replica),
// SSE streamed through, methods and query passed as sent, the proof and the receipt on answers and on the
// 101, a websocket echo with undici's client, the frame limit (1009) and the idle timeout (1001).

import { createHash, randomBytes } from "node:crypto";
import { once } from "node:events";
import net, { type AddressInfo } from "node:net";
import path from "node:path";
import pino from "pino";
import { Agent, WebSocket } from "undici";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import type { PlaneSnapshot } from "../core/snapshot.ts";
import { generateSigningKey } from "../lib/keys.ts";
import { encodeFrame } from "../lib/websocket.ts";
import { loadModelPackage } from "../runtime/package.ts";
import { type ModelServer, serveModel } from "../runtime/server.ts";
import { EXAMPLES } from "../runtime/testing.ts";
import type { AuditRecord } from "./audit.ts";
import { createIngress, type Ingress, type IngressTransport } from "./ingress.ts";
import { call, startReplica, type TestReplica } from "./testing.ts";

const DOMAIN = "meridian.test";
const MODEL = "aaaaaaa1";
const REGIONAL = `model-${MODEL}-prod-eu.${DOMAIN}`;
const STANDARD = `model-${MODEL}.${DOMAIN}`;
const KEY = "k-realtime";
const MAX_FRAME = 4096;
const IDLE_MS = 900;
const sha256 = (s: string) => createHash("sha256").update(s).digest("hex");

const KEYS = { "eu-1": generateSigningKey(), "us-1": generateSigningKey() };
const CONTROL = generateSigningKey();
/** The planes' ingress ports, known once they listen (hops from us-1 go to eu-1's). */
const PORTS: Record<string, number> = { "eu-1": 9, "us-1": 9 };

function snapshot(plane: { name: string; region: string }): PlaneSnapshot {
  const planes = [
    { name: "eu-1", region: "eu", ingress: [`127.0.0.1:${PORTS["eu-1"]}`], global_ingress: false },
    { name: "us-1", region: "us", ingress: [`127.0.0.1:${PORTS["us-1"]}`], global_ingress: true },
  ];
  const control = CONTROL;
  return {
    revision: 1,
    domain: DOMAIN,
    plane: planes.find((p) => p.name === plane.name)!,
    planes,
    plane_keys: Object.entries(KEYS).map(([name, k]) => ({
      plane: name,
      key_id: k.keyId,
      public_key: k.publicKey,
      retired_at: null,
    })),
    control_key: { key_id: control.keyId, public_key: control.publicKey },
    api_keys: [{ hash: sha256(KEY), prefix: "k-re", team_id: "t1", category: "PERSONAL", model_ids: null }],
    models: [
      {
        id: MODEL,
        team_id: "t1",
        name: "m1",
        development_deployment_id: null,
        environments: [
          { name: "prod-eu", deployment_id: "d-eu", region: "eu", standard_endpoint_policy: "deny" },
          { name: "staging", deployment_id: "d-eu", region: null, standard_endpoint_policy: "allow" },
          { name: "empty-eu", deployment_id: "d-empty", region: "eu", standard_endpoint_policy: "deny" },
        ],
        deployments: [
          { id: "d-eu", region: "eu", ready_planes: ["eu-1"] },
          { id: "d-empty", region: "eu", ready_planes: [] },
        ],
      },
    ],
    replicas: [],
  };
}

/** A TCP relay in front of the replica that counts connections and bytes: what reached the replica. */
async function countingRelay(target: string): Promise<{
  endpoint: string;
  connections: number;
  bytes: number;
  close(): Promise<void>;
  cut(): void;
}> {
  const [host, port] = target.split(":") as [string, string];
  const state = { endpoint: "", connections: 0, bytes: 0, close: async () => {}, cut: () => {} };
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    state.connections++;
    sockets.add(client);
    const up = net.connect(Number(port), host);
    client.on("data", (d: Buffer) => {
      state.bytes += d.length;
      up.write(d);
    });
    up.pipe(client);
    client.on("close", () => up.destroy());
    up.on("close", () => client.destroy());
    client.on("error", () => up.destroy());
    up.on("error", () => client.destroy());
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  state.endpoint = `127.0.0.1:${(server.address() as AddressInfo).port}`;
  /** Resets every connection through the relay: the replica "goes away". */
  state.cut = () => {
    for (const s of sockets) s.destroy();
  };
  state.close = () =>
    new Promise<void>((r) => {
      for (const s of sockets) s.destroy();
      server.close(() => r());
    });
  return state;
}

/** Resolves every name to 127.0.0.1 (undici's connector passes `lookup` to net.connect). */
function loopback(): Agent {
  return new Agent({
    connect: {
      lookup: (_host: string, opts: { all?: boolean }, cb: (...a: unknown[]) => void) =>
        opts.all ? cb(null, [{ address: "127.0.0.1", family: 4 }]) : cb(null, "127.0.0.1", 4),
    } as object,
  });
}

/** A raw upgrade request and what came back before the socket closed or `ms` passed. */
async function rawUpgrade(
  port: number,
  host: string,
  target: string,
  extra: string[] = [],
  key: string | null = KEY,
  ms = 1_500,
): Promise<{ head: string; status: number; rest: Buffer; socket: net.Socket }> {
  const socket = net.connect(port, "127.0.0.1");
  await once(socket, "connect");
  const wsKey = randomBytes(16).toString("base64");
  socket.write(
    [
      `GET ${target} HTTP/1.1`,
      `Host: ${host}`,
      ...(key === null ? [] : [`Authorization: Api-Key ${key}`]),
      "Connection: Upgrade",
      "Upgrade: websocket",
      `Sec-WebSocket-Key: ${wsKey}`,
      "Sec-WebSocket-Version: 13",
      ...extra,
      "",
      "",
    ].join("\r\n"),
  );
  let buf = Buffer.alloc(0);
  await new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, ms);
    socket.on("data", (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      if (buf.includes("\r\n\r\n") && buf.toString("latin1").startsWith("HTTP/1.1 101")) {
        clearTimeout(timer);
        resolve();
      }
    });
    socket.on("close", () => {
      clearTimeout(timer);
      resolve();
    });
    socket.on("error", () => undefined);
  });
  const end = buf.indexOf("\r\n\r\n");
  const head = end < 0 ? buf.toString("latin1") : buf.toString("latin1", 0, end);
  return {
    head,
    status: Number(head.slice(9, 12)),
    rest: end < 0 ? Buffer.alloc(0) : buf.subarray(end + 4),
    socket,
  };
}

function headerOf(head: string, name: string): string | undefined {
  const m = new RegExp(`^${name}: (.*)$`, "im").exec(head);
  return m?.[1];
}

describe.each(["wire", "http"] as const)("%s transport", (transport: IngressTransport) => {
  let runtime: ModelServer;
  let relay: Awaited<ReturnType<typeof countingRelay>>;
  let echo: TestReplica;
  let eu: Ingress;
  let us: Ingress;
  let replicas: string[] = [];
  let usHasReplica = true;
  const audit: Record<string, AuditRecord[]> = { "eu-1": [], "us-1": [] };
  let euPort = 0;
  let usPort = 0;

  beforeAll(async () => {
    runtime = serveModel({
      modelPackage: await loadModelPackage(path.join(EXAMPLES, "openai-js")),
      host: "127.0.0.1",
      port: 0,
      identity: { modelId: MODEL, deploymentId: "d-eu", environment: "prod-eu" },
      logger: pino({ level: "silent" }),
      inheritedEnv: process.env,
    });
    const address = await runtime.start();
    relay = await countingRelay(address);
    echo = await startReplica("echo");
    replicas = [relay.endpoint];
    const make = (plane: { name: string; region: string }) =>
      createIngress({
        transport,
        plane,
        signingKey: KEYS[plane.name as keyof typeof KEYS],
        snapshot: () => snapshot(plane),
        // us-1 holds the replica too unless a case takes it away: a 421 there is then no accident.
        localReplicas: (id) => (id !== "d-eu" ? [] : plane.name === "us-1" && !usHasReplica ? [] : replicas),
        limits: { websocketMaxFrameBytes: MAX_FRAME, websocketIdleTimeoutMs: IDLE_MS },
        audit: { record: (r) => audit[plane.name]!.push(r) },
      });
    eu = make({ name: "eu-1", region: "eu" });
    us = make({ name: "us-1", region: "us" });
    expect(eu.transport).toBe(transport);
    await eu.start();
    await us.start();
    euPort = eu.address!.port;
    usPort = us.address!.port;
    PORTS["eu-1"] = euPort;
    PORTS["us-1"] = usPort;
    for (let i = 0; i < 100 && runtime.state !== "ready"; i++) await new Promise((r) => setTimeout(r, 20));
  });

  afterAll(async () => {
    await eu.stop();
    await us.stop();
    await relay.close();
    await echo.close();
    await runtime.stop();
  });

  const euAddress = () => ({ host: "127.0.0.1", port: euPort });
  afterEach(() => {
    usHasReplica = true;
  });

  describe("/sync/{path}", () => {
    it("a chat completion on the regional hostname: the replica's answer, with the proof and a receipt", async () => {
      const r = await call({
        address: euAddress(),
        host: REGIONAL,
        path: "/sync/v1/chat/completions",
        key: KEY,
        scheme: "Bearer",
        body: JSON.stringify({ model: "x", messages: [{ role: "user", content: "hello there" }] }),
        headers: { "content-type": "application/json" },
      });
      expect(r.status, r.body).toBe(200);
      const json = r.json as { object: string; choices: { message: { content: string } }[] };
      expect(json.object).toBe("chat.completion");
      expect(json.choices[0]!.message.content).toBe("You said hello there (from prod-eu)");
      expect(r.headers["x-meridian-region"]).toBe("eu");
      expect(r.headers["x-meridian-plane"]).toBe("eu-1");
      expect(r.headers["x-meridian-deployment-id"]).toBe("d-eu");
      expect(String(r.headers["signature-input"])).toContain("receipt=");
    });

    it("streams Server-Sent Events through as they are produced, ending with [DONE]", async () => {
      const r = await call({
        address: euAddress(),
        host: REGIONAL,
        path: "/sync/v1/chat/completions",
        key: KEY,
        body: JSON.stringify({
          stream: true,
          metadata: { delay_ms: 120 },
          messages: [{ role: "user", content: "one two three" }],
        }),
      });
      expect(r.status, r.body).toBe(200);
      expect(r.headers["content-type"]).toBe("text/event-stream");
      const events = r.body.split("\n\n").filter(Boolean);
      expect(events.at(-1)).toBe("data: [DONE]");
      const text = events
        .slice(0, -1)
        .map((e) => JSON.parse(e.slice("data: ".length)).choices[0].delta.content ?? "")
        .join("");
      expect(text).toBe("You said one two three (from prod-eu)");
      // Seven token events 120 ms apart: the first arrived long before the last (no buffering anywhere).
      expect(r.chunkTimes.length).toBeGreaterThan(3);
      expect(r.chunkTimes.at(-1)! - r.chunkTimes[0]!).toBeGreaterThan(500);
    });

    it("passes the method, the path after /sync and the query as sent; TRACE and CONNECT are not routes", async () => {
      replicas = [echo.endpoint];
      try {
        for (const method of ["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "POST"]) {
          const r = await call({
            address: euAddress(),
            host: REGIONAL,
            method,
            path: "/sync/v1/things/a%2Fb?x=1&y=%20",
            key: KEY,
          });
          expect(r.status, `${method} ${r.body}`).toBe(200);
          expect((r.json as { path: string }).path).toBe("/v1/things/a%2Fb?x=1&y=%20");
          expect(echo.seen.at(-1)!.method).toBe(method);
          expect(echo.seen.at(-1)!.headers.authorization).toBeUndefined();
        }
        const head = await call({
          address: euAddress(),
          host: REGIONAL,
          method: "HEAD",
          path: "/sync/",
          key: KEY,
        });
        expect(head.status).toBe(200);
        expect(head.body).toBe("");
        expect(echo.seen.at(-1)!.method).toBe("HEAD");
        expect(echo.seen.at(-1)!.path).toBe("/");
        const before = echo.seen.length;
        const trace = await call({
          address: euAddress(),
          host: REGIONAL,
          method: "TRACE",
          path: "/sync/x",
          key: KEY,
        });
        expect(trace.status).toBe(405);
        expect(trace.headers.allow).toBe("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS");
        expect(echo.seen.length).toBe(before);
      } finally {
        replicas = [relay.endpoint];
      }
    });

    it("the standard forms: served where the environment allows it, refused where it denies", async () => {
      const ok = await call({
        address: euAddress(),
        host: STANDARD,
        path: "/environments/staging/sync/v1/completions",
        key: KEY,
        body: JSON.stringify({ prompt: "hi" }),
      });
      expect(ok.status, ok.body).toBe(200);
      expect((ok.json as { object: string }).object).toBe("text_completion");
      const denied = await call({
        address: euAddress(),
        host: STANDARD,
        path: "/environments/prod-eu/sync/v1/completions",
        key: KEY,
      });
      expect(denied.status).toBe(403);
      expect((denied.json as { error_code: string }).error_code).toBe("standard_endpoint_denied");
      const pathBased = await call({
        address: euAddress(),
        host: REGIONAL,
        path: "/environments/prod-eu/sync/v1/completions",
        key: KEY,
      });
      expect((pathBased.json as { error_code: string }).error_code).toBe("regional_path_not_allowed");
    });

    it("the standard endpoint at a plane with no replica: handed over the hop to eu-1, proof from eu-1", async () => {
      usHasReplica = false;
      const r = await call({
        address: { host: "127.0.0.1", port: usPort },
        host: STANDARD,
        path: "/environments/staging/sync/v1/chat/completions",
        key: KEY,
        body: JSON.stringify({ stream: true, messages: [{ role: "user", content: "hop" }] }),
      });
      expect(r.status, r.body).toBe(200);
      expect(r.headers["x-meridian-region"]).toBe("eu");
      expect(r.headers["x-meridian-route"]).toBe("us-1, eu-1");
      expect(r.body).toContain("from prod-eu");
      expect(r.body.trimEnd().endsWith("data: [DONE]")).toBe(true);
      usHasReplica = true;
    });

    it("a wrong-region plane answers 421 and no byte reaches a replica; no ready replica is 503", async () => {
      const before = { c: relay.connections, b: relay.bytes };
      const wrong = await call({
        address: { host: "127.0.0.1", port: usPort },
        host: REGIONAL,
        path: "/sync/v1/chat/completions",
        key: KEY,
        body: JSON.stringify({ messages: [{ role: "user", content: "residency" }] }),
      });
      expect(wrong.status).toBe(421);
      expect((wrong.json as { error_code: string }).error_code).toBe("misdirected_request");
      expect(wrong.headers["x-meridian-region"]).toBe("us");
      const none = await call({
        address: euAddress(),
        host: `model-${MODEL}-empty-eu.${DOMAIN}`,
        path: "/sync/v1/chat/completions",
        key: KEY,
      });
      expect(none.status).toBe(503);
      expect((none.json as { error_code: string }).error_code).toBe("model_unavailable");
      const unauthenticated = await call({
        address: euAddress(),
        host: REGIONAL,
        path: "/sync/v1/chat/completions",
        key: null,
      });
      expect(unauthenticated.status).toBe(401);
      expect({ c: relay.connections, b: relay.bytes }).toEqual(before);
    });
  });

  describe("websockets", () => {
    it("echoes through the regional hostname (undici's WebSocket client)", async () => {
      const ws = new WebSocket(`ws://${REGIONAL}:${euPort}/websocket`, {
        dispatcher: loopback(),
        headers: { authorization: `Api-Key ${KEY}` },
      } as ConstructorParameters<typeof WebSocket>[1]);
      ws.binaryType = "arraybuffer";
      const got: string[] = [];
      await once(ws as unknown as EventTarget, "open");
      const three = new Promise<void>((resolve) => {
        ws.addEventListener("message", (e) => {
          got.push(
            typeof e.data === "string" ? e.data : `binary:${Buffer.from(e.data as ArrayBuffer).length}`,
          );
          if (got.length === 3) resolve();
        });
      });
      ws.send("hello");
      ws.send(new Uint8Array(3000));
      ws.send("x".repeat(2000));
      await three;
      expect(got).toEqual(["prod-eu: hello", "binary:3000", `prod-eu: ${"x".repeat(2000)}`]);
      const closed = once(ws as unknown as EventTarget, "close");
      ws.close(1000);
      const [event] = (await closed) as [{ code: number }];
      expect(event.code).toBe(1000);
    });

    it("a standard-endpoint websocket at us-1 goes over the hop to eu-1: 101 with eu-1's proof, then an echo", async () => {
      usHasReplica = false;
      const ws = new WebSocket(`ws://${STANDARD}:${usPort}/environments/staging/websocket`, {
        dispatcher: loopback(),
        headers: { authorization: `Api-Key ${KEY}` },
      } as ConstructorParameters<typeof WebSocket>[1]);
      await once(ws as unknown as EventTarget, "open");
      const reply = new Promise<string>((ok) =>
        ws.addEventListener("message", (e) => ok(String(e.data)), { once: true }),
      );
      ws.send("over the hop");
      expect(await reply).toBe("prod-eu: over the hop");
      const closed = once(ws as unknown as EventTarget, "close");
      ws.close(1000);
      await closed;
      const raw = await rawUpgrade(usPort, STANDARD, "/environments/staging/websocket");
      raw.socket.destroy();
      expect(raw.status, raw.head).toBe(101);
      expect(headerOf(raw.head, "x-meridian-plane")).toBe("eu-1");
      expect(headerOf(raw.head, "x-meridian-route")).toBe("us-1, eu-1");
      expect(headerOf(raw.head, "signature-input")).toContain("receipt=");
      // prod-eu denies its standard endpoint: refused at us-1, nothing handed over.
      const denied = await rawUpgrade(usPort, STANDARD, "/environments/prod-eu/websocket");
      denied.socket.destroy();
      expect(denied.status).toBe(403);
      usHasReplica = true;
    });

    it('the replica going away: the client gets close 1001, "replica went away"', async () => {
      const ws = new WebSocket(`ws://${REGIONAL}:${euPort}/websocket`, {
        dispatcher: loopback(),
        headers: { authorization: `Api-Key ${KEY}` },
      } as ConstructorParameters<typeof WebSocket>[1]);
      await once(ws as unknown as EventTarget, "open");
      const closed = once(ws as unknown as EventTarget, "close");
      relay.cut();
      const [event] = (await closed) as [{ code: number; reason: string }];
      expect(event.code).toBe(1001);
      expect(event.reason).toBe("replica went away");
    });

    it("one audit record per websocket, written when it ends: status 101 and its lifetime", async () => {
      const ws = new WebSocket(`ws://${REGIONAL}:${euPort}/websocket`, {
        dispatcher: loopback(),
        headers: { authorization: `Api-Key ${KEY}`, "x-request-id": "ws-audited-1" },
      } as ConstructorParameters<typeof WebSocket>[1]);
      await once(ws as unknown as EventTarget, "open");
      await new Promise((r) => setTimeout(r, 300));
      expect(audit["eu-1"]!.filter((r) => r.request_id === "ws-audited-1")).toEqual([]);
      const closed = once(ws as unknown as EventTarget, "close");
      ws.close(1000);
      await closed;
      const deadline = Date.now() + 2_000;
      while (!audit["eu-1"]!.some((r) => r.request_id === "ws-audited-1") && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 20));
      }
      const records = audit["eu-1"]!.filter((r) => r.request_id === "ws-audited-1");
      expect(records).toHaveLength(1);
      expect(records[0]).toMatchObject({
        status: 101,
        environment: "prod-eu",
        deployment_id: "d-eu",
        processed_by: "eu-1",
        hostname_form: "regional",
        aborted: false,
      });
      expect(records[0]!.latency_ms).toBeGreaterThanOrEqual(300);
    });

    it("an upgrade to a deployment that is waking is held, then relayed; a frame sent with it is echoed", async () => {
      let awake = false;
      const plane = { name: "eu-1", region: "eu" };
      const base = snapshot(plane);
      const sleeping: PlaneSnapshot = {
        ...base,
        models: base.models.map((m) => ({
          ...m,
          deployments: m.deployments.map((d) =>
            d.id === "d-eu" ? { ...d, scale: { wakeable: true, concurrency_target: 4, policy: null } } : d,
          ),
        })),
      };
      const waking = createIngress({
        transport,
        plane,
        signingKey: KEYS["eu-1"],
        snapshot: () => sleeping,
        localReplicas: (id) => (awake && id === "d-eu" ? replicas : []),
        wake: async () => {
          setTimeout(() => {
            awake = true;
          }, 300);
        },
      });
      await waking.start();
      try {
        const socket = net.connect(waking.address!.port, "127.0.0.1");
        await once(socket, "connect");
        const started = Date.now();
        socket.write(
          Buffer.concat([
            Buffer.from(
              `GET /websocket HTTP/1.1\r\nHost: ${REGIONAL}\r\nAuthorization: Api-Key ${KEY}\r\n` +
                "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" +
                "Sec-WebSocket-Version: 13\r\n\r\n",
              "latin1",
            ),
            encodeFrame(1, Buffer.from("early"), true),
          ]),
        );
        let got = Buffer.alloc(0);
        socket.on("data", (d: Buffer) => (got = Buffer.concat([got, d])));
        const deadline = Date.now() + 5_000;
        while (!got.includes("prod-eu: early") && Date.now() < deadline)
          await new Promise((r) => setTimeout(r, 20));
        socket.destroy();
        expect(got.toString("latin1")).toMatch(/^HTTP\/1\.1 101 /);
        expect(got.includes("prod-eu: early")).toBe(true);
        expect(Date.now() - started).toBeGreaterThanOrEqual(250); // it was held
      } finally {
        await waking.stop();
      }
    });

    it("the 101 carries the proof headers and a receipt", async () => {
      const r = await rawUpgrade(euPort, REGIONAL, "/websocket");
      try {
        expect(r.status, r.head).toBe(101);
        expect(headerOf(r.head, "x-meridian-region")).toBe("eu");
        expect(headerOf(r.head, "x-meridian-plane")).toBe("eu-1");
        expect(headerOf(r.head, "signature-input")).toContain("receipt=");
        expect(headerOf(r.head, "upgrade")).toBe("websocket");
      } finally {
        r.socket.destroy();
      }
    });

    it("a frame over the limit closes both sides with 1009 before its payload passes", async () => {
      const ws = new WebSocket(`ws://${REGIONAL}:${euPort}/websocket`, {
        dispatcher: loopback(),
        headers: { authorization: `Api-Key ${KEY}` },
      } as ConstructorParameters<typeof WebSocket>[1]);
      await once(ws as unknown as EventTarget, "open");
      const messages: unknown[] = [];
      ws.addEventListener("message", (e) => messages.push(e.data));
      const bytesBefore = relay.bytes;
      const closed = once(ws as unknown as EventTarget, "close");
      ws.send("y".repeat(MAX_FRAME + 1));
      const [event] = (await closed) as [{ code: number }];
      expect(event.code).toBe(1009);
      expect(messages).toEqual([]);
      // The frame's payload never crossed the ingress (only the close frame the ingress sent, a few bytes).
      expect(relay.bytes - bytesBefore).toBeLessThan(64);
    });

    it("a connection quiet for the idle timeout is closed (1001); one in use stays open", async () => {
      const open = () => {
        const ws = new WebSocket(`ws://${REGIONAL}:${euPort}/websocket`, {
          dispatcher: loopback(),
          headers: { authorization: `Api-Key ${KEY}` },
        } as ConstructorParameters<typeof WebSocket>[1]);
        return once(ws as unknown as EventTarget, "open").then(() => ws);
      };
      const started = Date.now();
      const [quiet, busy] = await Promise.all([open(), open()]);
      let busyClosed = false;
      busy.addEventListener("close", () => (busyClosed = true));
      const timer = setInterval(() => busy.send("ping"), IDLE_MS / 4);
      const [event] = (await once(quiet as unknown as EventTarget, "close")) as [{ code: number }];
      const after = Date.now() - started;
      expect(event.code).toBe(1001);
      expect(after).toBeGreaterThanOrEqual(IDLE_MS - 50);
      expect(after).toBeLessThan(IDLE_MS * 3);
      await new Promise((r) => setTimeout(r, IDLE_MS));
      clearInterval(timer);
      expect(busyClosed).toBe(false);
      const done = once(busy as unknown as EventTarget, "close");
      busy.close();
      await done;
    });

    it("an upgrade to a wrong-region plane: 421, and no byte reaches a replica", async () => {
      await new Promise((r) => setTimeout(r, 200)); // the earlier cases' last frames settle
      const before = { c: relay.connections, b: relay.bytes };
      const r = await rawUpgrade(usPort, REGIONAL, "/websocket");
      r.socket.destroy();
      expect(r.status, r.head).toBe(421);
      expect(headerOf(r.head, "x-meridian-region")).toBe("us");
      const id = headerOf(r.head, "x-request-id");
      expect(audit["us-1"]!.find((a) => a.request_id === id)).toMatchObject({
        status: 421,
        error_code: "misdirected_request",
        processed_by: null,
      });
      expect({ c: relay.connections, b: relay.bytes }).toEqual(before);
    });

    it("refusals before any upgrade: 401, 503 with no replica, 426 without an upgrade, 405 for POST", async () => {
      const before = { c: relay.connections, b: relay.bytes };
      const unauth = await rawUpgrade(euPort, REGIONAL, "/websocket", [], null);
      unauth.socket.destroy();
      expect(unauth.status).toBe(401);
      const badKey = await rawUpgrade(euPort, REGIONAL, "/websocket", [], "k-wrong");
      badKey.socket.destroy();
      expect(badKey.status).toBe(401);
      const none = await rawUpgrade(euPort, `model-${MODEL}-empty-eu.${DOMAIN}`, "/websocket");
      none.socket.destroy();
      expect(none.status).toBe(503);
      const plain = await call({
        address: euAddress(),
        host: REGIONAL,
        method: "GET",
        path: "/websocket",
        key: KEY,
      });
      expect(plain.status).toBe(426);
      expect(plain.headers.upgrade).toBe("websocket");
      expect((plain.json as { error_code: string }).error_code).toBe("websocket_upgrade_required");
      const post = await call({ address: euAddress(), host: REGIONAL, path: "/websocket", key: KEY });
      expect(post.status).toBe(405);
      expect(post.headers.allow).toBe("GET");
      expect({ c: relay.connections, b: relay.bytes }).toEqual(before);
    });

    it("a client frame that breaks the protocol (unmasked) closes with 1002 and never reaches the replica", async () => {
      const r = await rawUpgrade(euPort, REGIONAL, "/websocket");
      expect(r.status).toBe(101);
      const bytesBefore = relay.bytes;
      const closed = once(r.socket, "close");
      r.socket.write(encodeFrame(1, Buffer.from("unmasked"), false));
      let got = r.rest;
      r.socket.on("data", (d: Buffer) => (got = Buffer.concat([got, d])));
      await closed;
      // The ingress's close frame: opcode 8, status 1002.
      expect(got[0]).toBe(0x88);
      expect(got.readUInt16BE(2)).toBe(1002);
      expect(relay.bytes - bytesBefore).toBeLessThan(32);
    });
  });
});
