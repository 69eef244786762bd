// Enforces a model's `predict_concurrency`: at most `limit` predictions run at once, up to `maxQueued` wait
// in arrival order, and anything beyond that is refused at once (the caller answers 429).

export type Release = () => void;

interface Waiter {
  grant: (release: Release) => void;
  signal: AbortSignal | undefined;
  onAbort: () => void;
}

export class ConcurrencyLimiter {
  #running = 0;
  readonly #queue: Waiter[] = [];

  constructor(
    readonly limit: number,
    readonly maxQueued: number,
  ) {
    if (!Number.isSafeInteger(limit) || limit < 1) throw new RangeError("limit must be a positive integer");
    if (!Number.isSafeInteger(maxQueued) || maxQueued < 0) {
      throw new RangeError("maxQueued must be a non-negative integer");
    }
  }

  get running(): number {
    return this.#running;
  }

  get queued(): number {
    return this.#queue.length;
  }

  /**
   * A slot, now or when one frees up; `null` when the queue is full. A waiter whose signal aborts leaves
   * the queue and its promise rejects with the signal's reason.
   */
  acquire(signal?: AbortSignal): Promise<Release> | null {
    if (this.#running < this.limit) {
      this.#running++;
      return Promise.resolve(this.#releaser());
    }
    if (this.#queue.length >= this.maxQueued) return null;
    return new Promise<Release>((resolve, reject) => {
      if (signal?.aborted) {
        reject(signal.reason);
        return;
      }
      const waiter: Waiter = {
        grant: resolve,
        signal,
        onAbort: () => {
          const at = this.#queue.indexOf(waiter);
          if (at >= 0) this.#queue.splice(at, 1);
          reject(signal?.reason);
        },
      };
      signal?.addEventListener("abort", waiter.onAbort, { once: true });
      this.#queue.push(waiter);
    });
  }

  #releaser(): Release {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.#queue.shift();
      if (next === undefined) {
        this.#running--;
        return;
      }
      // The slot passes straight to the next waiter, so `running` does not change.
      next.signal?.removeEventListener("abort", next.onAbort);
      next.grant(this.#releaser());
    };
  }
}
