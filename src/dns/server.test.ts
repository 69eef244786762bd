// The DNS server over real UDP and TCP sockets on 127.0.0.1: answers per form, negative answers, EDNS,
// truncation and TCP retry, framing, malformed input, snapshot swaps, and following a control plane.
import { createSocket } from "node:dgram";
import { once } from "node:events";
import { createServer as createHttpServer, type ServerResponse } from "node:http";
import { type AddressInfo, connect, type Socket } from "node:net";
import dnsPacket from "dns-packet";
import fc from "fast-check";
import pino from "pino";
import { afterEach, describe, expect, it } from "vitest";
import { checkDnsSnapshot } from "../core/dns-answers.ts";
import type { DnsSnapshot } from "../core/snapshot.ts";
import { SnapshotWatcher, staticSnapshotSource } from "../lib/watch.ts";
import { DnsServer, type DnsServerOptions } from "./server.ts";

const logger = pino({ level: "silent" });

const manyEu = Array.from({ length: 20 }, (_, i) => `10.1.${Math.floor(i / 250)}.${(i % 250) + 1}`);

function fixture(revision = 1): DnsSnapshot {
  return {
    revision,
    domain: "meridian.test",
    global_ingress: ["127.0.0.10"],
    regions: { us: ["127.0.0.10"], eu: ["127.0.0.20", "127.0.0.21"], uk: ["127.0.0.30"], big: manyEu },
    models: [
      {
        id: "abc12345",
        regional_environments: [
          { name: "prod-eu", region: "eu" },
          { name: "prod-uk", region: "uk" },
          { name: "huge", region: "big" },
        ],
      },
    ],
  };
}

const servers: DnsServer[] = [];
afterEach(async () => {
  for (const server of servers.splice(0)) await server.stop();
});

async function startServer(options: Partial<DnsServerOptions> = {}): Promise<DnsServer> {
  const server = new DnsServer({
    host: "127.0.0.1",
    port: 0,
    domain: "meridian.test",
    nsAddresses: ["127.0.0.53"],
    logger,
    snapshots: staticSnapshotSource(fixture()),
    ...options,
  });
  await server.start();
  servers.push(server);
  return server;
}

let nextId = 1;
function query(name: string, type: dnsPacket.RecordType = "A", edns?: { size?: number; version?: number }) {
  const id = nextId++ & 0xffff;
  const additionals: dnsPacket.Answer[] = edns
    ? [
        {
          name: ".",
          type: "OPT",
          udpPayloadSize: edns.size ?? 1232,
          extendedRcode: 0,
          ednsVersion: edns.version ?? 0,
          flags: 0,
          flag_do: false,
          options: [],
        },
      ]
    : [];
  return dnsPacket.encode({
    type: "query",
    id,
    flags: dnsPacket.RECURSION_DESIRED,
    questions: [{ name, type, class: "IN" }],
    additionals,
  });
}

type Decoded = dnsPacket.DecodedPacket & { rcode: string };

async function udpRaw(port: number, message: Buffer, timeoutMs = 1_000): Promise<Buffer | null> {
  const socket = createSocket("udp4");
  try {
    socket.send(message, port, "127.0.0.1");
    const reply = once(socket, "message").then(([msg]) => msg as Buffer);
    const timeout = new Promise<null>((resolve) => setTimeout(() => resolve(null), timeoutMs));
    return await Promise.race([reply, timeout]);
  } finally {
    socket.close();
  }
}

async function udp(port: number, message: Buffer): Promise<Decoded> {
  const reply = await udpRaw(port, message);
  if (reply === null) throw new Error("no UDP reply");
  return dnsPacket.decode(reply) as Decoded;
}

