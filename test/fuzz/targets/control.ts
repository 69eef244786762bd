// Targets `api`, `graphql` and `s3`: a real control plane (a process of its own, on a SQLite file) over
// real HTTP on loopback with undici keep-alive connections, never fastify's inject.
// - `api`: every operation of the management API's OpenAPI document (GET /v1/spec), with path, query and
//   body values generated from the document's own schemas, valid and then broken (a required field dropped,
//   a type swapped, an unknown field, a huge value, text that is not JSON, another content type), as the
//   org admin, as nobody and with a bad key. Rule: a 2xx, or a JSON error body with a string `error_code`;
//   never a 5xx.
// - `graphql`: the truss CLI's own documents (test/support/truss-cli.ts) mutated character by character,
//   with arbitrary variables and operation names, plus bodies that are not GraphQL over HTTP. Rule: never a
//   5xx; the answer is JSON; no error is `internal_error`.
// - `s3`: the upload endpoint with credentials from prepare_model_upload: PutObject, the multipart calls
//   and anything else, with arbitrary queries, checksum and content headers, aws-chunked framing and
//   CompleteMultipartUpload XML, signed correctly with SigV4 (so the parsers behind the signature are
//   reached) or not. Rule: never a 5xx; every refusal S3's XML <Error> with a <Code>, or Meridian's JSON.

import { randomBytes } from "node:crypto";
import fc from "fast-check";
import { Pool } from "undici";
import {
  ALGORITHM,
  canonicalRequest,
  formatAmzDate,
  sign,
  signingKey,
  stringToSign,
} from "../../../src/control/s3/sigv4.ts";
import {
  createModelMutation,
  encodeConfig,
  HELLO_PY_CONFIG,
  modelByIdQuery,
  modelsQuery,
  ORGANIZATION_QUERY,
  TEAMS_QUERY,
  UPLOAD_CREDENTIALS_QUERY,
  validateTrussQuery,
  WHOAMI_QUERY,
} from "../../support/truss-cli.ts";
import { bump, type FuzzTarget, mutate, mutation, within } from "../lib.ts";

type Schema = Record<string, unknown>;

// ---------------------------------------------------------------------------------------------------------
// JSON Schema → fast-check, for the subset the route schemas use

const weird = fc.constantFrom(
  "",
  " ",
  "__proto__",
  "constructor",
  "a".repeat(300),
  "x".repeat(70_000),
  "../..",
  "%00",
  "\u0000",
  "\ud800",
  "😀",
  "production",
  "development",
  "prod-eu",
  "eu",
  "ACTIVE",
  "-1",
  "1e309",
  "null",
  "true",
  "{}",
  "[]",
);
const anyJson = fc.oneof(fc.jsonValue({ maxDepth: 3 }), weird, fc.constant(null), fc.integer(), fc.double());

