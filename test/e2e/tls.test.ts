// TLS keys that stay in region (issue 14, DESIGN.md §2.9), against a real `meridian up`: the certificate of a
// regional hostname exists only on planes of its environment's region, so a client sent to any other plane
// fails verification before it sends a byte — shown with Node's `tls` and with `openssl s_client` — and a
// restriction that moves takes the key with it within seconds. Standard names stay on the global ingress,
// and hops between planes verify each plane's own certificate.

import { type ChildProcess, execFile, spawn } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { copyFileSync, existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import net from "node:net";
import { join } from "node:path";
import tls from "node:tls";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BIN, freePort } from "../support/cluster.ts";
import { tempDir } from "../support/control.ts";

const run = promisify(execFile);
const PLANES = [
  { name: "us-1", host: "127.0.1.1" },
  { name: "eu-1", host: "127.0.2.1" },
  { name: "uk-1", host: "127.0.3.1" },
  { name: "au-1", host: "127.0.4.1" },
] as const;
type PlaneName = (typeof PLANES)[number]["name"];
const hostOf = (name: PlaneName) => PLANES.find((p) => p.name === name)!.host;

type Handshake = { ok: true; san: string | undefined } | { ok: false; code: string | undefined };

/** What a TLS client that trusts the installation's CA sees: the certificate, or why it refused it. */
function handshake(host: string, port: number, servername: string, ca: Buffer): Promise<Handshake> {
  return new Promise((resolve) => {
    const socket = tls.connect({ host, port, servername, ca });
    socket.once("secureConnect", () => {
      resolve({ ok: true, san: socket.getPeerCertificate().subjectaltname });
      socket.end();
    });
    socket.once("error", (err: NodeJS.ErrnoException) => resolve({ ok: false, code: err.code }));
  });
}

/** `openssl s_client` as an operator would run it; -verify_hostname is what makes it check the name. */
async function sClient(
  host: string,
  port: number,
  servername: string,
  caFile: string,
  checkName = true,
): Promise<{ code: number; out: string }> {
  const args = ["s_client", "-connect", `${host}:${port}`, "-servername", servername, "-CAfile", caFile];
  args.push("-verify_return_error", ...(checkName ? ["-verify_hostname", servername] : []));
  return new Promise((resolve) => {
    const child = execFile("openssl", args, { timeout: 15_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, out: `${stdout}\n${stderr}` });
    });
    child.stdin?.end();
  });
}

/**
 * A TCP relay in front of a plane that reads the TLS records the client sends (RFC 8446 §5.1: type, version,
 * length). Application data is content type 23; in TLS 1.3 every encrypted record is, the client's own
 * Finished included, so a client that sent no record of type 23 sent nothing encrypted at all.
 */
async function recordingRelay(
  host: string,
  port: number,
): Promise<{ port: number; types: number[]; close(): void }> {
  const types: number[] = [];
  const server = net.createServer((client) => {
    const upstream = net.connect(port, host);
    let pending = Buffer.alloc(0);
    client.on("data", (chunk) => {
      pending = Buffer.concat([pending, chunk]);
      while (pending.length >= 5 && pending.length >= 5 + pending.readUInt16BE(3)) {
        types.push(pending[0]!);
        pending = pending.subarray(5 + pending.readUInt16BE(3));
      }
      upstream.write(chunk);
    });
    upstream.pipe(client);
    client.on("close", () => upstream.destroy());
    upstream.on("close", () => client.destroy());
    client.on("error", () => upstream.destroy());
    upstream.on("error", () => client.destroy());
  });
  await new Promise<void>((ok) => server.listen(0, "127.0.0.1", ok));
  return { port: (server.address() as net.AddressInfo).port, types, close: () => server.close() };
}

