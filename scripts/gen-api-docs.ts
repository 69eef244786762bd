// Generates docs/api.md from the OpenAPI document the control plane serves at /v1/spec: the app is built
// in-process on a throwaway SQLite store and asked for its spec, so the reference can never drift from the
// route table. `npx tsx scripts/gen-api-docs.ts` (or `npm run docs`) writes the file; test/docs.test.ts
// fails when the committed file is out of date.

import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import pino from "pino";
import { buildControlApp } from "../src/control/app.ts";
import { LocalArtifactStore } from "../src/control/artifacts.ts";
import type { ControlContext } from "../src/control/context.ts";
import { RevisionFeed } from "../src/control/revision-feed.ts";
import { newKeyFileText, SecretBox } from "../src/lib/secret-box.ts";
import { Store } from "../src/store/store.ts";

export const API_DOC = resolve(import.meta.dirname, "../docs/api.md");

type Schema = {
  type?: string | string[];
  const?: unknown;
  enum?: unknown[];
  anyOf?: Schema[];
  oneOf?: Schema[];
  items?: Schema;
  properties?: Record<string, Schema>;
  required?: string[];
  $ref?: string;
  format?: string;
  "x-meridian"?: boolean;
};

interface Operation {
  summary: string;
  tags?: string[];
  parameters: Array<{ name: string; in: "path" | "query"; schema: Schema }>;
  requestBody?: { content: Record<string, { schema: Schema }> };
  responses: Record<string, { content?: Record<string, { schema: Schema }> }>;
}

export interface OpenApiDocument {
  info: { title: string; description: string };
  paths: Record<string, Record<string, Operation>>;
  components: { schemas: Record<string, Schema> };
}

