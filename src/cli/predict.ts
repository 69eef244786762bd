// `meridian predict`: calls a model the way a client does — hostname by endpoint form, resolved through
// Meridian's DNS, HTTPS with the installation's CA — and says where the request was processed.

import { readFileSync } from "node:fs";
import { Agent, request } from "undici";
import { regionalHostname, standardHostname } from "../core/host.ts";
import { CliError } from "./api.ts";
import { resolveA } from "./resolve.ts";

export type Target =
  | { form: "standard"; environment: string }
  | { form: "regional"; environment: string }
  | { form: "deployment"; deploymentId: string };

export interface PredictOptions {
  domain: string;
  modelId: string;
  target: Target;
  body: string;
  apiKey: string;
  dns: string | null;
  caFile: string | null;
  port: number;
  scheme: "https" | "http";
  timeoutMs: number;
}

export interface PredictResult {
  url: string;
  address: string;
  status: number;
  body: unknown;
  processed: {
    region: string | null;
    plane: string | null;
    route: string | null;
    deployment: string | null;
    request_id: string | null;
  };
  warning: string | null;
}

function header(h: Record<string, string | string[] | undefined>, name: string): string | null {
  const v = h[name];
  return Array.isArray(v) ? (v[0] ?? null) : (v ?? null);
}

export async function predict(o: PredictOptions): Promise<PredictResult> {
  const host =
    o.target.form === "regional"
      ? regionalHostname(o.modelId, o.target.environment, o.domain)
      : standardHostname(o.modelId, o.domain);
  const path =
    o.target.form === "regional"
      ? "/predict"
      : o.target.form === "deployment"
        ? `/deployment/${o.target.deploymentId}/predict`
        : o.target.environment === "production"
          ? "/production/predict"
          : `/environments/${o.target.environment}/predict`;
  if (!o.dns)
    throw new CliError(
      "No DNS server to resolve inference hostnames: pass --dns IP:PORT or set MERIDIAN_DNS.",
    );
  const [address] = await resolveA(host, o.dns);
  const url = `${o.scheme}://${host}${o.port === (o.scheme === "https" ? 443 : 80) ? "" : `:${o.port}`}${path}`;
  const ca = o.caFile ? readFileSync(o.caFile) : undefined;
  const dispatcher = new Agent({
    connect: {
      // Connect to the address Meridian's DNS gave, with SNI and certificate checks for the hostname.
      lookup: (_hostname, options, cb) =>
        (options as { all?: boolean }).all
          ? cb(null, [{ address: address!, family: 4 }] as never)
          : cb(null, address!, 4),
      servername: host,
      ...(ca ? { ca } : {}),
    },
    headersTimeout: o.timeoutMs,
    bodyTimeout: o.timeoutMs,
  });
  try {
    const res = await request(url, {
      method: "POST",
      dispatcher,
      headers: { authorization: `Api-Key ${o.apiKey}`, "content-type": "application/json" },
      body: o.body,
    });
    const text = await res.body.text();
    let body: unknown = text;
    try {
      body = JSON.parse(text);
    } catch {}
    const h = res.headers;
    return {
      url,
      address: address!,
      status: res.statusCode,
      body,
      processed: {
        region: header(h, "x-meridian-region"),
        plane: header(h, "x-meridian-plane"),
        route: header(h, "x-meridian-route"),
        deployment: header(h, "x-meridian-deployment-id"),
        request_id: header(h, "x-request-id"),
      },
      warning: header(h, "warning"),
    };
  } catch (err) {
    throw new CliError(`Request to ${url} (${address}) failed: ${(err as Error).message}`);
  } finally {
    await dispatcher.close();
  }
}
