// Regions available to the organization and to a team.

import * as admin from "../admin.ts";
import type { ControlContext } from "../context.ts";
import { type Route, route } from "./route.ts";

export function regionsRoutes(ctx: ControlContext): Route[] {
  return [
    route({
      method: "GET",
      url: "/v1/regions",
      summary: "Lists regions available to the organization",
      auth: "key",
      response: "RegionsV1",
      handler: (c) => admin.listRegions(ctx, c.principal, null),
    }),
    route({
      method: "GET",
      url: "/v1/teams/{team_id}/regions",
      summary: "Lists regions available to a team",
      auth: "key",
      response: "RegionsV1",
      handler: (c) => admin.listRegions(ctx, c.principal, c.params.team_id),
    }),
  ];
}