/** Builds the control app on a temporary SQLite store and returns what GET /v1/spec answers. */
export async function fetchSpec(): Promise<OpenApiDocument> {
  const dir = mkdtempSync(join(tmpdir(), "meridian-api-docs-"));
  const store = await Store.open({ kind: "sqlite", file: join(dir, "meridian.db") });
  try {
    const ctx: ControlContext = {
      store,
      artifacts: new LocalArtifactStore(join(dir, "artifacts")),
      domain: "meridian.internal",
      publicUrl: "http://127.0.0.1:8700",
      logger: pino({ level: "silent" }),
      feed: new RevisionFeed(store),
      now: () => new Date(0).toISOString(),
      startedAtMs: 0,
      planeTimeoutMs: 15_000,
      secrets: SecretBox.parse(newKeyFileText(), "a throwaway key"),
    };
    const app = await buildControlApp(ctx);
    try {
      const res = await app.inject({ method: "GET", url: "/v1/spec" });
      if (res.statusCode !== 200) throw new Error(`/v1/spec answered ${res.statusCode}`);
      return res.json() as OpenApiDocument;
    } finally {
      await app.close();
    }
  } finally {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

const refName = (ref: string) => ref.split("/").pop()!;

/** A schema's type in a few characters: `string`, `integer?` (nullable), `"model_archive"`, `A|B`, `T[]`. */
function typeOf(s: Schema): string {
  if (s.$ref) return refName(s.$ref);
  if (s.const !== undefined) return JSON.stringify(s.const);
  if (s.enum) return s.enum.map((v) => JSON.stringify(v)).join("|");
  const alternatives = s.anyOf ?? s.oneOf;
  if (alternatives) {
    const nonNull = alternatives.filter((a) => a.type !== "null");
    const inner = nonNull.map(typeOf).join("|");
    return nonNull.length < alternatives.length ? `${inner}?` : inner;
  }
  if (s.type === "array") return `${s.items ? typeOf(s.items) : "any"}[]`;
  if (s.type === "object" && s.properties) return `{${fields(s, 1)}}`;
  if (Array.isArray(s.type)) return s.type.join("|");
  return s.type ?? "any";
}

/** The fields of an object schema, `*` marking required ones; nested objects to `depth` levels. */
function fields(s: Schema, depth = 0): string {
  const required = new Set(s.required ?? []);
  return Object.entries(s.properties ?? {})
    .map(([name, f]) => {
      const mark = required.has(name) ? "*" : "";
      const object = (f.anyOf ?? [f]).find((a) => a.type === "object" && a.properties);
      if (object && depth < 2) {
        const nullable = f.anyOf?.some((a) => a.type === "null") ? "?" : "";
        return `${name}${mark}${nullable} {${fields(object, depth + 1)}}`;
      }
      if (object) return `${name}${mark} {…}`;
      return `${name}${mark}: ${typeOf(f)}`;
    })
    .join(", ");
}

function requestCell(op: Operation): string {
  const content = op.requestBody?.content;
  if (!content) return "—";
  const [type, media] = Object.entries(content)[0]!;
  if (type !== "application/json") return `\`${type}\` bytes`;
  const body = fields(media.schema);
  return body ? body : "`{}`";
}

/** The component schemas a 200 response names: one `$ref`, or a `oneOf` of them (Meridian's alternatives). */
function responseRefs(op: Operation): string[] {
  const schema = op.responses["200"]?.content?.["application/json"]?.schema;
  const refs = schema?.oneOf ? schema.oneOf.map((s) => s.$ref) : [schema?.$ref];
  return refs.filter((r): r is string => r !== undefined).map(refName);
}

function responseCell(op: Operation): string {
  const names = responseRefs(op);
  if (names.length === 0) return "JSON object";
  return names.map((name) => `[${name}](#${name.toLowerCase()})`).join(" or ");
}

function queryCell(op: Operation): string {
  const q = op.parameters.filter((p) => p.in === "query");
  return q.length ? q.map((p) => `\`${p.name}\``).join(", ") : "—";
}

/** Pipes inside a table cell must be escaped (GFM tables). */
const escapePipes = (text: string) => text.replace(/\|/g, "\\|");

interface Row {
  method: string;
  path: string;
  op: Operation;
}

function table(rows: Row[]): string[] {
  const out = [
    "| method | path | summary | query | request body (`*` required) | 200 response |",
    "|---|---|---|---|---|---|",
  ];
  for (const r of rows) {
    out.push(
      `| ${r.method.toUpperCase()} | \`${r.path}\` | ${escapePipes(r.op.summary)} | ${queryCell(r.op)} | ${escapePipes(requestCell(r.op))} | ${responseCell(r.op)} |`,
    );
  }
  return out;
}

/** One line per schema of the document that has Meridian's fields (`x-meridian` properties). */
function meridianFields(spec: OpenApiDocument): string[] {
  return Object.entries(spec.components.schemas).flatMap(([name, schema]) => {
    const own = Object.entries(schema.properties ?? {}).filter(([, p]) => p["x-meridian"] === true);
    if (own.length === 0) return [];
    return [`- ${name}: ${own.map(([field, p]) => `\`${field}\` (${typeOf(p)})`).join(", ")}`];
  });
}

/** Renders the OpenAPI document as Markdown: a table per tag, then the response schemas they name. */
export function renderApiDocs(spec: OpenApiDocument): string {
  const rows: Row[] = Object.entries(spec.paths).flatMap(([path, ops]) =>
    Object.entries(ops).map(([method, op]) => ({ method, path, op })),
  );
  const isMeridian = (r: Row) => r.op.tags?.includes("meridian") ?? false;
  const reference = rows.filter((r) => !isMeridian(r));
  const meridian = rows.filter((r) => isMeridian(r) && !r.path.startsWith("/v1/internal/"));
  const internal = rows.filter((r) => isMeridian(r) && r.path.startsWith("/v1/internal/"));
  const referenced = [...new Set(rows.flatMap((r) => responseRefs(r.op)))].sort();

  const lines = [
    "<!-- Generated by scripts/gen-api-docs.ts from GET /v1/spec; do not edit. Regenerate: npm run docs -->",
    "",
    `# ${spec.info.title}`,
    "",
    spec.info.description,
    "",
    "The control plane serves this document as OpenAPI 3.1 at `GET /v1/spec` (no key needed), with the full",
    "request schemas. Also public: `GET /healthz` (`{ok, revision}`), `GET /v1/info`",
    "(`{product, domain}`: what clients need to build endpoint URLs) and `GET /v1/keys` (the key directory",
    "of every plane's public keys, [evidence.md](evidence.md#the-key-directory)). Errors on every route are",
    '`{"error", "error_code", "detail"}` with the codes of [errors.md](errors.md). Request bodies refuse',
    "unknown fields; `?` marks a nullable field. Response schemas are Baseten's published ones; the fields",
    "Meridian adds to them are marked `x-meridian` in `/v1/spec` (src/control/openapi.ts `MERIDIAN_FIELDS`):",
    "",
    ...meridianFields(spec),
    "",
    "Each plane of `GET /v1/admin/planes` also has `sandbox` (`{mode, detail}` or null).",
    "Both promote routes take `dry_run: true`, which answers PromotionDryRunV1 (what the promotion would do)",
    "instead of DeploymentV1 and changes nothing (see [concepts.md](concepts.md)).",
    "",
    `## Reference routes (${reference.length})`,
    "",
    "Baseten's management API, same paths and JSON shapes, for the parts Meridian covers. Routes without",
    "`/teams/{team_id}` act in the key's team (a personal key: the user's default team).",
    "",
    ...table(reference),
    "",
    `## Meridian's routes, tag \`meridian\` (${meridian.length})`,
    "",
    "Routes Baseten's published API does not have: uploads, regions, audit logs, deleting an environment,",
    "renaming a deployment, and the operator API (`/v1/admin/…`, org admins' personal keys only).",
    "",
    ...table(meridian),
    "",
    `## Plane wire contract, tag \`meridian\` (${internal.length})`,
    "",
    "Called by `meridian plane` and `meridian dns` with a plane credential (`Authorization: Bearer …`), not",
    "by users. Long-polls answer 200 with a newer snapshot, or 304 after `wait` seconds with no change.",
    "",
    ...table(internal),
    "",
    "## Response schemas",
    "",
    "Top-level fields of the reference's component schemas named above (the full schemas are in `/v1/spec`).",
    "",
  ];
  for (const name of referenced) {
    const schema = spec.components.schemas[name];
    lines.push(
      `### ${name}`,
      "",
      schema?.properties ? escapePipes(fields(schema, 2)) : typeOf(schema ?? {}),
      "",
    );
  }
  return `${lines.join("\n").trimEnd()}\n`;
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  writeFileSync(API_DOC, renderApiDocs(await fetchSpec()));
  process.stdout.write(`wrote ${API_DOC}\n`);
}
