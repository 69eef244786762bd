// A bounded memory of signed messages already accepted (plane-to-plane hops, the control plane's log
// fetches), so a captured message cannot be played again while its time is still inside the window.
// Only messages whose signature verified are recorded, so nobody without a key can fill it.

export interface ReplayCacheOptions {
  /** At most this many messages are remembered (see `check` for what happens at the bound). */
  maxEntries: number;
  /** A message is acceptable while `|now - time| <= windowMs`; it is remembered until `time + windowMs`. */
  windowMs: number;
}

/** `fresh`: first sight, now remembered; `replayed`: seen before; `expired`: too old to tell (see below). */
export type ReplayCheck = "fresh" | "replayed" | "expired";

export class ReplayCache {
  readonly #maxEntries: number;
  readonly #windowMs: number;
  /** key → the message's own time (ms), in insertion order. */
  readonly #seen = new Map<string, number>();
  /** Messages with a time at or before this can no longer be told apart from replays: refused. */
  #horizon = Number.NEGATIVE_INFINITY;

  constructor(options: ReplayCacheOptions) {
    if (!Number.isInteger(options.maxEntries) || options.maxEntries < 1) {
      throw new RangeError("maxEntries must be a positive integer");
    }
    this.#maxEntries = options.maxEntries;
    this.#windowMs = options.windowMs;
  }

  get size(): number {
    return this.#seen.size;
  }

  /**
   * Records the message `key` of time `timeMs` unless it was seen. At the bound the oldest entry (in
   * arrival order) is dropped and the horizon moves up to its time: from then on a message at or before
   * that time is `expired`, so a replay is never accepted — the window shrinks under a flood instead of
   * forgetting. Legitimate messages are a few milliseconds old and keep passing unless more than
   * `maxEntries` arrive within their age.
   */
  check(key: string, timeMs: number, nowMs: number): ReplayCheck {
    this.#sweep(nowMs);
    if (Math.abs(nowMs - timeMs) > this.#windowMs || timeMs <= this.#horizon) return "expired";
    if (this.#seen.has(key)) return "replayed";
    while (this.#seen.size >= this.#maxEntries) {
      const [oldest, time] = this.#seen.entries().next().value as [string, number];
      this.#seen.delete(oldest);
      if (time > this.#horizon) this.#horizon = time;
    }
    if (timeMs <= this.#horizon) return "expired";
    this.#seen.set(key, timeMs);
    return "fresh";
  }

  /** Drops entries from the front while they are past their window (arrival order ≈ time order). */
  #sweep(nowMs: number): void {
    for (const [key, time] of this.#seen) {
      if (time + this.#windowMs >= nowMs) return;
      this.#seen.delete(key);
    }
  }
}
