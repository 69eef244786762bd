// The Python host against hostile clients and in a sandbox: malformed and smuggling requests, huge heads,
// slowloris and slow bodies, pipelining, connection floods and JSON built to hurt, each answered with the
// catalog's error (or a close) while the host keeps serving; and the host running with its package
// read-only, no network but a Unix socket, as a replica runs under bubblewrap. Debian's /usr/bin/python3.

import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TRUSS_HOST_SCRIPT } from "../python.ts";
import { type LogLine, waitFor, writePackage } from "../testing.ts";
import {
  call,
  DEBIAN_PYTHON,
  type HostProcess,
  predict,
  type RawConnection,
  raw,
  spawnTrussHost,
  type Target,
  untilReady,
} from "./testing.ts";

const ECHO = {
  "config.yaml": "model_name: echo\nruntime:\n  predict_concurrency: 4\n",
  "model/model.py": "class Model:\n    def predict(self, model_input):\n        return model_input\n",
};

let proc: HostProcess;
let target: Target;

beforeAll(async () => {
  const dir = await writePackage(ECHO);
  proc = spawnTrussHost([
    dir,
    "--listen",
    "127.0.0.1:0",
    "--header-timeout",
    "1",
    "--keep-alive-timeout",
    "1",
    "--io-timeout",
    "1",
    "--max-body-bytes",
    "1024",
    "--max-connections",
    "8",
  ]);
  target = await proc.target();
  await untilReady(target);
});

afterAll(() => {
  if (proc.child.exitCode === null) proc.child.kill("SIGKILL");
});

/** Sends `request` on a fresh connection and waits for the server to close it. */
async function exchange(request: string): Promise<{ text: string; status: number; body: any }> {
  const conn = await raw(target);
  conn.socket.write(request);
  await conn.closed;
  return parse(conn.received());
}

function parse(text: string): { text: string; status: number; body: any } {
  const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0);
  const body = text.slice(text.indexOf("\r\n\r\n") + 4);
  let json: any = null;
  try {
    json = JSON.parse(body);
  } catch {
    json = body;
  }
  return { text, status, body: json };
}

async function stillServing(): Promise<void> {
  const res = await predict(target, { still: "serving" });
  expect(res.status).toBe(200);
  expect(res.json()).toEqual({ still: "serving" });
}

const POST = "POST /v1/models/model:predict HTTP/1.1\r\nHost: m\r\n";

describe("malformed and smuggling requests get 400 and a closed connection", () => {
  it.each([
    [
      "both Content-Length and Transfer-Encoding",
      `${POST}Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}`,
    ],
    ["a transfer coding other than chunked", `${POST}Transfer-Encoding: gzip\r\n\r\n`],
    ["two Content-Length fields", `${POST}Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}`],
    ["a Content-Length that is not a number", `${POST}Content-Length: 2x\r\n\r\n{}`],
    ["a negative Content-Length", `${POST}Content-Length: -1\r\n\r\n`],
    [
      "a chunk size that is not hexadecimal",
      `${POST}Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n`,
    ],
    ["a chunk without its CRLF", `${POST}Transfer-Encoding: chunked\r\n\r\n2\r\n{}XX0\r\n\r\n`],
    ["obsolete line folding", `${POST}X-A: one\r\n two\r\nContent-Length: 2\r\n\r\n{}`],
    ["a header without a colon", `${POST}NoColonHere\r\n\r\n`],
    ["a space before the colon", `${POST}Content-Length : 2\r\n\r\n{}`],
    ["a control character in a value", `${POST}X-A: a\x01b\r\n\r\n`],
    ["a request line with four parts", "GET / HTTP/1.1 extra\r\nHost: m\r\n\r\n"],
    ["an absolute-form target", "GET http://evil.example/ HTTP/1.1\r\nHost: m\r\n\r\n"],
    ["HTTP/2's preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"],
    ["HTTP/0.9", "GET /\r\n\r\n"],
    ["an HTTP/1.1 request without Host", "GET / HTTP/1.1\r\n\r\n"],
  ])("%s", async (_name, request) => {
    const answer = await exchange(request);
    expect(answer.status, answer.text).toBe(400);
    expect(answer.body).toMatchObject({ error_code: "invalid_request" });
    expect(answer.text.toLowerCase()).toContain("connection: close\r\n");
    expect(answer.text.toLowerCase()).toContain("x-baseten-error-code: 700\r\n");
    await stillServing();
  });
});

