// The replica sandbox: how the process driver runs a replica inside bubblewrap (its own user, PID, IPC,
// UTS and cgroup namespaces; an unprivileged uid on the host; the package read-only at /app; one private
// writable directory; the runtime's files read-only; nothing else of the host), the plane's start-up
// self-test, the compile cache replicas share read-only, and the environment allowlist.

import { type SpawnOptions, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, realpathSync } from "node:fs";
import { chmod, chown, lstat, mkdir, readdir, realpath, rename, rm, stat, writeFile } from "node:fs/promises";
import { dirname, join, resolve, sep } from "node:path";
import type { EgressPolicy } from "../core/domain.ts";
import type { SandboxReport } from "../core/snapshot.ts";

export const BWRAP_PATH = "/usr/bin/bwrap";
/** `nobody`: the host uid (and gid) replicas run as when the plane runs as root, unless told otherwise. */
export const SANDBOX_UID = 65534;
/** Where a sandboxed replica sees its package (as in truss and Baseten containers) and runs. */
export const APP_DIR = "/app";
/**
 * Where a sandboxed replica sees its private directory: its HOME and TMPDIR (`/tmp` points there too, unless
 * Meridian is installed under /tmp: then /tmp is a tmpfs of the sandbox's own).
 */
export const HOME_DIR = "/home/replica";
/** Where a sandboxed replica sees its secrets, one file per name, as truss provides them. */
export const SECRETS_DIR = "/secrets";
/**
 * Where a sandboxed replica sees the virtualenv it runs on. A fixed path, not the host's: a plane's data
 * directory may sit under /tmp, which is the private directory's symlink inside. The interpreter finds
 * the virtualenv's prefix from where its `bin/python` is, so it runs from here unchanged.
 */
export const VENV_DIR = "/opt/meridian/venv";
/** The runtime's Unix socket under egress `deny`, as the replica sees it. */
export const LISTEN_SOCKET = `${HOME_DIR}/.meridian.sock`;
/** PATH inside the sandbox: only what exists there (the host's /usr). */
export const SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/** The longest `sun_path` Linux accepts, without its terminating NUL (unix(7)). */
export const MAX_SOCKET_PATH_BYTES = 107;
/** /dev/shm of a replica: a tmpfs of this size (Docker's default), for Python's multiprocessing and the like. */
const SHM_BYTES = 64 * 1024 * 1024;
/** /tmp of a replica when the installation itself sits under /tmp (see bwrapArguments): a tmpfs this size. */
const TMP_BYTES = 256 * 1024 * 1024;

/** The installation the runtime is loaded from: `bin/meridian.js` and what it imports. */
export const INSTALL_ROOT = resolve(import.meta.dirname, "../..");
/** The parts of the installation a replica's runtime loads; never the root itself, where `.meridian/` sits. */
const INSTALL_PARTS = ["bin", "src", "node_modules", "package.json", "tsconfig.json"];
/** Host files a replica may read: name resolution, CA certificates, the dynamic linker's cache, time zones. */
const ETC_FILES = [
  "/etc/ssl",
  "/etc/ca-certificates",
  "/etc/ca-certificates.conf",
  "/etc/resolv.conf",
  "/etc/hosts",
  "/etc/nsswitch.conf",
  "/etc/host.conf",
  "/etc/gai.conf",
  "/etc/ld.so.cache",
  "/etc/localtime",
  "/etc/alternatives",
];
/** Top-level directories that are symlinks into /usr on merged-/usr systems, real directories elsewhere. */
const ROOT_LINKS = ["/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32"];
/** Variables a replica takes from the plane's environment; everything else of the plane's stays out. */
const INHERITED_VARIABLES = ["LANG", "TZ"];

/** A read-only bind: `source` on the host (symlinks resolved) seen at `dest` in the sandbox. */
export interface Bind {
  source: string;
  dest: string;
}

/** What every sandbox of a plane shares: the runtime's files, the user database, the compile cache. */
export interface SandboxLayout {
  uid: number;
  gid: number;
  /** Read-only binds, in order. */
  binds: Bind[];
  /** Symlinks to create (`/lib` → `usr/lib` on merged-/usr systems). */
  symlinks: Array<{ target: string; path: string }>;
  /** Host files bound on /etc/passwd and /etc/group (they name the sandbox uid). */
  passwd: string;
  group: string;
  /** Host directory of the prepared compile cache, bound read-only where tsx looks for it. */
  compileCache: string;
}

/** One replica's own mounts. */
export interface ReplicaMounts {
  packageDir: string;
  privateDir: string;
  /** `deny`: a network namespace of its own, with loopback only. */
  egress: EgressPolicy;
  /** Only the self-test's warm-up writes the compile cache; replicas get it read-only. */
  cacheWritable?: boolean;
  /** File descriptor bwrap writes `{"child-pid": N}` to. */
  infoFd?: number;
  /** More host paths the replica reads, each bound read-only at its own path (an interpreter, a virtualenv). */
  readOnly?: string[];
  /** The replica's secrets directory on the host, bound read-only at /secrets. */
  secretsDir?: string;
  /** The virtualenv the replica runs on (host path), bound read-only at VENV_DIR. */
  venv?: string;
}

