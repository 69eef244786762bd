import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  type CapturedLine,
  DEFAULT_LOG_WINDOW_MS,
  detectLevel,
  epochNanos,
  type LogQuery,
  MAX_LOG_WINDOW_MS,
  resolveLogQuery,
  selectLogs,
} from "./log-query.ts";

const NOW = Date.parse("2026-03-01T12:00:00.000Z");

describe("resolveLogQuery", () => {
  it("defaults to the last 30 minutes, newest first, 500 lines", () => {
    expect(resolveLogQuery({}, NOW)).toEqual({
      ok: true,
      query: {
        start_ms: NOW - DEFAULT_LOG_WINDOW_MS,
        end_ms: NOW,
        direction: "desc",
        limit: 500,
        min_level: null,
        replica: null,
        request_id: null,
        component: null,
        includes: [],
        excludes: [],
      },
    });
  });

  it("reads null as absent, as the spec's POST body sends it", () => {
    const nulls = {
      start_epoch_millis: null,
      end_epoch_millis: null,
      direction: null,
      limit: null,
      min_level: null,
      replica: null,
      request_id: null,
      component: null,
      search_pattern: null,
    };
    expect(resolveLogQuery(nulls, NOW)).toEqual(resolveLogQuery({}, NOW));
  });

  it("puts a default start 30 minutes before a given end", () => {
    const r = resolveLogQuery({ end_epoch_millis: 1_000_000_000 }, NOW);
    expect(r.ok && [r.query.start_ms, r.query.end_ms]).toEqual([1_000_000_000 - DEFAULT_LOG_WINDOW_MS, 1e9]);
  });

  it.each<[string, Parameters<typeof resolveLogQuery>[0], string]>([
    ["a start after the end", { start_epoch_millis: NOW + 1 }, "start_epoch_millis"],
    ["a window over 7 days", { start_epoch_millis: NOW - MAX_LOG_WINDOW_MS - 1 }, "start_epoch_millis"],
    ["a limit of 0", { limit: 0 }, "limit"],
    ["a limit over 1000", { limit: 1001 }, "limit"],
    ["a fractional limit", { limit: 2.5 }, "limit"],
    [
      "a search pattern (RE2; a RegExp from a stranger can backtrack for ever)",
      { search_pattern: "(a+)+$" },
      "search_pattern",
    ],
    ["nine includes", { includes: Array.from({ length: 9 }, (_, i) => `s${i}`) }, "includes"],
  ])("refuses %s", (_, input, field) => {
    const r = resolveLogQuery(input, NOW);
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.field).toBe(field);
  });

  it("accepts a window of exactly 7 days", () => {
    expect(resolveLogQuery({ start_epoch_millis: NOW - MAX_LOG_WINDOW_MS }, NOW).ok).toBe(true);
  });
});

const at = (offsetMs: number) => new Date(NOW + offsetMs).toISOString();
const line = (offsetMs: number, text: string, replica = "r1", stream = "stdout"): CapturedLine => ({
  ts: at(offsetMs),
  replica_id: replica,
  plane: "eu-1",
  stream,
  line: text,
});
const query = (over: Partial<LogQuery> = {}): LogQuery => {
  const r = resolveLogQuery({}, NOW);
  if (!r.ok) throw new Error("default query refused");
  return { ...r.query, ...over };
};

