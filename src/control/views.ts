// Rows to the management API's JSON shapes (Baseten's ModelV1, DeploymentV1, EnvironmentV1, …), plus the
// defaults for settings a request leaves out. Meridian's additions are marked where they appear and listed,
// with their schemas, in ./openapi.ts `MERIDIAN_FIELDS` (the conformance test allows no others).

import {
  type AutoscalingSettings,
  autoscalingWithDefaults,
  type RequestBackpressureSettings,
} from "../core/autoscaling-settings.ts";
import type {
  DeploymentStatus,
  EgressPolicy,
  RegionRestriction,
  StandardEndpointPolicy,
} from "../core/domain.ts";
import type {
  ApiKeyRow,
  DeploymentRow,
  EnvironmentGroupRow,
  EnvironmentRow,
  ModelRow,
  PromotionRow,
  RegionRow,
  TeamRow,
  UserRow,
} from "../store/schema.ts";

/**
 * The one instance type: a replica slot of a plane (every slot is alike). The CPU and memory are a slot's
 * nominal size; the process driver enforces neither (docs/decisions.md).
 */
export const INSTANCE_TYPE = {
  id: "meridian-cpu",
  name: "meridian-cpu",
  memory_limit_mib: 2048,
  millicpu_limit: 1000,
  gpu_count: 0,
  gpu_type: null,
  gpu_memory_limit_mib: null,
} as const;

export type { AutoscalingSettings } from "../core/autoscaling-settings.ts";
export { DEFAULT_AUTOSCALING } from "../core/autoscaling-settings.ts";

/** Stored autoscaling JSON as the value in effect: every absent or null field has Baseten's default. */
export function autoscalingOf(json: string): AutoscalingSettings {
  return autoscalingWithDefaults(JSON.parse(json) as Parameters<typeof autoscalingWithDefaults>[0]);
}

/** A stored backpressure column (null: no policy) as RequestBackpressureSettingsV1. */
export function backpressureOf(json: string | null): RequestBackpressureSettings {
  if (json === null) return { policy: null };
  const policy = (JSON.parse(json) as { policy?: unknown }).policy;
  return { policy: policy === "QUEUE_ON_FULL" || policy === "REJECT_ON_FULL" ? policy : null };
}

export interface PromotionSettings {
  redeploy_on_promotion: boolean;
  rolling_deploy: boolean;
  promotion_cleanup_strategy: "KEEP" | "SCALE_TO_ZERO" | "DEACTIVATE";
  rolling_deploy_config: null;
  ramp_up_while_promoting: boolean;
  ramp_up_duration_seconds: number;
}

export const DEFAULT_PROMOTION_SETTINGS: PromotionSettings = {
  redeploy_on_promotion: false,
  rolling_deploy: false,
  promotion_cleanup_strategy: "SCALE_TO_ZERO",
  rolling_deploy_config: null,
  ramp_up_while_promoting: false,
  ramp_up_duration_seconds: 600,
};

/** Applies a partial update where `null` and absent both mean "unchanged" (the reference's semantics). */
export function mergeSettings<T extends object>(
  current: T,
  update: Partial<Record<keyof T, unknown>> | null | undefined,
): T {
  if (!update) return current;
  const next = { ...current } as Record<string, unknown>;
  for (const [k, v] of Object.entries(update)) if (v !== null && v !== undefined) next[k] = v;
  return next as T;
}

export function teamView(t: TeamRow) {
  return { id: t.id, name: t.name, default: t.is_default === 1, created_at: t.created_at };
}

export function userView(u: UserRow, workspaceName: string | null = null) {
  return { user_id: u.id, email: u.email, name: u.name, workspace_name: workspaceName };
}

export function regionView(r: Pick<RegionRow, "slug" | "display_name">) {
  return { slug: r.slug, display_name: r.display_name };
}

export function apiKeyView(k: ApiKeyRow, teamName: string | null, owner: UserRow | null) {
  return {
    prefix: k.prefix,
    name: k.name,
    type: k.category,
    model_ids: k.model_ids === null ? null : (JSON.parse(k.model_ids) as string[]),
    // Meridian's extension: where the key may call inference (null: every region).
    regions: k.regions === null ? null : (JSON.parse(k.regions) as string[]),
    team_name: teamName,
    owner: owner ? { user_id: owner.id, email: owner.email, name: owner.name } : null,
  };
}

