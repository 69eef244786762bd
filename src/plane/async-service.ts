// The plane's async service: answers the async calls its ingress routed here (src/gateway/async.ts) from a
// Unix socket in the plane's data directory — `async_predict` (checked, stored durably, then 201 with the
// request id), `async_queue_status`, and `GET`/`DELETE /async_request/{id}` — with the reference's shapes.
// It owns the queue (src/plane/async-queue.ts) and the worker (src/plane/async-worker.ts) that runs it.

import { randomBytes } from "node:crypto";
import { chmod, mkdir, rm } from "node:fs/promises";
import http from "node:http";
import { isIP } from "node:net";
import { dirname } from "node:path";
import type { Logger } from "pino";
import {
  ASYNC_MAX_INPUT_BYTES,
  checkAsyncPredictBody,
  isPrivateAddress,
  newAsyncRequestId,
  parseWebhookUrl,
} from "../core/async.ts";
import { type ErrorCode, errorBody, errorStatus } from "../core/errors.ts";
import { ASYNC_CONTEXT_HEADER, type AsyncContext, readAsyncContext } from "../gateway/async.ts";
import { AsyncQueue, type AsyncRecord, isFinal } from "./async-queue.ts";
import { AsyncWorker, type AsyncWorkerOptions, type WebhookPolicy } from "./async-worker.ts";

/** The longest `sun_path` Linux accepts, without its terminating NUL (unix(7)). */
export const MAX_SOCKET_PATH_BYTES = 107;

export interface AsyncServiceOptions {
  plane: string;
  /** The queue's directory (the plane's data directory's `async/`). */
  dir: string;
  socketPath: string;
  /** Shared with the ingress (AsyncIngress.token). */
  token: string;
  /** Requests QUEUED or IN_PROGRESS on this plane at most; beyond, 429 `async_queue_full`. Default 10,000. */
  maxLive?: number;
  /** Bytes of model input held for them at most. Default 256 MiB. */
  maxLiveBytes?: number;
  worker: Omit<AsyncWorkerOptions, "queue" | "webhook" | "logger"> & { webhook?: Partial<WebhookPolicy> };
  retentionMs?: number;
  logger: Logger;
  now?: () => number;
}

export class AsyncService {
  readonly queue: AsyncQueue;
  readonly worker: AsyncWorker;
  readonly #o: AsyncServiceOptions;
  readonly #now: () => number;
  #server: http.Server | null = null;

  constructor(options: AsyncServiceOptions) {
    this.#o = options;
    this.#now = options.now ?? Date.now;
    this.queue = new AsyncQueue({
      dir: options.dir,
      ...(options.retentionMs !== undefined ? { retentionMs: options.retentionMs } : {}),
      now: this.#now,
    });
    this.worker = new AsyncWorker({
      ...options.worker,
      queue: this.queue,
      logger: options.logger,
      now: this.#now,
      ...(options.worker.webhook ? { webhook: options.worker.webhook } : {}),
    });
  }

