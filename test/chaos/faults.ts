// The faults the harness injects, each against a running World under load. A fault returns when it is over
// and the installation has recovered (or the wait for it ran out); the runner counts the load's results in
// its window. Times are wall-clock ms.

import { spawnSync } from "node:child_process";
import {
  cpSync,
  existsSync,
  mkdtempSync,
  readdirSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { request } from "undici";
import { checkAuditDirectory } from "../../src/lib/audit-chain.ts";
import { DOMAIN, eventually } from "../support/cluster.ts";
import { createModelFrom, packFiles, planeReplicas, pushPackage } from "../support/planes.ts";
import { type PrivatePostgres, run } from "../support/private-postgres.ts";
import {
  auditRecords,
  call,
  HUNG_MS,
  Load,
  type Result,
  replicaProcess,
  sleep,
  type Target,
  type World,
} from "./harness.ts";
import { chaosModel, executions } from "./support.ts";

export interface FaultRun {
  name: string;
  /** What was done, in a sentence, for RELIABILITY.md. */
  what: string;
  startedAt: number;
  /** When the fault was lifted (the process restarted, resumed): recovery is counted from here. */
  restoredAt: number;
  /**
   * When the harness began lifting the fault, if that is work of its own before `restoredAt` (a stopped
   * plane being started again: it compiles and starts its replicas on the same cores). The other
   * endpoints' figures are split here: the fault itself, then its repair.
   */
  liftingAt?: number;
  endedAt: number;
  /** A window of the same load right before the fault, to compare the fault's figures with. */
  before?: [number, number];
  /** Targets the fault is meant to affect; the others must be unaffected. */
  affected: string[];
  /** Fault-specific figures (recovery of a restarted plane, planes judged down, …). */
  extra: Record<string, string | number | boolean>;
  /** Results of extra clients the fault ran itself (a revoked key), counted apart. */
  sideResults?: Result[];
}

function controlLogs(world: World, from: number): Array<Record<string, any>> {
  return world.cluster.control.output
    .slice(from)
    .filter((l) => l.startsWith("{"))
    .flatMap((l) => {
      try {
        return [JSON.parse(l) as Record<string, any>];
      } catch {
        return [];
      }
    });
}

function judgedDown(world: World, from: number): string[] {
  return [
    ...new Set(
      controlLogs(world, from)
        .filter((l) => l["msg"] === "plane health changed")
        .flatMap((l) => l["down"] as string[]),
    ),
  ].sort();
}

/** Nothing injected: the reference for latency. */
export async function baseline(_world: World, seconds: number): Promise<FaultRun> {
  const startedAt = Date.now();
  await sleep(seconds * 1000);
  const now = Date.now();
  return {
    name: "baseline",
    what: `no fault, ${seconds} s`,
    startedAt,
    restoredAt: now,
    endedAt: now,
    affected: [],
    extra: {},
  };
}

/** The control plane paused (SIGSTOP) for longer than the plane timeout, then resumed. */
export async function controlStall(world: World): Promise<FaultRun> {
  const mark = world.cluster.control.output.length;
  const pid = world.cluster.control.child.pid!;
  const pauseS = world.timeoutS * 2 + 2;
  const startedAt = Date.now();
  process.kill(pid, "SIGSTOP");
  await sleep(pauseS * 1000);
  process.kill(pid, "SIGCONT");
  const restoredAt = Date.now();
  await sleep(world.timeoutS * 3 * 1000);
  return {
    name: "control plane paused",
    what: `SIGSTOP of the control plane for ${pauseS} s (--plane-timeout ${world.timeoutS} s), then SIGCONT`,
    startedAt,
    restoredAt,
    endedAt: Date.now(),
    affected: [],
    extra: { "planes judged down": judgedDown(world, mark).join(" ") || "none" },
  };
}

/** An eu replica SIGKILLed `times` times, every `everyS` seconds, on each eu plane in turn (restarted in place). */
export async function replicaKills(world: World, times: number, everyS: number): Promise<FaultRun> {
  const startedAt = Date.now();
  let killed = 0;
  let restoredAt = startedAt;
  /** The READY eu replicas on each eu plane when each kill was made, as the planes' agents list them. */
  const layouts: string[] = [];
  for (let i = 0; i < times; i++) {
    const order = i % 2 === 0 ? ["eu-1", "eu-2"] : ["eu-2", "eu-1"];
    const ready: string[] = [];
    for (const plane of ["eu-1", "eu-2"]) {
      const rs = (await planeReplicas(world.cluster.plane(plane))) ?? [];
      ready.push(
        `${plane} ${rs.filter((r) => r.deployment_id === world.deployments.eu && r.state === "READY").length}`,
      );
    }
    let pid: number | null = null;
    for (const plane of order) {
      pid = await replicaProcess(world, plane, world.deployments.eu);
      if (pid !== null) break;
    }
    if (pid !== null) {
      process.kill(pid, "SIGKILL");
      killed++;
      restoredAt = Date.now();
      layouts.push(`${new Date(restoredAt).toISOString().slice(11, 23)} (${ready.join(", ")})`);
    }
    await sleep(everyS * 1000);
  }
  await euReplicasReady(world);
  await sleep(2_000);
  return {
    name: "replica SIGKILL",
    what: `an eu replica SIGKILLed ${killed} times, every ${everyS} s, each eu plane in turn`,
    startedAt,
    restoredAt,
    endedAt: Date.now(),
    affected: ["eu regional @eu-1", "eu regional @eu-2", "eu standard @us-1"],
    extra: { kills: killed, "kills at (ready eu replicas per plane before)": layouts.join("; ") },
  };
}

/** Waits until two READY eu replicas run (on either eu plane: after a failover both may be on one). */
export async function euReplicasReady(world: World, timeoutMs = 60_000): Promise<void> {
  await eventually(async () => {
    let ready = 0;
    for (const plane of ["eu-1", "eu-2"]) {
      const rs = (await planeReplicas(world.cluster.plane(plane))) ?? [];
      ready += rs.filter((r) => r.deployment_id === world.deployments.eu && r.state === "READY").length;
    }
    return ready >= 2;
  }, timeoutMs);
}

/** One eu plane (agent and ingress: one process) SIGKILLed and started again after `downS`. */
export async function planeKill(world: World, downS: number): Promise<FaultRun> {
  const mark = world.cluster.control.output.length;
  const plane = world.cluster.plane("eu-1");
  const startedAt = Date.now();
  await plane.stop("SIGKILL");
  await sleep(downS * 1000);
  const liftingAt = Date.now();
  await plane.start();
  const restoredAt = Date.now();
  await euReplicasReady(world);
  await sleep(world.timeoutS * 2 * 1000);
  return {
    name: "plane SIGKILL and restart",
    what: `eu-1 (agent and ingress) SIGKILLed, started again ${downS} s later; eu-2 stays up`,
    startedAt,
    liftingAt,
    restoredAt,
    endedAt: Date.now(),
    affected: ["eu regional @eu-1", "eu regional @eu-2", "eu standard @us-1"],
    extra: { "planes judged down": judgedDown(world, mark).join(" ") || "none" },
  };
}

/** One eu plane frozen (SIGSTOP: its ingress accepts connections and answers nothing), resumed after `frozenS`. */
export async function planeFreeze(world: World, frozenS: number): Promise<FaultRun> {
  const mark = world.cluster.control.output.length;
  const pid = world.cluster.plane("eu-1").process!.child.pid!;
  const startedAt = Date.now();
  process.kill(pid, "SIGSTOP");
  await sleep(frozenS * 1000);
  process.kill(pid, "SIGCONT");
  const restoredAt = Date.now();
  await euReplicasReady(world);
  await sleep(world.timeoutS * 2 * 1000);
  return {
    name: "plane frozen",
    what: `eu-1 SIGSTOPped for ${frozenS} s (--plane-timeout ${world.timeoutS} s), then SIGCONT`,
    startedAt,
    restoredAt,
    endedAt: Date.now(),
    affected: ["eu regional @eu-1", "eu regional @eu-2", "eu standard @us-1"],
    extra: { "planes judged down": judgedDown(world, mark).join(" ") || "none" },
  };
}

/** Every eu plane SIGKILLed at once (the region cut off), started again after `downS`. */
export async function regionCutoff(world: World, downS: number): Promise<FaultRun> {
  const mark = world.cluster.control.output.length;
  const planes = ["eu-1", "eu-2"].map((n) => world.cluster.plane(n));
  const startedAt = Date.now();
  await Promise.all(planes.map((p) => p.stop("SIGKILL")));
  await sleep(downS * 1000);
  const liftingAt = Date.now();
  await Promise.all(planes.map((p) => p.start()));
  const restoredAt = Date.now();
  await euReplicasReady(world);
  await sleep(world.timeoutS * 2 * 1000);
  return {
    name: "region cut off",
    what: `both eu planes SIGKILLed for ${downS} s (--plane-timeout ${world.timeoutS} s), then started again`,
    startedAt,
    liftingAt,
    restoredAt,
    endedAt: Date.now(),
    affected: ["eu regional @eu-1", "eu regional @eu-2", "eu standard @us-1"],
    extra: { "planes judged down": judgedDown(world, mark).join(" ") || "none" },
  };
}

/**
 * The control plane and its database down for `outageS` (SQLite: the database is the control process's
 * file, so SIGKILL of the process takes both down). Before: a key is revoked and every plane refuses it.
 * During: that key is tried against every plane (it must stay refused), and uk-1 is SIGKILLed and started
 * again, to serve from its cached snapshot alone. After: the control plane starts again.
 */
export async function controlDown(world: World, outageS: number, beforeS = 0): Promise<FaultRun> {
  const { cluster } = world;
  const created = await cluster.api.post("/v1/api_keys", {
    type: "WORKSPACE_INVOKE",
    name: "revoked-before-outage",
  });
  if (created.status !== 200) throw new Error(`create key: ${JSON.stringify(created.body)}`);
  const revoked = created.body.api_key as string;
  await eventually(async () => {
    for (const t of world.targets) if ((await call(world, t, revoked, "key")).outcome !== "ok") return false;
    return true;
  }, 30_000);
  const deleted = await cluster.api.delete(`/v1/api_keys/${revoked.split(".")[0]}`);
  if (deleted.status !== 200) throw new Error(`revoke key: ${JSON.stringify(deleted.body)}`);
  const revokedAt = Date.now();
  await eventually(async () => {
    for (const t of world.targets) if ((await call(world, t, revoked, "key")).status !== 401) return false;
    return true;
  }, 30_000);
  const revocationMs = Date.now() - revokedAt;

  const sideLoad = new Load(world, { concurrency: 1, pauseMs: 200, key: revoked, idPrefix: "revoked" });
  // "The run before the outage" (issue 15): `beforeS` of the same load, side load included, right before.
  const beforeFrom = Date.now();
  await sleep(beforeS * 1000);
  const startedAt = Date.now();
  await cluster.stopControl("SIGKILL");
  // The planes notice, and serve on.
  const planesDisconnected = await eventually(async () => {
    for (const p of cluster.planes.values()) {
      const res = await request(`http://${p.host}:${p.admin}/healthz`).catch(() => null);
      if (!res) return false;
      const body = (await res.body.json()) as { control_plane?: string };
      if (body.control_plane !== "disconnected") return false;
    }
    return true;
  }, 60_000).then(
    () => Date.now() - startedAt,
    () => -1,
  );
  await sleep(Math.max(0, (outageS * 1000) / 2 - (Date.now() - startedAt)));
  // A plane restarted in the middle of the outage: cached snapshot and artifacts only.
  const uk = cluster.plane("uk-1");
  await uk.stop("SIGKILL");
  const ukStartedAt = Date.now();
  await uk.start();
  const ukTarget = world.targets.find((t) => t.plane === "uk-1")!;
  const ukServesMs = await eventually(
    async () => (await call(world, ukTarget, cluster.api.key!, "uk")).outcome === "ok",
    60_000,
  ).then(
    () => Date.now() - ukStartedAt,
    () => -1,
  );
  await sleep(Math.max(0, startedAt + outageS * 1000 - Date.now()));
  const sideResults = await sideLoad.stop();
  const restoredAt = Date.now();
  await cluster.startControl();
  await sleep(world.timeoutS * 2 * 1000);
  return {
    name: "control plane and database down",
    what: `control plane SIGKILLed with its SQLite database for ${outageS} s; uk-1 SIGKILLed and restarted halfway; a key revoked before`,
    startedAt,
    restoredAt,
    endedAt: Date.now(),
    affected: ["uk regional @uk-1"],
    ...(beforeS > 0 ? { before: [beforeFrom, startedAt] as [number, number] } : {}),
    extra: {
      "revocation reached every plane (ms)": revocationMs,
      "planes saw the control plane gone (ms)": planesDisconnected,
      "uk-1 restarted during the outage served after (ms)": ukServesMs,
      "revoked key answered during the outage": sideResults.length,
      "revoked key accepted during the outage": sideResults.filter((r) => r.outcome === "ok").length,
      "revoked key refused 401": sideResults.filter((r) => r.status === 401).length,
    },
    sideResults,
  };
}

// ——— Faults in the middle of a change, and faults of a plane's own inputs and disk (issue 15 item 1). ———

/** The chaos model with a `load()` that takes `loadMs`: a candidate that is still starting for a while. */
export function slowChaosModel(name: string, loadMs: number): Record<string, string> {
  const files = chaosModel(name);
  files["model/model.js"] = files["model/model.js"]!.replace(
    "async load() {}",
    `async load() { await sleep(${loadMs}); }`,
  );
  return files;
}

async function environmentOf(world: World, model: string, env: string): Promise<Record<string, any>> {
  const r = await world.cluster.api.get(`/v1/models/${model}/environments/${env}`);
  if (r.status !== 200) throw new Error(`get ${env}: ${JSON.stringify(r.body)}`);
  return r.body;
}

/** Replicas of `deploymentId` on every plane now: plane → replica ids (any state). */
async function replicasOf(world: World, deploymentId: string): Promise<Map<string, string[]>> {
  const out = new Map<string, string[]>();
  for (const p of world.cluster.planes.values()) {
    const ids = ((await planeReplicas(p)) ?? [])
      .filter((r) => r.deployment_id === deploymentId)
      .map((r) => r.id);
    if (ids.length > 0) out.set(p.name, ids);
  }
  return out;
}

/** Samples every plane's replicas of some deployments until stopped: the most seen at once, and where. */
class ReplicaSampler {
  readonly most = new Map<string, number>();
  readonly planes = new Map<string, Set<string>>();
  #running = true;
  readonly #loop: Promise<void>;
  constructor(world: World, ids: () => string[]) {
    this.#loop = (async () => {
      while (this.#running) {
        for (const id of ids()) {
          const now = await replicasOf(world, id);
          let n = 0;
          for (const [plane, rs] of now) {
            n += rs.length;
            const set = this.planes.get(id) ?? new Set<string>();
            set.add(plane);
            this.planes.set(id, set);
          }
          this.most.set(id, Math.max(this.most.get(id) ?? 0, n));
        }
        await sleep(150);
      }
    })();
  }
  async stop(): Promise<void> {
    this.#running = false;
    await this.#loop;
  }
}

