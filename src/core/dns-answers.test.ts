// Table and property tests of the DNS answer function: every form of name, every negative case, and the
// residency rule (a regional name never answers an address outside its region).
import { isIP } from "node:net";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  answerQuestion,
  checkDnsSnapshot,
  type DnsAnswer,
  type DnsQuestion,
  dnsZone,
  ipFamily,
  normalizeDnsName,
  parseEndpointLabel,
} from "./dns-answers.ts";
import { parseHost, regionalHostname, standardHostname } from "./host.ts";
import type { DnsSnapshot } from "./snapshot.ts";

const zone = dnsZone({ domain: "Meridian.Test.", nsAddresses: ["127.0.0.53", "::53"], ttl: 5 });

const snapshot: DnsSnapshot = {
  revision: 42,
  domain: "meridian.test",
  global_ingress: ["10.0.0.1", "10.0.0.2", "2001:db8::1"],
  regions: {
    us: ["10.0.0.1", "10.0.0.2"],
    eu: ["10.1.0.1", "2001:db8:e::1"],
    uk: [],
    au: ["10.3.0.1"],
  },
  models: [
    {
      id: "abc12345",
      regional_environments: [
        { name: "prod-eu", region: "eu" },
        { name: "prod-uk", region: "uk" },
        { name: "prod-mars", region: "mars" },
        { name: "production", region: "au" },
      ],
    },
    { id: "zz9plur1", regional_environments: [] },
    { id: "00000000", regional_environments: [] },
  ],
};

const ask = (name: string, type = "A", klass = "IN", snap: DnsSnapshot | null = snapshot): DnsAnswer =>
  answerQuestion(zone, snap, { name, type, class: klass });
const data = (a: DnsAnswer) => a.answers.map((r) => r.data);
const soaOf = (a: DnsAnswer) => a.authorities.filter((r) => r.type === "SOA");

describe("dnsZone", () => {
  it("normalizes the domain and derives defaults", () => {
    expect(zone.domain).toBe("meridian.test");
    expect(zone.nsName).toBe("ns.meridian.test");
    expect(zone.hostmaster).toBe("hostmaster.meridian.test");
    expect(zone.negativeTtl).toBe(5);
    expect(Object.isFrozen(zone)).toBe(true);
  });

  it.each([
    [{ domain: "" }],
    [{ domain: "a..b" }],
    [{ domain: "x.test", ttl: -1 }],
    [{ domain: "x.test", ttl: 1.5 }],
    [{ domain: "x.test", ttl: 2 ** 31 }],
    [{ domain: "x.test", nsAddresses: ["ns.example"] }],
    [{ domain: `${"a".repeat(64)}.test` }],
  ])("rejects %j", (options) => {
    expect(() => dnsZone(options)).toThrow(RangeError);
  });
});

