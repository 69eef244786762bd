// The DNS server as a real resolver tool sees it: `dig` (Debian's bind9-dnsutils) against 127.0.0.1 —
// addresses per form, NXDOMAIN with SOA, TCP fallback after truncation, snapshot swaps.
import { execFile, execFileSync } from "node:child_process";
import { promisify } from "node:util";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { DnsSnapshot } from "../core/snapshot.ts";
import { staticSnapshotSource } from "../lib/watch.ts";
import { DnsServer } from "./server.ts";

const run = promisify(execFile);

function digPath(): string | null {
  try {
    return execFileSync("sh", ["-c", "command -v dig"], { encoding: "utf8" }).trim() || null;
  } catch {
    return null;
  }
}
const DIG = digPath();

/** 60 regional addresses: about 3 kB uncompressed, over the 1232-byte EDNS limit as well as 512. */
const big = Array.from({ length: 60 }, (_, i) => `10.9.0.${i + 1}`);

const snapshot: DnsSnapshot = {
  revision: 3,
  domain: "meridian.test",
  global_ingress: ["127.0.0.10", "::1"],
  regions: { us: ["127.0.0.10"], eu: ["127.0.0.20", "127.0.0.21"], big },
  models: [
    {
      id: "abc12345",
      regional_environments: [
        { name: "prod-eu", region: "eu" },
        { name: "wide", region: "big" },
      ],
    },
  ],
};

interface DigResult {
  status: string;
  flags: string[];
  answer: Array<{ name: string; ttl: number; type: string; data: string }>;
  authority: string[];
  output: string;
}

let server: DnsServer;

async function dig(...args: string[]): Promise<DigResult> {
  const { port } = server.address;
  const { stdout } = await run(DIG!, ["@127.0.0.1", "-p", String(port), "+time=2", "+tries=1", ...args]);
  const status = /status: ([A-Z]+)/.exec(stdout)?.[1] ?? "";
  const flags = (/;; flags: ([a-z ]+);/.exec(stdout)?.[1] ?? "").trim().split(/\s+/);
  const section = (title: string) => {
    // dig prints the final message last: after a TCP retry the sections of the retry are the ones to read.
    const start = stdout.lastIndexOf(`;; ${title} SECTION:`);
    if (start < 0) return [];
    const rest = stdout.slice(start).split("\n").slice(1);
    const end = rest.findIndex((line) => line.trim() === "");
    return rest.slice(0, end < 0 ? undefined : end);
  };
  const answer = section("ANSWER").map((line) => {
    const [name, ttl, , type, data] = line.split(/\s+/);
    return { name: name!, ttl: Number(ttl), type: type!, data: data! };
  });
  return { status, flags, answer, authority: section("AUTHORITY"), output: stdout };
}

describe.skipIf(DIG === null)(
  "dig against the DNS server (skipped: `dig` not installed; apt install bind9-dnsutils)",
  () => {
    beforeAll(async () => {
      server = new DnsServer({
        host: "127.0.0.1",
        port: 0,
        domain: "meridian.test",
        logger: pino({ level: "silent" }),
        snapshots: staticSnapshotSource(snapshot),
      });
      await server.start();
    });
    afterAll(async () => {
      await server.stop();
    });

    it("resolves a standard name to the global ingress", async () => {
      const a = await dig("model-abc12345.meridian.test", "A");
      expect(a.status).toBe("NOERROR");
      expect(a.flags).toContain("aa");
      expect(a.answer).toEqual([
        { name: "model-abc12345.meridian.test.", ttl: 5, type: "A", data: "127.0.0.10" },
      ]);
      const aaaa = await dig("model-abc12345.meridian.test", "AAAA");
      expect(aaaa.answer.map((r) => [r.type, r.data])).toEqual([["AAAA", "::1"]]);
    });

    it("resolves a regional name only to its region's ingresses", async () => {
      const eu = await dig("MODEL-abc12345-PROD-EU.meridian.test", "A");
      expect(eu.status).toBe("NOERROR");
      expect(eu.answer.map((r) => r.data).sort()).toEqual(["127.0.0.20", "127.0.0.21"]);
      const aaaa = await dig("model-abc12345-prod-eu.meridian.test", "AAAA");
      expect(aaaa.status).toBe("NOERROR");
      expect(aaaa.answer).toEqual([]);
      expect(aaaa.authority.join("\n")).toMatch(/SOA\s+ns\.meridian\.test\. hostmaster\.meridian\.test\. 3 /);
    });

    it("answers NXDOMAIN with the SOA for unknown names", async () => {
      for (const name of [
        "model-zzzzzzzz.meridian.test",
        "model-abc12345-staging.meridian.test",
        "www.meridian.test",
      ]) {
        const nx = await dig(name, "A");
        expect(nx.status, name).toBe("NXDOMAIN");
        expect(nx.flags).toContain("aa");
        expect(nx.authority.join("\n")).toMatch(/^meridian\.test\.\s+5\s+IN\s+SOA\s+ns\.meridian\.test\./);
      }
      expect((await dig("example.com", "A")).status).toBe("REFUSED");
    });

    it("answers SOA and NS at the apex", async () => {
      const soa = await dig("meridian.test", "SOA");
      expect(soa.answer[0]).toMatchObject({ name: "meridian.test.", type: "SOA", data: "ns.meridian.test." });
      const ns = await dig("meridian.test", "NS");
      expect(ns.answer).toEqual([{ name: "meridian.test.", ttl: 5, type: "NS", data: "ns.meridian.test." }]);
    });

    it("sets TC on an oversized UDP answer, and dig retries over TCP to get it whole", async () => {
      const name = "model-abc12345-wide.meridian.test";
      const truncated = await dig(name, "A", "+ignore");
      expect(truncated.flags).toContain("tc");
      expect(truncated.answer).toEqual([]);
      const classic = await dig(name, "A", "+noedns", "+ignore");
      expect(classic.flags).toContain("tc");

      const retried = await dig(name, "A");
      expect(retried.output).toContain("Truncated, retrying in TCP mode");
      expect(retried.answer.map((r) => r.data).sort()).toEqual([...big].sort());
      const tcp = await dig(name, "A", "+tcp");
      expect(tcp.flags).not.toContain("tc");
      expect(tcp.answer).toHaveLength(60);
    });

    it("a swapped snapshot takes effect on the next query", async () => {
      const name = "model-abc12345-prod-eu.meridian.test";
      server.setSnapshot({ ...snapshot, revision: 4, regions: { ...snapshot.regions, eu: ["127.0.0.28"] } });
      expect((await dig(name, "A")).answer.map((r) => r.data)).toEqual(["127.0.0.28"]);
      expect((await dig(name, "A", "+tcp")).answer.map((r) => r.data)).toEqual(["127.0.0.28"]);
      server.setSnapshot({ ...snapshot, revision: 5, models: [] });
      expect((await dig(name, "A")).status).toBe("NXDOMAIN");
    });
  },
);
