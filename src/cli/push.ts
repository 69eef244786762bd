// `meridian push`: validates a model package's config.yaml, packs the directory into a gzipped tar,
// uploads it with a progress bar, creates the model (or a new deployment of it) from the archive —
// optionally straight into an environment — and with `--wait` follows it to ACTIVE or to its failure.

import { createReadStream, mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join, resolve } from "node:path";
import { Transform } from "node:stream";
import cliProgress from "cli-progress";
import { create as createTar } from "tar";
import { parseModelConfig } from "../core/model-config.ts";
import { CliError, type ManagementApi } from "./api.ts";
import { endpointsOf, type ModelLike } from "./endpoints.ts";

export interface PushOptions {
  dir: string;
  environment: string | null;
  promote: boolean;
  deploymentName: string | null;
  modelName: string | null;
  wait: boolean;
  waitTimeoutSeconds: number;
  /** Show progress on stderr (off for --json and when stderr is not a terminal). */
  progress: boolean;
  log: (line: string) => void;
}

interface Deployment {
  id: string;
  name: string;
  model_id: string;
  status: string;
  status_message?: string | null;
  environment: string | null;
  region: { slug: string } | null;
}

export interface PushResult {
  model: ModelLike & { name: string };
  deployment: Deployment;
  environment: string | null;
  endpoints: ReturnType<typeof endpointsOf>;
}

const FAILED = ["BUILD_FAILED", "DEPLOY_FAILED", "FAILED", "UNHEALTHY", "INACTIVE"];

/** Packs `dir` into a temporary .tgz; returns its path and size. */
async function pack(dir: string): Promise<{ file: string; size: number; cleanup(): void }> {
  const tmp = mkdtempSync(join(tmpdir(), "meridian-push-"));
  const file = join(tmp, "package.tgz");
  await createTar(
    {
      gzip: true,
      cwd: dir,
      file,
      portable: true,
      // Local state and VCS metadata are not part of a model package.
      filter: (path) => !/(^|\/)(\.git|node_modules|\.meridian|__pycache__)(\/|$)/.test(path),
    },
    ["."],
  );
  return { file, size: statSync(file).size, cleanup: () => rmSync(tmp, { recursive: true, force: true }) };
}

export async function push(api: ManagementApi, domain: string, o: PushOptions): Promise<PushResult> {
  const dir = resolve(o.dir);
  let rawConfig: string;
  try {
    rawConfig = readFileSync(join(dir, "config.yaml"), "utf8");
  } catch {
    throw new CliError(`${dir} is not a model package: it has no config.yaml.`);
  }
  const parsed = parseModelConfig(rawConfig);
  if (!parsed.ok) throw new CliError(`${join(dir, "config.yaml")}: ${parsed.key}: ${parsed.message}`);
  const name = o.modelName ?? parsed.config.model_name ?? basename(dir);
  const environment = o.promote ? "production" : o.environment;

  const archive = await pack(dir);
  try {
    const existing = await api.get<{ models: Array<ModelLike & { name: string }> }>(
      `/v1/models?name=${encodeURIComponent(name)}`,
    );
    const deployment = {
      config: parsed.config,
      raw_config: rawConfig,
      ...(environment ? { environment_name: environment } : {}),
      ...(o.deploymentName ? { deployment_name: o.deploymentName } : {}),
    };
    const model = existing.models[0];
    // The server validates the push as the commit will before it issues the upload target.
    const target = await api.post<{ s3_key: string; upload_url: string }>("/v1/prepare_model_upload", {
      deployment,
      ...(model ? { model_id: model.id } : { name }),
    });
    const bar = o.progress
      ? new cliProgress.SingleBar(
          {
            format: "Uploading {bar} {percentage}% | {value}/{total} bytes",
            hideCursor: true,
            stream: process.stderr,
          },
          cliProgress.Presets.shades_classic,
        )
      : null;
    bar?.start(archive.size, 0);
    let sent = 0;
    const counter = new Transform({
      transform(chunk: Buffer, _enc, done) {
        sent += chunk.length;
        bar?.update(sent);
        done(null, chunk);
      },
    });
    try {
      await api.upload(target.upload_url, createReadStream(archive.file).pipe(counter), archive.size);
    } finally {
      bar?.stop();
    }
    const created = model
      ? await api.post<{ model: PushResult["model"]; deployment: Deployment }>(
          `/v1/models/${model.id}/deployments`,
          {
            source: { kind: "model_archive", s3_key: target.s3_key, deployment },
          },
        )
      : await api.post<{ model: PushResult["model"]; deployment: Deployment }>("/v1/models", {
          source: { kind: "model_archive", name, s3_key: target.s3_key, deployment },
        });
    o.log(
      `${model ? "New deployment of" : "Created"} model ${created.model.name} (${created.model.id}): deployment ${created.deployment.id}, ${created.deployment.status}`,
    );
    let final = created.deployment;
    if (o.wait) final = await waitForDeployment(api, created.model.id, created.deployment.id, environment, o);
    const region = environment ? await regionOf(api, environment) : null;
    return {
      model: created.model,
      deployment: final,
      environment,
      endpoints: endpointsOf(domain, created.model.id, environment, final.id, region),
    };
  } finally {
    archive.cleanup();
  }
}

