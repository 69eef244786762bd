// Target `snapshot`: the checks a plane runs on every snapshot from the control plane or its disk cache
// (`checkPlaneSnapshot`, src/core/snapshot-check.ts) and the DNS server's (`checkDnsSnapshot`), in process.
// A case is a valid snapshot with structural edits at arbitrary JSON paths (a value replaced, a key
// deleted, an entry duplicated, a type changed) or with its JSON text mutated byte by byte. The checks must
// never throw, must name the failing field in a bounded message, and whatever they accept must be safe to
// route from: indexing it and deciding every model host on it never throws, and no regional decision names
// a plane outside the environment's region.

import fc from "fast-check";
import { answerQuestion, checkDnsSnapshot, dnsZone } from "../../../src/core/dns-answers.ts";
import { parseHost, regionalHostname, standardHostname } from "../../../src/core/host.ts";
import { decideRoute, indexSnapshot } from "../../../src/core/routing.ts";
import type { PlaneSnapshot } from "../../../src/core/snapshot.ts";
import { checkPlaneSnapshot } from "../../../src/core/snapshot-check.ts";
import { DNS_FIXTURE, ingressSnapshot, OWNER } from "../fixtures.ts";
import { bump, type FuzzTarget, fastestOf, type Mutation, mutate, mutation } from "../lib.ts";

const CONTROL = { keyId: "00112233aabbccdd", publicKey: `${"A".repeat(42)}Q` };
const BASE = ingressSnapshot(CONTROL);

type Edit =
  | { op: "set"; at: number; value: unknown }
  | { op: "delete"; at: number }
  | { op: "duplicate"; at: number }
  | { op: "swap-type"; at: number };

const hostile = fc.constantFrom(
  "",
  " ",
  "eu-1",
  "eu-2",
  "us",
  "eu",
  "d-eu",
  "d-std",
  "aaaaaaa1",
  "AAAAAAA1",
  "__proto__",
  "constructor",
  "prod-eu",
  "development",
  "a".repeat(65),
  "x".repeat(5000),
  "../../etc",
  "1.2.3.4:0",
  "127.0.0.1:65536",
  "[::1]:80",
  "2026-13-01T00:00:00Z",
  "2026-01-01T00:00:00Z",
  Number.MAX_SAFE_INTEGER + 2,
  -1,
  0.5,
  1e308,
  Number.NaN,
  null,
  true,
  [],
  {},
  ["eu-1", "eu-1"],
);
const edit: fc.Arbitrary<Edit> = fc.oneof(
  fc.record({
    op: fc.constant("set" as const),
    at: fc.double({ min: 0, max: 1, noNaN: true }),
    value: fc.oneof(hostile, fc.jsonValue({ maxDepth: 2 })),
  }),
  fc.record({ op: fc.constant("delete" as const), at: fc.double({ min: 0, max: 1, noNaN: true }) }),
  fc.record({ op: fc.constant("duplicate" as const), at: fc.double({ min: 0, max: 1, noNaN: true }) }),
  fc.record({ op: fc.constant("swap-type" as const), at: fc.double({ min: 0, max: 1, noNaN: true }) }),
);

type Case =
  | { kind: "plane" | "dns"; edits: Edit[] }
  | { kind: "plane-text" | "dns-text"; mutations: Mutation[] };

/** Every [container, key] pair of a JSON tree, root excluded. */
function slots(root: unknown): Array<[Record<string, unknown> | unknown[], string | number]> {
  const out: Array<[Record<string, unknown> | unknown[], string | number]> = [];
  const walk = (v: unknown) => {
    if (Array.isArray(v))
      v.forEach((x, i) => {
        out.push([v, i]);
        walk(x);
      });
    else if (typeof v === "object" && v !== null) {
      for (const k of Object.keys(v)) {
        out.push([v as Record<string, unknown>, k]);
        walk((v as Record<string, unknown>)[k]);
      }
    }
  };
  walk(root);
  return out;
}

function applyEdits(base: unknown, edits: readonly Edit[]): unknown {
  const root = structuredClone(base);
  for (const e of edits) {
    const all = slots(root);
    if (all.length === 0) break;
    const [holder, key] = all[Math.min(all.length - 1, Math.floor(e.at * all.length))]!;
    const h = holder as Record<string | number, unknown>;
    switch (e.op) {
      case "set":
        h[key] = structuredClone(e.value);
        break;
      case "delete":
        if (Array.isArray(holder)) holder.splice(key as number, 1);
        else delete h[key];
        break;
      case "duplicate":
        if (Array.isArray(holder)) holder.splice(key as number, 0, structuredClone(holder[key as number]));
        else h[`${String(key)}`] = [h[key], h[key]];
        break;
      case "swap-type": {
        const v = h[key];
        h[key] =
          typeof v === "string"
            ? 1
            : typeof v === "number"
              ? String(v)
              : Array.isArray(v)
                ? {}
                : v === null
                  ? ""
                  : typeof v === "object"
                    ? []
                    : null;
        break;
      }
    }
  }
  return root;
}

