// Long-poll watcher of a versioned snapshot served by the control plane (DESIGN.md §4), used by the DNS
// responder and the workload planes. Keeps serving the last snapshot while the control plane is away
// (DESIGN.md §2.7) and can persist it so a restart with the control plane still down serves too.
import { randomBytes } from "node:crypto";
import { mkdir, open, readFile, rename, rm } from "node:fs/promises";
import { dirname } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import type { Logger } from "pino";
import { type Dispatcher, request } from "undici";

/** A snapshot as the control plane serves it: anything with a strictly increasing revision. */
export interface Versioned {
  revision: number;
}

/** Where a consumer gets its current snapshot and hears about new ones. */
export interface SnapshotSource<T> {
  current(): T | null;
  /** Calls `listener` with every snapshot accepted from now on; returns the unsubscribe function. */
  subscribe(listener: (snapshot: T) => void): () => void;
}

/**
 * `connecting`: no poll has succeeded yet since start(); `connected`: the last poll got 200 or 304;
 * `disconnected`: the last poll failed and the watcher is backing off.
 */
export type WatchState = "connecting" | "connected" | "disconnected";

export interface SnapshotWatcherOptions<T extends Versioned> {
  /** The long-poll endpoint, e.g. `http://control:8080/v1/internal/dns/snapshot`. */
  url: string;
  /** Sent as `Authorization: Bearer {token}`. */
  token: string;
  /**
   * Validates a response body (or the cache file) into a snapshot; throws on anything else. A rejected
   * body counts as a failed poll: the last good snapshot keeps serving.
   */
  parse: (body: unknown) => T;
  /** How long the server may hold a poll open, in seconds (`wait=`). Default 30. */
  waitSeconds?: number;
  /** Extra time beyond `waitSeconds` before a silent poll is abandoned. Default 10 000 ms. */
  requestSlackMs?: number;
  /** Retry delays after a failure: capped exponential with jitter. Defaults 200 ms doubling to 10 s. */
  backoff?: { initialMs?: number; maxMs?: number };
  /** File where every accepted snapshot is written (atomically) and which start() loads. */
  cacheFile?: string;
  logger?: Logger;
  onSnapshot?: (snapshot: T) => void;
  onStateChange?: (state: WatchState, error?: Error) => void;
  /** undici dispatcher for the polls; the global one by default. */
  dispatcher?: Dispatcher;
  /** Source of jitter in [0, 1); injectable so tests are deterministic. */
  random?: () => number;
}

const DEFAULT_WAIT_SECONDS = 30;
const DEFAULT_SLACK_MS = 10_000;
const DEFAULT_BACKOFF_INITIAL_MS = 200;
const DEFAULT_BACKOFF_MAX_MS = 10_000;
/** A 200 that does not advance the revision means a misbehaving server; do not spin on it. */
const STALE_RESPONSE_DELAY_MS = 1_000;

/** A poll that got an answer other than 200 or 304, or a body that was not a snapshot. */
export class WatchError extends Error {
  readonly status: number | null;
  constructor(message: string, status: number | null = null) {
    super(message);
    this.name = "WatchError";
    this.status = status;
  }
}

/**
 * Delay before retry number `attempt` (0-based): uniformly in [d/2, d) where d = min(max, initial·2^attempt)
 * ("equal jitter": spreads a fleet's retries yet never retries immediately).
 */
export function backoffDelay(
  attempt: number,
  initialMs: number,
  maxMs: number,
  random: () => number,
): number {
  const ceiling = Math.min(maxMs, initialMs * 2 ** Math.min(attempt, 30));
  return ceiling / 2 + (random() * ceiling) / 2;
}

export class SnapshotWatcher<T extends Versioned> implements SnapshotSource<T> {
  readonly #options: SnapshotWatcherOptions<T>;
  readonly #listeners = new Set<(snapshot: T) => void>();
  readonly #stateListeners = new Set<(state: WatchState, error?: Error) => void>();
  #snapshot: T | null = null;
  #state: WatchState = "connecting";
  #abort: AbortController | null = null;
  #loop: Promise<void> | null = null;
  #waiters: Array<(snapshot: T) => void> = [];