describe("limits", () => {
  it("answers a head over 16 KiB, or with over 100 fields, with 431", async () => {
    const big = await exchange(`${POST}X-Big: ${"a".repeat(20 * 1024)}\r\n\r\n`);
    expect(big.status).toBe(431);
    expect(big.body).toMatchObject({ error_code: "headers_too_large", detail: { limit_bytes: 16384 } });
    const many = Array.from({ length: 101 }, (_, i) => `X-${i}: ${i}\r\n`).join("");
    const fields = await exchange(`GET / HTTP/1.1\r\nHost: m\r\n${many}\r\n`);
    expect(fields.status).toBe(431);
    expect(fields.body).toMatchObject({ detail: { limit_fields: 100 } });
    // A head that never ends is cut at the limit, not buffered for ever.
    const endless = await raw(target);
    endless.socket.write(POST);
    for (let i = 0; i < 40 && !endless.socket.destroyed; i++)
      endless.socket.write(`X-${i}: ${"b".repeat(1000)}\r\n`);
    await endless.closed;
    expect(parse(endless.received()).status).toBe(431);
    await stillServing();
  });

  it("lets a client that keeps sending after its refusal read the refusal (a lingering close, no reset)", async () => {
    // Refused at once (declared too large), while the client goes on writing megabytes it was never asked
    // for: closing straight away would reset the connection and could drop the 413 before it is read.
    for (let round = 0; round < 5; round++) {
      const conn = await raw(target);
      conn.socket.write(`${POST}Content-Length: ${64 * 1024 * 1024}\r\n\r\n`);
      const chunk = Buffer.alloc(64 * 1024, 0x61);
      for (let i = 0; i < 64 && !conn.socket.destroyed; i++) conn.socket.write(chunk);
      await conn.closed;
      expect(parse(conn.received()).status, `round ${round}`).toBe(413);
    }
    await stillServing();
  });

  it("answers a body over --max-body-bytes with 413, chunked or not, without asking for it", async () => {
    const declared = await exchange(`${POST}Content-Length: 2000\r\nExpect: 100-continue\r\n\r\n`);
    expect(declared.status).toBe(413);
    expect(declared.text).not.toContain("100 Continue");
    expect(declared.body).toMatchObject({ error_code: "payload_too_large", detail: { limit_bytes: 1024 } });
    const chunk = `400\r\n${"x".repeat(1024)}\r\n`;
    const chunked = await exchange(`${POST}Transfer-Encoding: chunked\r\n\r\n${chunk}${chunk}0\r\n\r\n`);
    expect(chunked.status).toBe(413);
    await stillServing();
  });

  it("accepts a chunked body, and Expect: 100-continue; refuses other expectations with 417", async () => {
    const conn = await raw(target);
    conn.socket.write(
      `${POST}Transfer-Encoding: chunked\r\n\r\n5\r\n{"a":\r\n3;ext=1\r\n 1}\r\n0\r\nTrailer: x\r\n\r\n`,
    );
    const answer = parse(await conn.until("}"));
    expect(answer.status).toBe(200);
    expect(answer.body).toEqual({ a: 1 });
    conn.socket.destroy();

    const expecting = await raw(target);
    expecting.socket.write(`${POST}Content-Length: 2\r\nExpect: 100-continue\r\n\r\n`);
    await expecting.until("HTTP/1.1 100 Continue\r\n\r\n");
    expecting.socket.write("[]");
    expect(parse((await expecting.until("[]")).replace("HTTP/1.1 100 Continue\r\n\r\n", "")).status).toBe(
      200,
    );
    expecting.socket.destroy();

    const odd = await exchange(`${POST}Content-Length: 2\r\nExpect: 200-ok\r\n\r\n{}`);
    expect(odd.status).toBe(417);
    expect(odd.body).toMatchObject({ error_code: "expectation_failed" });
  });

  it("refuses connections over --max-connections with 503, and takes new ones once they close", async () => {
    const held: RawConnection[] = [];
    for (let i = 0; i < 8; i++) held.push(await raw(target));
    const refused = await raw(target);
    await refused.closed;
    expect(parse(refused.received()).status).toBe(503);
    expect(parse(refused.received()).body).toMatchObject({ error_code: "service_unavailable" });
    for (const c of held) c.socket.destroy();
    await waitFor(
      async () => (await predict(target, {}).catch(() => null))?.status === 200 || undefined,
      "a free slot",
    );
  });
});