describe("answerQuestion: positive answers", () => {
  it.each<[string, string, string[]]>([
    ["standard name → global ingress (A)", "model-abc12345.meridian.test", ["10.0.0.1", "10.0.0.2"]],
    ["standard name → global ingress (AAAA)", "model-abc12345.meridian.test|AAAA", ["2001:db8::1"]],
    ["regional name → its region only (A)", "model-abc12345-prod-eu.meridian.test", ["10.1.0.1"]],
    [
      "regional name → its region only (AAAA)",
      "model-abc12345-prod-eu.meridian.test|AAAA",
      ["2001:db8:e::1"],
    ],
    ["production may be regional too", "model-abc12345-production.meridian.test", ["10.3.0.1"]],
    ["names are case-insensitive (RFC 4343)", "MODEL-ABC12345-Prod-EU.MERIDIAN.test.", ["10.1.0.1"]],
    ["a trailing dot is the same name", "model-abc12345.meridian.test.", ["10.0.0.1", "10.0.0.2"]],
    ["an all-digit model id", "model-00000000.meridian.test", ["10.0.0.1", "10.0.0.2"]],
    ["the NS host's own address (A)", "ns.meridian.test", ["127.0.0.53"]],
    ["the NS host's own address (AAAA)", "ns.meridian.test|AAAA", ["::53"]],
  ])("%s", (_, spec, expected) => {
    const [name, type] = spec.split("|") as [string, string | undefined];
    const answer = ask(name, type ?? "A");
    expect(answer.rcode).toBe("NOERROR");
    expect(answer.authoritative).toBe(true);
    expect(data(answer)).toEqual(expected);
    expect(answer.answers.every((r) => r.ttl === 5 && r.type === (type ?? "A"))).toBe(true);
    expect(answer.authorities).toEqual([]);
  });

  it("keeps the question's spelling as the owner name (RFC 4343 §4.1)", () => {
    expect(ask("Model-ABC12345.meridian.TEST.").answers[0]!.name).toBe("Model-ABC12345.meridian.TEST");
  });

  it("answers SOA at the apex with the revision as serial", () => {
    const answer = ask("meridian.test", "SOA");
    expect(answer.rcode).toBe("NOERROR");
    expect(answer.answers).toEqual([
      {
        name: "meridian.test",
        type: "SOA",
        ttl: 5,
        data: {
          mname: "ns.meridian.test",
          rname: "hostmaster.meridian.test",
          serial: 42,
          refresh: 60,
          retry: 30,
          expire: 86_400,
          minimum: 5,
        },
      },
    ]);
  });

  it("answers NS at the apex with in-zone glue in the additional section", () => {
    const answer = ask("MERIDIAN.test", "NS");
    expect(answer.answers).toEqual([{ name: "meridian.test", type: "NS", ttl: 5, data: "ns.meridian.test" }]);
    expect(answer.additionals.map((r) => [r.type, r.data])).toEqual([
      ["A", "127.0.0.53"],
      ["AAAA", "::53"],
    ]);
  });

  it("gives no glue for an out-of-zone NS host", () => {
    const outside = dnsZone({ domain: "meridian.test", nsName: "ns1.example.org" });
    const answer = answerQuestion(outside, snapshot, { name: "meridian.test", type: "NS", class: "IN" });
    expect(data(answer)).toEqual(["ns1.example.org"]);
    expect(answer.additionals).toEqual([]);
    expect(
      answerQuestion(outside, snapshot, { name: "ns.meridian.test", type: "A", class: "IN" }).rcode,
    ).toBe("NXDOMAIN");
  });

  it("answers ANY with every record of the node (RFC 8482 allows a subset)", () => {
    expect(ask("model-abc12345-prod-eu.meridian.test", "ANY").answers.map((r) => r.type)).toEqual([
      "A",
      "AAAA",
    ]);
    expect(ask("meridian.test", "ANY").answers.map((r) => r.type)).toEqual(["SOA", "NS"]);
  });

  it("accepts QCLASS ANY", () => {
    expect(data(ask("model-abc12345-prod-eu.meridian.test", "A", "ANY"))).toEqual(["10.1.0.1"]);
  });

  it("answers duplicates once", () => {
    const dup = { ...snapshot, global_ingress: ["10.0.0.9", "10.0.0.9"] };
    expect(data(ask("model-abc12345.meridian.test", "A", "IN", dup))).toEqual(["10.0.0.9"]);
  });

  it("serial wraps into 32-bit serial space (RFC 1982)", () => {
    const big = { ...snapshot, revision: 2 ** 32 + 7 };
    expect(ask("meridian.test", "SOA", "IN", big).answers[0]!.data).toMatchObject({ serial: 7 });
  });
});

