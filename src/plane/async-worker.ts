// Works a plane's async queue (src/plane/async-queue.ts) with this plane's own READY replicas, so a request
// runs only where it is stored, in its region: priority order (0 first), first in first out within one,
// at most `concurrency` requests per replica, the request's retry policy on replica faults, EXPIRED once it
// waited `max_time_in_queue_seconds` without a first run. Then the webhook: Baseten's payload and signature,
// sent from this plane, retried with backoff a bounded number of times; the outcome is in the status. A
// delivery whose signing secrets cannot be had (the control plane is down) waits for them without using up
// its attempts: a control-plane outage never fails a webhook, and nothing goes out unsigned.

import { lookup as dnsLookup, type LookupAddress } from "node:dns";
import { isIP } from "node:net";
import type { Logger } from "pino";
import { Agent, type Dispatcher, request } from "undici";
import {
  type AsyncError,
  isPrivateAddress,
  parseWebhookUrl,
  retryDelayMs,
  type WebhookPayload,
  webhookSignature,
} from "../core/async.ts";
import { REPLICA_PREDICT_PATH } from "../gateway/ingress.ts";
import { type AsyncQueue, type AsyncRecord, isFinal } from "./async-queue.ts";

/** What the request's target resolves to right now. */
export type Resolution =
  | { ok: true; deploymentId: string; wakeable?: boolean }
  /** `final`: the target is gone for good (FAILED); otherwise it waits (QUEUED) until it expires. */
  | { ok: false; final: boolean; error: AsyncError };

export interface WebhookPolicy {
  /** Allow `http:` webhooks (development). Default: https only, as Baseten requires. */
  allowHttp: boolean;
  /** Allow webhooks to loopback, private and link-local addresses (development). */
  allowPrivate: boolean;
  /** Delivery attempts before FAILED. Default 5. */
  maxAttempts: number;
  /** The first retry's delay, doubled each time up to `maxDelayMs`. Default 1 s / 30 s. */
  initialDelayMs: number;
  maxDelayMs: number;
  /** Per attempt, to the response's end. Default 10 s. */
  timeoutMs: number;
  /**
   * How long a delivery may wait for the team's webhook secrets (the control plane unreachable) before it is
   * given up. Waiting uses none of `maxAttempts`; it is asked again `initialDelayMs` later, doubling up to
   * `maxDelayMs`. Default 24 h, the time an ended request stays readable.
   */
  secretsWaitMs: number;
  /** CA certificates to trust for https webhooks besides the system's (tests, private CAs). */
  ca?: string;
}

export const DEFAULT_WEBHOOK_POLICY: WebhookPolicy = Object.freeze({
  allowHttp: false,
  allowPrivate: false,
  maxAttempts: 5,
  initialDelayMs: 1_000,
  maxDelayMs: 30_000,
  timeoutMs: 10_000,
  secretsWaitMs: 24 * 3_600_000,
});

export interface AsyncWorkerOptions {
  queue: AsyncQueue;
  /** `host:port` or `unix:/path` of this plane's READY replicas of a deployment. */
  replicas(deploymentId: string): readonly string[];
  resolve(r: AsyncRecord): Resolution;
  /** The team's active webhook secrets, newest first (empty: the webhook goes unsigned). */
  webhookSecrets(teamId: string): Promise<string[]>;
  /** Requests run at once per replica (truss's predict_concurrency default is 1). Default 1. */
  concurrency?: number;
  /** How long one predict attempt may take. Default 1 h (Baseten: async requests "run for up to 1 hour"). */
  predictTimeoutMs?: number;
  /** A result larger than this fails the request (it must fit in a webhook). Default 16 MiB. */
  maxResultBytes?: number;
  webhook?: Partial<WebhookPolicy>;
  /**
   * The autoscaler's load signal (src/plane/load.ts): each request QUEUED or IN_PROGRESS here counts as one
   * in flight for its deployment, as a held sync request does. Counts only leave the plane.
   */
  load?: { begin(exchange: object, deploymentId: string): void; end(exchange: object): void };
  /** Asks for a wake of a deployment with requests queued here and nothing ready (at most every 5 s). */
  wake?: (deploymentId: string) => Promise<void>;
  logger: Logger;
  now?: () => number;
}

