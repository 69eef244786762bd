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
  readonly #seen = new Set<string>();
  // Arrival order as a ring: dropping the oldest is O(1) (deleting from the front of a Map and then
  // iterating it again skips the deleted slots, which made each check O(n) at the bound).
  readonly #keys: Array<string | undefined>;
  readonly #times: Float64Array;
  #head = 0;
  #count = 0;
  /** Messages with a time at or before this can no longer be told apart from replays: refused. */
  #horizon = Number.NEGATIVE_INFINITY;

  constructor(options: ReplayCacheOptions) {
    if (!Number.isInteger(options.maxEntries) || options.maxEntries < 1) {
      throw new RangeError("maxEntries must be a positive integer");
    }
    this.#maxEntries = options.maxEntries;
    this.#windowMs = options.windowMs;
    this.#keys = new Array<string | undefined>(options.maxEntries);
    this.#times = new Float64Array(options.maxEntries);
  }

  get size(): number {
    return this.#count;
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
    if (this.#count === this.#maxEntries) {
      const time = this.#drop();
      if (time > this.#horizon) this.#horizon = time;
      if (timeMs <= this.#horizon) return "expired";
    }
    const tail = (this.#head + this.#count) % this.#maxEntries;
    this.#keys[tail] = key;
    this.#times[tail] = timeMs;
    this.#count++;
    this.#seen.add(key);
    return "fresh";
  }

  /** Drops entries from the front while they are past their window (arrival order ≈ time order). */
  #sweep(nowMs: number): void {
    while (this.#count > 0 && this.#times[this.#head]! + this.#windowMs < nowMs) this.#drop();
  }

  /** Forgets the oldest entry; returns its time. */
  #drop(): number {
    const time = this.#times[this.#head]!;
    this.#seen.delete(this.#keys[this.#head]!);
    this.#keys[this.#head] = undefined;
    this.#head = (this.#head + 1) % this.#maxEntries;
    this.#count--;
    return time;
  }
}