describe("answerQuestion: negative answers", () => {
  it.each<[string, string, string]>([
    ["unknown model", "model-zzzzzzzz.meridian.test", "NXDOMAIN"],
    ["unknown environment", "model-abc12345-staging.meridian.test", "NXDOMAIN"],
    ["environment of another model", "model-zz9plur1-prod-eu.meridian.test", "NXDOMAIN"],
    ["reserved environment name", "model-abc12345-development.meridian.test", "NXDOMAIN"],
    ["model id too short", "model-abc1234.meridian.test", "NXDOMAIN"],
    ["model id with uppercase folds, then must exist", "model-ABC12345-prod-eu.meridian.test", "NOERROR"],
    ["no separator after the id", "model-abc12345xprod-eu.meridian.test", "NXDOMAIN"],
    ["empty environment", "model-abc12345-.meridian.test", "NXDOMAIN"],
    ["trailing hyphen", "model-abc12345-prod-eu-.meridian.test", "NXDOMAIN"],
    ["environment too long", `model-abc12345-${"a".repeat(41)}.meridian.test`, "NXDOMAIN"],
    ["a name below an endpoint", "x.model-abc12345.meridian.test", "NXDOMAIN"],
    ["a random in-zone name", "www.meridian.test", "NXDOMAIN"],
    ["not a model prefix", "models-abc12345.meridian.test", "NXDOMAIN"],
    ["region restriction with no planes: NODATA", "model-abc12345-prod-uk.meridian.test", "NOERROR"],
    ["region unknown to the snapshot: NODATA", "model-abc12345-prod-mars.meridian.test", "NOERROR"],
  ])("%s → %s", (_, name, rcode) => {
    const answer = ask(name);
    expect(answer.rcode).toBe(rcode);
    expect(answer.authoritative).toBe(true);
    if (name.includes("ABC")) return;
    expect(answer.answers).toEqual([]);
    // RFC 2308 §3: negative answers carry the zone's SOA in the authority section.
    expect(soaOf(answer)).toHaveLength(1);
    expect(soaOf(answer)[0]!.name).toBe("meridian.test");
  });

  it.each<[string, string]>([
    ["model-abc12345.meridian.test", "MX"],
    ["model-abc12345.meridian.test", "TXT"],
    ["model-abc12345-prod-eu.meridian.test", "CNAME"],
    ["model-abc12345-production.meridian.test", "AAAA"],
    ["meridian.test", "A"],
    ["meridian.test", "AAAA"],
    ["ns.meridian.test", "MX"],
    ["model-abc12345.meridian.test", "UNKNOWN_999"],
  ])("%s %s is NODATA with SOA (RFC 2308 §2.2)", (name, type) => {
    const answer = ask(name, type);
    expect(answer.rcode).toBe("NOERROR");
    expect(answer.answers).toEqual([]);
    expect(soaOf(answer)).toHaveLength(1);
  });

  it.each<[string, string, string]>([
    ["example.com", "A", "IN"],
    ["meridian.test.example.com", "A", "IN"],
    ["xmeridian.test", "A", "IN"],
    ["test", "A", "IN"],
    [".", "NS", "IN"],
    ["model-abc12345.meridian.test", "A", "CH"],
    ["model-abc12345.meridian.test", "A", "UNKNOWN_7"],
    ["meridian.test", "AXFR", "IN"],
    ["meridian.test", "IXFR", "IN"],
  ])("%s %s %s → REFUSED without AA", (name, type, klass) => {
    const answer = ask(name, type, klass);
    expect(answer).toEqual({
      rcode: "REFUSED",
      authoritative: false,
      answers: [],
      authorities: [],
      additionals: [],
    });
  });

  it("answers SERVFAIL in the zone before any snapshot arrived", () => {
    expect(ask("model-abc12345.meridian.test", "A", "IN", null).rcode).toBe("SERVFAIL");
    expect(ask("meridian.test", "SOA", "IN", null).rcode).toBe("SERVFAIL");
    expect(ask("example.com", "A", "IN", null).rcode).toBe("REFUSED");
  });

  it("treats ancestors of an in-zone NS host as empty non-terminals (RFC 8020)", () => {
    const deep = dnsZone({ domain: "meridian.test", nsName: "ns1.dns.meridian.test" });
    const answer = answerQuestion(deep, snapshot, { name: "dns.meridian.test", type: "A", class: "IN" });
    expect(answer.rcode).toBe("NOERROR");
    expect(answer.answers).toEqual([]);
  });
});

describe("parseEndpointLabel", () => {
  it.each<[string, ReturnType<typeof parseEndpointLabel>]>([
    ["model-abc12345", { form: "standard", modelId: "abc12345" }],
    ["model-abc12345-prod-eu", { form: "regional", modelId: "abc12345", environment: "prod-eu" }],
    ["model-abc12345-a", { form: "regional", modelId: "abc12345", environment: "a" }],
    ["model-abc-1234", null],
    ["model-abc12345-", null],
    ["model-abc12345--x", null],
    ["model-", null],
    ["model-abc12345-development", null],
  ])("%s", (label, expected) => {
    expect(parseEndpointLabel(label)).toEqual(expected);
  });

  it("round-trips every valid id and environment name", () => {
    const id = fc.stringMatching(/^[a-z0-9]{8}$/);
    const env = fc
      .stringMatching(/^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$/)
      .filter((e) => e !== "development" && e.length <= 40);
    fc.assert(
      fc.property(id, env, (modelId, environment) => {
        expect(parseEndpointLabel(`model-${modelId}`)).toEqual({ form: "standard", modelId });
        expect(parseEndpointLabel(`model-${modelId}-${environment}`)).toEqual({
          form: "regional",
          modelId,
          environment,
        });
      }),
    );
  });
});

