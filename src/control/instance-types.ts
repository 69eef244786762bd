// The instance types a Meridian installation offers (`GET /v1/instance_types`): one. Every replica takes one
// slot of a plane's capacity and all slots are alike, so there is one type, the one every deployment and
// environment names (docs/decisions.md).

import type { Principal } from "../core/access.ts";
import { requireCapability } from "./lookup.ts";
import { INSTANCE_TYPE } from "./views.ts";

export function listInstanceTypes(p: Principal) {
  requireCapability(p, "read");
  return { instance_types: [INSTANCE_TYPE] };
}
