// Target `dns`: the authoritative DNS server (src/dns/server.ts, a process of its own) over real UDP and TCP
// on loopback. Cases are queries built with dns-packet then mutated byte by byte, hand-made messages
// (compression pointers to themselves, forward and in loops; labels over 63 bytes and the reserved label
// types; names over 255 bytes; additional records whose RDATA runs past the end; EDNS OPT of any version,
// size and options; wrong section counts) and plain garbage. Rules: a message of at least a header that is
// not itself a response gets one answer with its id, QR set, a known RCODE, decodable, within the UDP size
// the query allows; anything shorter, or a response, gets nothing (checked by a sentinel query sent after
// it, whose answer must come first); over TCP every complete frame is answered in order, never a hang.

import { createSocket, type Socket as UdpSocket } from "node:dgram";
import net from "node:net";
import dnsPacket from "dns-packet";
import fc from "fast-check";
import { DOMAIN, MODEL, OTHER_MODEL } from "../fixtures.ts";
import { bump, type FuzzTarget, mutate, mutation, within } from "../lib.ts";

const NAMES = [
  `model-${MODEL}-prod-eu.${DOMAIN}`,
  `model-${MODEL}.${DOMAIN}`,
  `model-${MODEL}-huge.${DOMAIN}`,
  `model-${MODEL}-six.${DOMAIN}`,
  `model-${OTHER_MODEL}.${DOMAIN}`,
  `model-${MODEL}-nope.${DOMAIN}`,
  DOMAIN,
  `ns.${DOMAIN}`,
  `x.model-${MODEL}.${DOMAIN}`,
  "example.com",
  ".",
  "",
  `MODEL-${MODEL}-PROD-EU.${DOMAIN.toUpperCase()}`,
  `${"a".repeat(63)}.${DOMAIN}`,
  `${"a.".repeat(120)}${DOMAIN}`,
];
const TYPES = [
  "A",
  "AAAA",
  "NS",
  "SOA",
  "ANY",
  "TXT",
  "MX",
  "CNAME",
  "PTR",
  "SRV",
  "CAA",
  "HTTPS",
  "OPT",
] as const;
const RCODES = new Set(["NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "BADVERS"]);

const name = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom(...NAMES) },
  {
    weight: 1,
    arbitrary: fc
      .array(fc.stringMatching(/^[a-z0-9-]{1,20}$/), { maxLength: 6 })
      .map((l) => [...l, DOMAIN].join(".")),
  },
);
const opt = fc.record({
  version: fc.oneof(fc.constant(0), fc.nat(255)),
  size: fc.oneof(fc.constantFrom(0, 1, 511, 512, 1232, 4096, 65535), fc.nat(65535)),
  options: fc.array(fc.record({ code: fc.nat(65535), data: fc.uint8Array({ maxLength: 40 }) }), {
    maxLength: 3,
  }),
  doBit: fc.boolean(),
});
const built = fc.record({
  id: fc.nat(65535),
  // Mostly a standard QUERY (opcode 0), so the answer path is reached; sometimes any opcode.
  flags: fc.oneof(
    fc.constant(0x0100),
    fc.nat(0xffff).map((f) => f & 0x07ff),
    fc.nat(0xffff).map((f) => f & 0x7fff),
  ),
  name,
  type: fc.constantFrom(...TYPES),
  klass: fc.constantFrom("IN", "CH", "ANY", "HS"),
  opt: fc.option(opt, { nil: undefined }),
  twoOpts: fc.boolean(),
});

type Built = typeof built extends fc.Arbitrary<infer T> ? T : never;

function encodeBuilt(b: Built): Buffer {
  const optRecord = (o: NonNullable<Built["opt"]>) =>
    ({
      name: ".",
      type: "OPT",
      udpPayloadSize: o.size,
      extendedRcode: 0,
      ednsVersion: o.version,
      flags: o.doBit ? 0x8000 : 0,
      options: o.options.map((x) => ({ code: x.code, data: Buffer.from(x.data) })),
    }) as unknown as dnsPacket.Answer;
  try {
    return dnsPacket.encode({
      type: "query",
      id: b.id,
      flags: b.flags,
      questions: [
        { name: b.name, type: b.type as dnsPacket.RecordType, class: b.klass as dnsPacket.RecordClass },
      ],
      additionals:
        b.opt === undefined ? [] : b.twoOpts ? [optRecord(b.opt), optRecord(b.opt)] : [optRecord(b.opt)],
    });
  } catch {
    return Buffer.alloc(12);
  }
}

