// The ingress's TLS server options for certificates chosen by SNI (src/plane/tls-store.ts): the certificate
// of the name the client asked for, or the server's own (default) one, and fresh session-ticket keys whenever
// a certificate is withdrawn, so a session set up under it cannot be resumed without it.

import { randomBytes } from "node:crypto";
import type { SecureContext, Server, TlsOptions } from "node:tls";

/** Certificates by hostname, held and reloaded by the plane. */
export interface SniCertificates {
  /** The context for `servername` (lowercase, no trailing dot), or undefined for the server's default. */
  contextFor(servername: string): SecureContext | undefined;
  /** Calls `listener` after a certificate was removed or replaced; returns the unsubscribe function. */
  onWithdraw(listener: () => void): () => void;
}

/** `SNICallback` for tls/https.createServer; a client that sends no SNI (a hop to an IP) gets the default. */
export function sniServerOptions(sni: SniCertificates | undefined): Pick<TlsOptions, "SNICallback"> {
  if (sni === undefined) return {};
  return {
    SNICallback: (servername, done) => {
      const name = servername.toLowerCase().replace(/\.$/, "");
      done(null, sni.contextFor(name));
    },
  };
}

/**
 * Session tickets are sealed with the server's ticket keys whichever certificate the handshake used, so a
 * client could resume a session for a hostname after the plane lost its key (RFC 8446 §2.2: resumption
 * skips the certificate). New keys make every earlier ticket undecryptable: the client does a full
 * handshake, sees the default certificate, and fails verification.
 */
export function withdrawSessionsOnChange(server: Server, sni: SniCertificates | undefined): void {
  sni?.onWithdraw(() => server.setTicketKeys(randomBytes(48)));
}
