// The authoritative DNS server for the inference domain: UDP (node:dgram) and TCP (node:net, RFC 1035
// §4.2.2) on one port, answering from an in-memory snapshot that a SnapshotSource swaps atomically.
import { createSocket, type Socket as UdpSocket } from "node:dgram";
import { once } from "node:events";
import { createServer, isIP, type Server, type Socket } from "node:net";
import type { Logger } from "pino";
import { type DnsZone, dnsZone, normalizeDnsName } from "../core/dns-answers.ts";
import type { DnsSnapshot } from "../core/snapshot.ts";
import type { SnapshotSource } from "../lib/watch.ts";
import { respond, type Transport } from "./wire.ts";

export interface DnsServerOptions {
  /** IP address to listen on (UDP and TCP). */
  host: string;
  /** Port for both transports; 0 picks a free one (the same for UDP and TCP). */
  port: number;
  /** The inference domain this server is authoritative for. */
  domain: string;
  /** TTL of answers in seconds (default 5); also the negative-caching TTL unless `negativeTtl` is set. */
  ttl?: number;
  negativeTtl?: number;
  /** This server's host name: SOA MNAME and the apex NS (default `ns.{domain}`). */
  nsName?: string;
  /** Addresses answered for `nsName` when it lies inside the domain. */
  nsAddresses?: string[];
  hostmaster?: string;
  logger: Logger;
  /** Where snapshots come from; the server subscribes on start() and unsubscribes on stop(). */
  snapshots?: SnapshotSource<DnsSnapshot>;
  /** RFC 7766 §6.2.3: close a TCP connection idle this long (default 10 s). */
  tcpIdleTimeoutMs?: number;
  /** Refuse TCP connections beyond this many at once (default 1000). */
  maxTcpConnections?: number;
}

const DEFAULT_TCP_IDLE_MS = 10_000;
const DEFAULT_MAX_TCP = 1_000;
/** How long stop() lets TCP clients read their last answers before their sockets are destroyed. */
const DRAIN_MS = 1_000;

export class DnsServer {
  readonly zone: DnsZone;
  readonly #options: DnsServerOptions;
  readonly #log: Logger;
  #snapshot: DnsSnapshot | null = null;
  #udp: UdpSocket | null = null;
  #tcp: Server | null = null;
  readonly #connections = new Set<Socket>();
  #unsubscribe: (() => void) | null = null;
  #port = 0;

  constructor(options: DnsServerOptions) {
    const family = isIP(options.host);
    if (family === 0) throw new RangeError(`DNS listen host must be an IP address, got '${options.host}'`);
    this.#options = options;
    this.#log = options.logger;
    this.zone = dnsZone({
      domain: options.domain,
      ...(options.ttl !== undefined ? { ttl: options.ttl } : {}),
      ...(options.negativeTtl !== undefined ? { negativeTtl: options.negativeTtl } : {}),
      ...(options.nsName !== undefined ? { nsName: options.nsName } : {}),
      ...(options.nsAddresses !== undefined ? { nsAddresses: options.nsAddresses } : {}),
      ...(options.hostmaster !== undefined ? { hostmaster: options.hostmaster } : {}),
    });
  }

  /** The bound address; valid after start(). */
  get address(): { host: string; port: number } {
    return { host: this.#options.host, port: this.#port };
  }

  /** The snapshot answers come from right now (null until the first one). */
  get snapshot(): DnsSnapshot | null {
    return this.#snapshot;
  }

  /**
   * Swaps the snapshot that answers come from. Every query reads the reference once, so a query is answered
   * wholly from the old or wholly from the new snapshot. A snapshot for another domain is refused.
   */
  setSnapshot(snapshot: DnsSnapshot): boolean {
    if (normalizeDnsName(snapshot.domain) !== this.zone.domain) {
      this.#log.error(
        { snapshotDomain: snapshot.domain, domain: this.zone.domain, revision: snapshot.revision },
        "dns snapshot is for another domain; keeping the current one",
      );
      return false;
    }
    this.#snapshot = snapshot;
    this.#log.info({ revision: snapshot.revision }, "dns snapshot swapped");
    return true;
  }

