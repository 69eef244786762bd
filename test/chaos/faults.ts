// The faults the harness injects, each against a running World under load. A fault returns when it is over
// and the installation has recovered (or the wait for it ran out); the runner counts the load's results in
// its window. Times are wall-clock ms.

import { request } from "undici";
import { eventually } from "../support/cluster.ts";
import { planeReplicas } from "../support/planes.ts";
import { call, Load, type Result, replicaProcess, sleep, type World } from "./harness.ts";

export interface FaultRun {
  name: string;
  /** What was done, in a sentence, for RELIABILITY.md. */
  what: string;
  startedAt: number;
  /** When the fault was lifted (the process restarted, resumed): recovery is counted from here. */
  restoredAt: number;
  endedAt: number;
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
  for (let i = 0; i < times; i++) {
    const order = i % 2 === 0 ? ["eu-1", "eu-2"] : ["eu-2", "eu-1"];
    let pid: number | null = null;
    for (const plane of order) {
      pid = await replicaProcess(world, plane, world.deployments.eu);
      if (pid !== null) break;
    }
    if (pid !== null) {
      process.kill(pid, "SIGKILL");
      killed++;
      restoredAt = Date.now();
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
    extra: { kills: killed },
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
  await plane.start();
  const restoredAt = Date.now();
  await euReplicasReady(world);
  await sleep(world.timeoutS * 2 * 1000);
  return {
    name: "plane SIGKILL and restart",
    what: `eu-1 (agent and ingress) SIGKILLed, started again ${downS} s later; eu-2 stays up`,
    startedAt,
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
  await Promise.all(planes.map((p) => p.start()));
  const restoredAt = Date.now();
  await euReplicasReady(world);
  await sleep(world.timeoutS * 2 * 1000);
  return {
    name: "region cut off",
    what: `both eu planes SIGKILLed for ${downS} s (--plane-timeout ${world.timeoutS} s), then started again`,
    startedAt,
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
export async function controlDown(world: World, outageS: number): Promise<FaultRun> {
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
