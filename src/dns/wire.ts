// DNS messages on the wire: turns one query message into one response message (RFC 1035 §4.1) using the
// pure answers of `src/core/dns-answers.ts`. No sockets here; `server.ts` carries the bytes.
import dnsPacket from "dns-packet";
import { answerQuestion, type DnsAnswer, type DnsRecord, type DnsZone } from "../core/dns-answers.ts";
import type { DnsSnapshot } from "../core/snapshot.ts";

export type Transport = "udp" | "tcp";

/** RFC 1035 §4.2.1: UDP messages are limited to 512 octets unless EDNS says otherwise. */
export const CLASSIC_UDP_LIMIT = 512;
/** Largest UDP payload we offer and use (the 2020 DNS flag day value: avoids IP fragmentation). */
export const EDNS_UDP_LIMIT = 1232;
/** RFC 1035 §4.2.2: a TCP message carries a 16-bit length. */
const TCP_LIMIT = 65_535;

const HEADER_LENGTH = 12;
const FLAG_QR = 0x8000;
const FLAG_AA = 0x0400;
const FLAG_TC = 0x0200;
const FLAG_RD = 0x0100;

const RCODES = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 } as const;
/** RFC 6891 §9: extended RCODE 16, carried as 1 in the OPT record's upper 8 bits. */
const BADVERS_UPPER = 1;

/** Mnemonics for the types and classes the answers depend on; others in RFC 3597 §5 generic form. */
const TYPE_NAMES: Record<number, string> = {
  1: "A",
  2: "NS",
  5: "CNAME",
  6: "SOA",
  15: "MX",
  16: "TXT",
  28: "AAAA",
  41: "OPT",
  251: "IXFR",
  252: "AXFR",
  255: "ANY",
};
const CLASS_NAMES: Record<number, string> = { 1: "IN", 3: "CH", 4: "HS", 255: "ANY" };

export interface Response {
  message: Buffer;
  rcode: string;
  truncated: boolean;
  /** The question as understood, for logs. */
  question: { name: string; type: string; class: string } | null;
}

/**
 * Answers one DNS message. Returns null when the message must be dropped: shorter than a header (there is
 * no id to answer to) or itself a response (RFC 1035 §4.1.1 QR; answering responses invites loops).
 */
export function respond(
  zone: DnsZone,
  snapshot: DnsSnapshot | null,
  message: Buffer,
  transport: Transport,
): Response | null {
  if (message.length < HEADER_LENGTH) return null;
  const id = message.readUInt16BE(0);
  const flags = message.readUInt16BE(2);
  if ((flags & FLAG_QR) !== 0) return null;
  const opcode = (flags >> 11) & 0xf;
  // RFC 1035 §4.1.1: RD is copied into the response; we never recurse, so RA stays clear.
  const base = (opcode << 11) | (flags & FLAG_RD);
  const bare = (rcode: keyof typeof RCODES): Response => ({
    message: headerOnly(id, base | RCODES[rcode]),
    rcode,
    truncated: false,
    question: null,
  });

  if (opcode !== 0) return bare("NOTIMP");
  // RFC 9619: a QUERY carries exactly one question.
  if (message.readUInt16BE(4) !== 1) return bare("FORMERR");
  const question = readQuestion(message);
  if (question === null) return bare("FORMERR");

  let opt: Extract<dnsPacket.Answer, { type: "OPT" }> | undefined;
  try {
    const decoded = dnsPacket.decode(message);
    const opts = (decoded.additionals ?? []).filter((a) => a.type === "OPT");
    // RFC 6891 §6.1.1: more than one OPT record is a format error.
    if (opts.length > 1) return bare("FORMERR");
    opt = opts[0] as typeof opt;
  } catch {
    return bare("FORMERR");
  }

  const responseOpt = opt === undefined ? [] : [optRecord(0)];
  const withQuestion = (headerFlags: number, sections: Sections): Buffer =>
    encodeWithQuestion(id, headerFlags, question.raw, sections);

  // RFC 6891 §6.1.3: an unsupported EDNS version gets BADVERS and our version (0), nothing else.
  if (opt !== undefined && opt.ednsVersion !== 0) {
    const sections = { answers: [], authorities: [], additionals: [optRecord(BADVERS_UPPER)] };
    return {
      message: withQuestion(base, sections),
      rcode: "BADVERS",
      truncated: false,
      question: question.text,
    };
  }

  const answer = answerQuestion(zone, snapshot, question.text);
  const headerFlags = base | (answer.authoritative ? FLAG_AA : 0) | RCODES[answer.rcode];
  const limit = transport === "tcp" ? TCP_LIMIT : udpLimit(opt);
  const full: Sections = {
    answers: answer.answers.map(toWire),
    authorities: answer.authorities.map(toWire),
    additionals: [...answer.additionals.map(toWire), ...responseOpt],
  };
  try {
    let encoded = withQuestion(headerFlags, full);
    if (encoded.length <= limit) return done(encoded, answer, false, question.text);
    // Glue is optional: drop it before declaring truncation (RFC 2181 §9).
    encoded = withQuestion(headerFlags, { ...full, additionals: responseOpt });
    if (encoded.length <= limit) return done(encoded, answer, false, question.text);
    // RFC 1035 §4.2.1 / RFC 2181 §9: set TC and send no partial RRsets; the client retries over TCP.
    encoded = withQuestion(headerFlags | FLAG_TC, { answers: [], authorities: [], additionals: responseOpt });
    return done(encoded, answer, true, question.text);
  } catch {
    return bare("SERVFAIL");
  }
}

