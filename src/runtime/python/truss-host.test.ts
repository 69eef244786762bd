// The Python host as a plane's driver runs it: the real `python3 truss_host.py` (Debian's /usr/bin/python3
// unless a test says otherwise) on fixture packages written here, called over TCP and its Unix socket.
// Covers the truss Model contract line by line, streaming, truss's error codes, the bad packages (each
// with its exit code and reason) and draining; hostile clients are in truss-host.security.test.ts.

import { existsSync } from "node:fs";
import { mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { ERRORS } from "../../core/errors.ts";
import { EXIT_CODES } from "../../core/runtime-exit-codes.ts";
import { EXAMPLES, waitFor, writePackage } from "../testing.ts";
import {
  call,
  DEBIAN_PYTHON,
  type HostProcess,
  predict,
  raw,
  spawnTrussHost,
  type Target,
  untilReady,
} from "./testing.ts";

const children: HostProcess[] = [];
const temps: string[] = [];

function host(args: string[], o: Parameters<typeof spawnTrussHost>[1] = {}): HostProcess {
  const proc = spawnTrussHost(args, o);
  children.push(proc);
  return proc;
}

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), "meridian-pyhost-"));
  temps.push(dir);
  return dir;
}

afterEach(() => {
  for (const c of children.splice(0)) if (c.child.exitCode === null) c.child.kill("SIGKILL");
});

afterAll(async () => {
  for (const dir of temps) await rm(dir, { recursive: true, force: true });
});

/** The reason a plane shows: the last error line on stderr, as `msg: err.message` or `msg: error`. */
function lastError(proc: HostProcess): { msg: string; message: string; line: Record<string, any> } {
  const line = proc.errors().at(-1) as Record<string, any> | undefined;
  if (line === undefined) throw new Error(`no error line; stderr: ${proc.stderr()}`);
  return { msg: line["msg"], message: line["err"]?.["message"] ?? line["error"], line };
}

/** A file a fixture model waits for: the test opens the gate by creating it. */
const GATE_PY = `
import os, time, pathlib
GATES = pathlib.Path(os.environ["GATES"])

def wait_for(name, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not (GATES / name).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(name)
        time.sleep(0.005)

def mark(name, text=""):
    (GATES / name).write_text(text)
`;

const CONTRACT_MODEL = `
import asyncio, os, sys, threading, time, pathlib
from model.helpers import shout          # the package root is on sys.path
from model.gate import wait_for, mark
import bundled_pkg                        # packages/ (bundled_packages_dir)
import shared_pkg                         # an external_package_dirs entry inside the package

AT_IMPORT = os.environ.get("GREETING")    # environment_variables are set before the import

class Model:
    def __init__(self, config, data_dir, secrets, environment, lazy_data_resolver):
        self._config = config
        self._data_dir = data_dir
        self._secrets = secrets
        self._environment = environment
        self._resolver = lazy_data_resolver
        self._lock = threading.Lock()
        self._running = 0
        self._peak = 0
        self._words = None

    def load(self):
        self._words = (self._data_dir / "words.txt").read_text().split()

    def preprocess(self, model_input):
        if isinstance(model_input, dict) and model_input.get("op") == "pre":
            return dict(model_input, preprocessed=True)
        return model_input

    def predict(self, model_input):
        op = model_input.get("op") if isinstance(model_input, dict) else None
        if op == "context":
            return {
                "at_import": AT_IMPORT,
                "greeting": shout(os.environ["GREETING"]),
                "ratio": os.environ["RATIO"],
                "flag": os.environ["FLAG"],
                "identity": [os.environ.get(k) for k in ("MERIDIAN_MODEL_ID", "MERIDIAN_DEPLOYMENT_ID", "MERIDIAN_ENVIRONMENT")],
                "environment": self._environment,
                "data_dir": [type(self._data_dir).__name__, str(self._data_dir)],
                "resolved": self._resolver.block_until_download_complete(),
                "words": self._words,
                "labels": self._config["model_metadata"]["labels"],
                "defaults": [self._config["model_class_name"], self._config["runtime"]["predict_concurrency"], self._config["bundled_packages_dir"]],
                "imports": [bundled_pkg.NAME, shared_pkg.NAME],
                "cwd": os.getcwd(),
                "thread": threading.current_thread() is threading.main_thread(),
                "bytecode": sys.dont_write_bytecode,
            }
        if op == "pre":
            return model_input
        if op == "post":
            return {"value": model_input["value"]}
        if op == "secret":
            name = model_input["name"]
            try:
                return {"value": self._secrets[name]}
            except KeyError as err:
                return {"raised": type(err).__name__, "message": str(err), "contains": name in self._secrets}
        if op == "secrets-listing":
            try:
                list(self._secrets)
            except TypeError as err:
                return {"raised": str(err), "repr": repr(self._secrets)}
        if op == "boom":
            raise ValueError("boom at " + model_input.get("where", "predict"))
        if op == "bytes":
            return b"\\x00\\x01\\xff"
        if op == "text":
            return "plain text"
        if op == "unserializable":
            return {"a set": {1, 2}}
        if op == "stream":
            return (w for w in ["a", "b"])
        if op == "slow":
            with self._lock:
                self._running += 1
                self._peak = max(self._peak, self._running)
                mark("running", str(self._running))
            wait_for(model_input["gate"])
            with self._lock:
                self._running -= 1
            return {"peak": self._peak}
        return model_input

    def postprocess(self, output):
        if isinstance(output, dict) and "value" in output and isinstance(output["value"], int):
            return {"value": output["value"] * 10, "postprocessed": True}
        return output

    def embeddings(self, model_input):
        return {"data": [{"embedding": [0.5, 0.25], "index": 0}], "input": model_input.get("input")}
`;

