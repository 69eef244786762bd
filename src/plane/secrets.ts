// The plane's side of secret delivery. When the agent starts a replica it fetches, with the plane's
// credential, the values of the secrets that replica's deployment names, and writes them as files (one per
// name, mode 0400) into the directory it is given, which the sandbox mounts read-only at /secrets as truss
// provides them. Values are never logged, never put in a snapshot, and kept nowhere else on the plane.

import { constants } from "node:fs";
import { chmod, lstat, mkdir, open, readdir, rm } from "node:fs/promises";
import { join } from "node:path";
import { type Dispatcher, request } from "undici";
import {
  checkSecretName,
  checkSecretValue,
  MAX_SECRETS_PER_DEPLOYMENT,
  SECRET_VALUE_MAX_BYTES,
} from "../core/secrets.ts";

export interface ReplicaSecretsRequest {
  /** Base URL of the control plane, e.g. `http://127.0.0.1:8700`. */
  controlUrl: string;
  /** The plane's credential, sent as `Authorization: Bearer`. */
  planeToken: string;
  /** The plane's name: the control plane answers only for replicas placed on it. */
  plane: string;
  replicaId: string;
  /**
   * The replica's secrets directory, private to it: created (0700) when missing; files of an earlier fetch
   * are replaced. The caller removes it with the replica (`removeReplicaSecrets`).
   */
  dir: string;
  dispatcher?: Dispatcher;
  /** Longest wait for the answer's headers and for each chunk of its body. Default 30 s. */
  timeoutMs?: number;
}

export type SecretsFailure =
  /** The deployment names a secret its team lacks: the message names it; retrying will not help. */
  | "missing"
  /** The control plane has no such replica on this plane (removed, moved, or never there). */
  | "not_placed"
  | "http_status"
  | "network"
  /** The answer is not what the contract says (a name that is not a file name, a value too large, …). */
  | "invalid_answer"
  /** The directory could not be made or written. */
  | "filesystem";

/** Why a replica's secrets are not in place. The message is fit for the replica's status message. */
export class ReplicaSecretsError extends Error {
  readonly reason: SecretsFailure;
  readonly status: number | null;

  constructor(reason: SecretsFailure, message: string, status: number | null = null) {
    super(message);
    this.name = "ReplicaSecretsError";
    this.reason = reason;
    this.status = status;
  }
}

/** Room for every value at its largest, JSON-escaped (at most 6 bytes per byte), plus the names. */
const MAX_ANSWER_BYTES = MAX_SECRETS_PER_DEPLOYMENT * (SECRET_VALUE_MAX_BYTES * 6 + 1024);

/**
 * Fetches the replica's secrets and writes them into `dir`; returns the names written (sorted). A replica
 * whose deployment names no secret gets an empty directory. Throws ReplicaSecretsError: when the fetch
 * fails, `dir` is left as it was (a replica restarted in place may keep what it was started with while the
 * control plane is away); when writing fails, `dir` is removed, so no replica starts with half its secrets.
 */
export async function fetchReplicaSecrets(req: ReplicaSecretsRequest): Promise<string[]> {
  const values = await fetchValues(req);
  try {
    return await writeSecretFiles(req.dir, values);
  } catch (err) {
    await rm(req.dir, { recursive: true, force: true }).catch(() => {});
    throw new ReplicaSecretsError("filesystem", `writing the replica's secrets failed: ${errorText(err)}`);
  }
}

/** Removes a replica's secrets directory (when the replica is removed). */
export async function removeReplicaSecrets(dir: string): Promise<void> {
  // Sealed, the directory is 0500: its entries can be removed only once it is writable again.
  await chmod(dir, 0o700).catch(() => {});
  await rm(dir, { recursive: true, force: true });
}

async function fetchValues(req: ReplicaSecretsRequest): Promise<Map<string, string>> {
  const base = req.controlUrl.endsWith("/") ? req.controlUrl : `${req.controlUrl}/`;
  const url = new URL(
    `v1/internal/planes/${encodeURIComponent(req.plane)}/replicas/${encodeURIComponent(req.replicaId)}/secrets`,
    base,
  );
  const timeout = req.timeoutMs ?? 30_000;
  let response: Dispatcher.ResponseData;
  try {
    response = await request(url, {
      method: "GET",
      headers: { authorization: `Bearer ${req.planeToken}`, accept: "application/json" },
      headersTimeout: timeout,
      bodyTimeout: timeout,
      ...(req.dispatcher ? { dispatcher: req.dispatcher } : {}),
    });
  } catch (err) {
    throw new ReplicaSecretsError("network", `fetching the replica's secrets failed: ${errorText(err)}`);
  }
  let text: string;
  try {
    text = await readBounded(response.body, MAX_ANSWER_BYTES);
  } catch (err) {
    throw new ReplicaSecretsError(
      err instanceof ReplicaSecretsError ? err.reason : "network",
      `reading the replica's secrets failed: ${errorText(err)}`,
      response.statusCode,
    );
  }
  if (response.statusCode !== 200) throw failure(response.statusCode, text, req);
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    throw new ReplicaSecretsError(
      "invalid_answer",
      "the control plane's answer with the secrets is not JSON",
    );
  }
  return checkAnswer(body);
}