function arbitraryOf(schema: unknown, components: Record<string, Schema>, depth = 0): fc.Arbitrary<unknown> {
  if (typeof schema !== "object" || schema === null || depth > 6) return anyJson;
  const s = schema as Schema;
  if (typeof s["$ref"] === "string") {
    const name = (s["$ref"] as string).split("/").pop()!;
    return arbitraryOf(components[name], components, depth + 1);
  }
  if ("const" in s) return fc.constant(s["const"]);
  if (Array.isArray(s["enum"])) return fc.constantFrom(...(s["enum"] as unknown[]));
  for (const k of ["anyOf", "oneOf"]) {
    if (Array.isArray(s[k]))
      return fc.oneof(...(s[k] as unknown[]).map((x) => arbitraryOf(x, components, depth + 1)));
  }
  if (Array.isArray(s["allOf"]))
    return arbitraryOf(Object.assign({}, ...(s["allOf"] as Schema[])), components, depth + 1);
  let type = s["type"];
  if (Array.isArray(type))
    return fc.oneof(...type.map((t) => arbitraryOf({ ...s, type: t }, components, depth + 1)));
  if (type === undefined) type = s["properties"] ? "object" : undefined;
  const nullable =
    s["nullable"] === true
      ? (a: fc.Arbitrary<unknown>) => fc.option(a, { nil: null, freq: 4 })
      : (a: fc.Arbitrary<unknown>) => a;
  switch (type) {
    case "string": {
      const min = (s["minLength"] as number | undefined) ?? 0;
      const max = Math.min((s["maxLength"] as number | undefined) ?? 40, 200);
      let a: fc.Arbitrary<string> = fc.string({ minLength: min, maxLength: Math.max(min, max) });
      if (typeof s["pattern"] === "string") {
        try {
          a = fc
            .stringMatching(new RegExp(s["pattern"] as string))
            .filter((x) => x.length <= Math.max(max, 64));
        } catch {}
      }
      if (s["format"] === "date-time") a = fc.date({ noInvalidDate: true }).map((d) => d.toISOString());
      return nullable(a);
    }
    case "integer":
      return nullable(
        fc.integer({
          min: (s["minimum"] as number | undefined) ?? -5,
          max: (s["maximum"] as number | undefined) ?? 1000,
        }),
      );
    case "number":
      return nullable(
        fc.double({
          min: (s["minimum"] as number | undefined) ?? -5,
          max: (s["maximum"] as number | undefined) ?? 1000,
          noNaN: true,
        }),
      );
    case "boolean":
      return nullable(fc.boolean());
    case "null":
      return fc.constant(null);
    case "array":
      return nullable(
        fc.array(arbitraryOf(s["items"], components, depth + 1), {
          minLength: (s["minItems"] as number | undefined) ?? 0,
          maxLength: Math.min((s["maxItems"] as number | undefined) ?? 4, 6),
        }),
      );
    case "object": {
      const props = (s["properties"] as Record<string, unknown> | undefined) ?? {};
      const required = new Set((s["required"] as string[] | undefined) ?? []);
      const model: Record<string, fc.Arbitrary<unknown>> = {};
      for (const [k, v] of Object.entries(props)) model[k] = arbitraryOf(v, components, depth + 1);
      return nullable(fc.record(model, { requiredKeys: [...required].filter((k) => k in props) }));
    }
    default:
      return anyJson;
  }
}

type Break =
  | "none"
  | "drop-field"
  | "swap-type"
  | "extra-field"
  | "not-json"
  | "text-mutation"
  | "wrong-content-type"
  | "no-body"
  | "deep"
  | "array-root";
const breakArb = fc.constantFrom<Break>(
  "none",
  "none",
  "none",
  "drop-field",
  "swap-type",
  "extra-field",
  "not-json",
  "text-mutation",
  "wrong-content-type",
  "no-body",
  "deep",
  "array-root",
);

function breakBody(
  value: unknown,
  how: Break,
  pick: number,
  junk: unknown,
): { body: string | undefined; contentType: string | undefined } {
  const json = "application/json";
  const obj =
    typeof value === "object" && value !== null && !Array.isArray(value)
      ? { ...(value as Record<string, unknown>) }
      : null;
  const keys = obj ? Object.keys(obj) : [];
  const key = keys[Math.floor(pick * keys.length)];
  switch (how) {
    case "none":
      return { body: JSON.stringify(value), contentType: json };
    case "drop-field":
      if (obj && key) delete obj[key];
      return { body: JSON.stringify(obj ?? value), contentType: json };
    case "swap-type":
      if (obj && key) obj[key] = junk;
      return { body: JSON.stringify(obj ?? junk), contentType: json };
    case "extra-field":
      return {
        body: JSON.stringify({ ...(obj ?? {}), [`x${Math.floor(pick * 100)}`]: junk }),
        contentType: json,
      };
    case "not-json":
      // JSON.stringify, not String(): junk may be an object whose own `toString` is not a function.
      return { body: `{"a": ${(JSON.stringify(junk) ?? "undefined").slice(0, 50)}`, contentType: json };
    case "text-mutation":
      return { body: JSON.stringify(value)?.slice(0, Math.floor(pick * 200)) ?? "", contentType: json };
    case "wrong-content-type":
      return {
        body: JSON.stringify(value),
        contentType: pick < 0.5 ? "text/plain" : "application/x-www-form-urlencoded",
      };
    case "no-body":
      return { body: undefined, contentType: pick < 0.5 ? json : undefined };
    case "deep":
      return { body: `${"[".repeat(5000)}${"]".repeat(5000)}`, contentType: json };
    case "array-root":
      return { body: JSON.stringify([value]), contentType: json };
  }
}