interface Sections {
  answers: dnsPacket.Answer[];
  authorities: dnsPacket.Answer[];
  additionals: dnsPacket.Answer[];
}

function done(
  message: Buffer,
  answer: DnsAnswer,
  truncated: boolean,
  question: Response["question"],
): Response {
  return { message, rcode: answer.rcode, truncated, question };
}

/** RFC 6891 §6.2.5: a requestor's size below 512 is treated as 512; we never exceed our own offer. */
function udpLimit(opt: { udpPayloadSize: number } | undefined): number {
  if (opt === undefined) return CLASSIC_UDP_LIMIT;
  return Math.min(EDNS_UDP_LIMIT, Math.max(CLASSIC_UDP_LIMIT, opt.udpPayloadSize));
}

function optRecord(extendedRcode: number): dnsPacket.Answer {
  return {
    name: ".",
    type: "OPT",
    udpPayloadSize: EDNS_UDP_LIMIT,
    extendedRcode,
    ednsVersion: 0,
    flags: 0,
    flag_do: false,
    options: [],
  };
}

function toWire(record: DnsRecord): dnsPacket.Answer {
  return { ...record, class: "IN" };
}

/**
 * Reads the first question straight from the bytes (RFC 1035 §4.1.2), so the response echoes it octet for
 * octet (case included, RFC 4343 §4.1) and unknown types and classes survive the round trip. Labels are
 * read as Latin-1 with a literal dot escaped, so a label can never pose as two labels of our zone.
 */
function readQuestion(
  message: Buffer,
): { raw: Buffer; text: { name: string; type: string; class: string } } | null {
  const labels: string[] = [];
  let offset = HEADER_LENGTH;
  let wireLength = 0;
  for (;;) {
    if (offset >= message.length) return null;
    const length = message[offset]!;
    // A compression pointer can only point backwards (RFC 1035 §4.1.4); before the question is the header.
    if ((length & 0xc0) !== 0) return null;
    offset += 1;
    wireLength += length + 1;
    if (wireLength > 255) return null; // RFC 1035 §2.3.4
    if (length === 0) break;
    if (offset + length > message.length) return null;
    labels.push(
      message
        .toString("latin1", offset, offset + length)
        .replaceAll("\\", "\\\\")
        .replaceAll(".", "\\."),
    );
    offset += length;
  }
  if (offset + 4 > message.length) return null;
  const type = message.readUInt16BE(offset);
  const klass = message.readUInt16BE(offset + 2);
  return {
    raw: Buffer.from(message.subarray(HEADER_LENGTH, offset + 4)),
    text: {
      name: labels.length === 0 ? "." : labels.join("."),
      type: TYPE_NAMES[type] ?? `TYPE${type}`,
      class: CLASS_NAMES[klass] ?? `CLASS${klass}`,
    },
  };
}

/** dns-packet writes names uncompressed, so the question can be spliced in after encoding. */
function encodeWithQuestion(id: number, flags: number, rawQuestion: Buffer, sections: Sections): Buffer {
  const body = dnsPacket.encode({ type: "response", id, flags, questions: [], ...sections });
  const out = Buffer.concat([body.subarray(0, HEADER_LENGTH), rawQuestion, body.subarray(HEADER_LENGTH)]);
  out.writeUInt16BE(1, 4);
  return out;
}

function headerOnly(id: number, flags: number): Buffer {
  const header = Buffer.alloc(HEADER_LENGTH);
  header.writeUInt16BE(id, 0);
  header.writeUInt16BE(FLAG_QR | flags, 2);
  return header;
}
