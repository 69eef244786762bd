// Event-loop delay of a `meridian` process under the soak (test/chaos/soak.ts), loaded with
// NODE_OPTIONS=--import: no /metrics of Meridian registers prom-client's default metrics, so
// `nodejs_eventloop_lag_*` is measured here with the histogram prom-client itself uses
// (perf_hooks.monitorEventLoopDelay, 10 ms resolution), written every 5 s to
// $MERIDIAN_SOAK_ELD_DIR/<pid>.jsonl (one line per 5 s window, appended, so the sampler misses none) and
// reset. Without that variable it does nothing. Replicas never load
// it: the plane passes them only LANG and TZ of its environment.

import { appendFileSync } from "node:fs";
import { monitorEventLoopDelay } from "node:perf_hooks";

const dir = process.env.MERIDIAN_SOAK_ELD_DIR;
if (dir) {
  const histogram = monitorEventLoopDelay({ resolution: 10 });
  histogram.enable();
  const file = `${dir}/${process.pid}.jsonl`;
  const timer = setInterval(() => {
    const record = {
      pid: process.pid,
      at: Date.now(),
      role: process.argv[2] ?? null,
      p50_ms: histogram.percentile(50) / 1e6,
      p99_ms: histogram.percentile(99) / 1e6,
      max_ms: histogram.max / 1e6,
      mean_ms: histogram.mean / 1e6,
    };
    histogram.reset();
    try {
      appendFileSync(file, `${JSON.stringify(record)}\n`);
    } catch {
      // The soak's directory gone (the run ended): nothing to report to.
    }
  }, 5_000);
  timer.unref();
}
