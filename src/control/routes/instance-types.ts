// Instance types.

import { listInstanceTypes } from "../instance-types.ts";
import { type Route, route } from "./route.ts";

export function instanceTypesRoutes(): Route[] {
  return [
    route({
      method: "GET",
      url: "/v1/instance_types",
      summary: "Gets all available instance types (one: a replica slot of a plane)",
      auth: "key",
      response: "InstanceTypesV1",
      handler: async (c) => listInstanceTypes(c.principal),
    }),
  ];
}