const ZONE = dnsZone({ domain: DNS_FIXTURE.domain });

/** Routing from an accepted snapshot: total, and regional decisions stay in the region. */
function routeEverything(s: PlaneSnapshot): void {
  const index = indexSnapshot(s);
  const regionOf = new Map(s.planes.map((p) => [p.name, p.region]));
  for (const model of s.models) {
    const hosts = [
      standardHostname(model.id, s.domain),
      ...model.environments.map((e) => regionalHostname(model.id, e.name, s.domain)),
    ];
    for (const name of hosts) {
      const parsed = parseHost(name, s.domain.toLowerCase().replace(/\.$/, ""));
      if (!parsed.ok) continue;
      for (const path of ["/predict", "/environments/production/predict", "/development/predict", "/wake"]) {
        const d = decideRoute(index, {
          host: parsed.host,
          method: "POST",
          path,
          keyHash: s.api_keys[0]?.hash ?? null,
          forwardedFrom: null,
          localReady: { has: () => true },
          scheme: "http",
        });
        if (parsed.host.form !== "regional" || d.kind === "refuse") continue;
        const env = model.environments.find(
          (e) => parsed.host.form === "regional" && e.name === parsed.host.environment,
        );
        if (env?.region == null) continue;
        if (d.kind === "serve" && s.plane.region !== env.region)
          throw new Error(`regional ${name} served in ${s.plane.region}`);
        if (d.kind === "forward") {
          for (const p of d.planes)
            if (regionOf.get(p.name) !== env.region)
              throw new Error(`regional ${name} forwarded to ${p.name}`);
        }
      }
    }
  }
}

export const snapshotTarget: FuzzTarget<Case> = {
  name: "snapshot",
  lanes: 1,
  batchCases: 20_000,
  shrink: true,
  async open() {
    const tally = new Map<string, number>();
    const planeText = Buffer.from(JSON.stringify(BASE));
    const dnsText = Buffer.from(JSON.stringify(DNS_FIXTURE));
    return {
      tally,
      arbitrary: fc.oneof(
        {
          weight: 5,
          arbitrary: fc.record({
            kind: fc.constant("plane" as const),
            edits: fc.array(edit, { minLength: 0, maxLength: 4 }),
          }),
        },
        {
          weight: 2,
          arbitrary: fc.record({
            kind: fc.constant("dns" as const),
            edits: fc.array(edit, { minLength: 0, maxLength: 4 }),
          }),
        },
        {
          weight: 2,
          arbitrary: fc.record({
            kind: fc.constant("plane-text" as const),
            mutations: fc.array(mutation, { minLength: 1, maxLength: 4 }),
          }),
        },
        {
          weight: 1,
          arbitrary: fc.record({
            kind: fc.constant("dns-text" as const),
            mutations: fc.array(mutation, { minLength: 1, maxLength: 4 }),
          }),
        },
      ),
      check(c) {
        let value: unknown;
        if ("edits" in c) value = applyEdits(c.kind === "plane" ? BASE : DNS_FIXTURE, c.edits);
        else {
          // The watcher parses the body as JSON first; text that is not JSON never reaches the check.
          try {
            value = JSON.parse(
              mutate(c.kind === "plane-text" ? planeText : dnsText, c.mutations).toString("utf8"),
            );
          } catch {
            bump(tally, `${c.kind}: not JSON`);
            return;
          }
        }
        const plane = c.kind === "plane" || c.kind === "plane-text";
        if (plane) {
          const out = checkPlaneSnapshot(value, OWNER);
          if (out.ok) {
            bump(tally, "plane: accepted");
            routeEverything(out.snapshot);
          } else {
            bump(tally, "plane: refused");
            if (
              typeof out.field !== "string" ||
              typeof out.message !== "string" ||
              out.message.length > 400
            ) {
              throw new Error(`refusal not bounded: ${JSON.stringify(out).slice(0, 600)}`);
            }
          }
        } else {
          const out = checkDnsSnapshot(value);
          if (out.ok) {
            bump(tally, "dns: accepted");
            for (const m of out.snapshot.models) {
              for (const name of [
                `model-${m.id}.${out.snapshot.domain}`,
                ...m.regional_environments.map((e) => `model-${m.id}-${e.name}.${out.snapshot.domain}`),
              ]) {
                for (const type of ["A", "AAAA", "ANY", "NS"])
                  answerQuestion(ZONE, out.snapshot, { name, type, class: "IN" } as never);
              }
            }
          } else bump(tally, "dns: refused");
        }
        // A slow check is slow every time; a pause of a loaded machine is not.
        const ms = fastestOf(3, () => (plane ? checkPlaneSnapshot(value, OWNER) : checkDnsSnapshot(value)));
        if (ms > 100) throw new Error(`check took ${ms.toFixed(0)} ms at best of 3`);
      },
      async close() {},
    };
  },
};