interface Operation {
  method: string;
  path: string;
  pathParams: string[];
  query: Array<{ name: string; schema: unknown }>;
  body: unknown | null;
}

function operationsOf(spec: { paths: Record<string, Record<string, Schema>> }): Operation[] {
  const out: Operation[] = [];
  for (const [path, methods] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(methods)) {
      if (!["get", "post", "put", "patch", "delete"].includes(method)) continue;
      const params =
        (op["parameters"] as Array<{ name: string; in: string; schema: unknown }> | undefined) ?? [];
      const content =
        ((op["requestBody"] as Schema | undefined)?.["content"] as
          | Record<string, { schema: unknown }>
          | undefined) ?? {};
      out.push({
        method: method.toUpperCase(),
        path,
        pathParams: params.filter((p) => p.in === "path").map((p) => p.name),
        query: params.filter((p) => p.in === "query").map((p) => ({ name: p.name, schema: p.schema })),
        body: content["application/json"]?.schema ?? null,
      });
    }
  }
  return out;
}

/** Ids seen in answers: path parameters are drawn from them so cases reach existing objects too. */
class IdPool {
  readonly values: string[] = ["production", "development", "staging", "eu", "us"];
  constructor(private readonly forbidden: (v: string) => boolean) {}
  learn(body: unknown, depth = 0): void {
    if (depth > 4 || this.values.length > 400) return;
    if (Array.isArray(body)) for (const x of body.slice(0, 20)) this.learn(x, depth + 1);
    else if (typeof body === "object" && body !== null) {
      for (const [k, v] of Object.entries(body)) {
        if (
          typeof v === "string" &&
          (k === "id" || k.endsWith("_id") || k === "name" || k === "prefix" || k === "slug") &&
          v.length < 80 &&
          !this.forbidden(v) &&
          !this.values.includes(v)
        ) {
          this.values.push(v);
        } else this.learn(v, depth + 1);
      }
    }
  }
  pick(f: number): string {
    return this.values[Math.floor(f * this.values.length)] ?? "x";
  }
}

const pathValue = fc.oneof(
  { weight: 6, arbitrary: fc.nat(1_000_000).map((n) => ({ pool: (n % 991) / 991 })) },
  { weight: 2, arbitrary: fc.string({ maxLength: 20 }).map((s) => ({ raw: encodeURIComponent(s) })) },
  {
    weight: 1,
    arbitrary: fc
      .constantFrom("%", "%zz", "..", "%2F", "a%00b", "%E2%82", "x".repeat(2000), "")
      .map((s) => ({ raw: s })),
  },
);

const apiCase = fc.record({
  // An index spread evenly over the operations (a double in [0, 1) leans to its ends).
  op: fc.nat(1_000_000).map((n) => (n % 997) / 997),
  params: fc.array(pathValue, { minLength: 4, maxLength: 4 }),
  seed: fc.integer(),
  queryJunk: fc.oneof(
    fc.constant(""),
    fc.constant(""),
    fc.string({ maxLength: 30 }).map((s) => `&${encodeURIComponent(s)}=${encodeURIComponent(s)}`),
    fc.constant("&limit=-1&cursor=%zz"),
  ),
  breaks: breakArb,
  pick: fc.double({ min: 0, max: 1, noNaN: true }),
  junk: anyJson,
  auth: fc.constantFrom("admin", "admin", "admin", "admin", "admin", "none", "bad", "bearer"),
});
type ApiCase = typeof apiCase extends fc.Arbitrary<infer T> ? T : never;

