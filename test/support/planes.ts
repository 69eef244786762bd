// What end-to-end tests observe on the planes themselves (the ground truth of placement): the replicas a
// plane's driver runs, read from its operator listener; replica pids from the driver's run files; a
// watch that samples every plane all along a test; inference calls; model packages written on the fly.

import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { request } from "undici";
import type { Cluster, PlaneHandle } from "./cluster.ts";
import { packDirectory, tempDir } from "./control.ts";

export interface ObservedReplica {
  id: string;
  deployment_id: string;
  model_id: string;
  environment: string | null;
  state: string;
  message: string | null;
  restarts: number;
  started_at: string | null;
}

/** The replicas the plane's driver runs right now; null when the plane does not answer. */
export async function planeReplicas(plane: PlaneHandle): Promise<ObservedReplica[] | null> {
  try {
    const res = await request(`http://${plane.host}:${plane.admin}/v1/replicas`, {
      headers: { authorization: `Bearer ${plane.token}` },
      headersTimeout: 2_000,
      bodyTimeout: 2_000,
    });
    if (res.statusCode !== 200) {
      await res.body.dump();
      return null;
    }
    return ((await res.body.json()) as { replicas: ObservedReplica[] }).replicas;
  } catch {
    return null;
  }
}

/** The pid of a replica's current process, from the process driver's run file; null when none runs. */
export function replicaPid(plane: PlaneHandle, replicaId: string): number | null {
  try {
    return (
      JSON.parse(readFileSync(join(plane.dataDir, "run", `${replicaId}.json`), "utf8")) as { pid: number }
    ).pid;
  } catch {
    return null;
  }
}

/** Whether `pid` runs; a zombie (killed, not yet reaped by its parent) does not count (Linux /proc). */
export function processAlive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // The state follows the parenthesised command name, which may itself contain spaces or parentheses.
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
  } catch {
    return false;
  }
}

/**
 * Samples every plane's replicas every `intervalMs` until stopped, so a replica that runs in the wrong
 * region for a moment is seen, not only the state at the end of a test.
 */
export class PlacementWatch {
  /** deployment id → planes a replica of it was ever seen on. */
  readonly seen = new Map<string, Set<string>>();
  #timer: NodeJS.Timeout | null = null;
  #busy = false;

  constructor(
    private readonly cluster: Cluster,
    private readonly intervalMs = 150,
  ) {}

  start(): this {
    this.#timer = setInterval(() => void this.sample(), this.intervalMs);
    return this;
  }

  stop(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
  }

  async sample(): Promise<void> {
    if (this.#busy) return;
    this.#busy = true;
    try {
      await Promise.all(
        [...this.cluster.planes.values()].map(async (p) => {
          for (const r of (await planeReplicas(p)) ?? []) {
            const planes = this.seen.get(r.deployment_id) ?? new Set<string>();
            planes.add(p.name);
            this.seen.set(r.deployment_id, planes);
          }
        }),
      );
    } finally {
      this.#busy = false;
    }
  }

  /** Planes outside `region` that ever ran a replica of one of `deploymentIds`. */
  outside(deploymentIds: Iterable<string>, region: string): string[] {
    const found: string[] = [];
    for (const id of deploymentIds) {
      for (const plane of this.seen.get(id) ?? []) {
        if (this.cluster.plane(plane).region !== region) found.push(`${id}@${plane}`);
      }
    }
    return found;
  }

  /** Planes a replica of `deploymentId` was seen on. */
  planesOf(deploymentId: string): string[] {
    return [...(this.seen.get(deploymentId) ?? [])].sort();
  }
}

/** Every deployment of every model whose replicas must stay in `region`, by the control plane's account. */
export async function deploymentsRestrictedTo(cluster: Cluster, region: string): Promise<string[]> {
  const models = await cluster.api.get("/v1/models");
  const ids: string[] = [];
  for (const m of models.body.models as Array<{ id: string }>) {
    const ds = await cluster.api.get(`/v1/models/${m.id}/deployments`);
    for (const d of ds.body.deployments as Array<{ id: string; region: { slug: string } | null }>) {
      if (d.region?.slug === region) ids.push(d.id);
    }
  }
  return ids;
}

export interface Prediction {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: any;
}

/** POSTs a prediction to a plane's ingress with the given Host, as a client that resolved it would. */
export async function predict(
  cluster: Cluster,
  plane: string,
  host: string,
  path: string,
  body: unknown = { x: 1 },
): Promise<Prediction> {
  const p = cluster.plane(plane);
  const res = await request(`http://${p.host}:${p.port}${path}`, {
    method: "POST",
    headers: { host, authorization: `Api-Key ${cluster.api.key}`, "content-type": "application/json" },
    body: JSON.stringify(body),
    headersTimeout: 15_000,
    bodyTimeout: 15_000,
  });
  const text = await res.body.text();
  let json: any = text;
  try {
    json = JSON.parse(text);
  } catch {}
  return { status: res.statusCode, headers: res.headers, body: json };
}

/** Sends predictions one after another until stopped; every answer is kept. */
export class Traffic {
  readonly results: Array<Prediction & { at: number }> = [];
  #running = true;
  readonly #done: Promise<void>;