/** A hand-made message: header, a name of raw label bytes and pointers, question tail, raw records. */
const crafted = fc
  .record({
    id: fc.nat(65535),
    flags: fc.oneof(
      fc.constant(0x0100),
      fc.nat(0xffff).map((f) => f & 0x07ff),
      fc.nat(0xffff),
    ),
    counts: fc.tuple(
      fc.oneof(fc.constant(1), fc.nat(3)),
      fc.nat(3),
      fc.nat(3),
      fc.oneof(fc.constant(1), fc.nat(3)),
    ),
    parts: fc.array(
      fc.oneof(
        fc.record({
          k: fc.constant("label" as const),
          len: fc.oneof(fc.integer({ min: 0, max: 63 }), fc.integer({ min: 64, max: 255 })),
          fill: fc.constantFrom(0x61, 0x2e, 0x00, 0xff),
        }),
        fc.record({
          k: fc.constant("pointer" as const),
          to: fc.oneof(fc.constantFrom(12, 13, 14, 0), fc.nat(0x3fff)),
        }),
        fc.record({ k: fc.constant("self" as const) }),
      ),
      { minLength: 1, maxLength: 8 },
    ),
    tail: fc.record({ type: fc.nat(65535), klass: fc.nat(65535) }),
    records: fc.array(
      fc.record({
        type: fc.oneof(fc.constant(41), fc.nat(65535)),
        rdlen: fc.nat(600),
        data: fc.uint8Array({ maxLength: 40 }),
        ttl: fc.nat(),
      }),
      { maxLength: 3 },
    ),
    cut: fc.option(fc.nat(200), { nil: undefined }),
  })
  .map((c) => {
    const out: number[] = [];
    const u16 = (v: number) => out.push((v >> 8) & 0xff, v & 0xff);
    u16(c.id);
    u16(c.flags);
    for (const n of c.counts) u16(n);
    for (const p of c.parts) {
      if (p.k === "label") {
        out.push(p.len);
        for (let i = 0; i < Math.min(p.len, 80); i++) out.push(p.fill);
      } else if (p.k === "pointer") u16(0xc000 | p.to);
      else u16(0xc000 | out.length);
    }
    out.push(0);
    u16(c.tail.type);
    u16(c.tail.klass);
    for (const r of c.records) {
      out.push(0);
      u16(r.type);
      u16(512);
      u16(r.ttl >>> 16);
      u16(r.ttl & 0xffff);
      u16(r.rdlen);
      out.push(...r.data);
    }
    const b = Buffer.from(out);
    return c.cut === undefined ? b : b.subarray(0, Math.min(b.length, c.cut));
  });

const message = fc.oneof(
  { weight: 4, arbitrary: built.map(encodeBuilt) },
  {
    weight: 4,
    arbitrary: fc
      .tuple(built, fc.array(mutation, { minLength: 1, maxLength: 4 }))
      .map(([b, m]) => mutate(encodeBuilt(b), m)),
  },
  { weight: 4, arbitrary: crafted },
  { weight: 1, arbitrary: fc.uint8Array({ maxLength: 600 }).map((u) => Buffer.from(u)) },
);

type Case =
  | { transport: "udp"; message: Buffer }
  | { transport: "tcp"; messages: Buffer[]; badPrefix: number | undefined };

const caseArb: fc.Arbitrary<Case> = fc.oneof(
  { weight: 6, arbitrary: message.map((m) => ({ transport: "udp" as const, message: m })) },
  {
    weight: 1,
    arbitrary: fc.record({
      transport: fc.constant("tcp" as const),
      messages: fc.array(message, { minLength: 1, maxLength: 3 }),
      badPrefix: fc.oneof(
        { weight: 4, arbitrary: fc.constant(undefined) },
        { weight: 1, arbitrary: fc.nat(65535) },
      ),
    }),
  },
);

