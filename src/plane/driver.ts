// The replica driver: the one seam between a plane's agent and whatever runs replicas (`process`: child
// processes on this host; `kubernetes`: a Deployment + Service per replica). Declarative and idempotent,
// like the Kubernetes API it must fit: the agent says which replicas should exist, the driver converges.
//
// Choices that keep a Kubernetes driver possible without changing this file:
// - Every method is async: a cluster answers over the network (list() may be served from an informer).
// - ensure() resolves once the replica is accepted, not once it is READY; readiness arrives as events
//   and in list(). remove() resolves once the replica no longer runs (pods terminated).
// - The command is argv + env with placeholders the driver fills in: `{listen}` (where to listen: the
//   process driver gives 127.0.0.1 and a free port, or under egress `deny` a Unix socket; a Kubernetes
//   driver 0.0.0.0 and its container port), and `{host}` and `{port}` for commands that take them apart.
// - `egress` says whether the replica may open network connections (`deny`: the process driver's sandbox
//   gives it a network namespace of its own; a Kubernetes driver a NetworkPolicy).
// - The spec carries both the extracted `package_dir` (a local driver runs there) and the `artifact` it
//   came from (a cluster driver fetches it in an init container instead).
// - What a truss package needs is declared, not done by the agent: `python` (an interpreter for its
//   python_version with its requirements installed: the process driver builds a virtualenv on the plane
//   and fills `{python}`; a cluster driver would pick an image) and `secrets` (names fetched at each start
//   and seen at /secrets/{name}: the process driver writes a per-replica directory bound read-only, a
//   cluster driver would mount a Secret; `{secrets}` is that directory as the replica sees it).
// - Probes are HTTP GET paths answered 200 (readiness gates routing, liveness failures restart), which
//   map one to one onto Kubernetes probes; `fatal_exit_codes` map onto a container's last terminated
//   exit code.

import type { EgressPolicy, ReplicaState } from "../core/domain.ts";
import type { ArtifactRef } from "../core/snapshot.ts";

/**
 * What to run for a replica. `{listen}` anywhere in argv or env values becomes the address to listen on
 * (`host:port` or `unix:/path`); `{host}` and `{port}` its parts, for TCP only.
 */
export interface ReplicaCommand {
  /** argv[0] is the executable (looked up on PATH of the driver's base environment). */
  argv: string[];
  env: Record<string, string>;
}

/** Resource hints; the process driver ignores them, a Kubernetes driver turns them into requests/limits. */
export interface ReplicaResources {
  /** Kubernetes quantity, e.g. `500m`, `2`. */
  cpu?: string;
  /** Kubernetes quantity, e.g. `512Mi`. */
  memory?: string;
  gpu?: number;
}

export interface ReplicaSpec {
  /** Unique on the plane; `[A-Za-z0-9][A-Za-z0-9._-]{0,127}` (it names files and Kubernetes objects). */
  id: string;
  deployment_id: string;
  model_id: string;
  environment: string | null;
  /** The extracted model package; the working directory of the command. */
  package_dir: string;
  artifact: ArtifactRef | null;
  command: ReplicaCommand;
  /** `deny`: no network but loopback; the replica serves over `{listen}`, a Unix socket for the process driver. */
  egress: EgressPolicy;
  /** HTTP path answered 200 once the replica can serve (truss: `/v1/models/model`). */
  readiness_path: string;
  /** HTTP path answered 200 while the replica is alive (truss: `/`). */
  liveness_path: string;
  /**
   * Exit codes by which the command says retrying is pointless, each with its reason (Meridian's runtime:
   * 3 = model load() failed, 4 = invalid model package, 5 = custom server exited before ready). Exiting
   * with one before the first READY makes the replica FAILED, message led by the reason, with no restart.
   */
  fatal_exit_codes?: Record<number, string>;
  resources?: ReplicaResources;
  /**
   * A truss package's Python (`{python}` in the command is its interpreter): `python_version` as
   * config.yaml says (null: any Python 3.8+), and the normalised requirement set to install
   * (src/core/python.ts normalizeRequirements); a virtualenv not cached yet is built while the replica is
   * BUILDING, its output in the replica's logs (`build` lines). None fitting, or pip failing, makes the
   * replica BUILD_FAILED with the reason.
   */
  python?: ReplicaPython;
  /**
   * The secret names of the deployment's config.yaml: their values are fetched from the control plane at
   * every start (never kept in a spec or a snapshot) and seen by the replica as files `{secrets}/{name}`.
   * A name the team lacks makes the replica FAILED with a message naming it.
   */
  secrets?: string[];
}

export interface ReplicaPython {
  python_version: string | null;
  requirements: string[];
}

