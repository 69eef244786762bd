// The per-request audit record a plane keeps in its own region (DESIGN.md §2.6): metadata only, never a
// body or a key. Written by src/gateway/audit.ts; read by evidence (src/core/evidence.ts).

import type { HostnameForm } from "./domain.ts";

export interface AuditRecord {
  /** ISO 8601 time the request arrived. */
  time: string;
  request_id: string;
  model_id: string | null;
  environment: string | null;
  deployment_id: string | null;
  hostname_form: HostnameForm | null;
  /** Every plane the request passed through, as in `x-meridian-route`. */
  route: string[];
  /** Status the client saw; 499 when the client went away before a status was sent. */
  status: number;
  latency_ms: number;
  /** The plane that wrote this record, and its region. */
  plane: string;
  region: string;
  /** The plane whose replica processed the request, as in `x-meridian-plane`. */
  processed_by: string | null;
  /** The plane that handed the request over a verified hop; null when a client sent it here. */
  forwarded_from: string | null;
  /** Meridian's error code when the ingress (or a peer plane) refused or failed the request. */
  error_code: string | null;
  /** The response was cut short (client gone, or the replica died after the status was sent). */
  aborted: boolean;
}
