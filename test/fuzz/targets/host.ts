// Target `host`: `parseHost` (src/core/host.ts) in process, against an independent oracle written from
// DESIGN.md §1/§3 (`model-{id}[-{env}].{domain}[.][:port]`): the parser must agree with it on every value,
// never throw, and answer in bounded time (no regex backtracking blow-up).

import fc from "fast-check";
import { HOST_MAX_LENGTH, hostnameOf, parseHost } from "../../../src/core/host.ts";
import { isEnvironmentName } from "../../../src/core/names.ts";
import { bump, type FuzzTarget, fastestOf } from "../lib.ts";

const DOMAIN = "meridian.test";
const ORACLE = /^model-([a-z0-9]{8})(?:-([a-z0-9-]+))?\.meridian\.test\.?(?::([0-9]*))?$/;

type Oracle = { ok: true; modelId: string; environment: string | null; port: number | null } | { ok: false };

function oracle(value: string): Oracle {
  if (value.length === 0 || value.length > HOST_MAX_LENGTH) return { ok: false };
  // RFC 3986 §3.2.2 hosts are ASCII: a character that lowercases into ASCII (U+212A KELVIN SIGN → `k`) is
  // still not one.
  if (/[\u0080-\uffff]/.test(value)) return { ok: false };
  const m = ORACLE.exec(value.toLowerCase());
  if (m === null) return { ok: false };
  const port = m[3] === undefined || m[3] === "" ? null : Number(m[3]);
  if (port !== null && port > 65535) return { ok: false };
  const env = m[2] ?? null;
  if (env !== null && !isEnvironmentName(env)) return { ok: false };
  return { ok: true, modelId: m[1]!, environment: env, port };
}

const SPECIAL = [
  "@",
  "/",
  "%",
  "%2e",
  "%41",
  "[",
  "]",
  ":",
  ".",
  "..",
  " ",
  "\t",
  "\r",
  "\n",
  "\0",
  "-",
  "_",
  "~",
  "\u00e9",
  "\u0130",
  "\u212a",
  "\ufeff",
  "*",
  "\\",
  "?",
  "#",
];

const id = fc.oneof(fc.stringMatching(/^[a-z0-9]{8}$/), fc.stringMatching(/^[A-Za-z0-9-]{0,12}$/));
const env = fc.oneof(
  fc.constantFrom(
    "prod-eu",
    "production",
    "staging",
    "development",
    "e".repeat(40),
    "e".repeat(41),
    "a--b",
    "-x",
    "x-",
  ),
  fc.stringMatching(/^[a-z0-9-]{0,45}$/),
);
const domain = fc.constantFrom(
  DOMAIN,
  "MERIDIAN.TEST",
  `${DOMAIN}.`,
  `${DOMAIN}..`,
  "meridian.tes",
  "xmeridian.test",
  `${DOMAIN}.evil.example`,
  "test",
  "",
);
const port = fc.oneof(
  fc.constant(""),
  fc.nat(70000).map(String),
  fc.stringMatching(/^[0-9a-z:]{0,7}$/),
  fc.constant("0000000000080"),
);
const shaped = fc
  .record({
    prefix: fc.constantFrom("model-", "MODEL-", "Model-", "mod-", "model", "model--", "", "x.model-"),
    id,
    env: fc.option(env, { nil: undefined }),
    domain,
    port: fc.option(port, { nil: undefined }),
  })
  .map(
    (p) =>
      `${p.prefix}${p.id}${p.env === undefined ? "" : `-${p.env}`}.${p.domain}${p.port === undefined ? "" : `:${p.port}`}`,
  );
const edited = fc
  .tuple(
    shaped,
    fc.array(
      fc.tuple(fc.double({ min: 0, max: 1, noNaN: true }), fc.constantFrom(...SPECIAL), fc.boolean()),
      { minLength: 1, maxLength: 3 },
    ),
  )
  .map(([s, edits]) => {
    let out = s;
    for (const [at, text, replace] of edits) {
      const i = Math.floor(at * out.length);
      out = out.slice(0, i) + text + out.slice(replace ? i + 1 : i);
    }
    return out;
  });
const literal = fc
  .tuple(
    fc.stringMatching(/^[0-9a-fA-Fv.:zZ]{0,20}$/),
    fc.constantFrom("]", "", "]:", "]:80", "]x", "]:99999"),
  )
  .map(([inner, tail]) => `[${inner}${tail}`);
const huge = fc.integer({ min: 200, max: 5000 }).map((n) => `model-aaaaaaa1.${"a.".repeat(n)}${DOMAIN}`);

/** Host values of every shape the target generates (reused by the request-head target). */
export const hostValue: fc.Arbitrary<string> = fc.oneof(
  { weight: 6, arbitrary: shaped },
  { weight: 4, arbitrary: edited },
  { weight: 1, arbitrary: literal },
  { weight: 2, arbitrary: fc.string({ unit: "binary", maxLength: 300 }) },
  { weight: 1, arbitrary: fc.string({ unit: "grapheme-ascii", maxLength: 80 }) },
  { weight: 1, arbitrary: huge },
);

export const hostTarget: FuzzTarget<string> = {
  name: "host",
  lanes: 1,
  batchCases: 50_000,
  shrink: true,
  async open() {
    const tally = new Map<string, number>();
    return {
      tally,
      arbitrary: hostValue,
      check(value) {
        const out = parseHost(value, DOMAIN);
        // A slow parse (regex backtracking) is slow every time; a pause of a loaded machine is not.
        const ms = fastestOf(3, () => parseHost(value, DOMAIN));
        if (ms > 50) throw new Error(`parseHost took ${ms.toFixed(1)} ms at best of 3`);
        const want = oracle(value);
        if (!out.ok) {
          bump(tally, out.code);
          if (out.code !== "invalid_host" && out.code !== "unknown_host") throw new Error(`code ${out.code}`);
          if (want.ok) throw new Error(`refused (${out.code}: ${out.reason}), the oracle accepts`);
          return;
        }
        bump(tally, out.host.form);
        if (!want.ok) throw new Error(`accepted as ${JSON.stringify(out.host)}, the oracle refuses`);
        const got = {
          modelId: out.host.modelId,
          environment: out.host.form === "regional" ? out.host.environment : null,
          port: out.host.port,
        };
        if (
          JSON.stringify(got) !==
          JSON.stringify({ modelId: want.modelId, environment: want.environment, port: want.port })
        ) {
          throw new Error(`parsed ${JSON.stringify(got)}, the oracle ${JSON.stringify(want)}`);
        }
        // The canonical name of what was parsed parses back to the same endpoint.
        const again = parseHost(hostnameOf(out.host, DOMAIN), DOMAIN);
        if (
          !again.ok ||
          JSON.stringify({ ...again.host, port: out.host.port }) !== JSON.stringify(out.host)
        ) {
          throw new Error(`round trip of ${hostnameOf(out.host, DOMAIN)} gave ${JSON.stringify(again)}`);
        }
      },
      async close() {},
    };
  },
};