describe("slow and vanishing clients", () => {
  it("cuts a head trickled byte by byte (slowloris) with 408 after --header-timeout", async () => {
    const conn = await raw(target);
    conn.socket.write(POST);
    const trickle = setInterval(() => conn.socket.write("X"), 100);
    await conn.closed;
    clearInterval(trickle);
    const answer = parse(conn.received());
    expect(answer.status).toBe(408);
    expect(answer.body).toMatchObject({ error_code: "request_timeout" });
  });

  it("cuts a body that stops arriving with 408 after --io-timeout", async () => {
    const answer = await exchange(`${POST}Content-Length: 100\r\n\r\n{"partial":`);
    expect(answer.status).toBe(408);
    expect(answer.body.error).toMatch(/body was not received in time/);
  });

  it("closes a kept-alive connection left idle for --keep-alive-timeout, without an answer", async () => {
    const conn = await raw(target);
    conn.socket.write(`${POST}Content-Length: 2\r\n\r\n{}`);
    await conn.until("{}");
    await conn.closed;
    expect(conn.received().match(/HTTP\/1\.1/g)).toHaveLength(1);
  });

  it("keeps serving after a client leaves in the middle of its body", async () => {
    const conn = await raw(target);
    conn.socket.write(`${POST}Content-Length: 500\r\n\r\n{"a": "`);
    conn.socket.destroy();
    await stillServing();
  });
});