/**
 * SIGKILL of the control plane in the middle of a promotion: a new deployment of uk's model (its load takes
 * `loadS`) promoted into prod-uk; once its replica is starting on uk-1 the control plane is killed, and
 * started again `downS` later. The promotion must end completed or rolled back (never stuck), the candidate
 * never placed twice nor outside uk, and prod-uk served throughout.
 */
export async function promotionKill(world: World, loadS = 6, downS = 3): Promise<FaultRun> {
  const { cluster } = world;
  const model = world.models.uk;
  const previous = (await environmentOf(world, model, "prod-uk")).current_deployment.id as string;
  const pushed = await pushPackage(cluster, model, await packFiles(slowChaosModel("chaos-uk", loadS * 1000)));
  if (pushed.status !== 200) throw new Error(`push: ${JSON.stringify(pushed.body)}`);
  let candidate: string = pushed.body.deployment.id;
  const sampler = new ReplicaSampler(world, () => [candidate]);
  const promoted = await cluster.api.post(`/v1/models/${model}/environments/prod-uk/promote`, {
    deployment_id: candidate,
  });
  if (promoted.status !== 200) throw new Error(`promote: ${JSON.stringify(promoted.body)}`);
  candidate = promoted.body.id as string;
  // The candidate's replica is starting (not ready yet) on a plane: now.
  await eventually(async () => (await replicasOf(world, candidate)).size > 0, 30_000);
  const stateAtKill = (await environmentOf(world, model, "prod-uk")).in_progress_promotion?.status ?? null;
  const startedAt = Date.now();
  await cluster.stopControl("SIGKILL");
  await sleep(downS * 1000);
  await cluster.startControl();
  const restoredAt = Date.now();
  let settled: Record<string, any> = {};
  const settledMs = await eventually(async () => {
    settled = await environmentOf(world, model, "prod-uk");
    return settled.in_progress_promotion === null;
  }, 60_000).then(
    () => Date.now() - restoredAt,
    () => -1,
  );
  const current = settled.current_deployment?.id as string | undefined;
  const outcome =
    current === candidate ? "completed" : current === previous ? "rolled back" : `other (${current})`;
  // Serving on the deployment the environment ended on, in place.
  const uk = world.targets.find((t) => t.plane === "uk-1")!;
  await eventually(
    async () => (await call(world, uk, cluster.api.key!, "after-promotion")).outcome === "ok",
    30_000,
  );
  await sleep(2_000);
  await sampler.stop();
  const maxReplicas = (settled.autoscaling_settings?.max_replica as number | undefined) ?? 1;
  const restoredFastMs = await restoreFastModel(world, model, "prod-uk", "chaos-uk");
  return {
    name: "control plane SIGKILL mid-promotion",
    what: `a deployment of uk's model (load ${loadS} s) promoted into prod-uk; the control plane SIGKILLed while its replica was starting (promotion ${stateAtKill}), started again ${downS} s later`,
    startedAt,
    restoredAt,
    endedAt: Date.now(),
    affected: [],
    extra: {
      "promotion ended": outcome,
      "settled after restart (ms)": settledMs,
      "candidate replicas at once (most)": sampler.most.get(candidate) ?? 0,
      max_replica: maxReplicas,
      "candidate ran on": [...(sampler.planes.get(candidate) ?? [])].join(" ") || "none",
      "fast model back in prod-uk after (ms)": restoredFastMs,
    },
  };
}

