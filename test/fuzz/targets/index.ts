// Every fuzz target by name (`npm run fuzz -- --target <name>`).
import type { FuzzTarget } from "../lib.ts";
import { apiTarget, graphqlTarget, s3Target } from "./control.ts";
import { dnsTarget } from "./dns.ts";
import { hostTarget } from "./host.ts";
import { httpNodeTarget, httpWireTarget } from "./http-head.ts";
import { snapshotTarget } from "./snapshot.ts";

export const TARGETS: Record<string, FuzzTarget<never>> = {
  host: hostTarget as FuzzTarget<never>,
  snapshot: snapshotTarget as FuzzTarget<never>,
  dns: dnsTarget as FuzzTarget<never>,
  "http-wire": httpWireTarget as FuzzTarget<never>,
  "http-node": httpNodeTarget as FuzzTarget<never>,
  api: apiTarget,
  graphql: graphqlTarget,
  s3: s3Target,
};
