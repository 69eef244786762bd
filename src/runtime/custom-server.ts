// A custom model server (`docker_server.start_command`, any language): spawned with `sh -c` in its own
// process group, health-checked on its own endpoints, and proxied to on loopback.

import { type ChildProcess, spawn } from "node:child_process";
import http, { type IncomingMessage, type ServerResponse } from "node:http";
import { createServer } from "node:net";
import { createInterface } from "node:readline";
import type { Logger } from "pino";
import type { DockerServerConfig } from "../core/model-config.ts";
import { endToEndHeaders, sendError } from "./http.ts";

export interface CustomServerExit {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** The last lines the server wrote to stderr: usually why it exited. */
  stderrTail: string[];
}

export interface CustomServerOptions {
  dir: string;
  server: DockerServerConfig;
  /** Port the server listens on, already resolved (config's `server_port` or an override). */
  port: number;
  env: Record<string, string>;
  logger: Logger;
  /** How long stop() waits after SIGTERM before SIGKILL. */
  graceMs?: number;
}

const STDERR_TAIL_LINES = 20;
const HEALTH_TIMEOUT_MS = 2_000;
const UPSTREAM_HOST = "127.0.0.1";

export class CustomServer {
  readonly #options: CustomServerOptions;
  readonly #agent = new http.Agent({ keepAlive: true });
  readonly #stderrTail: string[] = [];
  #child: ChildProcess | null = null;
  #exit: CustomServerExit | null = null;
  #exited: Promise<CustomServerExit> | null = null;

  constructor(options: CustomServerOptions) {
    this.#options = options;
  }

  get port(): number {
    return this.#options.port;
  }

  get exitStatus(): CustomServerExit | null {
    return this.#exit;
  }

  /** Spawns the server; the returned promise settles when it exits, for whatever reason. */
  start(): Promise<CustomServerExit> {
    if (this.#exited) return this.#exited;
    const { dir, server, env, logger } = this.#options;
    // detached: the server leads its own process group, so stop() reaches whatever `sh -c` forked.
    const child = spawn("sh", ["-c", server.start_command], {
      cwd: dir,
      env,
      detached: true,
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.#child = child;
    this.#exited = new Promise((resolve) => {
      let done = false;
      const finish = (code: number | null, signal: NodeJS.Signals | null) => {
        if (done) return;
        done = true;
        this.#exit = { code, signal, stderrTail: [...this.#stderrTail] };
        this.#agent.destroy();
        resolve(this.#exit);
      };
      child.on("error", (err) => {
        this.#remember(`could not start: ${err.message}`);
        finish(null, null);
      });
      // 'close' (not 'exit') so the last stderr lines have been read.
      child.on("close", finish);
    });
    this.#forward(child.stdout, "stdout");
    this.#forward(child.stderr, "stderr");
    logger.info(
      { child_pid: child.pid, command: server.start_command, port: this.port },
      "model server started",
    );
    return this.#exited;
  }

  /** GETs one of the server's own endpoints; true on a 2xx answer within the timeout. */
  check(endpoint: string): Promise<boolean> {
    return new Promise((resolve) => {
      const req = http.get(
        {
          host: UPSTREAM_HOST,
          port: this.port,
          path: endpoint,
          agent: this.#agent,
          timeout: HEALTH_TIMEOUT_MS,
        },
        (res) => {
          res.resume();
          resolve(res.statusCode !== undefined && res.statusCode >= 200 && res.statusCode < 300);
        },
      );
      req.on("timeout", () => req.destroy());
      req.on("error", () => resolve(false));
    });
  }

  /** Resolves once the readiness endpoint answers 2xx; false if the server exited or `signal` aborted. */
  async waitUntilReady(intervalMs: number, signal: AbortSignal): Promise<boolean> {
    while (this.#exit === null && !signal.aborted) {
      if (await this.check(this.#options.server.readiness_endpoint)) return this.#exit === null;
      await new Promise((r) => setTimeout(r, intervalMs));
    }
    return false;
  }

  /**
   * Forwards a request to `endpoint`, streaming both bodies through. Faults before the answer began
   * become 502 `replica_failed`; after it began the client's connection is cut so it cannot mistake a
   * truncated body for a whole one. Resolves when the exchange is over.
   */
  proxy(req: IncomingMessage, res: ServerResponse, endpoint: string): Promise<void> {
    return new Promise((resolve) => {
      const upstream = http.request({
        host: UPSTREAM_HOST,
        port: this.port,
        method: req.method,
        path: endpoint,
        headers: endToEndHeaders(req.headers),
        agent: this.#agent,
      });
      const fail = (err: Error) => {
        this.#options.logger.warn({ err: { message: err.message } }, "model server request failed");
        sendError(res, "replica_failed", `The model server failed: ${err.message}`);
        resolve();
      };
      upstream.on("error", fail);
      upstream.on("response", (answer) => {
        res.writeHead(answer.statusCode ?? 502, endToEndHeaders(answer.headers));
        // Without this, a long response would buffer until the first write reached Node's high-water mark.
        res.flushHeaders();
        answer.pipe(res);
        answer.on("error", () => res.destroy());
        answer.on("end", () => resolve());
      });
      res.on("close", () => {
        if (!res.writableFinished) {
          upstream.destroy();
          resolve();
        }
      });
      req.pipe(upstream);
    });
  }

  /** SIGTERM to the server's process group, then SIGKILL after the grace period. */
  async stop(): Promise<void> {
    const child = this.#child;
    if (child === null || this.#exited === null || this.#exit !== null) return;
    this.#signal("SIGTERM");
    const timer = setTimeout(() => this.#signal("SIGKILL"), this.#options.graceMs ?? 5_000);
    await this.#exited;
    clearTimeout(timer);
  }

  /** Synchronous last resort for process exit: SIGKILL the group. */
  kill(): void {
    if (this.#child !== null && this.#exit === null) this.#signal("SIGKILL");
  }

  #signal(signal: NodeJS.Signals): void {
    const pid = this.#child?.pid;
    if (pid === undefined) return;
    try {
      process.kill(-pid, signal);
    } catch {
      // The group is already gone.
    }
  }

  #forward(stream: NodeJS.ReadableStream | null, name: "stdout" | "stderr"): void {
    if (stream === null) return;
    const lines = createInterface({ input: stream, crlfDelay: Number.POSITIVE_INFINITY });
    lines.on("line", (line) => {
      if (name === "stderr") this.#remember(line);
      this.#options.logger.info({ stream: name, line }, "model output");
    });
  }

  #remember(line: string): void {
    this.#stderrTail.push(line);
    if (this.#stderrTail.length > STDERR_TAIL_LINES) this.#stderrTail.shift();
  }
}

/** A free loopback TCP port, for a custom server whose port the runtime chooses. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.on("error", reject);
    probe.listen(0, UPSTREAM_HOST, () => {
      const address = probe.address();
      const port = typeof address === "object" && address !== null ? address.port : 0;
      probe.close(() => resolve(port));
    });
  });
}
