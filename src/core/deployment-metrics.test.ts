import { describe, expect, it } from "vitest";
import {
  DEFAULT_METRICS_WINDOW_MS,
  type DeploymentAggregates,
  deploymentMetrics,
  MAX_METRICS_WINDOW_MS,
  MAX_SERIES_STEPS,
  type MetricsQuery,
  resolveMetricsQuery,
} from "./deployment-metrics.ts";

const NOW = 1_767_225_600_000;

const agg: DeploymentAggregates = {
  replicas: { ready: 2, starting: 1, restarts: 3 },
  environments: [
    { name: "prod-eu", counts: { "2xx": 40, "5xx": 2 } },
    { name: "production", counts: {} },
  ],
};

function resolved(input: Parameters<typeof resolveMetricsQuery>[0]): MetricsQuery {
  const r = resolveMetricsQuery(input, NOW);
  if (!r.ok) throw new Error(r.message);
  return r.query;
}

describe("resolveMetricsQuery", () => {
  it("defaults to CURRENT at now with the spec's default names", () => {
    expect(resolved({})).toEqual({
      mode: "CURRENT",
      start_ms: NOW,
      end_ms: NOW,
      step_seconds: null,
      names: [
        "baseten_replicas_active",
        "baseten_inference_requests_total",
        "baseten_end_to_end_response_time_seconds",
      ],
    });
  });

  it("windows default to the hour before the end; SERIES steps are whole minutes, at most 60 of them", () => {
    expect(resolved({ mode: "SUMMARY" })).toMatchObject({
      start_ms: NOW - DEFAULT_METRICS_WINDOW_MS,
      end_ms: NOW,
      step_seconds: null,
    });
    expect(resolved({ mode: "SERIES" }).step_seconds).toBe(60);
    const week = resolved({ mode: "SERIES", start_epoch_millis: NOW - MAX_METRICS_WINDOW_MS });
    expect(week.step_seconds! % 60).toBe(0);
    expect(MAX_METRICS_WINDOW_MS / 1000 / week.step_seconds!).toBeLessThanOrEqual(MAX_SERIES_STEPS);
  });

  it("keeps the names asked for, once each, in order", () => {
    expect(
      resolved({
        metrics: ["baseten_container_restarts_total", "baseten_replicas_active", "baseten_replicas_active"],
      }).names,
    ).toEqual(["baseten_container_restarts_total", "baseten_replicas_active"]);
  });

  it.each<[string, Parameters<typeof resolveMetricsQuery>[0], string]>([
    ["an unknown name", { metrics: ["baseten_replicas_active", "made_up"] }, "metrics"],
    ["a name inherited from Object.prototype", { metrics: ["constructor"] }, "metrics"],
    ["a window on CURRENT", { mode: "CURRENT", start_epoch_millis: NOW - 1 }, "start_epoch_millis"],
    ["a start after the end", { mode: "SUMMARY", start_epoch_millis: NOW + 1 }, "start_epoch_millis"],
    [
      "a window over 7 days",
      { mode: "SERIES", start_epoch_millis: NOW - MAX_METRICS_WINDOW_MS - 1 },
      "start_epoch_millis",
    ],
  ])("refuses %s", (_, input, field) => {
    const r = resolveMetricsQuery(input, NOW);
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.field).toBe(field);
  });
});

describe("deploymentMetrics", () => {
  it("CURRENT answers the replica gauges and each environment's requests by status class", () => {
    const all = resolved({
      metrics: [
        "baseten_replicas_active",
        "baseten_replicas_starting",
        "baseten_container_restarts_total",
        "baseten_inference_requests_total",
      ],
    });
    const m = deploymentMetrics(all, agg);
    expect(m.metric_descriptors.map((d) => [d.name, d.kind, d.unit_hint])).toEqual([
      ["baseten_replicas_active", "GAUGE", "COUNT"],
      ["baseten_replicas_starting", "GAUGE", "COUNT"],
      ["baseten_container_restarts_total", "COUNTER", "COUNT"],
      ["baseten_inference_requests_total", "COUNTER", "COUNT"],
    ]);
    expect(m.metric_descriptors[3]!.label_sets).toEqual([
      { environment: "prod-eu", status: "2xx" },
      { environment: "prod-eu", status: "3xx" },
      { environment: "prod-eu", status: "4xx" },
      { environment: "prod-eu", status: "5xx" },
      { environment: "production", status: "2xx" },
      { environment: "production", status: "3xx" },
      { environment: "production", status: "4xx" },
      { environment: "production", status: "5xx" },
    ]);
    expect(m.metric_values).toEqual([
      { start_epoch_millis: NOW, values: [[2], [1], [3], [40, 0, 0, 2, 0, 0, 0, 0]] },
    ]);
    expect(m).toMatchObject({
      mode: "CURRENT",
      start_epoch_millis: NOW,
      end_epoch_millis: NOW,
      step_seconds: null,
    });
  });

  it("omits what does not apply: latency (no aggregate here) and requests of a deployment serving nothing", () => {
    const m = deploymentMetrics(resolved({}), { ...agg, environments: [] });
    expect(m.metric_descriptors.map((d) => d.name)).toEqual(["baseten_replicas_active"]);
    expect(m.metric_values[0]!.values).toEqual([[2]]);
  });

  it("a window has its shape and no data: one value set for SUMMARY, one per step for SERIES", () => {
    const summary = deploymentMetrics(resolved({ mode: "SUMMARY" }), agg);
    expect(summary.metric_values).toEqual([
      { start_epoch_millis: NOW - DEFAULT_METRICS_WINDOW_MS, values: [[null], Array(8).fill(null)] },
    ]);
    const series = deploymentMetrics(resolved({ mode: "SERIES" }), agg);
    expect(series.step_seconds).toBe(60);
    expect(series.metric_values).toHaveLength(60);
    expect(series.metric_values[1]!.start_epoch_millis - series.metric_values[0]!.start_epoch_millis).toBe(
      60_000,
    );
    expect(series.metric_values.every((v) => v.values.flat().every((x) => x === null))).toBe(true);
    const empty = deploymentMetrics(resolved({ mode: "SERIES", start_epoch_millis: NOW }), agg);
    expect(empty.metric_values).toHaveLength(1);
  });
});
