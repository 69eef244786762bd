// The runtime in-process through its library, called over real sockets: predict, streaming, readiness,
// concurrency, errors, and custom servers in Python started by start_command.

import { writeFile } from "node:fs/promises";
import { connect } from "node:net";
import path from "node:path";
import pino from "pino";
import { afterEach, describe, expect, it } from "vitest";
import { loadModelPackage, type ReplicaIdentity } from "./package.ts";
import { type ModelServer, PATHS, type ServeModelOptions, serveModel } from "./server.ts";
import { capturingLogger, EXAMPLES, WAIT_FOR_FILE_JS, waitFor, writePackage } from "./testing.ts";

const silent = pino({ level: "silent" });
const identity: ReplicaIdentity = { modelId: "abcd1234", deploymentId: "dep42", environment: "prod-eu" };
const running: ModelServer[] = [];

afterEach(async () => {
  await Promise.all(running.splice(0).map((s) => s.stop()));
});

async function start(dir: string, options: Partial<ServeModelOptions> = {}): Promise<ModelServer> {
  const server = serveModel({
    modelPackage: await loadModelPackage(dir),
    host: "127.0.0.1",
    port: 0,
    identity,
    logger: silent,
    inheritedEnv: process.env,
    readinessIntervalMs: 30,
    ...options,
  });
  running.push(server);
  await server.start();
  return server;
}

function url(server: ModelServer, p: string): string {
  return `http://${server.address}${p}`;
}

