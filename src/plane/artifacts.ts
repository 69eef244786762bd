// The plane's artifact cache: fetches model packages (gzipped tar) from the control plane with the
// plane's credential, verifies size and sha256 while streaming, and keeps them content-addressed on disk
// (`blobs/{sha256}.tar.gz`, extracted in `packages/{sha256}/`) so each package is fetched once.

import { createHash, randomUUID } from "node:crypto";
import { createWriteStream } from "node:fs";
import { chmod, lstat, mkdir, readdir, rename, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import * as tar from "tar";
import { Agent, type Dispatcher, request } from "undici";
import type { ArtifactRef } from "../core/snapshot.ts";

export interface ArtifactCacheOptions {
  /** Directory the cache owns, e.g. `{dataDir}/artifacts`. */
  dir: string;
  /** Base URL of the control plane, e.g. `http://127.0.0.1:7000`. */
  controlUrl: string;
  /** The plane's credential, sent as `Authorization: Bearer`. */
  planeToken: string;
  /** Default: an Agent of the cache's own, closed by stop(). */
  dispatcher?: Dispatcher;
  /** Longest wait for response headers, and for each body chunk. Default 60 s. */
  timeoutMs?: number;
}

export type ArtifactFailure =
  | "invalid_ref"
  | "http_status"
  | "network"
  | "size_mismatch"
  | "checksum_mismatch"
  | "unsafe_archive"
  | "invalid_archive";

/** Why a package could not be made available; nothing is cached when this is thrown. */
export class ArtifactFetchError extends Error {
  readonly reason: ArtifactFailure;
  readonly status: number | null;

  constructor(reason: ArtifactFailure, message: string, status: number | null = null) {
    super(message);
    this.name = "ArtifactFetchError";
    this.reason = reason;
    this.status = status;
  }
}

const SHA256_HEX = /^[0-9a-f]{64}$/;
const ALLOWED_ENTRY_TYPES = new Set(["File", "OldFile", "ContiguousFile", "Directory", "SymbolicLink"]);

export class ArtifactCache {
  readonly #options: ArtifactCacheOptions;
  readonly #ownAgent: Agent | null;
  readonly #dispatcher: Dispatcher;
  /** One fetch per sha256 at a time in this process; other processes are handled by atomic renames. */
  readonly #inflight = new Map<string, Promise<string>>();

  constructor(options: ArtifactCacheOptions) {
    this.#options = options;
    const timeout = options.timeoutMs ?? 60_000;
    this.#ownAgent =
      options.dispatcher === undefined ? new Agent({ headersTimeout: timeout, bodyTimeout: timeout }) : null;
    this.#dispatcher = options.dispatcher ?? this.#ownAgent!;
  }

  async start(): Promise<void> {
    await Promise.all(
      ["blobs", "packages"].map((d) => mkdir(join(this.#options.dir, d), { recursive: true })),
    );
    // Leftovers of downloads or extractions interrupted by a crash.
    await rm(join(this.#options.dir, "tmp"), { recursive: true, force: true });
    await mkdir(join(this.#options.dir, "tmp"), { recursive: true });
  }

  async stop(): Promise<void> {
    await Promise.allSettled([...this.#inflight.values()]);
    await this.#ownAgent?.close();
  }

  /** Directory where the package lies extracted once this resolves. */
  packageDir(ref: ArtifactRef): string {
    return join(this.#options.dir, "packages", checkRef(ref));
  }

  /** Makes the package available on disk (fetching it only if it is not cached) and returns its directory. */
  ensure(ref: ArtifactRef): Promise<string> {
    let sha256: string;
    try {
      sha256 = checkRef(ref);
    } catch (err) {
      return Promise.reject(err);
    }
    const running = this.#inflight.get(sha256);
    if (running !== undefined) return running;
    const work = this.#ensure(ref, sha256).finally(() => this.#inflight.delete(sha256));
    this.#inflight.set(sha256, work);
    return work;
  }

  async #ensure(ref: ArtifactRef, sha256: string): Promise<string> {
    const target = join(this.#options.dir, "packages", sha256);
    if (await exists(target)) return target;
    const blob = join(this.#options.dir, "blobs", `${sha256}.tar.gz`);
    if (!(await exists(blob))) await this.#download(ref, sha256, blob);
    const staging = join(this.#options.dir, "tmp", `x-${randomUUID()}`);
    try {
      await extractSafely(blob, staging);
      await rename(staging, target).catch(async (err: NodeJS.ErrnoException) => {
        // Another process extracted the same package first; theirs is identical.
        if (err.code !== "ENOTEMPTY" && err.code !== "EEXIST") throw err;
      });
      return target;
    } catch (err) {
      // A blob that does not extract is useless; drop it so the next attempt fetches again.
      if (err instanceof ArtifactFetchError) await rm(blob, { force: true });
      throw err;
    } finally {
      await rm(staging, { recursive: true, force: true });
    }
  }

  async #download(ref: ArtifactRef, sha256: string, blob: string): Promise<void> {
    const url = new URL(
      `v1/internal/artifacts/${encodeURIComponent(ref.key)}`,
      this.#options.controlUrl.endsWith("/") ? this.#options.controlUrl : `${this.#options.controlUrl}/`,
    );
    const temp = join(this.#options.dir, "tmp", `d-${randomUUID()}`);
    try {
      let response: Dispatcher.ResponseData;
      try {
        response = await request(url, {
          method: "GET",
          dispatcher: this.#dispatcher,
          headers: { authorization: `Bearer ${this.#options.planeToken}` },
        });
      } catch (err) {
        throw new ArtifactFetchError("network", `fetching artifact ${ref.key} failed: ${errorText(err)}`);
      }
      if (response.statusCode !== 200) {
        const detail = (await response.body.text().catch(() => "")).slice(0, 200);
        throw new ArtifactFetchError(
          "http_status",
          `fetching artifact ${ref.key}: the control plane answered ${response.statusCode} ${detail}`.trim(),
          response.statusCode,
        );
      }
      const hash = createHash("sha256");
      let bytes = 0;
      const meter = new Transform({
        transform(chunk: Buffer, _encoding, done) {
          bytes += chunk.length;
          // Stop early rather than fill the disk with an artifact larger than announced.
          if (bytes > ref.size) {
            done(
              new ArtifactFetchError("size_mismatch", `artifact ${ref.key} is larger than ${ref.size} bytes`),
            );
            return;
          }
          hash.update(chunk);
          done(null, chunk);
        },
      });
      try {
        await pipeline(response.body, meter, createWriteStream(temp, { flags: "wx" }));
      } catch (err) {
        if (err instanceof ArtifactFetchError) throw err;
        throw new ArtifactFetchError("network", `fetching artifact ${ref.key} failed: ${errorText(err)}`);
      }
      if (bytes !== ref.size) {
        throw new ArtifactFetchError(
          "size_mismatch",
          `artifact ${ref.key} has ${bytes} bytes, expected ${ref.size}`,
        );
      }
      const actual = hash.digest("hex");
      if (actual !== sha256) {
        throw new ArtifactFetchError(
          "checksum_mismatch",
          `artifact ${ref.key} has sha256 ${actual}, expected ${sha256}`,
        );
      }
      await rename(temp, blob);
    } finally {
      await rm(temp, { force: true });
    }
  }
}

/** Validates a ref (its sha256 names files) and returns the normalised sha256. */
function checkRef(ref: ArtifactRef): string {
  const sha256 = ref.sha256.toLowerCase();
  if (!SHA256_HEX.test(sha256))
    throw new ArtifactFetchError("invalid_ref", `invalid sha256 ${JSON.stringify(ref.sha256)}`);
  if (!Number.isSafeInteger(ref.size) || ref.size < 0) {
    throw new ArtifactFetchError("invalid_ref", `invalid size ${JSON.stringify(ref.size)}`);
  }
  if (ref.key === "") throw new ArtifactFetchError("invalid_ref", "empty artifact key");
  return sha256;
}

/** Why an archive entry may not be extracted; null when it is safe. */
export function unsafeEntryReason(entry: {
  path: string;
  type: string;
  linkpath?: string | undefined;
}): string | null {
  if (!ALLOWED_ENTRY_TYPES.has(entry.type)) return `entry ${entry.path} has type ${entry.type}`;
  for (const [what, path] of [
    ["path", entry.path],
    ["link target", entry.linkpath],
  ] as const) {
    if (path === undefined || (what === "link target" && entry.type !== "SymbolicLink")) continue;
    if (/^([/\\]|[A-Za-z]:)/.test(path)) return `entry ${entry.path} has an absolute ${what}`;
    if (path.split(/[/\\]/).includes("..")) return `entry ${entry.path} has a ${what} with ..`;
  }
  return null;
}

/** Lists the archive and refuses it whole if any entry could land outside `dest`; then extracts. */
async function extractSafely(file: string, dest: string): Promise<void> {
  const problems: string[] = [];
  try {
    await tar.t({
      file,
      strict: true,
      onReadEntry: (entry) => {
        const reason = unsafeEntryReason({ path: entry.path, type: entry.type, linkpath: entry.linkpath });
        if (reason !== null) problems.push(reason);
      },
    });
  } catch (err) {
    throw new ArtifactFetchError(
      "invalid_archive",
      `the package is not a readable tar (gzipped or plain): ${errorText(err)}`,
    );
  }
  if (problems.length > 0) {
    throw new ArtifactFetchError(
      "unsafe_archive",
      `the package was refused: ${problems.slice(0, 3).join("; ")}`,
    );
  }
  await mkdir(dest, { recursive: true });
  try {
    await tar.x({
      file,
      cwd: dest,
      strict: true,
      preservePaths: false,
      preserveOwner: false,
      // Checked again while extracting: the listing and the extraction read the file separately.
      filter: (path, entry) =>
        unsafeEntryReason({
          path,
          type: "type" in entry ? entry.type : "File",
          linkpath: "linkpath" in entry ? entry.linkpath : undefined,
        }) === null,
    });
  } catch (err) {
    throw new ArtifactFetchError("invalid_archive", `extracting the package failed: ${errorText(err)}`);
  }
  await readableByAll(dest);
}

/**
 * A sandboxed replica reads its package as an unprivileged uid, not the plane's: every file becomes
 * readable and every directory searchable by all, whatever modes the archive (or the plane's umask) gave
 * them. Nothing is made writable; symbolic links are left alone (they have no mode of their own).
 */
async function readableByAll(path: string): Promise<void> {
  const st = await lstat(path);
  if (st.isSymbolicLink()) return;
  const wanted = (st.mode & 0o7777) | (st.isDirectory() ? 0o555 : 0o444);
  if (wanted !== (st.mode & 0o7777)) await chmod(path, wanted);
  if (!st.isDirectory()) return;
  for (const name of await readdir(path)) await readableByAll(join(path, name));
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