  constructor(options: SnapshotWatcherOptions<T>) {
    this.#options = options;
    if (options.onSnapshot) this.#listeners.add(options.onSnapshot);
    if (options.onStateChange) this.#stateListeners.add(options.onStateChange);
  }

  current(): T | null {
    return this.#snapshot;
  }

  get revision(): number {
    return this.#snapshot?.revision ?? 0;
  }

  get state(): WatchState {
    return this.#state;
  }

  subscribe(listener: (snapshot: T) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  onStateChange(listener: (state: WatchState, error?: Error) => void): () => void {
    this.#stateListeners.add(listener);
    return () => this.#stateListeners.delete(listener);
  }

  /** Resolves with the current snapshot, or with the first one accepted; rejects if `signal` aborts. */
  ready(signal?: AbortSignal): Promise<T> {
    if (this.#snapshot !== null) return Promise.resolve(this.#snapshot);
    return new Promise((resolve, reject) => {
      const waiter = (s: T) => {
        signal?.removeEventListener("abort", onAbort);
        resolve(s);
      };
      const onAbort = () => {
        this.#waiters = this.#waiters.filter((w) => w !== waiter);
        reject(signal?.reason ?? new Error("aborted"));
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.#waiters.push(waiter);
    });
  }

  /** Loads the cache file (if any) and starts polling. Does not wait for the control plane. */
  async start(): Promise<void> {
    if (this.#loop !== null) throw new Error("SnapshotWatcher already started");
    const abort = new AbortController();
    this.#abort = abort;
    await this.#loadCache();
    this.#setState("connecting");
    this.#loop = this.#run(abort.signal);
  }

  /** Aborts the in-flight poll or backoff sleep and waits for the loop to end. */
  async stop(): Promise<void> {
    this.#abort?.abort();
    await this.#loop;
    this.#loop = null;
    this.#abort = null;
  }

  async #run(signal: AbortSignal): Promise<void> {
    const initialMs = this.#options.backoff?.initialMs ?? DEFAULT_BACKOFF_INITIAL_MS;
    const maxMs = this.#options.backoff?.maxMs ?? DEFAULT_BACKOFF_MAX_MS;
    const random = this.#options.random ?? Math.random;
    let failures = 0;
    while (!signal.aborted) {
      try {
        const advanced = await this.#poll(signal);
        failures = 0;
        this.#setState("connected");
        if (advanced === "stale") await sleep(STALE_RESPONSE_DELAY_MS, undefined, { signal });
      } catch (err) {
        if (signal.aborted) break;
        const error = err instanceof Error ? err : new Error(String(err));
        const delay = backoffDelay(failures, initialMs, maxMs, random);
        failures += 1;
        this.#options.logger?.warn(
          {
            err: error,
            url: this.#options.url,
            failures,
            retryInMs: Math.round(delay),
            revision: this.revision,
          },
          "snapshot poll failed",
        );
        this.#setState("disconnected", error);
        try {
          await sleep(delay, undefined, { signal });
        } catch {
          break;
        }
      }
    }
  }

  /** One long poll. Returns whether it brought a newer snapshot. */
  async #poll(signal: AbortSignal): Promise<"new" | "unchanged" | "stale"> {
    const waitSeconds = this.#options.waitSeconds ?? DEFAULT_WAIT_SECONDS;
    const url = new URL(this.#options.url);
    url.searchParams.set("after", String(this.revision));
    url.searchParams.set("wait", String(waitSeconds));
    const timeoutMs = waitSeconds * 1000 + (this.#options.requestSlackMs ?? DEFAULT_SLACK_MS);
    const response = await request(url, {
      method: "GET",
      headers: { authorization: `Bearer ${this.#options.token}`, accept: "application/json" },
      signal,
      headersTimeout: timeoutMs,
      bodyTimeout: timeoutMs,
      ...(this.#options.dispatcher ? { dispatcher: this.#options.dispatcher } : {}),
    });
    if (response.statusCode === 304) {
      await response.body.dump();
      return "unchanged";
    }
    if (response.statusCode !== 200) {
      const text = await response.body.text().catch(() => "");
      throw new WatchError(
        `snapshot poll answered ${response.statusCode}: ${text.slice(0, 200)}`,
        response.statusCode,
      );
    }
    let body: unknown;
    try {
      body = await response.body.json();
    } catch (err) {
      throw new WatchError(`snapshot body is not JSON: ${(err as Error).message}`, 200);
    }
    const snapshot = this.#parse(body);
    if (snapshot.revision <= this.revision) {
      this.#options.logger?.warn(
        { revision: snapshot.revision, current: this.revision },
        "snapshot poll returned no newer revision",
      );
      return "stale";
    }
    await this.#accept(snapshot);
    return "new";
  }

  #parse(body: unknown): T {
    let snapshot: T;
    try {
      snapshot = this.#options.parse(body);
    } catch (err) {
      throw new WatchError(`snapshot rejected: ${(err as Error).message}`, 200);
    }
    if (typeof snapshot?.revision !== "number" || !Number.isFinite(snapshot.revision)) {
      throw new WatchError("snapshot has no numeric revision", 200);
    }
    return snapshot;
  }

  async #accept(snapshot: T): Promise<void> {
    this.#snapshot = snapshot;
    this.#options.logger?.info({ revision: snapshot.revision }, "snapshot accepted");
    this.#emit(snapshot);
    await this.#writeCache(snapshot);
  }

  #emit(snapshot: T): void {
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const waiter of waiters) waiter(snapshot);
    for (const listener of this.#listeners) {
      try {
        listener(snapshot);
      } catch (err) {
        // A consumer's bug must not stop the watch loop; it is logged and the next snapshot still arrives.
        this.#options.logger?.error({ err, revision: snapshot.revision }, "snapshot listener threw");
      }
    }
  }

  #setState(state: WatchState, error?: Error): void {
    if (state === this.#state) return;
    this.#state = state;
    this.#options.logger?.info({ state, url: this.#options.url }, "snapshot watch state changed");
    for (const listener of this.#stateListeners) {
      try {
        listener(state, error);
      } catch (err) {
        this.#options.logger?.error({ err, state }, "state listener threw");
      }
    }
  }

  async #loadCache(): Promise<void> {
    const file = this.#options.cacheFile;
    if (file === undefined) return;
    let text: string;
    try {
      text = await readFile(file, "utf8");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") {
        this.#options.logger?.warn({ err, file }, "snapshot cache unreadable; ignored");
      }
      return;
    }
    try {
      const snapshot = this.#parse(JSON.parse(text));
      if (snapshot.revision <= this.revision) return;
      this.#snapshot = snapshot;
      this.#options.logger?.info({ revision: snapshot.revision, file }, "snapshot loaded from cache");
      this.#emit(snapshot);
    } catch (err) {
      this.#options.logger?.warn({ err, file }, "snapshot cache invalid; ignored");
    }
  }

  /** Write to a temporary file in the same directory, fsync, then rename: readers see old or new, never half. */
  async #writeCache(snapshot: T): Promise<void> {
    const file = this.#options.cacheFile;
    if (file === undefined) return;
    const temp = `${file}.${process.pid}.${randomBytes(4).toString("hex")}.tmp`;
    try {
      await mkdir(dirname(file), { recursive: true });
      const handle = await open(temp, "w", 0o600);
      try {
        await handle.writeFile(JSON.stringify(snapshot));
        await handle.sync();
      } finally {
        await handle.close();
      }
      await rename(temp, file);
    } catch (err) {
      // Serving from memory continues; only a restart without the control plane would be affected.
      this.#options.logger?.error({ err, file }, "snapshot cache write failed");
      await rm(temp, { force: true }).catch(() => undefined);
    }
  }
}

/** A source that never changes: a snapshot read from a file, or a test fixture. */
export function staticSnapshotSource<T>(snapshot: T): SnapshotSource<T> {
  return { current: () => snapshot, subscribe: () => () => undefined };
}