async function send(
  pool: Pool,
  o: { method: string; path: string; headers: Record<string, string>; body?: string | Buffer },
) {
  const res = await pool.request({
    method: o.method as "GET",
    path: o.path,
    headers: o.headers,
    body: o.body ?? null,
    headersTimeout: 15_000,
    bodyTimeout: 15_000,
  });
  const body = Buffer.from(await res.body.arrayBuffer());
  return { status: res.statusCode, headers: res.headers, body };
}

function jsonOf(b: Buffer): unknown {
  try {
    return JSON.parse(b.toString("utf8"));
  } catch {
    return undefined;
  }
}

function expectTyped(status: number, body: Buffer, what: string, tally: Map<string, number>): void {
  if (status >= 500) throw new Error(`${what} answered ${status}: ${body.toString("utf8").slice(0, 400)}`);
  if (status < 300) return;
  const j = jsonOf(body) as { error_code?: unknown } | undefined;
  if (typeof j?.error_code !== "string")
    throw new Error(
      `${what} answered ${status} without a JSON error_code: ${body.toString("utf8").slice(0, 300)}`,
    );
  bump(tally, `${status} ${j.error_code}`);
}

const control = (name: string, lanes: number, open: FuzzTarget["open"]): FuzzTarget<never> =>
  ({ name, server: "control", lanes, batchCases: 500, open }) as FuzzTarget<never>;

export const apiTarget = control("api", 16, async (server) => {
  const url = server!.info["url"] as string;
  const adminKey = server!.info["adminKey"] as string;
  const pool = new Pool(url, { connections: 16, pipelining: 1 });
  const spec = JSON.parse(
    (await send(pool, { method: "GET", path: "/v1/spec", headers: {} })).body.toString(),
  ) as {
    paths: Record<string, Record<string, Schema>>;
    components?: { schemas?: Record<string, Schema> };
  };
  const components = spec.components?.schemas ?? {};
  const ops = operationsOf(spec);
  const bodies = ops.map((o) => (o.body === null ? fc.constant(undefined) : arbitraryOf(o.body, components)));
  const queries = ops.map((o) =>
    fc.record(Object.fromEntries(o.query.map((q) => [q.name, arbitraryOf(q.schema, components)])), {
      requiredKeys: [],
    }),
  );
  const ids = new IdPool((v) => adminKey.startsWith(v));
  const tally = new Map<string, number>();
  // Learn the ids of what exists before the first case.
  for (const o of ops.filter((x) => x.method === "GET" && x.pathParams.length === 0)) {
    ids.learn(
      jsonOf(
        (await send(pool, { method: "GET", path: o.path, headers: { authorization: `Api-Key ${adminKey}` } }))
          .body,
      ),
    );
  }
  return {
    tally,
    arbitrary: apiCase as fc.Arbitrary<never>,
    async check(c: ApiCase) {
      const i = Math.floor(c.op * ops.length);
      const op = ops[i]!;
      let p = 0;
      const path = op.path.replace(/\{[^}]+\}/g, () => {
        const v = c.params[p++ % c.params.length]!;
        return "pool" in v ? encodeURIComponent(ids.pick(v.pool)) : v.raw;
      });
      const [bodyValue] = fc.sample(bodies[i]!, { numRuns: 1, seed: c.seed });
      const [queryValue] = fc.sample(queries[i]!, { numRuns: 1, seed: c.seed ^ 0x5bd1 });
      const qs =
        Object.entries(queryValue as Record<string, unknown>)
          .map(
            ([k, v]) =>
              `${encodeURIComponent(k)}=${encodeURIComponent(typeof v === "string" ? v : JSON.stringify(v))}`,
          )
          .join("&") + c.queryJunk;
      const { body, contentType } =
        op.body === null && c.breaks === "none"
          ? { body: undefined, contentType: undefined }
          : breakBody(bodyValue, c.breaks, c.pick, c.junk);
      const headers: Record<string, string> = {};
      if (contentType !== undefined && body !== undefined) headers["content-type"] = contentType;
      if (c.auth === "admin") headers["authorization"] = `Api-Key ${adminKey}`;
      if (c.auth === "bearer") headers["authorization"] = `Bearer ${adminKey}`;
      if (c.auth === "bad") headers["authorization"] = "Api-Key nope.nope";
      const method = body !== undefined && op.method === "GET" ? "POST" : op.method;
      const res = await within(
        20_000,
        `${method} ${path}`,
        send(pool, {
          method,
          path: qs ? `${path}?${qs}` : path,
          headers,
          ...(body !== undefined ? { body } : {}),
        }),
      );
      bump(tally, `${op.method} ${op.path} ${res.status < 300 ? "2xx" : "refused"}`);
      expectTyped(res.status, res.body, `${method} ${path}`, tally);
      if (res.status < 300) ids.learn(jsonOf(res.body));
    },
    async close() {
      await pool.close();
    },
  };
});

