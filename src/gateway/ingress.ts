// The ingress gateway of a workload plane (DESIGN.md §2.2, §2.3, §2.6, §4). It authenticates, routes by
// Host, streams to a local replica or hands over to one peer plane, stamps the proof headers on every
// response, and writes one audit record per request. The decisions live in `gateway.ts`; the bytes are a
// transport's:
// - `wire` (the default): a node:net server driven by Node's own llhttp parser with its own upstream
//   socket pool (src/gateway/wire/), the design PERFORMANCE-NOTES.md measured fastest, gated by the
//   raw-socket smuggling and framing suite (framing.test.ts) and a self-test of the parser;
// - `http`: node:http in front, undici `dispatch` behind (http-transport.ts), the fallback when the
//   parser's internal API is not what the wire transport was built against.

import { createHttpIngress } from "./http-transport.ts";
import { DEFAULT_LIMITS, type Ingress, type IngressLimits, type IngressOptions } from "./options.ts";
import { loadParser } from "./wire/llhttp.ts";
import { createWireIngress } from "./wire/server.ts";

export { REPLICA_PREDICT_PATH } from "./gateway.ts";
export {
  DEFAULT_LIMITS,
  type Ingress,
  type IngressLimits,
  type IngressOptions,
  type IngressTransport,
} from "./options.ts";

/** `parser` is for tests of the fallback; by default Node's own, checked by its self-test. */
export function createIngress(
  options: IngressOptions,
  parser: ReturnType<typeof loadParser> = loadParser(),
): Ingress {
  const limits: IngressLimits = { ...DEFAULT_LIMITS, ...options.limits };
  const wanted = options.transport ?? "wire";
  if (wanted === "wire") {
    if (parser.ok) return createWireIngress(options, limits, parser.parser);
    options.logger?.warn(
      { reason: parser.reason },
      "Node's HTTP parser is not usable by the wire transport; the ingress runs on node:http",
    );
  }
  return createHttpIngress(options, limits);
}
