// Parked requests (docs/autoscaling.md "Backpressure", issue 12 item 3): a request for a deployment with
// nothing ready where it may be served is held here, at the ingress that received it (in its region),
// while this plane asks the control plane to wake the deployment; it goes on, oldest first, as soon as a
// replica is routable, or gets 503 `model_unavailable` at the predict timeout. It is never sent out of its
// region to find a warm replica: only routing decides where it goes, once something is ready. The queue is
// bounded per deployment (one environment's) per ingress under every backpressure policy: a full queue is
// 429 with Retry-After, so however many requests a caller sends, an ingress holds a bounded number.

import { type Admission, admitRequest, type BackpressureLimits } from "../core/autoscaling-settings.ts";
import type { DeploymentScale } from "../core/snapshot.ts";

export type ParkOutcome = { kind: "go" } | { kind: "timeout" } | { kind: "unwakeable" };

interface Parked {
  exchange: object;
  resolve(outcome: ParkOutcome): void;
  timer: NodeJS.Timeout;
}

export interface ParkingOptions {
  limits: BackpressureLimits;
  /** How long a request may be held (the predict timeout). */
  timeoutMs: number;
  /**
   * How many held requests may go on now: 0 while nothing the deployment's requests may go to is ready,
   * the free slots of this plane's ready replicas (`concurrency_target` each), or any number when a peer
   * plane of the region has one (it admits them itself).
   */
  room(deploymentId: string): number;
  /**
   * Asks the control plane to wake the deployment; resolves false when it did not accept the wake (anything
   * else counts as accepted).
   */
  wake(deploymentId: string): Promise<unknown>;
  /**
   * Held requests fail closed (503) once wakes have not been accepted for this long with nothing ready:
   * with the control plane unreachable, nothing will start a replica. Default 10 s.
   */
  wakeGiveUpMs?: number;
  /** How often held requests are checked for a ready replica. Default 10 ms. */
  pollMs?: number;
}

export class Parking {
  readonly #o: ParkingOptions;
  readonly #queues = new Map<string, Parked[]>();
  /** Per deployment: a wake in flight, and whether more requests arrived since it was sent. */
  readonly #waking = new Map<string, { again: boolean }>();
  /** Since when wakes for a deployment have not been accepted (absent: the last one was). */
  readonly #failingSince = new Map<string, number>();
  /** When a wake was last sent per deployment, to remind the control plane while nothing is ready. */
  readonly #lastWake = new Map<string, number>();
  #timer: NodeJS.Timeout | null = null;

  constructor(options: ParkingOptions) {
    this.#o = options;
  }

  parked(deploymentId: string): number {
    return this.#queues.get(deploymentId)?.length ?? 0;
  }

  /** What to do with an arriving request (src/core/autoscaling-settings.ts `admitRequest`). */
  admit(deploymentId: string, scale: DeploymentScale, ready: number, forwarded: number): Admission {
    return admitRequest({
      policy: scale.policy,
      concurrency_target: scale.concurrency_target,
      ready,
      forwarded,
      parked: this.parked(deploymentId),
      limits: this.#o.limits,
    });
  }

  /** Holds `exchange` until the deployment is routable (then `go`) or the timeout. */
  park(exchange: object, deploymentId: string): Promise<ParkOutcome> {
    return new Promise<ParkOutcome>((resolve) => {
      const queue = this.#queues.get(deploymentId) ?? [];
      this.#queues.set(deploymentId, queue);
      const entry: Parked = {
        exchange,
        resolve,
        timer: setTimeout(() => {
          this.#remove(deploymentId, entry);
          resolve({ kind: "timeout" });
        }, this.#o.timeoutMs),
      };
      entry.timer.unref();
      queue.push(entry);
      this.#wake(deploymentId);
      this.#ensurePolling();
    });
  }

  /** An explicit wake (`POST …/wake`): asks the control plane, coalesced with the wakes in flight. */
  wakeNow(deploymentId: string): void {
    this.#wake(deploymentId);
  }

  /** The exchange ended while held (its client went away): its place is freed. */
  forget(exchange: object): void {
    for (const [id, queue] of this.#queues) {
      const entry = queue.find((e) => e.exchange === exchange);
      if (entry !== undefined) {
        clearTimeout(entry.timer);
        this.#remove(id, entry);
        return;
      }
    }
  }

  /** Releases everything held (the ingress stops): each request is planned again, and refused there. */
  stop(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
    for (const queue of this.#queues.values()) {
      for (const e of queue) {
        clearTimeout(e.timer);
        e.resolve({ kind: "timeout" });
      }
    }
    this.#queues.clear();
  }

  #remove(id: string, entry: Parked): void {
    const queue = this.#queues.get(id);
    if (queue === undefined) return;
    const i = queue.indexOf(entry);
    if (i >= 0) queue.splice(i, 1);
    if (queue.length === 0) this.#queues.delete(id);
  }

  /** One wake in flight per deployment; another once it answers if more requests arrived meanwhile. */
  #wake(id: string): void {
    const w = this.#waking.get(id);
    if (w !== undefined) {
      w.again = true;
      return;
    }
    const state = { again: false };
    this.#waking.set(id, state);
    this.#lastWake.set(id, Date.now());
    void this.#o.wake(id).then((accepted) => {
      if (accepted !== false) this.#failingSince.delete(id);
      else if (!this.#failingSince.has(id)) this.#failingSince.set(id, Date.now());
      this.#waking.delete(id);
      if (state.again && this.parked(id) > 0 && this.#o.room(id) === 0) this.#wake(id);
    });
  }

  #ensurePolling(): void {
    if (this.#timer !== null) return;
    this.#timer = setInterval(() => this.#poll(), this.#o.pollMs ?? 10);
    this.#timer.unref();
  }

  #poll(): void {
    const now = Date.now();
    for (const [id, queue] of [...this.#queues]) {
      const room = this.#o.room(id);
      const failing = this.#failingSince.get(id);
      if (room <= 0 && failing !== undefined && now - failing >= (this.#o.wakeGiveUpMs ?? 10_000)) {
        for (const e of queue.splice(0)) {
          clearTimeout(e.timer);
          e.resolve({ kind: "unwakeable" });
        }
        this.#queues.delete(id);
        this.#failingSince.delete(id);
        continue;
      }
      if (room <= 0) {
        // Nothing ready (or no room yet): remind the control plane every second, for a lost wake.
        if (!this.#waking.has(id) && now - (this.#lastWake.get(id) ?? now) >= 1000) this.#wake(id);
        continue;
      }
      for (const e of queue.splice(0, Math.min(queue.length, room))) {
        clearTimeout(e.timer);
        e.resolve({ kind: "go" });
      }
      if (queue.length === 0) this.#queues.delete(id);
    }
    if (this.#queues.size === 0 && this.#timer !== null) {
      clearInterval(this.#timer);
      this.#timer = null;
    }
  }
}
