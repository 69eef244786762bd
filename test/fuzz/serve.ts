// A real server in a process of its own for the fuzzing harness (lib.ts `startServer`), so its RSS and file
// descriptors are its own and a crash is seen as an exit: `serve.ts <kind>` starts it on loopback port 0,
// prints one JSON line (its addresses, keys), then collects garbage on each `gc` line of stdin and stops
// when stdin ends or on SIGTERM.
//   ingress-wire, ingress-http  the plane's ingress on that transport, routing to a node:http replica
//   dns                         the authoritative DNS server, UDP and TCP on one port
//   control                     a control plane on a SQLite file (management API, GraphQL, S3)

import { createServer as createHttpServer } from "node:http";
import type { AddressInfo } from "node:net";
import { createInterface } from "node:readline";
import pino from "pino";
import type { DnsSnapshot, PlaneSnapshot } from "../../src/core/snapshot.ts";
import { DnsServer } from "../../src/dns/server.ts";
import { createIngress } from "../../src/gateway/ingress.ts";
import { generateSigningKey } from "../../src/lib/keys.ts";
import { staticSnapshotSource } from "../../src/lib/watch.ts";
import { startTestControl } from "../support/control.ts";
import { DNS_FIXTURE, INGRESS_KEY, ingressSnapshot } from "./fixtures.ts";

const kind = process.argv[2] ?? "";
const logger = pino({ level: "silent" });
const stops: Array<() => Promise<void>> = [];

async function serveIngress(transport: "wire" | "http"): Promise<Record<string, unknown>> {
  // The replica: answers every request with a small JSON body once the request is read whole; nothing is
  // recorded, so the process's memory is the ingress's.
  const replica = createHttpServer((req, res) => {
    let bytes = 0;
    req.on("data", (c: Buffer) => {
      bytes += c.length;
    });
    req.on("end", () => {
      const body = JSON.stringify({ ok: true, bytes, path: req.url });
      res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
      res.end(body);
    });
  });
  replica.keepAliveTimeout = 5_000;
  await new Promise<void>((r) => replica.listen(0, "127.0.0.1", r));
  const endpoint = `127.0.0.1:${(replica.address() as AddressInfo).port}`;
  const snapshot: PlaneSnapshot = ingressSnapshot(generateSigningKey());
  const ingress = createIngress({
    transport,
    plane: { name: snapshot.plane.name, region: snapshot.plane.region },
    listen: { host: "127.0.0.1", port: 0 },
    signingKey: generateSigningKey(),
    snapshot: () => snapshot,
    localReplicas: () => [endpoint],
    logger,
    limits: {
      maxBodyBytes: 256 * 1024,
      headersTimeoutMs: 1_000,
      requestTimeoutMs: 2_500,
      keepAliveTimeoutMs: 1_500,
      maxHeaderBytes: 8 * 1024,
      predictTimeoutMs: 4_000,
      connectTimeoutMs: 1_000,
      drainTimeoutMs: 1_000,
    },
  });
  if (ingress.transport !== transport) throw new Error(`asked for ${transport}, got ${ingress.transport}`);
  await ingress.start();
  stops.push(
    () => ingress.stop(),
    () =>
      new Promise<void>((r) => {
        replica.close(() => r());
        replica.closeAllConnections();
      }),
  );
  return { port: ingress.address!.port, transport, domain: snapshot.domain, key: INGRESS_KEY };
}

async function serveDns(): Promise<Record<string, unknown>> {
  const snapshot: DnsSnapshot = DNS_FIXTURE;
  const server = new DnsServer({
    host: "127.0.0.1",
    port: 0,
    domain: snapshot.domain,
    nsAddresses: ["127.0.0.53"],
    logger,
    snapshots: staticSnapshotSource(snapshot),
    tcpIdleTimeoutMs: 2_000,
  });
  await server.start();
  stops.push(() => server.stop());
  return { port: server.address.port };
}

async function serveControl(): Promise<Record<string, unknown>> {
  const t = await startTestControl("sqlite");
  stops.push(() => t.stop());
  return { url: t.control.url, adminKey: t.control.adminKey };
}

let stopping = false;
async function stop(): Promise<void> {
  if (stopping) return;
  stopping = true;
  for (const s of stops.reverse()) await s().catch(() => {});
  process.exit(0);
}

const info =
  kind === "ingress-wire"
    ? await serveIngress("wire")
    : kind === "ingress-http"
      ? await serveIngress("http")
      : kind === "dns"
        ? await serveDns()
        : kind === "control"
          ? await serveControl()
          : null;
if (info === null) {
  console.error(`serve.ts: unknown kind '${kind}'`);
  process.exit(2);
}
process.stdout.write(`${JSON.stringify(info)}\n`);
process.on("SIGTERM", () => void stop());
const stdin = createInterface({ input: process.stdin });
stdin.on("line", (line) => {
  if (line === "gc") (globalThis as { gc?: () => void }).gc?.();
});
stdin.on("close", () => void stop());