describe("agreement with the ingress's Host parsing (src/core/host.ts)", () => {
  it("DNS and the ingress read every label the same way", () => {
    const label = fc.oneof(
      fc.stringMatching(/^model-[a-z0-9]{8}(-[a-z0-9-]{0,42})?$/),
      fc.stringMatching(/^model-[a-z0-9-]{0,20}$/),
      fc.string({ maxLength: 30 }),
    );
    fc.assert(
      fc.property(label, (l) => {
        const dns = parseEndpointLabel(l);
        const host = parseHost(`${l}.meridian.test`, "meridian.test");
        if (dns === null) {
          expect(host.ok).toBe(false);
          return;
        }
        expect(host.ok && host.host).toMatchObject(dns);
        const name =
          dns.form === "standard"
            ? standardHostname(dns.modelId, "meridian.test")
            : regionalHostname(dns.modelId, dns.environment, "meridian.test");
        expect(name).toBe(`${l}.meridian.test`);
      }),
      { numRuns: 3000 },
    );
  });
});

describe("ipFamily", () => {
  it.each([
    ["127.0.0.1", 4],
    ["0.0.0.0", 4],
    ["255.255.255.255", 4],
    ["256.0.0.1", null],
    ["01.2.3.4", null],
    ["1.2.3", null],
    ["::", 6],
    ["::1", 6],
    ["2001:db8::1", 6],
    ["1:2:3:4:5:6:7:8", 6],
    ["1:2:3:4:5:6:7:8:9", null],
    ["1::2::3", null],
    ["::ffff:10.0.0.1", 6],
    ["1:2:3:4:5:6:1.2.3.4", 6],
    ["1:2:3:4:5:6:7:1.2.3.4", null],
    ["12345::", null],
    ["fe80::1%eth0", null],
    ["host.example", null],
    ["", null],
  ])("%s → %s", (address, family) => {
    expect(ipFamily(address)).toBe(family);
  });

  it("agrees with node:net isIP on generated addresses and near-misses", () => {
    const candidate = fc.oneof(
      fc.ipV4(),
      fc.ipV6(),
      fc.ipV4Extended(),
      fc.stringMatching(/^[0-9a-f:.]{0,20}$/),
    );
    fc.assert(
      fc.property(candidate, (address) => {
        const expected = isIP(address);
        expect(ipFamily(address) ?? 0).toBe(expected);
      }),
      { numRuns: 3000 },
    );
  });
});

describe("checkDnsSnapshot", () => {
  it("accepts the contract and warns about non-IP addresses", () => {
    const result = checkDnsSnapshot({
      ...snapshot,
      regions: { ...snapshot.regions, us: ["ingress.us:443"] },
    });
    expect(result.ok).toBe(true);
    expect(result.ok && result.warnings).toEqual([
      "regions.us: 'ingress.us:443' is not an IP address; ignored",
    ]);
  });

  it.each([
    null,
    [],
    { ...snapshot, revision: "1" },
    { ...snapshot, revision: -1 },
    { ...snapshot, revision: 1.5 },
    { ...snapshot, domain: "" },
    { ...snapshot, global_ingress: "10.0.0.1" },
    { ...snapshot, global_ingress: [1] },
    { ...snapshot, regions: { eu: "10.0.0.1" } },
    { ...snapshot, models: {} },
    { ...snapshot, models: [{ id: "abc12345" }] },
    { ...snapshot, models: [{ id: "abc12345", regional_environments: [{ name: "x" }] }] },
  ])("rejects %j", (value) => {
    expect(checkDnsSnapshot(value).ok).toBe(false);
  });
});

