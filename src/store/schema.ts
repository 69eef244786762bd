// Table shapes of the control plane's store, shared by SQLite and PostgreSQL. Portable column types only:
// text for ids, ISO-8601 timestamps and JSON documents; integers for counts and 0/1 flags.

import type { ColumnType, Generated, Insertable, Selectable } from "kysely";

export interface MetaTable {
  key: string;
  value: string;
}

/** A single row (id = 1) whose `value` strictly increases with every change planes or DNS must see. */
export interface RevisionTable {
  id: number;
  value: number;
}

export interface TeamTable {
  id: string;
  name: string;
  is_default: number;
  created_at: string;
}

export interface UserTable {
  id: string;
  email: string | null;
  name: string | null;
  is_org_admin: number;
  created_at: string;
}

export interface TeamMemberTable {
  team_id: string;
  user_id: string;
  role: string;
}

export interface ApiKeyTable {
  prefix: string;
  hash: string;
  name: string | null;
  category: string;
  team_id: string;
  user_id: string | null;
  /** JSON array of model ids, or null for every model of the team. */
  model_ids: string | null;
  created_at: string;
  /**
   * JSON array of region slugs the key may call inference in (on planes of those regions only), or null
   * for every region. Management API use is never region-bound. Optional on insert: a key made without
   * regions is bound to none.
   */
  regions: ColumnType<string | null, string | null | undefined, string | null>;
}

export interface RegionTable {
  slug: string;
  display_name: string;
  created_at: string;
}

export interface PlaneTable {
  name: string;
  region: string;
  /** JSON array of `host:port`. */
  ingress: string;
  capacity: number;
  global_ingress: number;
  credential_hash: string;
  created_at: string;
  last_seen_at: string | null;
  applied_revision: number;
  /** The plane's operator listener as it last reported it; replica logs are fetched there. */
  admin_url: string | null;
  /** How the plane runs replicas (`bwrap`, `none`, `unavailable`) as it last reported; null until then. */
  sandbox_mode: string | null;
  /** Why the sandbox is unavailable or off, as the plane reported it; null when `bwrap` runs. */
  sandbox_detail: string | null;
}

export interface ArtifactTable {
  key: string;
  sha256: string | null;
  size: number | null;
  /** `PENDING` until an upload claims it, `UPLOADING` while its bytes arrive, then `STORED`. */
  state: string;
  team_id: string;
  created_at: string;
}

export interface ModelTable {
  id: string;
  team_id: string;
  name: string;
  created_at: string;
}

export interface DeploymentTable {
  id: string;
  model_id: string;
  name: string;
  status: string;
  status_message: string | null;
  is_development: number;
  artifact_key: string;
  /** JSON of the package's parsed config.yaml (model_name, resources, runtime, …). */
  config: string;
  /** The region restriction its replicas are placed under; null for unrestricted. */
  region: string | null;
  /** The egress policy its replicas run under (`allow`, `deny`), fixed when it is created. */
  egress: string;
  /** The deployment it was copied from on promotion (redeploy), if any. */
  copied_from: string | null;
  /** JSON AutoscalingSettingsV1. */
  autoscaling: string;
  /** JSON labels object or null. */
  labels: string | null;
  created_at: string;
  updated_at: string;
  /** JSON RequestBackpressureSettingsV1, or null for no policy (0009). */
  backpressure: ColumnType<string | null, string | null | undefined, string | null>;
  /** The autoscaler's replica count; null until it decided (the scheduler keeps max(1, min_replica)). */
  desired_replicas: ColumnType<number | null, number | null | undefined, number | null>;
}

export interface EnvironmentTable {
  model_id: string;
  name: string;
  current_deployment_id: string | null;
  /** JSON AutoscalingSettingsV1. */
  autoscaling: string;
  /** JSON PromotionSettingsV1. */
  promotion_settings: string;
  created_at: string;
  /** JSON RequestBackpressureSettingsV1, or null for no policy (0009). */
  backpressure: ColumnType<string | null, string | null | undefined, string | null>;
}

