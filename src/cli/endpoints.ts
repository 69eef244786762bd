// The inference URLs of a model, as users call them (DESIGN.md §3): the standard endpoint for each form,
// and the regional endpoint when the environment is region-restricted.

import { regionalHostname, standardHostname } from "../core/host.ts";

export interface ModelLike {
  id: string;
}

export interface Endpoints {
  standard: string;
  regional: string | null;
  deployment: string;
  region: string | null;
}

/** `port` is appended when it is not HTTPS's 443. */
export function endpointsOf(
  domain: string,
  modelId: string,
  environment: string | null,
  deploymentId: string,
  region: string | null,
  port = 443,
): Endpoints {
  const suffix = port === 443 ? "" : `:${port}`;
  const standard = `https://${standardHostname(modelId, domain)}${suffix}`;
  const path =
    environment === null
      ? `/deployment/${deploymentId}/predict`
      : environment === "production"
        ? "/production/predict"
        : `/environments/${environment}/predict`;
  return {
    standard: `${standard}${path}`,
    regional:
      environment !== null && region !== null
        ? `https://${regionalHostname(modelId, environment, domain)}${suffix}/predict`
        : null,
    deployment: `${standard}/deployment/${deploymentId}/predict`,
    region,
  };
}