async function contractPackage(): Promise<string> {
  return writePackage({
    "config.yaml": `# A truss package as truss init writes it, plus what this test checks.
model_name: contract
python_version: py311
environment_variables:
  GREETING: Hallo
  RATIO: 1.5
  FLAG: true
model_metadata:
  labels: [cat, dog]
secrets:
  api_token: null
  empty_one: null
  missing_one: null
runtime:
  predict_concurrency: 2
external_package_dirs:
  - shared
  - ../outside
resources:
  cpu: "1"
  use_gpu: false
requirements: []
system_packages: []
`,
    "model/model.py": CONTRACT_MODEL,
    "model/gate.py": GATE_PY,
    "model/helpers.py": "def shout(text):\n    return text.upper() + '!'\n",
    "packages/bundled_pkg/__init__.py": "NAME = 'bundled'\n",
    "shared/shared_pkg.py": "NAME = 'shared'\n",
    "data/words.txt": "alpha beta\n",
  });
}

/** Every file under `dir` with its size and mtime: what "the host wrote nothing there" is checked on. */
async function snapshot(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (d: string) => {
    for (const entry of await readdir(d, { withFileTypes: true })) {
      const p = path.join(d, entry.name);
      if (entry.isDirectory()) {
        out.push(`${p}/`);
        await walk(p);
      } else out.push(p);
    }
  };
  await walk(dir);
  return out.sort();
}

