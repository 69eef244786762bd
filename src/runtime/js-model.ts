// A JavaScript model (`model/model.js` exporting a `Model` class) hosted in this process, and the pure
// rules that turn what its predict() returns into an HTTP body: JSON, raw bytes, or a chunked stream.

import { existsSync } from "node:fs";
import { register } from "node:module";
import path from "node:path";
import { pathToFileURL } from "node:url";

/** What the runtime constructs a Model with (truss passes the same `environment`). */
export interface ModelContext {
  environment: { name: string } | null;
}

export interface HostedModel {
  predict(input: unknown): unknown;
  /**
   * The model's optional OpenAI-style methods, by the route they serve (`/v1/chat/completions`, …; reached
   * through the ingress at `/sync/v1/...`), and its optional websocket handler (src/runtime/realtime.ts).
   */
  routes: ReadonlyMap<string, (input: unknown) => unknown>;
  websocket: ((ws: unknown) => unknown) | null;
}

/** The OpenAI-compatible routes a JavaScript model may serve, and the method that serves each. */
export const OPENAI_ROUTES: Readonly<Record<string, string>> = {
  "/v1/chat/completions": "chatCompletions",
  "/v1/completions": "completions",
  "/v1/embeddings": "embeddings",
};

/** An import or shape fault of model.js, told apart from an error thrown by the model's own load(). */
export class ModelModuleError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "ModelModuleError";
  }
}

// A module-loader hook that makes `.js` files under a model directory ES modules. A package carries no
// package.json, and a loader in the chain (tsx, which runs Meridian from source) would otherwise take such
// files for CommonJS and fail on their `export`. Source is read as is: model code is plain JavaScript.
const ESM_HOOK = `
import { readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
let prefix = "";
export function initialize(data) { prefix = data.prefix; }
export async function load(url, context, nextLoad) {
  const path = url.split(/[?#]/)[0];
  if (path.startsWith(prefix) && path.endsWith(".js") && !path.includes("/node_modules/")) {
    return { format: "module", source: await readFile(fileURLToPath(path)), shortCircuit: true };
  }
  return nextLoad(url, context);
}
`;

// Hooks are process-wide and cannot be removed, so each model directory is registered once.
const hookedDirectories = new Set<string>();

function treatAsModules(modelDir: string): void {
  const packageRoot = path.dirname(modelDir);
  // A package.json that says otherwise is left to Node's own rules.
  if (existsSync(path.join(modelDir, "package.json")) || existsSync(path.join(packageRoot, "package.json")))
    return;
  const prefix = pathToFileURL(modelDir + path.sep).href;
  if (hookedDirectories.has(prefix)) return;
  hookedDirectories.add(prefix);
  register(`data:text/javascript,${encodeURIComponent(ESM_HOOK)}`, { data: { prefix } });
}

/** Imports model.js, constructs its Model and awaits load(); whatever load() throws propagates as is. */
export async function loadJavaScriptModel(modulePath: string, context: ModelContext): Promise<HostedModel> {
  let exports: Record<string, unknown>;
  try {
    treatAsModules(path.dirname(modulePath));
    exports = (await import(pathToFileURL(modulePath).href)) as Record<string, unknown>;
  } catch (err) {
    throw new ModelModuleError(`could not import ${modulePath}: ${errorMessage(err)}`, { cause: err });
  }
  const Model = exports["Model"];
  if (typeof Model !== "function") {
    throw new ModelModuleError(`${modulePath} does not export a Model class`);
  }
  const instance = new (Model as new (context: ModelContext) => Record<string, unknown>)(context);
  const predict = instance["predict"];
  if (typeof predict !== "function") {
    throw new ModelModuleError(`the Model class of ${modulePath} has no predict(input) method`);
  }
  const load = instance["load"];
  // truss treats load() as optional; a model with nothing to load may leave it out.
  if (typeof load === "function") await load.call(instance);
  const routes = new Map<string, (input: unknown) => unknown>();
  for (const [route, name] of Object.entries(OPENAI_ROUTES)) {
    const method = instance[name];
    if (typeof method === "function") routes.set(route, (input) => method.call(instance, input));
  }
  const websocket = instance["websocket"];
  return {
    predict: (input) => predict.call(instance, input),
    routes,
    websocket: typeof websocket === "function" ? (ws) => websocket.call(instance, ws) : null,
  };
}

export type Prediction =
  | { kind: "json"; body: string }
  | { kind: "bytes"; body: Uint8Array }
  | { kind: "stream"; chunks: AsyncIterator<unknown> | Iterator<unknown> };

/**
 * Classifies a resolved predict() result. Async iterables and generator objects stream; a Uint8Array is
 * sent as bytes; anything else is JSON (`undefined` as `null`). Throws when the value has no JSON form.
 */
export function classifyPrediction(value: unknown): Prediction {
  if (value instanceof Uint8Array) return { kind: "bytes", body: value };
  if (isAsyncIterable(value)) return { kind: "stream", chunks: value[Symbol.asyncIterator]() };
  if (isGenerator(value)) return { kind: "stream", chunks: value };
  const body = JSON.stringify(value === undefined ? null : value);
  if (body === undefined) throw new TypeError("predict() returned a value with no JSON form");
  return { kind: "json", body };
}

export type ChunkFormat = "text" | "bytes" | "ndjson";

/** The content type of a stream, chosen by its first chunk. */
export function chunkFormat(first: unknown): ChunkFormat {
  if (typeof first === "string") return "text";
  if (first instanceof Uint8Array) return "bytes";
  return "ndjson";
}

export const CONTENT_TYPES: Record<ChunkFormat, string> = {
  text: "text/plain; charset=utf-8",
  bytes: "application/octet-stream",
  ndjson: "application/x-ndjson",
};

/** Strings and bytes go out as they are; any other chunk is one JSON line. */
export function encodeChunk(chunk: unknown): Uint8Array {
  if (typeof chunk === "string") return Buffer.from(chunk, "utf8");
  if (chunk instanceof Uint8Array) return chunk;
  const json = JSON.stringify(chunk === undefined ? null : chunk);
  if (json === undefined) throw new TypeError("predict() yielded a chunk with no JSON form");
  return Buffer.from(`${json}\n`, "utf8");
}

function isAsyncIterable(value: unknown): value is AsyncIterable<unknown> {
  return (
    typeof value === "object" &&
    value !== null &&
    typeof (value as Record<symbol, unknown>)[Symbol.asyncIterator] === "function"
  );
}

function isGenerator(value: unknown): value is Generator<unknown> {
  return Object.prototype.toString.call(value) === "[object Generator]";
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
