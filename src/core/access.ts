// Who may do what in the management API: the principal an API key resolves to, and the pure checks
// the routes apply. Existence never leaks across teams: a resource of a team the principal cannot see is
// "not found", never "forbidden".

import type { ApiKeyCategory, TeamRole } from "./domain.ts";

export interface Principal {
  key_prefix: string;
  category: ApiKeyCategory;
  /** The user a personal key acts as; null for workspace keys. */
  user_id: string | null;
  is_org_admin: boolean;
  /** Teams the principal can see, with its role in each. Workspace keys see their own team only. */
  teams: ReadonlyMap<string, TeamRole>;
  /** For model-scoped keys; null means every model of its teams. */
  model_ids: readonly string[] | null;
}

export type Capability =
  /** Read models, deployments, environments, groups, regions, audit logs. */
  | "read"
  /** Create and change models, deployments and environments. */
  | "manage"
  /** List, create and delete API keys. */
  | "manage_api_keys"
  /** Invoke models (inference). */
  | "invoke"
  /** Export metrics. */
  | "export_metrics";

const CATEGORY_CAPABILITIES: Record<ApiKeyCategory, readonly Capability[]> = {
  PERSONAL: ["read", "manage", "manage_api_keys", "invoke", "export_metrics"],
  WORKSPACE_MANAGE_ALL: ["read", "manage", "manage_api_keys", "invoke", "export_metrics"],
  WORKSPACE_MANAGE_API_KEYS: ["manage_api_keys"],
  WORKSPACE_INVOKE: ["invoke"],
  WORKSPACE_EXPORT_METRICS: ["export_metrics"],
};

export function hasCapability(p: Principal, capability: Capability): boolean {
  return CATEGORY_CAPABILITIES[p.category].includes(capability);
}

/** Whether the principal can see a resource of `teamId` at all (else: 404). */
export function canSeeTeam(p: Principal, teamId: string): boolean {
  return p.is_org_admin || p.teams.has(teamId);
}

export function canSeeModel(p: Principal, teamId: string, modelId: string): boolean {
  if (!canSeeTeam(p, teamId)) return false;
  return p.model_ids === null || p.model_ids.includes(modelId);
}

/** Team admins and org admins; only personal keys have a person behind them. */
export function isTeamAdmin(p: Principal, teamId: string): boolean {
  if (p.category !== "PERSONAL") return false;
  return p.is_org_admin || p.teams.get(teamId) === "TEAM_ADMIN";
}

export interface ManageAccess {
  is_restricted: boolean;
  user_ids: readonly string[];
}

/**
 * Restricted environments (reference: EnvironmentGroupManageAccessV1): only listed users and admins may
 * promote, change settings or delete. Workspace keys have no person behind them, so they may not manage a
 * restricted environment. Inference is never restricted by this.
 */
export function canManageEnvironment(p: Principal, teamId: string, access: ManageAccess): boolean {
  if (!hasCapability(p, "manage")) return false;
  if (!access.is_restricted) return true;
  if (isTeamAdmin(p, teamId)) return true;
  return p.user_id !== null && access.user_ids.includes(p.user_id);
}

/** An environment (by name: its group is the team's same-named group) that a change would touch. */
export interface TouchedEnvironment {
  name: string;
  access: ManageAccess;
}

export type ManageDecision =
  | { kind: "allowed" }
  /** The key's category may not manage anything (e.g. WORKSPACE_INVOKE). */
  | { kind: "forbidden" }
  /** Restricted environments among those touched that the principal may not manage, sorted. */
  | { kind: "restricted"; environments: string[]; workspace_key: boolean };

/**
 * The one rule for every change to what an environment serves or how (issue 10, item 5): the principal
 * must hold the manage capability and be allowed to manage **every** restricted environment the change
 * touches. Which environments a change touches is the caller's to compute from the store; a change that
 * touches none needs only the capability. Visibility (another team's resource is "not found") is settled
 * before this is asked.
 */
export function decideManage(
  p: Principal,
  teamId: string,
  touched: readonly TouchedEnvironment[],
): ManageDecision {
  if (!hasCapability(p, "manage")) return { kind: "forbidden" };
  const denied = [
    ...new Set(touched.filter((t) => !canManageEnvironment(p, teamId, t.access)).map((t) => t.name)),
  ].sort();
  if (denied.length === 0) return { kind: "allowed" };
  return { kind: "restricted", environments: denied, workspace_key: p.category !== "PERSONAL" };
}