/**
 * The bwrap command line of one replica, before `--` and its argv. Pure: the layout and mounts decide it.
 * Order matters to bwrap: mounts are made in order and `--remount-ro /` comes last.
 */
export function bwrapArguments(layout: SandboxLayout, replica: ReplicaMounts): string[] {
  const args = [
    "--unshare-user",
    "--unshare-pid",
    "--unshare-ipc",
    "--unshare-uts",
    "--unshare-cgroup-try",
    ...(replica.egress === "deny" ? ["--unshare-net"] : []),
    // Nested user namespaces would give the model capabilities over namespaces of its own: attack surface.
    "--disable-userns",
    "--die-with-parent",
    // setsid(): no controlling terminal to inject input into (TIOCSTI).
    "--new-session",
    "--uid",
    String(layout.uid),
    "--gid",
    String(layout.gid),
    "--hostname",
    "replica",
    "--proc",
    "/proc",
    "--dev",
    "/dev",
    "--perms",
    "1777",
    "--size",
    String(SHM_BYTES),
    "--tmpfs",
    "/dev/shm",
  ];
  // An installation (or the Node.js it runs on, an interpreter) under /tmp is bound at its own path there,
  // so /tmp cannot be the symlink to the private directory: it is a tmpfs of its own, made first so the
  // binds land in it, and TMPDIR still names the private directory.
  const tmpBound = [...layout.binds.map((b) => b.dest), ...(replica.readOnly ?? [])].some(
    (d) => d === "/tmp" || d.startsWith("/tmp/"),
  );
  if (tmpBound) args.push("--perms", "1777", "--size", String(TMP_BYTES), "--tmpfs", "/tmp");
  for (const b of layout.binds) args.push("--ro-bind", b.source, b.dest);
  for (const s of layout.symlinks) args.push("--symlink", s.target, s.path);
  for (const path of replica.readOnly ?? []) args.push("--ro-bind", path, path);
  args.push("--ro-bind", layout.passwd, "/etc/passwd", "--ro-bind", layout.group, "/etc/group");
  args.push("--ro-bind", replica.packageDir, APP_DIR, "--bind", replica.privateDir, HOME_DIR);
  if (replica.secretsDir !== undefined) args.push("--ro-bind", replica.secretsDir, SECRETS_DIR);
  if (replica.venv !== undefined) args.push("--ro-bind", replica.venv, VENV_DIR);
  // tsx keeps compiled files in `${os.tmpdir()}/tsx-${euid}`; TMPDIR is the private directory.
  args.push(
    replica.cacheWritable === true ? "--bind" : "--ro-bind",
    layout.compileCache,
    `${HOME_DIR}/tsx-${layout.uid}`,
  );
  if (!tmpBound) args.push("--symlink", HOME_DIR.slice(1), "/tmp");
  args.push("--chdir", APP_DIR);
  if (replica.infoFd !== undefined) args.push("--info-fd", String(replica.infoFd));
  args.push("--remount-ro", "/");
  return args;
}

/**
 * A replica's environment: built from an allowlist, never inherited. The plane's LANG and TZ, the PATH
 * given, HOME and TMPDIR on the private directory, then the replica's own variables (the spec's: its
 * identity; the runtime adds the package's `environment_variables` itself).
 */
export function replicaEnvironment(input: {
  plane: Readonly<Record<string, string | undefined>>;
  path: string;
  home: string;
  tmpdir: string | null;
  own: Readonly<Record<string, string>>;
}): Record<string, string> {
  const env: Record<string, string> = {};
  for (const name of INHERITED_VARIABLES) {
    const value = input.plane[name];
    if (value !== undefined) env[name] = value;
  }
  env["PATH"] = input.path;
  env["HOME"] = input.home;
  if (input.tmpdir !== null) env["TMPDIR"] = input.tmpdir;
  return { ...env, ...input.own };
}

/** The bound path that holds `path` (or is it); null when none does. Sources are real paths. */
export function bindHolding(binds: readonly Bind[], path: string): Bind | null {
  for (const b of binds) {
    if (path === b.source || path.startsWith(b.source.endsWith(sep) ? b.source : b.source + sep)) return b;
  }
  return null;
}

/** Whether a directory with this mode and owner lets `uid`/`gid` through (search permission). */
export function searchable(
  st: { mode: number; uid: number; gid: number },
  uid: number,
  gid: number,
): boolean {
  if (uid === 0) return true;
  if (st.uid === uid) return (st.mode & 0o100) !== 0;
  if (st.gid === gid) return (st.mode & 0o010) !== 0;
  return (st.mode & 0o001) !== 0;
}

