// Wakes long-polls when the installation's revision moves past what a watcher has. Writers in this process
// call `changed()` after commit; on PostgreSQL a LISTEN on the revision channel hears commits of other
// control replicas at once, and a light periodic read (every 250 ms) catches whatever a lost listening
// connection missed (docs/high-availability.md).

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

  private listener: { stop(): Promise<void> } | null = null;
  private listening = false;
  private stopped = false;
  private lastListenTryMs = 0;

  async start(): Promise<void> {
    this.current = await this.store.revision();
    await this.listen();
    this.timer = setInterval(() => {
      void this.changed();
      // A listening connection that ended is opened again, at most once a second.
      if (!this.listening && Date.now() - this.lastListenTryMs >= 1_000) void this.listen();
    }, this.pollMs);
    this.timer.unref();
  }

  private async listen(): Promise<void> {
    if (this.stopped || this.store.dialect !== "postgres") return;
    this.lastListenTryMs = Date.now();
    this.listening = true;
    try {
      this.listener = await this.store.listenRevisions(
        () => void this.changed(),
        () => {
          this.listening = false;
          this.listener = null;
        },
      );
      if (this.stopped) await this.listener?.stop();
    } catch {
      this.listening = false; // the periodic read carries on; the next tick tries again
    }
  }

  stop(): void {
    this.stopped = true;
    void this.listener?.stop();
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