describe("the Python host on a truss package (TCP)", () => {
  let proc: HostProcess;
  let target: Target;
  let dir: string;
  let gates: string;
  let before: string[];

  beforeAll(async () => {
    dir = await contractPackage();
    gates = await tempDir();
    const secrets = await tempDir();
    await writeFile(path.join(secrets, "api_token"), "s3cr3t-value");
    await writeFile(path.join(secrets, "empty_one"), "");
    await writeFile(path.join(secrets, "undeclared"), "must not be readable");
    before = await snapshot(dir);
    proc = spawnTrussHost(
      [
        dir,
        "--listen",
        "127.0.0.1:0",
        "--model-id",
        "abcd1234",
        "--deployment-id",
        "dep-1",
        "--environment",
        "prod-eu",
        "--secrets-dir",
        secrets,
      ],
      { env: { GATES: gates, GREETING: "from the parent, overridden" } },
    );
    target = await proc.target();
    await untilReady(target);
  });

  afterAll(async () => {
    if (proc.child.exitCode === null) proc.child.kill("SIGKILL");
  });

  it("prints the listening line and the model's loading lines in the JavaScript runtime's shape", () => {
    const listening = proc.stdout.find((l) => l.msg === "listening");
    expect(listening).toMatchObject({
      level: 30,
      address: expect.stringMatching(/^127\.0\.0\.1:[1-9]\d*$/),
      model_id: "abcd1234",
      deployment_id: "dep-1",
      environment: "prod-eu",
    });
    expect(proc.stdout.find((l) => l.msg === "loading model")).toMatchObject({
      model_name: "contract",
      kind: "python",
      python: expect.stringMatching(/^3\.11\./),
      ignored_keys: ["resources", "system_packages"],
    });
    expect(proc.stdout.some((l) => l.msg === "model ready")).toBe(true);
    // The entry outside the package (gathered into packages/ by truss push) is named, not followed.
    expect(proc.stdout.find((l) => l.msg.startsWith("external package dir outside"))).toMatchObject({
      dir: "../outside",
    });
  });

  it("constructs the model with config, data_dir, secrets, environment and lazy_data_resolver", async () => {
    const res = await predict(target, { op: "context" });
    expect(res.status).toBe(200);
    expect(res.headers["content-type"]).toBe("application/json");
    const real = await import("node:fs/promises").then((fs) => fs.realpath(dir));
    expect(res.json()).toEqual({
      at_import: "Hallo",
      greeting: "HALLO!",
      ratio: "1.5",
      flag: "true",
      identity: ["abcd1234", "dep-1", "prod-eu"],
      environment: { name: "prod-eu" },
      data_dir: ["PosixPath", path.join(real, "data")],
      resolved: path.join(real, "data"),
      words: ["alpha", "beta"],
      labels: ["cat", "dog"],
      defaults: ["Model", 2, "packages"],
      imports: ["bundled", "shared"],
      cwd: real,
      // A sync predict runs in a worker thread, not on the event loop's.
      thread: false,
      bytecode: true,
    });
  });

  it("runs preprocess, predict and postprocess in order", async () => {
    expect((await predict(target, { op: "pre", x: 1 })).json()).toEqual({
      op: "pre",
      x: 1,
      preprocessed: true,
    });
    expect((await predict(target, { op: "post", value: 4 })).json()).toEqual({
      value: 40,
      postprocessed: true,
    });
  });

  it("reads declared secrets from the secrets directory; undeclared or empty ones raise", async () => {
    expect((await predict(target, { op: "secret", name: "api_token" })).json()).toEqual({
      value: "s3cr3t-value",
    });
    for (const [name, message] of [
      ["undeclared", /not declared in config\.yaml's secrets/],
      ["empty_one", /has no value/],
      ["missing_one", /has no value/],
    ] as const) {
      const answer = (await predict(target, { op: "secret", name })).json();
      expect(answer).toMatchObject({ raised: "SecretNotFound", contains: false });
      expect(answer.message).toMatch(message);
      expect(answer.message).not.toContain("must not be readable");
    }
    // Secrets are looked up, never listed; repr() names them without values.
    expect((await predict(target, { op: "secrets-listing" })).json()).toEqual({
      raised: "Secrets are meant for lookup and can't be iterated on",
      repr: "<Secrets ['api_token', 'empty_one', 'missing_one']>",
    });
  });

  it("answers JSON, bytes and text results as truss does", async () => {
    const bytes = await predict(target, { op: "bytes" });
    expect(bytes.headers["content-type"]).toBe("application/octet-stream");
    expect([...bytes.body]).toEqual([0, 1, 255]);
    expect((await predict(target, { op: "text" })).json()).toBe("plain text");
  });

  it("answers an exception in predict with a 500 and truss's headers, and keeps serving", async () => {
    const res = await predict(target, { op: "boom" });
    expect(res.status).toBe(500);
    expect(res.headers["x-baseten-error-source"]).toBe("04");
    expect(res.headers["x-baseten-error-code"]).toBe("600");
    // truss does not send the exception to the caller; the traceback is in the logs.
    expect(res.json()).toEqual({
      error: "Internal Server Error",
      error_code: "internal_error",
      detail: null,
    });
    const logged = await waitFor(
      () =>
        proc
          .errors()
          .find(
            (l) => l.msg === "predict failed" && String((l as any).err?.message).includes("boom at predict"),
          ),
      "the predict failed line",
    );
    expect(String((logged as any).err.stack)).toMatch(/model\.py", line \d+, in predict/);
    expect(String((logged as any).err.stack)).not.toContain("_meridian_host");
    expect((await predict(target, { op: "context" })).status).toBe(200);
  });

  it("answers a result with no JSON form with a 500 that says so", async () => {
    const res = await predict(target, { op: "unserializable" });
    expect(res.status).toBe(500);
    expect(res.json().error).toMatch(
      /cannot be sent as JSON: TypeError: Object of type set is not JSON serializable/,
    );
  });

  it("refuses a generator from predict when the model has postprocess (412, a model definition error)", async () => {
    const res = await predict(target, { op: "stream" });
    expect(res.status).toBe(412);
    expect(res.headers["x-baseten-error-code"]).toBe("600");
    expect(res.json()).toMatchObject({
      error_code: "model_definition_error",
      error: expect.stringMatching(/^ModelDefinitionError: If the predict function returns a generator/),
    });
  });

  it("answers invalid JSON 400, binary (msgpack) input 415, unknown paths 404 and wrong methods 405", async () => {
    const bad = await call(target, { method: "POST", path: "/v1/models/model:predict", body: "{nope" });
    expect(bad.status).toBe(400);
    expect(bad.headers["x-baseten-error-code"]).toBe("700");
    expect(bad.json()).toMatchObject({
      error_code: "invalid_json",
      error: expect.stringMatching(/^Invalid JSON payload: /),
    });
    const empty = await call(target, { method: "POST", path: "/v1/models/model:predict" });
    expect(empty.json().error_code).toBe("invalid_json");
    const binary = await call(target, {
      method: "POST",
      path: "/v1/models/model:predict",
      headers: { "content-type": "application/octet-stream" },
      body: Buffer.from([0x81, 0xa1, 0x61, 0x01]),
    });
    expect(binary.status).toBe(415);
    expect(binary.json().error_code).toBe("unsupported_media_type");
    const missing = await call(target, { path: "/v2/anything" });
    expect(missing.status).toBe(404);
    expect(missing.json()).toMatchObject({ error_code: "route_not_found", detail: { path: "/v2/anything" } });
    const wrong = await call(target, { method: "GET", path: "/v1/models/model:predict" });
    expect(wrong.status).toBe(405);
    expect(wrong.headers["allow"]).toBe("POST");
  });

  it("serves the OpenAI-style methods the class has, and 404s the others", async () => {
    const embeddings = await call(target, {
      method: "POST",
      path: "/v1/embeddings",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ input: "hello" }),
    });
    expect(embeddings.status).toBe(200);
    expect(embeddings.json()).toEqual({ data: [{ embedding: [0.5, 0.25], index: 0 }], input: "hello" });
    const chat = await call(target, { method: "POST", path: "/v1/chat/completions", body: "{}" });
    expect(chat.status).toBe(404);
    expect(chat.json()).toMatchObject({
      error: "The model has no chat_completions method.",
      error_code: "route_not_found",
    });
  });

  it("answers readiness 200 {} and liveness true once loaded, and HEAD without a body", async () => {
    const ready = await call(target, { path: "/v1/models/model" });
    expect(ready.status).toBe(200);
    expect(ready.json()).toEqual({});
    expect((await call(target, { path: "/" })).json()).toBe(true);
    const head = await call(target, { method: "HEAD", path: "/v1/models/model" });
    expect(head.status).toBe(200);
    expect(head.headers["content-length"]).toBe("2");
    expect(head.body.length).toBe(0);
  });

  it("bounds concurrent predicts by runtime.predict_concurrency (2)", async () => {
    const gate = `open-${Date.now()}`;
    const pending = Array.from({ length: 5 }, () => predict(target, { op: "slow", gate }));
    await waitFor(
      async () => (await readFile(path.join(gates, "running"), "utf8").catch(() => "")) === "2" || undefined,
      "two running",
    );
    // Give a broken limiter every chance to let a third in before the gate opens.
    await new Promise((r) => setTimeout(r, 300));
    await writeFile(path.join(gates, gate), "");
    const peaks = (await Promise.all(pending)).map((r) => r.json().peak as number);
    expect(Math.max(...peaks)).toBe(2);
  });

  it("writes nothing into the package directory (no bytecode, no data dir)", async () => {
    expect(await snapshot(dir)).toEqual(before);
  });
});

