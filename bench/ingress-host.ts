// One Meridian ingress as its own process, composed the way `meridian plane` composes it (src/plane/main.ts):
// createIngress with the plane's AuditLog (batched JSON lines on disk) and a prom-client registry, a pino
// logger, and a snapshot — synthetic (bench/snapshot.ts) or a control-built one from a file. Local replicas
// are the upstream given on the command line. The plane's agent and watcher are left out: they do no
// per-request work. Configured by the BENCH_INGRESS environment variable (JSON).

import { readFileSync } from "node:fs";
import pino from "pino";
import { Registry } from "prom-client";
import type { PlaneRef, PlaneSnapshot } from "../src/core/snapshot.ts";
import { AuditLog } from "../src/gateway/audit.ts";
import type { createIngress as CreateIngress } from "../src/gateway/ingress.ts";
import { benchPlaneKey, syntheticSnapshot } from "./snapshot.ts";

export interface IngressHostConfig {
  plane: PlaneRef;
  planes: PlaneRef[];
  listen: { host: string; port: number };
  auditDir: string;
  /** `host:port` of the local replica for every deployment; null: no local replica (forward). */
  upstream: string | null;
  /** Per-deployment overrides of `upstream`. */
  routes?: Record<string, string>;
  /** A control-built snapshot (JSON file), or a synthetic one of this many models. */
  snapshotFile?: string;
  models?: number;
  environments?: string[];
  readyPlanes?: string[];
  /** The ingress transport (default: the ingress's own default, `wire`). */
  transport?: "wire" | "http";
  /** Sign receipts (default true, as `meridian plane`; false is `--receipts off`). */
  receipts?: boolean;
}

const config = JSON.parse(process.env["BENCH_INGRESS"] ?? "{}") as IngressHostConfig;
const started = performance.now();
let snapshot: PlaneSnapshot;
if (config.snapshotFile) {
  snapshot = JSON.parse(readFileSync(config.snapshotFile, "utf8")) as PlaneSnapshot;
} else {
  snapshot = syntheticSnapshot({
    plane: config.plane,
    planes: config.planes,
    models: config.models ?? 10,
    environments: config.environments ?? ["prod-eu"],
    readyPlanes: config.readyPlanes ?? [config.plane.name],
  });
}
const loadMs = performance.now() - started;

// BENCH_INGRESS_MODULE: another implementation of createIngress (A/B comparisons of a change).
const { createIngress } = (await import(
  process.env["BENCH_INGRESS_MODULE"] ?? "../src/gateway/ingress.ts"
)) as {
  createIngress: typeof CreateIngress;
};
const logger = pino({ name: "plane", base: { plane: config.plane.name } });
const registry = new Registry();
const audit = new AuditLog({
  dir: config.auditDir,
  onError: (err) => logger.error({ err }, "audit write failed"),
});
await audit.start();
const fallback = config.upstream === null ? [] : [config.upstream];
const routes = new Map(Object.entries(config.routes ?? {}).map(([d, ep]) => [d, [ep]]));
const ingress = createIngress({
  plane: { name: config.plane.name, region: config.plane.region },
  listen: config.listen,
  signingKey: benchPlaneKey(config.plane.name),
  snapshot: () => snapshot,
  localReplicas: (deploymentId) => routes.get(deploymentId) ?? fallback,
  logger,
  registry,
  audit,
  ...(config.transport ? { transport: config.transport } : {}),
  ...(config.receipts === false ? { receipts: false } : {}),
});
await ingress.start();
process.stdout.write(
  `${JSON.stringify({ msg: "bench ingress ready", ...ingress.address, transport: ingress.transport, load_ms: loadMs })}\n`,
);

process.on("SIGTERM", () => {
  void (async () => {
    await ingress.stop();
    await audit.stop();
    process.exit(0);
  })();
});
