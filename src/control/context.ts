// What every control-plane operation is given: the store, the artifact store, settings, the clock and the
// revision notifier. One is built per process in the composition root (`main.ts`) or per test.

import type { Logger } from "pino";
import type { Principal } from "../core/access.ts";
import type { SecretBox } from "../lib/secret-box.ts";
import type { Db, Store } from "../store/store.ts";
import type { ArtifactStore } from "./artifacts.ts";
import type { ControlMetrics } from "./control-metrics.ts";
import type { Leadership } from "./lease.ts";
import type { PlaneHealth } from "./plane-health.ts";
import type { RevisionFeed } from "./revision-feed.ts";

export interface ControlContext {
  store: Store;
  artifacts: ArtifactStore;
  /** The inference domain: `model-{id}.{domain}`. */
  domain: string;
  /** Base URL clients use to reach this control plane, for upload targets. */
  publicUrl: string;
  logger: Logger;
  feed: RevisionFeed;
  now(): string;
  /** When this control process started (ms): planes are not judged down before it has run a while. */
  startedAtMs: number;
  /** A plane silent this long is down, and its replicas are placed again in their region. */
  planeTimeoutMs: number;
  /**
   * Which planes are down, judged fail-static (`plane-health.ts`). Built by the composition root; a context
   * built without one gets one on first use (`planeHealthOf`).
   */
  planeHealth?: PlaneHealth;
  /** The control plane's own /metrics (src/control/control-metrics.ts), when this process serves one. */
  metrics?: ControlMetrics;
  /** Seals and opens team secrets; its keys come from a file apart from the database. */
  secrets: SecretBox;
  /**
   * Whether this replica leads the background loops (src/control/lease.ts). Absent (a context built
   * in-process by a test) means this process is the only one and leads.
   */
  lease?: Leadership;
  /** The autoscaler's control loop (src/control/autoscaling.ts), when this process runs one. */
  autoscaler?: { wake(deploymentId: string): Promise<void>; tick(only?: readonly string[]): Promise<void> };
}

export interface AuditEntry {
  team_id: string | null;
  model_id: string | null;
  action: string;
  target: string;
  before?: unknown;
  after?: unknown;
}

/** Records a management action in the same transaction as the change it describes. */
export async function recordAudit(ctx: ControlContext, db: Db, who: Principal | null, entry: AuditEntry) {
  await db
    .insertInto("audit_logs")
    .values({
      at: ctx.now(),
      team_id: entry.team_id,
      model_id: entry.model_id,
      actor_user_id: who?.user_id ?? null,
      actor_key_prefix: who?.key_prefix ?? null,
      action: entry.action,
      target: entry.target,
      before: entry.before === undefined ? null : JSON.stringify(entry.before),
      after: entry.after === undefined ? null : JSON.stringify(entry.after),
    })
    .execute();
}
