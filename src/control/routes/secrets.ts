// Team secrets: upsert, list (names and dates, never values), delete; in the caller's team or a named one.

import type { ControlContext } from "../context.ts";
import * as s from "../schemas.ts";
import * as secrets from "../secrets.ts";
import { type Route, route } from "./route.ts";

export function secretsRoutes(ctx: ControlContext): Route[] {
  return [
    route({
      method: "GET",
      url: "/v1/secrets",
      summary: "Gets all secrets (metadata only, no plain text keys)",
      auth: "key",
      response: "SecretsV1",
      handler: (c) => secrets.listSecrets(ctx, c.principal, null),
    }),
    route({
      method: "POST",
      url: "/v1/secrets",
      summary: "Upserts a secret",
      auth: "key",
      body: s.upsertSecretBody,
      response: "SecretV1",
      handler: (c) => secrets.upsertSecret(ctx, c.principal, null, c.body),
    }),
    route({
      method: "DELETE",
      url: "/v1/secrets/{secret_name}",
      summary: "Deletes a secret by name",
      auth: "key",
      response: "SecretTombstoneV1",
      handler: (c) => secrets.deleteSecret(ctx, c.principal, null, c.params.secret_name),
    }),
    route({
      method: "GET",
      url: "/v1/teams/{team_id}/secrets",
      summary: "Gets all secrets for a team (metadata only, no plain text keys)",
      auth: "key",
      response: "SecretsV1",
      handler: (c) => secrets.listSecrets(ctx, c.principal, c.params.team_id),
    }),
    route({
      method: "POST",
      url: "/v1/teams/{team_id}/secrets",
      summary: "Upserts a secret in a team",
      auth: "key",
      body: s.upsertSecretBody,
      response: "SecretV1",
      handler: (c) => secrets.upsertSecret(ctx, c.principal, c.params.team_id, c.body),
    }),
    route({
      method: "DELETE",
      url: "/v1/teams/{team_id}/secrets/{secret_name}",
      summary: "Deletes a secret by name",
      auth: "key",
      response: "SecretTombstoneV1",
      handler: (c) => secrets.deleteSecret(ctx, c.principal, c.params.team_id, c.params.secret_name),
    }),
  ];
}