  /** Replays the queue, starts the worker, and listens on the socket (0600, in a 0700 directory). */
  async start(): Promise<void> {
    if (Buffer.byteLength(this.#o.socketPath) > MAX_SOCKET_PATH_BYTES) {
      throw new Error(
        `the async service's socket would be ${this.#o.socketPath}, longer than the ${MAX_SOCKET_PATH_BYTES} bytes a socket path may have; give the plane a shorter --data-dir`,
      );
    }
    await this.queue.open();
    if (this.queue.dropped > 0) {
      this.#o.logger.warn({ dropped: this.queue.dropped }, "async queue: unreadable journal lines dropped");
    }
    await mkdir(dirname(this.#o.socketPath), { recursive: true, mode: 0o700 });
    await chmod(dirname(this.#o.socketPath), 0o700);
    await rm(this.#o.socketPath, { force: true });
    const server = http.createServer((req, res) => void this.#serve(req, res));
    await new Promise<void>((ok, fail) => {
      server.once("error", fail);
      server.listen(this.#o.socketPath, () => {
        server.off("error", fail);
        ok();
      });
    });
    await chmod(this.#o.socketPath, 0o600);
    this.#server = server;
    this.worker.start();
    const live = [...this.queue.live()].length;
    this.#o.logger.info({ live, webhooks_due: [...this.queue.webhooksDue()].length }, "async queue opened");
  }

  async stop(): Promise<void> {
    await new Promise<void>((ok) => {
      if (this.#server === null) return ok();
      this.#server.close(() => ok());
      this.#server.closeAllConnections();
    });
    await this.worker.stop();
    await this.queue.close();
    await rm(this.#o.socketPath, { force: true });
  }

  /**
   * Requests QUEUED and IN_PROGRESS on this plane, by deployment: counts only (no id, no payload), what the
   * plane may report for the autoscaler's in-flight count.
   */
  counts(): Map<string, { queued: number; in_progress: number }> {
    const out = new Map<string, { queued: number; in_progress: number }>();
    for (const r of this.queue.live()) {
      const key = r.deployment_id ?? "";
      const c = out.get(key) ?? { queued: 0, in_progress: 0 };
      if (r.status === "QUEUED") c.queued++;
      else c.in_progress++;
      out.set(key, c);
    }
    return out;
  }

  async #serve(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const header = req.headers[ASYNC_CONTEXT_HEADER];
    const ctx = readAsyncContext(typeof header === "string" ? header : undefined, this.#o.token);
    try {
      if (ctx === null)
        return send(
          res,
          403,
          errorBody("forbidden", "Only this plane's ingress may call its async service."),
        );
      switch (ctx.op) {
        case "predict":
          return await this.#predict(req, res, ctx);
        case "queue_status":
          return this.#queueStatus(res, ctx);
        case "request":
          return await this.#request(req, res, ctx);
      }
    } catch (err) {
      this.#o.logger.error({ err }, "async service failed");
      if (!res.headersSent) fail(res, "internal_error");
      else res.destroy();
    }
  }

  async #predict(req: http.IncomingMessage, res: http.ServerResponse, ctx: AsyncContext): Promise<void> {
    const body = await readBody(req, ASYNC_MAX_INPUT_BYTES);
    if (body === null) return fail(res, "payload_too_large", null, { limit_bytes: ASYNC_MAX_INPUT_BYTES });
    let parsed: unknown;
    try {
      parsed = JSON.parse(body.toString("utf8"));
    } catch {
      return fail(res, "invalid_json");
    }
    const check = checkAsyncPredictBody(parsed);
    if (!check.ok) return fail(res, "invalid_request", check.message, { field: check.field });
    const r = check.request;
    if (r.webhook_endpoint !== null) {
      const url = parseWebhookUrl(r.webhook_endpoint);
      if (url.ok && !url.https && !this.#o.worker.webhook?.allowHttp) {
        return fail(res, "invalid_request", "webhook_endpoint must be an https URL.", {
          field: "webhook_endpoint",
        });
      }
      // A name is checked at delivery (on every address it resolves to); an address literal now.
      const host = url.ok ? url.url.hostname.replace(/^\[|\]$/g, "") : "";
      if (isIP(host) !== 0 && isPrivateAddress(host) && !this.#o.worker.webhook?.allowPrivate) {
        return fail(res, "invalid_request", "webhook_endpoint must not be a private address.", {
          field: "webhook_endpoint",
        });
      }
    }
    if (ctx.target === null) return fail(res, "internal_error");
    const maxLive = this.#o.maxLive ?? 10_000;
    const maxBytes = this.#o.maxLiveBytes ?? 256 * 1024 * 1024;
    let live = 0;
    let bytes = 0;
    for (const x of this.queue.live()) {
      live++;
      bytes += x.input_bytes;
    }
    if (live >= maxLive || bytes + body.length > maxBytes) {
      return fail(res, "async_queue_full", null, { limit: maxLive, limit_bytes: maxBytes });
    }
    const now = this.#now();
    const id = newAsyncRequestId(this.#o.plane, randomBytes(12));
    const record: Omit<AsyncRecord, "seq"> = {
      id,
      model_id: ctx.model_id,
      team_id: ctx.team_id,
      environment: ctx.environment,
      target: ctx.target,
      deployment_id: ctx.deployment_id,
      priority: r.priority,
      created_at: now,
      expires_at: now + r.max_time_in_queue_seconds * 1000,
      webhook: r.webhook_endpoint,
      retry: r.inference_retry_config,
      status: "QUEUED",
      webhook_status: r.webhook_endpoint === null ? "NO_WEBHOOK_PROVIDED" : "PENDING",
      status_at: now,
      attempts: 0,
      errors: [],
      input: r.model_input,
      input_bytes: body.length,
      output: null,
    };
    const added = await this.queue.add(record);
    if (!added.ok) return fail(res, "service_unavailable", "The plane is stopping.");
    // Its secrets are asked for now, so the result can be signed even if the control plane is down by then.
    if (record.webhook !== null) this.worker.prepare(record.team_id);
    this.worker.notify();
    send(res, 201, { request_id: id });
  }

  #queueStatus(res: http.ServerResponse, ctx: AsyncContext): void {
    let queued = 0;
    let running = 0;
    for (const r of this.queue.live()) {
      if (r.model_id !== ctx.model_id || r.deployment_id !== ctx.deployment_id) continue;
      if (r.status === "QUEUED") queued++;
      else running++;
    }
    send(res, 200, {
      model_id: ctx.model_id,
      deployment_id: ctx.deployment_id,
      num_queued_requests: queued,
      num_in_progress_requests: running,
    });
  }

  async #request(req: http.IncomingMessage, res: http.ServerResponse, ctx: AsyncContext): Promise<void> {
    const r = ctx.request_id === null ? undefined : this.queue.get(ctx.request_id);
    // Another model's request, or (on a regional hostname) another environment's, is not there for this caller.
    if (
      r === undefined ||
      r.model_id !== ctx.model_id ||
      (ctx.form === "regional" && r.environment !== ctx.environment)
    ) {
      return fail(res, "async_request_not_found");
    }
    if (req.method === "DELETE") {
      if (r.status !== "QUEUED") {
        return send(res, 200, {
          request_id: r.id,
          canceled: false,
          message: `Only QUEUED requests may be canceled; this one is ${r.status}.`,
        });
      }
      await this.queue.finish(r, "CANCELED", []);
      return send(res, 200, {
        request_id: r.id,
        canceled: true,
        message: "The request was canceled; it will not run.",
      });
    }
    send(res, 200, statusView(r));
  }
}

/** AsyncRequestStatusResponse. */
export function statusView(r: AsyncRecord) {
  return {
    request_id: r.id,
    model_id: r.model_id,
    deployment_id: r.deployment_id,
    status: r.status,
    webhook_status: isFinal(r.status) || r.webhook === null ? r.webhook_status : "PENDING",
    created_at: new Date(r.created_at).toISOString(),
    status_at: new Date(r.status_at).toISOString(),
    errors: r.errors,
  };
}

function send(res: http.ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
  res.end(text);
}

function fail(
  res: http.ServerResponse,
  code: ErrorCode,
  message: string | null = null,
  detail: unknown = null,
): void {
  send(res, errorStatus(code), errorBody(code, message ?? undefined, detail));
}

/** The whole body, or null once it passes `limit` (the rest is not read). */
async function readBody(req: http.IncomingMessage, limit: number): Promise<Buffer | null> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > limit) return null;
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}
