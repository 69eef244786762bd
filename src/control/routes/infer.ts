// The TypeScript type of a value a JSON schema accepts, for the subset of JSON Schema the control plane's
// schemas use (src/control/schemas.ts): object with properties/required, array/items, string, integer,
// number, boolean, null, enum, const and anyOf. Small on purpose: a general JSON-Schema-to-type library
// made the checker run out of memory on these schemas. A keyword outside the subset yields `unknown`,
// which fails to compile where a handler reads the value, so a gap shows up instead of a wrong type.

type Simplify<T> = { [K in keyof T]: T[K] } & {};

type ObjectOf<P, R> = Simplify<
  { [K in keyof P as K extends R ? K : never]-?: Infer<P[K]> } & {
    [K in keyof P as K extends R ? never : K]?: Infer<P[K]>;
  }
>;

export type Infer<S> = S extends { const: infer C }
  ? C
  : S extends { enum: readonly (infer E)[] }
    ? E
    : S extends { anyOf: readonly (infer A)[] }
      ? Infer<A>
      : S extends { type: "string" }
        ? string
        : S extends { type: "integer" | "number" }
          ? number
          : S extends { type: "boolean" }
            ? boolean
            : S extends { type: "null" }
              ? null
              : S extends { type: "array"; items: infer I }
                ? Infer<I>[]
                : S extends { type: "object"; properties: infer P }
                  ? ObjectOf<P, S extends { required: readonly (infer R)[] } ? R : never>
                  : S extends { type: "object" }
                    ? Record<string, unknown>
                    : unknown;
