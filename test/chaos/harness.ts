// The fault harness (issue 15): real `meridian` processes on loopback — a control plane and planes in four
// regions — under steady load while faults are injected, and the counts from both sides: what the clients
// saw (answered, failed with a typed error, refused at connect, hung, served out of region) and what the
// planes recorded (their audit trails, and the replicas' own logs of every execution, for duplicates).
// Used by the CI slices in this directory and by `npm run chaos` (`run.ts`), which writes RELIABILITY.md.

import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { request } from "undici";
import { type Cluster, DOMAIN, eventually, startCluster } from "../support/cluster.ts";
import { createModelFrom, packFiles, planeReplicas, replicaPid } from "../support/planes.ts";
import { chaosModel, EXEC, executions } from "./support.ts";

/** A client that has no answer this long after sending counts the request as hung. */
export const HUNG_MS = 10_000;

export interface Target {
  name: string;
  /** The plane whose ingress the client sends to. */
  plane: string;
  host: string;
  path: string;
  /** The region that must process it (a restricted environment), or null. */
  region: string | null;
}

export type Outcome = "ok" | "typed_error" | "untyped_error" | "connect_error" | "hung";

export interface Result {
  target: string;
  id: string;
  startedAt: number;
  latencyMs: number;
  outcome: Outcome;
  status: number;
  errorCode: string | null;
  region: string | null;
  /** The plane that answered (its proof header, x-meridian-plane): for a refusal, the plane that refused. */
  plane: string | null;
  /** The planes the request went through (x-meridian-route, as the answering plane wrote it). */
  route: string | null;
  /** A typed error's message (the body's `error`). */
  message: string | null;
  key: "valid" | "revoked";
}

export interface World {
  cluster: Cluster;
  models: { eu: string; uk: string; au: string; plain: string };
  deployments: { eu: string; uk: string; au: string; plain: string };
  targets: Target[];
  timeoutS: number;
}

export interface WorldOptions {
  timeoutS?: number;
  /**
   * Extra flags per plane, by name. The arrays are read at every start of the plane, so a fault may add to
   * one (a second `--control-url`, which wins) before it restarts that plane.
   */
  planeArgs?: Record<string, string[]>;
  /** Flags for every plane (after `planeArgs`'). */
  allPlaneArgs?: string[];
  /** Extra environment per plane, by name (a libfaketime clock file, for one). */
  planeEnv?: Record<string, Record<string, string>>;
  /** The control plane on this PostgreSQL instead of its own SQLite file. */
  databaseUrl?: string;
}

/** Control plane and planes in us (the global ingress), eu (two planes), uk and au; a model in each. */
export async function startWorld(options: WorldOptions = {}): Promise<World> {
  const timeoutS = options.timeoutS ?? 3;
  const args = (name: string) => {
    const mine = options.planeArgs?.[name] ?? [];
    if (options.allPlaneArgs) mine.push(...options.allPlaneArgs);
    return mine;
  };
  const env = (name: string) => options.planeEnv?.[name] ?? {};
  const cluster = await startCluster({
    planes: [
      { name: "us-1", region: "us", global: true, args: args("us-1"), env: env("us-1") },
      { name: "eu-1", region: "eu", args: args("eu-1"), env: env("eu-1") },
      { name: "eu-2", region: "eu", args: args("eu-2"), env: env("eu-2") },
      { name: "uk-1", region: "uk", args: args("uk-1"), env: env("uk-1") },
      { name: "au-1", region: "au", args: args("au-1"), env: env("au-1") },
    ],
    controlArgs: ["--plane-timeout", String(timeoutS)],
    ...(options.databaseUrl ? { databaseUrl: options.databaseUrl } : {}),
  });
  try {
    const api = cluster.api;
    const created: Record<string, { model: string; deployment: string }> = {};
    for (const region of ["eu", "uk", "au"]) {
      const r = await api.patch(`/v1/environment_groups/prod-${region}`, { region_restriction: { region } });
      if (r.status !== 200) throw new Error(`restrict prod-${region}: ${JSON.stringify(r.body)}`);
    }
    for (const [key, env] of [
      ["eu", "prod-eu"],
      ["uk", "prod-uk"],
      ["au", "prod-au"],
      ["plain", "production"],
    ] as const) {
      const name = `chaos-${key}`;
      const r = await createModelFrom(cluster, name, await packFiles(chaosModel(name)), {
        environment_name: env,
      });
      if (r.status !== 200) throw new Error(`create ${name}: ${JSON.stringify(r.body)}`);
      created[key] = { model: r.body.model.id, deployment: r.body.deployment.id };
    }
    const m = (k: string) => created[k]!.model;
    // eu has two planes and two replicas, one on each (what an operator does for a region that must survive
    // a replica's or a plane's loss); uk and au one plane and one replica each.
    const scaled = await api.patch(`/v1/models/${m("eu")}/environments/prod-eu`, {
      autoscaling_settings: { min_replica: 2, max_replica: 2 },
    });
    if (scaled.status !== 200) throw new Error(`scale prod-eu: ${JSON.stringify(scaled.body)}`);
    const regional = (k: string) => `model-${m(k)}-prod-${k}.${DOMAIN}`;
    const targets: Target[] = [
      { name: "eu regional @eu-1", plane: "eu-1", host: regional("eu"), path: "/predict", region: "eu" },
      { name: "eu regional @eu-2", plane: "eu-2", host: regional("eu"), path: "/predict", region: "eu" },
      {
        name: "eu standard @us-1",
        plane: "us-1",
        host: `model-${m("eu")}.${DOMAIN}`,
        path: "/environments/prod-eu/predict",
        region: "eu",
      },
      { name: "uk regional @uk-1", plane: "uk-1", host: regional("uk"), path: "/predict", region: "uk" },
      { name: "au regional @au-1", plane: "au-1", host: regional("au"), path: "/predict", region: "au" },
      {
        name: "us standard @us-1",
        plane: "us-1",
        host: `model-${m("plain")}.${DOMAIN}`,
        path: "/production/predict",
        region: null,
      },
    ];
    const world: World = {
      cluster,
      models: { eu: m("eu"), uk: m("uk"), au: m("au"), plain: m("plain") },
      deployments: {
        eu: created["eu"]!.deployment,
        uk: created["uk"]!.deployment,
        au: created["au"]!.deployment,
        plain: created["plain"]!.deployment,
      },
      targets,
      timeoutS,
    };
    await eventually(async () => {
      for (const plane of ["eu-1", "eu-2"]) {
        if ((await replicaProcess(world, plane, world.deployments.eu)) === null) return false;
      }
      return true;
    }, 60_000);
    for (const t of targets) {
      await eventually(
        async () => (await call(world, t, cluster.api.key!, `warm-${t.plane}`)).outcome === "ok",
        60_000,
      );
    }
    return world;
  } catch (err) {
    await cluster.stop();
    throw err;
  }
}

