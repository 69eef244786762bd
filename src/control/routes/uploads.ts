// Model package uploads: the upload target and the raw upload.

import type { ControlContext } from "../context.ts";
import * as models from "../models.ts";
import * as s from "../schemas.ts";
import { type Route, type RouteOptions, route } from "./route.ts";

export function uploadsRoutes(ctx: ControlContext, options: RouteOptions): Route[] {
  return [
    route({
      method: "POST",
      url: "/v1/prepare_model_upload",
      summary: "Validates a model push payload and issues upload credentials",
      auth: "key",
      body: s.prepareUploadBody,
      handler: (c) => models.prepareUpload(ctx, c.principal, c.body),
    }),
    route({
      method: "PUT",
      url: "/v1/artifacts/*",
      summary: "Uploads a model package (gzipped tar) to its target",
      auth: "key",
      raw: true,
      meridian: true,
      handler: (c) =>
        models.receiveUpload(ctx, c.principal, c.params["*"], c.request.raw, options.uploadLimit),
    }),
  ];
}