/** The error for a non-200 answer; a missing secret keeps the control plane's message, which names it. */
function failure(status: number, text: string, req: ReplicaSecretsRequest): ReplicaSecretsError {
  let body: { error?: unknown; error_code?: unknown } = {};
  try {
    body = JSON.parse(text) as typeof body;
  } catch {}
  const message = typeof body.error === "string" ? body.error.slice(0, 2000) : "";
  if (status === 409 && body.error_code === "secret_missing" && message !== "") {
    return new ReplicaSecretsError("missing", message, status);
  }
  if (status === 404 && body.error_code === "replica_not_found") {
    return new ReplicaSecretsError(
      "not_placed",
      `The control plane has no replica ${req.replicaId} placed on plane ${req.plane}.`,
      status,
    );
  }
  const code = typeof body.error_code === "string" ? ` (${body.error_code.slice(0, 64)})` : "";
  return new ReplicaSecretsError(
    "http_status",
    `fetching the replica's secrets: the control plane answered ${status}${code}`,
    status,
  );
}

/** `{"secrets": {name: value}}` with names that are file names and values within bounds. */
function checkAnswer(body: unknown): Map<string, string> {
  const secrets =
    typeof body === "object" && body !== null ? (body as Record<string, unknown>)["secrets"] : undefined;
  if (typeof secrets !== "object" || secrets === null || Array.isArray(secrets)) {
    throw new ReplicaSecretsError("invalid_answer", "the control plane's answer has no 'secrets' mapping");
  }
  const entries = Object.entries(secrets as Record<string, unknown>);
  if (entries.length > MAX_SECRETS_PER_DEPLOYMENT) {
    throw new ReplicaSecretsError("invalid_answer", `the control plane sent ${entries.length} secrets`);
  }
  const values = new Map<string, string>();
  for (const [name, value] of entries) {
    // The name becomes a file name: only truss's names, never a path (`..`, `/`) or an empty one.
    const nameCheck = checkSecretName(name);
    if (!nameCheck.ok) {
      throw new ReplicaSecretsError(
        "invalid_answer",
        `the control plane sent a bad secret name: ${nameCheck.message}`,
      );
    }
    // The value is never quoted in a message.
    if (typeof value !== "string" || !checkSecretValue(value).ok) {
      throw new ReplicaSecretsError(
        "invalid_answer",
        `the control plane sent a bad value for secret '${name}'`,
      );
    }
    values.set(name, value);
  }
  return values;
}

/** Reads a body as UTF-8, refusing one larger than `max` bytes (and stopping there). */
async function readBounded(body: AsyncIterable<Buffer> & { destroy(): void }, max: number): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body) {
    size += chunk.length;
    if (size > max) {
      body.destroy();
      throw new ReplicaSecretsError("invalid_answer", `the answer is larger than ${max} bytes`);
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString("utf8");
}

/** Writes each value to `{dir}/{name}` (0400) in a fresh 0700 directory of the plane's own. */
async function writeSecretFiles(dir: string, values: ReadonlyMap<string, string>): Promise<string[]> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const stat = await lstat(dir);
  // A symlink here would send the values wherever it points.
  if (!stat.isDirectory()) throw new Error(`${dir} is not a directory`);
  await chmod(dir, 0o700);
  // A replica started again with fewer secrets must not keep one it no longer names.
  for (const entry of await readdir(dir)) await rm(join(dir, entry), { recursive: true, force: true });
  for (const [name, value] of values) {
    // O_EXCL | O_NOFOLLOW: the file is new and ours, not a link planted in the directory.
    const file = await open(
      join(dir, name),
      constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
      0o400,
    );
    try {
      await file.writeFile(value, "utf8");
      // The mode given to open is filtered by the umask; this is exact.
      await file.chmod(0o400);
    } finally {
      await file.close();
    }
  }
  return [...values.keys()].sort();
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