// ---------------------------------------------------------------------------------------------------------

const DOCUMENTS = [
  TEAMS_QUERY,
  modelsQuery(null),
  modelsQuery("t1"),
  validateTrussQuery(encodeConfig(HELLO_PY_CONFIG)),
  UPLOAD_CREDENTIALS_QUERY,
  modelByIdQuery("aaaaaaa1"),
  WHOAMI_QUERY,
  ORGANIZATION_QUERY,
  createModelMutation({
    name: "fuzz",
    s3_key: "models/none",
    config: encodeConfig(HELLO_PY_CONFIG),
    environment: "production",
  } as never),
  "{ __schema { types { name } } }",
  "query { teams { id ...F } } fragment F on Team { name ...F }",
  `query { ${"a: teams { id } ".repeat(50)} }`,
  `query { teams ${"{ id ".repeat(40)}${"}".repeat(40)} }`,
  "subscription { x }",
  "mutation { x }",
  "query ($a: String!) { model(id: $a) { id } }",
];

const graphqlCase = fc.record({
  document: fc.oneof(fc.constantFrom(...DOCUMENTS), fc.string({ maxLength: 200 })),
  edits: fc.array(
    fc.tuple(
      fc.double({ min: 0, max: 1, noNaN: true }),
      fc.constantFrom(
        "{",
        "}",
        "(",
        ")",
        "$",
        "@",
        "...",
        ":",
        "!",
        '"',
        "#",
        " ",
        "\\u",
        "query",
        "fragment",
        "__typename",
        "",
        "[",
        "]",
        "1e999",
      ),
      fc.integer({ min: 0, max: 6 }),
    ),
    { maxLength: 4 },
  ),
  variables: fc.oneof(
    fc.constant(undefined),
    fc.constant(null),
    fc.dictionary(fc.constantFrom("a", "id", "name", "config", "s3_key", "semver", "env"), anyJson, {
      maxKeys: 3,
    }),
    anyJson,
  ),
  operationName: fc.oneof(
    fc.constant(undefined),
    fc.constant(null),
    fc.string({ maxLength: 10 }),
    fc.integer(),
  ),
  extra: fc.oneof(
    { weight: 5, arbitrary: fc.constant(undefined) },
    { weight: 1, arbitrary: fc.constantFrom("extensions", "foo") },
  ),
  transport: fc.constantFrom("post", "post", "post", "post", "get", "raw", "form"),
  raw: fc.uint8Array({ maxLength: 200 }),
  auth: fc.constantFrom("admin", "admin", "admin", "none", "bad", "token"),
  path: fc.constantFrom("/graphql/", "/graphql"),
});
type GraphqlCase = typeof graphqlCase extends fc.Arbitrary<infer T> ? T : never;