/** Sends a request the moment the socket exists, before the handshake: Node holds it until verification. */
function eagerRequest(
  port: number,
  servername: string,
  ca: Buffer,
  apiKey: string,
  version: tls.SecureVersion,
): Promise<{ ok: true; response: string } | { ok: false; code: string | undefined }> {
  return new Promise((resolve) => {
    const socket = tls.connect({
      host: "127.0.0.1",
      port,
      servername,
      ca,
      minVersion: version,
      maxVersion: version,
    });
    const body = '{"prompt":"a secret the wrong region must not see"}';
    socket.write(
      `POST /predict HTTP/1.1\r\nhost: ${servername}\r\nauthorization: Api-Key ${apiKey}\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\nconnection: close\r\n\r\n${body}`,
    );
    let response = "";
    socket.on("data", (d) => {
      response += d;
    });
    socket.once("end", () => resolve({ ok: true, response }));
    socket.once("error", (err: NodeJS.ErrnoException) => resolve({ ok: false, code: err.code }));
  });
}

async function until<T>(what: string, probe: () => Promise<T | null>, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== null) return value;
    if (Date.now() > deadline) throw new Error(`not within ${timeoutMs / 1000} s: ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe("TLS keys that stay in region, on `meridian up`", () => {
  const dir = tempDir();
  const dataDir = join(dir, ".meridian");
  let child: ChildProcess;
  let output = "";
  let httpsPort: number;
  let ca: Buffer;
  let caFile: string;
  let apiKey: string;
  let modelId: string;
  let regional: string;
  let standard: string;
  const tlsDir = (plane: PlaneName) => join(dataDir, "planes", plane, "tls");
  const held = (plane: PlaneName) =>
    readdirSync(tlsDir(plane))
      .filter((f) => f.endsWith(".pem") && !f.endsWith(".key.pem"))
      .map((f) => f.slice(0, -".pem".length))
      .sort();

  async function meridian(...args: string[]): Promise<string> {
    const env: NodeJS.ProcessEnv = { ...process.env, XDG_CONFIG_HOME: join(dir, "config") };
    for (const k of ["MERIDIAN_API_URL", "MERIDIAN_API_KEY", "MERIDIAN_DNS", "MERIDIAN_CA_FILE"])
      delete env[k];
    const { stdout } = await run(process.execPath, [BIN, ...args], { cwd: dir, env, timeout: 60_000 });
    return stdout;
  }

  beforeAll(async () => {
    httpsPort = await freePort("127.0.1.1");
    const flags = [
      "--control-port",
      String(await freePort("127.0.0.1")),
      "--https-port",
      String(httpsPort),
      "--admin-port",
      String(await freePort("127.0.1.1")),
      "--dns",
      `127.0.0.1:${await freePort("127.0.0.1")}`,
    ];
    child = spawn(process.execPath, [BIN, "up", ...flags], { cwd: dir, stdio: ["ignore", "pipe", "pipe"] });
    child.stdout!.on("data", (d: Buffer) => (output += d.toString()));
    child.stderr!.on("data", (d: Buffer) => (output += d.toString()));
    await until(
      "meridian up is up",
      async () => {
        if (child.exitCode !== null) throw new Error(`meridian up exited ${child.exitCode}:\n${output}`);
        return output.includes("Stop with Ctrl-C") ? true : null;
      },
      120_000,
    );
    const manifest = JSON.parse(readFileSync(join(dataDir, "up.json"), "utf8"));
    caFile = manifest.ca_file;
    ca = readFileSync(caFile);
    apiKey = readFileSync(manifest.api_key_file, "utf8").trim();
    modelId = JSON.parse(readFileSync(join(dataDir, "example.json"), "utf8")).id;
    regional = `model-${modelId}-prod-eu.${manifest.domain}`;
    standard = `model-${modelId}.${manifest.domain}`;
  }, 150_000);

  afterAll(async () => {
    if (child && child.exitCode === null) {
      const exited = new Promise((ok) => child.once("exit", ok));
      child.kill("SIGINT");
      await exited;
    }
  }, 60_000);

  it("verifies a regional hostname of eu on eu's plane only (Node's tls)", async () => {
    const seen = Object.fromEntries(
      await Promise.all(
        PLANES.map(async (p) => [p.name, await handshake(p.host, httpsPort, regional, ca)] as const),
      ),
    );
    expect(seen).toEqual({
      "us-1": { ok: false, code: "ERR_TLS_CERT_ALTNAME_INVALID" },
      "eu-1": { ok: true, san: `DNS:${regional}` },
      "uk-1": { ok: false, code: "ERR_TLS_CERT_ALTNAME_INVALID" },
      "au-1": { ok: false, code: "ERR_TLS_CERT_ALTNAME_INVALID" },
    });
  });

  it("verifies it on eu's plane only (openssl s_client -verify_return_error -verify_hostname)", async () => {
    for (const p of PLANES) {
      const r = await sClient(p.host, httpsPort, regional, caFile);
      if (p.name === "eu-1") {
        expect(r.code, r.out).toBe(0);
        expect(r.out).toContain("Verify return code: 0 (ok)");
      } else {
        expect(r.code, `${p.name}: ${r.out}`).not.toBe(0);
        expect(r.out).toContain("hostname mismatch");
      }
    }
    // What the other planes present is a certificate of the CA, for their own address: without
    // -verify_hostname, s_client checks only the chain and would call it fine.
    const chainOnly = await sClient(hostOf("us-1"), httpsPort, regional, caFile, false);
    expect(chainOnly.code).toBe(0);
    expect(chainOnly.out).toContain(`subject=CN = us-1`);
  });

  it("fails before the client sends a byte of its request, in TLS 1.3 and 1.2", async () => {
    for (const version of ["TLSv1.3", "TLSv1.2"] as const) {
      const wrong = await recordingRelay(hostOf("us-1"), httpsPort);
      const right = await recordingRelay(hostOf("eu-1"), httpsPort);
      try {
        const refused = await eagerRequest(wrong.port, regional, ca, apiKey, version);
        expect(refused).toEqual({ ok: false, code: "ERR_TLS_CERT_ALTNAME_INVALID" });
        // Handshake (22), change_cipher_spec (20) and alert (21) records only: no application_data (23).
        expect(wrong.types.length).toBeGreaterThan(0);
        expect(
          wrong.types.filter((t) => t === 23),
          `${version}: ${wrong.types}`,
        ).toEqual([]);

        // The same client and request at eu's plane: served in eu, and the relay saw it as application data.
        const served = await eagerRequest(right.port, regional, ca, apiKey, version);
        expect(served.ok).toBe(true);
        expect(served.ok && served.response).toMatch(/^HTTP\/1\.1 200 /);
        expect(served.ok && served.response.toLowerCase()).toContain("x-meridian-region: eu");
        expect(right.types).toContain(23);
      } finally {
        wrong.close();
        right.close();
      }
    }
  });

  it("holds each name on the planes DNS sends it to: no wildcard anywhere, keys 0600, the CA key only in tls/", () => {
    expect(held("us-1")).toEqual([standard]);
    expect(held("eu-1")).toEqual([regional]);
    expect(held("uk-1")).toEqual([]);
    expect(held("au-1")).toEqual([]);
    const caKey = readFileSync(join(dataDir, "tls", "ca-key.pem"), "utf8");
    expect(readdirSync(join(dataDir, "tls")).sort()).toEqual(["ca-key.pem", "ca.pem"]);
    for (const p of PLANES) {
      const planeDir = join(dataDir, "planes", p.name);
      const pems = [
        ...readdirSync(tlsDir(p.name)).map((f) => join(tlsDir(p.name), f)),
        join(planeDir, "ingress.pem"),
        join(planeDir, "ingress.key.pem"),
      ];
      for (const file of pems) {
        const text = readFileSync(file, "utf8");
        expect(text).not.toContain(caKey.trim().split("\n")[1]);
        if (file.endsWith(".key.pem")) {
          expect(statSync(file).mode & 0o777, file).toBe(0o600);
          continue;
        }
        const names = new X509Certificate(text).subjectAltName ?? "";
        expect(names, file).not.toContain("*");
      }
      // The plane's own certificate names its address and nothing else.
      expect(new X509Certificate(readFileSync(join(planeDir, "ingress.pem"))).subjectAltName).toBe(
        `IP Address:${p.host}`,
      );
    }
  });

  it("serves the standard hostname at the global ingress only, and hops from it verify eu's own certificate", async () => {
    expect(await handshake(hostOf("us-1"), httpsPort, standard, ca)).toEqual({
      ok: true,
      san: `DNS:${standard}`,
    });
    expect(await handshake(hostOf("eu-1"), httpsPort, standard, ca)).toEqual({
      ok: false,
      code: "ERR_TLS_CERT_ALTNAME_INVALID",
    });
    const res = JSON.parse(
      await meridian("predict", "--model", modelId, "--environment", "prod-eu", "--json"),
    );
    expect(res.status).toBe(200);
    expect(res.processed).toMatchObject({ region: "eu", route: "us-1, eu-1" });
  });

  it("takes the key out of eu and into uk within seconds when the restriction moves", async () => {
    await meridian("admin", "restrict", "--environment", "prod-eu", "--region", "uk");
    await until("the name's key leaves eu-1 and reaches uk-1", async () =>
      !existsSync(join(tlsDir("eu-1"), `${regional}.key.pem`)) &&
      !existsSync(join(tlsDir("eu-1"), `${regional}.pem`)) &&
      existsSync(join(tlsDir("uk-1"), `${regional}.key.pem`))
        ? true
        : null,
    );
    await until("uk-1 serves the name and eu-1 no longer does", async () => {
      const [eu, uk] = await Promise.all([
        handshake(hostOf("eu-1"), httpsPort, regional, ca),
        handshake(hostOf("uk-1"), httpsPort, regional, ca),
      ]);
      return uk.ok && !eu.ok ? { eu, uk } : null;
    });
    expect(await handshake(hostOf("eu-1"), httpsPort, regional, ca)).toEqual({
      ok: false,
      code: "ERR_TLS_CERT_ALTNAME_INVALID",
    });
    expect((await sClient(hostOf("eu-1"), httpsPort, regional, caFile)).out).toContain("hostname mismatch");
    expect((await sClient(hostOf("uk-1"), httpsPort, regional, caFile)).code).toBe(0);
    expect(held("eu-1")).toEqual([]);
    expect(held("uk-1")).toEqual([regional]);

    // The forced redeploy lands in uk, and the regional endpoint is served there, through uk's certificate.
    const served = await until(
      "prod-eu served from uk",
      async () => {
        try {
          const res = JSON.parse(
            await meridian("predict", "--model", modelId, "--regional", "prod-eu", "--json"),
          );
          return res.status === 200 && res.processed.region === "uk" ? res : null;
        } catch {
          return null;
        }
      },
      90_000,
    );
    expect(served.processed.plane).toBe("uk-1");
  }, 120_000);

  it("removes a key put by hand on a plane that may not hold it", async () => {
    for (const f of [`${regional}.pem`, `${regional}.key.pem`]) {
      copyFileSync(join(tlsDir("uk-1"), f), join(tlsDir("au-1"), f));
    }
    await until("the copy on au-1 is gone", async () => (held("au-1").length === 0 ? true : null), 15_000);
    await until("au-1 no longer serves it", async () =>
      (await handshake(hostOf("au-1"), httpsPort, regional, ca)).ok ? null : true,
    );
    expect(held("uk-1")).toEqual([regional]);
    expect(output).not.toContain("! tls");
  }, 30_000);
});