async function regionOf(api: ManagementApi, environment: string): Promise<string | null> {
  const group = await api.get<{ region_restriction: { region: string } | null }>(
    `/v1/environment_groups/${encodeURIComponent(environment)}`,
  );
  return group.region_restriction?.region ?? null;
}

/**
 * Follows a pushed deployment to ACTIVE. Into an environment, it follows the promotion's candidate (a
 * forced redeploy makes a new deployment) until the environment serves it.
 */
async function waitForDeployment(
  api: ManagementApi,
  modelId: string,
  deploymentId: string,
  environment: string | null,
  o: PushOptions,
): Promise<Deployment> {
  type Env = { current_deployment: Deployment | null; candidate_deployment: Deployment | null };
  const envPath = environment
    ? `/v1/models/${modelId}/environments/${encodeURIComponent(environment)}`
    : null;
  let watched = deploymentId;
  if (envPath) {
    const env = await api.get<Env>(envPath);
    watched = env.candidate_deployment?.id ?? env.current_deployment?.id ?? deploymentId;
    if (watched !== deploymentId)
      o.log(`  forced redeploy for '${environment}': following deployment ${watched}`);
  }
  const deadline = Date.now() + o.waitTimeoutSeconds * 1000;
  let last = "";
  for (;;) {
    const d = await api.get<Deployment>(`/v1/models/${modelId}/deployments/${watched}`);
    const line = `${d.status}${d.status_message ? `: ${d.status_message}` : ""}`;
    if (line !== last) o.log(`  deployment ${d.id}: ${line}`);
    last = line;
    if (d.status === "ACTIVE") {
      if (!envPath) return d;
      const env = await api.get<Env>(envPath);
      if (env.current_deployment?.id === watched) return env.current_deployment;
    }
    if (FAILED.includes(d.status)) {
      const tail = await recentLogs(api, modelId, d.id);
      throw new CliError(
        `Deployment ${d.id} is ${d.status}${d.status_message ? `: ${d.status_message}` : ""}${tail ? `\n${tail}` : ""}`,
      );
    }
    if (Date.now() > deadline) {
      throw new CliError(
        `Deployment ${d.id} is still ${d.status} after ${o.waitTimeoutSeconds} s; see \`meridian logs\`.`,
      );
    }
    await new Promise((r) => setTimeout(r, 300));
  }
}

async function recentLogs(api: ManagementApi, modelId: string, deploymentId: string): Promise<string> {
  try {
    const res = await api.get<{ logs: Array<{ message: string }> }>(
      `/v1/models/${modelId}/deployments/${deploymentId}/logs?limit=20`,
    );
    // Newest first from the API, printed oldest first.
    return [...res.logs]
      .reverse()
      .map((l) => `  | ${l.message}`)
      .join("\n");
  } catch {
    return "";
  }
}