/**
 * Puts `env` back on the world's own model (`chaosModel`, whose load() returns at once) after a fault that
 * promoted a slow-loading one, and waits until it serves: the faults after it start from the same world.
 * Without it every later cold start in uk (the plane SIGKILL's: its replicas die with it) includes that
 * model's 6 s load on top of the sandbox's start, and a request held through the wake can pass HUNG_MS on
 * a loaded machine while the plane does nothing wrong (RELIABILITY.md, "Hung calls that were wakes").
 * Returns the ms from the push until the environment serves on it, or -1.
 */
async function restoreFastModel(world: World, model: string, env: string, name: string): Promise<number> {
  const { cluster } = world;
  const startedAt = Date.now();
  const pushed = await pushPackage(cluster, model, await packFiles(chaosModel(name)));
  if (pushed.status !== 200) throw new Error(`push ${name}: ${JSON.stringify(pushed.body)}`);
  const promoted = await cluster.api.post(`/v1/models/${model}/environments/${env}/promote`, {
    deployment_id: pushed.body.deployment.id,
  });
  if (promoted.status !== 200) throw new Error(`promote ${name}: ${JSON.stringify(promoted.body)}`);
  const id = promoted.body.id as string;
  const settled = await eventually(async () => {
    const e = await environmentOf(world, model, env);
    return e.in_progress_promotion === null && e.current_deployment?.id === id;
  }, 60_000).then(
    () => true,
    () => false,
  );
  if (!settled) return -1;
  return Date.now() - startedAt;
}

/**
 * SIGKILL of the control plane in the middle of a region-restriction migration: a model served in an
 * unrestricted environment `chaos-mig` (its replica wherever the scheduler put it), the group restricted
 * to au (a forced redeploy: a copy started in au, switched to when ready), and the control plane killed
 * while the copy is starting, started again `downS` later. From the moment the restriction was accepted, no
 * regional request of the environment may be processed outside au (clients' `x-meridian-region`, planes'
 * `processed_by`), and after the restart the migration completes.
 */