/** Whether `uid`/`gid` may list and enter a directory with this mode and owner. */
export function readableDirectory(
  st: { mode: number; uid: number; gid: number },
  uid: number,
  gid: number,
): boolean {
  if (uid === 0) return true;
  const bits = st.uid === uid ? (st.mode >> 6) & 7 : st.gid === gid ? (st.mode >> 3) & 7 : st.mode & 7;
  return (bits & 5) === 5;
}

/** The host path of a replica's socket: short (the 108-byte limit), one per replica id. */
export function socketName(replicaId: string): string {
  return `${createHash("sha256").update(replicaId).digest("hex").slice(0, 16)}.sock`;
}

/** How a run is spawned: the file, its arguments and spawn options; extra stdio entries follow fd 2. */
export interface SpawnPlan {
  file: string;
  args: string[];
  cwd: string;
  env: Record<string, string>;
  uid?: number;
  gid?: number;
  /** `info`: fd 3 carries bwrap's `{"child-pid"}`; `lifeline`: fd 3 is the replica's lifeline (none mode). */
  fd3: "info" | "lifeline";
}

/** A replica's place on the host: its private directory, and (egress deny) its socket paths. */
export interface ReplicaRoom {
  id: string;
  /** Host path of the private directory (HOME, TMPDIR). */
  privateDir: string;
  socket: {
    /** Where the runtime listens, as the replica sees it. */
    listen: string;
    /** Where that socket appears on the host, in the private directory (the replica controls it). */
    inPrivate: string;
    /** Where the plane moves it and connects (a directory only the plane can write). */
    host: string;
  };
  /**
   * The replica's secrets: a directory the plane writes at each start (src/plane/secrets.ts) and then
   * seals (sealSecrets), and where the replica sees it (/secrets in a sandbox).
   */
  secrets: { host: string; inside: string };
}

/** Why a replica cannot run here; the driver marks it FAILED with the message. */
export class SandboxRefusal extends Error {
  override name = "SandboxRefusal";
}

export interface LaunchRequest {
  argv: string[];
  /** The replica's own variables (the spec's env, placeholders filled). */
  env: Record<string, string>;
  packageDir: string;
  egress: EgressPolicy;
  /** Host paths the replica reads besides the runtime's (an interpreter's tree, a virtualenv). */
  readOnly?: string[];
  /** Whether the replica's secrets directory (sealed) is bound at /secrets. */
  secrets?: boolean;
  /** A virtualenv (host path) the replica runs on. */
  venv?: string;
}

/** How the process driver runs replicas; one per plane, chosen at start-up. */
export interface ReplicaSandbox {
  readonly report: SandboxReport;
  /** Where a replica sees the virtualenv of LaunchRequest.venv; null: at its host path. */
  readonly venvDir: string | null;
  /** Creates the replica's private directory; throws SandboxRefusal when replicas cannot run. */
  open(replicaId: string): Promise<ReplicaRoom>;
  /** The spawn of one run; throws SandboxRefusal for a replica this sandbox cannot run as asked. */
  plan(room: ReplicaRoom, request: LaunchRequest): Promise<SpawnPlan>;
  /**
   * Once the plane has written the replica's secrets: the directory (0500) and its files (0400) become
   * the replica's host uid's, so that only the replica reads them (the plane's data directory, where they
   * are, is in no other replica's view).
   */
  sealSecrets(room: ReplicaRoom): Promise<void>;
  /** Removes the private directory, secrets and socket of a replica that is gone. */
  close(room: ReplicaRoom): Promise<void>;
}

export interface SandboxOptions {
  /** The plane's data directory; the sandbox keeps its files in `{dataDir}/sandbox/`. */
  dataDir: string;
  /** Where replicas take LANG and TZ from (nothing else of it). */
  planeEnv: Readonly<Record<string, string | undefined>>;
  /** Host uid and gid of replicas when the plane runs as root. Default 65534 (nobody). */
  uid?: { uid: number; gid: number };
  bwrapPath?: string;
  /** Self-test time limit per step. Default 30 s (the warm-up compiles the runtime). */
  selfTestTimeoutMs?: number;
  /**
   * Host trees replicas may be given read-only besides the runtime's (the installations of the Python
   * interpreters the plane found), checked at the self-test like the runtime's: a closed directory above
   * one makes bwrap run as root, as for the installation.
   */
  readOnly?: string[];
}

interface Dirs {
  root: string;
  replicas: string;
  sockets: string;
  secrets: string;
}

function sandboxDirs(dataDir: string): Dirs {
  const root = join(dataDir, "sandbox");
  return {
    root,
    replicas: join(root, "replicas"),
    sockets: join(root, "sockets"),
    secrets: join(root, "secrets"),
  };
}

