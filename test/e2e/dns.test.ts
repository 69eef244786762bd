// End to end with real processes: `meridian dns` following a real control plane (with a plane credential),
// four planes on their own loopback addresses (us-1 the global ingress, eu-1, eu-2, uk-1), answers read
// with `dig` and with a dns-packet client over UDP and TCP (DESIGN.md §2.2, §2.7): standard names to the
// global ingress, regional names only to the region's ingresses, NXDOMAIN for what does not exist, a
// restriction visible within a second, and answers with the control plane stopped.

import { execFile } from "node:child_process";
import dgram from "node:dgram";
import { mkdirSync, rmSync } from "node:fs";
import net from "node:net";
import { join } from "node:path";
import { promisify } from "node:util";
import dnsPacket from "dns-packet";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  type Cluster,
  DOMAIN,
  eventually,
  type ManagedProcess,
  startCluster,
  startProcess,
} from "../support/cluster.ts";

const run = promisify(execFile);
const DNS_HOST = "127.0.0.1";

interface Answer {
  rcode: string;
  aa: boolean;
  addresses: string[];
}

/** One query with `dig` (Debian's bind9-dnsutils); `+tcp` as an extra argument for TCP. */
async function dig(port: number, name: string, ...args: string[]): Promise<Answer & { output: string }> {
  const { stdout } = await run("dig", [
    `@${DNS_HOST}`,
    "-p",
    String(port),
    "+time=2",
    "+tries=1",
    name,
    ...args,
  ]);
  const flags = (/;; flags: ([a-z ]+);/.exec(stdout)?.[1] ?? "").trim().split(/\s+/);
  const start = stdout.lastIndexOf(";; ANSWER SECTION:");
  const lines = start < 0 ? [] : stdout.slice(start).split("\n").slice(1);
  const end = lines.findIndex((l) => l.trim() === "");
  const addresses = lines
    .slice(0, end < 0 ? undefined : end)
    .map((l) => l.split(/\s+/))
    .filter((f) => f[3] === "A")
    .map((f) => f[4]!)
    .sort();
  return {
    rcode: /status: ([A-Z]+)/.exec(stdout)?.[1] ?? "",
    aa: flags.includes("aa"),
    addresses,
    output: stdout,
  };
}

/** dns-packet decodes the RCODE (as its name) but its types do not declare it. */
function toAnswer(packet: dnsPacket.Packet & { rcode?: string }): Answer {
  return {
    rcode: packet.rcode ?? "",
    aa: ((packet.flags ?? 0) & dnsPacket.AUTHORITATIVE_ANSWER) !== 0,
    addresses: (packet.answers ?? [])
      .filter((a) => a.type === "A")
      .map((a) => (a as { data: string }).data)
      .sort(),
  };
}

let queryId = 1;
function query(name: string): Buffer {
  queryId = (queryId % 65535) + 1;
  return dnsPacket.encode({
    type: "query",
    id: queryId,
    flags: dnsPacket.RECURSION_DESIRED,
    questions: [{ type: "A", name, class: "IN" }],
  });
}

/** One A query over UDP with dns-packet; rejects after `timeoutMs`. */
function udpQuery(port: number, name: string, timeoutMs = 1000): Promise<Answer> {
  const socket = dgram.createSocket("udp4");
  const message = query(name);
  return new Promise<Answer>((ok, fail) => {
    const timer = setTimeout(
      () => fail(new Error(`no UDP answer for ${name} within ${timeoutMs} ms`)),
      timeoutMs,
    );
    socket.on("message", (msg) => {
      const packet = dnsPacket.decode(msg);
      if (packet.id !== message.readUInt16BE(0)) return;
      clearTimeout(timer);
      ok(toAnswer(packet));
    });
    socket.on("error", (err) => {
      clearTimeout(timer);
      fail(err);
    });
    socket.send(message, port, DNS_HOST);
  }).finally(() => socket.close());
}