let sequence = 0;

/** One inference call, as a client: never waits more than HUNG_MS for its answer. */
export async function call(world: World, t: Target, key: string, idPrefix = "req"): Promise<Result> {
  const p = world.cluster.plane(t.plane);
  const id = `${idPrefix}-${process.pid}-${++sequence}`;
  const startedAt = Date.now();
  const started = performance.now();
  const base = {
    target: t.name,
    id,
    startedAt,
    key: key === world.cluster.api.key ? ("valid" as const) : ("revoked" as const),
  };
  try {
    const res = await request(`http://${p.host}:${p.port}${t.path}`, {
      method: "POST",
      // The call's id is the request's id too (the planes take a client's X-Request-ID): their audit
      // records of it can be found, for a call that hung (`explainHung`).
      headers: {
        host: t.host,
        authorization: `Api-Key ${key}`,
        "content-type": "application/json",
        "x-request-id": id,
      },
      body: JSON.stringify({ id }),
      headersTimeout: HUNG_MS,
      bodyTimeout: HUNG_MS,
    });
    const text = await res.body.text();
    let errorCode: string | null = null;
    let message: string | null = null;
    if (res.statusCode >= 400) {
      try {
        const body = JSON.parse(text) as { error_code?: string; error?: string };
        errorCode = body.error_code ?? null;
        message = body.error ?? null;
      } catch {}
    }
    const header = (name: string) => {
      const v = res.headers[name];
      return typeof v === "string" ? v : null;
    };
    return {
      ...base,
      latencyMs: performance.now() - started,
      outcome: res.statusCode < 400 ? "ok" : errorCode !== null ? "typed_error" : "untyped_error",
      status: res.statusCode,
      errorCode,
      region: header("x-meridian-region"),
      plane: header("x-meridian-plane"),
      route: header("x-meridian-route"),
      message,
    };
  } catch (err) {
    const code = (err as { code?: string }).code ?? "";
    const hung = code === "UND_ERR_HEADERS_TIMEOUT" || code === "UND_ERR_BODY_TIMEOUT";
    return {
      ...base,
      latencyMs: performance.now() - started,
      outcome: hung ? "hung" : "connect_error",
      status: 0,
      errorCode: code || String(err),
      region: null,
      plane: null,
      route: null,
      message: null,
    };
  }
}

/** Steady load: `concurrency` clients, each sending to the targets in turn with `pauseMs` between calls. */
export class Load {
  readonly results: Result[] = [];
  #running = true;
  readonly #loops: Promise<void>[];