const STREAM_MODEL = `
import asyncio, os, time, threading
from model.gate import wait_for, mark

class Model:
    def __init__(self, **kwargs):
        self._kwargs = sorted(kwargs)

    async def predict(self, model_input):
        op = model_input.get("op")
        if op == "kwargs":
            return {"kwargs": self._kwargs, "thread": threading.current_thread() is threading.main_thread()}
        if op == "gated":
            return self._gated(model_input["gate"])
        if op == "endless-async":
            return self._endless_async(model_input["tag"])
        if op == "endless-sync":
            return self._endless_sync(model_input["tag"])
        if op == "bytes":
            return (bytes([i]) for i in range(3))
        if op == "objects":
            return ({"i": i} for i in range(2))
        if op == "fails-midway":
            return self._fails_midway()
        if op == "empty":
            return (x for x in [])
        await asyncio.sleep(0)
        return model_input

    async def _gated(self, gate):
        yield "first\\n"
        while not os.path.exists(os.path.join(os.environ["GATES"], gate)):
            await asyncio.sleep(0.005)
        yield "second\\n"
        yield "third\\n"

    async def _endless_async(self, tag):
        try:
            while True:
                yield "tick\\n"
                await asyncio.sleep(0.01)
        finally:
            mark("closed-" + tag)

    def _endless_sync(self, tag):
        try:
            while True:
                yield b"tock\\n"
                time.sleep(0.01)
        finally:
            mark("closed-" + tag)

    def _fails_midway(self):
        yield "fine\\n"
        raise RuntimeError("broke while streaming")

    def chat_completions(self, model_input):
        if model_input.get("framed"):
            def framed():
                yield 'data: {"choices": [{"delta": {"content": "Hi"}}]}\\n\\n'
                yield "data: [DONE]\\n\\n"
            return framed()
        def deltas():
            for word in ["Hello", "there"]:
                yield {"choices": [{"delta": {"content": word}}]}
        return deltas()

    async def completions(self, model_input):
        for word in ["plain", "text"]:
            yield word
`;

