// The raw-socket smuggling and framing suite: the gate for every ingress transport (PERFORMANCE-NOTES.md,
// "What a faster design must carry"). Clients are raw sockets writing crafted bytes; replicas are raw
// `node:net` servers (framing-peers.ts) that record every byte they receive and answer with crafted bytes,
// so each case asserts exactly what crossed the wire on both sides of the ingress. The suite runs once per
// transport; a case either transport gets wrong is a bug in that transport, not in the case.
import net from "node:net";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import type { PlaneSnapshot } from "../core/snapshot.ts";
import { generateSigningKey } from "../lib/keys.ts";
import { acceptKey, encodeFrame } from "../lib/websocket.ts";
import {
  closedPort,
  type EchoBody,
  echo,
  field,
  fieldValues,
  type Message,
  parseMessage,
  RawClient,
  RawUpstream,
  type Responder,
  sha256,
  sleep,
  type UpConn,
  type UpRequest,
} from "./framing-peers.ts";
import { createIngress, type Ingress, type IngressTransport } from "./ingress.ts";

const DOMAIN = "meridian.test";
const MODEL = "aaaaaaa1";
const HOST = `model-${MODEL}-prod-eu.${DOMAIN}`;
const KEY = "k-framing";
const PLANE = { name: "eu-1", region: "eu" };
/** 1.25 MiB: a 1 MB body is below it; the chunked overflow case stays cheap. */
const LIMIT = 1_310_720;
const LIMITS = {
  maxBodyBytes: LIMIT,
  headersTimeoutMs: 1_000,
  requestTimeoutMs: 2_500,
  keepAliveTimeoutMs: 1_500,
  maxHeaderBytes: 8 * 1024,
  predictTimeoutMs: 4_000,
  connectTimeoutMs: 1_000,
};
/** How long a case waits for an answer the ingress owes at once. */
const PROMPT_MS = 3_000;

const CONTROL_KEY = generateSigningKey();
const SNAPSHOT: PlaneSnapshot = {
  revision: 1,
  domain: DOMAIN,
  plane: { ...PLANE, ingress: ["127.0.0.1:9"], global_ingress: false },
  planes: [{ ...PLANE, ingress: ["127.0.0.1:9"], global_ingress: false }],
  plane_keys: [],
  control_key: { key_id: CONTROL_KEY.keyId, public_key: CONTROL_KEY.publicKey },
  api_keys: [{ hash: sha256(KEY), prefix: "k-fr", team_id: "t1", category: "PERSONAL", model_ids: null }],
  models: [
    {
      id: MODEL,
      team_id: "t1",
      name: "m1",
      development_deployment_id: null,
      environments: [
        { name: "prod-eu", deployment_id: "d-eu", region: "eu", standard_endpoint_policy: "deny" },
      ],
      deployments: [{ id: "d-eu", region: "eu", ready_planes: ["eu-1"] }],
    },
  ],
  replicas: [],
};

// ---------------------------------------------------------------------------------------------------------
// Request bytes

interface Req {
  tag?: string;
  /** Extra header lines, verbatim. */
  headers?: string[];
  body?: string | Buffer;
  /** Send the body chunked, one chunk per element. */
  chunks?: Array<string | Buffer>;
  /** Leave out Content-Length (for a body-less request without any framing header). */
  noLength?: boolean;
  key?: string | null;
  version?: "1.0" | "1.1";
}

function chunkedBody(parts: Array<string | Buffer>): Buffer {
  const out: Buffer[] = [];
  for (const p of parts) {
    const b = Buffer.from(p);
    if (b.length === 0) continue;
    out.push(Buffer.from(`${b.length.toString(16)}\r\n`), b, Buffer.from("\r\n"));
  }
  out.push(Buffer.from("0\r\n\r\n"));
  return Buffer.concat(out);
}

function request(r: Req = {}): Buffer {
  const lines = [`POST /predict HTTP/${r.version ?? "1.1"}`, `Host: ${HOST}`];
  if (r.key !== null) lines.push(`Authorization: Api-Key ${r.key ?? KEY}`);
  if (r.tag !== undefined) lines.push(`x-tag: ${r.tag}`);
  lines.push(...(r.headers ?? []));
  let body: Buffer;
  if (r.chunks !== undefined) {
    lines.push("Transfer-Encoding: chunked");
    body = chunkedBody(r.chunks);
  } else {
    body = Buffer.from(r.body ?? "");
    if (!r.noLength) lines.push(`Content-Length: ${body.length}`);
  }
  return Buffer.concat([Buffer.from(`${lines.join("\r\n")}\r\n\r\n`, "latin1"), body]);
}

/** A legitimate request queued behind an attack: it must never reach a replica. */
const SMUGGLED = request({ tag: "SMUGGLED", headers: ["x-smuggled: SMUGGLED"] });
const AUTH = `Authorization: Api-Key ${KEY}`;
const PRE = `POST /predict HTTP/1.1\r\nHost: ${HOST}\r\n${AUTH}\r\n`;

/** Heads node:http hands the socket over for (a CONNECT, an upgrade other than a websocket), pipelined. */
const HANDOVER_HEADS: Array<[string, string]> = [
  ["CONNECT", `CONNECT ${HOST}:443 HTTP/1.1\r\nHost: ${HOST}:443\r\n${AUTH}\r\n\r\n`],
  ["an h2c upgrade", `${PRE}x-tag: p-up\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nContent-Length: 0\r\n\r\n`],
];

const HOP_BY_HOP = [
  "keep-alive",
  "proxy-connection",
  "proxy-authenticate",
  "proxy-authorization",
  "te",
  "trailer",
  "upgrade",
  "x-conn-named",
  "authorization",
  "expect",
];

/**
 * Cases a transport is known to get wrong: each runs as `it.fails`, so the suite stays green while the bug is
 * open and turns red the day it is fixed (a listed case that passes fails), so the list cannot go stale.
 * Both are in the node:http + undici fallback, whose machinery is not ours to change; the wire transport
 * (the default) has neither.
 * - `close-then-pipelined`: node:http keeps parsing and dispatching pipelined requests after a response that
 *   carries `Connection: close`; the replica runs a request whose answer is never sent (RFC 9112 §9.6:
 *   MUST NOT process further requests).
 * - `unsolicited-100`: undici refuses a `100 Continue` it did not ask for ("bad response"), so the client
 *   gets 502 for a valid reply (RFC 9110 §15.2: a client MUST parse 1xx responses it did not expect).
 */
const KNOWN_BUGS: Record<IngressTransport, ReadonlySet<string>> = {
  http: new Set(["close-then-pipelined", "unsolicited-100"]),
  wire: new Set([]),
};

/** Behaviour differences worth reporting (printed once at the end). */
const observed: string[] = [];

function expectIngressAnswer(m: Message | null | undefined, status: number, code?: string): void {
  expect(m, `a ${status} from the ingress`).toBeTruthy();
  expect(m!.startLine).toMatch(new RegExp(`^HTTP/1\\.1 ${status} `));
  expect(field(m!.headers, "x-meridian-plane")).toBe("eu-1");
  if (code !== undefined) expect(JSON.parse(m!.body.toString("utf8")).error_code).toBe(code);
}

function echoOf(m: Message | null | undefined): EchoBody {
  expect(m, "a response").toBeTruthy();
  expect(m!.status, m!.body.toString("latin1").slice(0, 200)).toBe(200);
  return JSON.parse(m!.body.toString("utf8")) as EchoBody;
}

function closedWithin(conn: UpConn, ms: number): Promise<boolean> {
  return Promise.race([conn.whenClosed.then(() => true), sleep(ms).then(() => false)]);
}

/** What the replica received is framed by exactly one of Content-Length / chunked, and nothing hop-by-hop. */
function expectCleanUpstreamRequest(r: UpRequest, body: Buffer): void {
  const cl = fieldValues(r.headers, "content-length");
  const te = fieldValues(r.headers, "transfer-encoding");
  expect(cl.length + te.length, r.rawHead).toBe(1);
  if (te.length === 1) expect(te[0]!.toLowerCase()).toBe("chunked");
  else expect(cl[0]).toBe(String(body.length));
  for (const h of HOP_BY_HOP) expect(fieldValues(r.headers, h), `${h} at the replica`).toEqual([]);
  // The ingress may manage its own hop (keep-alive / close); it never relays the client's options.
  for (const v of fieldValues(r.headers, "connection")) {
    for (const t of v.split(","))
      expect(["keep-alive", "close"], r.rawHead).toContain(t.trim().toLowerCase());
  }
  expect(fieldValues(r.headers, "x-meridian-hop")).toEqual([]);
  expect(fieldValues(r.headers, "x-meridian-route")).toEqual([]);
  expect(r.method).toBe("POST");
  expect(r.target).toBe("/v1/models/model:predict");
  expect(r.body.length).toBe(body.length);
  expect(sha256(r.body)).toBe(sha256(body));
}

// ---------------------------------------------------------------------------------------------------------
// Smuggling cases. `head`: the parser must refuse before routing (nothing reaches a replica). `body`: the
// head is valid and may already stream upstream; the replica must never receive a complete request.

interface Attack {
  name: string;
  bytes: string;
  at: "head" | "body";
}

