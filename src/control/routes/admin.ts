// The operator API (org admins): regions, planes, teams, users, request counts.

import * as accounts from "../accounts.ts";
import * as admin from "../admin.ts";
import type { ControlContext } from "../context.ts";
import * as s from "../schemas.ts";
import { type Route, route } from "./route.ts";

export function adminRoutes(ctx: ControlContext): Route[] {
  return [
    route({
      method: "POST",
      url: "/v1/admin/regions",
      summary: "Adds a region",
      auth: "key",
      body: s.createRegionBody,
      response: "RegionV1",
      meridian: true,
      handler: (c) => admin.createRegion(ctx, c.principal, c.body),
    }),
    route({
      method: "GET",
      url: "/v1/admin/planes",
      summary: "Lists workload planes with their replica counts",
      auth: "key",
      meridian: true,
      handler: (c) => admin.listPlanes(ctx, c.principal),
    }),
    route({
      method: "GET",
      url: "/v1/admin/request_counts",
      summary: "Lists inference request counts reported by the planes (aggregates only; no request records)",
      auth: "key",
      meridian: true,
      handler: (c) => admin.requestCounts(ctx, c.principal),
    }),
    route({
      method: "POST",
      url: "/v1/admin/planes",
      summary: "Registers a workload plane and issues its credential (shown once)",
      auth: "key",
      body: s.registerPlaneBody,
      meridian: true,
      handler: (c) => admin.registerPlane(ctx, c.principal, c.body),
    }),
    route({
      method: "PATCH",
      url: "/v1/admin/planes/{name}",
      summary: "Updates a workload plane",
      auth: "key",
      body: s.updatePlaneBody,
      meridian: true,
      handler: (c) => admin.updatePlane(ctx, c.principal, c.params.name, c.body),
    }),
    route({
      method: "DELETE",
      url: "/v1/admin/planes/{name}",
      summary: "Removes a workload plane",
      auth: "key",
      meridian: true,
      handler: (c) => admin.deletePlane(ctx, c.principal, c.params.name),
    }),
    route({
      method: "POST",
      url: "/v1/admin/planes/{name}/credential",
      summary: "Issues a plane a new credential (the old one stops working)",
      auth: "key",
      meridian: true,
      handler: (c) => admin.rotatePlaneCredential(ctx, c.principal, c.params.name),
    }),
    route({
      method: "POST",
      url: "/v1/admin/teams",
      summary: "Creates a team",
      auth: "key",
      body: s.createTeamBody,
      response: "TeamV1",
      meridian: true,
      handler: (c) => accounts.createTeam(ctx, c.principal, c.body.name),
    }),
    route({
      method: "POST",
      url: "/v1/admin/users",
      summary: "Adds a user; returns their first personal API key (shown once)",
      auth: "key",
      body: s.createUserBody,
      meridian: true,
      handler: (c) => accounts.createUser(ctx, c.principal, c.body),
    }),
  ];
}
