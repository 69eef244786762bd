// Team webhook secrets (async inference): create (the value shown once), list (ids and dates), delete; in
// the caller's team or a named one. Meridian's own routes: Baseten manages these in its web console.

import type { ControlContext } from "../context.ts";
import * as w from "../webhook-secrets.ts";
import { type Route, route } from "./route.ts";

export function webhookSecretRoutes(ctx: ControlContext): Route[] {
  return [
    route({
      method: "GET",
      url: "/v1/webhook_secrets",
      summary: "Lists the team's webhook secrets (ids and dates, never values)",
      auth: "key",
      meridian: true,
      handler: (c) => w.listWebhookSecrets(ctx, c.principal, null),
    }),
    route({
      method: "POST",
      url: "/v1/webhook_secrets",
      summary: "Creates a webhook secret; its value is in this answer only",
      auth: "key",
      meridian: true,
      handler: async (c) => {
        c.reply.header("cache-control", "no-store");
        return w.createWebhookSecret(ctx, c.principal, null);
      },
    }),
    route({
      method: "DELETE",
      url: "/v1/webhook_secrets/{webhook_secret_id}",
      summary: "Deletes a webhook secret",
      auth: "key",
      meridian: true,
      handler: (c) => w.deleteWebhookSecret(ctx, c.principal, null, c.params.webhook_secret_id),
    }),
    route({
      method: "GET",
      url: "/v1/teams/{team_id}/webhook_secrets",
      summary: "Lists a team's webhook secrets (ids and dates, never values)",
      auth: "key",
      meridian: true,
      handler: (c) => w.listWebhookSecrets(ctx, c.principal, c.params.team_id),
    }),
    route({
      method: "POST",
      url: "/v1/teams/{team_id}/webhook_secrets",
      summary: "Creates a webhook secret in a team; its value is in this answer only",
      auth: "key",
      meridian: true,
      handler: async (c) => {
        c.reply.header("cache-control", "no-store");
        return w.createWebhookSecret(ctx, c.principal, c.params.team_id);
      },
    }),
    route({
      method: "DELETE",
      url: "/v1/teams/{team_id}/webhook_secrets/{webhook_secret_id}",
      summary: "Deletes a team's webhook secret",
      auth: "key",
      meridian: true,
      handler: (c) => w.deleteWebhookSecret(ctx, c.principal, c.params.team_id, c.params.webhook_secret_id),
    }),
    route({
      method: "GET",
      url: "/v1/internal/planes/{name}/webhook_secrets/{team_id}",
      summary: "The team's webhook secret values, for the plane signing its async results",
      auth: "own_plane",
      meridian: true,
      handler: async (c) => {
        const answer = await w.webhookSecretsForPlane(ctx, c.plane, c.params.team_id);
        // Values: no cache on the way may keep them (RFC 9111 §5.2.2.5).
        c.reply.header("cache-control", "no-store");
        return answer;
      },
    }),
  ];
}
