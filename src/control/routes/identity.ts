// Teams, users and API keys.

import * as accounts from "../accounts.ts";
import type { ControlContext } from "../context.ts";
import * as s from "../schemas.ts";
import { type Route, route } from "./route.ts";

export function identityRoutes(ctx: ControlContext): Route[] {
  return [
    route({
      method: "GET",
      url: "/v1/teams",
      summary: "Lists all teams",
      auth: "key",
      response: "TeamsV1",
      handler: (c) => accounts.listTeams(ctx, c.principal),
    }),
    route({
      method: "GET",
      url: "/v1/teams/{team_id}",
      summary: "Gets a team by ID",
      auth: "key",
      response: "TeamV1",
      handler: (c) => accounts.getTeam(ctx, c.principal, c.params.team_id),
    }),
    route({
      method: "GET",
      url: "/v1/users",
      summary: "Lists users in the workspace",
      auth: "key",
      response: "UsersResponseV1",
      handler: (c) => accounts.listUsers(ctx, c.principal),
    }),
    route({
      method: "GET",
      url: "/v1/users/me",
      summary: "Gets the authenticated user",
      auth: "key",
      response: "UserInfoV1",
      handler: (c) => accounts.me(ctx, c.principal),
    }),
    route({
      method: "GET",
      url: "/v1/users/{user_id}",
      summary: "Gets a user by ID",
      auth: "key",
      response: "UserInfoV1",
      handler: (c) => accounts.getUser(ctx, c.principal, c.params.user_id),
    }),
    route({
      method: "GET",
      url: "/v1/api_keys",
      summary: "Lists API keys (metadata only, no plain text keys)",
      auth: "key",
      response: "APIKeysV1",
      handler: (c) => accounts.listApiKeys(ctx, c.principal),
    }),
    route({
      method: "POST",
      url: "/v1/api_keys",
      summary: "Creates an API key",
      auth: "key",
      body: s.createApiKeyBody,
      response: "APIKeyV1",
      handler: (c) => accounts.createApiKey(ctx, c.principal, null, c.body),
    }),
    route({
      method: "POST",
      url: "/v1/teams/{team_id}/api_keys",
      summary: "Creates a team API key",
      auth: "key",
      body: s.createApiKeyBody,
      response: "APIKeyV1",
      handler: (c) => accounts.createApiKey(ctx, c.principal, c.params.team_id, c.body),
    }),
    route({
      method: "DELETE",
      url: "/v1/api_keys/{api_key_prefix}",
      summary: "Deletes an API key by prefix",
      auth: "key",
      response: "APIKeyTombstoneV1",
      handler: (c) => accounts.deleteApiKey(ctx, c.principal, c.params.api_key_prefix),
    }),
  ];
}
