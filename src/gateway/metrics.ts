// The ingress's Prometheus metrics: requests and latency by environment, region, hostname form and status
// code; malformed requests and upstream failures by kind. Label children are cached, so recording a
// request is two Map lookups rather than prom-client's per-call label hashing.

import { Counter, Gauge, Histogram, type Registry } from "prom-client";

export interface RequestLabels {
  environment: string;
  region: string;
  hostname_form: string;
  status_code: string;
}

export type UpstreamFailure = "connect" | "reset" | "timeout" | "peer_unreachable";

export interface GatewayMetrics {
  observe(labels: RequestLabels, seconds: number): void;
  malformed(reason: string): void;
  upstreamFailure(kind: UpstreamFailure): void;
  inflight(delta: number): void;
}

const BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1200];

export function createGatewayMetrics(registry: Registry): GatewayMetrics {
  const names = ["environment", "region", "hostname_form", "status_code"] as const;
  const requests = new Counter({
    name: "meridian_ingress_requests_total",
    help: "Inference requests answered by this plane's ingress.",
    labelNames: names,
    registers: [registry],
  });
  const duration = new Histogram({
    name: "meridian_ingress_request_duration_seconds",
    help: "Time from request headers to the end of the response, as the ingress saw it.",
    labelNames: names,
    buckets: BUCKETS,
    registers: [registry],
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
  // Counted here and read at scrape time: a prom-client call per request start and end would cost more.
  let inflightNow = 0;
  new Gauge({
    name: "meridian_ingress_inflight_requests",
    help: "Requests in flight through this ingress.",
    registers: [registry],
    collect() {
      this.set(inflightNow);
    },
  });
  const children = new Map<string, { c: Counter.Internal; h: Histogram.Internal<(typeof names)[number]> }>();
  return {
    observe(labels, seconds) {
      const key = `${labels.environment}\0${labels.region}\0${labels.hostname_form}\0${labels.status_code}`;
      let child = children.get(key);
      if (child === undefined) {
        child = { c: requests.labels(labels), h: duration.labels(labels) };
        children.set(key, child);
      }
      child.c.inc();
      child.h.observe(seconds);
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
  };
}