/** A replica as the driver observes it; a superset of the snapshot's ReplicaReport. */
export interface ReplicaStatus {
  id: string;
  deployment_id: string;
  model_id: string;
  environment: string | null;
  state: ReplicaState;
  /** `host:port` or `unix:/absolute/path` (egress deny) to send requests to; set only while READY. */
  endpoint: string | null;
  /** Why the replica is not READY (a probe failure, an exit code with the last log lines); null when READY. */
  message: string | null;
  /** How many times the driver restarted the replica's process. */
  restarts: number;
  /** ISO-8601 time the current process (container) started; null before the first start. */
  started_at: string | null;
}

export interface LogLine {
  /** ISO-8601 time the line was captured. */
  ts: string;
  /**
   * `driver` lines are the driver's own notes on the replica (exits, restarts), like Kubernetes events;
   * `build` lines are the output of preparing what it runs on (a virtualenv's pip install).
   */
  stream: "stdout" | "stderr" | "driver" | "build";
  line: string;
}

export interface LogQuery {
  /** Only lines captured at or after this time. */
  since?: Date;
  /** At most this many lines, the most recent ones (returned oldest first). */
  limit?: number;
}

export type ReplicaEvent =
  /** Sent whenever any field of a replica's status changes; `previous` is the state before (null: new). */
  | { type: "state"; replica: ReplicaStatus; previous: ReplicaState | null }
  /** The replica is gone (remove() finished). */
  | { type: "removed"; id: string; deployment_id: string };

export type ReplicaEventListener = (event: ReplicaEvent) => void;

export interface ReplicaDriver {
  /** Prepares the driver (directories, cluster clients). Call before anything else. */
  start(): Promise<void>;
  /** Stops every replica this driver runs and releases its resources; later calls to ensure() throw. */
  stop(): Promise<void>;
  /**
   * Makes the replica exist. Idempotent: an identical spec for a known id changes nothing (no restart; a
   * FAILED replica stays FAILED until removed); a different spec for the same id replaces the replica.
   * Throws on an invalid spec.
   */
  ensure(spec: ReplicaSpec): Promise<void>;
  /** Stops and forgets the replica; resolves once it no longer runs. Unknown ids are a no-op. */
  remove(id: string): Promise<void>;
  list(): Promise<ReplicaStatus[]>;
  /** The replica's captured output; empty for unknown ids. */
  logs(id: string, query?: LogQuery): Promise<LogLine[]>;
  /** Listens to state changes; returns the unsubscribe function. */
  subscribe(listener: ReplicaEventListener): () => void;
}

const REPLICA_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

/** The spec problems every driver refuses alike; null when the spec is valid. */
export function invalidSpecReason(spec: ReplicaSpec): string | null {
  if (!REPLICA_ID.test(spec.id)) return `replica id ${JSON.stringify(spec.id)} is not valid`;
  if (spec.command.argv.length === 0 || spec.command.argv[0] === "") return "command.argv is empty";
  for (const path of [spec.readiness_path, spec.liveness_path]) {
    if (!path.startsWith("/")) return `probe path ${JSON.stringify(path)} must start with /`;
  }
  if (spec.egress !== "allow" && spec.egress !== "deny") {
    return `egress ${JSON.stringify(spec.egress)} is neither allow nor deny`;
  }
  if (spec.command.argv[0] === "{python}" && spec.python === undefined) {
    return "the command runs {python} but the spec has no python";
  }
  if (spec.egress === "deny") {
    const values = [...spec.command.argv, ...Object.values(spec.command.env)];
    if (values.some((v) => v.includes("{host}") || v.includes("{port}"))) {
      return "under egress deny the command must take its address from {listen}, not {host} and {port}";
    }
  }
  return null;
}

/** Where a replica listens: a TCP address, or a Unix socket (absolute path). */
export type ListenAddress = { host: string; port: number } | { path: string };

/** `host:port` (`[v6]:port`) or `unix:/path`: the form of `{listen}` and of endpoints. */
export function formatListen(listen: ListenAddress): string {
  if ("path" in listen) return `unix:${listen.path}`;
  return listen.host.includes(":") ? `[${listen.host}]:${listen.port}` : `${listen.host}:${listen.port}`;
}

/**
 * Fills the `{listen}`, `{host}` and `{port}` placeholders of a command, and `{python}` and `{secrets}`
 * when the driver provides them (a spec with `python`; where the replica sees its secrets).
 */
export function renderCommand(
  command: ReplicaCommand,
  listen: ListenAddress,
  provided: { python?: string; secrets?: string } = {},
): ReplicaCommand {
  const address = formatListen(listen);
  const host = "path" in listen ? "" : listen.host;
  const port = "path" in listen ? "" : String(listen.port);
  const fill = (value: string) => {
    let out = value.replaceAll("{listen}", address).replaceAll("{host}", host).replaceAll("{port}", port);
    if (provided.python !== undefined) out = out.replaceAll("{python}", provided.python);
    if (provided.secrets !== undefined) out = out.replaceAll("{secrets}", provided.secrets);
    return out;
  };
  return {
    argv: command.argv.map(fill),
    env: Object.fromEntries(Object.entries(command.env).map(([k, v]) => [k, fill(v)])),
  };
}