const ATTACKS: Attack[] = [
  {
    name: "CL+TE",
    at: "head",
    bytes: `${PRE}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n`,
  },
  {
    name: "TE+CL",
    at: "head",
    bytes: `${PRE}Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n`,
  },
  {
    name: "two different Content-Lengths",
    at: "head",
    bytes: `${PRE}Content-Length: 3\r\nContent-Length: 5\r\n\r\nabcde`,
  },
  { name: "a Content-Length list", at: "head", bytes: `${PRE}Content-Length: 3, 5\r\n\r\nabcde` },
  { name: "Content-Length with a plus sign", at: "head", bytes: `${PRE}Content-Length: +3\r\n\r\nabc` },
  { name: "Content-Length with a minus sign", at: "head", bytes: `${PRE}Content-Length: -3\r\n\r\nabc` },
  {
    name: "Content-Length with a space inside",
    at: "head",
    bytes: `${PRE}Content-Length: 1 0\r\n\r\n0123456789`,
  },
  { name: "Content-Length with non-digits", at: "head", bytes: `${PRE}Content-Length: 3a\r\n\r\nabc` },
  { name: "Content-Length in hex", at: "head", bytes: `${PRE}Content-Length: 0x3\r\n\r\nabc` },
  { name: "an empty Content-Length", at: "head", bytes: `${PRE}Content-Length: \r\n\r\n` },
  {
    name: "Content-Length past 2^53",
    at: "head",
    bytes: `${PRE}Content-Length: 99999999999999999999999\r\n\r\nabc`,
  },
  {
    name: "TE: chunked, identity",
    at: "head",
    bytes: `${PRE}Transfer-Encoding: chunked, identity\r\n\r\n3\r\nabc\r\n0\r\n\r\n`,
  },
  {
    name: "TE: identity",
    at: "head",
    bytes: `${PRE}Transfer-Encoding: identity\r\n\r\n3\r\nabc\r\n0\r\n\r\n`,
  },
  {
    name: "TE: xchunked",
    at: "head",
    bytes: `${PRE}Transfer-Encoding: xchunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n`,
  },
  {
    name: "TE: chunked with trailing garbage",
    at: "head",
    bytes: `${PRE}Transfer-Encoding: chunked garbage\r\n\r\n3\r\nabc\r\n0\r\n\r\n`,
  },
  {
    name: "TE: chunked then a second TE: identity",
    at: "head",
    bytes: `${PRE}Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n3\r\nabc\r\n0\r\n\r\n`,
  },
  {
    name: "'Transfer-Encoding : chunked' (space before the colon)",
    at: "head",
    bytes: `${PRE}Transfer-Encoding : chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n`,
  },
  {
    name: "TE with a vertical tab",
    at: "head",
    bytes: `${PRE}Transfer-Encoding:\x0bchunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n`,
  },
  {
    name: "bare LF line endings",
    at: "head",
    bytes: `POST /predict HTTP/1.1\nHost: ${HOST}\n${AUTH}\nContent-Length: 3\n\nabc`,
  },
  { name: "a bare LF after one header", at: "head", bytes: `${PRE}X-A: 1\nContent-Length: 3\r\n\r\nabc` },
  { name: "a bare LF ending the head", at: "head", bytes: `${PRE}Content-Length: 3\r\n\nabc` },
  { name: "a bare CR inside a header line", at: "head", bytes: `${PRE}X-A: 1\rContent-Length: 3\r\n\r\nabc` },
  {
    name: "a bare CR in the request line",
    at: "head",
    bytes: `POST /predict\rHTTP/1.1\r\nHost: ${HOST}\r\n${AUTH}\r\n\r\n`,
  },
  { name: "obs-fold", at: "head", bytes: `${PRE}X-A: 1\r\n  folded\r\nContent-Length: 0\r\n\r\n` },
  {
    name: "obs-fold continuing Content-Length",
    at: "head",
    bytes: `${PRE}Content-Length: 0\r\n 3\r\n\r\nabc`,
  },
  { name: "obs-fold with a tab", at: "head", bytes: `${PRE}X-A: 1\r\n\tfolded\r\nContent-Length: 0\r\n\r\n` },
  { name: "NUL in a header value", at: "head", bytes: `${PRE}X-A: a\0b\r\nContent-Length: 0\r\n\r\n` },
  { name: "a space in a header name", at: "head", bytes: `${PRE}X A: 1\r\nContent-Length: 0\r\n\r\n` },
  { name: "parentheses in a header name", at: "head", bytes: `${PRE}X(A): 1\r\nContent-Length: 0\r\n\r\n` },
  { name: "DEL in a header name", at: "head", bytes: `${PRE}X-A\x7f: 1\r\nContent-Length: 0\r\n\r\n` },
  { name: "an empty header name", at: "head", bytes: `${PRE}: 1\r\nContent-Length: 0\r\n\r\n` },
  {
    name: "a header line without a colon",
    at: "head",
    bytes: `${PRE}Content-Length 3\r\nContent-Length: 0\r\n\r\n`,
  },
  {
    name: "chunk-size overflow",
    at: "body",
    bytes: `${PRE}Transfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFFFFFFFF3\r\nabc\r\n0\r\n\r\n`,
  },
  {
    name: "chunk data longer than its size",
    at: "body",
    bytes: `${PRE}Transfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n`,
  },
  {
    name: "chunk data without its CRLF",
    at: "body",
    bytes: `${PRE}Transfer-Encoding: chunked\r\n\r\n3\r\nabc0\r\n\r\n`,
  },
  {
    name: "a chunk size with a bare LF",
    at: "body",
    bytes: `${PRE}Transfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n`,
  },
  {
    name: "a non-hex chunk size",
    at: "body",
    bytes: `${PRE}Transfer-Encoding: chunked\r\n\r\n3g\r\nabc\r\n0\r\n\r\n`,
  },
  {
    name: "an invalid chunk extension (NUL)",
    at: "body",
    bytes: `${PRE}Transfer-Encoding: chunked\r\n\r\n3;a\0b\r\nabc\r\n0\r\n\r\n`,
  },
  {
    name: "an invalid chunk extension (unterminated quote)",
    at: "body",
    bytes: `${PRE}Transfer-Encoding: chunked\r\n\r\n3;a="b\r\nabc\r\n0\r\n\r\n`,
  },
  {
    name: "an invalid chunk extension (bare CR)",
    at: "body",
    bytes: `${PRE}Transfer-Encoding: chunked\r\n\r\n3;a\rb\r\nabc\r\n0\r\n\r\n`,
  },
  {
    name: "an invalid trailer field",
    at: "body",
    bytes: `${PRE}Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX A: 1\r\n\r\n`,
  },
];

/** `/sync/{path}` takes the same framing rules: the Transfer-Encoding tricks, on the passthrough route. */
const SYNC_ATTACKS: Attack[] = ATTACKS.filter((a) =>
  [
    "CL+TE",
    "TE+CL",
    "TE: chunked, identity",
    "TE: xchunked",
    "TE: chunked then a second TE: identity",
    "'Transfer-Encoding : chunked' (space before the colon)",
    "TE with a vertical tab",
    "chunk-size overflow",
    "chunk data longer than its size",
  ].includes(a.name),
).map((a) => ({
  ...a,
  name: `/sync: ${a.name}`,
  bytes: a.bytes.replace("POST /predict HTTP/1.1", "PUT /sync/v1/chat/completions HTTP/1.1"),
}));

// ---------------------------------------------------------------------------------------------------------
// Upgrades

const WS_KEY = "dGhlIHNhbXBsZSBub25jZQ==";

/** A websocket upgrade request head for `path` (with `extra` header lines). */
function upgradeHead(path: string, extra: string[] = [], method = "GET", key: string | null = KEY): string {
  const lines = [`${method} ${path} HTTP/1.1`, `Host: ${HOST}`];
  if (key !== null) lines.push(`Authorization: Api-Key ${key}`);
  lines.push("Connection: Upgrade", "Upgrade: websocket", `Sec-WebSocket-Key: ${WS_KEY}`);
  lines.push("Sec-WebSocket-Version: 13", ...extra);
  return `${lines.join("\r\n")}\r\n\r\n`;
}

/** A replica that accepts the upgrade: 101 with the right accept, then it records frames. */
const accept101: Responder = (_req, conn) => {
  conn.upgraded = true;
  conn.socket.write(
    `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${acceptKey(WS_KEY)}\r\n\r\n`,
  );
};

// ---------------------------------------------------------------------------------------------------------

afterAll(() => {
  if (observed.length > 0) console.info(`framing suite observations:\n  ${observed.join("\n  ")}`);
});

