// Wakes long-polls when the installation's revision moves past what a watcher has. Writers in this process
// call `changed()` after commit; a light periodic read catches writes by other control replicas sharing
// the same PostgreSQL.

import type { Store } from "../store/store.ts";

export class RevisionFeed {
  private current = 0;
  private readonly waiters = new Set<{ after: number; wake: () => void }>();
  private timer: NodeJS.Timeout | undefined;
  private readonly store: Store;
  private readonly pollMs: number;

  constructor(store: Store, pollMs = 250) {
    this.store = store;
    this.pollMs = pollMs;
  }

  async start(): Promise<void> {
    this.current = await this.store.revision();
    this.timer = setInterval(() => void this.changed(), this.pollMs);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
    for (const w of this.waiters) w.wake();
    this.waiters.clear();
  }

  revision(): number {
    return this.current;
  }

  /** Re-reads the revision and wakes every waiter it has passed. */
  async changed(): Promise<void> {
    let revision: number;
    try {
      revision = await this.store.revision();
    } catch {
      return; // the periodic read retries; a failing store is reported by the requests that use it
    }
    if (revision <= this.current) return;
    this.current = revision;
    for (const w of this.waiters) {
      if (revision > w.after) {
        this.waiters.delete(w);
        w.wake();
      }
    }
  }

  /** Resolves once the revision exceeds `after`, or after `timeoutMs`, or when `signal` aborts. */
  wait(after: number, timeoutMs: number, signal?: AbortSignal): Promise<void> {
    if (this.current > after) return Promise.resolve();
    return new Promise((resolve) => {
      const waiter = {
        after,
        wake: () => {
          clearTimeout(timer);
          signal?.removeEventListener("abort", waiter.wake);
          this.waiters.delete(waiter);
          resolve();
        },
      };
      const timer = setTimeout(waiter.wake, timeoutMs);
      signal?.addEventListener("abort", waiter.wake, { once: true });
      this.waiters.add(waiter);
    });
  }
}
