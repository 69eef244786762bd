// Environment groups: manage access and region restrictions.

import type { ControlContext } from "../context.ts";
import * as groups from "../groups.ts";
import * as s from "../schemas.ts";
import { type Route, route } from "./route.ts";

export function groupsRoutes(ctx: ControlContext): Route[] {
  return [
    route({
      method: "GET",
      url: "/v1/environment_groups",
      summary: "Lists environment groups",
      auth: "key",
      response: "EnvironmentGroupsV1",
      handler: (c) => groups.listGroups(ctx, c.principal, null),
    }),
    route({
      method: "GET",
      url: "/v1/environment_groups/{env_name}",
      summary: "Gets an environment group by name",
      auth: "key",
      response: "EnvironmentGroupV1",
      handler: (c) => groups.getGroup(ctx, c.principal, null, c.params.env_name),
    }),
    route({
      method: "PATCH",
      url: "/v1/environment_groups/{env_name}",
      summary: "Updates an environment group's restriction settings",
      auth: "key",
      body: s.updateGroupBody,
      response: "EnvironmentGroupV1",
      handler: (c) => groups.updateGroup(ctx, c.principal, null, c.params.env_name, c.body),
    }),
    route({
      method: "GET",
      url: "/v1/teams/{team_id}/environment_groups",
      summary: "Lists environment groups",
      auth: "key",
      response: "EnvironmentGroupsV1",
      handler: (c) => groups.listGroups(ctx, c.principal, c.params.team_id),
    }),
    route({
      method: "GET",
      url: "/v1/teams/{team_id}/environment_groups/{env_name}",
      summary: "Gets an environment group by name",
      auth: "key",
      response: "EnvironmentGroupV1",
      handler: (c) => groups.getGroup(ctx, c.principal, c.params.team_id, c.params.env_name),
    }),
    route({
      method: "PATCH",
      url: "/v1/teams/{team_id}/environment_groups/{env_name}",
      summary: "Updates an environment group's restriction settings",
      auth: "key",
      body: s.updateGroupBody,
      response: "EnvironmentGroupV1",
      handler: (c) => groups.updateGroup(ctx, c.principal, c.params.team_id, c.params.env_name, c.body),
    }),
  ];
}
