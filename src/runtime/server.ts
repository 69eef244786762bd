// The model runtime: what one replica runs. Serves a model package on truss's paths (predict, readiness,
// liveness) with node:http, enforces predict_concurrency, and reports fatal model faults to its owner.

import http, { type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import type { Duplex } from "node:stream";
import type { Logger } from "pino";
import { CustomServer, freePort } from "./custom-server.ts";
import { formatAddress, readBody, sendError, sendJson } from "./http.ts";
import {
  CONTENT_TYPES,
  chunkFormat,
  classifyPrediction,
  encodeChunk,
  errorMessage,
  type HostedModel,
  loadJavaScriptModel,
} from "./js-model.ts";
import { ConcurrencyLimiter } from "./limiter.ts";
import { childEnvironment, type ModelPackage, modelEnvironment, type ReplicaIdentity } from "./package.ts";
import { acceptWebSocket, pipeUpgrade, refuseUpgrade, serveOpenAiRoute, WEBSOCKET_PATH } from "./realtime.ts";

/** truss's paths (KServe v1 protocol), which every Meridian replica serves. */
export const PATHS = {
  predict: "/v1/models/model:predict",
  readiness: "/v1/models/model",
  liveness: "/",
} as const;

export interface ServeModelOptions {
  modelPackage: ModelPackage;
  host: string;
  /** 0 picks a free port; the bound address is on `address` once start() resolves. */
  port: number;
  /** Listen on this Unix socket instead of host:port (`address` is then `unix:{path}`). */
  socketPath?: string;
  identity: ReplicaIdentity;
  logger: Logger;
  /**
   * Environment a custom server's process inherits (the command passes process.env). The runtime drops
   * MERIDIAN_* variables from it and adds the package's variables and the replica's identity.
   */
  inheritedEnv: Readonly<Record<string, string | undefined>>;
  /** Overrides `docker_server.server_port` (0: a free loopback port); exported to the server as PORT. */
  serverPort?: number | null;
  /** Requests that may wait for a predict slot before the runtime answers 429. Default 64. */
  maxQueued?: number;
  /** Largest predict request body accepted. Default 32 MiB. */
  maxBodyBytes?: number;
  /** How long stop() lets in-flight requests finish before cutting connections. Default 10 s. */
  drainTimeoutMs?: number;
  /** How often a custom server's readiness endpoint is polled until it first answers. Default 100 ms. */
  readinessIntervalMs?: number;
}

export type ModelState = "idle" | "loading" | "ready" | "failed" | "stopping" | "stopped";

/** Why a runtime finished: its owner maps this to an exit code. */
export type ServeOutcome =
  | { kind: "stopped" }
  | { kind: "load_failed"; error: unknown }
  | {
      kind: "model_server_exited";
      code: number | null;
      signal: NodeJS.Signals | null;
      stderrTail: string[];
      /** Whether the server had become ready before it exited (a crash rather than a failed start). */
      wasReady: boolean;
    };

export interface ModelServer {
  /** Listens, then loads the model in the background; resolves with the bound `host:port`. */
  start(): Promise<string>;
  /** Stops accepting, drains in-flight requests, stops a custom server. Idempotent. */
  stop(): Promise<void>;
  /** SIGKILLs a custom server's process group; for a process that is exiting without stop(). */
  kill(): void;
  readonly address: string | null;
  readonly state: ModelState;
  /** Settles once: after stop(), or when the model fails for good (load() threw, its server exited). */
  readonly finished: Promise<ServeOutcome>;
}

const DEFAULTS = {
  maxQueued: 64,
  maxBodyBytes: 32 * 1024 * 1024,
  drainTimeoutMs: 10_000,
  readinessIntervalMs: 100,
};

export function serveModel(options: ServeModelOptions): ModelServer {
  return new Runtime(options);
}

class Runtime implements ModelServer {
  readonly #options: ServeModelOptions;
  readonly #logger: Logger;
  readonly #limiter: ConcurrencyLimiter;
  readonly #maxBodyBytes: number;
  readonly #server: Server;
  readonly #abortLoad = new AbortController();
  readonly finished: Promise<ServeOutcome>;
  #finish!: (outcome: ServeOutcome) => void;
  #state: ModelState = "idle";
  #address: string | null = null;
  #model: HostedModel | null = null;
  #custom: CustomServer | null = null;
  #failure: string | null = null;
  #loaded = false;
  #stopping: Promise<void> | null = null;
  /** Upgraded connections and how each is closed when the runtime stops (node:http no longer tracks them). */
  readonly #upgraded = new Map<Duplex, () => void>();

  constructor(options: ServeModelOptions) {
    this.#options = options;
    this.#logger = options.logger;
    this.#limiter = new ConcurrencyLimiter(
      options.modelPackage.config.runtime.predict_concurrency,
      options.maxQueued ?? DEFAULTS.maxQueued,
    );
    this.#maxBodyBytes = options.maxBodyBytes ?? DEFAULTS.maxBodyBytes;
    this.#server = http.createServer((req, res) => {
      this.#handle(req, res).catch((err: unknown) => {
        this.#logger.error({ err }, "request handler failed");
        sendError(res, "internal_error", errorMessage(err));
      });
    });
    // Websockets (src/runtime/realtime.ts): a JavaScript model's websocket(ws), or a custom server's own path.
    this.#server.on("upgrade", (req: IncomingMessage, socket: Duplex, head: Buffer) =>
      this.#upgrade(req, socket, head),
    );
    this.finished = new Promise((resolve) => {
      this.#finish = resolve;
    });
  }

  get address(): string | null {
    return this.#address;
  }

  get state(): ModelState {
    return this.#state;
  }

  async start(): Promise<string> {
    if (this.#state !== "idle") throw new Error(`the runtime cannot start from state ${this.#state}`);
    this.#state = "loading";
    const { host, port, socketPath, modelPackage } = this.#options;
    await new Promise<void>((resolve, reject) => {
      this.#server.once("error", reject);
      const listening = () => {
        this.#server.off("error", reject);
        resolve();
      };
      if (socketPath !== undefined) this.#server.listen(socketPath, listening);
      else this.#server.listen(port, host, listening);
    });
    this.#address =
      socketPath !== undefined ? `unix:${socketPath}` : formatAddress(this.#server.address() as AddressInfo);
    this.#logger.info(
      {
        model_name: modelPackage.config.model_name,
        kind: modelPackage.kind.type,
        ignored_keys: modelPackage.ignoredKeys,
      },
      "loading model",
    );
    void this.#load();
    return this.#address;
  }

  async #load(): Promise<void> {
    const { modelPackage, identity } = this.#options;
    const started = performance.now();
    const kind = modelPackage.kind;
    switch (kind.type) {
      case "javascript": {
        try {
          const environment = identity.environment === null ? null : { name: identity.environment };
          const model = await loadJavaScriptModel(kind.module, { environment });
          if (this.#state !== "loading") return;
          this.#model = model;
        } catch (error) {
          if (this.#state !== "loading") return;
          this.#failure = `load() failed: ${errorMessage(error)}`;
          this.#state = "failed";
          this.#logger.error({ err: error }, "model load failed");
          this.#finish({ kind: "load_failed", error });
          return;
        }
        break;
      }
      case "custom_server": {
        const ready = await this.#startCustomServer(kind.server.start_command);
        if (!ready || this.#state !== "loading") return;
        break;
      }
      default: {
        const unknown: never = kind;
        throw new Error(`unknown model kind ${JSON.stringify(unknown)}`);
      }
    }
    this.#loaded = true;
    this.#state = "ready";
    this.#logger.info({ load_ms: Math.round(performance.now() - started) }, "model ready");
  }

  async #startCustomServer(command: string): Promise<boolean> {
    const { modelPackage, identity, inheritedEnv, serverPort } = this.#options;
    const server = modelPackage.config.docker_server!;
    const port =
      serverPort === undefined || serverPort === null
        ? server.server_port
        : serverPort === 0
          ? await freePort()
          : serverPort;
    const env = childEnvironment(inheritedEnv, {
      ...modelEnvironment(modelPackage.config, identity),
      PORT: String(port),
    });
    const custom = new CustomServer({ dir: modelPackage.dir, server, port, env, logger: this.#logger });
    this.#custom = custom;
    let wasReady = false;
    void custom.start().then((exit) => {
      if (this.#state === "stopping" || this.#state === "stopped") return;
      this.#failure = `the model server exited (${exit.signal ?? `code ${exit.code}`}): ${command}`;
      this.#state = "failed";
      this.#logger.error(
        { exit_code: exit.code, signal: exit.signal, stderr_tail: exit.stderrTail, was_ready: wasReady },
        "model server exited",
      );
      this.#finish({ kind: "model_server_exited", ...exit, wasReady });
    });
    const interval = this.#options.readinessIntervalMs ?? DEFAULTS.readinessIntervalMs;
    wasReady = await custom.waitUntilReady(interval, this.#abortLoad.signal);
    return wasReady;
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    // While draining, each answer closes its connection so keep-alive clients reconnect elsewhere.
    if (this.#stopping !== null) res.setHeader("connection", "close");
    const path = (req.url ?? "/").split("?")[0];
    switch (path) {
      case PATHS.predict:
        if (req.method !== "POST") return this.#notAllowed(res, "POST");
        return this.#predict(req, res);
      case PATHS.readiness:
        if (req.method !== "GET" && req.method !== "HEAD") return this.#notAllowed(res, "GET, HEAD");
        return this.#readiness(res);
      case PATHS.liveness:
        if (req.method !== "GET" && req.method !== "HEAD") return this.#notAllowed(res, "GET, HEAD");
        return this.#liveness(res);
      default:
        return this.#passthrough(req, res, path ?? "/");
    }
  }

  /**
   * Any other route (the ingress's `/sync/{path}` arrives here as `/{path}`): a custom server's own, as
   * sent; a JavaScript model's OpenAI-style methods. Both take a predict slot, as predict does.
   */
  async #passthrough(req: IncomingMessage, res: ServerResponse, path: string): Promise<void> {
    const serving = this.#state === "ready" || (this.#state === "stopping" && this.#loaded);
    if (!serving) {
      req.resume();
      const reason = this.#notReadyReason() ?? "The model is not ready.";
      return sendError(res, "model_unavailable", reason, { state: this.#state });
    }
    const custom = this.#custom;
    const route = custom === null ? this.#model?.routes.get(path) : undefined;
    if (custom === null && route === undefined) {
      req.resume();
      return sendError(res, "route_not_found", `No such route: ${path}`, { path });
    }
    const release = await this.#slot(res);
    if (release === null) {
      req.resume();
      return;
    }
    try {
      if (custom !== null) await custom.proxy(req, res, req.url ?? path);
      else await serveOpenAiRoute(route!, req, res, this.#maxBodyBytes);
    } finally {
      release();
    }
  }

  #upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    socket.on("error", () => socket.destroy());
    this.#upgraded.set(socket, () => socket.destroy());
    socket.on("close", () => this.#upgraded.delete(socket));
    if (this.#state !== "ready") {
      refuseUpgrade(socket, "model_unavailable", this.#notReadyReason() ?? undefined);
      return;
    }
    if (this.#custom !== null) {
      pipeUpgrade(req, socket, head, this.#custom.port);
      return;
    }
    const path = (req.url ?? "/").split("?")[0];
    const handler = this.#model?.websocket ?? null;
    if (path !== WEBSOCKET_PATH || handler === null || req.method !== "GET") {
      refuseUpgrade(socket, "route_not_found", `No websocket at ${path}`);
      return;
    }
    const ws = acceptWebSocket(req, socket, head, handler, this.#logger);
    if (ws !== null) this.#upgraded.set(socket, () => ws.close(1001, "replica stopping"));
  }

  #notAllowed(res: ServerResponse, allow: string): void {
    res.setHeader("allow", allow);
    sendError(res, "method_not_allowed");
  }

  /** 503 with the reason while the model is not ready; null when it is. */
  #notReadyReason(): string | null {
    switch (this.#state) {
      case "ready":
        return null;
      case "idle":
      case "loading":
        return "The model is loading.";
      case "failed":
        return `The model failed: ${this.#failure}`;
      case "stopping":
      case "stopped":
        return "The runtime is shutting down.";
    }
  }

  async #readiness(res: ServerResponse): Promise<void> {
    const reason = this.#notReadyReason();
    if (reason !== null) return sendError(res, "model_unavailable", reason, { state: this.#state });
    const custom = this.#custom;
    if (
      custom !== null &&
      !(await custom.check(this.#options.modelPackage.config.docker_server!.readiness_endpoint))
    ) {
      return sendError(res, "model_unavailable", "The model server is not ready.", { state: this.#state });
    }
    sendJson(res, 200, { name: this.#options.modelPackage.config.model_name ?? "model", ready: true });
  }

  async #liveness(res: ServerResponse): Promise<void> {
    if (this.#state === "failed") {
      return sendError(res, "service_unavailable", `The model failed: ${this.#failure}`, {
        state: this.#state,
      });
    }
    // A custom server is asked once it has come up; before that the runtime itself is what is alive.
    const custom = this.#custom;
    if (
      custom !== null &&
      this.#state === "ready" &&
      !(await custom.check(this.#options.modelPackage.config.docker_server!.liveness_endpoint))
    ) {
      return sendError(res, "service_unavailable", "The model server is not live.", { state: this.#state });
    }
    sendJson(res, 200, { alive: true, state: this.#state });
  }

  async #predict(req: IncomingMessage, res: ServerResponse): Promise<void> {
    // Requests already on an open connection while draining are still served if the model is loaded.
    const serving = this.#state === "ready" || (this.#state === "stopping" && this.#loaded);
    if (!serving) {
      req.resume();
      const reason = this.#notReadyReason() ?? "The model is not ready.";
      return sendError(res, "model_unavailable", reason, { state: this.#state });
    }
    if (this.#custom !== null) return this.#proxyPredict(req, res, this.#custom);

    const body = await readBody(req, this.#maxBodyBytes);
    if (!body.ok) {
      if (body.reason === "too_large") {
        res.setHeader("connection", "close");
        sendError(res, "payload_too_large", undefined, { limit_bytes: this.#maxBodyBytes });
      }
      return;
    }
    let input: unknown;
    try {
      input = JSON.parse(body.body.toString("utf8"));
    } catch (err) {
      return sendError(res, "invalid_json", undefined, { reason: errorMessage(err) });
    }
    const release = await this.#slot(res);
    if (release === null) return;
    try {
      await this.#runPrediction(this.#model!, input, res);
    } finally {
      release();
    }
  }

  async #proxyPredict(req: IncomingMessage, res: ServerResponse, custom: CustomServer): Promise<void> {
    const release = await this.#slot(res);
    if (release === null) {
      req.resume();
      return;
    }
    try {
      await custom.proxy(req, res, this.#options.modelPackage.config.docker_server!.predict_endpoint);
    } finally {
      release();
    }
  }

  /** A predict slot; null when refused (429 already sent) or the client left while queued. */
  async #slot(res: ServerResponse): Promise<(() => void) | null> {
    const gone = new AbortController();
    const onClose = () => gone.abort(new Error("client closed the connection"));
    res.on("close", onClose);
    try {
      const pending = this.#limiter.acquire(gone.signal);
      if (pending === null) {
        sendError(
          res,
          "rate_limited",
          "Too many requests: every predict slot is busy and the queue is full.",
          {
            predict_concurrency: this.#limiter.limit,
            max_queued: this.#limiter.maxQueued,
          },
        );
        return null;
      }
      return await pending.catch(() => null);
    } finally {
      res.off("close", onClose);
    }
  }

  async #runPrediction(model: HostedModel, input: unknown, res: ServerResponse): Promise<void> {
    let prediction: ReturnType<typeof classifyPrediction>;
    try {
      prediction = classifyPrediction(await model.predict(input));
    } catch (err) {
      this.#logger.error({ err }, "predict failed");
      return sendError(res, "internal_error", errorMessage(err));
    }
    switch (prediction.kind) {
      case "json":
        res.writeHead(200, {
          "content-type": "application/json",
          "content-length": Buffer.byteLength(prediction.body),
        });
        res.end(prediction.body);
        return;
      case "bytes":
        res.writeHead(200, {
          "content-type": CONTENT_TYPES.bytes,
          "content-length": prediction.body.byteLength,
        });
        res.end(prediction.body);
        return;
      case "stream":
        return this.#stream(prediction.chunks, res);
    }
  }

  /** Sends chunks as they come (chunked transfer coding, RFC 9112 §7.1), honouring backpressure. */
  async #stream(chunks: AsyncIterator<unknown> | Iterator<unknown>, res: ServerResponse): Promise<void> {
    let finished = false;
    const stopEarly = () => {
      if (!finished) void Promise.resolve(chunks.return?.()).catch(() => undefined);
    };
    res.on("close", stopEarly);
    try {
      let step = await chunks.next();
      if (!step.done) {
        res.writeHead(200, { "content-type": CONTENT_TYPES[chunkFormat(step.value)] });
        res.flushHeaders();
      }
      while (!step.done) {
        if (res.destroyed) return;
        if (!res.write(encodeChunk(step.value))) {
          await new Promise((resolve) => {
            res.once("drain", resolve);
            res.once("close", resolve);
          });
        }
        step = await chunks.next();
      }
      finished = true;
      if (!res.headersSent) res.writeHead(200, { "content-type": CONTENT_TYPES.text });
      res.end();
    } catch (err) {
      finished = true;
      this.#logger.error({ err, streaming: res.headersSent }, "predict failed");
      // Before the first chunk this is an ordinary 500; after it, sendError cuts the connection.
      sendError(res, "internal_error", errorMessage(err));
    } finally {
      res.off("close", stopEarly);
    }
  }

  stop(): Promise<void> {
    this.#stopping ??= this.#drain();
    return this.#stopping;
  }

  async #drain(): Promise<void> {
    const wasListening = this.#server.listening;
    if (this.#state !== "stopped") this.#state = "stopping";
    this.#abortLoad.abort();
    this.#logger.info({ running: this.#limiter.running, queued: this.#limiter.queued }, "draining");
    if (wasListening) {
      const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
      // A websocket is told the replica is going away (1001) and closes; a relayed upgrade is cut.
      for (const close of this.#upgraded.values()) close();
      this.#server.closeIdleConnections();
      const timer = setTimeout(() => {
        this.#logger.warn({ drain_timeout_ms: this.#drainTimeout() }, "drain timed out; closing connections");
        this.#server.closeAllConnections();
      }, this.#drainTimeout());
      const idle = setInterval(() => this.#server.closeIdleConnections(), 50);
      await closed;
      clearTimeout(timer);
      clearInterval(idle);
    }
    await this.#custom?.stop();
    this.#state = "stopped";
    this.#logger.info({}, "stopped");
    this.#finish({ kind: "stopped" });
  }

  #drainTimeout(): number {
    return this.#options.drainTimeoutMs ?? DEFAULTS.drainTimeoutMs;
  }

  kill(): void {
    this.#custom?.kill();
  }
}