describe.each(["http", "wire"] as const)("%s transport", (transport: IngressTransport) => {
  /** `it`, or `it.fails` for a case this transport is known to get wrong (see KNOWN_BUGS). */
  const itBug = (bug: string) => (KNOWN_BUGS[transport].has(bug) ? it.fails : it);
  let up: RawUpstream;
  let up2: RawUpstream;
  let ingress: Ingress;
  let endpoints: string[] = [];
  let port = 0;
  const note = (s: string) => observed.push(`[${transport}] ${s}`);
  const open = () => RawClient.connect(port);

  beforeAll(async () => {
    up = await RawUpstream.start("up-a");
    up2 = await RawUpstream.start("up-b");
    ingress = createIngress({
      transport,
      plane: PLANE,
      listen: { host: "127.0.0.1", port: 0 },
      signingKey: generateSigningKey(),
      snapshot: () => SNAPSHOT,
      localReplicas: () => endpoints,
      limits: LIMITS,
    });
    // A transport that silently fell back to another would make this run test the wrong thing.
    expect(ingress.transport).toBe(transport);
    await ingress.start();
    port = ingress.address!.port;
  });

  afterAll(async () => {
    await ingress.stop();
    await up.close();
    await up2.close();
  });

  beforeEach(() => {
    endpoints = [up.endpoint];
    up.resetResponder();
    up2.resetResponder();
  });

  /** One request answered, so the pool holds an idle replica socket. */
  async function warmPool(): Promise<void> {
    const c = await open();
    c.write(request({ tag: "warm-up" }));
    expect(echoOf(await c.next(PROMPT_MS)).tag).toBe("warm-up");
    c.destroy();
  }

  afterEach(() => {
    // Whatever a case did, the ingress never sent a replica a malformed message.
    expect(up.errors()).toEqual([]);
    expect(up2.errors()).toEqual([]);
  });

  // -------------------------------------------------------------------------------------------------------
  describe("request smuggling", () => {
    // An idle pooled replica socket is waiting, so a transport that writes upstream synchronously is caught.
    beforeEach(warmPool);

    for (const { name, bytes, at } of [...ATTACKS, ...SYNC_ATTACKS]) {
      itBug(`attack: ${name}`)(`${name}: refused (400 or close), nothing smuggled`, async () => {
        const mark = up.mark();
        const c = await open();
        c.write(Buffer.concat([Buffer.from(bytes, "latin1"), SMUGGLED]));
        const closed = await c.waitClosed(PROMPT_MS);
        c.destroy();
        await sleep(30);
        const { messages, rest } = c.parsed();
        expect(closed, "the connection is closed after the error").toBe(true);
        expect(rest, "no partial or malformed answer").toBeNull();
        expect(messages.length).toBeLessThanOrEqual(1);
        if (messages.length === 1) expectIngressAnswer(messages[0], 400, "invalid_request");
        else note(`${name}: closed without a 400`);
        const got = up.since(mark);
        expect(got.bytes.includes("SMUGGLED"), "smuggled bytes at the replica").toBe(false);
        expect(got.requests, "a complete request at the replica").toEqual([]);
        if (at === "head") {
          expect(got.bytes.length, "bytes at the replica").toBe(0);
        } else {
          // A streamed head may have gone out; its connection must be dropped, never completed.
          for (const conn of got.conns) expect(await closedWithin(conn, 2_000)).toBe(true);
          if (got.bytes.length > 0) note(`${name}: the request head reached the replica, then was aborted`);
        }
      });
    }

    it("duplicate identical Content-Lengths: 400, or one request of that length; nothing smuggled", async () => {
      const mark = up.mark();
      const c = await open();
      // Two equal lengths are not ambiguous: no request is queued behind, only the framing is checked.
      c.write(`${PRE}x-tag: dup\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabcSMUGGLED`);
      await c.until(() => c.closed || c.finals().length >= 1, PROMPT_MS);
      await sleep(100);
      const finals = c.finals();
      c.destroy();
      const got = up.since(mark);
      expect(got.bytes.includes("SMUGGLED")).toBe(false);
      if (finals[0]?.status === 400) {
        note("duplicate identical Content-Length: 400");
        expectIngressAnswer(finals[0], 400, "invalid_request");
        expect(finals.length).toBe(1);
        expect(c.closed).toBe(true);
        expect(got.bytes.length).toBe(0);
      } else {
        note("duplicate identical Content-Length: accepted as one request");
        expect(finals.length).toBe(1);
        expect(echoOf(finals[0]).tag).toBe("dup");
        expect(got.requests.length).toBe(1);
        expectCleanUpstreamRequest(got.requests[0]!, Buffer.from("abc"));
      }
    });

    it("a body that contains a complete request reaches the replica only as body bytes", async () => {
      const inner = request({ tag: "INNER", headers: ["x-inner: INNER"], body: "{}" });
      const mark = up.mark();
      const c = await open();
      c.write(request({ tag: "outer", body: inner }));
      const r = await c.next(PROMPT_MS);
      expect(echoOf(r).tag).toBe("outer");
      await sleep(150);
      expect(c.data.length, "no second response").toBe(0);
      const got = up.since(mark);
      expect(got.requests.length).toBe(1);
      expectCleanUpstreamRequest(got.requests[0]!, inner);
      expect(got.requests.some((q) => q.tag === "INNER")).toBe(false);
      c.destroy();
    });

    itBug("http09-request-line")("a request line without a version (HTTP/0.9 form) is refused", async () => {
      const mark = up.mark();
      const c = await open();
      c.write(`POST /predict\r\nHost: ${HOST}\r\n${AUTH}\r\nx-tag: no-version\r\nContent-Length: 0\r\n\r\n`);
      c.write(SMUGGLED);
      expect(await c.waitClosed(PROMPT_MS)).toBe(true);
      const { messages, rest } = c.parsed();
      expect(rest).toBeNull();
      expect(messages.length).toBeLessThanOrEqual(1);
      if (messages.length > 0) expectIngressAnswer(messages[0], 400);
      expect(up.since(mark).bytes.length).toBe(0);
    });
  });

  // -------------------------------------------------------------------------------------------------------
  describe("upgrades and /sync", () => {
    beforeEach(warmPool);

    /** The ingress refused on the head: one error answer, the connection closed, nothing at any replica. */
    async function expectRefusedAtHead(bytes: string | Buffer, status: number, code: string): Promise<void> {
      const mark = up.mark();
      const c = await open();
      c.write(Buffer.concat([Buffer.from(bytes), SMUGGLED]));
      expect(await c.waitClosed(PROMPT_MS), "closed after the refusal").toBe(true);
      c.destroy();
      const { messages } = c.parsed();
      expect(messages.length).toBe(1);
      expectIngressAnswer(messages[0], status, code);
      await sleep(30);
      const got = up.since(mark);
      expect(got.bytes.length, "bytes at the replica").toBe(0);
    }

    it("an upgrade with a body (Content-Length): 400, its bytes never reach a replica", async () => {
      await expectRefusedAtHead(
        `${upgradeHead("/websocket", ["Content-Length: 5"])}hello`,
        400,
        "invalid_request",
      );
    });

    it("an upgrade with a chunked body: 400, nothing upstream", async () => {
      await expectRefusedAtHead(
        `${upgradeHead("/sync/ws", ["Transfer-Encoding: chunked"])}5\r\nhello\r\n0\r\n\r\n`,
        400,
        "invalid_request",
      );
    });

    it("Upgrade: websocket on a POST /websocket: 405 (Allow: GET), nothing upstream", async () => {
      await expectRefusedAtHead(
        upgradeHead("/websocket", ["Content-Length: 0"], "POST"),
        405,
        "method_not_allowed",
      );
    });

    it("an upgrade with a bad key, then a pipelined request: 401, closed, neither reaches a replica", async () => {
      await expectRefusedAtHead(upgradeHead("/websocket", [], "GET", "k-wrong"), 401, "unauthorized");
    });

    it("h2c on /websocket: 426, nothing upstream", async () => {
      const h2c = upgradeHead("/websocket").replace("Upgrade: websocket", "Upgrade: h2c");
      await expectRefusedAtHead(h2c, 426, "websocket_upgrade_required");
    });

    it("h2c on /sync: served as HTTP/1.1 (never 101), the replica gets no Upgrade or HTTP2-Settings", async () => {
      const mark = up.mark();
      const c = await open();
      c.write(
        `GET /sync/v1/models HTTP/1.1\r\nHost: ${HOST}\r\n${AUTH}\r\nConnection: Upgrade, HTTP2-Settings\r\n` +
          "Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nx-tag: h2c\r\n\r\n",
      );
      const m = await c.next(PROMPT_MS);
      c.destroy();
      expect(m?.status).toBe(200);
      const got = up.since(mark).requests;
      expect(got.length).toBe(1);
      expect(got[0]!.method).toBe("GET");
      expect(got[0]!.target).toBe("/v1/models");
      for (const h of ["upgrade", "http2-settings", "connection"]) {
        expect(
          fieldValues(got[0]!.headers, h).filter((v) => v.toLowerCase() !== "keep-alive"),
          h,
        ).toEqual([]);
      }
    });

    it("the HTTP/2 preface (prior knowledge): 400, nothing upstream", async () => {
      const mark = up.mark();
      const c = await open();
      c.write("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
      expect(await c.waitClosed(PROMPT_MS)).toBe(true);
      c.destroy();
      expect(up.since(mark).bytes.length).toBe(0);
    });

    it("a request pipelined after an accepted upgrade is not a frame: 1002 to the client, never a request upstream", async () => {
      up.respond = accept101;
      const mark = up.mark();
      const c = await open();
      c.write(Buffer.concat([Buffer.from(upgradeHead("/websocket")), SMUGGLED]));
      expect(await c.waitClosed(PROMPT_MS)).toBe(true);
      c.destroy();
      const text = c.data.toString("latin1");
      expect(text).toMatch(/^HTTP\/1\.1 101 /);
      const frames = c.data.subarray(c.data.indexOf("\r\n\r\n") + 4);
      // The ingress's close frame: opcode 8, status 1002.
      expect(frames[0]).toBe(0x88);
      expect(frames.readUInt16BE(2)).toBe(1002);
      await sleep(30);
      const got = up.since(mark);
      expect(got.requests.map((r) => `${r.method} ${r.target}`)).toEqual(["GET /v1/websocket"]);
      expect(got.bytes.includes("SMUGGLED"), "smuggled bytes at the replica").toBe(false);
      // Upstream: the upgrade head, then only the ingress's own (masked) close frame.
      const after = got.bytes.subarray(got.bytes.indexOf("\r\n\r\n") + 4);
      expect(after.length).toBeLessThanOrEqual(2 + 4 + 125);
      if (after.length > 0) expect(after[0]).toBe(0x88);
    });

    it("frames sent with the upgrade, before the 101, pass once it is accepted", async () => {
      up.respond = accept101;
      const mark = up.mark();
      const c = await open();
      const frame = encodeFrame(1, Buffer.from("early"), true);
      c.write(Buffer.concat([Buffer.from(upgradeHead("/sync/stream")), frame]));
      await c.until(() => c.data.includes("\r\n\r\n"), PROMPT_MS);
      await sleep(50);
      c.destroy();
      const got = up.since(mark);
      expect(got.requests.map((r) => `${r.method} ${r.target}`)).toEqual(["GET /stream"]);
      const req = got.requests[0]!;
      expect(fieldValues(req.headers, "upgrade")).toEqual(["websocket"]);
      expect(fieldValues(req.headers, "authorization")).toEqual([]);
      expect(got.bytes.subarray(got.bytes.indexOf("\r\n\r\n") + 4).equals(frame)).toBe(true);
    });

    it("the client going away after the 101: the replica gets a masked close 1001, then the end", async () => {
      up.respond = accept101;
      const mark = up.mark();
      const c = await open();
      c.write(upgradeHead("/websocket"));
      await c.until(() => c.data.includes("\r\n\r\n"), PROMPT_MS);
      c.destroy();
      const conn = up.since(mark).conns.at(-1)!;
      expect(await closedWithin(conn, PROMPT_MS)).toBe(true);
      const frame = conn.received.subarray(conn.received.indexOf("\r\n\r\n") + 4);
      expect(frame[0]).toBe(0x88);
      expect(frame[1]! & 0x80).toBe(0x80);
      const key = frame.subarray(2, 6);
      const code = ((frame[6]! ^ key[0]!) << 8) | (frame[7]! ^ key[1]!);
      expect(code).toBe(1001);
    });

    it("a replica that answers 101 with a wrong accept value: 502, the connection closes", async () => {
      up.respond = (_req, conn) => {
        conn.upgraded = true;
        conn.socket.write(
          "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: bm90IHRoZSByaWdodCBvbmU=\r\n\r\n",
        );
      };
      const c = await open();
      c.write(upgradeHead("/websocket"));
      expect(await c.waitClosed(PROMPT_MS)).toBe(true);
      c.destroy();
      const { messages } = c.parsed();
      expect(messages.length).toBe(1);
      expectIngressAnswer(messages[0], 502, "replica_failed");
    });

    it("Connection naming Content-Length on a POST upgrade: the body stays a body, nothing smuggled", async () => {
      const mark = up.mark();
      const c = await open();
      const smuggled = SMUGGLED.toString("latin1");
      c.write(
        `POST /sync/x HTTP/1.1\r\nHost: ${HOST}\r\n${AUTH}\r\nConnection: Upgrade, Content-Length\r\nUpgrade: websocket\r\n` +
          `Content-Length: ${smuggled.length}\r\nx-tag: outer\r\n\r\n${smuggled}`,
      );
      expect(echoOf(await c.next(PROMPT_MS)).len).toBe(smuggled.length);
      c.destroy();
      await sleep(30);
      const got = up.since(mark).requests;
      expect(got.map((r) => r.tag)).toEqual(["outer"]);
      expect(got[0]!.body.toString("latin1")).toBe(smuggled);
    });

    it("a /sync request is one cleanly framed request upstream, whatever the client's framing", async () => {
      const mark = up.mark();
      const c = await open();
      const body = Buffer.from('{"stream":true}');
      c.write(
        `PATCH /sync/v1/x?q=1 HTTP/1.1\r\nHost: ${HOST}\r\n${AUTH}\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\n\r\n` +
          `${body.length.toString(16)}\r\n${body}\r\n0\r\n\r\n`,
      );
      expect(echoOf(await c.next(PROMPT_MS)).len).toBe(body.length);
      c.destroy();
      const got = up.since(mark).requests;
      expect(got.length).toBe(1);
      expect(got[0]!.method).toBe("PATCH");
      expect(got[0]!.target).toBe("/v1/x?q=1");
      expect(fieldValues(got[0]!.headers, "te")).toEqual([]);
      expect(sha256(got[0]!.body)).toBe(sha256(body));
    });
  });

  describe("pipelining", () => {
    it("three requests in one write: answered in order, each one framed request upstream", async () => {
      const bodies = { a: Buffer.from("alpha"), b: Buffer.from("beta-XY"), c: Buffer.alloc(0) };
      // The first answer is the slowest, so in-order delivery cannot be luck.
      const base = echo("up-a");
      up.respond = (req, conn) => {
        if (req.tag === "p-a") setTimeout(() => base(req, conn), 200);
        else base(req, conn);
      };
      const mark = up.mark();
      const c = await open();
      c.write(
        Buffer.concat([
          request({ tag: "p-a", body: bodies.a }),
          request({ tag: "p-b", chunks: ["beta", "-XY"] }),
          request({ tag: "p-c" }),
        ]),
      );
      const got: EchoBody[] = [];
      for (let i = 0; i < 3; i++) got.push(echoOf(await c.next(PROMPT_MS)));
      expect(got.map((g) => g.tag)).toEqual(["p-a", "p-b", "p-c"]);
      expect(got.map((g) => g.sha)).toEqual([sha256(bodies.a), sha256(bodies.b), sha256(bodies.c)]);
      const seen = up.since(mark).requests;
      expect(seen.map((r) => r.tag).sort()).toEqual(["p-a", "p-b", "p-c"]);
      for (const r of seen) {
        expectCleanUpstreamRequest(r, bodies[r.tag!.slice(2) as "a" | "b" | "c"]);
      }
      c.destroy();
    });

    it("pipelined requests with larger bodies, mixed framing", async () => {
      const big = Buffer.alloc(100_000, "q");
      const mid = Buffer.alloc(5_000, "m");
      const mark = up.mark();
      const c = await open();
      c.write(
        Buffer.concat([
          request({ tag: "pl-1", body: big }),
          request({ tag: "pl-2", chunks: [mid, mid, "z"] }),
          request({ tag: "pl-3", body: mid }),
        ]),
      );
      const tags: string[] = [];
      for (let i = 0; i < 3; i++) tags.push(echoOf(await c.next(PROMPT_MS)).tag!);
      expect(tags).toEqual(["pl-1", "pl-2", "pl-3"]);
      const seen = new Map(up.since(mark).requests.map((r) => [r.tag, r]));
      expectCleanUpstreamRequest(seen.get("pl-1")!, big);
      expectCleanUpstreamRequest(seen.get("pl-2")!, Buffer.concat([mid, mid, Buffer.from("z")]));
      expectCleanUpstreamRequest(seen.get("pl-3")!, mid);
      c.destroy();
    });

    it.each(HANDOVER_HEADS)(
      "a slow request, then a pipelined %s: the first is answered first and whole, the second answered or closed after it",
      async (_n, second) => {
        const base = echo("up-a");
        up.respond = (req, conn) => {
          if (req.tag === "p-slow") setTimeout(() => base(req, conn), 300);
          else base(req, conn);
        };
        const mark = up.mark();
        const c = await open();
        c.write(Buffer.concat([request({ tag: "p-slow", body: "{}" }), Buffer.from(second, "latin1")]));
        const first = await c.next(PROMPT_MS);
        expect(echoOf(first).tag, "the first request's answer, before anything for the second").toBe(
          "p-slow",
        );
        const next = await c.next(PROMPT_MS).catch(() => null);
        if (next !== null) {
          if (second.startsWith("CONNECT")) expect(next.startLine).toMatch(/^HTTP\/1\.1 4\d\d /);
          else expect(echoOf(next).tag).toBe("p-up");
        } else {
          expect(second.startsWith("CONNECT"), "only a CONNECT may be closed without an answer").toBe(true);
        }
        // A CONNECT never reaches a replica.
        expect(
          up
            .since(mark)
            .requests.map((r) => r.tag)
            .filter((t) => t !== "p-up"),
        ).toEqual(["p-slow"]);
        c.destroy();
      },
    );

    it.each(HANDOVER_HEADS)(
      "a request with connection: close, then a pipelined %s: the first answered and the connection closed, the ingress still up",
      async (_n, second) => {
        up.respond = echo("close-a");
        const mark = up.mark();
        const c = await open();
        c.write(
          Buffer.concat([
            request({ tag: "p-close", body: "{}", headers: ["Connection: close"] }),
            Buffer.from(second, "latin1"),
          ]),
        );
        const first = await c.next(PROMPT_MS);
        expect(echoOf(first).tag).toBe("p-close");
        await c.waitClosed(PROMPT_MS);
        expect(up.since(mark).requests.map((r) => r.tag)).toEqual(["p-close"]);
        // The ingress is still there (found by the http-node fuzz target: a write after the end of the
        // connection was an uncaught error that ended the process).
        const again = await open();
        again.write(request({ tag: "after", body: "{}" }));
        expect(echoOf(await again.next(PROMPT_MS)).tag).toBe("after");
        again.destroy();
      },
    );

    it("a slow request, then a pipelined CONNECT, then a reset before the first answer: the ingress still up", async () => {
      const base = echo("reset-a");
      up.respond = (req, conn) => setTimeout(() => base(req, conn), 200);
      const c = await open();
      c.write(
        Buffer.concat([
          request({ tag: "p-reset", body: "{}" }),
          Buffer.from(`CONNECT ${HOST}:443 HTTP/1.1\r\nHost: ${HOST}:443\r\n${AUTH}\r\n\r\n`, "latin1"),
        ]),
      );
      await sleep(50);
      c.socket.resetAndDestroy();
      await sleep(400);
      const again = await open();
      again.write(request({ tag: "after-reset", body: "{}" }));
      expect(echoOf(await again.next(PROMPT_MS)).tag).toBe("after-reset");
      again.destroy();
    });

    it("a slow request, then a pipelined one with Expect: 100-continue and its body: each answer whole, in order, a 100 only before its own head", async () => {
      const base = echo("cont-a");
      up.respond = (req, conn) => {
        if (req.tag === "p-first") setTimeout(() => base(req, conn), 200);
        else base(req, conn);
      };
      const c = await open();
      c.write(
        Buffer.concat([
          request({ tag: "p-first", body: "{}" }),
          request({ tag: "p-continue", body: "body", headers: ["Expect: 100-continue"] }),
        ]),
      );
      await c.responses(2, PROMPT_MS);
      const { messages, rest } = c.parsed();
      // node:http put the second answer's head before the 100 it had already buffered, and its body after
      // the 100, where a client reads it as the start of the next answer (found by the http-node fuzz target).
      expect(rest, c.data.toString("latin1")).toBeNull();
      const statuses = messages.map((m) => m.status);
      expect(statuses.filter((s) => s >= 200)).toEqual([200, 200]);
      expect(statuses.indexOf(100), "a 100 Continue, if any, comes after the first answer").not.toBe(0);
      const finals = messages.filter((m) => m.status >= 200);
      expect(finals.map((m) => echoOf(m).tag)).toEqual(["p-first", "p-continue"]);
      expect(echoOf(finals[1]).sha).toBe(sha256("body"));
      c.destroy();
    });

    it.each([
      ["HTTP/2's preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"],
      ["a PRI request line without a version", `PRI /predict\r\nHost: ${HOST}\r\n\r\n`],
      ["a PRI request of HTTP/1.1", `PRI /predict HTTP/1.1\r\nHost: ${HOST}\r\n${AUTH}\r\n\r\n`],
    ])(
      "a request, then a pipelined %s: the first is answered whole, the PRI refused or the connection closed after it",
      async (_n, second) => {
        up.respond = echo("pri-a");
        const mark = up.mark();
        const c = await open();
        c.write(Buffer.concat([request({ tag: "p-before-pri", body: "{}" }), Buffer.from(second, "latin1")]));
        // node:http destroyed the connection on parsing the PRI, the answer owed before it lost.
        const first = await c.next(PROMPT_MS);
        expect(echoOf(first).tag).toBe("p-before-pri");
        const next = await c.next(PROMPT_MS).catch(() => null);
        if (next !== null) {
          expect(next.status).toBeGreaterThanOrEqual(400);
          expectIngressAnswer(next, next.status);
          expect(typeof JSON.parse(next.body.toString("utf8")).error_code).toBe("string");
        }
        expect(up.since(mark).requests.map((r) => r.tag)).toEqual(["p-before-pri"]);
        c.destroy();
      },
    );

    /** A refused request declaring a body that holds a complete request, then a pipelined legitimate one. */
    async function refusedThenSecond() {
      const mark = up.mark();
      const c = await open();
      c.write(
        Buffer.concat([
          request({ tag: "refused", key: "k-wrong", body: SMUGGLED }),
          request({ tag: "second", body: "{}" }),
        ]),
      );
      const first = await c.next(PROMPT_MS);
      expectIngressAnswer(first, 401, "unauthorized");
      const close = field(first!.headers, "connection")?.toLowerCase() === "close";
      if (close) await c.waitClosed(1_000);
      else await c.until(() => c.finals().length >= 1, PROMPT_MS);
      await sleep(150);
      c.destroy();
      return { c, close, got: up.since(mark) };
    }

    it("a refused first request with a body: its body is never parsed as a request", async () => {
      const { c, close, got } = await refusedThenSecond();
      expect(got.bytes.includes("SMUGGLED")).toBe(false);
      expect(got.requests.filter((r) => r.tag !== "second")).toEqual([]);
      note(
        `refused request with a body: ${close ? "401 with connection: close" : "body drained, connection kept"}`,
      );
      if (close) {
        expect(c.closed).toBe(true);
        expect(c.finals()).toEqual([]);
      } else {
        const finals = c.finals();
        expect(finals.length).toBe(1);
        expect(echoOf(finals[0]).tag).toBe("second");
      }
    });

    itBug("close-then-pipelined")(
      "after an answer with connection: close, later pipelined requests are not processed (RFC 9112 §9.6)",
      async () => {
        const { close, got } = await refusedThenSecond();
        const second = got.requests.filter((r) => r.tag === "second").length;
        // With close, the second request gets no answer, so it must not run either; without, it runs once.
        expect(second).toBe(close ? 0 : 1);
      },
    );
  });

  // -------------------------------------------------------------------------------------------------------
  describe("upstream request framing", () => {
    const hopHeaders = [
      "Connection: keep-alive, X-Conn-Named",
      "X-Conn-Named: 1",
      "Keep-Alive: timeout=5",
      "TE: trailers",
      "Trailer: X-Trailer",
      "Upgrade: h2c",
      "Proxy-Connection: keep-alive",
      "Proxy-Authorization: Basic eA==",
      "Proxy-Authenticate: Basic",
      "x-meridian-route: forged",
      "x-meridian-plane: forged",
      "X-End-To-End: kept",
    ];
    const MB = Buffer.alloc(1_000_000);
    for (let i = 0; i < MB.length; i++) MB[i] = (i * 7919) & 0xff;

    it.each([
      { name: "an empty body (Content-Length: 0)", req: { body: "" }, body: Buffer.alloc(0) },
      { name: "no body and no framing header", req: { noLength: true }, body: Buffer.alloc(0) },
      { name: "a small Content-Length body", req: { body: '{"x":1}' }, body: Buffer.from('{"x":1}') },
      {
        name: "a chunked body",
        req: { chunks: ["ab", "cdef", Buffer.alloc(3000, 1)] },
        body: Buffer.concat([Buffer.from("abcdef"), Buffer.alloc(3000, 1)]),
      },
      { name: "a 1 MB body", req: { body: MB }, body: MB },
      {
        name: "a 1 MB chunked body",
        req: { chunks: [MB.subarray(0, 400_000), MB.subarray(400_000)] },
        body: MB,
      },
    ])("$name: one framing, no hop-by-hop fields, no key, exact bytes", async ({ req, body }) => {
      const mark = up.mark();
      const c = await open();
      c.write(request({ tag: "frame", headers: hopHeaders, ...req }));
      const r = await c.next(PROMPT_MS + 2_000);
      const e = echoOf(r);
      expect(e.sha).toBe(sha256(body));
      const seen = up.since(mark).requests;
      expect(seen.length).toBe(1);
      expectCleanUpstreamRequest(seen[0]!, body);
      expect(field(seen[0]!.headers, "x-end-to-end")).toBe("kept");
      c.destroy();
    });

    it("Connection: Upgrade on a POST with a body is a plain request upstream", async () => {
      const mark = up.mark();
      const c = await open();
      c.write(request({ tag: "upg", headers: ["Connection: Upgrade", "Upgrade: websocket"], body: "hello" }));
      const r = await c.next(PROMPT_MS);
      expect(echoOf(r).sha).toBe(sha256("hello"));
      const seen = up.since(mark).requests;
      expect(seen.length).toBe(1);
      expectCleanUpstreamRequest(seen[0]!, Buffer.from("hello"));
      c.destroy();
    });

    it("hop-by-hop response fields are stripped towards the client", async () => {
      up.respond = (_req, conn) =>
        conn.socket.write(
          "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Resp-Named\r\nX-Resp-Named: 1\r\nKeep-Alive: timeout=5\r\n" +
            "Proxy-Authenticate: Basic\r\nTrailer: X-T\r\nUpgrade: h2c\r\nx-meridian-plane: forged\r\n" +
            "X-Model: kept\r\nContent-Length: 2\r\n\r\nok",
        );
      const c = await open();
      c.write(request({ tag: "resp-hop" }));
      const r = await c.next(PROMPT_MS);
      expect(r?.status).toBe(200);
      expect(r!.body.toString()).toBe("ok");
      for (const h of ["x-resp-named", "proxy-authenticate", "trailer", "upgrade"]) {
        expect(fieldValues(r!.headers, h), h).toEqual([]);
      }
      // The ingress may state its own keep-alive terms for the client hop, never the replica's.
      expect(fieldValues(r!.headers, "keep-alive")).not.toContain("timeout=5");
      for (const v of fieldValues(r!.headers, "connection")) expect(v.toLowerCase()).not.toContain("x-resp");
      expect(field(r!.headers, "x-meridian-plane")).toBe("eu-1");
      expect(field(r!.headers, "x-model")).toBe("kept");
      c.destroy();
    });
  });

  // -------------------------------------------------------------------------------------------------------
  describe("response framing from a malicious or buggy replica", () => {
    const BAD: Array<{ name: string; bytes: string }> = [
      {
        name: "CL+TE",
        bytes:
          "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
      },
      {
        name: "TE+CL",
        bytes:
          "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
      },
      {
        name: "two different Content-Lengths",
        bytes: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello!!",
      },
      { name: "Content-Length with a sign", bytes: "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello" },
      { name: "bare LF line endings", bytes: "HTTP/1.1 200 OK\nContent-Length: 5\n\nhello" },
      {
        name: "a bare LF after one header",
        bytes: "HTTP/1.1 200 OK\r\nX-A: 1\nContent-Length: 5\r\n\r\nhello",
      },
      {
        name: "NUL in a header value",
        bytes: "HTTP/1.1 200 OK\r\nX-A: a\0b\r\nContent-Length: 5\r\n\r\nhello",
      },
      {
        name: "a bare CR in a header value",
        bytes: "HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 5\r\n\r\nhello",
      },
      {
        name: "a space in a header name",
        bytes: "HTTP/1.1 200 OK\r\nX A: 1\r\nContent-Length: 5\r\n\r\nhello",
      },
      { name: "a four-digit status", bytes: "HTTP/1.1 2000 OK\r\nContent-Length: 5\r\n\r\nhello" },
      { name: "a protocol that is not HTTP", bytes: "HTTX/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello" },
      { name: "a status line of garbage", bytes: "hello world\r\n\r\n" },
      { name: "a status line without a status", bytes: "HTTP/1.1 OK\r\nContent-Length: 5\r\n\r\nhello" },
    ];

    it.each(BAD)("$name → 502 replica_failed, the replica's socket is dropped", async ({ bytes }) => {
      up.respond = (_req, conn) => conn.socket.write(bytes);
      const mark = up.mark();
      const c = await open();
      c.write(request({ tag: "bad" }));
      const r = await c.next(PROMPT_MS);
      expectIngressAnswer(r, 502, "replica_failed");
      const seen = up.since(mark).requests;
      expect(seen.length).toBe(1);
      expect(await closedWithin(seen[0]!.conn, 2_000), "the replica's socket is closed").toBe(true);
      up.resetResponder();
      c.write(request({ tag: "after-bad" }));
      const e = echoOf(await c.next(PROMPT_MS));
      expect(e.tag).toBe("after-bad");
      expect(e.conn).not.toBe(seen[0]!.conn.id);
      c.destroy();
    });

    it("obs-fold in a response: 502, or relayed with the fold replaced by spaces", async () => {
      up.respond = (_req, conn) =>
        conn.socket.write("HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 5\r\n\r\nhello");
      const mark = up.mark();
      const c = await open();
      c.write(request({ tag: "fold" }));
      const r = await c.next(PROMPT_MS);
      expect(r, "a response").toBeTruthy();
      if (r!.status === 502) {
        note("obs-fold response: 502");
        expectIngressAnswer(r, 502, "replica_failed");
        expect(await closedWithin(up.since(mark).requests[0]!.conn, 2_000)).toBe(true);
      } else {
        note("obs-fold response: relayed with the fold unfolded");
        expect(r!.status).toBe(200);
        expect(r!.body.toString()).toBe("hello");
        expect(field(r!.headers, "x-folded")).toMatch(/^a[ \t]+b$/);
      }
      c.destroy();
    });

    it.each([
      { name: "in the same write", delayMs: 0 },
      { name: "after the response, on the idle socket", delayMs: 40 },
    ])("bytes beyond Content-Length ($name) never reach the client", async ({ delayMs }) => {
      const extra = "EXTRA-HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nINJECTED";
      up.respond = (_req, conn) => {
        if (delayMs === 0) {
          conn.socket.write(`HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello${extra}`);
        } else {
          conn.socket.write("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
          setTimeout(() => {
            if (!conn.socket.destroyed) conn.socket.write(extra);
          }, delayMs);
        }
      };
      const c = await open();
      c.write(request({ tag: "overlong" }));
      const r = await c.next(PROMPT_MS);
      expect(r?.status).toBe(200);
      expect(r!.body.toString()).toBe("hello");
      up.resetResponder();
      await sleep(delayMs + 60);
      // Follow-ups on this connection and on fresh ones: none may carry the leftover bytes.
      const clients = [c, await open(), await open(), await open()];
      for (const [i, k] of clients.entries()) {
        k.write(request({ tag: `follow-${i}` }));
        const f = await k.next(PROMPT_MS);
        expect(echoOf(f).tag).toBe(`follow-${i}`);
      }
      await sleep(100);
      for (const k of clients) {
        expect(k.data.includes("INJECTED")).toBe(false);
        expect(k.data.includes("EXTRA")).toBe(false);
        expect(k.data.length).toBe(0);
        k.destroy();
      }
    });

    it("a close-delimited response is relayed complete", async () => {
      const body = Buffer.alloc(70_000, "c");
      up.respond = (_req, conn) => {
        conn.socket.write("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n");
        conn.socket.write(body.subarray(0, 30_000));
        setTimeout(() => conn.socket.end(body.subarray(30_000)), 50);
      };
      const c = await open();
      c.write(request({ tag: "close-delimited" }));
      const r = await c.next(PROMPT_MS);
      expect(r?.status).toBe(200);
      expect(sha256(r!.body)).toBe(sha256(body));
      note(`close-delimited response relayed as ${r!.framing}`);
      c.destroy();
    });

    it("a chunked response (extensions, trailers) is relayed with the right body", async () => {
      up.respond = (_req, conn) => {
        conn.socket.write("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nwiki\r\n");
        setTimeout(() => conn.socket.write('5;a="b c"\r\npedia\r\n'), 30);
        setTimeout(() => conn.socket.write("E\r\n in\r\n\r\nchunks.\r\n0\r\nX-Trailer: t\r\n\r\n"), 60);
      };
      const c = await open();
      c.write(request({ tag: "chunked-resp" }));
      const r = await c.next(PROMPT_MS);
      expect(r?.status).toBe(200);
      expect(r!.body.toString()).toBe("wikipedia in\r\n\r\nchunks.");
      // The connection stays usable: the next answer is framed right.
      c.write(request({ tag: "after-chunked" }));
      up.resetResponder();
      expect(echoOf(await c.next(PROMPT_MS)).tag).toBe("after-chunked");
      c.destroy();
    });

    // RFC 9110 §15.2: a client MUST be able to parse 1xx responses it did not expect.
    const EARLY_HINTS = "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n";
    it("a 103 interim response before the 200: the client gets the final 200", () =>
      interimThenFinal("103", EARLY_HINTS));
    itBug("unsolicited-100")("interim 100 and 103 before the 200: the client gets the final 200", () =>
      interimThenFinal("100 then 103", `HTTP/1.1 100 Continue\r\n\r\n${EARLY_HINTS}`),
    );

    async function interimThenFinal(name: string, interim: string): Promise<void> {
      up.respond = (_req, conn) =>
        conn.socket.write(`${interim}HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok`);
      const c = await open();
      c.write(request({ tag: "interim" }));
      const all: Message[] = [];
      for (;;) {
        const m = await c.next(PROMPT_MS);
        expect(m, "a response").toBeTruthy();
        all.push(m!);
        if (m!.status >= 200) break;
      }
      const final = all.at(-1)!;
      expect(final.status).toBe(200);
      expect(final.body.toString()).toBe("ok");
      expect(field(final.headers, "x-meridian-plane")).toBe("eu-1");
      note(
        `interim ${name}: relayed ${
          all
            .slice(0, -1)
            .map((m) => m.status)
            .join(",") || "none"
        }`,
      );
      for (const m of all.slice(0, -1)) expect(m.body.length).toBe(0);
      c.destroy();
    }

    it("204 with no body: relayed without a body, the connection stays in sync", async () => {
      up.respond = (_req, conn) => conn.socket.write("HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n");
      const c = await open();
      c.write(request({ tag: "no-content" }));
      const r = await c.next(PROMPT_MS);
      expect(r?.status).toBe(204);
      expect(r!.body.length).toBe(0);
      expect(fieldValues(r!.headers, "transfer-encoding")).toEqual([]);
      up.resetResponder();
      c.write(request({ tag: "after-204" }));
      expect(echoOf(await c.next(PROMPT_MS)).tag).toBe("after-204");
      c.destroy();
    });

    it("the replica closing mid-body (Content-Length within the receipt bound): the held answer becomes a 502", async () => {
      // The ingress holds a small answer of known length whole before its head, so that its receipt covers
      // the body (docs/evidence.md#receipts): nothing of it went out, and the client gets a clean 502.
      up.respond = (_req, conn) => {
        conn.socket.write("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial-");
        setTimeout(() => conn.socket.destroy(), 80);
      };
      const c = await open();
      c.write(request({ tag: "mid-body" }));
      await sleep(400);
      const { messages, rest } = c.parsed();
      expect(rest, "nothing partial").toBeNull();
      expect(messages).toHaveLength(1);
      expectIngressAnswer(messages[0], 502, "replica_failed");
      expect(c.data.toString("latin1")).not.toContain("partial-");
      c.destroy();
    });

    it.each([
      {
        name: "Content-Length past the receipt bound",
        head: `HTTP/1.1 200 OK\r\nContent-Length: ${2 * 1024 * 1024}\r\n\r\n`,
        part: "partial-",
      },
      {
        name: "chunked",
        head: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        part: "8\r\npartial-\r\n",
      },
      {
        name: "chunked, cut inside a chunk",
        head: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        part: "20\r\npartial-",
      },
    ])(
      "the replica closing mid-body ($name): the client's response is visibly aborted",
      async ({ head, part }) => {
        up.respond = (_req, conn) => {
          conn.socket.write(head + part);
          setTimeout(() => conn.socket.destroy(), 80);
        };
        const c = await open();
        c.write(request({ tag: "mid-body" }));
        expect(await c.waitClosed(PROMPT_MS), "the client connection is closed").toBe(true);
        const { messages, rest } = c.parsed();
        expect(messages, "no complete response").toEqual([]);
        // Either the status line went out and the body is cut short, or nothing went out at all.
        if (c.data.length > 0) {
          expect(rest?.kind).toBe("incomplete");
          expect(c.data.toString("latin1")).toMatch(/^HTTP\/1\.1 200 /);
        }
      },
    );
  });

  // -------------------------------------------------------------------------------------------------------
  describe("pool hygiene", () => {
    /** Streams `count` chunks `gapMs` apart, stopping when the socket goes. */
    const slowStream =
      (count: number, gapMs: number): Responder =>
      (req, conn) => {
        conn.socket.write(`HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n`);
        let i = 0;
        const tick = () => {
          if (conn.socket.destroyed || conn.closed) return;
          if (++i >= count) {
            conn.socket.write(`0\r\n\r\n`);
            return;
          }
          const chunk = `LEFTOVER-${req.tag}-${i};`;
          conn.socket.write(`${chunk.length.toString(16)}\r\n${chunk}\r\n`);
          setTimeout(tick, gapMs);
        };
        setTimeout(tick, gapMs);
      };

    it("a client leaving mid-response: that replica socket is closed, never reused", async () => {
      // Long gaps: a socket wrongly pooled would be taken by the next request before the next leftover chunk.
      up.respond = slowStream(15, 200);
      const mark = up.mark();
      const c = await open();
      c.write(request({ tag: "leaver" }));
      expect(await c.until(() => c.data.includes("first"), PROMPT_MS)).toBe(true);
      c.destroy();
      const seen = up.since(mark).requests;
      expect(seen.length).toBe(1);
      up.resetResponder();
      await sleep(20);
      for (let i = 0; i < 3; i++) {
        const k = await open();
        k.write(request({ tag: `next-${i}` }));
        const e = echoOf(await k.next(PROMPT_MS));
        expect(e.tag).toBe(`next-${i}`);
        expect(e.conn).not.toBe(seen[0]!.conn.id);
        await sleep(50);
        expect(k.data.includes("LEFTOVER")).toBe(false);
        k.destroy();
      }
      expect(await closedWithin(seen[0]!.conn, 2_000), "the replica's socket is dropped").toBe(true);
      expect(seen[0]!.conn.requests.length, "nothing else was sent on it").toBe(1);
    });

    it("a response relayed to a slow reader: its replica socket is pooled readable (next request answered)", async () => {
      // The client reads slowly, so the ingress meets backpressure on the last chunks of the response too.
      // A socket paused for backpressure must not go back to the pool paused: the next request on it would
      // hang until predictTimeout (the 1-in-200 hang of PERFORMANCE-NOTES.md).
      const big = Buffer.alloc(1_500_000, "s");
      up.respond = (_req, conn) => {
        conn.socket.write(`HTTP/1.1 200 OK\r\nContent-Length: ${big.length}\r\n\r\n`);
        conn.socket.write(big);
      };
      const mark = up.mark();
      const slow = await open();
      slow.throttleMs = 8;
      slow.write(request({ tag: "slow-reader" }));
      const r = await slow.next(10_000);
      expect(r?.status).toBe(200);
      expect(r!.body.length).toBe(big.length);
      slow.destroy();
      const first = up.since(mark).requests[0]!;
      up.resetResponder();
      for (let i = 0; i < 3; i++) {
        const c = await open();
        const t0 = performance.now();
        c.write(request({ tag: `after-slow-${i}` }));
        const e = await c.next(2_500);
        expect(e, `answered promptly (${Math.round(performance.now() - t0)} ms)`).toBeTruthy();
        const body = echoOf(e);
        expect(body.tag).toBe(`after-slow-${i}`);
        if (body.conn === first.conn.id) note(`slow reader: replica socket ${first.conn.id} reused`);
        c.destroy();
      }
    }, 20_000);

    it("a burst: 300 requests over 20 keep-alive clients, 10% leaving mid-response; none hangs", async () => {
      const BIG = 150_000;
      const base = echo("up-a");
      const slow = slowStream(12, 25);
      up.respond = (req, conn) => {
        switch (field(req.headers, "x-resp")) {
          case "slow":
            slow(req, conn);
            return;
          case "chunked": {
            const body = JSON.stringify({
              up: "up-a",
              conn: conn.id,
              seq: req.seq,
              tag: req.tag ?? null,
              len: req.body.length,
              sha: sha256(req.body),
            });
            const half = body.length >> 1;
            conn.socket.write(
              `HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n${half.toString(16)}\r\n${body.slice(0, half)}\r\n`,
            );
            setTimeout(() => {
              if (!conn.socket.destroyed)
                conn.socket.write(`${(body.length - half).toString(16)}\r\n${body.slice(half)}\r\n0\r\n\r\n`);
            }, 5);
            return;
          }
          case "big": {
            const body = Buffer.concat([
              Buffer.from(
                `${JSON.stringify({ up: "up-a", conn: conn.id, seq: req.seq, tag: req.tag ?? null, len: req.body.length, sha: sha256(req.body) })}\n`,
              ),
              Buffer.alloc(BIG, "b"),
            ]);
            conn.socket.write(`HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\n\r\n`);
            conn.socket.write(body);
            return;
          }
          default:
            base(req, conn);
        }
      };
      const mark = up.mark();
      const CLIENTS = 20;
      const PER = 15;
      const expected = new Map<string, string>();
      const aborted = new Set<string>();
      let worst = 0;
      const started = performance.now();
      /** Where a request went upstream, for the failure message of a hang. */
      const trace = (tag: string): string => {
        const rs = up.since(mark).requests.filter((r) => r.tag === tag);
        if (rs.length === 0) {
          const partial = up.conns.filter((k) => k.received.includes(`x-tag: ${tag}\r\n`));
          return `no complete request upstream; partial on conns ${partial.map((k) => `${k.id}(closed=${k.closed}, ${k.received.length} B)`).join(" ")}`;
        }
        return rs
          .map(
            (r) =>
              `upstream conn ${r.conn.id} seq ${r.seq} (closed=${r.conn.closed}; conn carried ${r.conn.requests.map((q) => q.tag).join(",")})`,
          )
          .join("; ");
      };
      const runClient = async (ci: number): Promise<void> => {
        const leaver = ci % 10 === 3; // 2 of 20 clients leave mid-response on some requests
        let c = await open();
        for (let k = 0; k < PER; k++) {
          if (c.closed) c = await open();
          const tag = `b${ci}-${k}`;
          const kind = (ci + k) % 4;
          let body: Buffer;
          let bytes: Buffer;
          const resp = leaver && k % 3 === 1 ? "slow" : ["cl", "chunked", "big", "cl"][(ci * 3 + k) % 4]!;
          const headers = [`x-resp: ${resp}`];
          if (kind === 0) {
            body = Buffer.alloc(0);
            bytes = request({ tag, headers });
          } else if (kind === 1) {
            body = Buffer.from(`small-${tag}-${"s".repeat((ci * 31 + k * 17) % 500)}`);
            bytes = request({ tag, headers, body });
          } else if (kind === 2) {
            body = Buffer.alloc(100_000, tag.charCodeAt(1));
            bytes = request({ tag, headers, body });
          } else {
            const p = Buffer.from(`chunk-${tag}-`.repeat(50));
            body = Buffer.concat([p, p, p]);
            bytes = request({ tag, headers, chunks: [p, p, p] });
          }
          expected.set(tag, sha256(body));
          const t0 = performance.now();
          c.write(bytes);
          if (resp === "slow") {
            const ok = await c.until(() => c.data.includes("first"), 5_000);
            expect(ok, `${tag}: the slow response started`).toBe(true);
            c.destroy();
            aborted.add(tag);
            c = await open();
            continue;
          }
          const r = await c.next(5_000);
          worst = Math.max(worst, performance.now() - t0);
          expect(r, `${tag}: answered within 5 s; ${trace(tag)}`).toBeTruthy();
          expect(r!.status, `${tag}: ${r!.body.toString("latin1").slice(0, 120)}; ${trace(tag)}`).toBe(200);
          const text = r!.body.toString("latin1");
          const nl = text.indexOf("\n");
          const e = JSON.parse(nl < 0 ? text : text.slice(0, nl)) as EchoBody;
          expect(e.tag).toBe(tag);
          expect(e.sha).toBe(expected.get(tag));
          if (resp === "big") expect(r!.body.length - nl - 1).toBe(BIG);
        }
        c.destroy();
      };
      await Promise.all(Array.from({ length: CLIENTS }, (_, ci) => runClient(ci)));
      const elapsed = performance.now() - started;
      note(`burst: ${CLIENTS * PER} requests in ${Math.round(elapsed)} ms, slowest ${Math.round(worst)} ms`);
      expect(elapsed).toBeLessThan(20_000);
      const seen = up.since(mark).requests;
      const byTag = new Map<string, UpRequest[]>();
      for (const r of seen) byTag.set(r.tag!, [...(byTag.get(r.tag!) ?? []), r]);
      expect(aborted.size).toBeGreaterThan(0);
      for (const [tag, sha] of expected) {
        const rs = byTag.get(tag) ?? [];
        expect(rs.length, `${tag} reached the replica once`).toBe(1);
        expect(sha256(rs[0]!.body)).toBe(sha);
      }
      // Every socket that carried an abandoned response was dropped, never reused.
      for (const tag of aborted) {
        const conn = byTag.get(tag)![0]!.conn;
        expect(await closedWithin(conn, 2_000), `${tag}'s replica socket closed`).toBe(true);
        expect(conn.requests.at(-1)!.tag, `${tag}'s socket carried nothing after it`).toBe(tag);
      }
    }, 40_000);
  });

  // -------------------------------------------------------------------------------------------------------
  describe("timeouts and limits", () => {
    it("slowloris (headers trickled in): 408 and close, after headersTimeout", async () => {
      const mark = up.mark();
      const c = await open();
      const t0 = performance.now();
      c.write(`POST /predict HTTP/1.1\r\nHost: ${HOST}\r\n`);
      const trickle = setInterval(() => c.write("X-Slow: a\r\n"), 150);
      try {
        expect(await c.waitClosed(LIMITS.headersTimeoutMs + 3_000)).toBe(true);
      } finally {
        clearInterval(trickle);
      }
      const dt = performance.now() - t0;
      expect(dt).toBeGreaterThanOrEqual(LIMITS.headersTimeoutMs - 100);
      const { messages } = c.parsed();
      expect(messages.length).toBe(1);
      expectIngressAnswer(messages[0], 408, "request_timeout");
      expect(up.since(mark).bytes.length).toBe(0);
    });

    it("a body never finished: 408 or close within requestTimeout, nothing complete upstream", async () => {
      const mark = up.mark();
      const c = await open();
      const t0 = performance.now();
      c.write(`${PRE}x-tag: unfinished\r\nContent-Length: 100\r\n\r\n0123456789`);
      expect(await c.waitClosed(LIMITS.requestTimeoutMs + 3_000)).toBe(true);
      const dt = performance.now() - t0;
      expect(dt).toBeGreaterThanOrEqual(LIMITS.requestTimeoutMs - 100);
      const { messages } = c.parsed();
      expect(messages.length).toBeLessThanOrEqual(1);
      if (messages.length === 1) expectIngressAnswer(messages[0], 408, "request_timeout");
      else note("unfinished body: closed without a 408");
      expect(up.since(mark).requests).toEqual([]);
    });

    it("a streamed body never finished: closed within requestTimeout, the replica never gets it whole", async () => {
      const mark = up.mark();
      const c = await open();
      const t0 = performance.now();
      c.write(`${PRE}x-tag: unfinished-big\r\nContent-Length: 200000\r\n\r\n`);
      c.write(Buffer.alloc(100_000, "u"));
      expect(await c.waitClosed(LIMITS.requestTimeoutMs + 3_000)).toBe(true);
      expect(performance.now() - t0).toBeGreaterThanOrEqual(LIMITS.requestTimeoutMs - 100);
      const { messages } = c.parsed();
      if (messages.length === 1) expectIngressAnswer(messages[0], 408, "request_timeout");
      const got = up.since(mark);
      expect(got.requests).toEqual([]);
      for (const conn of got.conns) expect(await closedWithin(conn, 2_000)).toBe(true);
    });

    it("an idle keep-alive connection is closed after keepAliveTimeout", async () => {
      const c = await open();
      c.write(request({ tag: "idle" }));
      expect(echoOf(await c.next(PROMPT_MS)).tag).toBe("idle");
      const t0 = performance.now();
      expect(await c.waitClosed(LIMITS.keepAliveTimeoutMs + 3_000)).toBe(true);
      const dt = performance.now() - t0;
      expect(dt).toBeGreaterThanOrEqual(LIMITS.keepAliveTimeoutMs - 300);
      expect(c.data.length, "nothing sent on an idle close").toBe(0);
    });

    it("a declared Content-Length over the limit: 413 before the body is sent, nothing upstream", async () => {
      const mark = up.mark();
      const c = await open();
      c.write(`${PRE}x-tag: too-big\r\nContent-Length: ${LIMIT + 1}\r\n\r\n`);
      const r = await c.next(PROMPT_MS);
      expectIngressAnswer(r, 413, "payload_too_large");
      expect(field(r!.headers, "connection")?.toLowerCase()).toBe("close");
      expect(await c.waitClosed(PROMPT_MS)).toBe(true);
      expect(up.since(mark).bytes.length).toBe(0);
    });

    it("a chunked body growing past the limit: 413 with connection: close; the replica gets at most ~limit", async () => {
      const mark = up.mark();
      const c = await open();
      c.write(`${PRE}x-tag: chunked-too-big\r\nTransfer-Encoding: chunked\r\n\r\n`);
      const piece = Buffer.alloc(64 * 1024, "g");
      const frame = Buffer.concat([
        Buffer.from(`${piece.length.toString(16)}\r\n`),
        piece,
        Buffer.from("\r\n"),
      ]);
      let sent = 0;
      while (c.data.length === 0 && !c.closed && sent < LIMIT * 3) {
        await c.writeAsync(frame);
        sent += piece.length;
      }
      await c.until(() => c.closed || c.finals().length > 0, PROMPT_MS);
      const [r] = c.finals();
      expectIngressAnswer(r, 413, "payload_too_large");
      expect(field(r!.headers, "connection")?.toLowerCase()).toBe("close");
      expect(await c.waitClosed(PROMPT_MS)).toBe(true);
      const got = up.since(mark);
      expect(got.requests, "no complete request upstream").toEqual([]);
      expect(got.bytes.length).toBeLessThanOrEqual(LIMIT + 128 * 1024);
      for (const conn of got.conns) expect(await closedWithin(conn, 2_000)).toBe(true);
    });

    it("headers over maxHeaderBytes: 431 and close", async () => {
      const mark = up.mark();
      const c = await open();
      c.write(`${PRE}X-Big: ${"h".repeat(LIMITS.maxHeaderBytes + 1024)}\r\nContent-Length: 0\r\n\r\n`);
      expect(await c.waitClosed(PROMPT_MS)).toBe(true);
      const { messages } = c.parsed();
      expect(messages.length).toBe(1);
      expectIngressAnswer(messages[0], 431, "headers_too_large");
      expect(up.since(mark).bytes.length).toBe(0);
    });

    it("many small headers over maxHeaderBytes: 431", async () => {
      const c = await open();
      const lines = Array.from({ length: 400 }, (_, i) => `X-H${i}: ${"v".repeat(20)}`).join("\r\n");
      c.write(`${PRE}${lines}\r\nContent-Length: 0\r\n\r\n`);
      expect(await c.waitClosed(PROMPT_MS)).toBe(true);
      expectIngressAnswer(c.parsed().messages[0], 431, "headers_too_large");
    });
  });

  // -------------------------------------------------------------------------------------------------------
  describe("retries", () => {
    it("a replica refusing connections: served by the next one", async () => {
      const dead = `127.0.0.1:${await closedPort()}`;
      endpoints = [dead, up.endpoint];
      for (let i = 0; i < 4; i++) {
        const mark = up.mark();
        const c = await open();
        c.write(request({ tag: `retry-${i}`, body: `body-${i}` }));
        const e = echoOf(await c.next(PROMPT_MS));
        expect(e.tag).toBe(`retry-${i}`);
        const seen = up.since(mark).requests;
        expect(seen.length).toBe(1);
        expectCleanUpstreamRequest(seen[0]!, Buffer.from(`body-${i}`));
        c.destroy();
      }
    });

    it("a replica that reads the request then resets: 502, never retried elsewhere", async () => {
      up2.respond = (_req, conn) => conn.socket.resetAndDestroy();
      endpoints = [up2.endpoint, up.endpoint];
      let resets = 0;
      for (let i = 0; i < 4; i++) {
        const tag = `reset-${i}`;
        const m1 = up.mark();
        const m2 = up2.mark();
        const c = await open();
        c.write(request({ tag, body: "{}" }));
        const r = await c.next(PROMPT_MS);
        const atA = up.since(m1).requests.filter((q) => q.tag === tag).length;
        const atB = up2.since(m2).requests.filter((q) => q.tag === tag).length;
        if (atB > 0) {
          resets++;
          expectIngressAnswer(r, 502, "replica_failed");
          expect(atA, "the request went to a second replica").toBe(0);
        } else {
          expect(echoOf(r).tag).toBe(tag);
          expect(atA).toBe(1);
        }
        c.destroy();
      }
      expect(resets).toBeGreaterThan(0);
    });

    it("a replica that reads a streamed body then resets: 502, never retried elsewhere", async () => {
      up2.respond = (_req, conn) => conn.socket.resetAndDestroy();
      endpoints = [up2.endpoint];
      const m1 = up.mark();
      const c = await open();
      c.write(request({ tag: "reset-streamed", chunks: [Buffer.alloc(80_000, "r")] }));
      expectIngressAnswer(await c.next(PROMPT_MS), 502, "replica_failed");
      expect(up.since(m1).requests.length).toBe(0);
      c.destroy();
    });
  });

  // -------------------------------------------------------------------------------------------------------
  describe("connection management", () => {
    it("a client that half-closes after its request: the whole response, or a clean abort (499)", async () => {
      // RFC 9112 leaves it open: a FIN may be a half-close (answer, then close) or the client leaving, as
      // node:http and nginx take it (docs/gateway.md, "Client close"). Either way nothing half-done.
      const base = echo("up-a");
      up.respond = (req, conn) => setTimeout(() => base(req, conn), 150);
      const mark = up.mark();
      const c = await open();
      c.write(request({ tag: "half-close", body: "payload" }));
      c.end();
      expect(await c.waitClosed(PROMPT_MS)).toBe(true);
      const { messages, rest } = c.parsed();
      expect(rest, "no partial answer").toBeNull();
      if (messages.length === 1) {
        note("half-close: answered in full");
        expect(echoOf(messages[0]).sha).toBe(sha256("payload"));
      } else {
        expect(c.data.length).toBe(0);
        // The upstream call was cancelled: if the request went out at all, its socket is dropped, never
        // returned to the pool (the replica answers 150 ms late, so a socket in use is still in use).
        await sleep(300);
        const seen = up.since(mark).requests.filter((r) => r.tag === "half-close");
        note(
          `half-close: taken as the client leaving (the request ${seen.length > 0 ? "still reached" : "never reached"} the replica)`,
        );
        for (const r of seen) expect(await closedWithin(r.conn, 2_000)).toBe(true);
      }
    });

    it("HTTP/1.0 without keep-alive: answered (never chunked), then closed", async () => {
      up.respond = (req, conn) => {
        const body = `{"tag":"${req.tag}"}`;
        conn.socket.write(
          `HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n${body.length.toString(16)}\r\n${body}\r\n0\r\n\r\n`,
        );
      };
      const mark = up.mark();
      const c = await open();
      c.write(request({ tag: "http10", version: "1.0", body: "ten" }));
      expect(await c.waitClosed(PROMPT_MS), "closed after the answer").toBe(true);
      const { messages, rest } = c.parsed();
      expect(rest).toBeNull();
      expect(messages.length).toBe(1);
      const r = messages[0]!;
      expect(r.startLine).toMatch(/^HTTP\/1\.[01] 200 /);
      expect(fieldValues(r.headers, "transfer-encoding"), "no chunked coding to a 1.0 client").toEqual([]);
      expect(r.body.toString()).toBe('{"tag":"http10"}');
      const seen = up.since(mark).requests.filter((q) => q.tag === "http10");
      expect(seen.length).toBe(1);
      expectCleanUpstreamRequest(seen[0]!, Buffer.from("ten"));
    });

    it("Expect: 100-continue with a bad key: 401, no 100, the body never reaches a replica", async () => {
      const mark = up.mark();
      const c = await open();
      c.write(
        `POST /predict HTTP/1.1\r\nHost: ${HOST}\r\nAuthorization: Api-Key k-wrong\r\nx-tag: expect-bad\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n`,
      );
      const r = await c.next(PROMPT_MS);
      expectIngressAnswer(r, 401, "unauthorized");
      c.write("hello");
      await sleep(100);
      expect(up.since(mark).bytes.length).toBe(0);
      c.destroy();
    });

    it("Expect: 100-continue over the body limit: 413, no 100, nothing upstream", async () => {
      const mark = up.mark();
      const c = await open();
      c.write(`${PRE}x-tag: expect-big\r\nExpect: 100-continue\r\nContent-Length: ${LIMIT + 1}\r\n\r\n`);
      const r = await c.next(PROMPT_MS);
      expectIngressAnswer(r, 413, "payload_too_large");
      expect(await c.waitClosed(PROMPT_MS)).toBe(true);
      expect(up.since(mark).bytes.length).toBe(0);
    });

    itBug("expect-417-proof")(
      "an unsupported Expect: 417 from the ingress (with its proof headers), nothing upstream",
      async () => {
        const mark = up.mark();
        const c = await open();
        c.write(`${PRE}x-tag: expect-odd\r\nExpect: something-else\r\nContent-Length: 5\r\n\r\nhello`);
        const r = await c.next(PROMPT_MS);
        expectIngressAnswer(r, 417);
        await sleep(50);
        expect(up.since(mark).bytes.length).toBe(0);
        c.destroy();
      },
    );

    it("Expect: 100-continue with a good key: 100 Continue, then the body, then 200", async () => {
      const mark = up.mark();
      const c = await open();
      c.write(
        `POST /predict HTTP/1.1\r\nHost: ${HOST}\r\n${AUTH}\r\nx-tag: expect-good\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n`,
      );
      const interim = await c.next(PROMPT_MS);
      expect(interim?.startLine).toMatch(/^HTTP\/1\.1 100 /);
      expect(up.since(mark).requests).toEqual([]);
      c.write("hello");
      const r = await c.next(PROMPT_MS);
      expect(echoOf(r).sha).toBe(sha256("hello"));
      const seen = up.since(mark).requests;
      expect(seen.length).toBe(1);
      expectCleanUpstreamRequest(seen[0]!, Buffer.from("hello"));
      c.destroy();
    });
  });

  // -------------------------------------------------------------------------------------------------------
  // The sending side of a plane-to-plane hop (rules.ts, HOP_CONTINUE_TIMEOUT): a second ingress, eu-1 with
  // no replica of its own, hands the request to its peer eu-2, a raw socket server here.
  describe("plane-to-plane hop: Expect: 100-continue", () => {
    const CONTINUE_MS = 400;
    let peer: net.Server;
    let peerConns: Array<{ socket: net.Socket; received: Buffer }> = [];
    let sender: Ingress;
    let senderPort = 0;
    /** What the peer does with a connection: nothing (frozen), or this. */
    let onPeerHead: ((socket: net.Socket, head: string) => void) | null = null;

    beforeAll(async () => {
      peer = net.createServer((socket) => {
        const conn = { socket, received: Buffer.alloc(0) };
        peerConns.push(conn);
        let answered = false;
        socket.on("data", (chunk: Buffer) => {
          conn.received = Buffer.concat([conn.received, chunk]);
          const end = conn.received.indexOf("\r\n\r\n");
          if (end >= 0 && !answered && onPeerHead !== null) {
            answered = true;
            onPeerHead(socket, conn.received.subarray(0, end + 4).toString("latin1"));
          }
        });
        socket.on("error", () => {});
      });
      await new Promise<void>((r) => peer.listen(0, "127.0.0.1", r));
      const peerAddress = `127.0.0.1:${(peer.address() as net.AddressInfo).port}`;
      const eu2 = { name: "eu-2", region: "eu", ingress: [peerAddress], global_ingress: false };
      const snapshot: PlaneSnapshot = {
        ...SNAPSHOT,
        planes: [...SNAPSHOT.planes, eu2],
        models: SNAPSHOT.models.map((m) => ({
          ...m,
          deployments: [{ id: "d-eu", region: "eu", ready_planes: ["eu-2"] }],
        })),
      };
      sender = createIngress({
        transport,
        plane: PLANE,
        listen: { host: "127.0.0.1", port: 0 },
        signingKey: generateSigningKey(),
        snapshot: () => snapshot,
        localReplicas: () => [],
        limits: { ...LIMITS, hopContinueTimeoutMs: CONTINUE_MS },
      });
      await sender.start();
      senderPort = sender.address!.port;
    });

    afterAll(async () => {
      await sender.stop();
      for (const c of peerConns) c.socket.destroy();
      await new Promise<void>((r) => peer.close(() => r()));
    });

    beforeEach(() => {
      onPeerHead = null;
      for (const c of peerConns) c.socket.destroy();
      peerConns = [];
    });

    const bodyAfterHead = (b: Buffer) => b.subarray(b.indexOf("\r\n\r\n") + 4);
    /** Polls `cond` every 10 ms, for at most PROMPT_MS (a loaded machine: no fixed sleeps). */
    const until = async (cond: () => boolean) => {
      const deadline = Date.now() + PROMPT_MS;
      while (!cond()) {
        if (Date.now() > deadline) throw new Error("condition not met in time");
        await sleep(10);
      }
    };
    const OK = 'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{"ok":true}';

    it("the head goes alone with expect: 100-continue; the body only after the peer's 100; its 200 relayed", async () => {
      const c = await RawClient.connect(senderPort);
      c.write(request({ tag: "hop-continue", body: "hello" }));
      const headIn = () => (peerConns[0]?.received.indexOf("\r\n\r\n") ?? -1) >= 0;
      await until(headIn);
      const conn = peerConns[0]!;
      const head = conn.received.toString("latin1");
      expect(head).toMatch(/\r\nexpect: 100-continue\r\n/i);
      expect(head).toMatch(/\r\ncontent-length: 5\r\n/i);
      expect(head).toMatch(/\r\nx-meridian-hop: v1;eu-1;eu-2;/);
      // Without the 100 the body stays with the sender (it went with the head before the change).
      await sleep(150);
      expect(bodyAfterHead(conn.received).length, "no body byte before the 100").toBe(0);
      conn.socket.write("HTTP/1.1 100 Continue\r\n\r\n");
      await until(() => bodyAfterHead(conn.received).length >= 5);
      expect(bodyAfterHead(conn.received).toString()).toBe("hello");
      conn.socket.write(OK);
      const r = await c.next(PROMPT_MS);
      expect(r?.status).toBe(200);
      expect(r?.body.toString()).toBe('{"ok":true}');
      c.destroy();
    });

    it("a chunked body waits for the 100 too, and goes whole after it", async () => {
      onPeerHead = (socket) => socket.write("HTTP/1.1 100 Continue\r\n\r\n");
      const c = await RawClient.connect(senderPort);
      c.write(request({ tag: "hop-chunked", chunks: ["ab", "cd"] }));
      await until(
        () =>
          peerConns[0] !== undefined &&
          parseMessage(peerConns[0].received, 0, { kind: "request", closed: false }).kind === "ok",
      );
      const conn = peerConns[0]!;
      expect(conn.received.toString("latin1")).toMatch(/\r\nexpect: 100-continue\r\n/i);
      // Framed afresh (Content-Length once the body was whole, chunked otherwise): either way all of it.
      const parsed = parseMessage(conn.received, 0, { kind: "request", closed: false });
      expect(parsed.kind).toBe("ok");
      if (parsed.kind === "ok") expect(parsed.message.body.toString()).toBe("abcd");
      conn.socket.write(OK);
      expect((await c.next(PROMPT_MS))?.status).toBe(200);
      c.destroy();
    });

    it("a peer that never answers the head (frozen): 503 model_unavailable within the bound, no body sent", async () => {
      const c = await RawClient.connect(senderPort);
      const started = Date.now();
      c.write(request({ tag: "hop-frozen", body: "secret" }));
      const r = await c.next(PROMPT_MS);
      const took = Date.now() - started;
      expectIngressAnswer(r, 503, "model_unavailable");
      expect(took).toBeGreaterThanOrEqual(CONTINUE_MS - 50);
      // The bound plus the upstream timer's tick, far below the hop's own timeout (predict + 1 s).
      expect(took).toBeLessThan(CONTINUE_MS + 1_000);
      const conn = peerConns[0]!;
      expect(conn.received.toString("latin1")).toMatch(/\r\nexpect: 100-continue\r\n/i);
      expect(bodyAfterHead(conn.received).length, "the body never left").toBe(0);
      // The half-sent request is dropped with its connection: a peer that wakes up finds it cut short.
      expect(
        await new Promise<boolean>((ok) => {
          if (conn.socket.readableEnded || conn.socket.destroyed) ok(true);
          conn.socket.once("end", () => ok(true));
          conn.socket.once("close", () => ok(true));
          setTimeout(() => ok(false), PROMPT_MS);
        }),
      ).toBe(true);
      c.destroy();
    });

    it("a final answer before the 100 (the peer refused the head): relayed, and the body is never sent", async () => {
      const refusal = JSON.stringify({ error: "x", error_code: "model_unavailable", detail: null });
      onPeerHead = (socket) =>
        socket.write(
          `HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: ${refusal.length}\r\n\r\n${refusal}`,
        );
      const c = await RawClient.connect(senderPort);
      c.write(request({ tag: "hop-refused", body: "never-sent" }));
      const r = await c.next(PROMPT_MS);
      expect(r?.status).toBe(503);
      expect(JSON.parse(r!.body.toString()).error_code).toBe("model_unavailable");
      await sleep(100);
      expect(bodyAfterHead(peerConns[0]!.received).length).toBe(0);
      c.destroy();
    });
  });
});
