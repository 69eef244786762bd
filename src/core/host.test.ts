// Host parsing: table of cases for every rule, and properties (round-trip of valid hosts; totality).
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { hostnameOf, normalizeDomain, parseHost, regionalHostname, standardHostname } from "./host.ts";

const D = "meridian.localhost";

describe("parseHost", () => {
  it.each([
    ["model-abcd1234.meridian.localhost", { form: "standard", modelId: "abcd1234", port: null }],
    ["MODEL-ABCD1234.Meridian.LOCALHOST", { form: "standard", modelId: "abcd1234", port: null }],
    ["model-abcd1234.meridian.localhost:8080", { form: "standard", modelId: "abcd1234", port: 8080 }],
    ["model-abcd1234.meridian.localhost.", { form: "standard", modelId: "abcd1234", port: null }],
    ["model-abcd1234.meridian.localhost.:443", { form: "standard", modelId: "abcd1234", port: 443 }],
    ["model-abcd1234.meridian.localhost:", { form: "standard", modelId: "abcd1234", port: null }],
    [
      "model-abcd1234-prod-eu.meridian.localhost",
      { form: "regional", modelId: "abcd1234", environment: "prod-eu", port: null },
    ],
    [
      "model-12345678-production.meridian.localhost:1",
      { form: "regional", modelId: "12345678", environment: "production", port: 1 },
    ],
    [
      `model-abcd1234-${"e".repeat(40)}.meridian.localhost`,
      { form: "regional", modelId: "abcd1234", environment: "e".repeat(40), port: null },
    ],
  ])("accepts %s", (value, host) => {
    expect(parseHost(value, D)).toEqual({ ok: true, host });
  });

  it.each([
    [undefined, "invalid_host"],
    ["", "invalid_host"],
    [":80", "invalid_host"],
    ["user@model-abcd1234.meridian.localhost", "invalid_host"],
    ["model-abcd1234.meridian.localhost:80:80", "invalid_host"],
    ["model-abcd1234.meridian.localhost:http", "invalid_host"],
    ["model-abcd1234.meridian.localhost:99999", "invalid_host"],
    ["model-abcd1234.meridian.localhost/predict", "invalid_host"],
    ["model-abcd1234 .meridian.localhost", "invalid_host"],
    ["model-abcd1234.meridian.localhost\r\n", "invalid_host"],
    ["model-abcd1234.meridian%zz.localhost", "invalid_host"],
    // Found by the fuzzer (test/fuzz/targets/host.ts): KELVIN SIGN lowercases to `k`.
    ["model-abcd123\u212a.meridian.localhost", "invalid_host"],
    ["model-abcd1234-prod-\u212au.meridian.localhost", "invalid_host"],
    ["[::1", "invalid_host"],
    ["[::1]x", "invalid_host"],
    ["[zz]", "invalid_host"],
    ["a".repeat(300), "invalid_host"],
    ["[::1]", "unknown_host"],
    ["[::1]:8080", "unknown_host"],
    ["127.0.0.1", "unknown_host"],
    ["127.0.0.1:80", "unknown_host"],
    ["meridian.localhost", "unknown_host"],
    ["localhost", "unknown_host"],
    ["model-abcd1234.other.example", "unknown_host"],
    ["model-abcd1234.meridian.localhost.evil.example", "unknown_host"],
    ["x.model-abcd1234.meridian.localhost", "unknown_host"],
    ["model-abcd123.meridian.localhost", "unknown_host"],
    ["model-abcd12345.meridian.localhost", "unknown_host"],
    ["model-abcd-234.meridian.localhost", "unknown_host"],
    ["model-abcd1234-.meridian.localhost", "unknown_host"],
    ["model-abcd1234--eu.meridian.localhost", "unknown_host"],
    ["model-abcd1234-development.meridian.localhost", "unknown_host"],
    [`model-abcd1234-${"e".repeat(41)}.meridian.localhost`, "unknown_host"],
    ["model-abcd1234-prod_eu.meridian.localhost", "unknown_host"],
    ["model-abcd1234.meridian.localhost..", "unknown_host"],
    ["mod-abcd1234.meridian.localhost", "unknown_host"],
    [".meridian.localhost", "unknown_host"],
    ["model-abcd1234%2emeridian.localhost", "unknown_host"],
  ])("refuses %j with %s", (value, code) => {
    const out = parseHost(value, D);
    expect(out.ok).toBe(false);
    if (!out.ok) expect(out.code).toBe(code);
  });

  it("normalizes the domain", () => {
    expect(normalizeDomain("Meridian.Localhost.")).toBe(D);
  });
});

const modelId = fc.stringMatching(/^[a-z0-9]{8}$/);
const environment = fc
  .stringMatching(/^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?$/)
  .filter((e) => e !== "development");
const domain = fc.constantFrom("meridian.localhost", "api.example.com", "a.b.c.d");
const casing = fc.array(fc.boolean(), { minLength: 80, maxLength: 80 });

function recase(s: string, flips: boolean[]): string {
  return [...s].map((c, i) => (flips[i % flips.length] ? c.toUpperCase() : c)).join("");
}

describe("parseHost properties", () => {
  it("round-trips every generated valid host, in any case, with any port and trailing dot", () => {
    fc.assert(
      fc.property(
        modelId,
        fc.option(environment, { nil: null }),
        domain,
        casing,
        fc.option(fc.integer({ min: 0, max: 65535 }), { nil: null }),
        fc.boolean(),
        (id, env, dom, flips, port, dot) => {
          const name = env === null ? standardHostname(id, dom) : regionalHostname(id, env, dom);
          const value = `${recase(name, flips)}${dot ? "." : ""}${port === null ? "" : `:${port}`}`;
          const out = parseHost(value, dom);
          expect(out.ok).toBe(true);
          if (!out.ok) return;
          expect(out.host.modelId).toBe(id);
          expect(out.host.port).toBe(port);
          expect(out.host.form).toBe(env === null ? "standard" : "regional");
          if (out.host.form === "regional") expect(out.host.environment).toBe(env);
          expect(hostnameOf(out.host, dom)).toBe(name);
        },
      ),
      { numRuns: 2000 },
    );
  });

  it("never throws and always answers with a known outcome", () => {
    fc.assert(
      fc.property(fc.oneof(fc.string(), fc.string({ unit: "binary" }), fc.webUrl()), domain, (value, dom) => {
        const out = parseHost(value, dom);
        if (out.ok) {
          expect(value.toLowerCase()).toContain(dom);
        } else {
          expect(["invalid_host", "unknown_host"]).toContain(out.code);
        }
      }),
      { numRuns: 3000 },
    );
  });

  it("refuses any host carrying userinfo", () => {
    fc.assert(
      fc.property(fc.string(), modelId, (user, id) => {
        expect(parseHost(`${user}@${standardHostname(id, D)}`, D).ok).toBe(false);
      }),
    );
  });
});
