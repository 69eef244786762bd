// The domain's vocabulary (DESIGN.md §1, §5) as types shared by every role. Field names follow the
// management API reference where the concept appears there.

export const API_KEY_CATEGORIES = [
  "PERSONAL",
  "WORKSPACE_MANAGE_ALL",
  "WORKSPACE_EXPORT_METRICS",
  "WORKSPACE_INVOKE",
  "WORKSPACE_MANAGE_API_KEYS",
] as const;
export type ApiKeyCategory = (typeof API_KEY_CATEGORIES)[number];

export const DEPLOYMENT_STATUSES = [
  "BUILDING",
  "DEPLOYING",
  "DEPLOY_FAILED",
  "LOADING_MODEL",
  "ACTIVE",
  "UNHEALTHY",
  "BUILD_FAILED",
  "BUILD_STOPPED",
  "DEACTIVATING",
  "INACTIVE",
  "FAILED",
  "UPDATING",
  "SCALED_TO_ZERO",
  "WAKING_UP",
] as const;
export type DeploymentStatus = (typeof DEPLOYMENT_STATUSES)[number];

export const PROMOTION_CLEANUP_STRATEGIES = ["KEEP", "SCALE_TO_ZERO", "DEACTIVATE"] as const;
export type PromotionCleanupStrategy = (typeof PROMOTION_CLEANUP_STRATEGIES)[number];

export const PROMOTION_STATUSES = [
  "RELEASING",
  "RAMPING_UP",
  "RAMPING_DOWN",
  "PAUSED",
  "SUCCEEDED",
  "FAILED",
  "CANCELED",
] as const;
export type PromotionStatus = (typeof PROMOTION_STATUSES)[number];

export const STANDARD_ENDPOINT_POLICIES = ["allow", "warn", "deny"] as const;
/** What the standard endpoint does for an environment whose group is region-restricted (DESIGN.md §2.3). */
export type StandardEndpointPolicy = (typeof STANDARD_ENDPOINT_POLICIES)[number];

export const EGRESS_POLICIES = ["allow", "deny"] as const;
/**
 * Whether an environment group's replicas may open network connections (Meridian's extension, set next
 * to the region restriction). Under `deny` a replica has its own network namespace with loopback only and
 * serves its plane over a Unix socket, so a request's data leaves it only as the answer (DESIGN.md §2.8).
 */
export type EgressPolicy = (typeof EGRESS_POLICIES)[number];

/** How a plane runs its replicas: in a bubblewrap sandbox, without one (operator's explicit choice), or
 * not at all (bwrap is missing or failed its start-up self-test). */
export const SANDBOX_MODES = ["bwrap", "none", "unavailable"] as const;
export type SandboxMode = (typeof SANDBOX_MODES)[number];

export type TeamRole = "TEAM_ADMIN" | "MEMBER";

/** A region restriction on an environment group (Meridian's extension to EnvironmentGroupV1). */
export interface RegionRestriction {
  region: string;
  standard_endpoint_policy: StandardEndpointPolicy;
}

export interface Region {
  slug: string;
  display_name: string;
}

/** A serving cluster in exactly one region. `ingress` entries are `host:port` of its HTTP ingress. */
export interface WorkloadPlane {
  name: string;
  region: string;
  ingress: string[];
  capacity: number;
  global_ingress: boolean;
}

/**
 * Replica states a plane reports; `READY` replicas are routable. `BUILDING`: the plane is building the
 * replica's environment (a truss package's virtualenv, not cached yet); `BUILD_FAILED`: that build failed
 * (pip's error, no fitting interpreter), where `FAILED` is a replica that was built but would not run.
 */
export const REPLICA_STATES = [
  "PENDING",
  "BUILDING",
  "STARTING",
  "READY",
  "UNHEALTHY",
  "FAILED",
  "BUILD_FAILED",
  "STOPPING",
] as const;
export type ReplicaState = (typeof REPLICA_STATES)[number];

/** How the inference host named the target (DESIGN.md §3). */
export type HostnameForm = "standard" | "regional";