  constructor(call: () => Promise<Prediction>, pauseMs = 50) {
    this.#done = (async () => {
      while (this.#running) {
        try {
          this.results.push({ ...(await call()), at: Date.now() });
        } catch (err) {
          this.results.push({ status: 0, headers: {}, body: String(err), at: Date.now() });
        }
        await new Promise((r) => setTimeout(r, pauseMs));
      }
    })();
  }

  async stop(): Promise<this> {
    this.#running = false;
    await this.#done;
    return this;
  }

  failures() {
    return this.results
      .filter((r) => r.status !== 200)
      .map((r) => ({ status: r.status, body: r.body, at: new Date(r.at).toISOString() }));
  }

  header(name: string): string[] {
    return this.results.map((r) => String(r.headers[name] ?? ""));
  }
}

/** Writes a model package from `files` (path → content) into a fresh directory and packs it. */
export async function packFiles(files: Record<string, string>): Promise<Buffer> {
  const dir = tempDir();
  for (const [path, content] of Object.entries(files)) {
    mkdirSync(dirname(join(dir, path)), { recursive: true });
    writeFileSync(join(dir, path), content);
  }
  return packDirectory(dir);
}

/** A JS model whose load() waits `loadMs` (so a test can act while a replica is loading). */
export function slowModel(loadMs: number): Record<string, string> {
  return {
    "config.yaml": `model_name: slow\nenvironment_variables:\n  LOAD_MS: "${loadMs}"\n`,
    "model/model.js": `export class Model {
  constructor({ environment }) { this.environment = environment?.name ?? null; }
  async load() { await new Promise((r) => setTimeout(r, Number(process.env.LOAD_MS))); }
  predict(input) {
    return { environment: this.environment, deployment: process.env.MERIDIAN_DEPLOYMENT_ID, echo: input };
  }
}
`,
  };
}

/** Uploads `archive` and adds it to the model as a new deployment. */
export async function pushPackage(
  cluster: Cluster,
  modelId: string,
  archive: Buffer,
  deployment: Record<string, unknown> = {},
) {
  const s3_key = await cluster.api.upload(archive);
  return cluster.api.post(`/v1/models/${modelId}/deployments`, {
    source: { kind: "model_archive", s3_key, deployment: { config: {}, ...deployment } },
  });
}

/** Creates a model from `archive`. */
export async function createModelFrom(
  cluster: Cluster,
  name: string,
  archive: Buffer,
  deployment: Record<string, unknown> = {},
) {
  const s3_key = await cluster.api.upload(archive);
  return cluster.api.post("/v1/models", {
    source: {
      kind: "model_archive",
      name,
      s3_key,
      deployment: { config: { model_name: name }, ...deployment },
    },
  });
}
