// What a route of the management API is: its method and path, who may call it, the JSON schemas that
// validate its body, query and path parameters, the reference schema of its answer, and its handler. The
// handler's `call` is typed from those same schemas (./infer.ts), so what fastify validated is what
// the handler reads: no casts between the two.

import type { FastifyReply, FastifyRequest } from "fastify";
import type { Principal } from "../../core/access.ts";
import type { PlaneRow } from "../../store/schema.ts";
import type { RouteDoc } from "../openapi.ts";
import type { Infer } from "./infer.ts";

export interface RouteOptions {
  /** Largest model package upload, in bytes. */
  uploadLimit: number;
  /** Longest long-poll wait a plane may ask for, in seconds. */
  maxWaitSeconds: number;
}

/** `key`: an API key; `plane`: any plane credential; `own_plane`: the credential of the `{name}` plane. */
export type Auth = "key" | "plane" | "own_plane";

/** The `{name}` segments of a path template (and `*` for a trailing wildcard). */
type ParamNames<U extends string> = U extends `${string}{${infer P}}${infer Rest}`
  ? P | ParamNames<Rest>
  : U extends `${string}/*`
    ? "*"
    : never;
export type ParamsOf<U extends string> = { [K in ParamNames<U>]: string };

type Parsed<S, Missing> = [S] extends [undefined] ? Missing : Infer<S>;

/** Who called: a principal for API-key routes, the plane for plane-credential routes. */
type Caller<A extends Auth> = A extends "key" ? { principal: Principal } : { plane: PlaneRow };

export type Call<U extends string, A extends Auth, B, Q> = Caller<A> & {
  params: ParamsOf<U>;
  query: Parsed<Q, Record<string, never>>;
  body: Parsed<B, undefined>;
  request: FastifyRequest;
  reply: FastifyReply;
};

export interface RouteSpec<U extends string, A extends Auth, B, Q>
  extends Omit<RouteDoc, "url" | "body" | "query"> {
  url: U;
  auth: A;
  body?: B;
  query?: Q;
  handler(call: Call<U, A, B, Q>): Promise<unknown>;
}

/** A route as the app registers it: its types erased once the definition has been checked. */
export interface Route extends RouteDoc {
  auth: Auth;
  /** Validates the path parameters (one string schema per `{name}`, built from the template). */
  params: { type: "object"; required: string[]; properties: Record<string, object> };
  handler(call: ErasedCall): Promise<unknown>;
}

export interface ErasedCall {
  params: unknown;
  query: unknown;
  body: unknown;
  principal?: Principal;
  plane?: PlaneRow;
  request: FastifyRequest;
  reply: FastifyReply;
}

/** A path parameter: ids, names and prefixes are short printable strings. */
const PARAM = { type: "string", minLength: 1, maxLength: 256 } as const;

/** Defines a route; its handler sees the body, query and params as their schemas describe them. */
export function route<
  const U extends string,
  const A extends Auth,
  const B extends object | undefined = undefined,
  const Q extends object | undefined = undefined,
>(spec: RouteSpec<U, A, B, Q>): Route {
  const names = [...spec.url.matchAll(/\{(\w+)\}/g)].map((m) => m[1]!);
  if (spec.url.endsWith("/*")) names.push("*");
  return {
    ...spec,
    body: spec.body as object | undefined,
    query: spec.query as RouteDoc["query"],
    params: {
      type: "object",
      required: names,
      properties: Object.fromEntries(names.map((n) => [n, PARAM])),
    },
    // The app validated body, query and params against these very schemas before calling.
    handler: spec.handler as (call: ErasedCall) => Promise<unknown>,
  };
}