export async function migrationKill(world: World, loadS = 5, downS = 3): Promise<FaultRun> {
  const { cluster } = world;
  const env = "chaos-mig";
  const created = await createModelFrom(
    cluster,
    "chaos-mig",
    await packFiles(slowChaosModel("chaos-mig", loadS * 1000)),
    { environment_name: "production" },
  );
  if (created.status !== 200) throw new Error(`create chaos-mig: ${JSON.stringify(created.body)}`);
  const model = created.body.model.id as string;
  const made = await cluster.api.post(`/v1/models/${model}/environments`, { name: env });
  if (made.status !== 200) throw new Error(`create ${env}: ${JSON.stringify(made.body)}`);
  const first = await cluster.api.post(`/v1/models/${model}/environments/${env}/promote`, {
    deployment_id: created.body.deployment.id,
  });
  if (first.status !== 200) throw new Error(`promote into ${env}: ${JSON.stringify(first.body)}`);
  await eventually(async () => {
    const e = await environmentOf(world, model, env);
    return e.in_progress_promotion === null && e.current_deployment?.id === first.body.id;
  }, 60_000);
  const before = first.body.id as string;
  const regional = `model-${model}-${env}.${DOMAIN}`;
  // The regional endpoint at every plane but the global ingress (whose answer for a regional name of a
  // restricted environment is a refusal), and the standard one through the global ingress.
  const targets: Target[] = [
    ...["eu-1", "uk-1", "au-1"].map((plane) => ({
      name: `mig regional @${plane}`,
      plane,
      host: regional,
      path: "/predict",
      region: null,
    })),
    {
      name: "mig standard @us-1",
      plane: "us-1",
      host: `model-${model}.${DOMAIN}`,
      path: `/environments/${env}/predict`,
      region: null,
    },
  ];
  await eventually(
    async () => (await call(world, targets[3]!, cluster.api.key!, "mig-warm")).outcome === "ok",
    60_000,
  );
  const load = new Load(world, { concurrency: 2, pauseMs: 20, targets, idPrefix: "mig" });
  await sleep(1_000);
  const mark = Date.now();
  const restricted = await cluster.api.patch(`/v1/environment_groups/${env}`, {
    region_restriction: { region: "au" },
  });
  const acceptedAt = Date.now();
  if (restricted.status !== 200) {
    await load.stop();
    throw new Error(`restrict ${env}: ${JSON.stringify(restricted.body)}`);
  }
  const promotion = (await environmentOf(world, model, env)).in_progress_promotion;
  const copy = (promotion?.candidate_deployment_id ?? promotion?.deployment_id ?? null) as string | null;
  // The copy's replica starting in au: kill now.
  await eventually(async () => {
    const e = await environmentOf(world, model, env);
    const id = e.candidate_deployment?.id as string | undefined;
    return id !== undefined && (await replicasOf(world, id)).size > 0;
  }, 30_000).catch(() => undefined);
  const startedAt = Date.now();
  await cluster.stopControl("SIGKILL");
  await sleep(downS * 1000);
  await cluster.startControl();
  const restoredAt = Date.now();
  let settled: Record<string, any> = {};
  const completedMs = await eventually(async () => {
    settled = await environmentOf(world, model, env);
    return settled.in_progress_promotion === null && settled.current_deployment?.region?.slug === "au";
  }, 60_000).then(
    () => Date.now() - restoredAt,
    () => -1,
  );
  // Served from au at its regional endpoint once the copy is current.
  const au = targets.find((t) => t.plane === "au-1")!;
  const servedMs = await eventually(
    async () => (await call(world, au, cluster.api.key!, "mig-after")).outcome === "ok",
    30_000,
  ).then(
    () => Date.now() - restoredAt,
    () => -1,
  );
  await sleep(2_000);
  const results = await load.stop();
  const after = results.filter((r) => r.startedAt >= acceptedAt);
  const regionalOutside = after.filter(
    (r) => r.target.includes("regional") && r.outcome === "ok" && r.region !== "au",
  );
  const standardOutside = after.filter(
    (r) => r.target.includes("standard") && r.outcome === "ok" && r.region !== "au",
  );
  const audit = auditRecords(cluster).filter(
    (a) =>
      a.model_id === model &&
      a.hostname_form === "regional" &&
      Date.parse(a.time) >= acceptedAt &&
      a.processed_by !== null &&
      cluster.plane(a.processed_by).region !== "au",
  );
  const c = (rs: Result[]) => ({
    ok: rs.filter((r) => r.outcome === "ok").length,
    typed: rs.filter((r) => r.outcome === "typed_error").length,
    untyped: rs.filter((r) => r.outcome === "untyped_error").length,
    hung: rs.filter((r) => r.outcome === "hung").length,
  });
  const current = settled.current_deployment?.id as string | undefined;
  return {
    name: "control plane SIGKILL mid-migration",
    what: `group ${env} (a model served unrestricted) restricted to au; the control plane SIGKILLed while the au copy was starting, started again ${downS} s later`,
    startedAt: mark,
    restoredAt,
    endedAt: Date.now(),
    affected: [],
    extra: {
      "kill after the restriction was accepted (ms)": startedAt - acceptedAt,
      "migration completed after restart (ms)": completedMs,
      "au regional served after restart (ms)": servedMs,
      "environment moved": current !== undefined && current !== before,
      copy: copy ?? "—",
      "regional 2xx outside au after acceptance (clients)": regionalOutside.length,
      "regional processed outside au after acceptance (audit)": audit.length,
      "standard 2xx outside au after acceptance (no guarantee)": standardOutside.length,
      "migration load calls": results.length,
      "migration load 2xx / typed / untyped / hung": Object.values(c(results)).join(" / "),
    },
    sideResults: results,
  };
}