export const graphqlTarget = control("graphql", 16, async (server) => {
  const url = server!.info["url"] as string;
  const adminKey = server!.info["adminKey"] as string;
  const pool = new Pool(url, { connections: 16 });
  const tally = new Map<string, number>();
  return {
    tally,
    arbitrary: graphqlCase as fc.Arbitrary<never>,
    async check(c: GraphqlCase) {
      let query = c.document;
      for (const [at, text, del] of c.edits) {
        const i = Math.floor(at * query.length);
        query = query.slice(0, i) + text + query.slice(i + del);
      }
      const headers: Record<string, string> = {};
      if (c.auth === "admin") headers["authorization"] = `Api-Key ${adminKey}`;
      if (c.auth === "token") headers["authorization"] = `Token ${adminKey}`;
      if (c.auth === "bad") headers["authorization"] = "Api-Key x.y";
      const payload: Record<string, unknown> = { query };
      if (c.variables !== undefined) payload["variables"] = c.variables;
      if (c.operationName !== undefined) payload["operationName"] = c.operationName;
      if (c.extra !== undefined) payload[c.extra] = {};
      let method = "POST";
      let path: string = c.path;
      let body: string | Buffer | undefined;
      if (c.transport === "post") {
        headers["content-type"] = "application/json";
        body = JSON.stringify(payload);
      } else if (c.transport === "get") {
        method = "GET";
        path = `${path}?query=${encodeURIComponent(query)}`;
      } else if (c.transport === "raw") {
        headers["content-type"] = "application/json";
        body = Buffer.from(c.raw);
      } else {
        headers["content-type"] = "application/x-www-form-urlencoded";
        body = `query=${encodeURIComponent(query)}`;
      }
      const res = await within(
        20_000,
        `graphql ${c.transport}`,
        send(pool, { method, path, headers, ...(body !== undefined ? { body } : {}) }),
      );
      if (res.status >= 500)
        throw new Error(`graphql answered ${res.status}: ${res.body.toString().slice(0, 400)}`);
      const j = jsonOf(res.body) as
        | { errors?: Array<{ extensions?: { code?: string } }>; error_code?: string }
        | undefined;
      if (j === undefined)
        throw new Error(
          `graphql answered ${res.status} with a body that is not JSON: ${res.body.toString().slice(0, 200)}`,
        );
      const codes = (j.errors ?? []).map((e) => e.extensions?.code);
      if (codes.includes("internal_error"))
        throw new Error(`a field failed with internal_error: ${res.body.toString().slice(0, 600)}`);
      if (res.status >= 400 && j.errors === undefined && typeof j.error_code !== "string")
        throw new Error(`${res.status} untyped: ${res.body.toString().slice(0, 300)}`);
      bump(tally, `${res.status} ${j.error_code ?? codes[0] ?? "data"}`);
    },
    async close() {
      await pool.close();
    },
  };
});

// ---------------------------------------------------------------------------------------------------------

interface Creds {
  bucket: string;
  key: string;
  accessKeyId: string;
  secret: string;
  token: string;
  region: string;
}

const s3Case = fc.record({
  method: fc.constantFrom("PUT", "PUT", "PUT", "POST", "POST", "GET", "HEAD", "DELETE"),
  target: fc.constantFrom("key", "key", "key", "other-key", "bucket", "other-bucket", "deep"),
  query: fc.constantFrom(
    "",
    "",
    "uploads",
    "uploads=",
    "partNumber=1&uploadId=U",
    "partNumber=0&uploadId=U",
    "partNumber=10001&uploadId=U",
    "uploadId=U",
    "uploadId=",
    "x-id=PutObject",
    "partNumber=abc&uploadId=U",
    "acl",
    "%zz",
    "a=b&a=c",
    "X-Amz-Algorithm=AWS4-HMAC-SHA256",
  ),
  payload: fc.constantFrom("sha256", "sha256", "unsigned", "trailer", "wrong-sha", "garbage"),
  body: fc.oneof(
    fc.uint8Array({ maxLength: 400 }).map((u) => Buffer.from(u)),
    fc.constant(Buffer.alloc(0)),
    fc
      .array(
        fc.record({ n: fc.integer({ min: 1, max: 99 }), etag: fc.stringMatching(/^"?[0-9a-f]{0,32}"?$/) }),
        { maxLength: 3 },
      )
      .map((parts) =>
        Buffer.from(
          `<?xml version="1.0"?><CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/">${parts.map((p) => `<Part><PartNumber>${p.n}</PartNumber><ETag>${p.etag}</ETag></Part>`).join("")}</CompleteMultipartUpload>`,
        ),
      ),
    fc
      .constantFrom(
        '<!DOCTYPE x [<!ENTITY a "b">]><CompleteMultipartUpload/>',
        "<CompleteMultipartUpload><Part>",
        "<a>".repeat(3000),
        "<?xml?>",
      )
      .map((s) => Buffer.from(s)),
  ),
  chunking: fc.constantFrom("plain", "plain", "aws-chunked", "aws-chunked-bad"),
  headers: fc.array(
    fc.constantFrom(
      ["content-md5", "1B2M2Y8AsgTpgAZUjQdbAg=="],
      ["content-md5", "xx"],
      ["x-amz-checksum-crc32", "AAAAAA=="],
      ["x-amz-checksum-sha256", "bad"],
      ["x-amz-sdk-checksum-algorithm", "CRC32"],
      ["x-amz-sdk-checksum-algorithm", "MD5"],
      ["x-amz-checksum-algorithm", "crc32c"],
      ["x-amz-trailer", "x-amz-checksum-crc32"],
      ["x-amz-trailer", "x-amz-checksum-nope"],
      ["content-type", "application/xml"],
      ["x-amz-decoded-content-length", "-1"],
      ["x-amz-decoded-content-length", "99999999999"],
      ["content-encoding", "gzip"],
    ),
    { maxLength: 3 },
  ),
  signing: fc.constantFrom(
    "good",
    "good",
    "good",
    "good",
    "bad-signature",
    "old-date",
    "no-token",
    "garbage-auth",
    "none",
  ),
  mutations: fc.oneof(
    { weight: 6, arbitrary: fc.constant([]) },
    { weight: 1, arbitrary: fc.array(mutation, { minLength: 1, maxLength: 2 }) },
  ),
});
type S3Case = typeof s3Case extends fc.Arbitrary<infer T> ? T : never;

