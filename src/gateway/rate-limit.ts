// The async routes' per-key rate limits (the reference: "Rate limited to 20 requests per second" on
// `async_request` status and cancel and on `async_queue_status`; docs/async.md#rate-limits): one token bucket
// per API key and route class, held by the entry plane. Only keys that authenticated get a bucket, so a
// stranger cannot grow the table.

/** Token buckets by key; each holds `perSecond` tokens at most (a one-second burst) and refills continuously. */
export class RateLimiter {
  readonly #perSecond: number;
  readonly #maxKeys: number;
  readonly #buckets = new Map<string, { tokens: number; at: number }>();

  constructor(perSecond: number, maxKeys = 100_000) {
    this.#perSecond = perSecond;
    this.#maxKeys = maxKeys;
  }

  get perSecond(): number {
    return this.#perSecond;
  }

  /** Takes one token for `key` at `nowMs`: true when the call may go on, false when it is over the rate. */
  take(key: string, nowMs: number): boolean {
    if (this.#perSecond <= 0) return true;
    let b = this.#buckets.get(key);
    if (b === undefined) {
      // The oldest bucket goes first (a Map keeps insertion order); a forgotten key starts full again.
      if (this.#buckets.size >= this.#maxKeys) this.#buckets.delete(this.#buckets.keys().next().value!);
      b = { tokens: this.#perSecond, at: nowMs };
      this.#buckets.set(key, b);
    } else {
      // A clock that went back refills nothing; one that jumped ahead refills at most a full bucket.
      const elapsed = Math.max(0, nowMs - b.at);
      b.tokens = Math.min(this.#perSecond, b.tokens + (elapsed * this.#perSecond) / 1000);
      b.at = Math.max(b.at, nowMs);
    }
    if (b.tokens < 1) return false;
    b.tokens -= 1;
    return true;
  }

  /** Seconds until `key` has a token again (at least 1: Retry-After is whole seconds, RFC 9110 §10.2.3). */
  retryAfterSeconds(key: string): number {
    const b = this.#buckets.get(key);
    if (b === undefined || this.#perSecond <= 0) return 1;
    return Math.max(1, Math.ceil((1 - b.tokens) / this.#perSecond));
  }
}
