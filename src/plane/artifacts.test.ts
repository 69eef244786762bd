import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import * as tar from "tar";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import type { ArtifactRef } from "../core/snapshot.ts";
import { ArtifactCache, ArtifactFetchError, unsafeEntryReason } from "./artifacts.ts";

const TOKEN = "plane-token-eu-1";

/** A stand-in for the control plane's artifact endpoint: a real HTTP server on a loopback port. */
interface Peer {
  url: string;
  artifacts: Map<string, { bytes: Buffer; delayMs?: number }>;
  requests: Array<{ url: string; authorization: string | undefined }>;
  server: Server;
}

async function startPeer(): Promise<Peer> {
  const artifacts = new Map<string, { bytes: Buffer; delayMs?: number }>();
  const requests: Peer["requests"] = [];
  const server = createServer((req, res) => {
    requests.push({ url: req.url ?? "", authorization: req.headers.authorization });
    if (req.headers.authorization !== `Bearer ${TOKEN}`) {
      res.writeHead(401, { "content-type": "application/json" }).end('{"error_code":"unauthorized"}');
      return;
    }
    const prefix = "/v1/internal/artifacts/";
    const artifact = req.url?.startsWith(prefix)
      ? artifacts.get(decodeURIComponent(req.url.slice(prefix.length)))
      : undefined;
    if (artifact === undefined) {
      res.writeHead(404).end('{"error_code":"artifact_not_found"}');
      return;
    }
    setTimeout(() => {
      res.writeHead(200, { "content-type": "application/gzip" });
      // Two writes, so the client sees the body in more than one chunk.
      const half = Math.floor(artifact.bytes.length / 2);
      res.write(artifact.bytes.subarray(0, half));
      res.end(artifact.bytes.subarray(half));
    }, artifact.delayMs ?? 0);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const { port } = server.address() as { port: number };
  return { url: `http://127.0.0.1:${port}`, artifacts, requests, server };
}

function refFor(key: string, bytes: Buffer): ArtifactRef {
  return { key, sha256: createHash("sha256").update(bytes).digest("hex"), size: bytes.length };
}

/** A real model package made with tar, as `meridian push` would upload it. */
async function buildPackage(work: string, marker: string): Promise<Buffer> {
  const src = await mkdtemp(join(work, "src-"));
  await writeFile(join(src, "config.yaml"), `model_name: ${marker}\n`);
  await mkdir(join(src, "model"));
  await writeFile(
    join(src, "model", "model.js"),
    "export class Model { load() {} predict(x) { return x; } }\n",
  );
  const file = join(work, `${marker}.tar.gz`);
  await tar.c({ gzip: true, file, cwd: src, portable: true }, ["config.yaml", "model"]);
  return readFile(file);
}

/** A hand-made tar.gz, for entries `tar.c` would never write (absolute paths, `..`). */
function rawTarGz(
  entries: Array<{ path: string; body?: string; type?: "File" | "SymbolicLink"; linkpath?: string }>,
) {
  const blocks: Buffer[] = [];
  for (const entry of entries) {
    const body = Buffer.from(entry.body ?? "");
    const type = entry.type ?? "File";
    const header = new tar.Header({
      path: entry.path,
      mode: 0o644,
      size: type === "File" ? body.length : 0,
      mtime: new Date(0),
      type,
      linkpath: entry.linkpath,
      uid: 0,
      gid: 0,
    });
    const block = Buffer.alloc(512);
    header.encode(block, 0);
    blocks.push(block);
    if (type === "File") blocks.push(body, Buffer.alloc((512 - (body.length % 512)) % 512));
  }
  blocks.push(Buffer.alloc(1024));
  return gzipSync(Buffer.concat(blocks));
}

describe("ArtifactCache", () => {
  let peer: Peer;
  let work: string;
  let cacheDir: string;
  let pkg: Buffer;
  const caches: ArtifactCache[] = [];

  beforeAll(async () => {
    peer = await startPeer();
  });
  afterAll(async () => {
    await new Promise((r) => peer.server.close(r));
  });
  beforeEach(async () => {
    work = await mkdtemp(join(tmpdir(), "meridian-artifacts-"));
    cacheDir = join(work, "cache");
    peer.requests.length = 0;
    peer.artifacts.clear();
    pkg = await buildPackage(work, "hello");
  });
  afterEach(async () => {
    for (const cache of caches.splice(0)) await cache.stop();
    await rm(work, { recursive: true, force: true });
  });

  async function cache(token = TOKEN): Promise<ArtifactCache> {
    const c = new ArtifactCache({ dir: cacheDir, controlUrl: peer.url, planeToken: token, timeoutMs: 5_000 });
    caches.push(c);
    await c.start();
    return c;
  }

  async function cacheContents() {
    const list = async (d: string) => (existsSync(d) ? readdir(d) : []);
    return {
      blobs: await list(join(cacheDir, "blobs")),
      packages: await list(join(cacheDir, "packages")),
      tmp: await list(join(cacheDir, "tmp")),
    };
  }

  it("fetches with the plane's credential, verifies, extracts, and returns the package directory", async () => {
    const ref = refFor("sha256/abc def", pkg);
    peer.artifacts.set(ref.key, { bytes: pkg });
    const c = await cache();
    const dir = await c.ensure(ref);
    expect(dir).toBe(join(cacheDir, "packages", ref.sha256));
    expect(dir).toBe(c.packageDir(ref));
    expect(await readFile(join(dir, "config.yaml"), "utf8")).toBe("model_name: hello\n");
    expect(await readFile(join(dir, "model", "model.js"), "utf8")).toContain("class Model");
    expect(peer.requests).toEqual([
      { url: `/v1/internal/artifacts/${encodeURIComponent(ref.key)}`, authorization: `Bearer ${TOKEN}` },
    ]);
    expect(await cacheContents()).toEqual({
      blobs: [`${ref.sha256}.tar.gz`],
      packages: [ref.sha256],
      tmp: [],
    });
  });

  it("extracts a plain (uncompressed) tar as well, as the truss CLI uploads it under a .tgz name", async () => {
    const src = await mkdtemp(join(work, "plain-"));
    await writeFile(join(src, "config.yaml"), "model_name: plain\n");
    await mkdir(join(src, "model"));
    await writeFile(
      join(src, "model", "model.py"),
      "class Model:\n    def predict(self, x):\n        return x\n",
    );
    const file = join(work, "plain.tgz");
    await tar.c({ gzip: false, file, cwd: src, portable: true }, ["config.yaml", "model"]);
    const plain = await readFile(file);
    expect(plain.subarray(257, 262).toString()).toBe("ustar");
    const ref = refFor("uploads/t/plain.tgz", plain);
    peer.artifacts.set(ref.key, { bytes: plain });
    const dir = await (await cache()).ensure(ref);
    expect(await readFile(join(dir, "config.yaml"), "utf8")).toBe("model_name: plain\n");
    expect(await readFile(join(dir, "model", "model.py"), "utf8")).toContain("class Model");
  });

  it("extracts a package readable by all (a sandboxed replica reads it as another uid), never writable", async () => {
    const src = await mkdtemp(join(work, "private-"));
    await writeFile(join(src, "config.yaml"), "model_name: private\n", { mode: 0o600 });
    await mkdir(join(src, "model"), { mode: 0o700 });
    await writeFile(join(src, "model", "model.js"), "export class Model { predict(x) { return x; } }\n", {
      mode: 0o600,
    });
    const file = join(work, "private.tar.gz");
    await tar.c({ gzip: true, file, cwd: src, portable: true }, ["config.yaml", "model"]);
    const bytes = await readFile(file);
    const ref = refFor("private", bytes);
    peer.artifacts.set(ref.key, { bytes });
    const dir = await (await cache()).ensure(ref);
    const mode = async (p: string) => (await stat(join(dir, p))).mode & 0o777;
    expect(await mode("config.yaml")).toBe(0o644);
    expect(await mode("model")).toBe(0o755);
    expect(await mode("model/model.js")).toBe(0o644);
  });

  it("reuses a cached package without fetching again, also after a restart", async () => {
    const ref = refFor("k1", pkg);
    peer.artifacts.set(ref.key, { bytes: pkg });
    const first = await (await cache()).ensure(ref);
    expect(await (await cache()).ensure(ref)).toBe(first);
    const again = await cache();
    expect(await again.ensure(ref)).toBe(first);
    expect(peer.requests).toHaveLength(1);
  });

  it("fetches once for concurrent calls for the same artifact", async () => {
    const ref = refFor("k2", pkg);
    peer.artifacts.set(ref.key, { bytes: pkg, delayMs: 150 });
    const c = await cache();
    const dirs = await Promise.all(Array.from({ length: 6 }, () => c.ensure(ref)));
    expect(new Set(dirs).size).toBe(1);
    expect(peer.requests).toHaveLength(1);
  });

  it("stays consistent when two caches on one directory fetch the same artifact at once", async () => {
    const ref = refFor("k3", pkg);
    peer.artifacts.set(ref.key, { bytes: pkg, delayMs: 100 });
    const [a, b] = [await cache(), await cache()];
    const [da, db] = await Promise.all([a.ensure(ref), b.ensure(ref)]);
    expect(da).toBe(db);
    expect(await readFile(join(da, "config.yaml"), "utf8")).toBe("model_name: hello\n");
    expect(await cacheContents()).toEqual({
      blobs: [`${ref.sha256}.tar.gz`],
      packages: [ref.sha256],
      tmp: [],
    });
  });

  it("refuses bytes whose sha256 does not match, and caches nothing", async () => {
    const ref = { ...refFor("k4", pkg), sha256: "a".repeat(64) };
    peer.artifacts.set(ref.key, { bytes: pkg });
    const c = await cache();
    await expect(c.ensure(ref)).rejects.toMatchObject({
      name: "ArtifactFetchError",
      reason: "checksum_mismatch",
    });
    expect(await cacheContents()).toEqual({ blobs: [], packages: [], tmp: [] });
  });

  it("refuses bytes of the wrong size (too many or too few), and caches nothing", async () => {
    const c = await cache();
    const big = refFor("k5", pkg);
    peer.artifacts.set(big.key, { bytes: Buffer.concat([pkg, Buffer.from("extra")]) });
    await expect(c.ensure(big)).rejects.toMatchObject({ reason: "size_mismatch" });
    const small = refFor("k6", pkg);
    peer.artifacts.set(small.key, { bytes: pkg.subarray(0, pkg.length - 10) });
    await expect(c.ensure(small)).rejects.toMatchObject({ reason: "size_mismatch" });
    expect(await cacheContents()).toEqual({ blobs: [], packages: [], tmp: [] });
  });

  it("reports the control plane's refusal with its status", async () => {
    const ref = refFor("k7", pkg);
    peer.artifacts.set(ref.key, { bytes: pkg });
    await expect((await cache("wrong-token")).ensure(ref)).rejects.toMatchObject({
      reason: "http_status",
      status: 401,
    });
    await expect((await cache()).ensure(refFor("missing", pkg))).rejects.toMatchObject({ status: 404 });
    expect(await cacheContents()).toEqual({ blobs: [], packages: [], tmp: [] });
  });

  it("a failure does not poison later attempts", async () => {
    const ref = refFor("k8", pkg);
    const c = await cache();
    await expect(c.ensure(ref)).rejects.toBeInstanceOf(ArtifactFetchError);
    peer.artifacts.set(ref.key, { bytes: pkg });
    expect(await c.ensure(ref)).toBe(join(cacheDir, "packages", ref.sha256));
  });

  it.each([
    ["a .. entry", [{ path: "../escaped.txt", body: "x" }]],
    ["a nested .. entry", [{ path: "model/../../escaped.txt", body: "x" }]],
    ["an absolute entry", [{ path: `${"/tmp"}/meridian-escaped-${process.pid}.txt`, body: "x" }]],
    ["a symlink out of the package", [{ path: "model", type: "SymbolicLink" as const, linkpath: "/etc" }]],
  ])("refuses an archive with %s and extracts nothing", async (_name, entries) => {
    const bytes = rawTarGz([{ path: "config.yaml", body: "model_name: evil\n" }, ...entries]);
    const ref = refFor("evil", bytes);
    peer.artifacts.set(ref.key, { bytes });
    await expect((await cache()).ensure(ref)).rejects.toMatchObject({ reason: "unsafe_archive" });
    expect(existsSync(join(work, "escaped.txt"))).toBe(false);
    expect(existsSync(join(cacheDir, "escaped.txt"))).toBe(false);
    expect(existsSync(`/tmp/meridian-escaped-${process.pid}.txt`)).toBe(false);
    expect(await cacheContents()).toEqual({ blobs: [], packages: [], tmp: [] });
  });

  it("refuses bytes that are not a tar.gz", async () => {
    const bytes = Buffer.from("this is not an archive");
    const ref = refFor("junk", bytes);
    peer.artifacts.set(ref.key, { bytes });
    await expect((await cache()).ensure(ref)).rejects.toMatchObject({ reason: "invalid_archive" });
    expect((await cacheContents()).packages).toEqual([]);
  });

  it("refuses an invalid ref without a request", async () => {
    const c = await cache();
    await expect(c.ensure({ key: "k", sha256: "../../etc", size: 1 })).rejects.toMatchObject({
      reason: "invalid_ref",
    });
    await expect(c.ensure({ key: "k", sha256: "b".repeat(64), size: -1 })).rejects.toMatchObject({
      reason: "invalid_ref",
    });
    expect(peer.requests).toEqual([]);
  });
});

describe("unsafeEntryReason", () => {
  it.each([
    [{ path: "config.yaml", type: "File" }, null],
    [{ path: "model/", type: "Directory" }, null],
    [{ path: "model/weights..bin", type: "File" }, null],
    [{ path: "model/current", type: "SymbolicLink", linkpath: "v1/model.js" }, null],
    [{ path: "../x", type: "File" }, /\.\./],
    [{ path: "a/../../x", type: "File" }, /\.\./],
    [{ path: "a\\..\\x", type: "File" }, /\.\./],
    [{ path: "/etc/passwd", type: "File" }, /absolute/],
    [{ path: "C:/x", type: "File" }, /absolute/],
    [{ path: "l", type: "SymbolicLink", linkpath: "/etc" }, /absolute link target/],
    [{ path: "l", type: "SymbolicLink", linkpath: "../../etc" }, /link target/],
    [{ path: "h", type: "Link", linkpath: "config.yaml" }, /type Link/],
    [{ path: "dev", type: "CharacterDevice" }, /type/],
  ])("%j", (entry, want) => {
    const reason = unsafeEntryReason(entry);
    if (want === null) expect(reason).toBeNull();
    else expect(reason).toMatch(want);
  });
});