describe("selectLogs", () => {
  const lines = [
    line(-3000, "one"),
    line(-2000, "two", "r2", "stderr"),
    line(-1000, "three"),
    line(0, "four", "r2"),
  ];

  it("answers LogV1 with Meridian's plane and stream, newest first by default", () => {
    expect(selectLogs(lines, query({ limit: 2 }))).toEqual([
      {
        timestamp: `${NOW}000000`,
        message: "four",
        replica: "r2",
        request_id: null,
        level: null,
        plane: "eu-1",
        stream: "stdout",
      },
      expect.objectContaining({ message: "three", timestamp: `${NOW - 1000}000000` }),
    ]);
  });

  it("asc takes the oldest of the window, oldest first", () => {
    expect(selectLogs(lines, query({ direction: "asc", limit: 2 })).map((l) => l.message)).toEqual([
      "one",
      "two",
    ]);
  });

  it("keeps only the window, both ends included", () => {
    const q = query({ start_ms: NOW - 2000, end_ms: NOW - 1000, direction: "asc" });
    expect(selectLogs(lines, q).map((l) => l.message)).toEqual(["two", "three"]);
    expect(selectLogs([line(-DEFAULT_LOG_WINDOW_MS - 1, "old")], query())).toEqual([]);
  });

  it("filters by replica, component (the stream), includes and excludes", () => {
    const pick = (over: Partial<LogQuery>) => selectLogs(lines, query({ direction: "asc", ...over }));
    expect(pick({ replica: "r2" }).map((l) => l.message)).toEqual(["two", "four"]);
    expect(pick({ component: "stderr" }).map((l) => l.message)).toEqual(["two"]);
    expect(pick({ includes: ["o"] }).map((l) => l.message)).toEqual(["one", "two", "four"]);
    expect(pick({ includes: ["o", "u"] }).map((l) => l.message)).toEqual(["four"]);
    expect(pick({ excludes: ["e"] }).map((l) => l.message)).toEqual(["two", "four"]);
    // Replica output carries no request ids, so asking for one finds nothing.
    expect(pick({ request_id: "req-1" })).toEqual([]);
  });

  it("min_level keeps lines at or above it and drops lines without a level", () => {
    const levelled = [
      line(-4000, "DEBUG:root:d"),
      line(-3000, '{"level":30,"msg":"i"}'),
      line(-2000, "WARNING:root:w"),
      line(-1000, "[ERROR] e"),
      line(0, "plain"),
    ];
    const q = query({ direction: "asc", min_level: "WARNING" });
    expect(selectLogs(levelled, q).map((l) => [l.message, l.level])).toEqual([
      ["WARNING:root:w", "WARNING"],
      ["[ERROR] e", "ERROR"],
    ]);
    expect(selectLogs(levelled, query({ direction: "asc" })).map((l) => l.level)).toEqual([
      "DEBUG",
      "INFO",
      "WARNING",
      "ERROR",
      null,
    ]);
  });

  it("merges replicas by capture time; lines of one millisecond keep their order", () => {
    const same = [line(0, "a", "r1"), line(0, "b", "r2"), line(-1, "c", "r1")];
    expect(selectLogs(same, query({ direction: "asc" })).map((l) => l.message)).toEqual(["c", "a", "b"]);
    expect(selectLogs(same, query()).map((l) => l.message)).toEqual(["b", "a", "c"]);
  });

  it("never answers more than the limit, nor a line outside the window (property)", () => {
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: -3_600_000, max: 60_000 }), { maxLength: 60 }),
        fc.integer({ min: 1, max: 20 }),
        fc.constantFrom("asc" as const, "desc" as const),
        (offsets, limit, direction) => {
          const got = selectLogs(
            offsets.map((o, i) => line(o, `l${i}`)),
            query({ limit, direction }),
          );
          const inWindow = offsets.filter((o) => o >= -DEFAULT_LOG_WINDOW_MS && o <= 0).length;
          expect(got).toHaveLength(Math.min(limit, inWindow));
          const ns = got.map((l) => BigInt(l.timestamp));
          const sorted = [...ns].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
          expect(ns).toEqual(direction === "asc" ? sorted : sorted.reverse());
        },
      ),
    );
  });
});

describe("detectLevel", () => {
  it.each<[string, string | null]>([
    ['{"level":50,"msg":"x"}', "ERROR"],
    ['{"level":40}', "WARNING"],
    ['{"level":20}', "DEBUG"],
    ['{"level":"warn"}', "WARNING"],
    ['{"levelname":"CRITICAL"}', "ERROR"],
    ['{"severity":"INFO"}', "INFO"],
    ['{"msg":"no level"}', null],
    ["ERROR:root:boom", "ERROR"],
    ["WARNING:model:slow", "WARNING"],
    ["INFO     Uvicorn running", "INFO"],
    ["[warn] disk", "WARNING"],
    ["Error: weights missing", "ERROR"],
    ["ERROR", "ERROR"],
    ["INFORMATION", null],
    ["Traceback (most recent call last):", null],
    ["{not json", null],
    ["", null],
  ])("%j is %s", (text, level) => {
    expect(detectLevel(text)).toBe(level);
  });
});

describe("epochNanos", () => {
  it("is the millisecond count followed by six zeros", () => {
    expect(epochNanos(1_700_000_000_123)).toBe("1700000000123000000");
    expect(epochNanos(0)).toBe("0");
    expect(BigInt(epochNanos(NOW))).toBe(BigInt(NOW) * 1_000_000n);
  });
});
