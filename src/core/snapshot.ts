// The wire contract between the control plane and the parts that serve: the versioned snapshot each
// workload plane long-polls (desired replicas, routes, API-key hashes, the public keys it verifies), the DNS
// responder's snapshot, and the report a plane sends back. Each plane's snapshot holds only what that plane
// needs (DESIGN.md §4), and no secret of anyone else: public keys only.

import type {
  ApiKeyCategory,
  EgressPolicy,
  ReplicaState,
  SandboxMode,
  StandardEndpointPolicy,
} from "./domain.ts";

/** A plane as other planes and the DNS see it. */
export interface PlaneRef {
  name: string;
  region: string;
  /** `host:port` of the plane's HTTP ingress, as registered. */
  ingress: string[];
  global_ingress: boolean;
}

/** An API key as an ingress needs it: its sha256 (hex) and what it may invoke. */
export interface ApiKeyGrant {
  /** sha256 of the full plaintext key, lowercase hex. */
  hash: string;
  prefix: string;
  team_id: string;
  category: ApiKeyCategory;
  /** For `WORKSPACE_INVOKE` keys scoped to models; null means every model of the team. */
  model_ids: string[] | null;
  /**
   * Regions whose planes may authenticate this key for inference; null (or absent, from a control plane
   * older than region-bound keys, which has none) means every region.
   */
  regions?: string[] | null;
}

/** An environment of a model as the ingress routes it. */
export interface EnvironmentRoute {
  name: string;
  /** The deployment that currently serves the environment (switches only when a candidate is ready). */
  deployment_id: string | null;
  /** Region the environment's group is restricted to; null when unrestricted. */
  region: string | null;
  standard_endpoint_policy: StandardEndpointPolicy;
}

/** Where a deployment can be served right now: the planes that report a READY replica of it. */
export interface DeploymentRoute {
  id: string;
  /** Region restriction the deployment's replicas were placed under; null when unrestricted. */
  region: string | null;
  /** Names of planes with at least one READY replica of this deployment. */
  ready_planes: string[];
  /**
   * How an ingress holds its requests while nothing is ready (docs/autoscaling.md); absent from control
   * planes older than autoscaling (then nothing is held: 503 as before).
   */
  scale?: DeploymentScale;
}

/** What an ingress needs to park a deployment's requests and ask for a wake. */
export interface DeploymentScale {
  /** Asleep or starting, and able to wake: a request is held while a replica starts in its region. */
  wakeable: boolean;
  /** Requests one replica is meant to hold (autoscaling_settings). */
  concurrency_target: number;
  /** request_backpressure_settings.policy. */
  policy: "QUEUE_ON_FULL" | "REJECT_ON_FULL" | null;
}

export interface ModelRoute {
  id: string;
  team_id: string;
  name: string;
  development_deployment_id: string | null;
  environments: EnvironmentRoute[];
  deployments: DeploymentRoute[];
}

/** A model package in the control plane's artifact store. */
export interface ArtifactRef {
  /** Content address (the reference's `s3_key`). */
  key: string;
  sha256: string;
  size: number;
}

/** A replica the control plane wants on this plane. The plane's driver makes it so. */
export interface DesiredReplica {
  id: string;
  deployment_id: string;
  model_id: string;
  /** Environment the deployment serves, passed to the model; null when it serves none. */
  environment: string | null;
  artifact: ArtifactRef;
  /** The egress policy the deployment was placed under; `deny`: no network but loopback, a Unix socket. */
  egress: EgressPolicy;
}

/**
 * A plane's Ed25519 public key as other planes verify its hops with it. Raw 32 bytes in base64url (RFC 8037
 * §2, the JWK `x` member); `key_id` is the first 8 bytes of its sha256 in lowercase hex.
 */
export interface PlaneKey {
  plane: string;
  key_id: string;
  public_key: string;
  /**
   * null while current. A retired key (replaced by a newer one) is carried only for the hop window after
   * its retirement, so hops signed just before a rotation still verify; receivers stop accepting it then.
   */
  retired_at: string | null;
}

