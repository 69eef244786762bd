// The management API's route table: one file per resource, each a list of routes whose bodies, queries
// and path parameters are typed from the schemas that validate them (./route.ts). The app (../app.ts)
// registers them and builds the OpenAPI document at /v1/spec from the same list.

import type { ControlContext } from "../context.ts";
import { adminRoutes } from "./admin.ts";
import { auditRoutes } from "./audit.ts";
import { deploymentsRoutes } from "./deployments.ts";
import { environmentsRoutes } from "./environments.ts";
import { evidenceRoutes } from "./evidence.ts";
import { groupsRoutes } from "./groups.ts";
import { identityRoutes } from "./identity.ts";
import { instanceTypesRoutes } from "./instance-types.ts";
import { internalRoutes } from "./internal.ts";
import { modelsRoutes } from "./models.ts";
import { regionsRoutes } from "./regions.ts";
import type { Route, RouteOptions } from "./route.ts";
import { secretsRoutes } from "./secrets.ts";
import { uploadsRoutes } from "./uploads.ts";
import { webhookSecretRoutes } from "./webhook-secrets.ts";

export function controlRoutes(ctx: ControlContext, options: RouteOptions): Route[] {
  return [
    ...identityRoutes(ctx),
    ...regionsRoutes(ctx),
    ...instanceTypesRoutes(),
    ...uploadsRoutes(ctx, options),
    ...modelsRoutes(ctx),
    ...deploymentsRoutes(ctx),
    ...environmentsRoutes(ctx),
    ...evidenceRoutes(ctx),
    ...groupsRoutes(ctx),
    ...secretsRoutes(ctx),
    ...auditRoutes(ctx),
    ...adminRoutes(ctx),
    ...internalRoutes(ctx, options),
    ...webhookSecretRoutes(ctx),
  ];
}
