// `meridian dns` as an operator runs it: flag parsing, and the real process (bin/meridian.js) serving a
// static snapshot file, following a control plane, surviving a restart with the control plane down, and
// exiting 0 on SIGTERM.
import { type ChildProcess, spawn } from "node:child_process";
import { createSocket } from "node:dgram";
import { once } from "node:events";
import { mkdtemp, readFile, writeFile } from "node:fs/promises";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import dnsPacket from "dns-packet";
import { afterEach, describe, expect, it } from "vitest";
import type { DnsSnapshot } from "../core/snapshot.ts";
import { type DnsFlags, parseDnsConfig } from "./command.ts";

const BIN = resolve(import.meta.dirname, "../../bin/meridian.js");

describe("parseDnsConfig", () => {
  const base: DnsFlags = {
    listen: "127.0.0.1:5353",
    domain: "meridian.test",
    controlUrl: "http://127.0.0.1:8080/prefix",
    tokenFile: "/tmp/token",
  };

  it("builds a frozen config with the snapshot endpoint and cache file", () => {
    const outcome = parseDnsConfig({ ...base, dataDir: "/var/lib/meridian", ttl: "30" });
    expect(outcome).toEqual({
      ok: true,
      config: {
        host: "127.0.0.1",
        port: 5353,
        domain: "meridian.test",
        ttl: 30,
        nsName: null,
        nsAddresses: ["127.0.0.1"],
        origin: {
          kind: "control",
          url: "http://127.0.0.1:8080/prefix/v1/internal/dns/snapshot",
          tokenFile: "/tmp/token",
          cacheFile: "/var/lib/meridian/dns-snapshot.json",
        },
      },
    });
    expect(outcome.ok && Object.isFrozen(outcome.config) && Object.isFrozen(outcome.config.origin)).toBe(
      true,
    );
  });

  it("accepts IPv6, a static snapshot file and explicit NS addresses", () => {
    const outcome = parseDnsConfig({
      listen: "[::]:53",
      domain: "meridian.test",
      snapshotFile: "zone.json",
      nsName: "ns1.example.org",
      nsAddress: "192.0.2.1, 2001:db8::1",
    });
    expect(outcome.ok && outcome.config).toMatchObject({
      host: "::",
      port: 53,
      ttl: 5,
      nsName: "ns1.example.org",
      nsAddresses: ["192.0.2.1", "2001:db8::1"],
      origin: { kind: "file", file: "zone.json" },
    });
  });

  it.each<[Partial<DnsFlags>, RegExp]>([
    [{ listen: "localhost:53" }, /--listen/],
    [{ listen: "127.0.0.1" }, /--listen/],
    [{ listen: "127.0.0.1:70000" }, /--listen/],
    [{ ttl: "-1" }, /--ttl/],
    [{ ttl: "5s" }, /--ttl/],
    [{ ttl: "2147483648" }, /--ttl/],
    [{ domain: "bad..domain" }, /domain/],
    [{ nsAddress: "ns.example" }, /--ns-address/],
    [{ controlUrl: undefined }, /--control-url/],
    [{ controlUrl: "not a url" }, /--control-url/],
    [{ controlUrl: "ftp://x" }, /http/],
    [{ tokenFile: undefined }, /--token-file/],
    [{ snapshotFile: "x.json" }, /not both/],
  ])("rejects %j", (override, message) => {
    const outcome = parseDnsConfig({ ...base, ...override });
    expect(outcome.ok).toBe(false);
    expect(!outcome.ok && outcome.message).toMatch(message);
  });
});

function snapshot(revision: number, eu: string[]): DnsSnapshot {
  return {
    revision,
    domain: "meridian.test",
    global_ingress: ["127.0.0.10"],
    regions: { eu },
    models: [{ id: "abc12345", regional_environments: [{ name: "prod-eu", region: "eu" }] }],
  };
}

const children: ChildProcess[] = [];
afterEach(() => {
  for (const child of children.splice(0)) if (child.exitCode === null) child.kill("SIGKILL");
});