describe("the Python host streaming generators (Unix socket)", () => {
  let proc: HostProcess;
  let target: Target;
  let gates: string;
  let socketPath: string;

  beforeAll(async () => {
    const dir = await writePackage({
      "config.yaml": "model_name: streams\nruntime:\n  predict_concurrency: 4\n",
      "model/model.py": STREAM_MODEL,
      "model/gate.py": GATE_PY,
    });
    gates = await tempDir();
    socketPath = path.join(await tempDir(), "model.sock");
    proc = spawnTrussHost([dir, "--listen", `unix:${socketPath}`], { env: { GATES: gates } });
    expect(await proc.address()).toBe(`unix:${socketPath}`);
    target = await proc.target();
    await untilReady(target);
  });

  afterAll(async () => {
    if (proc.child.exitCode === null) proc.child.kill("SIGKILL");
  });

  it("passes every keyword argument to a constructor that takes **kwargs, and awaits an async predict on the loop", async () => {
    const res = await predict(target, { op: "kwargs" });
    expect(res.json()).toEqual({
      kwargs: ["config", "data_dir", "environment", "lazy_data_resolver", "secrets"],
      thread: true,
    });
  });

  it("streams an async generator chunked, each chunk as it is yielded", async () => {
    const gate = `gate-${Date.now()}`;
    const conn = await raw(target);
    const body = JSON.stringify({ op: "gated", gate });
    conn.socket.write(
      `POST /v1/models/model:predict HTTP/1.1\r\nHost: m\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`,
    );
    // The first chunk arrives while the generator is still waiting for the gate.
    const head = await conn.until("first\n");
    expect(head).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
    expect(head.toLowerCase()).toContain("transfer-encoding: chunked\r\n");
    expect(head.toLowerCase()).toContain("content-type: text/plain; charset=utf-8\r\n");
    expect(head).not.toContain("second");
    await writeFile(path.join(gates, gate), "");
    const all = await conn.until("0\r\n\r\n");
    expect(all.slice(all.indexOf("\r\n\r\n") + 4)).toBe(
      "6\r\nfirst\n\r\n7\r\nsecond\n\r\n6\r\nthird\n\r\n0\r\n\r\n",
    );
    conn.socket.destroy();
  });

  it("gathers the stream into one JSON string for Accept: application/json", async () => {
    const gate = `gate-json-${Date.now()}`;
    await writeFile(path.join(gates, gate), "");
    const res = await predict(target, { op: "gated", gate }, { accept: "application/json" });
    expect(res.headers["content-type"]).toBe("application/json");
    expect(res.json()).toBe("first\nsecond\nthird\n");
  });

  it("streams bytes as application/octet-stream and other values as JSON lines", async () => {
    const bytes = await predict(target, { op: "bytes" });
    expect(bytes.headers["content-type"]).toBe("application/octet-stream");
    expect([...bytes.body]).toEqual([0, 1, 2]);
    const objects = await predict(target, { op: "objects" });
    expect(objects.headers["content-type"]).toBe("application/x-ndjson");
    expect(objects.text).toBe('{"i":0}\n{"i":1}\n');
    const empty = await predict(target, { op: "empty" });
    expect(empty.status).toBe(200);
    expect(empty.text).toBe("");
  });

  it.each(["endless-async", "endless-sync"])(
    "closes the %s generator when the client goes away mid-stream",
    async (op) => {
      const tag = `${op}-${Date.now()}`;
      const conn = await raw(target);
      const body = JSON.stringify({ op, tag });
      conn.socket.write(
        `POST /v1/models/model:predict HTTP/1.1\r\nHost: m\r\nContent-Length: ${body.length}\r\n\r\n${body}`,
      );
      await conn.until("t");
      conn.socket.destroy();
      // The generator's finally ran: it was closed rather than left producing for nobody.
      await waitFor(
        () => existsSync(path.join(gates, `closed-${tag}`)) || undefined,
        "the generator's finally",
      );
      // ... and the slot it held is free again.
      expect((await predict(target, { op: "echo" })).status).toBe(200);
    },
  );

  it("cuts the connection when a generator raises after the first chunk", async () => {
    const conn = await raw(target);
    const body = JSON.stringify({ op: "fails-midway" });
    conn.socket.write(
      `POST /v1/models/model:predict HTTP/1.1\r\nHost: m\r\nContent-Length: ${body.length}\r\n\r\n${body}`,
    );
    await conn.closed;
    // The answer started (200 and the first chunk) and ends without the last chunk: a client sees the error.
    expect(conn.received()).toMatch(/^HTTP\/1\.1 200 OK/);
    expect(conn.received()).toContain("fine\n");
    expect(conn.received()).not.toContain("0\r\n\r\n");
    await waitFor(
      () => proc.errors().find((l) => String((l as any).err?.message).includes("broke while streaming")),
      "the streaming failure line",
    );
  });

  it("streams OpenAI-style generators as Server-Sent Events, framing values and passing framed text through", async () => {
    const chat = await call(target, { method: "POST", path: "/v1/chat/completions", body: "{}" });
    expect(chat.headers["content-type"]).toBe("text/event-stream");
    expect(chat.text).toBe(
      'data: {"choices":[{"delta":{"content":"Hello"}}]}\n\n' +
        'data: {"choices":[{"delta":{"content":"there"}}]}\n\n' +
        "data: [DONE]\n\n",
    );
    const framed = await call(target, {
      method: "POST",
      path: "/v1/chat/completions",
      body: '{"framed": true}',
    });
    expect(framed.text).toBe('data: {"choices": [{"delta": {"content": "Hi"}}]}\n\ndata: [DONE]\n\n');
    const completions = await call(target, { method: "POST", path: "/v1/completions", body: "{}" });
    expect(completions.text).toBe("data: plain\n\ndata: text\n\ndata: [DONE]\n\n");
    expect((await call(target, { method: "POST", path: "/v1/embeddings", body: "{}" })).status).toBe(404);
  });

  it("removes its socket file when it stops", async () => {
    proc.child.kill("SIGTERM");
    expect((await proc.exited).code).toBe(0);
    expect(existsSync(socketPath)).toBe(false);
  });
});

