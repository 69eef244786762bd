// The request counts a plane reports, as the control plane keeps them (DESIGN.md §2.6: aggregates only).
// A count names a model and an environment only when both exist; anything else is kept under fixed names,
// so neither a caller's guesses nor a faulty plane can add rows without bound (DESIGN.md §2.8).

import type { PlaneReport } from "./snapshot.ts";

export type RequestCount = PlaneReport["request_counts"][number];

/** The model id of counts whose model does not exist (never a model id: those are 8 characters). */
export const UNKNOWN_MODEL = "unknown";

/**
 * Maps reported counts onto names that exist, merging the ones that fall together. `environments` gives
 * a model's environment names, or undefined when the model does not exist. A count for an environment
 * the model does not have is kept as the model's count without an environment (`null`).
 */
export function resolveRequestCounts(
  counts: readonly RequestCount[],
  environments: (modelId: string) => ReadonlySet<string> | undefined,
): RequestCount[] {
  const merged = new Map<string, RequestCount>();
  for (const c of counts) {
    if (c.count <= 0) continue;
    const names = environments(c.model_id);
    const model_id = names === undefined ? UNKNOWN_MODEL : c.model_id;
    const environment =
      names !== undefined && c.environment !== null && names.has(c.environment) ? c.environment : null;
    const key = `${model_id}\0${environment ?? ""}\0${c.status_class}`;
    const seen = merged.get(key);
    if (seen === undefined)
      merged.set(key, { model_id, environment, status_class: c.status_class, count: c.count });
    else seen.count += c.count;
  }
  return [...merged.values()];
}