/** Starts `meridian dns` and resolves with its UDP/TCP port once it logs that it listens. */
async function startDns(args: string[]): Promise<{ child: ChildProcess; port: number; logs: string[] }> {
  const child = spawn(
    process.execPath,
    [BIN, "dns", "--listen", "127.0.0.1:0", "--domain", "meridian.test", ...args],
    {
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  children.push(child);
  const logs: string[] = [];
  let stderr = "";
  child.stderr!.on("data", (d: Buffer) => {
    stderr += d.toString();
  });
  const port = await new Promise<number>((resolvePort, reject) => {
    let pending = "";
    child.stdout!.on("data", (d: Buffer) => {
      pending += d.toString();
      const lines = pending.split("\n");
      pending = lines.pop()!;
      for (const line of lines) {
        logs.push(line);
        const entry = JSON.parse(line) as { msg: string; port?: number };
        if (entry.msg === "dns listening") resolvePort(entry.port!);
      }
    });
    child.once("exit", (code) => reject(new Error(`meridian dns exited ${code}: ${stderr}`)));
  });
  return { child, port, logs };
}

async function resolveA(port: number, name: string): Promise<{ rcode: string; addresses: string[] }> {
  const socket = createSocket("udp4");
  try {
    socket.send(
      dnsPacket.encode({ type: "query", id: 7, questions: [{ name, type: "A" }] }),
      port,
      "127.0.0.1",
    );
    const [reply] = (await once(socket, "message", { signal: AbortSignal.timeout(2_000) })) as [Buffer];
    const decoded = dnsPacket.decode(reply) as dnsPacket.DecodedPacket & { rcode: string };
    return {
      rcode: decoded.rcode,
      addresses: (decoded.answers ?? []).map((a) => String((a as { data: unknown }).data)),
    };
  } finally {
    socket.close();
  }
}

async function terminate(child: ChildProcess): Promise<number | null> {
  const exited = once(child, "exit");
  child.kill("SIGTERM");
  const [code] = (await exited) as [number | null];
  return code;
}

describe("meridian dns (process)", () => {
  it("serves a static snapshot file and exits 0 on SIGTERM", async () => {
    const dir = await mkdtemp(join(tmpdir(), "meridian-dns-"));
    const file = join(dir, "snapshot.json");
    await writeFile(file, JSON.stringify(snapshot(1, ["127.0.0.20"])));
    const { child, port } = await startDns(["--snapshot-file", file]);
    expect(await resolveA(port, "model-abc12345-prod-eu.meridian.test")).toEqual({
      rcode: "NOERROR",
      addresses: ["127.0.0.20"],
    });
    expect((await resolveA(port, "model-zzzzzzzz.meridian.test")).rcode).toBe("NXDOMAIN");
    expect(await terminate(child)).toBe(0);
  });

  it("refuses to start with a snapshot file for another domain", async () => {
    const dir = await mkdtemp(join(tmpdir(), "meridian-dns-"));
    const file = join(dir, "snapshot.json");
    await writeFile(file, JSON.stringify({ ...snapshot(1, []), domain: "other.test" }));
    await expect(startDns(["--snapshot-file", file])).rejects.toThrow(/exited 1: .*is for other.test/);
  });

  it("follows the control plane, then serves its cache after a restart with the control plane down", async () => {
    const dir = await mkdtemp(join(tmpdir(), "meridian-dns-"));
    const tokenFile = join(dir, "token");
    await writeFile(tokenFile, "dns-token\n");
    let current = snapshot(1, ["127.0.0.20"]);
    const auth: Array<string | undefined> = [];
    const control = createServer((req, res) => {
      auth.push(req.headers.authorization);
      const url = new URL(req.url ?? "/", "http://x");
      if (url.pathname !== "/v1/internal/dns/snapshot") return void res.writeHead(404).end();
      if (current.revision > Number(url.searchParams.get("after"))) {
        res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(current));
      } else {
        setTimeout(() => res.writeHead(304).end(), 200);
      }
    });
    control.listen(0, "127.0.0.1");
    await once(control, "listening");
    const controlUrl = `http://127.0.0.1:${(control.address() as AddressInfo).port}`;
    const args = ["--control-url", controlUrl, "--token-file", tokenFile, "--data-dir", dir];

    const first = await startDns(args);
    const name = "model-abc12345-prod-eu.meridian.test";
    await until(async () => (await resolveA(first.port, name)).addresses[0] === "127.0.0.20");
    current = snapshot(2, ["127.0.0.21"]);
    await until(async () => (await resolveA(first.port, name)).addresses[0] === "127.0.0.21");
    expect(auth.every((a) => a === "Bearer dns-token")).toBe(true);
    expect(await terminate(first.child)).toBe(0);

    control.closeAllConnections();
    control.close();
    expect(JSON.parse(await readFile(join(dir, "dns-snapshot.json"), "utf8")).revision).toBe(2);

    const second = await startDns(args);
    expect(await resolveA(second.port, name)).toEqual({ rcode: "NOERROR", addresses: ["127.0.0.21"] });
    expect(await terminate(second.child)).toBe(0);
  });
});

async function until(check: () => Promise<boolean>, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((r) => setTimeout(r, 50));
  }
}
