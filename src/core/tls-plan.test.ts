// Which plane holds which certificate: tables of cases, and the property that matters — a regional
// hostname is only ever given to planes of its environment's region.
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import type { DnsSnapshot } from "./snapshot.ts";
import { certificatePlan, isCertificateHostname, wildcardNames } from "./tls-plan.ts";

const D = "meridian.internal";
const HOLDERS = [
  { name: "us-1", addresses: ["127.0.1.1"] },
  { name: "eu-1", addresses: ["127.0.2.1"] },
  { name: "eu-2", addresses: ["127.0.2.2"] },
  { name: "uk-1", addresses: ["127.0.3.1"] },
];

function snapshot(models: DnsSnapshot["models"], overrides: Partial<DnsSnapshot> = {}): DnsSnapshot {
  return {
    revision: 7,
    domain: D,
    global_ingress: ["127.0.1.1"],
    regions: { us: ["127.0.1.1"], eu: ["127.0.2.1", "127.0.2.2"], uk: ["127.0.3.1"] },
    models,
    ...overrides,
  };
}

describe("certificatePlan", () => {
  it("gives standard names to the global ingress and regional names to their region's planes only", () => {
    const plan = certificatePlan(
      snapshot([
        { id: "abcd1234", regional_environments: [{ name: "prod-eu", region: "eu" }] },
        { id: "wxyz9876", regional_environments: [{ name: "prod-uk", region: "uk" }] },
      ]),
      HOLDERS,
    );
    expect(Object.fromEntries(plan)).toEqual({
      "us-1": ["model-abcd1234.meridian.internal", "model-wxyz9876.meridian.internal"],
      "eu-1": ["model-abcd1234-prod-eu.meridian.internal"],
      "eu-2": ["model-abcd1234-prod-eu.meridian.internal"],
      "uk-1": ["model-wxyz9876-prod-uk.meridian.internal"],
    });
  });

  it("follows a restriction that moves: the name leaves eu and goes to uk", () => {
    const plan = certificatePlan(
      snapshot([{ id: "abcd1234", regional_environments: [{ name: "prod-eu", region: "uk" }] }]),
      HOLDERS,
    );
    expect(plan.get("eu-1")).toEqual([]);
    expect(plan.get("eu-2")).toEqual([]);
    expect(plan.get("uk-1")).toEqual(["model-abcd1234-prod-eu.meridian.internal"]);
  });

  it("gives a name to nobody when its region has no plane (DNS answers NODATA) or the model has none", () => {
    const plan = certificatePlan(
      snapshot([{ id: "abcd1234", regional_environments: [{ name: "prod-au", region: "au" }] }], {
        global_ingress: [],
      }),
      HOLDERS,
    );
    expect([...plan.values()].flat()).toEqual([]);
  });

  it("normalizes the domain as DNS does, and never emits a name DNS would not answer", () => {
    const plan = certificatePlan(
      snapshot(
        [
          { id: "abcd1234", regional_environments: [{ name: "development", region: "eu" }] },
          { id: "../../x", regional_environments: [{ name: "a/b", region: "eu" }] },
          { id: "ABCD1234", regional_environments: [] },
        ],
        { domain: "Meridian.Internal." },
      ),
      HOLDERS,
    );
    expect(plan.get("us-1")).toEqual(["model-abcd1234.meridian.internal"]);
    expect(plan.get("eu-1")).toEqual([]);
  });

  it("never gives a regional name to a plane outside the environment's region (property)", () => {
    const region = fc.constantFrom("us", "eu", "uk");
    const env = fc.record({
      name: fc.constantFrom("prod-us", "prod-eu", "staging", "x"),
      region,
    });
    const model = fc.record({
      id: fc.stringMatching(/^[a-z0-9]{8}$/),
      regional_environments: fc.array(env, { maxLength: 3 }),
    });
    const regionOf: Record<string, string> = {
      "us-1": "us",
      "eu-1": "eu",
      "eu-2": "eu",
      "uk-1": "uk",
    };
    fc.assert(
      fc.property(fc.array(model, { maxLength: 6 }), (models) => {
        const plan = certificatePlan(snapshot(models), HOLDERS);
        for (const [plane, names] of plan) {
          for (const name of names) {
            const label = name.split(".")[0]!;
            const regional = models.flatMap((m) =>
              m.regional_environments.filter((e) => `model-${m.id}-${e.name}` === label).map((e) => e.region),
            );
            if (label.length > "model-".length + 8) {
              expect(regional).toContain(regionOf[plane]);
            } else {
              expect(plane).toBe("us-1");
            }
          }
        }
      }),
    );
  });
});

describe("isCertificateHostname", () => {
  it.each([
    ["model-abcd1234.meridian.internal", true],
    ["model-abcd1234-prod-eu.meridian.internal", true],
    ["a.b", true],
    ["*.meridian.internal", false],
    ["model-*.meridian.internal", false],
    ["Model-abcd1234.meridian.internal", false],
    ["localhost", false],
    ["127.0.2.1", false],
    ["../etc/passwd", false],
    ["a/b.c", false],
    ["-a.b", false],
    ["a..b", false],
    ["", false],
    [`${"a".repeat(64)}.b`, false],
    [`${"a.".repeat(127)}ab`, false],
  ])("%s → %s", (name, ok) => {
    expect(isCertificateHostname(name)).toBe(ok);
  });
});

describe("wildcardNames", () => {
  it("finds the wildcards among a certificate's names", () => {
    expect(wildcardNames(["*.meridian.internal", "meridian.internal", "model-a.x"])).toEqual([
      "*.meridian.internal",
    ]);
    expect(wildcardNames(["model-a.x"])).toEqual([]);
  });
});