describe("keep-alive, pipelining and HTTP/1.0", () => {
  it("answers pipelined requests in order on one connection", async () => {
    const conn = await raw(target);
    const one = `${POST}Content-Length: 7\r\n\r\n{"n":1}`;
    const two = `${POST}Content-Length: 7\r\n\r\n{"n":2}`;
    const three = "GET /v1/models/model HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n";
    conn.socket.write(one + two + three);
    await conn.closed;
    const text = conn.received();
    expect(text.match(/HTTP\/1\.1 200 OK/g)).toHaveLength(3);
    expect(text.indexOf('{"n":1}')).toBeLessThan(text.indexOf('{"n":2}'));
    expect(text.endsWith("{}")).toBe(true);
  });

  it("closes an HTTP/1.0 connection after its answer unless it asks to keep it", async () => {
    const closing = await exchange("POST /v1/models/model:predict HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}");
    expect(closing.status).toBe(200);
    expect(closing.text.toLowerCase()).toContain("connection: close\r\n");
    const conn = await raw(target);
    conn.socket.write("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    const first = await conn.until("true");
    expect(first.toLowerCase()).toContain("connection: keep-alive\r\n");
    conn.socket.write("GET / HTTP/1.0\r\n\r\n");
    await conn.closed;
    expect(conn.received().match(/HTTP\/1\.1 200 OK/g)).toHaveLength(2);
  });

  it("streams to an HTTP/1.0 client without chunking, ending the body with the connection", async () => {
    const dir = await writePackage({
      "config.yaml": "",
      "model/model.py": "class Model:\n    def predict(self, x):\n        yield 'a'\n        yield 'b'\n",
    });
    const streaming = spawnTrussHost([dir, "--listen", "127.0.0.1:0"]);
    try {
      const t = await streaming.target();
      await untilReady(t);
      const conn = await raw(t);
      conn.socket.write("POST /v1/models/model:predict HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}");
      await conn.closed;
      const text = conn.received();
      expect(text.toLowerCase()).not.toContain("transfer-encoding");
      expect(text.endsWith("\r\n\r\nab")).toBe(true);
    } finally {
      streaming.child.kill("SIGKILL");
    }
  });
});

describe("JSON built to hurt", () => {
  let json: HostProcess;
  let jsonTarget: Target;

  beforeAll(async () => {
    // The default body limit (32 MiB), so the bodies reach the JSON parser.
    json = spawnTrussHost([await writePackage(ECHO), "--listen", "127.0.0.1:0"]);
    jsonTarget = await json.target();
    await untilReady(jsonTarget);
  });

  afterAll(() => {
    json.child.kill("SIGKILL");
  });

  it.each([
    ["bytes that are not UTF-8", Buffer.from([0x7b, 0xff, 0xfe, 0x7d])],
    ["nesting 100,000 deep", "[".repeat(100_000) + "]".repeat(100_000)],
    ["an integer of 10,000 digits", "9".repeat(10_000)],
  ])("%s: 400 invalid_json, and the host keeps serving", async (_name, body) => {
    const res = await call(jsonTarget, {
      method: "POST",
      path: "/v1/models/model:predict",
      headers: { "content-type": "application/json" },
      body: Buffer.from(body),
    });
    expect(res.status).toBe(400);
    expect(res.json().error_code).toBe("invalid_json");
    expect((await predict(jsonTarget, [1])).json()).toEqual([1]);
  });

  it("echoes nesting a recursive serialiser can still write", async () => {
    const body = "[".repeat(500) + "]".repeat(500);
    const res = await call(jsonTarget, { method: "POST", path: "/v1/models/model:predict", body });
    expect(res.status).toBe(200);
    expect(res.text).toBe(body);
  });
});

describe("in a sandbox: package read-only, no network but a Unix socket", () => {
  let work: string;

  beforeAll(async () => {
    work = await mkdtemp(path.join(tmpdir(), "meridian-pyhost-sandbox-"));
  });

  afterAll(async () => {
    await rm(work, { recursive: true, force: true });
  });

  it("serves from a read-only /app under bubblewrap; the package cannot be written and nothing is", async () => {
    const dir = await writePackage({
      "config.yaml": "model_name: sandboxed\nenvironment_variables:\n  WHERE: sandbox\n",
      "model/helpers.py": "def where():\n    import os\n    return os.environ['WHERE']\n",
      "model/model.py": `
import os, socket
from model.helpers import where

class Model:
    def predict(self, model_input):
        try:
            open("/app/model/written.txt", "w").write("x")
            wrote = True
        except OSError as err:
            wrote = type(err).__name__
        try:
            socket.create_connection(("1.1.1.1", 80), timeout=1)
            network = True
        except OSError:
            network = False
        return {"where": where(), "cwd": os.getcwd(), "wrote": wrote, "network": network}
`,
    });
    const sockets = path.join(work, "sockets");
    await import("node:fs/promises").then((fs) => fs.mkdir(sockets));
    const socketPath = path.join(sockets, "model.sock");
    const child = spawn(
      "bwrap",
      [
        // Only what the host needs: the interpreter's tree, the host's own directory, the package at
        // /app and the directory of its socket; the rest of the root is bubblewrap's empty tmpfs. /tmp's
        // tmpfs first: a checkout under /tmp is bound over it, not hidden by it.
        ...["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"],
        ...["/usr", "/bin", "/lib", "/lib64", "/etc"].flatMap((p) => ["--ro-bind-try", p, p]),
        ...["--ro-bind", path.dirname(TRUSS_HOST_SCRIPT), path.dirname(TRUSS_HOST_SCRIPT)],
        ...["--ro-bind", dir, "/app"],
        ...["--bind", sockets, sockets],
        ...["--unshare-all", "--die-with-parent", "--clearenv", "--setenv", "HOME", "/tmp", "--chdir", "/"],
        ...[DEBIAN_PYTHON, "-B", "-s", TRUSS_HOST_SCRIPT, "/app", "--listen", `unix:${socketPath}`],
      ],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    const lines: LogLine[] = [];
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (t: string) => {
      for (const l of t.split("\n")) if (l.startsWith("{")) lines.push(JSON.parse(l) as LogLine);
    });
    child.stderr.setEncoding("utf8").on("data", (t: string) => {
      stderr += t;
    });
    const exited = new Promise<number | null>((r) => child.on("close", (code) => r(code)));
    try {
      await waitFor(() => {
        if (child.exitCode !== null) throw new Error(`the sandboxed host exited: ${stderr}`);
        return lines.find((l) => l.msg === "listening");
      }, "listening");
      const t: Target = { socketPath };
      await untilReady(t);
      const res = await predict(t, {});
      expect(res.json()).toEqual({ where: "sandbox", cwd: "/app", wrote: "OSError", network: false });
      expect(existsSync(path.join(dir, "model", "written.txt"))).toBe(false);
      expect(existsSync(path.join(dir, "model", "__pycache__"))).toBe(false);
      // (Forwarding signals into the sandbox is bubblewrap's supervisor's business, not the host's.)
      child.kill("SIGKILL");
      await exited;
    } finally {
      if (child.exitCode === null) child.kill("SIGKILL");
    }
  });
});