/** The private directory (mode 0700, owned by the replica's uid) of one replica, and its socket paths. */
async function makeRoom(
  dirs: Dirs,
  replicaId: string,
  owner: { uid: number; gid: number } | null,
  sandboxed = true,
) {
  const privateDir = join(dirs.replicas, replicaId);
  await mkdir(privateDir, { recursive: true, mode: 0o700 });
  if (owner !== null) await chown(privateDir, owner.uid, owner.gid);
  await chmod(privateDir, 0o700);
  const room: ReplicaRoom = {
    id: replicaId,
    privateDir,
    socket: {
      listen: LISTEN_SOCKET,
      inPrivate: join(privateDir, LISTEN_SOCKET.slice(HOME_DIR.length + 1)),
      host: join(dirs.sockets, socketName(replicaId)),
    },
    secrets: {
      host: join(dirs.secrets, replicaId),
      inside: sandboxed ? SECRETS_DIR : join(dirs.secrets, replicaId),
    },
  };
  return room;
}

async function removeRoom(room: ReplicaRoom): Promise<void> {
  await rm(room.socket.host, { force: true });
  await removeTree(room.secrets.host);
  await removeTree(room.privateDir);
}

/** The replica's secrets directory (0500) and files (0400), owned by `owner` (null: the plane). */
async function sealSecretsDir(dir: string, owner: { uid: number; gid: number } | null): Promise<void> {
  const st = await lstat(dir);
  if (!st.isDirectory()) throw new Error(`${dir} is not a directory`);
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const file = join(dir, entry.name);
    if (!entry.isFile()) throw new Error(`${file} is not a regular file`);
    if (owner !== null) await chown(file, owner.uid, owner.gid);
    await chmod(file, 0o400);
  }
  if (owner !== null) await chown(dir, owner.uid, owner.gid);
  await chmod(dir, 0o500);
}

/** rm -rf that also gets through directories a replica made unwritable (a plane not running as root). */
async function removeTree(path: string): Promise<void> {
  try {
    await rm(path, { recursive: true, force: true });
  } catch {
    await makeWritable(path);
    await rm(path, { recursive: true, force: true });
  }
}

async function makeWritable(path: string): Promise<void> {
  const st = await lstat(path).catch(() => null);
  if (st === null || !st.isDirectory()) return;
  await chmod(path, 0o700).catch(() => {});
  for (const name of await readdir(path).catch(() => [])) await makeWritable(join(path, name));
}

/**
 * Moves the runtime's socket out of the replica's reach before the plane ever connects to it: the replica
 * controls its private directory and could put a symlink there that sends the plane's traffic to any
 * socket on the host. rename() moves the entry itself (never what a symlink points to) into a directory
 * only the plane writes, where lstat() then proves it is a socket. Returns false while it does not exist.
 */
export async function adoptSocket(room: ReplicaRoom): Promise<boolean> {
  try {
    await rename(room.socket.inPrivate, room.socket.host);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return false;
    throw err;
  }
  const st = await lstat(room.socket.host);
  if (!st.isSocket()) {
    // Whatever it is (a directory full of links, say), it is removed as entries, never followed.
    await rm(room.socket.host, { recursive: true, force: true });
    throw new SandboxRefusal(`the replica put a ${fileKind(st)} where its Unix socket belongs; refused`);
  }
  return true;
}

function fileKind(st: { isSymbolicLink(): boolean; isDirectory(): boolean; isFile(): boolean }): string {
  if (st.isSymbolicLink()) return "symbolic link";
  if (st.isDirectory()) return "directory";
  return st.isFile() ? "regular file" : "special file";
}

/** Which uid and gid replicas run as on the host: the plane's own unless it is root. */
export function hostIds(
  planeUid: number,
  planeGid: number,
  wanted: { uid: number; gid: number } | undefined,
): { uid: number; gid: number; drop: boolean } {
  if (planeUid !== 0) return { uid: planeUid, gid: planeGid, drop: false };
  const ids = wanted ?? { uid: SANDBOX_UID, gid: SANDBOX_UID };
  return { ...ids, drop: true };
}

/**
 * Chooses and prepares the plane's sandbox. `bwrap` runs the self-test (and warms the compile cache);
 * when it fails, the result is `unavailable`: it refuses every replica with the reason. `none` runs
 * replicas as plain child processes, as the operator asked.
 */
export async function prepareSandbox(
  mode: "bwrap" | "none",
  options: SandboxOptions,
): Promise<ReplicaSandbox> {
  await mkdir(options.dataDir, { recursive: true });
  // Private directories and secrets of a previous run: its replicas are gone (they die with their plane).
  await removeTree(sandboxDirs(options.dataDir).replicas);
  await removeTree(sandboxDirs(options.dataDir).secrets);
  if (mode === "none") return new Unsandboxed(options);
  const bwrap = new BwrapSandbox(options);
  const failure = await bwrap.selfTest();
  if (failure === null) return bwrap;
  return new UnavailableSandbox(
    `bubblewrap cannot run replicas: ${failure}. Install bubblewrap (Debian: apt-get install bubblewrap), ` +
      "or start the plane with --sandbox none to run replicas without a sandbox.",
  );
}

/** bwrap is missing or failed its self-test: every replica is refused with the reason. */
export class UnavailableSandbox implements ReplicaSandbox {
  readonly report: SandboxReport;
  readonly venvDir = null;

  constructor(readonly reason: string) {
    this.report = { mode: "unavailable", detail: reason };
  }