describe("readiness fed by is_healthy()", () => {
  it("is 503 while load() runs, then follows is_healthy() (also when it raises)", async () => {
    const gates = await tempDir();
    const dir = await writePackage({
      "config.yaml": "",
      "model/gate.py": GATE_PY,
      "model/model.py": `
import os
from model.gate import wait_for, GATES

class Model:
    def load(self):
        wait_for("loaded")

    def is_healthy(self):
        state = (GATES / "health").read_text() if (GATES / "health").exists() else "ok"
        if state == "raise":
            raise RuntimeError("health check exploded")
        return state == "ok"

    def predict(self, model_input):
        return model_input
`,
    });
    const proc = host([dir, "--listen", "127.0.0.1:0"], { env: { GATES: gates } });
    const target = await proc.target();
    const loading = await call(target, { path: "/v1/models/model" });
    expect(loading.status).toBe(503);
    expect(loading.headers["x-baseten-error-code"]).toBe("600");
    expect(loading.json()).toMatchObject({
      error: "Model with name model is not ready.",
      detail: { state: "loading" },
    });
    expect((await predict(target, {})).status).toBe(503);
    expect((await call(target, { path: "/" })).status).toBe(200);
    await writeFile(path.join(gates, "loaded"), "");
    await untilReady(target);
    await writeFile(path.join(gates, "health"), "sick");
    expect((await call(target, { path: "/v1/models/model" })).json()).toMatchObject({
      detail: { state: "unhealthy" },
    });
    await writeFile(path.join(gates, "health"), "raise");
    expect((await call(target, { path: "/v1/models/model" })).status).toBe(503);
    await waitFor(() => proc.stdout.find((l) => l.msg === "health check failed"), "the health check line");
    await writeFile(path.join(gates, "health"), "ok");
    expect((await call(target, { path: "/v1/models/model" })).status).toBe(200);
  });
});

describe("predict_concurrency's queue", () => {
  it("answers 429 once every slot is busy and --max-queued callers wait", async () => {
    const gates = await tempDir();
    const dir = await writePackage({
      "config.yaml": "runtime:\n  predict_concurrency: 1\n",
      "model/gate.py": GATE_PY,
      "model/model.py": `
from model.gate import wait_for, mark

class Model:
    def predict(self, model_input):
        mark("entered-" + model_input["id"])
        wait_for("open")
        return model_input["id"]
`,
    });
    const proc = host([dir, "--listen", "127.0.0.1:0", "--max-queued", "1"], { env: { GATES: gates } });
    const target = await proc.target();
    await untilReady(target);
    const first = predict(target, { id: "a" });
    await waitFor(() => existsSync(path.join(gates, "entered-a")) || undefined, "the first predict");
    const [second, third] = [predict(target, { id: "b" }), predict(target, { id: "c" })];
    const refused = await Promise.race([second, third]);
    expect(refused.status).toBe(429);
    expect(refused.json()).toMatchObject({
      error_code: "rate_limited",
      detail: { predict_concurrency: 1, max_queued: 1 },
    });
    await writeFile(path.join(gates, "open"), "");
    const statuses = (await Promise.all([first, second, third])).map((r) => r.status).sort();
    expect(statuses).toEqual([200, 200, 429]);
  });
});