function predict(server: ModelServer, body: unknown): Promise<Response> {
  return fetch(url(server, PATHS.predict), {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
}

async function untilReady(server: ModelServer): Promise<void> {
  await waitFor(
    async () => (await fetch(url(server, PATHS.readiness))).status === 200 || undefined,
    "readiness",
  );
}

describe("a JavaScript model", () => {
  it("answers predict with JSON and is told its environment", async () => {
    const server = await start(path.join(EXAMPLES, "hello-js"));
    expect(server.address).toMatch(/^127\.0\.0\.1:\d+$/);
    await untilReady(server);

    const res = await predict(server, { text: "bonjour" });
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toBe("application/json");
    const body = (await res.json()) as Record<string, unknown>;
    expect(body["environment"]).toBe("prod-eu");
    expect(body["echo"]).toEqual({ text: "bonjour" });
    expect(body["message"]).toMatch(/ from prod-eu$/);

    const ready = await fetch(url(server, PATHS.readiness));
    expect(await ready.json()).toEqual({ name: "hello-js", ready: true });
    expect((await fetch(url(server, PATHS.liveness))).status).toBe(200);
  });

  it("passes a null environment when the replica serves none", async () => {
    const dir = await writePackage({
      "config.yaml": "model_name: who\n",
      "model/model.js":
        "export class Model { constructor(c) { this.c = c; } predict() { return this.c; } }\n",
    });
    const server = await start(dir, { identity: { modelId: null, deploymentId: null, environment: null } });
    await untilReady(server);
    expect(await (await predict(server, {})).json()).toEqual({ environment: null });
  });

  it("is not ready (503) until load() has returned, and refuses predict meanwhile", async () => {
    const dir = await writePackage({
      "config.yaml": "model_name: slow\n",
      "model/wait.js": WAIT_FOR_FILE_JS,
      "model/model.js": `import { waitForFile } from "./wait.js";
export class Model {
  async load() { await waitForFile(new URL("../loaded", import.meta.url).pathname); }
  predict(input) { return { ok: input }; }
}
`,
    });
    const server = await start(dir);
    const before = await fetch(url(server, PATHS.readiness));
    expect(before.status).toBe(503);
    expect(await before.json()).toMatchObject({
      error_code: "model_unavailable",
      detail: { state: "loading" },
    });
    const early = await predict(server, 1);
    expect(early.status).toBe(503);
    expect((await early.json()) as object).toMatchObject({ error_code: "model_unavailable" });
    // The runtime itself is alive while the model loads.
    expect((await fetch(url(server, PATHS.liveness))).status).toBe(200);

    await writeFile(path.join(dir, "loaded"), "");
    await untilReady(server);
    expect(server.state).toBe("ready");
    expect(await (await predict(server, 1)).json()).toEqual({ ok: 1 });
  });

  it("reports load() failure on `finished`, with the error, and stays unready", async () => {
    const dir = await writePackage({
      "config.yaml": "",
      "model/model.js": `export class Model { async load() { throw new Error("weights are missing"); } predict() {} }\n`,
    });
    const { logger, lines } = capturingLogger();
    const server = await start(dir, { logger });
    const outcome = await server.finished;
    expect(outcome.kind).toBe("load_failed");
    expect(outcome.kind === "load_failed" && (outcome.error as Error).message).toBe("weights are missing");
    const logged = lines.find((l) => l.msg === "model load failed");
    expect(logged).toMatchObject({ level: 50, err: { message: "weights are missing" } });
    expect((logged?.["err"] as { stack?: string } | undefined)?.stack).toContain("at ");
    const res = await fetch(url(server, PATHS.readiness));
    expect(res.status).toBe(503);
    expect(((await res.json()) as { error: string }).error).toContain("weights are missing");
  });

  it("treats a module without a Model class as a load failure naming the file", async () => {
    const dir = await writePackage({ "config.yaml": "", "model/model.js": "export const model = 1;\n" });
    const server = await start(dir);
    const outcome = await server.finished;
    expect(outcome.kind === "load_failed" && String(outcome.error)).toMatch(
      /model\.js does not export a Model class/,
    );
  });

  it("answers a predict that throws with 500 internal_error and keeps serving", async () => {
    const dir = await writePackage({
      "config.yaml": "",
      "model/model.js": `export class Model {
  predict(input) { if (input.fail) throw new Error("cannot divide by zero"); return input.n * 2; }
}
`,
    });
    const server = await start(dir);
    await untilReady(server);
    const failed = await predict(server, { fail: true });
    expect(failed.status).toBe(500);
    expect(await failed.json()).toEqual({
      error: "cannot divide by zero",
      error_code: "internal_error",
      detail: null,
    });
    const ok = await predict(server, { n: 21 });
    expect(await ok.json()).toBe(42);
  });

  it("refuses bad JSON (400), oversized bodies (413), unknown paths (404) and wrong methods (405)", async () => {
    const server = await start(path.join(EXAMPLES, "hello-js"), { maxBodyBytes: 1024 });
    await untilReady(server);

    const bad = await predict(server, "{not json");
    expect(bad.status).toBe(400);
    expect(await bad.json()).toMatchObject({ error_code: "invalid_json" });

    const empty = await predict(server, "");
    expect(empty.status).toBe(400);

    const big = await predict(server, { blob: "x".repeat(2048) });
    expect(big.status).toBe(413);
    expect(await big.json()).toMatchObject({
      error_code: "payload_too_large",
      detail: { limit_bytes: 1024 },
    });

    const missing = await fetch(url(server, "/v1/models/other:predict"), { method: "POST", body: "{}" });
    expect(missing.status).toBe(404);
    expect(await missing.json()).toMatchObject({ error_code: "route_not_found" });

    const wrong = await fetch(url(server, PATHS.predict));
    expect(wrong.status).toBe(405);
    expect(wrong.headers.get("allow")).toBe("POST");
    expect(await wrong.json()).toMatchObject({ error_code: "method_not_allowed" });
  });

  it("returns bytes as application/octet-stream", async () => {
    const dir = await writePackage({
      "config.yaml": "",
      "model/model.js": "export class Model { predict() { return new Uint8Array([0, 1, 255]); } }\n",
    });
    const server = await start(dir);
    await untilReady(server);
    const res = await predict(server, null);
    expect(res.headers.get("content-type")).toBe("application/octet-stream");
    expect([...new Uint8Array(await res.arrayBuffer())]).toEqual([0, 1, 255]);
  });
});

describe("streaming", () => {
  const streamingModel = `import { waitForFile } from "./wait.js";
export class Model {
  predict(input) {
    const gate = new URL("../gate", import.meta.url).pathname;
    return (async function* () {
      yield input.objects ? { part: 1 } : "first ";
      await waitForFile(gate);
      yield input.objects ? { part: 2 } : "second";
      if (input.fail) throw new Error("stream broke");
    })();
  }
}
`;

  it("sends chunks as they are yielded, before the stream ends", async () => {
    const dir = await writePackage({
      "config.yaml": "",
      "model/wait.js": WAIT_FOR_FILE_JS,
      "model/model.js": streamingModel,
    });
    const server = await start(dir);
    await untilReady(server);

    const res = await predict(server, {});
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toBe("text/plain; charset=utf-8");
    expect(res.headers.get("transfer-encoding")).toBe("chunked");
    const reader = res.body!.getReader();
    const decoder = new TextDecoder();
    // The model cannot finish until the gate file exists, so this chunk can only come from a live stream.
    const first = await reader.read();
    expect(decoder.decode(first.value)).toBe("first ");
    await writeFile(path.join(dir, "gate"), "");
    let rest = "";
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      rest += decoder.decode(value);
    }
    expect(rest).toBe("second");
  });

  it("streams objects as JSON lines", async () => {
    const dir = await writePackage({
      "config.yaml": "",
      "model/wait.js": WAIT_FOR_FILE_JS,
      "model/model.js": streamingModel,
      gate: "",
    });
    const server = await start(dir);
    await untilReady(server);
    const res = await predict(server, { objects: true });
    expect(res.headers.get("content-type")).toBe("application/x-ndjson");
    expect(await res.text()).toBe('{"part":1}\n{"part":2}\n');
  });

  it("cuts the connection when the stream fails after it began, and keeps serving", async () => {
    const dir = await writePackage({
      "config.yaml": "",
      "model/wait.js": WAIT_FOR_FILE_JS,
      "model/model.js": streamingModel,
      gate: "",
    });
    const server = await start(dir);
    await untilReady(server);
    const res = await predict(server, { fail: true });
    expect(res.status).toBe(200);
    // A truncated chunked body must not look complete to the client.
    await expect(res.text()).rejects.toThrow();
    expect(await (await predict(server, {})).text()).toBe("first second");
  });

  it("streams the example model's words", async () => {
    const server = await start(path.join(EXAMPLES, "stream-js"));
    await untilReady(server);
    const res = await predict(server, { prompt: "one two three", delay_ms: 1 });
    expect(await res.text()).toBe("one\ntwo\nthree\n[done in prod-eu]\n");
  });
});

describe("predict_concurrency", () => {
  it("runs at most predict_concurrency at once, queues a bounded number, refuses the rest with 429", async () => {
    const dir = await writePackage({
      "config.yaml": "runtime:\n  predict_concurrency: 2\n",
      "model/wait.js": WAIT_FOR_FILE_JS,
      "model/model.js": `import { appendFileSync } from "node:fs";
import { waitForFile } from "./wait.js";
let active = 0;
let peak = 0;
export class Model {
  async predict(input) {
    active++;
    peak = Math.max(peak, active);
    appendFileSync(new URL("../entered", import.meta.url).pathname, input.id + "\\n");
    await waitForFile(new URL("../gate", import.meta.url).pathname);
    active--;
    return { id: input.id, peak };
  }
}
`,
    });
    const server = await start(dir, { maxQueued: 1 });
    await untilReady(server);
    const entered = async () => {
      const { readFile } = await import("node:fs/promises");
      return (await readFile(path.join(dir, "entered"), "utf8").catch(() => "")).split("\n").filter(Boolean);
    };

    const first = predict(server, { id: 1 });
    const second = predict(server, { id: 2 });
    await waitFor(async () => ((await entered()).length === 2 ? true : undefined), "two running predictions");
    const third = predict(server, { id: 3 });
    // Give the third request time to reach the queue; it must not start while two are running.
    await new Promise((r) => setTimeout(r, 150));
    expect(await entered()).toHaveLength(2);

    const refused = await predict(server, { id: 4 });
    expect(refused.status).toBe(429);
    expect(await refused.json()).toMatchObject({
      error_code: "rate_limited",
      detail: { predict_concurrency: 2, max_queued: 1 },
    });

    await writeFile(path.join(dir, "gate"), "");
    const answers = await Promise.all([first, second, third]);
    const bodies = (await Promise.all(answers.map((r) => r.json()))) as Array<{ id: number; peak: number }>;
    expect(answers.map((r) => r.status)).toEqual([200, 200, 200]);
    expect(bodies.map((b) => b.id)).toEqual([1, 2, 3]);
    expect(Math.max(...bodies.map((b) => b.peak))).toBe(2);
    expect((await entered()).sort()).toEqual(["1", "2", "3"]);
  });
});

describe("a custom server started by start_command", () => {
  it("proxies truss's paths to the Python example and gives it the model's environment", async () => {
    const { logger, lines } = capturingLogger();
    const server = await start(path.join(EXAMPLES, "custom-python"), {
      logger,
      serverPort: 0,
      inheritedEnv: { ...process.env, LOAD_SECONDS: "0.4", MERIDIAN_API_KEY: "must-not-leak" },
    });
    // The Python server takes LOAD_SECONDS to load, so the first readiness answer is 503.
    expect((await fetch(url(server, PATHS.readiness))).status).toBe(503);
    expect((await predict(server, {})).status).toBe(503);
    await untilReady(server);

    const res = await predict(server, { x: 1 });
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({
      message: "Bonjour from prod-eu",
      environment: "prod-eu",
      model_id: "abcd1234",
      echo: { x: 1 },
      server: "python",
    });
    expect((await fetch(url(server, PATHS.liveness))).status).toBe(200);

    const started = lines.find((l) => l.msg === "model server started");
    const port = started?.["port"] as number;
    expect(port).toBeGreaterThan(0);
    expect(lines.some((l) => l.msg === "model output" && String(l["line"]).includes('"loaded"'))).toBe(true);

    await server.stop();
    expect(server.state).toBe("stopped");
    expect(await server.finished).toEqual({ kind: "stopped" });
    // The Python process is gone with the runtime: its port no longer accepts connections.
    const refused = await new Promise<boolean>((resolve) => {
      const socket = connect(port, "127.0.0.1");
      socket.on("connect", () => resolve(socket.destroy() && false));
      socket.on("error", () => resolve(true));
    });
    expect(refused).toBe(true);
  });

  it("does not pass the runtime's own MERIDIAN_* settings to the server", async () => {
    const dir = await writePackage({
      "config.yaml": `environment_variables:
  GREETING: Hej
docker_server:
  start_command: python3 env.py
  server_port: 8000
  predict_endpoint: /
  readiness_endpoint: /
  liveness_endpoint: /
`,
      "env.py": `import json, os
from http.server import BaseHTTPRequestHandler, HTTPServer
class H(BaseHTTPRequestHandler):
    def reply(self):
        body = json.dumps({k: v for k, v in os.environ.items() if k.startswith(("MERIDIAN_", "GREETING", "PORT"))}).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    do_GET = do_POST = reply
    def log_message(self, *a): pass
HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
`,
    });
    const server = await start(dir, {
      serverPort: 0,
      inheritedEnv: { ...process.env, MERIDIAN_API_KEY: "secret", MERIDIAN_ENVIRONMENT: "stale" },
    });
    await untilReady(server);
    const env = (await (await predict(server, {})).json()) as Record<string, string>;
    expect(env).toEqual({
      GREETING: "Hej",
      MERIDIAN_MODEL_ID: "abcd1234",
      MERIDIAN_DEPLOYMENT_ID: "dep42",
      MERIDIAN_ENVIRONMENT: "prod-eu",
      PORT: expect.stringMatching(/^\d+$/),
    });
  });

  it("enforces predict_concurrency on proxied predictions too", async () => {
    const dir = await writePackage({
      "config.yaml": `runtime:
  predict_concurrency: 1
docker_server:
  start_command: exec python3 slow.py
  server_port: 8000
  predict_endpoint: /p
  readiness_endpoint: /r
  liveness_endpoint: /r
`,
      "slow.py": `import os, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        time.sleep(0.5)
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *a): pass
ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
`,
    });
    const server = await start(dir, { serverPort: 0, maxQueued: 0 });
    await untilReady(server);
    const slow = predict(server, {});
    await new Promise((r) => setTimeout(r, 100));
    const refused = await predict(server, {});
    expect(refused.status).toBe(429);
    expect(await (await slow).text()).toBe("ok");
  });

  it("reports a server that exits before it is ready, with its last stderr lines", async () => {
    const dir = await writePackage({
      "config.yaml": `docker_server:
  start_command: echo "port 8000 is taken" >&2; exit 7
  server_port: 8000
  predict_endpoint: /predict
  readiness_endpoint: /ready
  liveness_endpoint: /live
`,
    });
    const server = await start(dir);
    const outcome = await server.finished;
    expect(outcome).toEqual({
      kind: "model_server_exited",
      code: 7,
      signal: null,
      stderrTail: ["port 8000 is taken"],
      wasReady: false,
    });
    const res = await fetch(url(server, PATHS.readiness));
    expect(res.status).toBe(503);
    expect(((await res.json()) as { error: string }).error).toContain("exited (code 7)");
  });

  it("reports a server that crashes after it was ready", async () => {
    const dir = await writePackage({
      "config.yaml": `docker_server:
  start_command: python3 crash.py
  server_port: 8000
  predict_endpoint: /
  readiness_endpoint: /
  liveness_endpoint: /
`,
      "crash.py": `import os, threading
from http.server import BaseHTTPRequestHandler, HTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
        threading.Timer(0.2, lambda: os._exit(9)).start()
    def log_message(self, *a): pass
HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
`,
    });
    const server = await start(dir, { serverPort: 0 });
    const outcome = await server.finished;
    expect(outcome).toMatchObject({ kind: "model_server_exited", code: 9, wasReady: true });
  });
});
