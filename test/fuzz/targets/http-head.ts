// Targets `http-wire` and `http-node`: the plane's ingress on each transport (the `wire` transport on
// node:net + llhttp, and the node:http fallback), a process of its own, driven over raw sockets. A case is
// one connection: one to three pipelined requests built from arbitrary request lines, header fields (Host
// values of every shape, Content-Length and Transfer-Encoding variants, obs-fold, bad names, Expect,
// Upgrade), bodies with Content-Length or chunked framing (extensions, trailers, bad sizes), then maybe
// mutated byte by byte, truncated, and written in pieces. Rules: within a bound every connection gets
// well-formed HTTP/1.1 answers (checked by the framing suite's strict parser) or a clean close; a request
// sent whole and well formed gets at least one answer; every error answer carries the JSON body with an
// `error_code`; nothing answers 500; the ingress never exits.

import { writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { parseAll } from "../../../src/gateway/framing-peers.ts";
import { DOMAIN, INGRESS_KEY, MODEL, OTHER_MODEL } from "../fixtures.ts";
import { bump, type FuzzTarget, mutate, mutation, sleep } from "../lib.ts";
import { hostValue } from "./host.ts";

const HOSTS = [
  `model-${MODEL}-prod-eu.${DOMAIN}`,
  `model-${MODEL}.${DOMAIN}`,
  `model-${OTHER_MODEL}.${DOMAIN}`,
  `model-${MODEL}-staging.${DOMAIN}`,
  `model-${MODEL}-prod-eu.${DOMAIN}:80`,
  `MODEL-${MODEL}.${DOMAIN.toUpperCase()}.`,
];
const PATHS = [
  "/predict",
  "/environments/production/predict",
  "/environments/staging/predict",
  "/development/predict",
  "/production/predict",
  "/deployment/d-eu/predict",
  "/wake",
  "/async_predict",
  "/v1/chat/completions",
  "/sync/v1/x",
  "/websocket",
  "/",
  "*",
  `http://model-${MODEL}.${DOMAIN}/predict`,
  "//predict",
  "/predict?x=1&y",
  "/%2e%2e/predict",
  "/predict#frag",
  "/environments/production/predict/../x",
];
const METHODS = [
  "POST",
  "POST",
  "POST",
  "GET",
  "PUT",
  "DELETE",
  "OPTIONS",
  "PATCH",
  "post",
  "TRACE",
  "CONNECT",
  "PRI",
  "M-SEARCH",
  "G\x00T",
  "HEAD",
];
const VERSIONS = [
  "HTTP/1.1",
  "HTTP/1.1",
  "HTTP/1.1",
  "HTTP/1.0",
  "HTTP/2.0",
  "HTTP/1.2",
  "http/1.1",
  "HTTP/1.1 ",
  "HTTP/1",
  "",
];

type Framing = "length" | "chunked" | "none" | "both" | "bad-length";

const BENIGN = [
  "content-type: application/json",
  "x-request-id: fuzz",
  "connection: close",
  "connection: keep-alive",
  "te: trailers",
  "expect: 100-continue",
  "x-forwarded-for: 1.2.3.4",
  "cookie: a=b",
  "accept: */*",
  "x-empty:",
  "user-agent: fuzz/1",
  "x-meridian-plane: spoofed",
  "content-encoding: gzip",
  "range: bytes=0-1",
];
const TRICKY = [
  "connection: upgrade",
  "upgrade: websocket",
  "upgrade: h2c",
  "expect: nothing",
  "transfer-encoding: chunked",
  "transfer-encoding: gzip, chunked",
  "transfer-encoding: chunked, gzip",
  "transfer-encoding:  chunked",
  "transfer-encoding: xchunked",
  "transfer-encoding: identity",
  "content-length: 0",
  "content-length: +5",
  "content-length: 1,1",
  "content-length: -1",
  "content-length: 99999999999999999999",
  " folded: value",
  "\tx-fold: y",
  "bad header: x",
  "x-nul: a\x00b",
  "x-cr: a\rb",
  "no-colon",
  ":empty-name",
  "host: second.example",
  "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==",
  "sec-websocket-version: 13",
  "authorization: Basic eDp5",
  "authorization: Api-Key",
  "x-meridian-hop: v1 eu-2 0 abc",
];
const header: fc.Arbitrary<string> = fc.oneof(
  { weight: 8, arbitrary: fc.constantFrom(...BENIGN) },
  { weight: 3, arbitrary: fc.constantFrom(...TRICKY) },
  {
    weight: 1,
    arbitrary: fc
      .tuple(
        fc.stringMatching(/^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,20}$/),
        fc.string({ unit: "binary-ascii", maxLength: 40 }),
      )
      .map(([n, v]) => `${n}: ${v}`),
  },
  { weight: 1, arbitrary: fc.integer({ min: 100, max: 9000 }).map((n) => `x-long: ${"v".repeat(n)}`) },
);