describe("bad packages end the host with the runtime's exit codes and a reason", () => {
  async function failing(files: Record<string, string>, code: number, args: string[] = []) {
    const dir = await writePackage(files);
    const proc = host([dir, "--listen", "127.0.0.1:0", ...args], { env: { GATES: tmpdir() } });
    expect((await proc.exited).code).toBe(code);
    return { proc, ...lastError(proc) };
  }

  it("a syntax error in model.py: exit 3, with the file and line", async () => {
    const { msg, message, line } = await failing(
      { "config.yaml": "", "model/model.py": "class Model:\n    def predict(self, x)\n        return x\n" },
      EXIT_CODES.load_failed,
    );
    expect(msg).toBe("model load failed");
    expect(message).toMatch(/^could not import model\/model\.py: SyntaxError: .*\(model\.py, line 2\)$/);
    expect(line["err"]["stack"]).toContain("def predict(self, x)");
  });

  it("load() that raises: exit 3 with the traceback's last line", async () => {
    const { message, line } = await failing(
      {
        "config.yaml": "",
        "model/model.py":
          "class Model:\n    def load(self):\n        raise RuntimeError('weights missing at /models/nowhere.bin')\n    def predict(self, x):\n        return x\n",
      },
      EXIT_CODES.load_failed,
    );
    expect(message).toBe("RuntimeError: weights missing at /models/nowhere.bin");
    expect(line["err"]["stack"]).toMatch(/model\.py", line 3, in load/);
  });

  it("a secret the model reads at load but that has no value: exit 3 naming the secret", async () => {
    const { message } = await failing(
      {
        "config.yaml": "secrets:\n  hf_access_token: null\n",
        "model/model.py":
          "class Model:\n    def __init__(self, secrets):\n        self._secrets = secrets\n    def load(self):\n        self._token = self._secrets['hf_access_token']\n    def predict(self, x):\n        return x\n",
      },
      EXIT_CODES.load_failed,
      ["--secrets-dir", "/nonexistent"],
    );
    expect(message).toMatch(/^SecretNotFound: Secret 'hf_access_token' has no value/);
  });

  it.each([
    ["no Model class", "class Other:\n    pass\n", /has no class Model$/],
    ["a class without predict", "class Model:\n    def load(self):\n        pass\n", /has no predict method/],
    [
      "predict with a request argument",
      "class Model:\n    def predict(self, model_input, request):\n        return 1\n",
      /`predict` must take one argument \(the input\) or none.*request argument is not supported/,
    ],
    [
      "an import that fails",
      "import torch\nclass Model:\n    pass\n",
      /ModuleNotFoundError: No module named 'torch'/,
    ],
    ["an import that exits", "import sys\nsys.exit(5)\n", /called exit\(5\)/],
    [
      "a constructor that raises",
      "class Model:\n    def __init__(self):\n        raise KeyError('gpu')\n    def predict(self, x):\n        return x\n",
      /^KeyError: 'gpu'$/,
    ],
  ])("%s: exit 3", async (_name, source, message) => {
    const result = await failing({ "config.yaml": "", "model/model.py": source }, EXIT_CODES.load_failed);
    expect(result.message).toMatch(message);
  });

  it.each([
    [
      "broken YAML",
      "model_name: [unclosed\n",
      /^config\.yaml is not valid YAML \(line \d+\)/,
      { key: "(document)" },
    ],
    ["an anchor", "a: &x 1\nb: 2\n", /anchors \(&name\) are not supported/, { key: "(document)" }],
    [
      "zero concurrency",
      "runtime:\n  predict_concurrency: 0\n",
      /runtime\.predict_concurrency must be a positive integer, got 0/,
      {},
    ],
    [
      "a class file outside the package",
      "model_module_dir: ../elsewhere\n",
      /model_module_dir must be a path inside the package/,
      {},
    ],
    [
      "a secret name that is a path",
      "secrets:\n  ../../etc/passwd: null\n",
      /is not a valid secret name/,
      {},
    ],
    ["a reserved variable", "environment_variables:\n  MERIDIAN_MODEL_ID: x\n", /set by the runtime/, {}],
    ["a custom server", "docker_server:\n  start_command: x\n", /docker_server is set/, {}],
  ])("%s in config.yaml: exit 4 naming the key", async (_name, config, message, detail) => {
    const { msg, line } = await failing(
      {
        "config.yaml": config,
        "model/model.py": "class Model:\n    def predict(self, x):\n        return x\n",
      },
      EXIT_CODES.invalid_package,
    );
    expect(msg).toBe("invalid model package");
    expect(line["error_code"]).toBe("invalid_model_package");
    expect(line["error"]).toMatch(message);
    expect(line["detail"]).toMatchObject({ file: "config.yaml", ...detail });
  });

  it("a package without model/model.py: exit 4", async () => {
    const { line } = await failing({ "config.yaml": "model_name: empty\n" }, EXIT_CODES.invalid_package);
    expect(line["error"]).toBe("the package has no model/model.py");
  });

  it("a bad command line: exit 2; a taken address: exit 1 with EADDRINUSE", async () => {
    for (const args of [
      ["--listen", "nowhere"],
      ["--listen", "unix:relative.sock"],
      ["--listen", "127.0.0.1:0", "--model-id", "ABC-1234"],
      ["--listen", "127.0.0.1:0", "--environment", "Prod_EU"],
      ["--listen", "127.0.0.1:0", "--max-queued", "-1"],
      ["--listen", "127.0.0.1:0", "--header-timeout", "0"],
      [],
    ]) {
      const proc = host([path.join(EXAMPLES, "hello-py"), ...args]);
      expect((await proc.exited).code, args.join(" ")).toBe(EXIT_CODES.usage);
      expect(proc.stderr()).toMatch(/^truss_host\.py: /);
    }
    const taken = net.createServer();
    await new Promise<void>((r) => taken.listen(0, "127.0.0.1", () => r()));
    const port = (taken.address() as net.AddressInfo).port;
    const proc = host([path.join(EXAMPLES, "hello-py"), "--listen", `127.0.0.1:${port}`]);
    expect((await proc.exited).code).toBe(EXIT_CODES.fault);
    expect(lastError(proc).msg).toBe("listen failed");
    expect(proc.stderr()).toContain('"code":"EADDRINUSE"');
    taken.close();
  });
});

describe("draining on SIGTERM", () => {
  it("finishes a prediction in flight, then exits 0; SIGINT drains too", async () => {
    const gates = await tempDir();
    const dir = await writePackage({
      "config.yaml": "",
      "model/gate.py": GATE_PY,
      "model/model.py": `
from model.gate import wait_for, mark

class Model:
    def predict(self, model_input):
        mark("entered")
        wait_for("open")
        return {"done": model_input}
`,
    });
    const proc = host([dir, "--listen", "127.0.0.1:0"], { env: { GATES: gates } });
    const target = await proc.target();
    await untilReady(target);
    const pending = predict(target, 7);
    await waitFor(() => existsSync(path.join(gates, "entered")) || undefined, "the predict");
    proc.child.kill("SIGTERM");
    await waitFor(() => proc.stdout.find((l) => l.msg === "draining"), "the draining line");
    // Not ready while draining, and no longer accepting connections.
    await writeFile(path.join(gates, "open"), "");
    const res = await pending;
    expect(res.status).toBe(200);
    expect(res.headers["connection"]).toBe("close");
    expect(res.json()).toEqual({ done: 7 });
    expect(await proc.exited).toEqual({ code: 0, signal: null });
    expect(proc.stdout.map((l) => l.msg)).toContain("stopped");

    const again = host([path.join(EXAMPLES, "hello-py"), "--listen", "127.0.0.1:0"]);
    await untilReady(await again.target());
    again.child.kill("SIGINT");
    expect((await again.exited).code).toBe(0);
  });
});

describe("the examples", () => {
  it("hello-py greets from its environment; stream-py streams its words", async () => {
    // PYTHONSAFEPATH (3.11+) keeps the script's directory off sys.path; the host finds its modules anyway.
    const hello = host(
      [path.join(EXAMPLES, "hello-py"), "--listen", "127.0.0.1:0", "--environment", "prod-eu"],
      {
        env: { PYTHONSAFEPATH: "1" },
      },
    );
    const t1 = await hello.target();
    await untilReady(t1);
    expect((await predict(t1, { prompt: "Hello, world!" })).json()).toEqual({
      message: "Hello from prod-eu",
      environment: "prod-eu",
      model_id: null,
      echo: { prompt: "Hello, world!" },
    });
    // Its identity from MERIDIAN_* variables, as a plane's driver may set it instead of flags.
    const stream = host([path.join(EXAMPLES, "stream-py"), "--listen", "127.0.0.1:0"], {
      env: { MERIDIAN_ENVIRONMENT: "prod-eu", MERIDIAN_MODEL_ID: "zzzz9999" },
    });
    const t2 = await stream.target();
    await untilReady(t2);
    const res = await predict(t2, { prompt: "one two three", delay_ms: 0 });
    expect(res.headers["transfer-encoding"]).toBe("chunked");
    expect(res.text).toBe("one\ntwo\nthree\n[done in prod-eu]\n");
    expect(stream.stdout.find((l) => l.msg === "listening")).toMatchObject({
      environment: "prod-eu",
      model_id: "zzzz9999",
    });
  });
});

describe("the host's error codes", () => {
  it("are the catalog's, with the catalog's statuses (src/core/errors.ts)", async () => {
    const source = await readFile(path.join(import.meta.dirname, "_meridian_host", "http11.py"), "utf8");
    const rows = [...source.matchAll(/^ {4}"([a-z_]+)": \((\d{3}), "([^"]+)", (\d{3})\),$/gm)];
    expect(rows.length).toBeGreaterThan(10);
    for (const [, code, status, message] of rows) {
      const entry = ERRORS[code as keyof typeof ERRORS];
      expect(entry, `${code} is in src/core/errors.ts`).toBeDefined();
      expect(entry.status, code).toBe(Number(status));
      expect(entry.message, code).toBe(message);
    }
  });
});

describe("interpreters", () => {
  it(`runs on ${DEBIAN_PYTHON} and on every pyenv Python from 3.8 up`, async () => {
    const { discoverPythons } = await import("../python.ts");
    const { interpreters } = await discoverPythons({ home: process.env["HOME"] ?? null });
    const usable = interpreters.filter((i) => i.version[1] >= 8);
    expect(usable.length).toBeGreaterThan(0);
    for (const interpreter of usable) {
      const proc = host([path.join(EXAMPLES, "hello-py"), "--listen", "127.0.0.1:0"], {
        python: interpreter.path,
      });
      const target = await proc.target();
      await untilReady(target);
      const res = await predict(target, { v: interpreter.version });
      expect(res.json().echo, interpreter.path).toEqual({ v: interpreter.version });
      proc.child.kill("SIGTERM");
      expect((await proc.exited).code, interpreter.path).toBe(0);
    }
  }, 120_000);
});

describe("the lifeline of a plane that runs replicas without a sandbox", () => {
  it("exits with 1 once the pipe on MERIDIAN_LIFELINE_FD reads end-of-file, and the model never sees the variable", async () => {
    const { spawn } = await import("node:child_process");
    const { TRUSS_HOST_SCRIPT } = await import("../python.ts");
    const dir = await writePackage({
      "config.yaml": "model_name: lifeline\n",
      "model/model.py":
        "import os\n\nclass Model:\n    def predict(self, model_input):\n        return {'lifeline': os.environ.get('MERIDIAN_LIFELINE_FD')}\n",
    });
    temps.push(dir);
    const child = spawn(DEBIAN_PYTHON, ["-B", "-s", TRUSS_HOST_SCRIPT, dir, "--listen", "127.0.0.1:0"], {
      env: { PATH: process.env["PATH"], MERIDIAN_LIFELINE_FD: "3" },
      stdio: ["ignore", "pipe", "pipe", "pipe"],
    });
    let out = "";
    child.stdout!.setEncoding("utf8").on("data", (s: string) => (out += s));
    child.stderr!.setEncoding("utf8").on("data", (s: string) => (out += s));
    const exited = new Promise<number | null>((ok) => child.once("exit", (code) => ok(code)));
    const address = await waitFor(() => /"address":"([^"]+)"/.exec(out)?.[1], "the listening line");
    const [hostName, port] = address.split(":");
    const target = { host: hostName!, port: Number(port) };
    await untilReady(target);
    expect((await predict(target, {})).json()).toEqual({ lifeline: null });
    // The plane is gone: the kernel closes its end of the pipe.
    (child.stdio[3] as net.Socket).destroy();
    expect(await exited).toBe(EXIT_CODES.fault);
    expect(out).toContain("the plane that started this replica is gone; exiting");
  }, 30_000);
});