/** A deployment with requests waiting is woken again after this, while nothing is ready. */
const WAKE_INTERVAL_MS = 5_000;

/** A busy replica (429) is asked again after this. */
const BUSY_RETRY_MS = 100;

export class AsyncWorker {
  readonly #o: AsyncWorkerOptions;
  readonly #hook: WebhookPolicy;
  readonly #now: () => number;
  readonly #concurrency: number;
  /** Running attempts per deployment and per replica endpoint. */
  readonly #byDeployment = new Map<string, number>();
  readonly #byEndpoint = new Map<string, number>();
  /** A request does not run again before this (a retry's backoff, a busy replica). */
  readonly #notBefore = new Map<string, number>();
  /** Requests whose webhook is being delivered (or waits for its next attempt). */
  readonly #delivering = new Set<string>();
  /** Deliveries waiting for their team's secrets: run again at once by `secretsMayBeBack`. */
  readonly #awaitingSecrets = new Map<string, { timer: NodeJS.Timeout; run: () => void }>();
  readonly #timers = new Set<NodeJS.Timeout>();
  readonly #running = new Set<Promise<void>>();
  readonly #sockets = new Map<string, Agent>();
  readonly #webhookAgent: Agent;
  /** The load signal's token per request counted, and the deployment it is counted for. */
  readonly #counted = new Map<string, { token: object; deployment: string }>();
  readonly #wokenAt = new Map<string, number>();
  #pumpScheduled = false;
  #sweep: NodeJS.Timeout | null = null;
  #stopped = false;
  /** Finished attempts, for the benchmark and tests. */
  completed = 0;