/** One A query over TCP (RFC 1035 §4.2.2: two-byte length prefix) with dns-packet. */
function tcpQuery(port: number, name: string, timeoutMs = 2000): Promise<Answer> {
  const socket = net.connect(port, DNS_HOST);
  return new Promise<Answer>((ok, fail) => {
    const timer = setTimeout(
      () => fail(new Error(`no TCP answer for ${name} within ${timeoutMs} ms`)),
      timeoutMs,
    );
    let buf = Buffer.alloc(0);
    socket.on("connect", () => socket.write(dnsPacket.streamEncode(dnsPacket.decode(query(name)))));
    socket.on("data", (chunk) => {
      buf = Buffer.concat([buf, chunk]);
      if (buf.length < 2 || buf.length < 2 + buf.readUInt16BE(0)) return;
      clearTimeout(timer);
      ok(toAnswer(dnsPacket.streamDecode(buf)));
    });
    socket.on("error", (err) => {
      clearTimeout(timer);
      fail(err);
    });
  }).finally(() => socket.destroy());
}

describe("meridian dns against a real control plane", () => {
  let cluster: Cluster;
  let dns: ManagedProcess | null = null;
  let port = 0;
  let model: string;
  let dnsArgs: string[];

  const ip = (plane: string) => cluster.plane(plane).host;

  async function startDns(): Promise<void> {
    dns = startProcess(dnsArgs);
    port = (await dns.waitForLog("dns listening")).port as number;
    expect(port).toBeGreaterThan(0);
  }

  beforeAll(async () => {
    cluster = await startCluster({
      planes: [
        { name: "us-1", region: "us", global: true },
        { name: "eu-1", region: "eu" },
        { name: "eu-2", region: "eu" },
        { name: "uk-1", region: "uk" },
      ],
    });
    const api = cluster.api;
    expect(
      (await api.patch("/v1/environment_groups/prod-eu", { region_restriction: { region: "eu" } })).status,
    ).toBe(200);
    const created = await api.createModel("resolved", "hello-js", { environment_name: "prod-eu" });
    expect(created.status, JSON.stringify(created.body)).toBe(200);
    model = created.body.model.id;
    const env = await api.post(`/v1/models/${model}/environments`, { name: "prod-uk" });
    expect(env.status, JSON.stringify(env.body)).toBe(200);

    // The DNS responder authenticates with a plane credential (any plane's may read the DNS snapshot).
    const dataDir = join(cluster.dir, "dns");
    mkdirSync(dataDir, { recursive: true });
    dnsArgs = [
      "dns",
      "--control-url",
      cluster.controlUrl,
      "--token-file",
      join(cluster.dir, "planes", "uk-1.token"),
      "--listen",
      `${DNS_HOST}:0`,
      "--domain",
      DOMAIN,
      "--data-dir",
      dataDir,
    ];
    await startDns();
    await eventually(async () => (await udpQuery(port, `model-${model}.${DOMAIN}`)).rcode === "NOERROR");
  }, 80_000);

  afterAll(async () => {
    await dns?.stop();
    await cluster?.stop();
    if (cluster) rmSync(cluster.dir, { recursive: true, force: true });
  }, 60_000);

  it("answers each form with the right ingresses, NXDOMAIN for what does not exist (dig, UDP and TCP)", async () => {
    const cases: Array<[string, string, string[]]> = [
      [`model-${model}.${DOMAIN}`, "NOERROR", [ip("us-1")]],
      [`MODEL-${model.toUpperCase()}.${DOMAIN.toUpperCase()}`, "NOERROR", [ip("us-1")]],
      [`model-${model}-prod-eu.${DOMAIN}`, "NOERROR", [ip("eu-1"), ip("eu-2")].sort()],
      [`model-zz999999.${DOMAIN}`, "NXDOMAIN", []],
      [`model-zz999999-prod-eu.${DOMAIN}`, "NXDOMAIN", []],
      [`model-${model}-nope.${DOMAIN}`, "NXDOMAIN", []],
      // Environments without a region restriction have no regional endpoint.
      [`model-${model}-production.${DOMAIN}`, "NXDOMAIN", []],
      [`model-${model}-prod-uk.${DOMAIN}`, "NXDOMAIN", []],
    ];
    for (const [name, rcode, addresses] of cases) {
      for (const [how, answer] of [
        ["dig", await dig(port, name)],
        ["dig +tcp", await dig(port, name, "+tcp")],
        ["udp", await udpQuery(port, name)],
        ["tcp", await tcpQuery(port, name)],
      ] as const) {
        expect({ rcode: answer.rcode, addresses: answer.addresses }, `${how} ${name}`).toEqual({
          rcode,
          addresses,
        });
        expect(answer.aa, `${how} ${name}`).toBe(true);
      }
    }
    // The regional name never carries another region's address, and dig went over TCP when asked.
    const tcp = await dig(port, `model-${model}-prod-eu.${DOMAIN}`, "+tcp");
    expect(tcp.output).toMatch(/\(TCP\)/);
    for (const other of ["us-1", "uk-1"]) expect(tcp.addresses).not.toContain(ip(other));
    // The zone's apex is served authoritatively.
    const soa = await dig(port, DOMAIN, "SOA");
    expect(soa.rcode).toBe("NOERROR");
    expect(soa.output).toMatch(new RegExp(`${DOMAIN.replace(".", "\\.")}\\.\\s+\\d+\\s+IN\\s+SOA`));
  });

  it("shows a region restriction applied through the management API within a second", async () => {
    const name = `model-${model}-prod-uk.${DOMAIN}`;
    expect((await udpQuery(port, name)).rcode).toBe("NXDOMAIN");

    const measure = async (body: unknown, done: (a: Answer) => boolean): Promise<number> => {
      const started = performance.now();
      const res = await cluster.api.patch("/v1/environment_groups/prod-uk", body);
      expect(res.status, JSON.stringify(res.body)).toBe(200);
      await eventually(async () => done(await udpQuery(port, name)), 5_000, 10);
      return performance.now() - started;
    };
    const applied = await measure(
      { region_restriction: { region: "uk" } },
      (a) => a.rcode === "NOERROR" && a.addresses.join() === ip("uk-1"),
    );
    console.log(`region restriction visible in DNS after ${applied.toFixed(0)} ms`);
    expect(applied).toBeLessThan(1000);
    const dug = await dig(port, name);
    expect(dug.addresses).toEqual([ip("uk-1")]);

    const lifted = await measure({ region_restriction: null }, (a) => a.rcode === "NXDOMAIN");
    console.log(`region restriction lifted in DNS after ${lifted.toFixed(0)} ms`);
    expect(lifted).toBeLessThan(1000);
    expect((await dig(port, name)).rcode).toBe("NXDOMAIN");
  });

  it("keeps answering with the control plane stopped, also after its own restart", async () => {
    await cluster.stopControl();
    const check = async () => {
      expect((await udpQuery(port, `model-${model}.${DOMAIN}`)).addresses).toEqual([ip("us-1")]);
      const regional = await dig(port, `model-${model}-prod-eu.${DOMAIN}`);
      expect(regional.rcode).toBe("NOERROR");
      expect(regional.addresses).toEqual([ip("eu-1"), ip("eu-2")].sort());
      expect((await tcpQuery(port, `model-${model}-nope.${DOMAIN}`)).rcode).toBe("NXDOMAIN");
    };
    await check();
    // Long enough for the watcher to notice and back off at least once.
    await new Promise((r) => setTimeout(r, 1500));
    await check();
    expect(dns!.output.some((l) => l.includes('"state":"disconnected"') || l.includes("ECONNREFUSED"))).toBe(
      true,
    );

    await dns!.stop();
    await startDns();
    await check();
  }, 30_000);
});
