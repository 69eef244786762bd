// The management audit log.

import * as admin from "../admin.ts";
import type { ControlContext } from "../context.ts";
import * as s from "../schemas.ts";
import type { Infer } from "./infer.ts";
import { type Route, route } from "./route.ts";

export function auditRoutes(ctx: ControlContext): Route[] {
  return [
    route({
      method: "GET",
      url: "/v1/audit_logs",
      summary: "Lists management audit log entries, newest first",
      auth: "key",
      query: s.auditQuery,
      meridian: true,
      handler: (c) => admin.auditLogs(ctx, c.principal, auditQueryOf(c.query)),
    }),
    route({
      method: "GET",
      url: "/v1/models/{model_id}/audit_logs",
      summary: "Lists a model's audit log entries, newest first",
      auth: "key",
      query: s.auditQuery,
      meridian: true,
      handler: (c) =>
        admin.auditLogs(ctx, c.principal, { ...auditQueryOf(c.query), model_id: c.params.model_id }),
    }),
  ];
}

function auditQueryOf(query: Infer<typeof s.auditQuery>): admin.AuditQuery {
  return {
    ...(query.limit ? { limit: Number(query.limit) } : {}),
    ...(query.cursor ? { before_id: Number(query.cursor) } : {}),
  };
}
