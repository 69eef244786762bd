// Residency evidence (issue 14): an environment's evidence document, assembled on demand from the planes'
// signed pieces. The key directory it is checked against is public and served beside /v1/info (../app.ts).

import type { ControlContext } from "../context.ts";
import * as evidence from "../evidence.ts";
import { type Route, route } from "./route.ts";

/** `from` and `to` as RFC 3339 times; their syntax and order are checked by the handler, naming the field. */
const evidenceQuery = {
  type: "object",
  additionalProperties: false,
  properties: {
    from: { type: "string", minLength: 1, maxLength: 64 },
    to: { type: "string", minLength: 1, maxLength: 64 },
  },
} as const;

export function evidenceRoutes(ctx: ControlContext): Route[] {
  return [
    route({
      method: "GET",
      url: "/v1/models/{model_id}/environments/{env_name}/evidence",
      summary:
        "Gets an environment's residency evidence for [from, to): every plane's signed piece, gathered on demand (default: the last day)",
      auth: "key",
      query: evidenceQuery,
      meridian: true,
      handler: (c) =>
        evidence.environmentEvidence(ctx, c.principal, c.params.model_id, c.params.env_name, {
          ...(c.query.from !== undefined ? { from: c.query.from } : {}),
          ...(c.query.to !== undefined ? { to: c.query.to } : {}),
        }),
    }),
  ];
}