/** A TCP client that reads length-prefixed messages (RFC 1035 §4.2.2). */
class TcpClient {
  readonly #messages: Buffer[] = [];
  #buffer = Buffer.alloc(0);
  #waiters: Array<() => void> = [];
  closed = false;
  constructor(readonly socket: Socket) {
    socket.on("data", (chunk: Buffer) => {
      this.#buffer = Buffer.concat([this.#buffer, chunk]);
      while (this.#buffer.length >= 2 && this.#buffer.length >= 2 + this.#buffer.readUInt16BE(0)) {
        const length = this.#buffer.readUInt16BE(0);
        this.#messages.push(this.#buffer.subarray(2, 2 + length));
        this.#buffer = this.#buffer.subarray(2 + length);
      }
      for (const w of this.#waiters.splice(0)) w();
    });
    socket.on("close", () => {
      this.closed = true;
      for (const w of this.#waiters.splice(0)) w();
    });
  }
  static async open(port: number): Promise<TcpClient> {
    const socket = connect(port, "127.0.0.1");
    await once(socket, "connect");
    return new TcpClient(socket);
  }
  static frame(message: Buffer): Buffer {
    const prefix = Buffer.alloc(2);
    prefix.writeUInt16BE(message.length);
    return Buffer.concat([prefix, message]);
  }
  async next(): Promise<Decoded> {
    while (this.#messages.length === 0) {
      if (this.closed) throw new Error("connection closed");
      await new Promise<void>((resolve) => this.#waiters.push(resolve));
    }
    return dnsPacket.decode(this.#messages.shift()!) as Decoded;
  }
  close(): void {
    this.socket.destroy();
  }
}

async function tcp(port: number, message: Buffer): Promise<Decoded> {
  const client = await TcpClient.open(port);
  try {
    client.socket.write(TcpClient.frame(message));
    return await client.next();
  } finally {
    client.close();
  }
}

const addresses = (p: Decoded) => (p.answers ?? []).map((a) => (a as { data: unknown }).data);

describe("DnsServer over UDP", () => {
  it("answers standard and regional names with the right addresses, authoritatively", async () => {
    const { port } = (await startServer()).address;
    const standard = await udp(port, query("model-abc12345.meridian.test"));
    expect(standard.rcode).toBe("NOERROR");
    expect(standard.flag_aa).toBe(true);
    expect(standard.flag_qr).toBe(true);
    expect(standard.flag_rd).toBe(true);
    expect(standard.flag_ra).toBe(false);
    expect(addresses(standard)).toEqual(["127.0.0.10"]);
    expect((standard.answers![0] as { ttl: number }).ttl).toBe(5);

    const eu = await udp(port, query("model-abc12345-prod-eu.meridian.test"));
    expect(addresses(eu)).toEqual(["127.0.0.20", "127.0.0.21"]);
    const uk = await udp(port, query("model-abc12345-prod-uk.meridian.test"));
    expect(addresses(uk)).toEqual(["127.0.0.30"]);
  });

  it("echoes the id and the question octet for octet (RFC 4343 case)", async () => {
    const { port } = (await startServer()).address;
    const q = query("MoDeL-AbC12345.Meridian.TEST");
    const reply = await udp(port, q);
    expect(reply.id).toBe(q.readUInt16BE(0));
    expect(reply.questions).toEqual([{ name: "MoDeL-AbC12345.Meridian.TEST", type: "A", class: "IN" }]);
    expect(reply.answers![0]!.name).toBe("MoDeL-AbC12345.Meridian.TEST");
  });

  it("answers NXDOMAIN with the SOA for unknown names, NODATA for AAAA, REFUSED outside the zone", async () => {
    const { port } = (await startServer({ ttl: 7 })).address;
    const nx = await udp(port, query("model-zzzzzzzz.meridian.test"));
    expect(nx.rcode).toBe("NXDOMAIN");
    expect(nx.flag_aa).toBe(true);
    expect(nx.answers).toEqual([]);
    expect(nx.authorities).toMatchObject([
      {
        type: "SOA",
        name: "meridian.test",
        ttl: 7,
        data: { mname: "ns.meridian.test", serial: 1, minimum: 7 },
      },
    ]);
    const unknownEnv = await udp(port, query("model-abc12345-staging.meridian.test"));
    expect(unknownEnv.rcode).toBe("NXDOMAIN");

    const nodata = await udp(port, query("model-abc12345.meridian.test", "AAAA"));
    expect(nodata.rcode).toBe("NOERROR");
    expect(nodata.answers).toEqual([]);
    expect(nodata.authorities!.map((a) => a.type)).toEqual(["SOA"]);

    const outside = await udp(port, query("example.com"));
    expect(outside.rcode).toBe("REFUSED");
    expect(outside.flag_aa).toBe(false);
  });

  it("answers SOA and NS at the apex, with glue", async () => {
    const { port } = (await startServer()).address;
    const soa = await udp(port, query("meridian.test", "SOA"));
    expect(soa.answers).toMatchObject([
      { type: "SOA", data: { serial: 1, rname: "hostmaster.meridian.test" } },
    ]);
    const ns = await udp(port, query("meridian.test", "NS"));
    expect(ns.answers).toMatchObject([{ type: "NS", data: "ns.meridian.test" }]);
    expect(ns.additionals).toMatchObject([{ type: "A", name: "ns.meridian.test", data: "127.0.0.53" }]);
  });

  it("answers SERVFAIL before the first snapshot", async () => {
    const { port } = (await startServer({ snapshots: undefined })).address;
    expect((await udp(port, query("model-abc12345.meridian.test"))).rcode).toBe("SERVFAIL");
  });

  it("truncates an answer over 512 bytes without EDNS, and answers it whole over TCP (RFC 1035 §4.2.1)", async () => {
    const { port } = (await startServer()).address;
    const name = "model-abc12345-huge.meridian.test";
    const truncated = await udp(port, query(name));
    expect(truncated.flag_tc).toBe(true);
    expect(truncated.answers).toEqual([]);
    expect(truncated.questions).toEqual([{ name, type: "A", class: "IN" }]);

    const whole = await tcp(port, query(name));
    expect(whole.flag_tc).toBe(false);
    expect(addresses(whole)).toEqual(manyEu);

    // EDNS lifts the limit to min(client size, 1232): 20 records (about 1050 bytes uncompressed) fit.
    const edns = await udp(port, query(name, "A", { size: 4096 }));
    expect(edns.flag_tc).toBe(false);
    expect(addresses(edns)).toEqual(manyEu);
    expect(edns.additionals).toMatchObject([{ type: "OPT", udpPayloadSize: 1232, ednsVersion: 0 }]);
    // A client size under 512 counts as 512 (RFC 6891 §6.2.5).
    expect((await udp(port, query(name, "A", { size: 100 }))).flag_tc).toBe(true);
  });

  it("answers an unknown EDNS version with BADVERS (RFC 6891 §6.1.3)", async () => {
    const { port } = (await startServer()).address;
    const reply = await udp(port, query("model-abc12345.meridian.test", "A", { version: 1 }));
    expect(reply.answers).toEqual([]);
    expect(reply.additionals).toMatchObject([{ type: "OPT", extendedRcode: 1, ednsVersion: 0 }]);
  });

  it("answers malformed queries with FORMERR or NOTIMP, drops what cannot be answered, and stays up", async () => {
    const { port } = (await startServer()).address;
    const good = query("model-abc12345.meridian.test");

    const noQuestion = Buffer.from(good.subarray(0, 12));
    const formerr = await udp(port, noQuestion);
    expect(formerr.rcode).toBe("FORMERR");
    expect(formerr.id).toBe(good.readUInt16BE(0));

    const twoQuestions = dnsPacket.encode({
      type: "query",
      id: 9,
      questions: [
        { name: "model-abc12345.meridian.test", type: "A" },
        { name: "meridian.test", type: "SOA" },
      ],
    });
    expect((await udp(port, twoQuestions)).rcode).toBe("FORMERR");

    const pointer = Buffer.from(good);
    pointer[12] = 0xc0; // a compression pointer in the question, pointing into the header
    expect((await udp(port, pointer)).rcode).toBe("FORMERR");

    const update = Buffer.from(good);
    update.writeUInt16BE((5 << 11) | 0x0100, 2); // opcode UPDATE
    expect((await udp(port, update)).rcode).toBe("NOTIMP");

    expect(await udpRaw(port, Buffer.from([1, 2, 3]), 200)).toBeNull(); // no header: no id to answer
    const response = Buffer.from(good);
    response.writeUInt16BE(0x8000, 2); // QR set: never answer a response
    expect(await udpRaw(port, response, 200)).toBeNull();

    expect(addresses(await udp(port, good))).toEqual(["127.0.0.10"]);
  });

  it("survives a fuzz run of random and mutated packets without reaching its error path", async () => {
    const errors: string[] = [];
    const recording = pino({ level: "error" }, { write: (line: string) => void errors.push(line) });
    const { port } = (await startServer({ logger: recording })).address;
    const socket = createSocket("udp4");
    const base = query("model-abc12345-prod-eu.meridian.test", "A", { size: 4096 });
    const packets = fc.sample(
      fc.oneof(
        fc.uint8Array({ minLength: 0, maxLength: 600 }),
        fc
          .array(fc.tuple(fc.nat(base.length - 1), fc.integer({ min: 0, max: 255 })), { maxLength: 6 })
          .map((edits) => {
            const b = Buffer.from(base);
            for (const [i, v] of edits) b[i] = v;
            return b;
          }),
        fc.nat(base.length).map((n) => base.subarray(0, n)),
      ),
      { numRuns: 2_000, seed: 42 },
    );
    for (const p of packets) socket.send(Buffer.from(p), port, "127.0.0.1");
    await new Promise((r) => setTimeout(r, 200));
    socket.close();
    // UDP may drop a query while the server works through the burst (a loaded CI machine): retry as a
    // resolver would, for a few seconds.
    let reply: Buffer | null = null;
    for (let attempt = 0; attempt < 10 && reply === null; attempt++) {
      reply = await udpRaw(port, query("model-abc12345.meridian.test"));
    }
    expect(reply, "the server answers after the fuzz run").not.toBeNull();
    expect(addresses(dnsPacket.decode(reply!) as Decoded)).toEqual(["127.0.0.10"]);
    expect(errors).toEqual([]);
  });
});

describe("DnsServer over TCP", () => {
  it("answers several queries on one connection, pipelined and split across writes (RFC 7766 §6.2.1)", async () => {
    const { port } = (await startServer()).address;
    const client = await TcpClient.open(port);
    const batch = Buffer.concat([
      TcpClient.frame(query("model-abc12345.meridian.test")),
      TcpClient.frame(query("model-abc12345-prod-eu.meridian.test")),
      TcpClient.frame(query("model-nope1234.meridian.test")),
    ]);
    client.socket.write(batch);
    expect(addresses(await client.next())).toEqual(["127.0.0.10"]);
    expect(addresses(await client.next())).toEqual(["127.0.0.20", "127.0.0.21"]);
    expect((await client.next()).rcode).toBe("NXDOMAIN");

    const framed = TcpClient.frame(query("model-abc12345-prod-uk.meridian.test"));
    for (const byte of framed) {
      client.socket.write(Buffer.from([byte]));
      await new Promise((r) => setImmediate(r));
    }
    expect(addresses(await client.next())).toEqual(["127.0.0.30"]);

    client.socket.write(TcpClient.frame(Buffer.from([1, 2, 3]))); // too short to answer: skipped
    client.socket.write(TcpClient.frame(Buffer.from(query("x").subarray(0, 12)))); // header only: FORMERR
    expect((await client.next()).rcode).toBe("FORMERR");
    client.close();
  });

  it("closes idle connections (RFC 7766 §6.2.3)", async () => {
    const { port } = (await startServer({ tcpIdleTimeoutMs: 150 })).address;
    const client = await TcpClient.open(port);
    const opened = Date.now();
    await once(client.socket, "close");
    expect(Date.now() - opened).toBeGreaterThanOrEqual(100);
    expect(Date.now() - opened).toBeLessThan(2_000);
  });

  it("stop() closes both transports and frees the port", async () => {
    const server = await startServer();
    const { port } = server.address;
    const client = await TcpClient.open(port);
    const clientClosed = once(client.socket, "close");
    await server.stop();
    servers.splice(servers.indexOf(server), 1);
    await clientClosed;
    const again = await startServer({ port });
    expect(again.address.port).toBe(port);
  });
});

describe("DnsServer snapshots", () => {
  it("a swapped snapshot takes effect immediately", async () => {
    const server = await startServer();
    const { port } = server.address;
    expect(addresses(await udp(port, query("model-abc12345-prod-eu.meridian.test")))).toEqual([
      "127.0.0.20",
      "127.0.0.21",
    ]);
    const moved = fixture(2);
    moved.regions.eu = ["127.0.0.22"];
    moved.models.push({ id: "newmodel", regional_environments: [] });
    expect(server.setSnapshot(moved)).toBe(true);
    expect(addresses(await udp(port, query("model-abc12345-prod-eu.meridian.test")))).toEqual(["127.0.0.22"]);
    expect(addresses(await tcp(port, query("model-newmodel.meridian.test")))).toEqual(["127.0.0.10"]);
    expect(
      ((await udp(port, query("meridian.test", "SOA"))).answers![0] as { data: unknown }).data,
    ).toMatchObject({ serial: 2 });
  });

  it("refuses a snapshot for another domain and keeps answering from the current one", async () => {
    const server = await startServer();
    expect(server.setSnapshot({ ...fixture(5), domain: "other.test" })).toBe(false);
    expect(server.snapshot?.revision).toBe(1);
  });

  it("follows a control plane's long-poll within a second", async () => {
    let current = fixture(1);
    const held = new Set<ServerResponse>();
    const http = createHttpServer((req, res) => {
      const after = Number(new URL(req.url ?? "/", "http://x").searchParams.get("after"));
      if (current.revision > after) {
        res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(current));
        return;
      }
      held.add(res);
      res.on("close", () => held.delete(res));
    });
    http.listen(0, "127.0.0.1");
    await once(http, "listening");
    const url = `http://127.0.0.1:${(http.address() as AddressInfo).port}/v1/internal/dns/snapshot`;
    const watcher = new SnapshotWatcher<DnsSnapshot>({
      url,
      token: "t",
      waitSeconds: 5,
      parse: (body) => {
        const check = checkDnsSnapshot(body);
        if (!check.ok) throw new Error(check.message);
        return check.snapshot;
      },
    });
    await watcher.start();
    await watcher.ready();
    try {
      const { port } = (await startServer({ snapshots: watcher })).address;
      const name = "model-abc12345-prod-eu.meridian.test";
      expect(addresses(await udp(port, query(name)))).toEqual(["127.0.0.20", "127.0.0.21"]);

      current = fixture(2);
      current.regions.eu = ["127.0.0.29"];
      const changed = Date.now();
      for (const res of held) res.writeHead(200).end(JSON.stringify(current));
      let answer: unknown[] = [];
      while (Date.now() - changed < 1_000) {
        answer = addresses(await udp(port, query(name)));
        if (answer[0] === "127.0.0.29") break;
        await new Promise((r) => setTimeout(r, 10));
      }
      expect(answer).toEqual(["127.0.0.29"]);
    } finally {
      await watcher.stop();
      http.closeAllConnections();
      http.close();
    }
  });
});