describe("properties", () => {
  const regionSlug = fc.constantFrom("us", "eu", "uk", "au", "jp");
  const ipv4 = fc.ipV4();
  const address = fc.oneof(ipv4, fc.ipV6());
  const modelId = fc.stringMatching(/^[a-z0-9]{8}$/);
  const envName = fc.stringMatching(/^[a-z]([a-z0-9-]{0,10}[a-z0-9])?$/).filter((e) => e !== "development");
  const arbSnapshot: fc.Arbitrary<DnsSnapshot> = fc.record({
    revision: fc.nat(),
    domain: fc.constant("meridian.test"),
    global_ingress: fc.array(address, { maxLength: 4 }),
    regions: fc.dictionary(regionSlug, fc.array(address, { maxLength: 4 })),
    models: fc.array(
      fc.record({
        id: modelId,
        regional_environments: fc.array(fc.record({ name: envName, region: regionSlug }), { maxLength: 3 }),
      }),
      { maxLength: 4 },
    ),
  });

  it("a regional name never answers an address outside its region", () => {
    fc.assert(
      fc.property(arbSnapshot, fc.nat(), fc.constantFrom("A", "AAAA", "ANY"), (snap, pick, type) => {
        const pairs = snap.models.flatMap((m) => m.regional_environments.map((e) => [m.id, e] as const));
        fc.pre(pairs.length > 0);
        const [id, env] = pairs[pick % pairs.length]!;
        const answer = answerQuestion(zone, snap, {
          name: `model-${id}-${env.name}.meridian.test`,
          type,
          class: "IN",
        });
        // Another model or an earlier duplicate entry may claim the same (id, name); the first one wins.
        const owner = snap.models.find((m) => m.id === id)!;
        const effective = owner.regional_environments.find((e) => e.name === env.name);
        if (effective === undefined) {
          expect(answer.rcode).toBe("NXDOMAIN");
          return;
        }
        const allowed = new Set(snap.regions[effective.region] ?? []);
        expect(answer.rcode).toBe("NOERROR");
        for (const record of answer.answers) expect(allowed.has(record.data as string)).toBe(true);
      }),
      { numRuns: 500 },
    );
  });

  it("a standard name answers exactly the global ingress of the asked family", () => {
    fc.assert(
      fc.property(arbSnapshot, fc.nat(), (snap, pick) => {
        fc.pre(snap.models.length > 0);
        const id = snap.models[pick % snap.models.length]!.id;
        const answer = answerQuestion(zone, snap, {
          name: `model-${id}.meridian.test`,
          type: "A",
          class: "IN",
        });
        const expected = [...new Set(snap.global_ingress.filter((a) => ipFamily(a) === 4))];
        expect(data(answer)).toEqual(expected);
      }),
    );
  });

  it("random questions never throw and always get a well-formed answer", () => {
    const label = fc.oneof(
      fc.stringMatching(/^[A-Za-z0-9-]{1,20}$/),
      fc.string({ maxLength: 70 }),
      fc.constantFrom("model-abc12345", "model-abc12345-prod-eu", "meridian", "test", "ns"),
    );
    const name = fc.oneof(
      fc.array(label, { maxLength: 5 }).map((labels) => labels.join(".")),
      fc.array(label, { maxLength: 3 }).map((labels) => [...labels, "meridian.test"].join(".")),
      fc.string(),
    );
    const question: fc.Arbitrary<DnsQuestion> = fc.record({
      name,
      type: fc.constantFrom("A", "AAAA", "NS", "SOA", "MX", "ANY", "AXFR", "UNKNOWN_65000", "OPT"),
      class: fc.constantFrom("IN", "ANY", "CH", "UNKNOWN_254"),
    });
    fc.assert(
      fc.property(fc.option(arbSnapshot, { nil: null }), question, (snap, q) => {
        const answer = answerQuestion(zone, snap, q);
        expect(["NOERROR", "NXDOMAIN", "REFUSED", "SERVFAIL"]).toContain(answer.rcode);
        if (answer.rcode === "NXDOMAIN" || (answer.rcode === "NOERROR" && answer.answers.length === 0)) {
          expect(soaOf(answer)).toHaveLength(1);
        }
        for (const r of answer.answers) {
          if (r.type === "A") expect(isIP(r.data)).toBe(4);
          if (r.type === "AAAA") expect(isIP(r.data)).toBe(6);
        }
        const inZone =
          normalizeDnsName(q.name) === "meridian.test" || normalizeDnsName(q.name).endsWith(".meridian.test");
        if (!inZone) expect(answer.rcode).toBe("REFUSED");
      }),
      { numRuns: 2000 },
    );
  });
});
