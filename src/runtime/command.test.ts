// `meridian serve-model` as the plane's driver runs it: the real `node bin/meridian.js` child process on
// port 0, its listening line, exit codes and stderr for each failure, and draining on SIGTERM. Also the
// pure parsing of its flags.

import { closeSync, openSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import http from "node:http";
import { tmpdir } from "node:os";
import path from "node:path";
import type { Readable } from "node:stream";
import { afterEach, describe, expect, it } from "vitest";
import { EXIT_CODES } from "../core/runtime-exit-codes.ts";
import { LIFELINE_ENV } from "../lib/lifeline.ts";
import { exitCode, parseListen, parseServeModelOptions } from "./command.ts";
import { PATHS } from "./server.ts";
import { EXAMPLES, type RuntimeProcess, spawnServeModel, waitFor, writePackage } from "./testing.ts";

const children: RuntimeProcess[] = [];

afterEach(() => {
  for (const c of children.splice(0)) if (c.child.exitCode === null) c.child.kill("SIGKILL");
});

function serve(
  args: string[],
  env: Record<string, string | undefined> = {},
  extraStdio: Array<"pipe" | "ignore" | number> = [],
): RuntimeProcess {
  const proc = spawnServeModel(args, env, extraStdio);
  children.push(proc);
  return proc;
}

async function untilReady(address: string): Promise<void> {
  await waitFor(
    async () => (await fetch(`http://${address}${PATHS.readiness}`)).status === 200 || undefined,
    "readiness",
  );
}

describe("parseListen", () => {
  it.each([
    ["127.0.0.1:0", { host: "127.0.0.1", port: 0 }],
    ["localhost:8080", { host: "localhost", port: 8080 }],
    ["[::1]:65535", { host: "::1", port: 65535 }],
    ["unix:/home/replica/.meridian.sock", { path: "/home/replica/.meridian.sock" }],
    [`unix:/${"a".repeat(106)}`, { path: `/${"a".repeat(106)}` }],
  ])("parses %s", (text, expected) => {
    expect(parseListen(text)).toEqual(expected);
  });

  it.each([
    "8080",
    "127.0.0.1",
    "127.0.0.1:65536",
    "127.0.0.1:-1",
    ":8080",
    "::1:80",
    "host:80x",
    "a b:1",
    "unix:relative.sock",
    "unix:",
    // One byte over what a socket path may hold: a clear refusal instead of the kernel's EINVAL.
    `unix:/${"a".repeat(107)}`,
  ])("refuses %s", (text) => {
    expect(parseListen(text)).toBeNull();
  });
});

describe("parseServeModelOptions", () => {
  it("takes flags over MERIDIAN_* variables and freezes the result", () => {
    const outcome = parseServeModelOptions(
      "pkg",
      { listen: "127.0.0.1:0", environment: "prod-eu" },
      { MERIDIAN_ENVIRONMENT: "staging", MERIDIAN_MODEL_ID: "abcd1234", MERIDIAN_DEPLOYMENT_ID: "" },
    );
    expect(outcome).toEqual({
      ok: true,
      options: {
        dir: "pkg",
        listen: { host: "127.0.0.1", port: 0 },
        identity: { modelId: "abcd1234", deploymentId: null, environment: "prod-eu" },
        serverPort: null,
        maxQueued: 64,
      },
    });
    expect(outcome.ok && Object.isFrozen(outcome.options) && Object.isFrozen(outcome.options.identity)).toBe(
      true,
    );
  });

  it.each([
    [{ listen: "nowhere" }, /--listen must be HOST:PORT/],
    [{ listen: "127.0.0.1:0", modelId: "ABC-1234" }, /model id "ABC-1234"/],
    [{ listen: "127.0.0.1:0", environment: "Prod_EU" }, /lowercase letters, digits and hyphens/],
    [{ listen: "127.0.0.1:0", deploymentId: "a b" }, /deployment id/],
    [{ listen: "127.0.0.1:0", serverPort: "http" }, /--server-port/],
    [{ listen: "127.0.0.1:0", maxQueued: "-1" }, /--max-queued/],
  ])("refuses %o", (flags, message) => {
    const outcome = parseServeModelOptions("pkg", flags, {});
    expect(outcome.ok).toBe(false);
    if (!outcome.ok) expect(outcome.message).toMatch(message);
  });
});

describe("exitCode", () => {
  it("maps each outcome to the driver's exit code", () => {
    expect(exitCode({ kind: "stopped" })).toBe(0);
    expect(exitCode({ kind: "load_failed", error: new Error("x") })).toBe(3);
    const exited = {
      kind: "model_server_exited",
      code: 1,
      signal: null,
      stderrTail: [] as string[],
    } as const;
    expect(exitCode({ ...exited, wasReady: false })).toBe(EXIT_CODES.model_server_failed);
    expect(exitCode({ ...exited, wasReady: true })).toBe(EXIT_CODES.model_server_crashed);
  });
});

describe("meridian serve-model (child process)", () => {
  it("prints its bound address, serves the JavaScript example with its variables, drains on SIGTERM", async () => {
    const proc = serve(
      [
        path.join(EXAMPLES, "hello-js"),
        "--listen",
        "127.0.0.1:0",
        "--model-id",
        "abcd1234",
        "--deployment-id",
        "dep1",
        "--environment",
        "prod-eu",
      ],
      { GREETING: undefined },
    );
    const address = await proc.address();
    expect(address).toMatch(/^127\.0\.0\.1:[1-9]\d*$/);
    expect(proc.stdout.find((l) => l.msg === "listening")).toMatchObject({
      msg: "listening",
      address,
      model_id: "abcd1234",
      deployment_id: "dep1",
      environment: "prod-eu",
    });
    await untilReady(address);

    const res = await fetch(`http://${address}${PATHS.predict}`, { method: "POST", body: '{"q":1}' });
    // "Hello" comes from config.yaml's environment_variables; the model would say "Hi" without it.
    expect(await res.json()).toEqual({
      message: "Hello from prod-eu",
      environment: "prod-eu",
      model_id: "abcd1234",
      echo: { q: 1 },
    });

    proc.child.kill("SIGTERM");
    expect(await proc.exited).toEqual({ code: 0, signal: null });
    expect(proc.stdout.map((l) => l.msg)).toContain("stopped");
  });

  it("takes its identity from MERIDIAN_* variables when no flags are given", async () => {
    const proc = serve([path.join(EXAMPLES, "hello-js"), "--listen", "127.0.0.1:0"], {
      MERIDIAN_ENVIRONMENT: "staging",
      MERIDIAN_MODEL_ID: "zzzz9999",
    });
    const address = await proc.address();
    await untilReady(address);
    const res = await fetch(`http://${address}${PATHS.predict}`, { method: "POST", body: "{}" });
    expect(await res.json()).toMatchObject({ environment: "staging", model_id: "zzzz9999" });
    proc.child.kill("SIGINT");
    expect((await proc.exited).code).toBe(0);
  });

  it("finishes an in-flight prediction before exiting on SIGTERM", async () => {
    const dir = await writePackage({
      "config.yaml": "",
      // A relative import: the package has no package.json, and both files must still load as ES modules.
      "model/sleep.js": "export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));\n",
      "model/model.js": `import { sleep } from "./sleep.js";
export class Model {
  async predict(input) { await sleep(400); return { done: input }; }
}
`,
    });
    const proc = serve([dir, "--listen", "127.0.0.1:0"]);
    const address = await proc.address();
    await untilReady(address);
    const pending = fetch(`http://${address}${PATHS.predict}`, { method: "POST", body: "7" });
    await waitFor(() => proc.child.pid, "pid");
    await new Promise((r) => setTimeout(r, 100));
    proc.child.kill("SIGTERM");
    const res = await pending;
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ done: 7 });
    expect((await proc.exited).code).toBe(0);
  });

  it("exits 3 with the load() error and its stack on stderr", async () => {
    const dir = await writePackage({
      "config.yaml": "model_name: broken\n",
      "model/model.js": `export class Model {
  async load() { throw new Error("checkpoint weights.bin not found"); }
  predict() {}
}
`,
    });
    const proc = serve([dir, "--listen", "127.0.0.1:0"]);
    expect((await proc.exited).code).toBe(EXIT_CODES.load_failed);
    expect(EXIT_CODES.load_failed).toBe(3);
    const lines = proc
      .stderr()
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    const failure = lines.find((l) => l["msg"] === "model load failed");
    expect(failure).toMatchObject({ level: 50, err: { message: "checkpoint weights.bin not found" } });
    expect(String((failure?.["err"] as { stack?: string } | undefined)?.stack)).toMatch(/model\.js:2/);
  });

  it("exits 4 naming the bad key of a broken config.yaml", async () => {
    const dir = await writePackage({
      "config.yaml": "model_name: m\nruntime:\n  predict_concurrency: lots\n",
      "model/model.js": "export class Model { predict(x) { return x; } }\n",
    });
    const proc = serve([dir, "--listen", "127.0.0.1:0"]);
    expect((await proc.exited).code).toBe(EXIT_CODES.invalid_package);
    const line = JSON.parse(proc.stderr().trim()) as Record<string, unknown>;
    expect(line).toMatchObject({
      msg: "invalid model package",
      error_code: "invalid_model_package",
      error: 'config.yaml: runtime.predict_concurrency must be a positive integer, got "lots"',
      detail: { file: "config.yaml", key: "runtime.predict_concurrency" },
    });
    expect(proc.stdout.some((l) => l.msg === "listening")).toBe(false);
  });

  it("exits non-zero with the server's last words when start_command exits", async () => {
    const dir = await writePackage({
      "config.yaml": `docker_server:
  start_command: |-
    echo "ModuleNotFoundError: No module named 'torch'" >&2; exit 1
  server_port: 8000
  predict_endpoint: /predict
  readiness_endpoint: /ready
  liveness_endpoint: /live
`,
    });
    const proc = serve([dir, "--listen", "127.0.0.1:0"]);
    expect((await proc.exited).code).toBe(EXIT_CODES.model_server_failed);
    const failure = proc
      .stderr()
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .find((l) => l["msg"] === "model server exited");
    expect(failure).toMatchObject({
      exit_code: 1,
      was_ready: false,
      stderr_tail: ["ModuleNotFoundError: No module named 'torch'"],
    });
  });

  it("runs the Python example with --server-port 0 and stops it on SIGTERM", async () => {
    const proc = serve(
      [
        path.join(EXAMPLES, "custom-python"),
        "--listen",
        "127.0.0.1:0",
        "--server-port",
        "0",
        "--environment",
        "prod-uk",
      ],
      { LOAD_SECONDS: "0.1" },
    );
    const address = await proc.address();
    await untilReady(address);
    const res = await fetch(`http://${address}${PATHS.predict}`, { method: "POST", body: '{"n":2}' });
    expect(await res.json()).toMatchObject({
      message: "Bonjour from prod-uk",
      echo: { n: 2 },
      server: "python",
    });
    const pythonPid = proc.stdout.find((l) => l.msg === "model server started")?.["child_pid"] as number;
    proc.child.kill("SIGTERM");
    expect((await proc.exited).code).toBe(0);
    expect(() => process.kill(pythonPid, 0)).toThrow();
  });

  it("exits 2 on a bad command line and 1 when the address is taken", async () => {
    const bad = serve([path.join(EXAMPLES, "hello-js"), "--listen", "nowhere"]);
    expect((await bad.exited).code).toBe(EXIT_CODES.usage);
    expect(bad.stderr()).toMatch(/--listen must be HOST:PORT/);

    const first = serve([path.join(EXAMPLES, "hello-js"), "--listen", "127.0.0.1:0"]);
    const address = await first.address();
    const second = serve([path.join(EXAMPLES, "hello-js"), "--listen", address]);
    expect((await second.exited).code).toBe(EXIT_CODES.fault);
    expect(second.stderr()).toMatch(/"msg":"listen failed"/);
    expect(second.stderr()).toMatch(/EADDRINUSE/);
    first.child.kill("SIGTERM");
    await first.exited;
  });
});

