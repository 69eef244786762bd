// The load signal of this plane's ingress (docs/autoscaling.md "What is measured where"): per deployment,
// requests in flight (received and not yet answered, parked ones included), the integral of that count
// over time in request·ms, and when the last request arrived. The integral grows by `in_flight × Δt` at
// every arrival and answer, so a 50 ms request counts as 50 request·ms however rarely the plane reports,
// and it is reported as a counter that only grows: a lost report loses nothing. Only what this plane
// serves or holds is counted (a request it hands to a peer is counted there), so the control plane can
// sum a region's planes without counting a request twice.

import type { Logger } from "pino";
import { request } from "undici";
import type { PlaneLoadReport } from "../core/snapshot.ts";

interface Meter {
  inFlight: number;
  /** request·ms up to `changedAt`. */
  requestMs: number;
  changedAt: number;
  lastRequestAt: number | null;
}

/** Deployments idle this long (nothing in flight, no arrival) are forgotten; a counter then restarts. */
const FORGET_AFTER_MS = 6 * 3600_000;

export class LoadMeter {
  readonly #meters = new Map<string, Meter>();
  /** The exchanges counted, with the deployment they count for: each is ended once. */
  readonly #counted = new WeakMap<object, string>();
  readonly #now: () => number;
  /** When these counters started: a new epoch tells the control plane they restarted from zero. */
  readonly epoch: string;

  constructor(now: () => number = Date.now) {
    this.#now = now;
    this.epoch = new Date(now()).toISOString();
  }

  /** A request for `deploymentId` is now held or served here (idempotent per exchange). */
  begin(exchange: object, deploymentId: string): void {
    if (this.#counted.has(exchange)) return;
    const now = this.#now();
    const m = this.#advance(deploymentId, now);
    m.inFlight++;
    m.lastRequestAt = now;
    this.#counted.set(exchange, deploymentId);
  }

  /** The exchange is answered (or abandoned); nothing happens for one that was never counted. */
  end(exchange: object): void {
    const id = this.#counted.get(exchange);
    if (id === undefined) return;
    this.#counted.delete(exchange);
    const m = this.#advance(id, this.#now());
    m.inFlight = Math.max(0, m.inFlight - 1);
  }

  inFlight(deploymentId: string): number {
    return this.#meters.get(deploymentId)?.inFlight ?? 0;
  }

  /** The counters now, for the plane's report. */
  report(): PlaneLoadReport {
    const now = this.#now();
    const deployments: PlaneLoadReport["deployments"] = [];
    for (const [id, m] of [...this.#meters]) {
      this.#advance(id, now);
      if (m.inFlight === 0 && now - (m.lastRequestAt ?? m.changedAt) > FORGET_AFTER_MS) {
        this.#meters.delete(id);
        continue;
      }
      deployments.push({
        deployment_id: id,
        in_flight: m.inFlight,
        request_ms: Math.round(m.requestMs),
        last_request_at: m.lastRequestAt === null ? null : new Date(m.lastRequestAt).toISOString(),
      });
    }
    return { epoch: this.epoch, at: new Date(now).toISOString(), deployments };
  }

  #advance(id: string, now: number): Meter {
    let m = this.#meters.get(id);
    if (m === undefined) {
      m = { inFlight: 0, requestMs: 0, changedAt: now, lastRequestAt: null };
      this.#meters.set(id, m);
    }
    // A clock stepped back adds nothing rather than subtracting.
    if (now > m.changedAt) {
      m.requestMs += m.inFlight * (now - m.changedAt);
      m.changedAt = now;
    }
    return m;
  }
}

export interface WakeOptions {
  controlUrl: string;
  plane: string;
  token: string;
  load: LoadMeter;
  logger: Logger;
}

/**
 * Asks the control plane to wake a deployment this plane holds requests for (POST
 * /v1/internal/planes/{name}/wake, the plane's credential), with this plane's counters for it: the held
 * requests are what the autoscaler sizes the wake by. A failure is logged and answered false; the ingress
 * asks again, and fails its held requests closed when no wake has been accepted for a while.
 */
export function wakeDeployment(o: WakeOptions): (deploymentId: string) => Promise<boolean> {
  return async (deploymentId) => {
    const report = o.load.report();
    const load = {
      ...report,
      deployments: report.deployments.filter((d) => d.deployment_id === deploymentId),
    };
    try {
      const res = await request(`${o.controlUrl}/v1/internal/planes/${encodeURIComponent(o.plane)}/wake`, {
        method: "POST",
        headers: { authorization: `Bearer ${o.token}`, "content-type": "application/json" },
        body: JSON.stringify({ deployment_id: deploymentId, load }),
        headersTimeout: 10_000,
        bodyTimeout: 10_000,
      });
      const text = await res.body.text();
      if (res.statusCode !== 202) {
        o.logger.warn(
          { deployment: deploymentId, status: res.statusCode, body: text.slice(0, 200) },
          "wake refused",
        );
        return false;
      }
      o.logger.info({ deployment: deploymentId, answer: JSON.parse(text) as unknown }, "wake sent");
      return true;
    } catch (err) {
      o.logger.warn({ deployment: deploymentId, err: (err as Error).message }, "wake not delivered");
      return false;
    }
  };
}