export interface ModelFacts {
  team_name: string;
  deployments_count: number;
  production_deployment_id: string | null;
  development_deployment_id: string | null;
}

export function modelView(m: ModelRow, facts: ModelFacts) {
  return {
    id: m.id,
    created_at: m.created_at,
    name: m.name,
    deployments_count: facts.deployments_count,
    production_deployment_id: facts.production_deployment_id,
    development_deployment_id: facts.development_deployment_id,
    instance_type_name: INSTANCE_TYPE.name,
    team_name: facts.team_name,
  };
}

export interface DeploymentFacts {
  /** The environment the deployment currently serves, if any (the first by name). */
  environment: string | null;
  active_replica_count: number;
  region: RegionRow | null;
}

export function deploymentView(d: DeploymentRow, facts: DeploymentFacts) {
  const status = d.status as DeploymentStatus;
  return {
    id: d.id,
    created_at: d.created_at,
    name: d.name,
    model_id: d.model_id,
    is_production: facts.environment === "production",
    is_development: d.is_development === 1,
    status,
    active_replica_count: facts.active_replica_count,
    autoscaling_settings: autoscalingOf(d.autoscaling),
    instance_type_name: INSTANCE_TYPE.name,
    environment: facts.environment,
    labels: d.labels === null ? null : (JSON.parse(d.labels) as Record<string, unknown>),
    // Meridian's additions: the region its replicas are restricted to, and backpressure settings.
    region: facts.region ? regionView(facts.region) : null,
    request_backpressure_settings: backpressureOf(d.backpressure ?? null),
    // Meridian's addition: why the deployment is in its status (a load() error, waiting for capacity).
    status_message: d.status_message,
    // Meridian's addition: the egress policy its replicas run under, fixed when it was created.
    egress: d.egress as EgressPolicy,
  };
}

export type DeploymentView = ReturnType<typeof deploymentView>;

export function promotionView(p: PromotionRow | null) {
  if (!p) return null;
  return {
    status: p.status,
    percent_traffic_to_new_version: 0,
    error_message: p.error_message,
    rolling_deploy: false,
  };
}

export function environmentView(
  e: EnvironmentRow,
  current: DeploymentView | null,
  candidate: DeploymentView | null,
  promotion: PromotionRow | null,
  restriction: RegionRestriction | null,
) {
  return {
    name: e.name,
    created_at: e.created_at,
    model_id: e.model_id,
    current_deployment: current,
    candidate_deployment: candidate,
    in_progress_promotion: promotionView(promotion),
    autoscaling_settings: autoscalingOf(e.autoscaling),
    promotion_settings: JSON.parse(e.promotion_settings) as PromotionSettings,
    instance_type: INSTANCE_TYPE,
    // Meridian's addition (from Baseten's earlier published API): backpressure settings.
    request_backpressure_settings: backpressureOf(e.backpressure ?? null),
    // Meridian's addition: the region restriction inherited from the environment group.
    region_restriction: restriction,
  };
}

export function restrictionOf(
  g: Pick<EnvironmentGroupRow, "region" | "standard_endpoint_policy"> | undefined,
) {
  if (!g || g.region === null) return null;
  return { region: g.region, standard_endpoint_policy: g.standard_endpoint_policy as StandardEndpointPolicy };
}

/** A group's egress policy; a group never configured has the default, `allow`. */
export function egressOf(g: Pick<EnvironmentGroupRow, "egress"> | undefined): EgressPolicy {
  return (g?.egress ?? "allow") as EgressPolicy;
}

export function environmentGroupView(
  teamId: string,
  teamName: string,
  name: string,
  g: EnvironmentGroupRow | undefined,
  users: UserRow[],
) {
  const restricted = g?.is_restricted === 1;
  return {
    name,
    team_id: teamId,
    team_name: teamName,
    manage_access: {
      is_restricted: restricted,
      users: restricted ? users.map((u) => ({ user_id: u.id, email: u.email, name: u.name })) : [],
    },
    // Meridian's extension: the region restriction (DESIGN.md §2.2–2.4), set by org admins.
    region_restriction: restrictionOf(g),
    // Meridian's extension: whether the group's replicas may reach the network (DESIGN.md §2.8), set by
    // org admins.
    egress: egressOf(g),
  };
}
