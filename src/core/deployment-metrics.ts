// A deployment's metrics as Baseten's `GET …/deployments/{id}/metrics` shapes them
// (GetDeploymentMetricsResponseV1: descriptors once, value sets aligned to them), built from the only
// aggregates the control plane holds (DESIGN.md §2.6, §2.9): its replicas' states and restarts now, and the
// request counts the planes reported per environment and status class. It keeps no history, so a window
// (SUMMARY, SERIES) has the window's shape with every value null: "no data", never a made-up zero.

export const METRIC_MODES = ["CURRENT", "SUMMARY", "SERIES"] as const;
export type MetricMode = (typeof METRIC_MODES)[number];

/** The spec's bounds: a window of one hour by default, at most 7 days. */
export const DEFAULT_METRICS_WINDOW_MS = 60 * 60 * 1000;
export const MAX_METRICS_WINDOW_MS = 7 * 24 * 60 * 60 * 1000;
/** SERIES steps are whole minutes, at most this many per window. */
export const MAX_SERIES_STEPS = 60;

type Kind = "GAUGE" | "COUNTER" | "HISTOGRAM";
type UnitHint = "PER_SECOND" | "SECONDS" | "BYTES" | "MEBIBYTES" | "COUNT" | "RATIO";

/** The metric names Meridian knows (Baseten's export names); others are refused, as Baseten does. */
export const KNOWN_METRICS: Record<string, { kind: Kind; unit_hint: UnitHint }> = {
  baseten_replicas_active: { kind: "GAUGE", unit_hint: "COUNT" },
  baseten_replicas_starting: { kind: "GAUGE", unit_hint: "COUNT" },
  baseten_inference_requests_total: { kind: "COUNTER", unit_hint: "COUNT" },
  baseten_container_restarts_total: { kind: "COUNTER", unit_hint: "COUNT" },
  // Latency is measured on the planes (their /metrics), per request; the control plane has no aggregate
  // of it, so this name is known and never answered.
  baseten_end_to_end_response_time_seconds: { kind: "HISTOGRAM", unit_hint: "SECONDS" },
};

/** The spec's default set when `metrics` is omitted. */
export const DEFAULT_METRICS = [
  "baseten_replicas_active",
  "baseten_inference_requests_total",
  "baseten_end_to_end_response_time_seconds",
] as const;

/** Status classes every environment's request counter lists, whether or not it saw one. */
const STATUS_CLASSES = ["2xx", "3xx", "4xx", "5xx"];

export interface MetricsQueryInput {
  mode?: MetricMode;
  start_epoch_millis?: number;
  end_epoch_millis?: number;
  metrics?: readonly string[];
}

export interface MetricsQuery {
  mode: MetricMode;
  start_ms: number;
  end_ms: number;
  /** SERIES only. */
  step_seconds: number | null;
  names: string[];
}

export type MetricsQueryOutcome =
  | { ok: true; query: MetricsQuery }
  | { ok: false; field: keyof MetricsQueryInput; message: string };

export function resolveMetricsQuery(input: MetricsQueryInput, nowMs: number): MetricsQueryOutcome {
  const mode = input.mode ?? "CURRENT";
  const names = [...new Set(input.metrics ?? DEFAULT_METRICS)];
  const unknown = names.filter((n) => !Object.hasOwn(KNOWN_METRICS, n));
  if (unknown.length > 0) {
    return {
      ok: false,
      field: "metrics",
      message: `Unknown metric ${JSON.stringify(unknown[0]!.slice(0, 100))}; known: ${Object.keys(KNOWN_METRICS).join(", ")}.`,
    };
  }
  if (mode === "CURRENT") {
    if (input.start_epoch_millis !== undefined || input.end_epoch_millis !== undefined) {
      return {
        ok: false,
        field: "start_epoch_millis",
        message: "mode CURRENT is a snapshot at now: omit start_epoch_millis and end_epoch_millis.",
      };
    }
    return { ok: true, query: { mode, start_ms: nowMs, end_ms: nowMs, step_seconds: null, names } };
  }
  const end = input.end_epoch_millis ?? nowMs;
  const start = input.start_epoch_millis ?? end - DEFAULT_METRICS_WINDOW_MS;
  if (start > end) {
    return {
      ok: false,
      field: "start_epoch_millis",
      message: "start_epoch_millis is after end_epoch_millis.",
    };
  }
  if (end - start > MAX_METRICS_WINDOW_MS) {
    return {
      ok: false,
      field: "start_epoch_millis",
      message: "The window from start to end exceeds 7 days.",
    };
  }
  const step =
    mode === "SERIES" ? 60 * Math.max(1, Math.ceil((end - start) / 1000 / MAX_SERIES_STEPS / 60)) : null;
  return { ok: true, query: { mode, start_ms: start, end_ms: end, step_seconds: step, names } };
}

