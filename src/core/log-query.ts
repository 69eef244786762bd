// Replica log queries as Baseten's logs routes shape them (GetDeploymentLogsRequestV1 in, GetLogsResponseV1
// out): the time window, the filters, the order and the limit, applied to the lines the planes hold. Pure:
// the control plane fetches the lines (src/control/logs.ts) and this decides which to answer, and how.

export const SORT_ORDERS = ["asc", "desc"] as const;
export type SortOrder = (typeof SORT_ORDERS)[number];

/** Baseten's LogLevelV1, least severe first. */
export const LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** The spec's defaults and bounds: the last 30 minutes, 500 lines, at most 1000, a window of 7 days. */
export const DEFAULT_LOG_WINDOW_MS = 30 * 60 * 1000;
export const MAX_LOG_WINDOW_MS = 7 * 24 * 60 * 60 * 1000;
export const DEFAULT_LOG_LIMIT = 500;
export const MAX_LOG_LIMIT = 1000;
/** Baseten's bounds on `includes` / `excludes` and on each string filter. */
export const MAX_LOG_SUBSTRINGS = 8;
export const MAX_LOG_FILTER_LENGTH = 256;

/** What a caller asked for, as the GET query or the POST body carries it (absent and null alike). */
export interface LogQueryInput {
  start_epoch_millis?: number | null;
  end_epoch_millis?: number | null;
  direction?: SortOrder | null;
  limit?: number | null;
  min_level?: LogLevel | null;
  replica?: string | null;
  request_id?: string | null;
  component?: string | null;
  search_pattern?: string | null;
  includes?: readonly string[];
  excludes?: readonly string[];
}

export interface LogQuery {
  start_ms: number;
  end_ms: number;
  direction: SortOrder;
  limit: number;
  min_level: LogLevel | null;
  replica: string | null;
  request_id: string | null;
  component: string | null;
  includes: readonly string[];
  excludes: readonly string[];
}

export type LogQueryOutcome =
  | { ok: true; query: LogQuery }
  | { ok: false; field: keyof LogQueryInput; message: string };

/**
 * Resolves the defaults and checks what the schemas cannot: the window's order and length, and the filters
 * Meridian cannot honour. `search_pattern` is an RE2 expression in Baseten's API; Meridian has no RE2
 * engine, and a JavaScript RegExp from a caller is a denial of service by backtracking, so it is refused.
 */
export function resolveLogQuery(input: LogQueryInput, nowMs: number): LogQueryOutcome {
  const end = input.end_epoch_millis ?? nowMs;
  const start = input.start_epoch_millis ?? end - DEFAULT_LOG_WINDOW_MS;
  if (start > end) {
    return {
      ok: false,
      field: "start_epoch_millis",
      message: "start_epoch_millis is after end_epoch_millis.",
    };
  }
  if (end - start > MAX_LOG_WINDOW_MS) {
    return {
      ok: false,
      field: "start_epoch_millis",
      message: "The window from start to end exceeds 7 days.",
    };
  }
  const limit = input.limit ?? DEFAULT_LOG_LIMIT;
  if (!Number.isInteger(limit) || limit < 1 || limit > MAX_LOG_LIMIT) {
    return { ok: false, field: "limit", message: `limit is a whole number from 1 to ${MAX_LOG_LIMIT}.` };
  }
  if (input.search_pattern !== undefined && input.search_pattern !== null) {
    return {
      ok: false,
      field: "search_pattern",
      message: "search_pattern (an RE2 expression) is not supported; use includes and excludes.",
    };
  }
  for (const field of ["includes", "excludes"] as const) {
    if ((input[field]?.length ?? 0) > MAX_LOG_SUBSTRINGS) {
      return { ok: false, field, message: `${field} takes at most ${MAX_LOG_SUBSTRINGS} substrings.` };
    }
  }
  return {
    ok: true,
    query: {
      start_ms: start,
      end_ms: end,
      // Baseten answers newest first unless told otherwise (truss reverses the list to print it).
      direction: input.direction ?? "desc",
      limit,
      min_level: input.min_level ?? null,
      replica: input.replica ?? null,
      request_id: input.request_id ?? null,
      component: input.component ?? null,
      includes: input.includes ?? [],
      excludes: input.excludes ?? [],
    },
  };
}

/** A line as a plane captured it, with where it came from. */
export interface CapturedLine {
  /** ISO-8601 capture time, as the plane's driver records it (millisecond precision). */
  ts: string;
  replica_id: string;
  plane: string;
  /** `stdout`, `stderr`, `driver` (the driver's own notes on the replica) or `build` (its virtualenv's). */
  stream: string;
  line: string;
}