/** RFC 6891 §6.2.5: the query's OPT size, at least 512, and at most the server's 1232. */
function udpLimit(query: Buffer): number {
  try {
    const opt = dnsPacket.decode(query).additionals?.find((a) => a.type === "OPT") as
      | { udpPayloadSize?: number }
      | undefined;
    return opt?.udpPayloadSize === undefined ? 512 : Math.min(1232, Math.max(512, opt.udpPayloadSize));
  } catch {
    return 512;
  }
}

/** Whether the server owes an answer: at least a header, and not itself a response (QR clear). */
const owed = (m: Buffer) => m.length >= 12 && (m[2]! & 0x80) === 0;

function checkAnswer(
  query: Buffer,
  answer: Buffer,
  transport: "udp" | "tcp",
  tally: Map<string, number>,
): void {
  if (answer.readUInt16BE(0) !== query.readUInt16BE(0)) throw new Error("answer id differs");
  if ((answer[2]! & 0x80) === 0) throw new Error("answer has QR clear");
  let decoded: dnsPacket.Packet;
  try {
    decoded = dnsPacket.decode(answer);
  } catch (err) {
    throw new Error(`answer does not decode: ${(err as Error).message}`);
  }
  const rcode = (decoded as { rcode?: string }).rcode ?? "?";
  const opt = decoded.additionals?.find((a) => a.type === "OPT") as { extendedRcode?: number } | undefined;
  const name = opt?.extendedRcode ? "BADVERS" : rcode;
  bump(tally, `${transport} ${name}`);
  if (!RCODES.has(name)) throw new Error(`rcode ${name}`);
  if (transport === "udp" && answer.length > udpLimit(query)) {
    throw new Error(`UDP answer of ${answer.length} bytes, the query allows ${udpLimit(query)}`);
  }
}

class UdpLane {
  private waiting: ((b: Buffer) => void) | null = null;
  private stray: Buffer[] = [];
  constructor(
    readonly socket: UdpSocket,
    readonly port: number,
    readonly tally: Map<string, number>,
  ) {
    socket.on("message", (b) => {
      const w = this.waiting;
      if (w) {
        this.waiting = null;
        w(b);
      } else this.stray.push(b);
    });
  }
  static async open(port: number, tally: Map<string, number>): Promise<UdpLane> {
    const s = createSocket("udp4");
    await new Promise<void>((r) => s.bind(0, "127.0.0.1", r));
    return new UdpLane(s, port, tally);
  }
  /** The next datagram with `id`; a late answer to an earlier case is skipped, one with `forbidden` fails. */
  async next(ms: number, what: string, id: number, forbidden: number | null = null): Promise<Buffer> {
    const deadline = performance.now() + ms;
    for (;;) {
      const b =
        this.stray.shift() ??
        (await within(
          Math.max(1, deadline - performance.now()),
          what,
          new Promise<Buffer>((r) => {
            this.waiting = r;
          }),
        ).finally(() => {
          this.waiting = null;
        }));
      const got = b.length >= 2 ? b.readUInt16BE(0) : -1;
      if (got === id) return b;
      if (forbidden !== null && got === forbidden)
        throw new Error("the server answered a message it must drop");
      bump(this.tally, "udp late answer skipped");
    }
  }
  /**
   * Sends a query and waits for its answer, resending it once after 3 s as a UDP client does (RFC 1035
   * §4.2.1: UDP may lose a datagram); no answer to either within 10 s in all is a hang.
   */
  async ask(b: Buffer, what: string, forbidden: number | null = null): Promise<Buffer> {
    const id = b.readUInt16BE(0);
    await this.send(b);
    try {
      return await this.next(3_000, what, id, forbidden);
    } catch (err) {
      if (!String(err).includes("hang")) throw err;
      bump(this.tally, "udp resent");
      await this.send(b);
      return this.next(7_000, `${what} (sent twice)`, id, forbidden);
    }
  }
  send(b: Buffer): Promise<void> {
    return new Promise((r, f) => this.socket.send(b, this.port, "127.0.0.1", (err) => (err ? f(err) : r())));
  }
}

