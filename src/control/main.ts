// Composition root of `meridian control`: opens the store, bootstraps the organization on first start,
// builds the app and listens. `stop()` drains in reverse order.

import { mkdirSync } from "node:fs";
import { join } from "node:path";
import pino, { type Logger } from "pino";
import { collectDefaultMetrics } from "prom-client";
import { downPlanes } from "../core/fail-static.ts";
import { writeSecretFile } from "../lib/files.ts";
import { loadSecretsKeyFile } from "../lib/secret-box.ts";
import { Store } from "../store/store.ts";
import { bootstrap } from "./accounts.ts";
import { buildControlApp } from "./app.ts";
import { DatabaseArtifactStore, LocalArtifactStore } from "./artifacts.ts";
import { AutoscalingLoop } from "./autoscaling.ts";
import type { ControlContext } from "./context.ts";
import { ControlMetrics } from "./control-metrics.ts";
import { ensureControlKey } from "./keys.ts";
import { holdSqliteControlLock, type Leadership, PostgresLeadership, SoleLeadership } from "./lease.ts";
import { PlaneHealth, planeHealthOf } from "./plane-health.ts";
import { RevisionFeed } from "./revision-feed.ts";
import { change, reconcileAll } from "./scheduler.ts";
import { verifySecretsKey } from "./secrets.ts";

export interface ControlConfig {
  dataDir: string;
  host: string;
  port: number;
  /** PostgreSQL URL; null uses the SQLite file under the data directory. */
  databaseUrl: string | null;
  /** The inference domain (`model-{id}.{domain}`). */
  domain: string;
  /** URL clients reach this control plane at; defaults to the listen address. */
  publicUrl: string | null;
  /**
   * Where model packages are kept: files under the data directory, or the database (which several control
   * replicas share). Default: files with SQLite, the database with PostgreSQL.
   */
  artifactStore?: "files" | "database";
  /** A plane silent this long is down and its replicas are placed again in their region. Default 15 s. */
  planeTimeoutMs?: number;
  /**
   * The key file that seals team secrets. Default: `secrets.key` under the data directory, created (mode
   * 0600) on first start. Control replicas sharing one PostgreSQL must all be given the same file.
   */
  secretsKeyFile?: string;
  /** How often the autoscaler decides every deployment (`--autoscaler-interval-ms`). Default 1 000 ms. */
  autoscalerIntervalMs?: number;
  /**
   * On PostgreSQL, how often a follower tries to take the leader lease and the leader confirms it
   * (src/control/lease.ts). Default 1 000 ms: a killed leader's loops resume on another replica within it.
   */
  leaseIntervalMs?: number;
  logger?: Logger;
}

export interface RunningControl {
  url: string;
  ctx: ControlContext;
  /** The admin key, only on the start that created it. */
  adminKey: string | null;
  adminKeyFile: string;
  stop(): Promise<void>;
}

export async function startControl(config: ControlConfig): Promise<RunningControl> {
  const logger = config.logger ?? pino({ name: "control" });
  mkdirSync(config.dataDir, { recursive: true });
  // SQLite serves one control process; a second one on the same data directory is refused here.
  const sqliteLock = config.databaseUrl === null ? holdSqliteControlLock(config.dataDir) : null;
  try {
    return await startControlHolding(config, logger, sqliteLock);
  } catch (err) {
    sqliteLock?.release();
    throw err;
  }
}