  async open(): Promise<ReplicaRoom> {
    throw new SandboxRefusal(`The plane refuses to start replicas: ${this.reason}`);
  }

  async plan(): Promise<SpawnPlan> {
    throw new SandboxRefusal(`The plane refuses to start replicas: ${this.reason}`);
  }

  async sealSecrets(): Promise<void> {}

  async close(): Promise<void> {}
}

export const UNSANDBOXED_WARNING =
  "replicas run without a sandbox (--sandbox none): a model's code can read the plane's data directory, " +
  "its credential and every other replica's files";

/**
 * `--sandbox none`: a replica is a plain child process in its package directory, as the plane's user,
 * still with the allowlisted environment and a private HOME; its lifeline (fd 3) ends it when the plane
 * is gone. Egress `deny` cannot be kept without a network namespace, so such a replica is refused.
 */
export class Unsandboxed implements ReplicaSandbox {
  readonly report: SandboxReport = { mode: "none", detail: UNSANDBOXED_WARNING };
  readonly venvDir = null;
  readonly #dirs: Dirs;
  readonly #planeEnv: SandboxOptions["planeEnv"];

  constructor(options: SandboxOptions) {
    this.#dirs = sandboxDirs(options.dataDir);
    this.#planeEnv = options.planeEnv;
  }