function awsChunked(body: Buffer, bad: boolean, trailer: boolean): Buffer {
  const half = Math.floor(body.length / 2);
  const parts = [body.subarray(0, half), body.subarray(half)].filter((p) => p.length > 0);
  let out = "";
  for (const p of parts) out += `${bad ? "zz" : p.length.toString(16)}\r\n${p.toString("latin1")}\r\n`;
  out += trailer ? "0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n" : "0\r\n\r\n";
  return Buffer.from(out, "latin1");
}

export const s3Target = control("s3", 16, async (server) => {
  const url = server!.info["url"] as string;
  const adminKey = server!.info["adminKey"] as string;
  const pool = new Pool(url, { connections: 16 });
  const tally = new Map<string, number>();
  const prepare = async (): Promise<Creds> => {
    const res = await send(pool, {
      method: "POST",
      path: "/v1/prepare_model_upload",
      headers: { authorization: `Api-Key ${adminKey}`, "content-type": "application/json" },
      body: JSON.stringify({ name: `fuzz-${randomBytes(4).toString("hex")}`, deployment: { config: {} } }),
    });
    const b = jsonOf(res.body) as {
      s3_bucket: string;
      s3_key: string;
      s3_region: string;
      creds: { aws_access_key_id: string; aws_secret_access_key: string; aws_session_token: string };
    };
    if (res.status !== 200)
      throw new Error(`prepare_model_upload answered ${res.status}: ${res.body.toString()}`);
    return {
      bucket: b.s3_bucket,
      key: b.s3_key,
      region: b.s3_region,
      accessKeyId: b.creds.aws_access_key_id,
      secret: b.creds.aws_secret_access_key,
      token: b.creds.aws_session_token,
    };
  };
  // Credentials last an hour: fresh ones every few thousand cases.
  let creds = await prepare();
  let used = 0;
  return {
    tally,
    arbitrary: s3Case as fc.Arbitrary<never>,
    async check(c: S3Case) {
      if (++used % 5_000 === 0) creds = await prepare();
      const key =
        c.target === "key"
          ? creds.key
          : c.target === "other-key"
            ? `${creds.key}x`
            : c.target === "deep"
              ? `${creds.key}/../../etc/passwd`
              : "";
      const bucket = c.target === "other-bucket" ? "not-ours" : creds.bucket;
      const path = `/${bucket}${key ? `/${key.split("/").map(encodeURIComponent).join("/")}` : ""}`;
      const query = c.query.replace(/U/g, c.target === "key" ? "fuzz-upload" : "U");
      let body: Buffer = c.body;
      const trailer = c.payload === "trailer";
      const chunked = c.chunking !== "plain" || trailer;
      if (chunked) body = awsChunked(c.body, c.chunking === "aws-chunked-bad", trailer);
      if (c.mutations.length > 0) body = mutate(body, c.mutations);
      const now = c.signing === "old-date" ? Date.now() - 3_600_000 : Date.now();
      const amzDate = formatAmzDate(now);
      const headers: Array<[string, string]> = [
        ["host", new URL(url).host],
        ["x-amz-date", amzDate],
      ];
      const payloadHash =
        c.payload === "sha256"
          ? (await import("node:crypto")).createHash("sha256").update(body).digest("hex")
          : c.payload === "unsigned"
            ? "UNSIGNED-PAYLOAD"
            : trailer
              ? "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
              : c.payload === "wrong-sha"
                ? "0".repeat(64)
                : "nonsense";
      headers.push(["x-amz-content-sha256", payloadHash]);
      if (c.signing !== "no-token") headers.push(["x-amz-security-token", creds.token]);
      if (chunked)
        headers.push(
          ["content-encoding", "aws-chunked"],
          ["x-amz-decoded-content-length", String(c.body.length)],
        );
      if (trailer) headers.push(["x-amz-trailer", "x-amz-checksum-crc32"]);
      for (const [k, v] of c.headers) headers.push([k, v]);
      const signed = [...new Set(headers.map(([k]) => k))].sort();
      if (c.signing !== "none" && c.signing !== "garbage-auth") {
        const date = amzDate.slice(0, 8);
        const scope = `${date}/${creds.region}/s3/aws4_request`;
        const canonical = canonicalRequest({ method: c.method, path, query, headers }, signed, payloadHash);
        let signature =
          canonical === null
            ? "0".repeat(64)
            : sign(
                signingKey(creds.secret, date, creds.region, "s3"),
                stringToSign(amzDate, scope, canonical),
              );
        if (c.signing === "bad-signature")
          signature = signature.replace(/^./, (ch) => (ch === "0" ? "1" : "0"));
        headers.push([
          "authorization",
          `${ALGORITHM} Credential=${creds.accessKeyId}/${scope}, SignedHeaders=${signed.join(";")}, Signature=${signature}`,
        ]);
      } else if (c.signing === "garbage-auth")
        headers.push(["authorization", "AWS4-HMAC-SHA256 Credential=/, SignedHeaders=, Signature="]);
      const h: Record<string, string> = {};
      for (const [k, v] of headers) h[k] = h[k] === undefined ? v : `${h[k]},${v}`;
      delete h["host"];
      const res = await within(
        20_000,
        `${c.method} ${path}?${query}`,
        send(pool, {
          method: c.method,
          path: query ? `${path}?${query}` : path,
          headers: h,
          ...(c.method === "GET" || c.method === "HEAD" ? {} : { body }),
        }),
      );
      // 501 NotImplemented is S3's own typed refusal of a feature (a full-object checksum on a multipart
      // upload); any other 5xx is a fault.
      const notImplemented =
        res.status === 501 && res.body.toString("utf8").includes("<Code>NotImplemented</Code>");
      if (res.status >= 500 && !notImplemented) {
        throw new Error(
          `S3 ${c.method} ${path}?${query} answered ${res.status}: ${res.body.toString().slice(0, 400)}`,
        );
      }
      if (res.status >= 300 && c.method !== "HEAD") {
        const text = res.body.toString("utf8");
        const code =
          /<Error>\s*<Code>([A-Za-z0-9]+)<\/Code>/.exec(text)?.[1] ??
          (jsonOf(res.body) as { error_code?: string } | undefined)?.error_code;
        if (typeof code !== "string") throw new Error(`S3 ${res.status} untyped: ${text.slice(0, 300)}`);
        bump(tally, `${res.status} ${code}`);
      } else bump(tally, String(res.status));
    },
    async close() {
      await pool.close();
    },
  };
});