  async start(): Promise<void> {
    if (this.#udp !== null) throw new Error("DnsServer already started");
    const source = this.#options.snapshots;
    if (source) {
      this.#unsubscribe = source.subscribe((s) => this.setSnapshot(s));
      const current = source.current();
      if (current !== null) this.setSnapshot(current);
    }
    // With port 0 the UDP socket picks the port and TCP must get the same one; on the rare clash, retry.
    for (let attempt = 1; ; attempt++) {
      const udp = await this.#bindUdp(this.#options.port);
      const port = udp.address().port;
      try {
        this.#tcp = await this.#listenTcp(port);
        this.#udp = udp;
        this.#port = port;
        break;
      } catch (err) {
        udp.close();
        if (this.#options.port !== 0 || attempt >= 5) {
          this.#unsubscribe?.();
          throw err;
        }
      }
    }
    this.#log.info(
      {
        host: this.#options.host,
        port: this.#port,
        domain: this.zone.domain,
        revision: this.#snapshot?.revision,
      },
      "dns listening",
    );
  }

  /** Stops accepting, lets TCP clients read what they were sent, then closes everything. */
  async stop(): Promise<void> {
    this.#unsubscribe?.();
    this.#unsubscribe = null;
    const udp = this.#udp;
    const tcp = this.#tcp;
    this.#udp = null;
    this.#tcp = null;
    const closed: Promise<unknown>[] = [];
    if (udp) closed.push(new Promise<void>((resolve) => udp.close(() => resolve())));
    if (tcp) closed.push(new Promise<void>((resolve) => tcp.close(() => resolve())));
    for (const socket of this.#connections) {
      socket.end();
      socket.setTimeout(0);
      setTimeout(() => socket.destroy(), DRAIN_MS).unref();
    }
    await Promise.all(closed);
    this.#log.info({ port: this.#port }, "dns stopped");
  }

  async #bindUdp(port: number): Promise<UdpSocket> {
    const udp = createSocket({ type: isIP(this.#options.host) === 6 ? "udp6" : "udp4" });
    udp.on("message", (message, remote) => {
      const response = this.#answer(message, "udp", remote.address);
      if (response) udp.send(response, remote.port, remote.address);
    });
    const bound = once(udp, "listening");
    udp.bind(port, this.#options.host);
    await bound;
    // Errors after binding (a send to an unreachable peer) must never crash the server.
    udp.on("error", (err) => this.#log.warn({ err }, "dns udp socket error"));
    return udp;
  }

  async #listenTcp(port: number): Promise<Server> {
    const server = createServer((socket) => this.#serveTcp(socket));
    server.maxConnections = this.#options.maxTcpConnections ?? DEFAULT_MAX_TCP;
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen({ port, host: this.#options.host }, () => {
        server.off("error", reject);
        resolve();
      });
    });
    server.on("error", (err) => this.#log.error({ err }, "dns tcp server error"));
    return server;
  }

  /** RFC 1035 §4.2.2: each message is prefixed by its 2-octet length; RFC 7766 §6.2.1: many per connection. */
  #serveTcp(socket: Socket): void {
    // A connection accepted while stop() runs would otherwise hold server.close() open.
    if (this.#tcp === null) {
      socket.destroy();
      return;
    }
    this.#connections.add(socket);
    socket.setNoDelay(true);
    socket.setTimeout(this.#options.tcpIdleTimeoutMs ?? DEFAULT_TCP_IDLE_MS);
    socket.on("timeout", () => socket.end());
    socket.on("error", () => socket.destroy());
    socket.on("close", () => this.#connections.delete(socket));
    let buffered: Buffer = Buffer.alloc(0);
    socket.on("data", (chunk: Buffer) => {
      buffered = buffered.length === 0 ? chunk : Buffer.concat([buffered, chunk]);
      while (buffered.length >= 2) {
        const length = buffered.readUInt16BE(0);
        if (buffered.length < 2 + length) break;
        const message = buffered.subarray(2, 2 + length);
        buffered = buffered.subarray(2 + length);
        const response = this.#answer(message, "tcp", socket.remoteAddress ?? "");
        if (response === null) continue;
        const prefix = Buffer.alloc(2);
        prefix.writeUInt16BE(response.length, 0);
        // A client that pipelines without reading must not grow our buffers without bound.
        if (!socket.write(Buffer.concat([prefix, response]))) {
          socket.pause();
          socket.once("drain", () => socket.resume());
        }
      }
    });
  }

  #answer(message: Buffer, transport: Transport, client: string): Buffer | null {
    try {
      const response = respond(this.zone, this.#snapshot, message, transport);
      if (response === null) {
        this.#log.debug({ client, transport, bytes: message.length }, "dns message dropped");
        return null;
      }
      this.#log.debug(
        {
          client,
          transport,
          question: response.question,
          rcode: response.rcode,
          truncated: response.truncated,
        },
        "dns query",
      );
      return response.message;
    } catch (err) {
      // `respond` handles every malformed input itself; reaching here is a bug, and the server stays up.
      this.#log.error({ err, client, transport }, "dns query failed");
      return null;
    }
  }
}