/** The control plane's Ed25519 public key: it signs the control plane's log fetches from planes. */
export interface ControlKey {
  key_id: string;
  public_key: string;
}

export interface PlaneSnapshot {
  /** Installation-wide revision; strictly increases with every change that may affect any plane. */
  revision: number;
  /** The inference domain, e.g. `meridian.localhost`. */
  domain: string;
  /** The plane this snapshot is for. */
  plane: PlaneRef;
  /** Every plane (for plane-to-plane forwarding); regional forwarding only ever uses planes of one region. */
  planes: PlaneRef[];
  /**
   * Public keys of the planes this plane may receive hops from (every other plane: any plane may hand a
   * standard-endpoint request to a plane with a ready replica), current ones and those just retired.
   */
  plane_keys: PlaneKey[];
  /** Verifies the control plane's log fetches (the only requests a plane takes from the control plane). */
  control_key: ControlKey;
  api_keys: ApiKeyGrant[];
  models: ModelRoute[];
  replicas: DesiredReplica[];
}

/** What the DNS responder needs to answer for the inference domain. */
export interface DnsSnapshot {
  revision: number;
  domain: string;
  /** Addresses (IPs) of the global ingress planes: the answer for standard names. */
  global_ingress: string[];
  /** Ingress addresses (IPs) of planes, by region slug. */
  regions: Record<string, string[]>;
  /** Model ids that exist, and for each the environments that have a region restriction. */
  models: Array<{ id: string; regional_environments: Array<{ name: string; region: string }> }>;
}

/** A replica's observed state, reported by the plane that runs it. */
export interface ReplicaReport {
  id: string;
  deployment_id: string;
  state: ReplicaState;
  /** Human-readable reason for a non-READY state (a load() error, an exit code). */
  message: string | null;
  restarts: number;
}

export interface SandboxReport {
  mode: SandboxMode;
  /** Why the sandbox is unavailable, or the operator's `--sandbox none` warning; null when `bwrap` runs. */
  detail: string | null;
}

/**
 * The load a plane's ingress measured, per deployment (docs/autoscaling.md): counters since `epoch`, so a
 * lost report loses nothing. Counts and times only, never a request (DESIGN.md §2.9).
 */
export interface PlaneLoadReport {
  /** When the counters started (ISO 8601, the plane's clock); a new epoch restarts them from zero. */
  epoch: string;
  /** When the counters were read (ISO 8601, the plane's clock). */
  at: string;
  deployments: Array<{
    deployment_id: string;
    /** Requests received and not yet answered, parked ones included. */
    in_flight: number;
    /** The integral of `in_flight` over time since `epoch`, in request·ms. */
    request_ms: number;
    last_request_at: string | null;
  }>;
}

export interface PlaneReport {
  /** The snapshot revision the plane has applied. */
  revision: number;
  /**
   * Base URL of the plane's operator listener (`http://host:port`), where the control plane fetches replica
   * logs on demand (they stay on the plane); null or absent when the plane runs none.
   */
  admin_url?: string | null;
  replicas: ReplicaReport[];
  /**
   * The plane's Ed25519 public key (raw, base64url). Trusted because it arrives over the plane's credential;
   * a new key retires the previous one. Absent from planes older than per-plane keys.
   */
  public_key?: string;
  /**
   * When the plane first had `public_key` (ISO 8601, its own clock). The control plane dates the key from
   * then in the key directory, bounded by what it knows (src/control/keys.ts `keyValidFrom`): a plane that
   * started with a new key while the control plane was down signed with it before the control plane saw it.
   */
  key_created_at?: string;
  /** How the plane runs replicas; absent from planes older than the sandbox. */
  sandbox?: SandboxReport;
  /** The ingress's load per deployment, for the autoscaler; absent from planes older than autoscaling. */
  load?: PlaneLoadReport;
  /** Per-environment request counts since the previous report (DESIGN.md §2.6: aggregates only). */
  request_counts: Array<{
    model_id: string;
    environment: string | null;
    status_class: string;
    count: number;
  }>;
}
