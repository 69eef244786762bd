// Fail-static judgement of workload planes (DESIGN.md §2.7): which silent planes the control plane may judge
// down. Silence is evidence against a plane only while the control plane itself was able to hear: after a
// stall, a clock jump or a partition of its own it waits a full timeout for fresh reports, and silence alone
// never takes down the last planes of a region. Pure: the clocks and the reports are given.

/** What the control plane knows of one plane's reports. */
export interface PlaneHeard {
  name: string;
  region: string;
  /** When the plane last reported (ms, wall clock), or null if it never has. */
  lastSeenMs: number | null;
  /** When the plane was registered (ms, wall clock). */
  createdMs: number;
}

/** The control plane's own ability to hear, kept across observations (one per control process). */
export interface Hearing {
  /** Since when (ms, wall clock) the control plane has been able to hear planes without interruption. */
  sinceMs: number;
  /** Wall and monotonic clocks at the last observation: a gap in either is a stall or a jump of its own. */
  lastWallMs: number;
  lastMonoMs: number;
  /** Whether, at the last observation that saw the reports, no plane had been heard for `silenceMs`. */
  deaf: boolean;
  /** Each plane's last report as last observed (ms), to see a plane come back from a silence of its own. */
  lastSeen: Readonly<Record<string, number>>;
  /**
   * When a plane came back after being silent longer than the timeout itself (ms): it witnesses against
   * its region's other planes only once it has been heard for a full timeout since.
   */
  returned: Readonly<Record<string, number>>;
  /** Why `sinceMs` last moved, for the logs. */
  cause: HearingCause;
}

export type HearingCause = "started" | "stalled" | "clock_jumped" | "heard_again";

export interface HearingSettings {
  /** A plane silent this long may be down (`--plane-timeout`). */
  timeoutMs: number;
}

/**
 * Planes report every 2 s (`src/plane/agent.ts`): a silence of every plane at once that is shorter than a
 * few report intervals is ordinary; longer, it is the control plane that could not hear.
 */
const SILENCE_FLOOR_MS = 5_000;

/** A gap between observations longer than this is a stall of the control plane's own (SIGSTOP, a long GC). */
export function stallMs(s: HearingSettings): number {
  return Math.max(250, s.timeoutMs / 4);
}

/** No plane at all heard for longer than this: the control plane was cut off, not every plane at once. */
export function silenceMs(s: HearingSettings): number {
  return Math.max(SILENCE_FLOOR_MS, s.timeoutMs / 2);
}

/** How often the control plane should observe, so that an ordinary gap never looks like a stall. */
export function observeEveryMs(s: HearingSettings): number {
  return Math.max(50, Math.min(1_000, Math.floor(stallMs(s) / 3)));
}

export function startHearing(wallMs: number, monoMs: number): Hearing {
  return {
    sinceMs: wallMs,
    lastWallMs: wallMs,
    lastMonoMs: monoMs,
    deaf: false,
    cause: "started",
    lastSeen: {},
    returned: {},
  };
}

export interface Observation {
  wallMs: number;
  monoMs: number;
  /** Every plane's last report (ms, wall clock); undefined when this observation did not look. */
  planes?: ReadonlyArray<Pick<PlaneHeard, "name" | "lastSeenMs">>;
}

/**
 * The hearing after one more observation. A monotonic gap longer than `stallMs` is a stall; wall and
 * monotonic clocks that moved apart by more than that is a clock jump (every silence measured across it is
 * meaningless); the first report after a silence of every plane ends a partition. Each restarts the wait.
 * A plane whose report comes more than a timeout after its previous one has come back: noted in `returned`.
 */