  async open(replicaId: string): Promise<ReplicaRoom> {
    await mkdir(this.#dirs.replicas, { recursive: true, mode: 0o700 });
    await mkdir(this.#dirs.secrets, { recursive: true, mode: 0o700 });
    return makeRoom(this.#dirs, replicaId, null, false);
  }

  sealSecrets(room: ReplicaRoom): Promise<void> {
    return sealSecretsDir(room.secrets.host, null);
  }

  async plan(room: ReplicaRoom, request: LaunchRequest): Promise<SpawnPlan> {
    if (request.egress === "deny") {
      throw new SandboxRefusal(
        "Egress deny needs the sandbox's network namespace, and this plane runs replicas without one " +
          "(--sandbox none); run it on a plane with --sandbox bwrap",
      );
    }
    const [file, ...args] = request.argv;
    return {
      file: file!,
      args,
      cwd: request.packageDir,
      // TMPDIR stays the host's: the runtime's compile cache there is shared, as it was before sandboxes.
      env: replicaEnvironment({
        plane: this.#planeEnv,
        path: this.#planeEnv["PATH"] ?? SANDBOX_PATH,
        home: room.privateDir,
        tmpdir: null,
        own: request.env,
      }),
      fd3: "lifeline",
    };
  }

  close(room: ReplicaRoom): Promise<void> {
    return removeRoom(room);
  }
}

/** Replicas inside bubblewrap. */
export class BwrapSandbox implements ReplicaSandbox {
  #report: SandboxReport = { mode: "bwrap", detail: null };
  readonly venvDir = VENV_DIR;
  readonly #options: SandboxOptions;
  readonly #dirs: Dirs;
  readonly #bwrap: string;
  #ids: { uid: number; gid: number; drop: boolean };
  #layout: SandboxLayout | null = null;

  constructor(options: SandboxOptions) {
    this.#options = options;
    this.#dirs = sandboxDirs(options.dataDir);
    this.#bwrap = options.bwrapPath ?? BWRAP_PATH;
    this.#ids = hostIds(process.getuid?.() ?? 0, process.getgid?.() ?? 0, options.uid);
  }

  get uid(): number {
    return this.#ids.uid;
  }

  get report(): SandboxReport {
    return this.#report;
  }

  /** Whether replicas run as the unprivileged host uid (false: root outside their user namespace). */
  get dropsHostUid(): boolean {
    return this.#ids.drop;
  }

  get layout(): SandboxLayout {
    if (this.#layout === null) throw new Error("the sandbox was not prepared (selfTest)");
    return this.#layout;
  }

  /**
   * Prepares the shared files and proves the sandbox works: a replica's exact flags (egress deny, the
   * superset) run a trivial Node program that checks its mounts; then the runtime itself runs once with
   * the compile cache writable, so every replica after it starts warm. Returns why it failed, or null.
   */
  async selfTest(): Promise<string | null> {
    try {
      if (!existsSync(this.#bwrap)) return `${this.#bwrap} does not exist`;
      const dataDir = await realpath(this.#options.dataDir);
      const binds = runtimeBinds();
      for (const path of this.#options.readOnly ?? []) {
        const source = await realpath(path).catch(() => null);
        if (source !== null && bindHolding(binds, source) === null) binds.push({ source, dest: source });
      }
      const held = bindHolding(binds, dataDir);
      if (held !== null) {
        return `the plane's data directory ${dataDir} is inside ${held.source}, which replicas see; choose a --data-dir outside it`;
      }
      if (this.#ids.drop) await this.#chooseHostUid(dataDir, binds);
      const layout = await this.#prepareLayout(dataDir, binds);
      this.#layout = layout;
      const test = join(this.#dirs.root, "selftest");
      await removeTree(test);
      await mkdir(join(test, "app"), { recursive: true, mode: 0o755 });
      await chmod(test, 0o755);
      await chmod(join(test, "app"), 0o755);
      const room = await makeRoom(
        { ...this.#dirs, replicas: test },
        "home",
        this.#ids.drop ? this.#ids : null,
      );
      const mounts = { packageDir: join(test, "app"), privateDir: room.privateDir, egress: "deny" as const };
      const probe = await this.#run(bwrapArguments(layout, mounts), [process.execPath, "-e", SELF_TEST_JS]);
      if (probe.code !== 0 || !probe.stdout.includes("sandbox ok")) {
        return `the self-test sandbox failed (${describeExit(probe)}): ${probe.stderr.trim().slice(-600) || probe.stdout.trim().slice(-600)}`;
      }
      const warm = await this.#run(bwrapArguments(layout, { ...mounts, cacheWritable: true }), [
        process.execPath,
        join(INSTALL_ROOT, "bin", "meridian.js"),
        "serve-model",
        ".",
        "--listen",
        `unix:${LISTEN_SOCKET}`,
      ]);
      // The self-test package is empty on purpose: the runtime loads all its code, then refuses it (4).
      if (warm.code !== 4 || !warm.stdout.concat(warm.stderr).includes("invalid model package")) {
        return `Meridian's runtime does not start in the sandbox (${describeExit(warm)}): ${warm.stderr.trim().slice(-600)}`;
      }
      await sealCache(layout.compileCache);
      await removeTree(test);
      return null;
    } catch (err) {
      return err instanceof Error ? err.message : String(err);
    }
  }

  async open(replicaId: string): Promise<ReplicaRoom> {
    return makeRoom(this.#dirs, replicaId, this.#ids.drop ? this.#ids : null);
  }

  sealSecrets(room: ReplicaRoom): Promise<void> {
    return sealSecretsDir(room.secrets.host, this.#ids.drop ? this.#ids : null);
  }

  async plan(room: ReplicaRoom, request: LaunchRequest): Promise<SpawnPlan> {
    const layout = this.layout;
    const packageDir = await realpath(request.packageDir);
    if (this.#ids.drop && bindHolding(layout.binds, packageDir) === null) {
      const closed = await this.#closedAbove(packageDir);
      if (closed !== null) throw new SandboxRefusal(closed);
    }
    const st = await stat(packageDir);
    const host = this.#ids.drop ? this.#ids : { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 };
    if (!st.isDirectory() || !readableDirectory(st, host.uid, host.gid)) {
      throw new SandboxRefusal(
        `the package directory ${packageDir} (mode ${(st.mode & 0o777).toString(8).padStart(4, "0")}) cannot be read by the sandbox uid ${host.uid}`,
      );
    }
    if (request.egress === "deny") {
      const bytes = Buffer.byteLength(room.socket.host);
      if (bytes > MAX_SOCKET_PATH_BYTES) {
        throw new SandboxRefusal(
          `the replica's Unix socket would be ${room.socket.host} (${bytes} bytes), longer than the ${MAX_SOCKET_PATH_BYTES} bytes a socket path may have; give the plane a shorter --data-dir`,
        );
      }
    }
    const readOnly: string[] = [];
    for (const path of request.readOnly ?? []) {
      const source = await realpath(path);
      if (bindHolding(layout.binds, source) !== null || readOnly.includes(source)) continue;
      if (this.#ids.drop) {
        const closed = await this.#closedAbove(source);
        if (closed !== null) throw new SandboxRefusal(closed);
      }
      readOnly.push(source);
    }
    const mounts: ReplicaMounts = {
      packageDir,
      privateDir: room.privateDir,
      egress: request.egress,
      infoFd: 3,
      readOnly,
      ...(request.secrets === true ? { secretsDir: room.secrets.host } : {}),
      ...(request.venv !== undefined ? { venv: await this.#reachable(request.venv) } : {}),
    };
    return {
      file: this.#bwrap,
      args: [...bwrapArguments(layout, mounts), "--", ...request.argv],
      // bwrap itself starts as the sandbox uid, which may not be able to reach the plane's working directory.
      cwd: "/",
      // bwrap's own environment is the replica's: it is what PID 1 in the sandbox shows in /proc/1/environ.
      env: replicaEnvironment({
        plane: this.#options.planeEnv,
        path: SANDBOX_PATH,
        home: HOME_DIR,
        tmpdir: HOME_DIR,
        own: request.env,
      }),
      ...(this.#ids.drop ? { uid: this.#ids.uid, gid: this.#ids.gid } : {}),
      fd3: "info",
    };
  }

  close(room: ReplicaRoom): Promise<void> {
    return removeRoom(room);
  }

  /** A host path bwrap is to bind, resolved, refused when the sandbox uid cannot reach it. */
  async #reachable(path: string): Promise<string> {
    const source = await realpath(path);
    if (this.#ids.drop) {
      const closed = await this.#closedAbove(source);
      if (closed !== null) throw new SandboxRefusal(closed);
    }
    return source;
  }

  /**
   * A plane running as root starts bwrap as the unprivileged host uid, so that a replica is nobody on the
   * host as well as in its namespace. bwrap then resolves every bind as that uid, so every directory above
   * the data directory and the runtime's paths must let it through. Where one does not (a home directory
   * of mode 0700 above the installation or the data directory, as with `meridian up` run by root in
   * ~/project), bwrap runs as root instead and the replica is uid 65534 only inside its own user
   * namespace: still no capability, no new privileges, no user namespace of its own, the same mounts;
   * the sandbox report says which directory chose this and how to get the host uid back.
   */
  async #chooseHostUid(dataDir: string, binds: readonly Bind[]): Promise<void> {
    for (const path of [join(dataDir, "sandbox"), ...binds.map((b) => b.source)]) {
      const closed = await this.#closedAbove(path);
      if (closed === null) continue;
      this.#ids = { ...this.#ids, drop: false };
      this.#report = {
        mode: "bwrap",
        detail:
          `replicas run as uid ${this.#ids.uid} inside their user namespace but as root (without capabilities) ` +
          `on the host, because ${closed}. For host uid ${this.#ids.uid} as well, let it through or move the plane there.`,
      };
      return;
    }
  }

  /**
   * Why the sandbox uid cannot reach `path`, or null when it can. The plane's own directories (its data
   * directory and below) are given search permission; above them the operator decides.
   */
  async #closedAbove(path: string): Promise<string | null> {
    const { uid, gid } = this.#ids;
    const dataDir = await realpath(this.#options.dataDir);
    let dir = dirname(path);
    for (;;) {
      let st = await stat(dir);
      const own = dir === dataDir || dir.startsWith(dataDir + sep);
      if (!searchable(st, uid, gid) && own) {
        await searchOnly(dir);
        st = await stat(dir);
      }
      if (!searchable(st, uid, gid)) {
        return `${dir} (mode ${(st.mode & 0o777).toString(8).padStart(4, "0")}, owner ${st.uid}) does not let uid ${uid} through to ${path} (chmod o+x ${dir}, or a --data-dir it can reach)`;
      }
      if (dir === dirname(dir)) return null;
      dir = dirname(dir);
    }
  }

  /** The shared files under `{dataDir}/sandbox/`, and the binds of the runtime's paths. */
  async #prepareLayout(dataDir: string, binds: Bind[]): Promise<SandboxLayout> {
    const { root, replicas, sockets } = this.#dirs;
    const { uid, gid } = this.#ids;
    // The plane's own directories above the private ones let the sandbox uid through (search only, no
    // listing); the sockets the plane connects to stay in a directory only the plane can enter.
    await searchOnly(dataDir);
    await mkdir(replicas, { recursive: true });
    await searchOnly(root);
    await searchOnly(replicas);
    await mkdir(sockets, { recursive: true, mode: 0o700 });
    await chmod(sockets, 0o700);
    // bwrap (as the sandbox uid) resolves a replica's secrets directory through here; nothing lists it.
    await mkdir(this.#dirs.secrets, { recursive: true });
    await searchOnly(this.#dirs.secrets);
    await chmod(this.#dirs.secrets, 0o711);
    for (const name of await readdir(sockets)) await rm(join(sockets, name), { force: true });
    const etc = join(root, "etc");
    await mkdir(etc, { recursive: true });
    await chmod(etc, 0o755);
    const passwd = join(etc, "passwd");
    const group = join(etc, "group");
    await writeFile(passwd, passwdFile(uid, gid), { mode: 0o644 });
    await writeFile(group, groupFile(gid), { mode: 0o644 });
    await chmod(passwd, 0o644);
    await chmod(group, 0o644);
    const compileCache = join(root, "compile-cache");
    await removeTree(compileCache);
    await mkdir(compileCache, { mode: 0o700 });
    if (this.#ids.drop) await chown(compileCache, uid, gid);
    return { uid, gid, binds, symlinks: rootSymlinks(), passwd, group, compileCache };
  }

  #run(bwrapArgs: string[], argv: string[]): Promise<RunResult> {
    const env = replicaEnvironment({
      plane: this.#options.planeEnv,
      path: SANDBOX_PATH,
      home: HOME_DIR,
      tmpdir: HOME_DIR,
      own: {},
    });
    const options: SpawnOptions = {
      cwd: "/",
      env,
      stdio: ["ignore", "pipe", "pipe"],
      ...(this.#ids.drop ? { uid: this.#ids.uid, gid: this.#ids.gid } : {}),
    };
    return runToEnd(
      this.#bwrap,
      [...bwrapArgs, "--", ...argv],
      options,
      this.#options.selfTestTimeoutMs ?? 30_000,
    );
  }
}

/** What the self-test's Node program checks from inside: its mounts are what a replica's must be. */
const SELF_TEST_JS = `
const fs = require("node:fs");
const os = require("node:os");
fs.writeFileSync(os.homedir() + "/probe", "1");
let appWritable = true;
try { fs.writeFileSync("/app/probe", "1"); } catch { appWritable = false; }
if (appWritable) { console.error("/app is writable"); process.exit(1); }
if (fs.readFileSync("/proc/1/cmdline", "utf8").length === 0) { console.error("no /proc of its own"); process.exit(1); }
console.log("sandbox ok");
`;

function passwdFile(uid: number, gid: number): string {
  const lines = [`replica:x:${uid}:${gid}:Meridian replica:${HOME_DIR}:/usr/sbin/nologin`];
  if (uid !== SANDBOX_UID)
    lines.push(`nobody:x:${SANDBOX_UID}:${SANDBOX_UID}:nobody:/nonexistent:/usr/sbin/nologin`);
  return `${lines.join("\n")}\n`;
}

function groupFile(gid: number): string {
  const lines = [`replica:x:${gid}:`];
  if (gid !== SANDBOX_UID) lines.push(`nogroup:x:${SANDBOX_UID}:`);
  return `${lines.join("\n")}\n`;
}

/** Adds search (x) permission for everyone to a directory the plane owns, never read or write. */
async function searchOnly(dir: string): Promise<void> {
  const st = await stat(dir);
  if ((st.mode & 0o111) !== 0o111) await chmod(dir, (st.mode & 0o7777) | 0o111);
}

/** After the warm-up: owned by the plane, readable by all, writable by no replica (it is bound read-only too). */
async function sealCache(dir: string): Promise<void> {
  const owner = { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 };
  const walk = async (path: string, isDir: boolean): Promise<void> => {
    await chown(path, owner.uid, owner.gid).catch(() => {});
    await chmod(path, isDir ? 0o755 : 0o644);
    if (!isDir) return;
    for (const entry of await readdir(path, { withFileTypes: true })) {
      if (entry.isSymbolicLink()) await rm(join(path, entry.name), { force: true });
      else await walk(join(path, entry.name), entry.isDirectory());
    }
  };
  await walk(dir, true);
}

/**
 * The runtime's read-only paths: the system (/usr, the Node.js installation, a few /etc files) and the
 * parts of Meridian's installation the runtime loads, each at the path it has on the host (symlinks
 * resolved first: `node_modules` may be one) so that imports resolve as they do outside.
 */
export function runtimeBinds(): Bind[] {
  const binds: Bind[] = [{ source: realpathSync("/usr"), dest: "/usr" }];
  for (const link of ROOT_LINKS) {
    if (!existsSync(link) || isSymlink(link)) continue;
    binds.push({ source: realpathSync(link), dest: link });
  }
  // The Node.js installation, when it is not under a path bound already (e.g. /opt/node-v20).
  const node = realpathSync(process.execPath);
  if (bindHolding(binds, node) === null) {
    const prefix = dirname(dirname(node));
    binds.push({ source: prefix, dest: prefix });
  }
  for (const file of ETC_FILES) {
    if (existsSync(file)) binds.push({ source: realpathSync(file), dest: file });
  }
  for (const part of INSTALL_PARTS) {
    const path = join(INSTALL_ROOT, part);
    if (existsSync(path)) binds.push({ source: realpathSync(path), dest: path });
  }
  return binds;
}

function rootSymlinks(): Array<{ target: string; path: string }> {
  const links: Array<{ target: string; path: string }> = [];
  for (const link of ROOT_LINKS) {
    if (existsSync(link) && isSymlink(link)) links.push({ target: readlinkRelative(link), path: link });
  }
  return links;
}

function isSymlink(path: string): boolean {
  try {
    return realpathSync(path) !== path;
  } catch {
    return false;
  }
}

/** `/lib` → `usr/lib`: the link's target relative to /, as the sandbox's root has the same layout. */
function readlinkRelative(path: string): string {
  const target = realpathSync(path);
  return target.startsWith("/") ? target.slice(1) : target;
}

interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

function describeExit(r: RunResult): string {
  if (r.timedOut) return "timed out";
  return r.signal !== null ? `killed by ${r.signal}` : `exit code ${r.code}`;
}

function runToEnd(
  file: string,
  args: string[],
  options: SpawnOptions,
  timeoutMs: number,
): Promise<RunResult> {
  return new Promise((resolve) => {
    let stdout = "";
    let stderr = "";
    let timedOut = false;
    const child = spawn(file, args, options);
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill("SIGKILL");
    }, timeoutMs);
    child.stdout?.setEncoding("utf8").on("data", (s: string) => {
      stdout = (stdout + s).slice(-8192);
    });
    child.stderr?.setEncoding("utf8").on("data", (s: string) => {
      stderr = (stderr + s).slice(-8192);
    });
    child.once("error", (err) => {
      clearTimeout(timer);
      resolve({ code: null, signal: null, stdout, stderr: `${stderr}${err.message}`, timedOut });
    });
    child.once("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, timedOut });
    });
  });
}