/** A webhook receiver on loopback: every delivery's request id and whether it carried the model's output. */
export class WebhookReceiver {
  readonly deliveries: Array<{ request_id: string; ok: boolean; at: number }> = [];
  readonly #server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      try {
        const body = JSON.parse(Buffer.concat(chunks).toString("utf8")) as {
          request_id: string;
          data: unknown;
          errors: unknown[];
        };
        this.deliveries.push({ request_id: body.request_id, ok: body.errors.length === 0, at: Date.now() });
      } catch {}
      res.writeHead(200).end();
    });
  });
  url = "";
  async start(): Promise<this> {
    await new Promise<void>((ok) => this.#server.listen(0, "127.0.0.1", ok));
    const a = this.#server.address() as AddressInfo;
    this.url = `http://127.0.0.1:${a.port}/hook`;
    return this;
  }
  stop(): Promise<void> {
    return new Promise((ok) => this.#server.close(() => ok()));
  }
}

async function asyncSend(world: World, t: Target, method: "POST" | "GET", path: string, body?: unknown) {
  const p = world.cluster.plane(t.plane);
  const res = await request(`http://${p.host}:${p.port}${path}`, {
    method,
    headers: {
      host: t.host,
      authorization: `Api-Key ${world.cluster.api.key!}`,
      "content-type": "application/json",
    },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    headersTimeout: HUNG_MS,
    bodyTimeout: HUNG_MS,
  });
  const text = await res.body.text();
  let json: any = null;
  try {
    json = JSON.parse(text);
  } catch {}
  return { status: res.statusCode, body: json };
}

/**
 * Async jobs while something dies: `jobs` async requests (each runs `jobMs`) queued at uk's regional
 * endpoint with a webhook, then the control plane (`who: "control"`) or uk-1's agent and ingress (one
 * process, `who: "plane"`) SIGKILLed once the first job runs, started again `downS` later. Every job must
 * end (SUCCEEDED, or FAILED with an error), its webhook delivered, none lost; executions per job come
 * from the replicas' own logs.
 */
export async function asyncKill(
  world: World,
  who: "control" | "plane",
  hooks: WebhookReceiver,
  jobs = 4,
  jobMs = 2_000,
  downS = 3,
): Promise<FaultRun> {
  const { cluster } = world;
  const uk = world.targets.find((t) => t.plane === "uk-1")!;
  const tag = `async-${who}-${Date.now().toString(36)}`;
  const ids: Array<{ input: string; request: string }> = [];
  for (let i = 0; i < jobs; i++) {
    const input = `${tag}-${i}`;
    const r = await asyncSend(world, uk, "POST", "/async_predict", {
      model_input: { id: input, ms: jobMs },
      webhook_endpoint: hooks.url,
      inference_retry_config: { max_attempts: 3, initial_delay_ms: 500 },
    });
    if (r.status !== 201) throw new Error(`async_predict: ${r.status} ${JSON.stringify(r.body)}`);
    ids.push({ input, request: r.body.request_id as string });
  }
  await eventually(async () => executions(cluster, ids[0]!.input).length > 0, 30_000);
  const startedAt = Date.now();
  if (who === "control") {
    await cluster.stopControl("SIGKILL");
    await sleep(downS * 1000);
    await cluster.startControl();
  } else {
    const plane = cluster.plane("uk-1");
    await plane.stop("SIGKILL");
    await sleep(downS * 1000);
    await plane.start();
  }
  const restoredAt = Date.now();
  const statuses = new Map<string, string>();
  const endedMs = await eventually(async () => {
    for (const { request: id } of ids) {
      const r = await asyncSend(world, uk, "GET", `/async_request/${id}`).catch(() => null);
      if (r?.status === 200) statuses.set(id, `${r.body.status}/${r.body.webhook_status}`);
    }
    return ids.every(({ request: id }) => {
      const s = statuses.get(id) ?? "";
      return /^(SUCCEEDED|FAILED|WEBHOOK_FAILED|EXPIRED)\//.test(s) && !s.endsWith("/PENDING");
    });
  }, 90_000).then(
    () => Date.now() - restoredAt,
    () => -1,
  );
  const execs = ids.map(({ input }) => executions(cluster, input).length);
  const delivered = ids.map(({ request: id }) => hooks.deliveries.filter((d) => d.request_id === id).length);
  const byStatus: Record<string, number> = {};
  for (const { request: id } of ids) {
    const s = statuses.get(id) ?? "unknown";
    byStatus[s] = (byStatus[s] ?? 0) + 1;
  }
  return {
    name: who === "control" ? "control plane SIGKILL mid async job" : "plane SIGKILL mid async job",
    what: `${jobs} async jobs of ${jobMs} ms queued at uk with a webhook; ${who === "control" ? "the control plane" : "uk-1 (agent and ingress)"} SIGKILLed while the first ran, started again ${downS} s later`,
    startedAt,
    restoredAt,
    endedAt: Date.now(),
    // uk's regional endpoint either way: its predicts share uk's replica with the 2 s jobs (they queue behind
    // them at predict_concurrency 1, truss's default), so their latency meanwhile is the jobs', not the fault's.
    affected: ["uk regional @uk-1"],
    extra: {
      "jobs ended after restart (ms)": endedMs,
      "jobs by status/webhook": Object.entries(byStatus)
        .map(([k, n]) => `${k}: ${n}`)
        .join(", "),
      "executions per job": execs.join(" "),
      "webhooks per job": delivered.join(" "),
      "jobs lost": ids.filter(({ request: id }) => !statuses.has(id)).length,
    },
  };
}

/**
 * A proxy between one plane and the control plane that passes everything through, except that, while
 * `corrupting`, every snapshot it carries is altered so it fails the plane's check (its region is not the
 * plane's). Loopback only.
 */
export class SnapshotCorrupter {
  corrupting = false;
  corrupted = 0;
  passed = 0;
  url = "";
  readonly #server;
  constructor(readonly target: string) {
    this.#server = createServer((req, res) => {
      void (async () => {
        try {
          const chunks: Buffer[] = [];
          for await (const c of req) chunks.push(c as Buffer);
          const headers = { ...req.headers };
          delete headers.host;
          delete headers["content-length"];
          const up = await request(`${this.target}${req.url}`, {
            method: req.method as "GET",
            headers,
            ...(chunks.length ? { body: Buffer.concat(chunks) } : {}),
            headersTimeout: 60_000,
            bodyTimeout: 60_000,
          });
          let body = Buffer.from(await up.body.arrayBuffer());
          const out = { ...up.headers } as Record<string, string | string[]>;
          delete out["content-length"];
          delete out["transfer-encoding"];
          delete out.connection;
          if (req.url?.includes("/snapshot") && up.statusCode === 200) {
            if (this.corrupting) {
              const s = JSON.parse(body.toString("utf8")) as { plane: { region: string } };
              s.plane.region = "nowhere";
              body = Buffer.from(JSON.stringify(s));
              this.corrupted++;
            } else {
              this.passed++;
            }
          }
          res.writeHead(up.statusCode, { ...out, "content-length": String(body.length) }).end(body);
        } catch {
          if (!res.headersSent) res.writeHead(502).end();
          else res.destroy();
        }
      })();
    });
  }
  async start(): Promise<this> {
    await new Promise<void>((ok) => this.#server.listen(0, "127.0.0.1", ok));
    this.url = `http://127.0.0.1:${(this.#server.address() as AddressInfo).port}`;
    return this;
  }
  stop(): Promise<void> {
    this.#server.closeAllConnections();
    return new Promise((ok) => this.#server.close(() => ok()));
  }
}

/** The plane's operator `/healthz` and `/metrics` text, or null while it does not answer. */
async function planeHealth(world: World, plane: string): Promise<Record<string, any> | null> {
  const p = world.cluster.plane(plane);
  const res = await request(`http://${p.host}:${p.admin}/healthz`).catch(() => null);
  if (!res) return null;
  return (await res.body.json().catch(() => null)) as Record<string, any> | null;
}

/**
 * A snapshot that fails validation pushed to au-1: its control URL is pointed at a SnapshotCorrupter (au-1
 * restarted once so it polls through it), then a new API key is made (a new snapshot revision for every
 * plane) while the proxy corrupts au-1's snapshots for `badS`. au-1 must refuse them, keep serving its
 * last good snapshot (the old key works, the new one is not known there yet), say so in its log and
 * health, and take the next good snapshot once the proxy stops corrupting.
 */
export async function badSnapshot(
  world: World,
  proxy: SnapshotCorrupter,
  auArgs: string[],
  badS = 8,
): Promise<FaultRun> {
  const { cluster } = world;
  const au = cluster.plane("au-1");
  const auTarget = world.targets.find((t) => t.plane === "au-1")!;
  if (!auArgs.includes(proxy.url)) {
    auArgs.push("--control-url", proxy.url);
    await au.stop();
    await au.start();
    await eventually(
      async () => (await call(world, auTarget, cluster.api.key!, "proxy-warm")).outcome === "ok",
      60_000,
    );
    await eventually(async () => (await planeHealth(world, "au-1"))?.control_plane === "connected", 30_000);
  }
  const refusals = () => au.process!.output.filter((l) => l.includes("snapshot rejected")).length;
  const mark = refusals();
  const startedAt = Date.now();
  proxy.corrupting = true;
  const created = await cluster.api.post("/v1/api_keys", {
    type: "WORKSPACE_INVOKE",
    name: "after-bad-snapshot",
  });
  if (created.status !== 200) throw new Error(`create key: ${JSON.stringify(created.body)}`);
  const fresh = created.body.api_key as string;
  // Everyone else knows the new key; au-1, refusing the snapshot that carries it, does not.
  const uk = world.targets.find((t) => t.plane === "uk-1")!;
  await eventually(async () => (await call(world, uk, fresh, "fresh")).outcome === "ok", 30_000);
  await eventually(async () => proxy.corrupted > 0, 30_000);
  let freshOnAuDuring = 0;
  let oldOnAuDuring = 0;
  let tries = 0;
  const until = startedAt + badS * 1000;
  let health: Record<string, any> | null = null;
  while (Date.now() < until) {
    tries++;
    if ((await call(world, auTarget, fresh, "fresh-au")).outcome === "ok") freshOnAuDuring++;
    if ((await call(world, auTarget, cluster.api.key!, "old-au")).outcome === "ok") oldOnAuDuring++;
    health = (await planeHealth(world, "au-1")) ?? health;
    await sleep(200);
  }
  const refusedLogs = refusals() - mark;
  const corrupted = proxy.corrupted;
  proxy.corrupting = false;
  const restoredAt = Date.now();
  const tookMs = await eventually(
    async () => (await call(world, auTarget, fresh, "fresh-au-after")).outcome === "ok",
    30_000,
  ).then(
    () => Date.now() - restoredAt,
    () => -1,
  );
  await sleep(1_000);
  return {
    name: "snapshot that fails validation",
    what: `au-1's snapshots altered in transit for ${badS} s (its region changed) while a new API key made a new revision; then passed through unaltered`,
    startedAt,
    restoredAt,
    endedAt: Date.now(),
    affected: [],
    extra: {
      "bad snapshots sent to au-1": corrupted,
      "refusals in au-1's log": refusedLogs,
      "au-1 health during": String(health?.control_plane ?? "—"),
      "old key served on au-1 during": `${oldOnAuDuring}/${tries}`,
      "new key accepted on au-1 during": `${freshOnAuDuring}/${tries}`,
      "next good snapshot taken after (ms)": tookMs,
    },
  };
}

/**
 * Disk full on eu-2's audit directory: eu-2 stopped, a `sizeKiB` tmpfs mounted at its audit directory (its
 * files copied in), eu-2 started on it, the tmpfs filled to the last byte for `fullS` under load, then the
 * filler removed. Afterwards the plane is stopped, the trail copied back to the real directory and the
 * tmpfs unmounted (always), and the chain checked. Counted: what eu-2's clients got while the disk was
 * full, the plane's audit write failures, and whether every request it answered during the fault has its
 * record once space came back.
 */
export async function auditDiskFull(world: World, fullS = 8, sizeKiB = 1024): Promise<FaultRun> {
  const plane = world.cluster.plane("eu-2");
  const dir = join(plane.dataDir, "audit");
  const saved = join(world.cluster.dir, "eu-2-audit-saved");
  const filler = join(dir, "filler");
  let mounted = false;
  let startedAt = Date.now();
  let restoredAt = startedAt;
  let failures = 0;
  const target = world.targets.find((t) => t.plane === "eu-2")!;
  const probe = new Load(world, { concurrency: 1, pauseMs: 50, targets: [target], idPrefix: "diskfull" });
  let probeResults: Result[] = [];
  try {
    await plane.stop();
    rmSync(saved, { recursive: true, force: true });
    cpSync(dir, saved, { recursive: true });
    // Room for the trail so far, and `sizeKiB` more: what the filler then takes.
    const trailKiB = Math.ceil(
      readdirSync(saved).reduce((n, f) => n + statSync(join(saved, f)).size, 0) / 1024,
    );
    run("mount", ["-t", "tmpfs", "-o", `size=${trailKiB + sizeKiB + 64}k,mode=0700`, "tmpfs", dir]);
    mounted = true;
    cpSync(saved, dir, { recursive: true });
    await plane.start();
    await eventually(
      async () => (await call(world, target, world.cluster.api.key!, "diskfull-warm")).outcome === "ok",
      60_000,
    );
    const mark = plane.process!.output.filter((l) => l.includes("audit write failed")).length;
    startedAt = Date.now();
    // Fill to the last byte (dd stops at ENOSPC, which is the point).
    spawnSync("dd", ["if=/dev/zero", `of=${filler}`, "bs=4k"], { timeout: 30_000 });
    await sleep(fullS * 1000);
    failures = plane.process!.output.filter((l) => l.includes("audit write failed")).length - mark;
    rmSync(filler, { force: true });
    restoredAt = Date.now();
    await sleep(2_000);
    probeResults = await probe.stop();
    await plane.stop();
    rmSync(saved, { recursive: true, force: true });
    cpSync(dir, saved, { recursive: true });
  } finally {
    if (!probeResults.length) probeResults = await probe.stop();
    if (plane.process) await plane.stop();
    if (mounted) {
      rmSync(filler, { force: true });
      // A busy mount (a process still holding a file there) is detached lazily: never left mounted.
      if (spawnSync("umount", [dir], { timeout: 30_000 }).status !== 0) {
        spawnSync("umount", ["-l", dir], { timeout: 30_000 });
      }
      // The trail as it was when the plane stopped on the tmpfs (or before it, if the fault failed early).
      rmSync(dir, { recursive: true, force: true });
      cpSync(saved, dir, { recursive: true });
    }
    await plane.start();
  }
  const check = await checkAuditDirectory(dir);
  const during = probeResults.filter((r) => r.startedAt >= startedAt && r.startedAt < restoredAt);
  const answeredHere = probeResults.filter((r) => r.status !== 0 && r.startedAt >= startedAt);
  const recorded = new Set(
    auditRecords(world.cluster)
      .filter((a) => a.plane === "eu-2")
      .map((a) => a.request_id),
  );
  // The audit's request_id is the client's x-request-id when sent, else its own: match by count instead.
  const windowRecords = auditRecords(world.cluster).filter(
    (a) => a.plane === "eu-2" && Date.parse(a.time) >= startedAt && Date.parse(a.time) < restoredAt + 2_000,
  ).length;
  await eventually(
    async () => (await call(world, target, world.cluster.api.key!, "diskfull-after")).outcome === "ok",
    60_000,
  );
  // The cleanup restarted eu-2: the steady load's clients, which call every endpoint in turn, reach it again
  // inside the window, so its recovery is measured rather than cut off.
  await sleep(3_000);
  return {
    name: "audit disk full",
    what: `eu-2's audit directory on a tmpfs (its trail and ${sizeKiB} KiB more), filled to the last byte for ${fullS} s under load, then freed`,
    startedAt,
    restoredAt,
    endedAt: Date.now(),
    affected: ["eu regional @eu-2"],
    extra: {
      "eu-2 calls while full": during.length,
      "2xx while full": during.filter((r) => r.outcome === "ok").length,
      "typed while full": during.filter((r) => r.outcome === "typed_error").length,
      "audit write failures logged": failures,
      "eu-2 answers from the start of the fault": answeredHere.length,
      "eu-2 audit records in the window": windowRecords,
      "records on eu-2 in all": recorded.size,
      "audit chain intact after": check.ok,
      "torn tails": check.torn.length,
    },
    sideResults: probeResults,
  };
}

interface ApiAnswer {
  at: number;
  kind: "read" | "write";
  status: number;
  code: string | null;
  ms: number;
  /** A write's key name: present afterwards only if the write was applied. */
  name: string;
}

/**
 * Calls the management API every 250 ms until stopped, each of `kinds` in turn: a read (`GET /v1/models`)
 * and a write (`POST /v1/api_keys`, a key named after the call). Every answer is kept with its status and
 * `error_code`; a call with no answer within HUNG_MS is kept with the client's error code.
 */
function probeApi(
  world: World,
  kinds: ReadonlyArray<"read" | "write">,
): { answers: ApiAnswer[]; stop(): Promise<void> } {
  const { cluster } = world;
  const headers = { authorization: `Api-Key ${cluster.api.key!}`, "content-type": "application/json" };
  const answers: ApiAnswer[] = [];
  let probing = true;
  let n = 0;
  const running = (async () => {
    while (probing) {
      for (const kind of kinds) {
        const name = `chaos-probe-${++n}`;
        const t0 = performance.now();
        const at = Date.now();
        try {
          const r = await request(`${cluster.controlUrl}/v1/${kind === "read" ? "models" : "api_keys"}`, {
            headers,
            headersTimeout: HUNG_MS,
            bodyTimeout: HUNG_MS,
            ...(kind === "write"
              ? { method: "POST", body: JSON.stringify({ type: "WORKSPACE_INVOKE", name }) }
              : {}),
          });
          const text = await r.body.text();
          let code: string | null = null;
          try {
            code = (JSON.parse(text) as { error_code?: string }).error_code ?? null;
          } catch {}
          answers.push({ at, kind, status: r.statusCode, code, ms: performance.now() - t0, name });
        } catch (err) {
          const code = (err as { code?: string }).code ?? String(err);
          answers.push({ at, kind, status: 0, code, ms: performance.now() - t0, name });
        }
      }
      await sleep(250);
    }
  })();
  return {
    answers,
    async stop() {
      probing = false;
      await running;
    },
  };
}

/** `200: 12; 503 store_unavailable: 40`: the answers by status and error code. */
function tallyAnswers(answers: readonly ApiAnswer[]): string {
  const codes: Record<string, number> = {};
  for (const a of answers) {
    const k = `${a.status} ${a.code ?? ""}`.trim();
    codes[k] = (codes[k] ?? 0) + 1;
  }
  return Object.entries(codes)
    .map(([k, v]) => `${k}: ${v}`)
    .join("; ");
}

/**
 * The control plane's database stopped: PostgreSQL (`pg`, the harness's own cluster the control plane runs
 * on) stopped with `pg_ctl stop -m fast` for `downS` under load, then started. Serving must hold (the
 * planes' cached snapshots), the management API must answer typed errors meanwhile (never hang or crash),
 * no plane be judged down, and the API answer again once the database is back.
 */
export async function databaseStop(world: World, pg: PrivatePostgres, downS = 10): Promise<FaultRun> {
  const mark = world.cluster.control.output.length;
  const probe = probeApi(world, ["read"]);
  const api = probe.answers;
  await sleep(1_000);
  const startedAt = Date.now();
  pg.stop();
  await sleep(downS * 1000);
  pg.start();
  const restoredAt = Date.now();
  const recovered = await eventually(
    async () => api.some((a) => a.at > restoredAt && a.status === 200),
    60_000,
  ).then(
    () => (api.find((a) => a.at > restoredAt && a.status === 200)?.at ?? restoredAt) - restoredAt,
    () => -1,
  );
  await sleep(world.timeoutS * 2 * 1000);
  await probe.stop();
  const during = api.filter((a) => a.at >= startedAt && a.at < restoredAt);
  return {
    name: "control plane's database stopped",
    what: `the control plane's PostgreSQL (the harness's own cluster) stopped with pg_ctl stop -m fast for ${downS} s, then started`,
    startedAt,
    restoredAt,
    endedAt: Date.now(),
    affected: [],
    extra: {
      "management API calls during": during.length,
      "management API answers during": tallyAnswers(during),
      "management API slowest during (ms)": Math.round(Math.max(0, ...during.map((a) => a.ms))),
      "management API answered 200 again after (ms)": recovered,
      "control plane still running":
        world.cluster.control.child.exitCode === null && world.cluster.control.child.signalCode === null,
      "planes judged down": judgedDown(world, mark).join(" ") || "none",
    },
    sideResults: [],
  };
}

/**
 * The control plane's SQLite database made unwritable under it: its file and WAL made immutable
 * (`chattr +i`, which binds root and the descriptors already open; file modes do not, and a read-only
 * remount is refused while the file is open for writing) for `downS` under load, then writable again. Not
 * the `-shm` file: SQLite maps it, and a write to a mapped page of an immutable file is a SIGBUS. Serving
 * must hold (the planes' snapshots), the management API must go on reading and answer every write 503
 * `store_unavailable` meanwhile, no write may be half done (each refused write's key absent afterwards,
 * each accepted one present), no plane be judged down, and writes succeed again once the file is writable.
 */
export async function sqliteUnwritable(world: World, downS = 10): Promise<FaultRun> {
  const { cluster } = world;
  const mark = cluster.control.output.length;
  const db = join(cluster.dir, "control", "meridian.db");
  const files = [db, `${db}-wal`].filter((f) => existsSync(f));
  if (!files.includes(db)) throw new Error(`no SQLite database at ${db}`);
  const probe = probeApi(world, ["read", "write"]);
  const answers = probe.answers;
  await sleep(1_000);
  const startedAt = Date.now();
  const chattr = (flag: "+i" | "-i") => {
    const r = spawnSync("chattr", [flag, ...files], { encoding: "utf8" });
    if (r.status !== 0) throw new Error(`chattr ${flag}: ${r.stderr || r.error}`);
  };
  let restoredAt: number;
  chattr("+i");
  try {
    await sleep(downS * 1000);
  } finally {
    chattr("-i");
    restoredAt = Date.now();
  }
  const recovered = await eventually(
    async () => answers.some((a) => a.at > restoredAt && a.kind === "write" && a.status === 200),
    60_000,
  ).then(
    () =>
      (answers.find((a) => a.at > restoredAt && a.kind === "write" && a.status === 200)?.at ?? restoredAt) -
      restoredAt,
    () => -1,
  );
  await sleep(world.timeoutS * 2 * 1000);
  await probe.stop();
  // Nothing half done: the keys of refused writes are not there, those of accepted ones are.
  const listed = await cluster.api.get("/v1/api_keys");
  if (listed.status !== 200) throw new Error(`list keys: ${JSON.stringify(listed.body)}`);
  const names = new Set((listed.body.keys as Array<{ name: string }>).map((k) => k.name));
  const writes = answers.filter((a) => a.kind === "write");
  const lost = writes.filter((a) => a.status === 200 && !names.has(a.name)).length;
  const halfDone = writes.filter((a) => a.status !== 200 && names.has(a.name)).length;
  const during = answers.filter((a) => a.at >= startedAt && a.at < restoredAt);
  const tally = (kind: "read" | "write") => tallyAnswers(during.filter((x) => x.kind === kind));
  return {
    name: "control plane's SQLite made unwritable",
    what: `the control plane's SQLite file and WAL made immutable (chattr +i) for ${downS} s, then writable again`,
    startedAt,
    restoredAt,
    endedAt: Date.now(),
    affected: [],
    extra: {
      "management API reads during": tally("read"),
      "management API writes during": tally("write"),
      "management API slowest during (ms)": Math.round(Math.max(0, ...during.map((a) => a.ms))),
      "writes answered 200 but lost": lost,
      "writes refused but applied": halfDone,
      "management API write answered 200 again after (ms)": recovered,
      "control plane still running":
        cluster.control.child.exitCode === null && cluster.control.child.signalCode === null,
      "planes judged down": judgedDown(world, mark).join(" ") || "none",
    },
    sideResults: [],
  };
}

export const LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/**
 * Movable wall clocks (libfaketime, Debian's `faketime`): each process started with `env(name)` reads its
 * offset from its own file at every clock read (FAKETIME_NO_CACHE), so `set(name, s)` jumps that running
 * process's wall clock by s seconds from true time. Monotonic clocks (Node's timers, performance.now) are
 * left alone: a jump of the wall clock is what NTP, a VM resume or an operator does.
 */
export class Clocks {
  readonly dir = mkdtempSync(join(tmpdir(), "meridian-chaos-clock-"));
  #file(name: string): string {
    return join(this.dir, `${name}.offset`);
  }
  env(name: string): Record<string, string> {
    writeFileSync(this.#file(name), "+0\n");
    return {
      LD_PRELOAD: LIBFAKETIME,
      FAKETIME_TIMESTAMP_FILE: this.#file(name),
      FAKETIME_NO_CACHE: "1",
      FAKETIME_DONT_FAKE_MONOTONIC: "1",
    };
  }
  set(name: string, offsetS: number): void {
    // Written aside and renamed: the process reads the file at every clock read and must never see it torn.
    const tmp = `${this.#file(name)}.tmp`;
    writeFileSync(tmp, `${offsetS >= 0 ? "+" : ""}${offsetS}\n`);
    renameSync(tmp, this.#file(name));
  }
  remove(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** A process's wall clock as it reads it: the `date` field of an HTTP answer from it, in unix ms. */
async function clockOf(url: string): Promise<number | null> {
  const r = await request(url).catch(() => null);
  if (!r) return null;
  await r.body.dump();
  const d = r.headers.date;
  return typeof d === "string" ? Date.parse(d) : null;
}

/**
 * Clock jumps: the control plane's wall clock `jumpS` ahead for `holdS`, then back (a backward jump of the
 * same size); eu-1's `jumpS` behind, then back; us-1's (the global ingress, which signs the hops to eu)
 * `jumpS` ahead, then back. Judged by the fail-static rule (`src/core/fail-static.ts`): no plane may be
 * judged down because a clock moved; the load's answers in each phase are counted by code.
 */
export async function clockJumps(
  world: World,
  clocks: Clocks,
  results: readonly Result[],
  jumpS = 300,
  holdS = 6,
): Promise<FaultRun> {
  const mark = world.cluster.control.output.length;
  const phases: Array<{ name: string; from: number; to: number; skew: number | null }> = [];
  const startedAt = Date.now();
  const phase = async (name: string, proc: string, offset: number, probe: string) => {
    const from = Date.now();
    clocks.set(proc, offset);
    // The process's clock as its answers' Date header says, read a few times: the largest offset seen.
    let skew: number | null = null;
    for (let i = 0; i < 4; i++) {
      await sleep(holdS * 250);
      const seen = await clockOf(probe);
      const s = seen === null ? null : Math.round((seen - Date.now()) / 1000);
      if (s !== null && (skew === null || Math.abs(s) > Math.abs(skew))) skew = s;
    }
    phases.push({ name, from, to: Date.now(), skew });
  };
  const controlProbe = `${world.cluster.controlUrl}/healthz`;
  const planeProbe = (n: string) => {
    const p = world.cluster.plane(n);
    return `http://${p.host}:${p.admin}/healthz`;
  };
  await phase(`control +${jumpS} s`, "control", jumpS, controlProbe);
  await phase(`control back −${jumpS} s`, "control", 0, controlProbe);
  await phase(`eu-1 −${jumpS} s`, "eu-1", -jumpS, planeProbe("eu-1"));
  await phase(`eu-1 back +${jumpS} s`, "eu-1", 0, planeProbe("eu-1"));
  await phase(`us-1 +${jumpS} s`, "us-1", jumpS, planeProbe("us-1"));
  await phase(`us-1 back −${jumpS} s`, "us-1", 0, planeProbe("us-1"));
  const restoredAt = Date.now();
  await sleep(world.timeoutS * 2 * 1000);
  const extra: Record<string, string | number | boolean> = {
    "planes judged down": judgedDown(world, mark).join(" ") || "none",
    "control plane still running":
      world.cluster.control.child.exitCode === null && world.cluster.control.child.signalCode === null,
  };
  for (const p of phases) {
    const rs = results.filter((r) => r.startedAt >= p.from && r.startedAt < p.to);
    const bad: Record<string, number> = {};
    for (const r of rs) {
      if (r.outcome === "ok") continue;
      const k = `${r.target}: ${r.status} ${r.errorCode ?? r.outcome}`;
      bad[k] = (bad[k] ?? 0) + 1;
    }
    extra[`${p.name} (clock read ${p.skew ?? "?"} s off)`] =
      `${rs.filter((r) => r.outcome === "ok").length}/${rs.length} 2xx${
        Object.keys(bad).length
          ? `; ${Object.entries(bad)
              .map(([k, n]) => `${k} ×${n}`)
              .join(", ")}`
          : ""
      }`;
  }
  return {
    name: "clock jumps",
    what: `wall clocks moved by libfaketime: the control plane's ${jumpS} s ahead then back, eu-1's ${jumpS} s behind then back, us-1's ${jumpS} s ahead then back, ${holdS} s each`,
    startedAt,
    restoredAt,
    endedAt: Date.now(),
    affected: ["eu regional @eu-1", "eu standard @us-1", "us standard @us-1"],
    extra,
  };
}