async function startControlHolding(
  config: ControlConfig,
  logger: Logger,
  sqliteLock: { release(): void } | null,
): Promise<RunningControl> {
  // Read before the database is opened: a key file that cannot be used stops the start, naming why.
  const secrets = loadSecretsKeyFile(config.secretsKeyFile ?? join(config.dataDir, "secrets.key"), {
    create: config.secretsKeyFile === undefined,
  });
  const store = await Store.open(
    config.databaseUrl === null
      ? { kind: "sqlite", file: join(config.dataDir, "meridian.db") }
      : { kind: "postgres", url: config.databaseUrl },
  );
  try {
    await verifySecretsKey(store, secrets, logger);
  } catch (err) {
    await store.close();
    throw err;
  }
  const adminKeyFile = join(config.dataDir, "admin.key");
  const boot = await bootstrap(store, new Date().toISOString(), async (key) =>
    writeSecretFile(adminKeyFile, `${key}\n`),
  );
  // An installation that predates the control plane's own key gets it now (bootstrap creates it on new ones).
  await ensureControlKey(store);
  const artifacts =
    (config.artifactStore ?? (config.databaseUrl === null ? "files" : "database")) === "files"
      ? new LocalArtifactStore(join(config.dataDir, "artifacts"))
      : new DatabaseArtifactStore(store);
  await artifacts.start();
  const feed = new RevisionFeed(store);
  await feed.start();
  const lease: Leadership =
    config.databaseUrl === null
      ? new SoleLeadership()
      : new PostgresLeadership({
          url: config.databaseUrl,
          logger,
          intervalMs: config.leaseIntervalMs ?? 1_000,
        });
  await lease.start();
  const ctx: ControlContext = {
    store,
    artifacts,
    domain: config.domain,
    publicUrl: config.publicUrl ?? "",
    logger,
    feed,
    now: () => new Date().toISOString(),
    startedAtMs: Date.now(),
    planeTimeoutMs: config.planeTimeoutMs ?? 15_000,
    secrets,
    lease,
  };
  ctx.metrics = new ControlMetrics(() => ctx.store.db);
  // The process's own health (RSS, open fds, event-loop delay, GC, heap), prom-client's standard names.
  collectDefaultMetrics({ register: ctx.metrics.registry });
  ctx.planeHealth = new PlaneHealth({
    timeoutMs: ctx.planeTimeoutMs,
    startedAtMs: ctx.startedAtMs,
    now: () => Date.parse(ctx.now()),
  });
  const app = await buildControlApp(ctx);
  await app.listen({ host: config.host, port: config.port });
  const address = app.server.address();
  const port = typeof address === "object" && address ? address.port : config.port;
  const host = config.host.includes(":") ? `[${config.host}]` : config.host;
  const url = `http://${host}:${port}`;
  if (!config.publicUrl) ctx.publicUrl = url;
  // Plane capacity or placement rules may have changed while the control plane was down.
  await reconcileAll(ctx);
  const health = watchPlaneHealth(ctx);
  const autoscaler = new AutoscalingLoop(ctx, { intervalMs: config.autoscalerIntervalMs ?? 1_000 });
  ctx.autoscaler = autoscaler;
  autoscaler.start();
  logger.info(
    { url, store: store.dialect, domain: config.domain, revision: feed.revision() },
    "control plane listening",
  );
  return {
    url,
    ctx,
    adminKey: boot.admin_key,
    adminKeyFile,
    async stop() {
      health.stop();
      await autoscaler.stop();
      await lease.stop();
      feed.stop();
      await app.close();
      await store.close();
      sqliteLock?.release();
    },
  };
}

/**
 * Re-places replicas when a plane is judged down or comes back: each time the set of down planes changes,
 * every deployment is reconciled (placement never leaves a replica's region, so failover stays in-region).
 * The judgement is fail-static (`plane-health.ts`): after a stall of its own the control plane waits for
 * fresh reports, and silence alone never takes down the last planes of a region.
 */
function watchPlaneHealth(ctx: ControlContext): { stop(): void } {
  const health = planeHealthOf(ctx);
  health.start((h) =>
    ctx.logger.warn(
      { cause: h.cause, since: new Date(h.sinceMs).toISOString(), wait_ms: ctx.planeTimeoutMs },
      "plane judgement waits for fresh reports",
    ),
  );
  let down = "";
  let spared = "";
  let running = false;
  const timer = setInterval(
    async () => {
      if (running) return;
      running = true;
      try {
        const planes = await ctx.store.db
          .selectFrom("planes")
          .select(["name", "region", "last_seen_at", "created_at"])
          .execute();
        const verdicts = health.judge(planes, Date.parse(ctx.now()));
        // Only the leader acts on its judgement (docs/high-availability.md); a follower keeps judging so
        // that its hearing is current the moment it takes the lease.
        if (!(ctx.lease?.isLeader() ?? true)) {
          down = "";
          spared = "";
          return;
        }
        const names = downPlanes(verdicts).join(",");
        const silent = verdicts.filter((v) => v.state === "spared");
        const sparedNow = silent.map((v) => `${v.name}:${v.reason}`).join(",");
        if (sparedNow !== spared) {
          spared = sparedNow;
          if (silent.length > 0) {
            ctx.logger.warn(
              { spared: silent.map((v) => ({ plane: v.name, reason: v.reason, silent_ms: v.silentMs })) },
              "silent planes not judged down",
            );
          }
        }
        // A follower judges with its own hearing when a write through it places replicas: one that had
        // not yet heard a plane fall silent may have placed a replica there, which the leader moves.
        const stranded =
          names !== "" &&
          (await ctx.store.db
            .selectFrom("replicas")
            .innerJoin("deployments", "deployments.id", "replicas.deployment_id")
            .select("replicas.id")
            .where("replicas.plane", "in", names.split(","))
            // A failed build keeps its replica (and the logs saying why) wherever it is: not stranded.
            .where("deployments.status", "!=", "BUILD_FAILED")
            .limit(1)
            .executeTakeFirst()) !== undefined;
        if (names !== down || stranded) {
          if (names !== down) {
            ctx.logger.warn(
              { down: names === "" ? [] : names.split(","), was: down === "" ? [] : down.split(",") },
              "plane health changed",
            );
          }
          down = names;
          await change(ctx, async (trx, scope) => {
            await ctx.lease?.fence(trx);
            const rows = await trx.selectFrom("deployments").select("id").execute();
            for (const r of rows) scope.touch(r.id);
          });
        }
      } catch (err) {
        ctx.logger.error({ err }, "plane health check failed");
      } finally {
        running = false;
      }
    },
    Math.max(250, Math.floor(ctx.planeTimeoutMs / 5)),
  );
  timer.unref();
  return {
    stop() {
      clearInterval(timer);
      health.stop();
    },
  };
}
