// The CLI's client of the management API: JSON over undici, the error body turned into one clear line.

import type { Readable } from "node:stream";
import { request } from "undici";
import type { Settings } from "./settings.ts";

/** A failure the CLI reports as one line and a non-zero exit. */
export class CliError extends Error {
  override name = "CliError";
  readonly exitCode: number;

  constructor(message: string, exitCode = 1) {
    super(message);
    this.exitCode = exitCode;
  }
}

export class ManagementApi {
  readonly url: string;
  readonly #key: string;

  constructor(settings: Settings) {
    if (!settings.apiUrl) {
      throw new CliError(
        "No control plane configured: run `meridian up`, or `meridian login --api-url URL --api-key KEY`, or set MERIDIAN_API_URL and MERIDIAN_API_KEY.",
      );
    }
    if (!settings.apiKey) {
      throw new CliError(
        `No API key for ${settings.apiUrl}: set MERIDIAN_API_KEY or run \`meridian login\`.`,
      );
    }
    this.url = settings.apiUrl;
    this.#key = settings.apiKey;
  }

  async call<T>(
    method: "GET" | "POST" | "PATCH" | "DELETE" | "PUT",
    path: string,
    body?: unknown,
  ): Promise<T> {
    const headers: Record<string, string> = { authorization: `Api-Key ${this.#key}` };
    if (body !== undefined) headers["content-type"] = "application/json";
    let res: Awaited<ReturnType<typeof request>>;
    try {
      res = await request(`${this.url}${path}`, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (err) {
      throw new CliError(`Cannot reach the control plane at ${this.url}: ${(err as Error).message}`);
    }
    return parse<T>(res, method, path);
  }

  get = <T>(path: string) => this.call<T>("GET", path);
  post = <T>(path: string, body: unknown = {}) => this.call<T>("POST", path, body);
  patch = <T>(path: string, body: unknown) => this.call<T>("PATCH", path, body);
  delete = <T>(path: string) => this.call<T>("DELETE", path);

  /** PUTs a byte stream (a model package) to a URL on the control plane. */
  async upload<T>(url: string, body: Readable, size: number): Promise<T> {
    const res = await request(url, {
      method: "PUT",
      headers: {
        authorization: `Api-Key ${this.#key}`,
        "content-type": "application/gzip",
        "content-length": String(size),
      },
      body,
    });
    return parse<T>(res, "PUT", new URL(url).pathname);
  }
}

async function parse<T>(res: Awaited<ReturnType<typeof request>>, method: string, path: string): Promise<T> {
  const text = await res.body.text();
  let json: unknown = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  if (res.statusCode >= 400) {
    const e = json as { error?: string; error_code?: string } | null;
    const what = e?.error ?? (text.slice(0, 200) || `HTTP ${res.statusCode}`);
    throw new CliError(
      `${what}${e?.error_code ? ` (${e.error_code})` : ""} [${method} ${path} → ${res.statusCode}]`,
    );
  }
  return json as T;
}