const chunk = fc.record({
  data: fc.uint8Array({ maxLength: 64 }),
  ext: fc.constantFrom("", "", ";a=b", ";a", ";=", ';a="q"', " ", "\t;x"),
  size: fc.constantFrom("hex", "hex", "hex", "hex", "hex", "hex", "upper", "lead0", "bad", "huge", "neg"),
});

const request = fc.record({
  method: fc.oneof(
    { weight: 6, arbitrary: fc.constant("POST") },
    { weight: 4, arbitrary: fc.constantFrom(...METHODS) },
    { weight: 1, arbitrary: fc.stringMatching(/^[A-Z!#$%&'*+.^_`|~-]{1,12}$/) },
  ),
  path: fc.oneof(
    { weight: 10, arbitrary: fc.constantFrom(...PATHS) },
    { weight: 2, arbitrary: fc.string({ unit: "binary-ascii", maxLength: 60 }).map((s) => `/${s}`) },
    { weight: 1, arbitrary: fc.integer({ min: 1000, max: 10_000 }).map((n) => `/${"p".repeat(n)}`) },
  ),
  version: fc.oneof(
    { weight: 8, arbitrary: fc.constant("HTTP/1.1") },
    { weight: 2, arbitrary: fc.constantFrom(...VERSIONS) },
  ),
  host: fc.oneof(
    { weight: 8, arbitrary: fc.constantFrom(...HOSTS) },
    { weight: 2, arbitrary: hostValue },
    { weight: 1, arbitrary: fc.constant(null) },
  ),
  auth: fc.constantFrom(
    `Api-Key ${INGRESS_KEY}`,
    `Api-Key ${INGRESS_KEY}`,
    `Bearer ${INGRESS_KEY}`,
    "Api-Key wrong",
    null,
    "Api-Key k-scoped",
  ),
  headers: fc.oneof(fc.constant([]), fc.array(header, { maxLength: 3 })),
  many: fc.oneof(
    { weight: 19, arbitrary: fc.constant(undefined) },
    { weight: 1, arbitrary: fc.integer({ min: 50, max: 300 }) },
  ),
  body: fc.oneof(
    fc.constant(""),
    fc.constant('{"prompt":"hi"}'),
    fc.uint8Array({ maxLength: 300 }).map((u) => Buffer.from(u).toString("latin1")),
  ),
  framing: fc.constantFrom<Framing>(
    "length",
    "length",
    "length",
    "length",
    "chunked",
    "chunked",
    "chunked",
    "none",
    "both",
    "bad-length",
  ),
  chunks: fc.array(chunk, { maxLength: 4 }),
  last: fc.constantFrom(
    "0\r\n\r\n",
    "0\r\n\r\n",
    "0\r\n\r\n",
    "0\r\n\r\n",
    "0\r\nx-trailer: t\r\n\r\n",
    "0;e=1\r\n\r\n",
    "0\r\n",
    "",
    "00000\r\n\r\n",
  ),
});
type Request = typeof request extends fc.Arbitrary<infer T> ? T : never;

/** A request with no trick in its head, so cases reach routing, the replica and body relaying. */
const ROUTES: Array<[string, string]> = [
  [`model-${MODEL}-prod-eu.${DOMAIN}`, "/predict"],
  [`model-${MODEL}-prod-eu.${DOMAIN}:80`, "/predict"],
  [`model-${MODEL}.${DOMAIN}`, "/environments/production/predict"],
  [`model-${MODEL}.${DOMAIN}`, "/development/predict"],
  [`model-${MODEL}.${DOMAIN}`, "/production/predict"],
  [`model-${MODEL}.${DOMAIN}`, "/deployment/d-std/predict"],
  [`model-${OTHER_MODEL}.${DOMAIN}`, "/production/predict"],
  [`model-${MODEL}.${DOMAIN}`, "/environments/prod-eu/predict"],
];
const clean: fc.Arbitrary<Request> = fc
  .record({
    method: fc.constantFrom("POST", "POST", "POST", "GET", "PUT"),
    route: fc.oneof(
      { weight: 3, arbitrary: fc.constantFrom(...ROUTES) },
      { weight: 1, arbitrary: fc.tuple(fc.constantFrom(...HOSTS), fc.constantFrom(...PATHS.slice(0, 9))) },
    ),
    version: fc.constant("HTTP/1.1"),
    auth: fc.constantFrom(`Api-Key ${INGRESS_KEY}`, `Bearer ${INGRESS_KEY}`, "Api-Key k-scoped", null),
    headers: fc.array(fc.constantFrom(...BENIGN), { maxLength: 2 }),
    many: fc.constant(undefined),
    body: fc.oneof(
      fc.constant('{"prompt":"hi"}'),
      fc.uint8Array({ maxLength: 2000 }).map((u) => Buffer.from(u).toString("latin1")),
    ),
    framing: fc.constantFrom<Framing>("length", "length", "chunked"),
    chunks: fc.array(
      chunk.map((c) => ({ ...c, size: "hex" as const })),
      { maxLength: 5 },
    ),
    last: fc.constantFrom("0\r\n\r\n", "0\r\nx-trailer: t\r\n\r\n"),
  })
  .map(({ route, ...r }) => ({ ...r, host: route[0], path: route[1] }));

const WELL_FORMED_METHODS = new Set(["POST", "GET", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE"]);
/** Whether the request is plainly valid HTTP/1.1 that a server must answer (no trick in it). */
function wellFormed(r: Request): boolean {
  return (
    WELL_FORMED_METHODS.has(r.method) &&
    (r.version === "HTTP/1.1" || r.version === "HTTP/1.0") &&
    PATHS.slice(0, 12).includes(r.path) &&
    r.host !== null &&
    HOSTS.includes(r.host) &&
    r.headers.length === 0 &&
    r.many === undefined &&
    (r.framing === "length" || (r.framing === "none" && r.body === "")) &&
    r.version === "HTTP/1.1"
  );
}

function encode(r: Request): string {
  const lines = [`${r.method} ${r.path}${r.version === "" ? "" : ` ${r.version}`}`];
  if (r.host !== null) lines.push(`Host: ${r.host}`);
  if (r.auth !== null) lines.push(`Authorization: ${r.auth}`);
  lines.push(...r.headers);
  if (r.many !== undefined) for (let i = 0; i < r.many; i++) lines.push(`x-many-${i}: ${i}`);
  const body = Buffer.from(r.body, "latin1");
  let payload = "";
  if (r.framing === "length" || r.framing === "both") lines.push(`Content-Length: ${body.length}`);
  if (r.framing === "bad-length") lines.push(`Content-Length: ${body.length + 7}`);
  if (r.framing === "chunked" || r.framing === "both") {
    lines.push("Transfer-Encoding: chunked");
    for (const c of r.chunks) {
      const n = c.data.length;
      const size =
        c.size === "hex"
          ? n.toString(16)
          : c.size === "upper"
            ? n.toString(16).toUpperCase()
            : c.size === "lead0"
              ? `000${n.toString(16)}`
              : c.size === "bad"
                ? "zz"
                : c.size === "huge"
                  ? "fffffffffffffffff"
                  : `-${n}`;
      payload += `${size}${c.ext}\r\n${Buffer.from(c.data).toString("latin1")}\r\n`;
    }
    payload += r.last;
  } else if (r.framing !== "none") payload = body.toString("latin1");
  // No framing means no body (RFC 9112 §6.3): body bytes would be the next request; sent only when mutated.
  return `${lines.join("\r\n")}\r\n\r\n${payload}`;
}

const caseArb = fc.record({
  requests: fc.array(fc.oneof(clean, request), { minLength: 1, maxLength: 3 }),
  mutations: fc.oneof(
    { weight: 3, arbitrary: fc.constant([]) },
    { weight: 1, arbitrary: fc.array(mutation, { minLength: 1, maxLength: 3 }) },
  ),
  pieces: fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 2 }),
  pauseMs: fc.constantFrom(0, 0, 5, 30),
  // A FIN after the request: the ingress takes it for the client going away (as nginx does without
  // proxy_ignore_client_abort) and may close without an answer; it must still close promptly.
  halfClose: fc.oneof(
    { weight: 3, arbitrary: fc.constant(false) },
    { weight: 1, arbitrary: fc.constant(true) },
  ),
});
type Case = typeof caseArb extends fc.Arbitrary<infer T> ? T : never;

/**
 * How long a connection may stay open with nothing owed answered: well above the ingress's 2.5 s request
 * and 1.5 s keep-alive timeouts, and the 10 s at which the fault harness counts a call as hung (a loaded
 * 2-core machine stretches timers).
 */
const BOUND_MS = 10_000;
const QUIET_MS = 40;

async function runCase(port: number, c: Case, tally: Map<string, number>): Promise<void> {
  const raw = Buffer.from(c.requests.map(encode).join(""), "latin1");
  const bytes = c.mutations.length === 0 ? raw : mutate(raw, c.mutations);
  const mustAnswer = c.mutations.length === 0 && !c.halfClose && wellFormed(c.requests[0]!);
  const head = bytes.includes("HEAD ");
  const socket = net.connect({ port, host: "127.0.0.1" });
  let data = Buffer.alloc(0);
  let closed = false;
  socket.on("data", (d) => {
    data = Buffer.concat([data, d]);
  });
  socket.on("close", () => {
    closed = true;
  });
  socket.on("error", (err: NodeJS.ErrnoException) => bump(tally, `client ${err.code ?? "error"}`));
  await new Promise<void>((r, f) => {
    socket.once("connect", r);
    socket.once("error", f);
  });
  const cuts = [...new Set(c.pieces.map((p) => Math.floor(p * bytes.length)))].sort((a, b) => a - b);
  let from = 0;
  for (const cut of [...cuts, bytes.length]) {
    if (!socket.writable) break;
    socket.write(bytes.subarray(from, cut));
    from = cut;
    if (c.pauseMs > 0 && cut < bytes.length) await sleep(c.pauseMs);
  }
  if (c.halfClose && socket.writable) socket.end();
  let finals = 0;
  await new Promise<void>((resolve, reject) => {
    let quiet: NodeJS.Timeout | undefined;
    const done = () => {
      clearTimeout(bound);
      clearTimeout(quiet);
      resolve();
    };
    const bound = setTimeout(() => {
      clearTimeout(quiet);
      socket.destroy();
      reject(
        new Error(
          `hang: ${finals} answers and the connection still open after ${BOUND_MS} ms (half-close ${c.halfClose})`,
        ),
      );
    }, BOUND_MS);
    const evaluate = () => {
      if (closed) return done();
      if (!head)
        finals = parseAll(data, { kind: "response", closed: false }).messages.filter(
          (m) => m.status >= 200,
        ).length;
      else finals = data.includes("\r\n\r\n") ? 1 : 0;
      // Kept open: once every request has its answer and nothing more comes, the case is done.
      if (!c.halfClose && finals >= c.requests.length) {
        clearTimeout(quiet);
        quiet = setTimeout(done, QUIET_MS);
      }
    };
    socket.on("data", evaluate);
    socket.on("close", evaluate);
    evaluate();
  });
  socket.destroy();
  if (head) {
    if (data.length > 0 && !/^HTTP\/1\.[01] [1-5][0-9]{2} /.test(data.toString("latin1")))
      throw new Error("answer to HEAD is not HTTP");
    bump(tally, "HEAD");
    return;
  }
  // The whole exchange of a failing case is kept in a file: a failure that depends on timing may not replay.
  const failed = (what: string) => {
    const saved = join(tmpdir(), `meridian-fuzz-http-${process.pid}-${Date.now()}.json`);
    writeFileSync(
      saved,
      JSON.stringify({ sent: bytes.toString("latin1"), received: data.toString("latin1"), case: c }, null, 1),
    );
    return new Error(`${what} (exchange saved in ${saved})`);
  };
  const { messages, rest } = parseAll(data, { kind: "response", closed: true });
  if (rest !== null) {
    // What came after the complete answers is the part worth reading.
    const after = messages.at(-1)?.end ?? 0;
    throw failed(
      `malformed answer (${rest.kind === "error" ? rest.error : "incomplete"}) after ${messages.length} complete (${messages.map((m) => m.status).join(",")}), ${data.length - after} of ${data.length} bytes: ${JSON.stringify(data.subarray(after).toString("latin1").slice(0, 600))}`,
    );
  }
  if (mustAnswer && messages.filter((m) => m.status >= 200).length === 0)
    throw failed(`a well-formed request got no answer (${data.length} bytes received)`);
  if (messages.length === 0) bump(tally, "closed without an answer");
  for (const m of messages) {
    bump(tally, String(m.status));
    if (m.status === 500) throw failed(`500: ${m.body.toString().slice(0, 300)}`);
    if (m.status >= 400) {
      let code: unknown;
      try {
        code = (JSON.parse(m.body.toString("utf8")) as { error_code?: unknown }).error_code;
      } catch {
        code = undefined;
      }
      if (typeof code !== "string")
        throw failed(
          `${m.status} without a JSON error_code: ${JSON.stringify(m.rawHead + m.body.toString("latin1").slice(0, 200))}`,
        );
      bump(tally, `${m.status} ${code}`);
    }
  }
}

function ingressTarget(name: string, server: "ingress-wire" | "ingress-http"): FuzzTarget<Case> {
  return {
    name,
    server,
    lanes: 48,
    batchCases: 250,
    async open(s) {
      const port = s!.info["port"] as number;
      const tally = new Map<string, number>();
      return { tally, arbitrary: caseArb, check: (c) => runCase(port, c, tally), async close() {} };
    },
  };
}

export const httpWireTarget = ingressTarget("http-wire", "ingress-wire");
export const httpNodeTarget = ingressTarget("http-node", "ingress-http");