/** Baseten's LogV1, with Meridian's `plane` and `stream`. */
export interface LogEntry {
  /** Epoch nanoseconds, as a string. */
  timestamp: string;
  message: string;
  replica: string;
  /** Replica output carries no request id: Meridian keeps request-level records on the planes (audit). */
  request_id: null;
  level: LogLevel | null;
  plane: string;
  stream: string;
}

/**
 * The lines the query selects, shaped as LogV1: inside [start, end], passing every filter, ordered by
 * capture time (`asc`: the oldest `limit` of the window, oldest first; `desc`: the newest, newest first).
 * Lines captured in the same millisecond keep the order they were given in.
 */
export function selectLogs(lines: readonly CapturedLine[], q: LogQuery): LogEntry[] {
  const minRank = q.min_level === null ? -1 : LOG_LEVELS.indexOf(q.min_level);
  const kept: Array<{ ms: number; index: number; entry: LogEntry }> = [];
  lines.forEach((l, index) => {
    const ms = Date.parse(l.ts);
    if (!Number.isFinite(ms) || ms < q.start_ms || ms > q.end_ms) return;
    if (q.replica !== null && l.replica_id !== q.replica) return;
    // No line is tagged with a request id, so a request_id filter matches none.
    if (q.request_id !== null) return;
    if (q.component !== null && l.stream !== q.component) return;
    if (!q.includes.every((s) => l.line.includes(s))) return;
    if (q.excludes.some((s) => l.line.includes(s))) return;
    const level = detectLevel(l.line);
    // An explicit minimum drops lines without a level, as Baseten does.
    if (minRank >= 0 && (level === null || LOG_LEVELS.indexOf(level) < minRank)) return;
    kept.push({
      ms,
      index,
      entry: {
        timestamp: epochNanos(ms),
        message: l.line,
        replica: l.replica_id,
        request_id: null,
        level,
        plane: l.plane,
        stream: l.stream,
      },
    });
  });
  kept.sort((a, b) => a.ms - b.ms || a.index - b.index);
  const chosen = q.direction === "asc" ? kept.slice(0, q.limit) : kept.slice(-q.limit).reverse();
  return chosen.map((k) => k.entry);
}

/** Epoch milliseconds as LogV1's epoch-nanosecond string (exact: no floating point beyond 2^53). */
export function epochNanos(ms: number): string {
  return ms === 0 ? "0" : `${Math.trunc(ms)}000000`;
}

/** pino's numeric levels (trace 10 … fatal 60), and the names loggers commonly write. */
const NAMED_LEVELS: Record<string, LogLevel> = {
  trace: "DEBUG",
  debug: "DEBUG",
  info: "INFO",
  notice: "INFO",
  warn: "WARNING",
  warning: "WARNING",
  error: "ERROR",
  err: "ERROR",
  critical: "ERROR",
  fatal: "ERROR",
};
const LEADING_LEVEL = /^\s*\[?(TRACE|DEBUG|INFO|NOTICE|WARN|WARNING|ERROR|CRITICAL|FATAL)\]?(?=[\s:\]|-]|$)/i;

/**
 * The severity of a line, when it says one: a JSON object's `level` (a pino number or a name), `levelname`
 * or `severity`, or a leading level word as Python's logging (`WARNING:root:…`) and most loggers write it.
 * Null when the line says none.
 */
export function detectLevel(line: string): LogLevel | null {
  const trimmed = line.trimStart();
  if (trimmed.startsWith("{")) {
    try {
      const parsed = JSON.parse(trimmed) as Record<string, unknown>;
      if (typeof parsed === "object" && parsed !== null) {
        for (const key of ["level", "levelname", "severity"]) {
          const level = levelOf(parsed[key]);
          if (level !== null) return level;
        }
      }
    } catch {
      // Not JSON after all: read it as text.
    }
  }
  const m = LEADING_LEVEL.exec(line);
  return m ? (NAMED_LEVELS[m[1]!.toLowerCase()] ?? null) : null;
}

function levelOf(value: unknown): LogLevel | null {
  if (typeof value === "number" && Number.isFinite(value)) {
    if (value >= 50) return "ERROR";
    if (value >= 40) return "WARNING";
    if (value >= 30) return "INFO";
    return value >= 10 ? "DEBUG" : null;
  }
  if (typeof value === "string") return NAMED_LEVELS[value.toLowerCase()] ?? null;
  return null;
}