  constructor(options: AsyncWorkerOptions) {
    this.#o = options;
    this.#hook = { ...DEFAULT_WEBHOOK_POLICY, ...options.webhook };
    this.#now = options.now ?? Date.now;
    this.#concurrency = options.concurrency ?? 1;
    const allowPrivate = this.#hook.allowPrivate;
    this.#webhookAgent = new Agent({
      connect: {
        // Every address a name resolves to is checked before the connection is made to it (no rebinding
        // between a check and the connect: the connect uses the address this lookup returned).
        lookup: (hostname, opts, cb) =>
          dnsLookup(hostname, { ...opts, all: true }, (err, addresses) => {
            if (err) return cb(err, "", 0);
            const list = addresses as LookupAddress[];
            const bad = list.find((a) => !allowPrivate && isPrivateAddress(a.address));
            if (bad !== undefined) {
              const e = new Error(`webhook host ${hostname} resolves to a private address (${bad.address})`);
              (e as NodeJS.ErrnoException).code = "EWEBHOOKPRIVATE";
              return cb(e, "", 0);
            }
            if ((opts as { all?: boolean }).all)
              return (cb as unknown as (e: null, a: LookupAddress[]) => void)(null, list);
            return cb(null, list[0]!.address, list[0]!.family);
          }),
        ...(this.#hook.ca ? { ca: this.#hook.ca } : {}),
      },
    });
  }

  start(): void {
    this.#sweep = setInterval(() => {
      this.notify();
      this.#o.queue.maintain();
    }, 500);
    this.#sweep.unref();
    const teams = new Set<string>();
    for (const r of this.#o.queue.live()) if (r.webhook !== null) teams.add(r.team_id);
    for (const t of teams) this.prepare(t);
    for (const r of this.#o.queue.webhooksDue()) this.#deliver(r);
    this.notify();
  }

  /** Something changed (a request arrived, a replica became ready): look for work on the next tick. */
  notify(): void {
    if (this.#pumpScheduled || this.#stopped) return;
    this.#pumpScheduled = true;
    setImmediate(() => {
      this.#pumpScheduled = false;
      this.#pump();
    });
  }

  /** Stops taking work and waits (bounded) for running attempts; what is cut off runs again after restart. */
  async stop(graceMs = 5_000): Promise<void> {
    this.#stopped = true;
    if (this.#sweep) clearInterval(this.#sweep);
    for (const c of this.#counted.values()) this.#o.load?.end(c.token);
    this.#counted.clear();
    for (const t of this.#timers) clearTimeout(t);
    this.#timers.clear();
    await Promise.race([
      Promise.allSettled([...this.#running]),
      new Promise((r) => setTimeout(r, graceMs).unref()),
    ]);
    await Promise.all(
      [...this.#sockets.values(), this.#webhookAgent].map((a) => a.destroy().catch(() => {})),
    );
  }

  /** Requests running now on this plane, by deployment. */
  inFlight(deploymentId: string): number {
    return this.#byDeployment.get(deploymentId) ?? 0;
  }

  #pump(): void {
    if (this.#stopped) return;
    const now = this.#now();
    const queued: AsyncRecord[] = [];
    const live = new Set<string>();
    for (const r of this.#o.queue.live()) {
      live.add(r.id);
      if (r.status === "QUEUED") queued.push(r);
      else if (r.deployment_id !== null) this.#count(r, r.deployment_id);
    }
    // Ended (finished, expired, cancelled by the service) since the last pass: no longer in flight.
    for (const [id, c] of this.#counted) {
      if (!live.has(id)) {
        this.#o.load?.end(c.token);
        this.#counted.delete(id);
      }
    }
    queued.sort((a, b) => a.priority - b.priority || a.seq - b.seq);
    /** Deployments found full in this pass: later requests for them wait, earlier ones keep their turn. */
    const full = new Set<string>();
    for (const r of queued) {
      // max_time_in_queue_seconds bounds the wait for a first run; a request that ran waits for its retry.
      if (r.attempts === 0 && now >= r.expires_at) {
        const waited = Math.round((r.expires_at - r.created_at) / 1000);
        this.#end(r, "EXPIRED", [
          {
            code: "MODEL_UNAVAILABLE",
            message: `The request waited ${waited} s in the queue without running.`,
          },
        ]);
        continue;
      }
      if ((this.#notBefore.get(r.id) ?? 0) > now) continue;
      const res = this.#o.resolve(r);
      if (!res.ok) {
        if (res.final) this.#end(r, "FAILED", [res.error]);
        continue;
      }
      const dep = res.deploymentId;
      this.#count(r, dep);
      if (full.has(dep)) continue;
      const endpoints = this.#o.replicas(dep);
      if (endpoints.length === 0 && res.wakeable === true) this.#wakeUp(dep, now);
      const endpoint = this.#pick(endpoints);
      if (endpoint === null || this.inFlight(dep) >= endpoints.length * this.#concurrency) {
        full.add(dep);
        continue;
      }
      this.#run(r, dep, endpoint);
    }
  }

  /** Counts a live request in the load signal for `deployment` (moved if its target now names another). */
  #count(r: AsyncRecord, deployment: string): void {
    const load = this.#o.load;
    if (load === undefined) return;
    const c = this.#counted.get(r.id);
    if (c !== undefined && c.deployment === deployment) return;
    if (c !== undefined) load.end(c.token);
    const token = {};
    load.begin(token, deployment);
    this.#counted.set(r.id, { token, deployment });
  }

  #wakeUp(deployment: string, now: number): void {
    const wake = this.#o.wake;
    if (
      wake === undefined ||
      now - (this.#wokenAt.get(deployment) ?? Number.NEGATIVE_INFINITY) < WAKE_INTERVAL_MS
    ) {
      return;
    }
    this.#wokenAt.set(deployment, now);
    void wake(deployment).catch((err) => this.#o.logger.warn({ err, deployment }, "async wake failed"));
  }

  /** The least busy endpoint with a free slot, or null. */
  #pick(endpoints: readonly string[]): string | null {
    let best: string | null = null;
    let bestBusy = this.#concurrency;
    for (const e of endpoints) {
      const b = this.#byEndpoint.get(e) ?? 0;
      if (b < bestBusy) {
        best = e;
        bestBusy = b;
      }
    }
    return best;
  }

  #run(r: AsyncRecord, dep: string, endpoint: string): void {
    bump(this.#byDeployment, dep, 1);
    bump(this.#byEndpoint, endpoint, 1);
    this.#notBefore.delete(r.id);
    const input = r.input;
    if (r.webhook !== null) this.prepare(r.team_id);
    const started = this.#o.queue.start(r, dep);
    const p = (async () => {
      let released = false;
      const release = () => {
        if (released) return;
        released = true;
        bump(this.#byDeployment, dep, -1);
        bump(this.#byEndpoint, endpoint, -1);
        this.completed++;
        this.notify();
      };
      try {
        // The start line is not waited for: were the plane to crash before it is on disk, the request is
        // QUEUED on replay and runs again, as one that was IN_PROGRESS does (one attempt less counted).
        const outcome = await this.#predict(endpoint, r.id, input);
        if (this.#stopped) return;
        // The outcome changes the record at once (in memory); its line is written after the start line
        // (one ordered journal), and the replica's slot is free while it is synced.
        const settled = this.#settle(r, outcome);
        release();
        await settled;
        await started;
      } catch (err) {
        this.#o.logger.error({ err, request_id: r.id }, "async request bookkeeping failed");
      } finally {
        release();
      }
    })();
    this.#running.add(p);
    void p.finally(() => this.#running.delete(p));
  }

  async #settle(r: AsyncRecord, o: PredictOutcome): Promise<void> {
    switch (o.kind) {
      case "ok":
        return this.#end(r, "SUCCEEDED", [], o.output);
      case "busy":
      case "unreachable":
        // Nothing ran: the attempt does not count.
        this.#notBefore.set(r.id, this.#now() + BUSY_RETRY_MS);
        this.#later(BUSY_RETRY_MS, () => this.notify());
        return this.#o.queue.requeue(r, false);
      case "invalid":
        return this.#end(r, "FAILED", [{ code: "MODEL_INVALID_INPUT", message: o.message }]);
      case "failed":
      case "timeout": {
        if (r.attempts < r.retry.max_attempts) {
          const delay = retryDelayMs(r.retry, r.attempts + 1);
          this.#notBefore.set(r.id, this.#now() + delay);
          this.#later(delay, () => this.notify());
          this.#o.logger.warn(
            { request_id: r.id, attempt: r.attempts, delay_ms: delay, reason: o.message },
            "async attempt failed; retrying",
          );
          return this.#o.queue.requeue(r, true);
        }
        const code = o.kind === "timeout" ? "MODEL_PREDICT_TIMEOUT" : "MODEL_PREDICT_ERROR";
        return this.#end(r, "FAILED", [{ code, message: `${o.message} (after ${r.attempts} attempts)` }]);
      }
    }
  }

  #end(
    r: AsyncRecord,
    status: "SUCCEEDED" | "FAILED" | "EXPIRED",
    errors: AsyncError[],
    output: unknown = null,
  ): Promise<void> {
    this.#notBefore.delete(r.id);
    const done = this.#o.queue.finish(r, status, errors, output);
    return done.then(
      () => {
        if (r.webhook_status === "PENDING") this.#deliver(r);
      },
      (err) => this.#o.logger.error({ err, request_id: r.id }, "async result could not be recorded"),
    );
  }

  async #predict(endpoint: string, requestId: string, input: unknown): Promise<PredictOutcome> {
    const timeout = this.#o.predictTimeoutMs ?? 3_600_000;
    const limit = this.#o.maxResultBytes ?? 16 * 1024 * 1024;
    const unix = endpoint.startsWith("unix:") ? endpoint.slice(5) : null;
    const origin = unix === null ? `http://${endpoint}` : "http://localhost";
    let res: Dispatcher.ResponseData;
    try {
      res = await request(`${origin}${REPLICA_PREDICT_PATH}`, {
        method: "POST",
        headers: { "content-type": "application/json", "x-request-id": requestId },
        body: JSON.stringify(input),
        headersTimeout: timeout,
        bodyTimeout: timeout,
        ...(unix === null ? {} : { dispatcher: this.#socket(unix) }),
      });
    } catch (err) {
      const code = (err as { code?: string }).code ?? "";
      if (code === "ECONNREFUSED" || code === "ENOENT") return { kind: "unreachable", message: code };
      if (code === "UND_ERR_HEADERS_TIMEOUT")
        return { kind: "timeout", message: "The model did not answer in time." };
      return { kind: "failed", message: `The replica failed: ${(err as Error).message}` };
    }
    let text: string;
    try {
      text = await readLimited(res.body, limit);
    } catch (err) {
      const code = (err as { code?: string }).code ?? "";
      if (code === "UND_ERR_BODY_TIMEOUT")
        return { kind: "timeout", message: "The model did not answer in time." };
      return { kind: "failed", message: (err as Error).message };
    }
    const status = res.statusCode;
    if (status === 429) return { kind: "busy", message: "the replica is busy" };
    if (status >= 200 && status < 300) {
      const type = String(res.headers["content-type"] ?? "");
      if (!type.includes("json")) return { kind: "ok", output: text };
      try {
        return { kind: "ok", output: JSON.parse(text) };
      } catch {
        return { kind: "failed", message: "The model's answer is not valid JSON." };
      }
    }
    const message = errorMessageOf(text) ?? `The model answered ${status}.`;
    if (status >= 400 && status < 500) return { kind: "invalid", message };
    return { kind: "failed", message };
  }

  #socket(path: string): Agent {
    let a = this.#sockets.get(path);
    if (a === undefined) {
      a = new Agent({ connect: { socketPath: path } });
      this.#sockets.set(path, a);
    }
    return a;
  }

  #deliver(r: AsyncRecord): void {
    if (this.#stopped || this.#delivering.has(r.id)) return;
    this.#delivering.add(r.id);
    this.#attempt(r, 1, null);
  }

  /**
   * Delivery attempt `attempt` of `r`'s webhook. `waiting`: since when (and how many times) this attempt has
   * waited for the team's secrets; a wait is not an attempt (the receiver was not tried).
   */
  #attempt(r: AsyncRecord, attempt: number, waiting: { since: number; times: number } | null): void {
    if (this.#stopped) return;
    const p = (async () => {
      const outcome = await this.#sendWebhook(r);
      if (this.#stopped) return;
      if (outcome === null) {
        this.#delivering.delete(r.id);
        await this.#o.queue.webhookDone(r, "SUCCEEDED");
        return;
      }
      if (outcome.kind === "secrets") {
        // The control plane cannot be asked and this plane holds no answer yet (a plane started while the
        // control plane is down): wait for it, for as long as `secretsWaitMs`, rather than fail a webhook
        // over a dependency's outage or send it unsigned.
        const w = waiting ?? { since: this.#now(), times: 0 };
        if (this.#now() - w.since >= this.#hook.secretsWaitMs) {
          this.#o.logger.error(
            { request_id: r.id, waited_ms: this.#now() - w.since, reason: outcome.reason },
            "webhook given up: the team's webhook secrets stayed unavailable",
          );
          this.#delivering.delete(r.id);
          await this.#o.queue.webhookDone(r, "FAILED");
          return;
        }
        const delay = Math.min(this.#hook.initialDelayMs * 2 ** w.times, this.#hook.maxDelayMs);
        this.#o.logger.warn(
          {
            request_id: r.id,
            attempt,
            waited_ms: this.#now() - w.since,
            retry_in_ms: delay,
            reason: outcome.reason,
          },
          "webhook waits for the team's webhook secrets",
        );
        const run = () => {
          const a = this.#awaitingSecrets.get(r.id);
          if (a === undefined) return;
          this.#awaitingSecrets.delete(r.id);
          clearTimeout(a.timer);
          this.#timers.delete(a.timer);
          this.#attempt(r, attempt, { since: w.since, times: w.times + 1 });
        };
        if (this.#stopped) return;
        const timer = setTimeout(run, delay);
        this.#timers.add(timer);
        this.#awaitingSecrets.set(r.id, { timer, run });
        return;
      }
      this.#o.logger.warn({ request_id: r.id, attempt, reason: outcome.reason }, "webhook delivery failed");
      if (attempt >= this.#hook.maxAttempts || outcome.kind === "refused") {
        this.#delivering.delete(r.id);
        await this.#o.queue.webhookDone(r, "FAILED");
        return;
      }
      const delay = Math.min(this.#hook.initialDelayMs * 2 ** (attempt - 1), this.#hook.maxDelayMs);
      this.#later(delay, () => this.#attempt(r, attempt + 1, null));
    })().catch((err) => this.#o.logger.error({ err, request_id: r.id }, "webhook bookkeeping failed"));
    this.#running.add(p);
    void p.finally(() => this.#running.delete(p));
  }

  /** The control plane answers again: deliveries waiting for secrets try at once, not after their backoff. */
  secretsMayBeBack(): void {
    for (const a of [...this.#awaitingSecrets.values()]) a.run();
  }

  /**
   * Asks for a team's webhook secrets ahead of its first delivery (a request with a webhook was accepted or
   * starts here), so this plane holds an answer should the control plane be down when the result is ready.
   */
  prepare(teamId: string): void {
    if (this.#stopped) return;
    void this.#o.webhookSecrets(teamId).catch(() => {});
  }

  /** One delivery attempt: null when the receiver answered 2xx, else why not. */
  async #sendWebhook(r: AsyncRecord): Promise<DeliveryFailure | null> {
    const url = r.webhook!;
    const parsed = parseWebhookUrl(url);
    if (!parsed.ok) return { kind: "refused", reason: parsed.message };
    if (!parsed.https && !this.#hook.allowHttp)
      return { kind: "refused", reason: "webhooks must use https on this plane" };
    const host = parsed.url.hostname.replace(/^\[|\]$/g, "");
    if (isIP(host) !== 0 && !this.#hook.allowPrivate && isPrivateAddress(host)) {
      return { kind: "refused", reason: `${host} is a private address` };
    }
    let secrets: string[];
    try {
      secrets = await this.#o.webhookSecrets(r.team_id);
    } catch (err) {
      // Unsigned would be accepted by a receiver that does not check: wait for the secrets instead.
      return {
        kind: "secrets",
        reason: `the team's webhook secrets are not available: ${(err as Error).message}`,
      };
    }
    const payload: WebhookPayload = {
      request_id: r.id,
      model_id: r.model_id,
      deployment_id: r.deployment_id,
      type: "async_request_completed",
      time: new Date(this.#now()).toISOString(),
      data: r.output,
      errors: r.errors,
    };
    const body = JSON.stringify(payload);
    const signature = webhookSignature(secrets, body);
    const headers: Record<string, string> = {
      "content-type": "application/json",
      "user-agent": "meridian-async/1",
    };
    if (signature !== null) headers["x-baseten-signature"] = signature;
    try {
      const res = await request(url, {
        method: "POST",
        headers,
        body,
        dispatcher: this.#webhookAgent,
        headersTimeout: this.#hook.timeoutMs,
        bodyTimeout: this.#hook.timeoutMs,
        // undici follows no redirect by default: a 3xx is a failed delivery, never a second destination.
      });
      await readLimited(res.body, 64 * 1024).catch(() => "");
      if (res.statusCode >= 200 && res.statusCode < 300) return null;
      return { kind: "failed", reason: `the receiver answered ${res.statusCode}` };
    } catch (err) {
      const code = (err as { code?: string }).code;
      if (code === "EWEBHOOKPRIVATE") return { kind: "refused", reason: (err as Error).message };
      return { kind: "failed", reason: `${code ?? "error"}: ${(err as Error).message}` };
    }
  }

  #later(ms: number, fn: () => void): void {
    if (this.#stopped) return;
    const t = setTimeout(() => {
      this.#timers.delete(t);
      fn();
    }, ms);
    this.#timers.add(t);
  }

  /** Whether a request has ended (for tests). */
  static ended(r: AsyncRecord): boolean {
    return isFinal(r.status);
  }
}

/**
 * Why a delivery attempt did not succeed: `refused` (the destination is not allowed: never retried),
 * `failed` (the receiver was tried: one attempt used), `secrets` (the receiver was not tried: no secrets).
 */
type DeliveryFailure = { kind: "refused" | "failed" | "secrets"; reason: string };

type PredictOutcome =
  | { kind: "ok"; output: unknown }
  | { kind: "busy"; message: string }
  | { kind: "unreachable"; message: string }
  | { kind: "invalid"; message: string }
  | { kind: "failed"; message: string }
  | { kind: "timeout"; message: string };

function bump(map: Map<string, number>, key: string, by: number): void {
  const n = (map.get(key) ?? 0) + by;
  if (n <= 0) map.delete(key);
  else map.set(key, n);
}

async function readLimited(body: Dispatcher.ResponseData["body"], limit: number): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body) {
    size += (chunk as Buffer).length;
    if (size > limit) {
      body.destroy();
      throw new Error(`The model's answer is larger than ${limit} bytes.`);
    }
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks).toString("utf8");
}

function errorMessageOf(text: string): string | null {
  try {
    const body = JSON.parse(text) as { error?: unknown };
    return typeof body.error === "string" ? body.error.slice(0, 1_000) : null;
  } catch {
    return text.length > 0 ? text.slice(0, 1_000) : null;
  }
}
