// A real control plane for tests (in this process, listening on a loopback port) and a small API client
// over real HTTP, plus model packages packed the way `meridian push` packs them.

import { chmodSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import pino from "pino";
import { create as createTar } from "tar";
import { request } from "undici";
import { type RunningControl, startControl } from "../../src/control/main.ts";
import { createTestDatabase, type StoreKind, type TestDatabase } from "./databases.ts";

export const EXAMPLES = resolve(import.meta.dirname, "../../examples");

export interface Response<T = any> {
  status: number;
  body: T;
  headers: Record<string, string | string[] | undefined>;
}

/** A prepare_model_upload body that validates anywhere: a new model under a name no test uses. */
export const NEW_MODEL_PUSH = { name: "upload-target-probe", deployment: { config: {} } } as const;

export class ApiClient {
  constructor(
    readonly url: string,
    readonly key: string | null,
  ) {}

  as(key: string | null): ApiClient {
    return new ApiClient(this.url, key);
  }

  async call<T = any>(
    method: string,
    path: string,
    body?: unknown,
    headers: Record<string, string> = {},
  ): Promise<Response<T>> {
    const res = await request(`${this.url}${path}`, {
      method: method as "GET",
      headers: {
        ...(this.key ? { authorization: `Api-Key ${this.key}` } : {}),
        ...(body !== undefined && !(body instanceof Buffer) ? { "content-type": "application/json" } : {}),
        ...headers,
      },
      body: body === undefined ? undefined : body instanceof Buffer ? body : JSON.stringify(body),
    });
    const text = await res.body.text();
    let parsed: unknown = text;
    try {
      parsed = text.length ? JSON.parse(text) : null;
    } catch {}
    return { status: res.statusCode, body: parsed as T, headers: res.headers };
  }

  get = <T = any>(path: string) => this.call<T>("GET", path);
  post = <T = any>(path: string, body?: unknown) => this.call<T>("POST", path, body ?? {});
  patch = <T = any>(path: string, body: unknown) => this.call<T>("PATCH", path, body);
  delete = <T = any>(path: string) => this.call<T>("DELETE", path);

  /**
   * Uploads a packed model package and returns its s3_key. `prepare` is the prepare_model_upload body; by
   * default a push of a new model under a name no test uses.
   */
  async upload(archive: Buffer, prepare: Record<string, unknown> = NEW_MODEL_PUSH): Promise<string> {
    const prepared = await this.post("/v1/prepare_model_upload", prepare);
    if (prepared.status !== 200)
      throw new Error(`prepare_model_upload: ${prepared.status} ${JSON.stringify(prepared.body)}`);
    const put = await this.call("PUT", `/v1/artifacts/${prepared.body.s3_key}`, archive, {
      "content-type": "application/gzip",
    });
    if (put.status !== 200) throw new Error(`upload: ${put.status} ${JSON.stringify(put.body)}`);
    return prepared.body.s3_key as string;
  }

  /** Creates a model from an example package; returns {model, deployment}. */
  async createModel(name: string, example = "hello-js", deployment: Record<string, unknown> = {}) {
    const s3_key = await this.upload(await packExample(example), { name, deployment: { config: {} } });
    return this.post("/v1/models", {
      source: {
        kind: "model_archive",
        name,
        s3_key,
        deployment: { config: { model_name: name }, ...deployment },
      },
    });
  }

  async createDeployment(modelId: string, example = "hello-js", deployment: Record<string, unknown> = {}) {
    const s3_key = await this.upload(await packExample(example), {
      model_id: modelId,
      deployment: { config: {} },
    });
    return this.post(`/v1/models/${modelId}/deployments`, {
      source: { kind: "model_archive", s3_key, deployment: { config: {}, ...deployment } },
    });
  }
}

/** Packs a package directory into a gzipped tar, as `meridian push` does. */
export async function packDirectory(dir: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  const stream = createTar({ gzip: true, cwd: dir, portable: true }, ["."]);
  for await (const c of stream as AsyncIterable<Buffer>) chunks.push(c);
  return Buffer.concat(chunks);
}

export function packExample(name: string): Promise<Buffer> {
  return packDirectory(join(EXAMPLES, name));
}

export interface TestControl {
  control: RunningControl;
  db: TestDatabase;
  admin: ApiClient;
  stop(): Promise<void>;
}

export async function startTestControl(kind: StoreKind = "sqlite"): Promise<TestControl> {
  const db = await createTestDatabase(kind);
  const control = await startControl({
    dataDir: join(db.dir, "control"),
    host: "127.0.0.1",
    port: 0,
    databaseUrl: db.url,
    domain: "meridian.test",
    publicUrl: null,
    // Tests here drive plane reports by hand: a plane a loaded machine leaves silent for 15 s must not be
    // judged down (and its replicas moved) halfway through a test. Failover has tests of its own.
    planeTimeoutMs: 3_600_000,
    // The same for the autoscaler's loop: a pass in the background would change rows (a new deployment's
    // first replica count) under tests that compare the database before and after a call. Tests that
    // want a pass call `control.ctx.autoscaler.tick()`; wakes are decided at once as always.
    autoscalerIntervalMs: 3_600_000,
    logger: pino({ level: "silent" }),
  });
  return {
    control,
    db,
    admin: new ApiClient(control.url, control.adminKey),
    async stop() {
      await control.stop();
      await db.drop();
    },
  };
}

/**
 * A fresh directory. Search-only for others (0711, not mkdtemp's 0700): a sandboxed replica's bwrap runs as
 * an unprivileged uid and must reach the planes' directories below it to bind the replica's files.
 */
export function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), "meridian-"));
  chmodSync(dir, 0o711);
  return dir;
}