  constructor(
    world: World,
    options: {
      concurrency?: number;
      pauseMs?: number;
      targets?: Target[];
      key?: string;
      idPrefix?: string;
    } = {},
  ) {
    const targets = options.targets ?? world.targets;
    const key = options.key ?? world.cluster.api.key!;
    this.#loops = Array.from({ length: options.concurrency ?? 3 }, async (_, i) => {
      let n = i;
      while (this.#running) {
        const t = targets[n++ % targets.length]!;
        this.results.push(await call(world, t, key, options.idPrefix));
        await new Promise((r) => setTimeout(r, options.pauseMs ?? 20));
      }
    });
  }

  async stop(): Promise<Result[]> {
    this.#running = false;
    await Promise.all(this.#loops);
    return this.results;
  }
}

export interface Counts {
  sent: number;
  ok: number;
  typed_error: number;
  untyped_error: number;
  connect_error: number;
  hung: number;
  /** Answered 2xx from another region than the restricted environment's. */
  out_of_region: number;
  rate_per_s: number;
  p50_ms: number;
  p99_ms: number;
  /** Typed errors by code. */
  codes: Record<string, number>;
}

export function percentile(values: number[], p: number): number {
  if (values.length === 0) return 0;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

export function count(results: readonly Result[], world: World, fromMs: number, toMs: number): Counts {
  const rs = results.filter((r) => r.startedAt >= fromMs && r.startedAt < toMs);
  const regionOf = new Map(world.targets.map((t) => [t.name, t.region]));
  const by = (o: Outcome) => rs.filter((r) => r.outcome === o).length;
  const codes: Record<string, number> = {};
  for (const r of rs) {
    if (r.outcome === "ok" || r.errorCode === null) continue;
    codes[`${r.status} ${r.errorCode}`] = (codes[`${r.status} ${r.errorCode}`] ?? 0) + 1;
  }
  const okLatencies = rs.filter((r) => r.outcome === "ok").map((r) => r.latencyMs);
  return {
    sent: rs.length,
    ok: by("ok"),
    typed_error: by("typed_error"),
    untyped_error: by("untyped_error"),
    connect_error: by("connect_error"),
    hung: by("hung"),
    out_of_region: rs.filter((r) => {
      const want = regionOf.get(r.target);
      return r.outcome === "ok" && want !== null && want !== undefined && r.region !== want;
    }).length,
    rate_per_s: Math.round((rs.length / Math.max(1, toMs - fromMs)) * 1000 * 10) / 10,
    p50_ms: Math.round(percentile(okLatencies, 50) * 10) / 10,
    p99_ms: Math.round(percentile(okLatencies, 99) * 10) / 10,
    codes,
  };
}

/**
 * When every target that failed during [fromMs, toMs) answered again: from `fromMs` to the first success
 * after each target's last failure (0 when nothing failed). Null when a target had not answered again by
 * `toMs`.
 */
export function recoveryMs(
  results: readonly Result[],
  fromMs: number,
  toMs: number,
  targets?: string[],
): number | null {
  const rs = results.filter(
    (r) => r.startedAt >= fromMs && r.startedAt < toMs && (!targets || targets.includes(r.target)),
  );
  let worst = 0;
  for (const name of new Set(rs.map((r) => r.target))) {
    const mine = rs.filter((r) => r.target === name).sort((a, b) => a.startedAt - b.startedAt);
    const lastFailure = mine.map((r) => r.outcome !== "ok").lastIndexOf(true);
    if (lastFailure < 0) continue;
    const next = mine.slice(lastFailure + 1).find((r) => r.outcome === "ok");
    if (!next) return null;
    worst = Math.max(worst, next.startedAt - fromMs);
  }
  return worst;
}

/** Request ids the replicas executed more than once, from every replica log of every plane. */
export function duplicateExecutions(cluster: Cluster): string[] {
  const seen = new Map<string, number>();
  for (const p of cluster.planes.values()) {
    const dir = join(p.dataDir, "logs");
    let files: string[] = [];
    try {
      files = readdirSync(dir).filter((f) => f.endsWith(".log"));
    } catch {
      continue;
    }
    for (const f of files) {
      for (const l of readFileSync(join(dir, f), "utf8").split("\n")) {
        if (!l.includes(EXEC)) continue;
        try {
          const line = (JSON.parse(l) as { line?: string }).line ?? "";
          if (!line.startsWith(`${EXEC} `)) continue;
          const id = line.slice(EXEC.length + 1);
          seen.set(id, (seen.get(id) ?? 0) + 1);
        } catch {}
      }
    }
  }
  return [...seen].filter(([, n]) => n > 1).map(([id]) => id);
}

/**
 * From the planes' own audit trails: requests for a restricted environment whose replica ran on a plane
 * outside its region (`processed_by`), and how many records there are in all.
 */
export function auditOutOfRegion(world: World): { records: number; outside: string[] } {
  const regionOfPlane = new Map([...world.cluster.planes.values()].map((p) => [p.name, p.region]));
  const envRegion: Record<string, string> = { "prod-eu": "eu", "prod-uk": "uk", "prod-au": "au" };
  let records = 0;
  const outside: string[] = [];
  for (const p of world.cluster.planes.values()) {
    const dir = join(p.dataDir, "audit");
    let files: string[] = [];
    try {
      files = readdirSync(dir).filter((f) => f.endsWith(".jsonl"));
    } catch {
      continue;
    }
    for (const f of files) {
      for (const l of readFileSync(join(dir, f), "utf8").split("\n")) {
        if (!l.startsWith('{"time"')) continue;
        try {
          const r = JSON.parse(l) as {
            environment: string | null;
            processed_by: string | null;
            request_id: string;
          };
          records++;
          const want = r.environment ? envRegion[r.environment] : undefined;
          if (want && r.processed_by && regionOfPlane.get(r.processed_by) !== want) {
            outside.push(`${r.request_id}@${r.processed_by}`);
          }
        } catch {}
      }
    }
  }
  return { records, outside };
}

/** The pid of the READY replica of `deploymentId` on `plane`, or null. */
export async function replicaProcess(
  world: World,
  plane: string,
  deploymentId: string,
): Promise<number | null> {
  const p = world.cluster.plane(plane);
  const r = ((await planeReplicas(p)) ?? []).find(
    (x) => x.deployment_id === deploymentId && x.state === "READY",
  );
  return r ? replicaPid(p, r.id) : null;
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export interface AuditEntry {
  time: string;
  request_id: string;
  model_id: string | null;
  environment: string | null;
  hostname_form: string | null;
  status: number;
  error_code?: string | null;
  plane: string;
  region: string;
  processed_by: string | null;
  latency_ms?: number;
  aborted?: boolean;
  forwarded_from?: string | null;
}

/** Every audit record of every plane, read from their trails on disk. */
export function auditRecords(cluster: Cluster): AuditEntry[] {
  const out: AuditEntry[] = [];
  for (const p of cluster.planes.values()) {
    const dir = join(p.dataDir, "audit");
    let files: string[] = [];
    try {
      files = readdirSync(dir).filter((f) => f.endsWith(".jsonl"));
    } catch {
      continue;
    }
    for (const f of files) {
      for (const l of readFileSync(join(dir, f), "utf8").split("\n")) {
        if (!l.startsWith('{"time"')) continue;
        try {
          out.push(JSON.parse(l) as AuditEntry);
        } catch {}
      }
    }
  }
  return out;
}

/**
 * What the planes recorded of calls that hung, one line each (`explainCalls`). A wake the client gave up on
 * reads "499 after 10000 ms (client gone)" with no execution; a call no plane ever recorded has no record at
 * all. Read the trails after the planes stopped (their audit buffers are written then).
 */
export function explainHung(world: World, results: readonly Result[]): string[] {
  return explainCalls(
    world,
    results.filter((r) => r.outcome === "hung"),
  );
}

/**
 * What the client saw of each call and what the planes recorded of it, one line each: the endpoint and the
 * time, the answer (status, code, the answering plane and route, the message), then every audit record of
 * its request id (plane, status, latency, whether the client had gone: 499 aborted, the plane it was handed
 * from) and the replicas that executed it.
 */
export function explainCalls(world: World, calls: readonly Result[]): string[] {
  if (calls.length === 0) return [];
  const byId = new Map<string, AuditEntry[]>();
  for (const a of auditRecords(world.cluster)) {
    const list = byId.get(a.request_id);
    if (list) list.push(a);
    else byId.set(a.request_id, [a]);
  }
  return calls.map((r) => {
    const records = (byId.get(r.id) ?? []).map(
      (a) =>
        `${a.plane} ${a.status}${a.error_code ? ` ${a.error_code}` : ""} after ${Math.round(a.latency_ms ?? -1)} ms` +
        `${a.aborted ? " (client gone)" : ""}${a.forwarded_from ? ` from ${a.forwarded_from}` : ""}`,
    );
    const answer =
      r.outcome === "hung"
        ? "no answer"
        : `${r.status} ${r.errorCode ?? ""}${r.plane ? ` by ${r.plane}` : ""}${r.route ? ` (route ${r.route})` : ""}` +
          `${r.message ? `: "${r.message}"` : ""}`;
    const ran = executions(world.cluster, r.id);
    return (
      `${r.target} at ${new Date(r.startedAt).toISOString()} (${r.id}), ${answer}; ` +
      `${records.length > 0 ? records.join("; ") : "no audit record"}; executed ${ran.length > 0 ? ran.join(" ") : "nowhere"}`
    );
  });
}