export interface EnvironmentGroupTable {
  team_id: string;
  name: string;
  is_restricted: number;
  /** JSON array of user ids allowed to manage while restricted. */
  manage_users: string;
  region: string | null;
  standard_endpoint_policy: string;
  /** Whether the group's replicas may reach the network (`allow`, the default) or not (`deny`). */
  egress: string;
  created_at: string;
  updated_at: string;
}

export interface PromotionTable {
  id: string;
  model_id: string;
  environment: string;
  source_deployment_id: string;
  candidate_deployment_id: string;
  previous_deployment_id: string | null;
  /** Why the candidate is (or is not) a copy: a `PromotionReason` of `src/core/promotion.ts`. */
  reason: string;
  status: string;
  /** 1 while the promotion is in flight; a partial unique index allows one per environment. */
  active: number;
  error_message: string | null;
  cleanup_strategy: string;
  created_by: string | null;
  created_at: string;
  updated_at: string;
}

export interface ReplicaTable {
  id: string;
  deployment_id: string;
  plane: string;
  state: string;
  message: string | null;
  restarts: number;
  created_at: string;
  updated_at: string;
}

export interface AuditLogTable {
  id: Generated<number>;
  at: string;
  team_id: string | null;
  model_id: string | null;
  actor_user_id: string | null;
  actor_key_prefix: string | null;
  action: string;
  target: string;
  /** JSON before/after documents, or null. */
  before: string | null;
  after: string | null;
}

export interface RequestCountTable {
  plane: string;
  model_id: string;
  environment: string;
  status_class: string;
  count: number;
}

/** A model package in the database: 1 MiB chunks under its sha256 (or `tmp:…` while it is uploaded). */
export interface ArtifactChunkTable {
  blob: string;
  seq: number;
  data: Buffer;
  created_at: string;
}

/** Upload credentials for the S3-compatible endpoint, scoped to one upload target and expiring. */
export interface S3CredentialTable {
  access_key_id: string;
  /** Kept to verify SigV4 signatures (an HMAC needs the key); short-lived and good for one key only. */
  secret_access_key: string;
  session_token_hash: string;
  artifact_key: string;
  team_id: string;
  region: string;
  expires_at: string;
  created_at: string;
}

/** A multipart upload in progress: `ACTIVE` while parts arrive, `COMPLETING` while they are assembled. */
export interface S3MultipartUploadTable {
  upload_id: string;
  access_key_id: string;
  artifact_key: string;
  state: string;
  /** The algorithm named at CreateMultipartUpload (`crc32`, …), which every part must then carry. */
  checksum_algorithm: string | null;
  expires_at: string;
  created_at: string;
  updated_at: string;
}

/** A team secret, sealed (AES-256-GCM) under the key `key_id` of the control plane's key file. */
export interface SecretTable {
  id: string;
  team_id: string;
  /** truss's secret name rule (src/core/secrets.ts); unique in its team. */
  name: string;
  key_id: string;
  /** base64 of nonce ‖ ciphertext ‖ tag; the associated data is the team id and the name. */
  sealed: string;
  created_at: string;
  updated_at: string;
}

/**
 * A team's webhook secret (async inference: X-BASETEN-SIGNATURE), sealed like a team secret; the associated
 * data is the team id and `webhook:{id}`. Shown once, when created; planes fetch a team's to sign with.
 */
export interface WebhookSecretTable {
  id: string;
  team_id: string;
  key_id: string;
  sealed: string;
  created_at: string;
}

export interface S3PartTable {
  upload_id: string;
  part_number: number;
  /** Where the part's bytes are staged (a file name or `s3_part_chunks.ref`). */
  ref: string;
  size: number;
  /** Hex MD5 of the part: its ETag. */
  md5: string;
  /** JSON object of the base64 checksums the part was sent with, by algorithm. */
  checksums: string;
  created_at: string;
}

