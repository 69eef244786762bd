// Test helpers for the Python host: the real `python3 truss_host.py` as a child process (which interpreter
// each test uses is named where it is chosen), HTTP calls over TCP or its Unix socket, and raw sockets for
// what a well-behaved client never sends.

import { type ChildProcess, spawn } from "node:child_process";
import http from "node:http";
import net from "node:net";
import { TRUSS_HOST_SCRIPT } from "../python.ts";
import { type LogLine, waitFor } from "../testing.ts";

/** Debian's interpreter (3.11.x, with what apt gives it): the one the host tests run on. */
export const DEBIAN_PYTHON = "/usr/bin/python3";

export type Target = { host: string; port: number } | { socketPath: string };

export interface HostProcess {
  child: ChildProcess;
  stdout: LogLine[];
  /** Every stdout line as written, JSON or not (a model's print() is not). */
  rawStdout: string[];
  stderr: () => string;
  /** Parsed JSON lines of stderr. */
  errors: () => LogLine[];
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** The bound address from the `listening` line: `host:port` or `unix:/path`. */
  address: () => Promise<string>;
  target: () => Promise<Target>;
}

export function spawnTrussHost(
  args: string[],
  o: { python?: string; env?: Record<string, string | undefined>; cwd?: string } = {},
): HostProcess {
  const child = spawn(o.python ?? DEBIAN_PYTHON, ["-B", "-s", TRUSS_HOST_SCRIPT, ...args], {
    cwd: o.cwd ?? "/",
    env: { PATH: process.env["PATH"], ...o.env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const stdout: LogLine[] = [];
  const rawStdout: string[] = [];
  let stderr = "";
  let partial = "";
  child.stdout!.setEncoding("utf8").on("data", (text: string) => {
    const parts = (partial + text).split("\n");
    partial = parts.pop() ?? "";
    for (const line of parts) {
      if (line.trim() === "") continue;
      rawStdout.push(line);
      try {
        stdout.push(JSON.parse(line) as LogLine);
      } catch {
        // A model's own output.
      }
    }
  });
  child.stderr!.setEncoding("utf8").on("data", (text: string) => {
    stderr += text;
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.on("close", (code, signal) => resolve({ code, signal }));
  });
  let done = false;
  void exited.then(() => {
    done = true;
  });
  const address = () =>
    waitFor(() => {
      const line = stdout.find((l) => l.msg === "listening");
      if (line) return line["address"] as string;
      if (done) throw new Error(`the host exited before listening; stderr: ${stderr}`);
      return undefined;
    }, "the listening line");
  const errors = () =>
    stderr
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l) as LogLine);
  return {
    child,
    stdout,
    rawStdout,
    stderr: () => stderr,
    errors,
    exited,
    address,
    target: async () => targetOf(await address()),
  };
}

export function targetOf(address: string): Target {
  if (address.startsWith("unix:")) return { socketPath: address.slice("unix:".length) };
  const at = address.lastIndexOf(":");
  return { host: address.slice(0, at).replace(/^\[|\]$/g, ""), port: Number(address.slice(at + 1)) };
}

export interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
  text: string;
  // biome-ignore lint/suspicious/noExplicitAny: answers of every shape are read by tests, which check them.
  json: () => any;
}

/** One request on its own connection. */
export function call(
  target: Target,
  o: { method?: string; path: string; headers?: Record<string, string>; body?: string | Buffer },
): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { ...target, method: o.method ?? "GET", path: o.path, headers: o.headers, agent: false },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => {
          const body = Buffer.concat(chunks);
          const text = body.toString("utf8");
          resolve({
            status: res.statusCode!,
            headers: res.headers,
            body,
            text,
            json: () => JSON.parse(text),
          });
        });
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    req.end(o.body);
  });
}

export function predict(
  target: Target,
  input: unknown,
  headers: Record<string, string> = {},
): Promise<Answer> {
  return call(target, {
    method: "POST",
    path: "/v1/models/model:predict",
    headers: { "content-type": "application/json", ...headers },
    body: JSON.stringify(input),
  });
}

export async function untilReady(target: Target, ms = 20_000): Promise<void> {
  await waitFor(
    async () =>
      (await call(target, { path: "/v1/models/model" }).catch(() => null))?.status === 200 || undefined,
    "readiness",
    ms,
  );
}

/** A raw connection: what it was sent back, and when it closed. */
export interface RawConnection {
  socket: net.Socket;
  received: () => string;
  closed: Promise<void>;
  /** Resolves once `received()` includes `text`. */
  until: (text: string, ms?: number) => Promise<string>;
}

export function raw(target: Target): Promise<RawConnection> {
  return new Promise((resolve, reject) => {
    const socket =
      "socketPath" in target ? net.connect(target.socketPath) : net.connect(target.port, target.host);
    let received = "";
    socket.setEncoding("latin1");
    socket.on("data", (d: string) => {
      received += d;
    });
    const closed = new Promise<void>((r) => socket.once("close", () => r()));
    // A server that answered and closed makes later writes fail (EPIPE); the test reads what came back.
    socket.on("error", () => undefined);
    socket.once("connect", () =>
      resolve({
        socket,
        received: () => received,
        closed,
        until: (text, ms = 10_000) =>
          waitFor(() => (received.includes(text) ? received : undefined), JSON.stringify(text), ms),
      }),
    );
    socket.once("error", reject);
  });
}