/** One HTTP exchange over a Unix socket. */
function overSocket(socketPath: string, method: string, path: string, body?: string) {
  return new Promise<{ status: number; text: string }>((resolve, reject) => {
    const req = http.request({ socketPath, method, path }, (res) => {
      let text = "";
      res.setEncoding("utf8").on("data", (c: string) => {
        text += c;
      });
      res.on("end", () => resolve({ status: res.statusCode ?? 0, text }));
    });
    req.on("error", reject);
    req.end(body);
  });
}

describe("meridian serve-model as a plane's replica", () => {
  it("serves on a Unix socket (--listen unix:/path), as under egress deny", async () => {
    const dir = await mkdtemp(path.join(tmpdir(), "meridian-sock-"));
    const socket = path.join(dir, "replica.sock");
    const proc = serve([path.join(EXAMPLES, "hello-js"), "--listen", `unix:${socket}`]);
    expect(await proc.address()).toBe(`unix:${socket}`);
    await waitFor(
      async () =>
        (await overSocket(socket, "GET", PATHS.readiness).catch(() => null))?.status === 200 || undefined,
      "readiness over the socket",
    );
    const answer = await overSocket(socket, "POST", PATHS.predict, '{"q":1}');
    expect(answer.status).toBe(200);
    expect(JSON.parse(answer.text)).toMatchObject({ message: "Hello from no environment", echo: { q: 1 } });
    proc.child.kill("SIGTERM");
    expect(await proc.exited).toEqual({ code: 0, signal: null });
    await rm(dir, { recursive: true, force: true });
  });

  it("closes a descriptor it inherited without close-on-exec before any model code runs", async () => {
    const secret = await mkdtemp(path.join(tmpdir(), "meridian-secret-"));
    const dir = await writePackage({
      "config.yaml": "model_name: fds\n",
      "model/model.js": `import fs from "node:fs";
export class Model {
  predict() {
    return fs.readdirSync("/proc/self/fd").map((fd) => { try { return fs.readlinkSync("/proc/self/fd/" + fd); } catch { return null; } });
  }
}
`,
    });
    const held = openSync(secret, "r");
    try {
      // Descriptors 3…19 unused, then the directory at 20: above the ones Node marks close-on-exec itself.
      const proc = serve([dir, "--listen", "127.0.0.1:0"], {}, [...Array(17).fill("ignore"), held]);
      const address = await proc.address();
      await untilReady(address);
      const res = await fetch(`http://${address}${PATHS.predict}`, { method: "POST", body: "{}" });
      const targets = (await res.json()) as Array<string | null>;
      expect(targets.length).toBeGreaterThan(3);
      expect(targets).not.toContain(secret);
    } finally {
      closeSync(held);
      await rm(secret, { recursive: true, force: true });
    }
  });

  it("exits when its lifeline is gone (the plane died), killing its custom server", async () => {
    const proc = serve(
      [path.join(EXAMPLES, "custom-python"), "--listen", "127.0.0.1:0", "--server-port", "0"],
      { LOAD_SECONDS: "0.1", [LIFELINE_ENV]: "3" },
      ["pipe"],
    );
    const address = await proc.address();
    await untilReady(address);
    const pythonPid = proc.stdout.find((l) => l.msg === "model server started")?.["child_pid"] as number;
    expect(() => process.kill(pythonPid, 0)).not.toThrow();
    // What the kernel does to the plane's end when the plane dies, however it died.
    (proc.child.stdio[3] as Readable).destroy();
    expect((await proc.exited).code).toBe(EXIT_CODES.fault);
    expect(proc.stderr()).toMatch(/the plane that started this replica is gone/);
    await waitFor(
      () => {
        try {
          process.kill(pythonPid, 0);
          return undefined;
        } catch {
          return true;
        }
      },
      "the custom server to be gone",
      5_000,
    );
  });
});