export interface S3PartChunkTable {
  ref: string;
  seq: number;
  upload_id: string;
  data: Buffer;
  created_at: string;
}

/**
 * Every Ed25519 public key a plane has reported, current and retired; rows are never deleted (issue 14
 * checks old receipts against retired keys). A key counts for hops only while `credential_hash` is the
 * plane's current credential and `retired_at` is null (or, for the hop window, just set).
 */
export interface PlaneKeyTable {
  plane: string;
  /** First 8 bytes of sha256(raw public key), lowercase hex. */
  key_id: string;
  /** Raw 32-byte public key, base64url. */
  public_key: string;
  /** sha256 of the plane credential the key was reported over. */
  credential_hash: string;
  first_seen_at: string;
  /**
   * When the key may first have signed: what the plane reported (when it first had the key), bounded by
   * the plane's registration, its last report before the key, and `first_seen_at`. The key directory's
   * `valid_from`.
   */
  valid_from: string;
  /** The region of the plane when the key was reported; null only for keys of planes deleted before 0008. */
  region: string | null;
  retired_at: string | null;
}

/** A plane's latest load report for one deployment (0009): what the autoscaler decides from. */
export interface PlaneLoadTable {
  plane: string;
  deployment_id: string;
  /** When the plane's counters started; a new epoch means they restarted from zero. */
  epoch: string;
  /** Requests received and not yet answered there, parked ones included. */
  in_flight: number;
  /** The integral of requests in flight since `epoch`, request·ms (bigint on PostgreSQL: read with Number). */
  request_ms: ColumnType<number | string, number, number>;
  last_request_at: string | null;
  reported_at: string;
}

export interface Schema {
  meta: MetaTable;
  revision: RevisionTable;
  teams: TeamTable;
  users: UserTable;
  team_members: TeamMemberTable;
  api_keys: ApiKeyTable;
  regions: RegionTable;
  planes: PlaneTable;
  artifacts: ArtifactTable;
  models: ModelTable;
  deployments: DeploymentTable;
  environments: EnvironmentTable;
  environment_groups: EnvironmentGroupTable;
  promotions: PromotionTable;
  replicas: ReplicaTable;
  audit_logs: AuditLogTable;
  request_counts: RequestCountTable;
  artifact_chunks: ArtifactChunkTable;
  s3_credentials: S3CredentialTable;
  s3_multipart_uploads: S3MultipartUploadTable;
  s3_parts: S3PartTable;
  s3_part_chunks: S3PartChunkTable;
  secrets: SecretTable;
  plane_keys: PlaneKeyTable;
  plane_loads: PlaneLoadTable;
  webhook_secrets: WebhookSecretTable;
}

export type TeamRow = Selectable<TeamTable>;
export type UserRow = Selectable<UserTable>;
export type ApiKeyRow = Selectable<ApiKeyTable>;
export type RegionRow = Selectable<RegionTable>;
export type PlaneRow = Selectable<PlaneTable>;
export type ArtifactRow = Selectable<ArtifactTable>;
export type S3CredentialRow = Selectable<S3CredentialTable>;
export type S3MultipartUploadRow = Selectable<S3MultipartUploadTable>;
export type S3PartRow = Selectable<S3PartTable>;
export type ModelRow = Selectable<ModelTable>;
export type DeploymentRow = Selectable<DeploymentTable>;
export type EnvironmentRow = Selectable<EnvironmentTable>;
export type EnvironmentGroupRow = Selectable<EnvironmentGroupTable>;
export type PromotionRow = Selectable<PromotionTable>;
export type ReplicaRow = Selectable<ReplicaTable>;
export type AuditLogRow = Selectable<AuditLogTable>;
export type SecretRow = Selectable<SecretTable>;
export type PlaneKeyRow = Selectable<PlaneKeyTable>;
export type NewDeployment = Insertable<DeploymentTable>;
