// The ingress's Prometheus metrics: requests and latency by environment, region, hostname form and status
// code; malformed requests and upstream failures by kind. The per-request series are kept in plain
// counters and handed to prom-client's registry only at scrape time: recording a request is one Map
// lookup and a few additions, where prom-client's own `observe` validates and hashes labels every call.

import { Counter, Gauge, Histogram, type Metric, type Registry } from "prom-client";

export interface RequestLabels {
  environment: string;
  region: string;
  hostname_form: string;
  status_code: string;
}

export type UpstreamFailure =
  | "connect"
  | "reset"
  | "timeout"
  | "peer_unreachable"
  | "hop_refused"
  | "hop_no_replica";

export interface GatewayMetrics {
  /** One request answered (its environment, hostname form and status), and how long it took. */
  observe(environment: string, form: string, status: number, seconds: number): void;
  malformed(reason: string): void;
  upstreamFailure(kind: UpstreamFailure): void;
  inflight(delta: number): void;
  /** A response went out without its receipt: a covered value could not be signed (RFC 9421 §2.5). */
  unsignedReceipt(): void;
  /** Requests held while their deployment wakes (src/gateway/parking.ts). */
  parked(delta: number): void;
  /** A held request left the queue: released to a replica (the cold start it waited) or refused. */
  held(seconds: number, outcome: "released" | "refused"): void;
}

const BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1200];

/** `region` is the recording plane's: one ingress records one region. */
export function createGatewayMetrics(registry: Registry, region: string): GatewayMetrics {
  // environment → hostname form → status code → series: lookups by the strings and number at hand, with no
  // key built per request.
  const byEnvironment = new Map<string, Map<string, Map<number, Series>>>();
  const series = new Map<string, Series>();
  registerRequestSeries(registry, series, () => {
    series.clear();
    byEnvironment.clear();
  });
  const malformed = new Counter({
    name: "meridian_ingress_malformed_requests_total",
    help: "Requests refused by the HTTP parser or its timeouts before routing.",
    labelNames: ["reason"],
    registers: [registry],
  });
  const upstream = new Counter({
    name: "meridian_ingress_upstream_failures_total",
    help: "Failures talking to replicas or peer planes.",
    labelNames: ["kind"],
    registers: [registry],
  });
  const unsigned = new Counter({
    name: "meridian_ingress_unsigned_responses_total",
    help: "Responses sent without a receipt because a covered value could not be signed (absent, or outside visible ASCII).",
    registers: [registry],
  });
  // Observed once per held request only (a wake is rare next to requests): prom-client's own histogram.
  const heldFor = new Histogram({
    name: "meridian_ingress_held_seconds",
    help: "How long a request was held at this ingress while its deployment woke or its replicas were full: the cold start a client waited (released) or the wait before a refusal (refused).",
    labelNames: ["outcome"],
    buckets: [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 1200],
    registers: [registry],
  });
  // Counted here and read at scrape time, like the request series.
  let inflightNow = 0;
  let parkedNow = 0;
  new Gauge({
    name: "meridian_ingress_parked_requests",
    help: "Requests held at this ingress while their deployment wakes or its replicas are full.",
    registers: [registry],
    collect() {
      this.set(parkedNow);
    },
  });
  new Gauge({
    name: "meridian_ingress_inflight_requests",
    help: "Requests in flight through this ingress.",
    registers: [registry],
    collect() {
      this.set(inflightNow);
    },
  });
  return {
    observe(environment, form, status, seconds) {
      let byForm = byEnvironment.get(environment);
      if (byForm === undefined) {
        byForm = new Map();
        byEnvironment.set(environment, byForm);
      }
      let byStatus = byForm.get(form);
      if (byStatus === undefined) {
        byStatus = new Map();
        byForm.set(form, byStatus);
      }
      let s = byStatus.get(status);
      if (s === undefined) {
        const labels = { environment, region, hostname_form: form, status_code: String(status) };
        s = { labels, count: 0, sum: 0, buckets: new Array<number>(BUCKETS.length).fill(0) };
        byStatus.set(status, s);
        series.set(`${environment}\0${form}\0${status}`, s);
      }
      s.count++;
      s.sum += seconds;
      for (let i = 0; i < BUCKETS.length; i++) {
        if (seconds <= BUCKETS[i]!) {
          s.buckets[i]!++;
          break;
        }
      }
    },
    malformed(reason) {
      malformed.inc({ reason });
    },
    upstreamFailure(kind) {
      upstream.inc({ kind });
    },
    inflight(delta) {
      inflightNow += delta;
    },
    unsignedReceipt() {
      unsigned.inc();
    },
    parked(delta) {
      parkedNow += delta;
    },
    held(seconds, outcome) {
      heldFor.observe({ outcome }, seconds);
    },
  };
}

/** One label set of the request counter and latency histogram; `buckets` are per bucket, not cumulative. */
interface Series {
  labels: RequestLabels;
  count: number;
  sum: number;
  buckets: number[];
}

interface Value {
  value: number;
  labels: Record<string, string>;
  metricName?: string;
  sharedLabels?: Record<string, string>;
}

/**
 * `meridian_ingress_requests_total` and `meridian_ingress_request_duration_seconds`, rendered from the series
 * in the shape prom-client's own Counter and Histogram produce (metric objects with `get()`).
 */
function registerRequestSeries(registry: Registry, series: Map<string, Series>, reset: () => void): void {
  const counter = "meridian_ingress_requests_total";
  const histogram = "meridian_ingress_request_duration_seconds";
  const counterHelp = "Inference requests answered by this plane's ingress.";
  const histogramHelp = "Time from request headers to the end of the response, as the ingress saw it.";
  const metric = (name: string, help: string, type: string, values: () => Value[]) =>
    ({
      name,
      help,
      type,
      aggregator: "sum",
      get: async () => ({ name, help, type, aggregator: "sum", values: values() }),
      reset,
    }) as unknown as Metric;
  registry.registerMetric(
    metric(counter, counterHelp, "counter", () =>
      [...series.values()].map((s) => ({ value: s.count, labels: { ...s.labels } })),
    ),
  );
  registry.registerMetric(
    metric(histogram, histogramHelp, "histogram", () => {
      const out: Value[] = [];
      for (const s of series.values()) {
        const labels = { ...s.labels };
        let acc = 0;
        for (let i = 0; i < BUCKETS.length; i++) {
          acc += s.buckets[i]!;
          const le = String(BUCKETS[i]);
          out.push({ value: acc, labels: { le }, metricName: `${histogram}_bucket`, sharedLabels: labels });
        }
        out.push({
          value: s.count,
          labels: { le: "+Inf" },
          metricName: `${histogram}_bucket`,
          sharedLabels: labels,
        });
        out.push({ value: s.sum, labels: {}, metricName: `${histogram}_sum`, sharedLabels: labels });
        out.push({ value: s.count, labels: {}, metricName: `${histogram}_count`, sharedLabels: labels });
      }
      return out;
    }),
  );
}