export function observeHearing(h: Hearing, o: Observation, s: HearingSettings): Hearing {
  const monoGap = o.monoMs - h.lastMonoMs;
  const wallGap = o.wallMs - h.lastWallMs;
  let { sinceMs, deaf, cause, lastSeen, returned } = h;
  if (monoGap > stallMs(s)) {
    sinceMs = o.wallMs;
    cause = "stalled";
  } else if (Math.abs(wallGap - monoGap) > stallMs(s)) {
    sinceMs = o.wallMs;
    cause = "clock_jumped";
  }
  if (o.planes !== undefined) {
    let latest: number | null = null;
    const seen: Record<string, number> = {};
    const back: Record<string, number> = {};
    for (const p of o.planes) {
      if (p.lastSeenMs === null) continue;
      if (latest === null || p.lastSeenMs > latest) latest = p.lastSeenMs;
      seen[p.name] = p.lastSeenMs;
      const before = lastSeen[p.name];
      if (before !== undefined && p.lastSeenMs - before > s.timeoutMs) back[p.name] = p.lastSeenMs;
      else if (returned[p.name] !== undefined) back[p.name] = returned[p.name]!;
    }
    lastSeen = seen;
    returned = back;
    const silent = latest === null || o.wallMs - latest > silenceMs(s);
    if (deaf && !silent) {
      sinceMs = Math.max(sinceMs, o.wallMs);
      cause = "heard_again";
    }
    deaf = silent;
  }
  return { sinceMs, lastWallMs: o.wallMs, lastMonoMs: o.monoMs, deaf, cause, lastSeen, returned };
}

export type PlaneVerdict =
  | { name: string; state: "up" }
  /** Silent for a timeout while another plane of its region was heard. */
  | { name: string; state: "down"; silentMs: number }
  /** Silent, but not judged: the control plane has not heard long enough, or nothing of its region has. */
  | { name: string; state: "spared"; reason: "waiting_for_reports" | "region_silent"; silentMs: number };

/**
 * Judges every plane. A plane is down only when it has been silent for `timeoutMs` counted from when the
 * control plane could last have heard it (its last report, its registration, or the end of the control
 * plane's own stall, whichever is latest), and another plane of its region was heard a full timeout after
 * that — and a full timeout after it came back itself, if it too had been silent: the region was reachable
 * while this plane was not. So the plane of a region heard last is never down on silence alone, nor is any
 * plane within `timeoutMs` of the control plane hearing again, nor the slower of two planes of a region
 * that return together.
 */
export function judgePlanes(
  planes: readonly PlaneHeard[],
  hearing: Pick<Hearing, "sinceMs"> & Partial<Pick<Hearing, "returned">>,
  nowMs: number,
  s: HearingSettings,
): PlaneVerdict[] {
  const heardAt = (p: PlaneHeard) => Math.max(p.lastSeenMs ?? p.createdMs, p.createdMs, hearing.sinceMs);
  const latestInRegion = new Map<string, Array<{ seen: number; returned: number }>>();
  for (const p of planes) {
    if (p.lastSeenMs === null) continue;
    const list = latestInRegion.get(p.region) ?? [];
    list.push({ seen: p.lastSeenMs, returned: hearing.returned?.[p.name] ?? Number.NEGATIVE_INFINITY });
    latestInRegion.set(p.region, list);
  }
  return planes.map((p): PlaneVerdict => {
    const own = Math.max(p.lastSeenMs ?? p.createdMs, p.createdMs);
    if (nowMs - own <= s.timeoutMs) return { name: p.name, state: "up" };
    const silentMs = nowMs - own;
    const from = heardAt(p);
    if (nowMs - from <= s.timeoutMs) {
      return { name: p.name, state: "spared", reason: "waiting_for_reports", silentMs };
    }
    const witnessed = (latestInRegion.get(p.region) ?? []).some(
      (q) => q.seen - Math.max(from, q.returned) > s.timeoutMs,
    );
    return witnessed
      ? { name: p.name, state: "down", silentMs }
      : { name: p.name, state: "spared", reason: "region_silent", silentMs };
  });
}

/** The names of the planes judged down, sorted. */
export function downPlanes(verdicts: readonly PlaneVerdict[]): string[] {
  return verdicts
    .filter((v) => v.state === "down")
    .map((v) => v.name)
    .sort();
}
