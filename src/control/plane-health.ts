// Which planes this control process judges down (the imperative shell around `src/core/fail-static.ts`):
// it keeps the process's own hearing (stalls, clock jumps, partitions), observed on a short timer and again
// before every judgement, so a judgement made on the first callback after a SIGSTOP already knows.

import { performance } from "node:perf_hooks";
import {
  downPlanes,
  type Hearing,
  type HearingSettings,
  judgePlanes,
  observeEveryMs,
  observeHearing,
  type PlaneHeard,
  type PlaneVerdict,
  startHearing,
} from "../core/fail-static.ts";
import type { ControlContext } from "./context.ts";

export interface PlaneRowLiveness {
  name: string;
  region: string;
  last_seen_at: string | null;
  created_at: string;
}

export class PlaneHealth {
  #hearing: Hearing;
  readonly #settings: HearingSettings;
  readonly #now: () => number;
  #timer: NodeJS.Timeout | null = null;
  #onHearingChanged: ((h: Hearing) => void) | null = null;

  constructor(options: { timeoutMs: number; startedAtMs: number; now?: () => number }) {
    this.#settings = { timeoutMs: options.timeoutMs };
    this.#now = options.now ?? Date.now;
    this.#hearing = startHearing(options.startedAtMs, performance.now());
  }

  /** Observes on a timer (unref'd) so that a stall shows as a gap; `onChange` hears when the wait restarts. */
  start(onChange?: (h: Hearing) => void): this {
    this.#onHearingChanged = onChange ?? null;
    this.stop();
    this.#timer = setInterval(() => this.observe(), observeEveryMs(this.#settings));
    this.#timer.unref();
    return this;
  }

  stop(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
  }

  get hearing(): Hearing {
    return this.#hearing;
  }

  /** One observation of the clocks, and of the reports when the planes' rows are at hand. */
  observe(planes?: readonly PlaneRowLiveness[], wallMs = this.#now()): Hearing {
    const before = this.#hearing;
    this.#hearing = observeHearing(
      before,
      {
        wallMs,
        monoMs: performance.now(),
        ...(planes ? { planes: planes.map(heard) } : {}),
      },
      this.#settings,
    );
    if (this.#hearing.sinceMs !== before.sinceMs) this.#onHearingChanged?.(this.#hearing);
    return this.#hearing;
  }

  /** Every plane's verdict now, after observing its rows. */
  judge(planes: readonly PlaneRowLiveness[], wallMs = this.#now()): PlaneVerdict[] {
    const hearing = this.observe(planes, wallMs);
    return judgePlanes(planes.map(heard), hearing, wallMs, this.#settings);
  }

  /** The names of the planes judged down now. */
  down(planes: readonly PlaneRowLiveness[], wallMs = this.#now()): Set<string> {
    return new Set(downPlanes(this.judge(planes, wallMs)));
  }
}

function heard(p: PlaneRowLiveness): PlaneHeard {
  return {
    name: p.name,
    region: p.region,
    lastSeenMs: p.last_seen_at ? Date.parse(p.last_seen_at) : null,
    createdMs: Date.parse(p.created_at),
  };
}

const lazily = new WeakMap<object, PlaneHealth>();

/**
 * The context's plane health: the one its composition root started, or (a context built in-process by a
 * test) one made and started on first use from the context's start time and timeout.
 */
export function planeHealthOf(
  ctx: Pick<ControlContext, "planeHealth" | "planeTimeoutMs" | "startedAtMs" | "now">,
): PlaneHealth {
  if (ctx.planeHealth) return ctx.planeHealth;
  let health = lazily.get(ctx);
  if (!health) {
    health = new PlaneHealth({
      timeoutMs: ctx.planeTimeoutMs,
      startedAtMs: ctx.startedAtMs,
      now: () => Date.parse(ctx.now()),
    }).start();
    lazily.set(ctx, health);
  }
  return health;
}