let sentinelId = 0;
function sentinel(): Buffer {
  sentinelId = (sentinelId + 1) & 0xffff;
  return dnsPacket.encode({
    type: "query",
    id: sentinelId,
    flags: 0x0100,
    questions: [{ name: `model-${MODEL}.${DOMAIN}`, type: "A" }],
  });
}

async function tcpCase(
  port: number,
  c: Extract<Case, { transport: "tcp" }>,
  tally: Map<string, number>,
): Promise<void> {
  const socket = net.connect({ port, host: "127.0.0.1" });
  let data = Buffer.alloc(0);
  let closed = false;
  let wake: () => void = () => {};
  socket.on("data", (d) => {
    data = Buffer.concat([data, d]);
    wake();
  });
  socket.on("close", () => {
    closed = true;
    wake();
  });
  socket.on("error", () => {});
  await new Promise<void>((r, f) => {
    socket.once("connect", r);
    socket.once("error", f);
  });
  const frames = c.messages.map((m, i) => {
    const len = Buffer.alloc(2);
    len.writeUInt16BE(i === c.messages.length - 1 && c.badPrefix !== undefined ? c.badPrefix : m.length);
    return Buffer.concat([len, m]);
  });
  socket.write(Buffer.concat(frames));
  // Frames the server can read whole: all but a last one whose prefix lies; those it owes an answer.
  const complete =
    c.badPrefix === undefined || c.badPrefix === c.messages.at(-1)!.length
      ? c.messages
      : c.messages.slice(0, -1);
  const expected = complete.filter(owed);
  const answers = (): Buffer[] => {
    const out: Buffer[] = [];
    let at = 0;
    while (at + 2 <= data.length) {
      const n = data.readUInt16BE(at);
      if (at + 2 + n > data.length) break;
      out.push(data.subarray(at + 2, at + 2 + n));
      at += 2 + n;
    }
    return out;
  };
  try {
    await within(
      10_000,
      "TCP answers",
      new Promise<void>((r) => {
        const test = () => {
          if (closed || answers().length >= expected.length) r();
        };
        wake = test;
        test();
      }),
    );
  } finally {
    socket.destroy();
  }
  const got = answers();
  // The server may close early only after a frame it could not parse as a DNS message at all.
  if (got.length < expected.length && !complete.some((m) => !owed(m))) {
    throw new Error(`TCP: ${got.length} answers for ${expected.length} queries, then closed`);
  }
  for (const [i, a] of got.entries()) {
    const q = expected[i];
    if (q !== undefined) checkAnswer(q, a, "tcp", tally);
  }
}

export const dnsTarget: FuzzTarget<Case> = {
  name: "dns",
  server: "dns",
  lanes: 8,
  batchCases: 5_000,
  async open(server) {
    const port = server!.info["port"] as number;
    const tally = new Map<string, number>();
    const free: UdpLane[] = await Promise.all(Array.from({ length: 8 }, () => UdpLane.open(port, tally)));
    return {
      tally,
      arbitrary: caseArb,
      async check(c) {
        if (c.transport === "tcp") return tcpCase(port, c, tally);
        const lane = free.pop() ?? (await UdpLane.open(port, tally));
        try {
          if (owed(c.message)) {
            checkAnswer(c.message, await lane.ask(c.message, "UDP query"), "udp", tally);
          } else {
            bump(tally, "udp dropped");
            await lane.send(c.message);
            const s = sentinel();
            // Its answer must come, and no answer to the dropped message before or with it.
            await lane.ask(
              s,
              "sentinel after a message the server must drop",
              c.message.length >= 2 ? c.message.readUInt16BE(0) : null,
            );
          }
          free.push(lane);
        } catch (err) {
          lane.socket.close();
          throw err;
        }
      },
      async close() {
        for (const l of free) l.socket.close();
      },
    };
  },
};