/** What the control plane knows of one deployment now. */
export interface DeploymentAggregates {
  replicas: { ready: number; starting: number; restarts: number };
  /** The environments the deployment serves, and their request counts by status class since they began. */
  environments: ReadonlyArray<{ name: string; counts: Readonly<Record<string, number>> }>;
}

export interface MetricDescriptor {
  name: string;
  unit_hint: UnitHint;
  kind: Kind;
  label_sets: Array<Record<string, string>>;
}

export interface DeploymentMetrics {
  start_epoch_millis: number;
  end_epoch_millis: number;
  mode: MetricMode;
  step_seconds: number | null;
  metric_descriptors: MetricDescriptor[];
  metric_values: Array<{ start_epoch_millis: number; values: Array<Array<number | null>> }>;
}

/**
 * The answer for `q`. Request counts are kept per environment, not per deployment, so the request counter
 * is labelled with each environment the deployment serves and counts that environment's requests (from
 * whichever deployment served them); a deployment that serves no environment has none, and the name is
 * omitted, as the spec omits names that do not apply.
 */
export function deploymentMetrics(q: MetricsQuery, agg: DeploymentAggregates): DeploymentMetrics {
  const series: Array<{ descriptor: MetricDescriptor; now: Array<number | null> }> = [];
  for (const name of q.names) {
    const known = KNOWN_METRICS[name]!;
    const plain = (value: number) => ({
      descriptor: { name, ...known, label_sets: [{}] },
      now: [value],
    });
    switch (name) {
      case "baseten_replicas_active":
        series.push(plain(agg.replicas.ready));
        break;
      case "baseten_replicas_starting":
        series.push(plain(agg.replicas.starting));
        break;
      case "baseten_container_restarts_total":
        series.push(plain(agg.replicas.restarts));
        break;
      case "baseten_inference_requests_total": {
        if (agg.environments.length === 0) break;
        const labels: Array<Record<string, string>> = [];
        const now: number[] = [];
        for (const env of [...agg.environments].sort((a, b) => (a.name < b.name ? -1 : 1))) {
          const classes = [...new Set([...STATUS_CLASSES, ...Object.keys(env.counts)])].sort();
          for (const status of classes) {
            labels.push({ environment: env.name, status });
            now.push(env.counts[status] ?? 0);
          }
        }
        series.push({ descriptor: { name, ...known, label_sets: labels }, now });
        break;
      }
      // baseten_end_to_end_response_time_seconds: no aggregate on the control plane (see KNOWN_METRICS).
    }
  }
  const descriptors = series.map((s) => s.descriptor);
  const noData = () => series.map((s) => s.now.map(() => null));
  let values: DeploymentMetrics["metric_values"];
  if (q.mode === "CURRENT") {
    values = [{ start_epoch_millis: q.start_ms, values: series.map((s) => s.now) }];
  } else if (q.mode === "SUMMARY") {
    values = [{ start_epoch_millis: q.start_ms, values: noData() }];
  } else {
    const stepMs = q.step_seconds! * 1000;
    const steps = Math.max(1, Math.ceil((q.end_ms - q.start_ms) / stepMs));
    values = Array.from({ length: steps }, (_, i) => ({
      start_epoch_millis: q.start_ms + i * stepMs,
      values: noData(),
    }));
  }
  return {
    start_epoch_millis: q.start_ms,
    end_epoch_millis: q.end_ms,
    mode: q.mode,
    step_seconds: q.step_seconds,
    metric_descriptors: descriptors,
    metric_values: values,
  };
}
