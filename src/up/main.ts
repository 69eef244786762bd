// `meridian up`: the embedded default installation on one machine. It starts, as child processes, the
// control plane (SQLite), one workload plane per region (us, eu, uk, au), each with an HTTPS ingress on
// its own loopback address, and the DNS responder; registers the planes; pushes the example model on
// first start; prints what to do next and writes it to `{data-dir}/up.json`. It keeps the children
// running (restarting one that dies) and drains them in reverse order on Ctrl-C or SIGTERM. Each child
// holds a lifeline to `up` (src/lib/lifeline.ts): if `up` dies without draining them (SIGKILL, an OOM
// kill), they stop on their own within seconds, replicas included, and free the ports for the next `up`.

import { type ChildProcess, spawn } from "node:child_process";
import dgram from "node:dgram";
import { chmodSync, closeSync, existsSync, mkdirSync, openSync, readFileSync, writeFileSync } from "node:fs";
import net from "node:net";
import { join, relative, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { request } from "undici";
import { CliError, ManagementApi } from "../cli/api.ts";
import { push } from "../cli/push.ts";
import type { UpManifest } from "../cli/settings.ts";
import { DNS_SNAPSHOT_PATH } from "../dns/command.ts";
import { writeSecretFile } from "../lib/files.ts";
import { lifelineSpawn } from "../lib/lifeline.ts";
import { ensureLocalCa, ensurePlaneCertificate } from "./tls.ts";
import { startTlsKeeping, type TlsKeeping } from "./tls-keeper.ts";

const BIN = resolve(import.meta.dirname, "../../bin/meridian.js");
const EXAMPLES = resolve(import.meta.dirname, "../../examples");

export interface UpConfig {
  dataDir: string;
  domain: string;
  controlPort: number;
  httpsPort: number;
  adminPort: number;
  dns: { host: string; port: number };
  /** The example pushed into prod-eu on first start (a key of EXAMPLE_MODELS); null: none. */
  example: string | null;
  out: (line: string) => void;
}

/**
 * The examples `meridian up` can push, by directory under examples/: the model name each is pushed as
 * and the input its summary's call sends. hello-js and hello-py are both the model 'hello'.
 */
export const EXAMPLE_MODELS: Readonly<Record<string, { model: string; input: string; stream: boolean }>> = {
  "hello-js": { model: "hello", input: '{"prompt": "Hello, world!"}', stream: false },
  "hello-py": { model: "hello", input: '{"prompt": "Hello, world!"}', stream: false },
  "stream-js": { model: "stream", input: '{"prompt": "streaming from Meridian"}', stream: true },
  "stream-py": { model: "stream", input: '{"prompt": "streaming from Meridian"}', stream: true },
};

export const UP_PLANES = [
  { name: "us-1", region: "us", host: "127.0.1.1", global: true },
  { name: "eu-1", region: "eu", host: "127.0.2.1", global: false },
  { name: "uk-1", region: "uk", host: "127.0.3.1", global: false },
  { name: "au-1", region: "au", host: "127.0.4.1", global: false },
] as const;

interface Child {
  name: string;
  args: string[];
  process: ChildProcess | null;
  /** The child writes its stdout and stderr here itself, so its last lines survive `up`'s death. */
  logFile: string;
  restarts: number;
  stopping: boolean;
}

/**
 * A directory only this user may enter, tightened if it exists (made by an older version, or by hand):
 * the control plane's holds the admin key and the database, a plane's its snapshot and audit log.
 */
function privateDir(path: string): void {
  mkdirSync(path, { recursive: true, mode: 0o700 });
  chmodSync(path, 0o700);
}

/**
 * A directory others may pass through but not list (0711): the planes' replicas are sandboxed as an
 * unprivileged uid, and bwrap resolves what it binds (a replica's package and private directory, under the
 * plane's data directory) as that uid. What is secret in it is a file only its owner may read (the
 * credential, the plane's key, its snapshot and audit log: 0600).
 */
function passableDir(path: string): void {
  mkdirSync(path, { recursive: true, mode: 0o711 });
  chmodSync(path, 0o711);
}

/** Fails with a clear message when an address this installation needs is taken. */
async function checkFree(host: string, port: number, what: string, udp = false): Promise<void> {
  const taken = await new Promise<Error | null>((ok) => {
    if (udp) {
      const s = dgram.createSocket("udp4");
      s.once("error", (err) => ok(err));
      s.bind(port, host, () => s.close(() => ok(null)));
      return;
    }
    const server = net.createServer();
    server.once("error", (err) => ok(err));
    server.listen(port, host, () => server.close(() => ok(null)));
  });
  if (taken) {
    const code = (taken as NodeJS.ErrnoException).code;
    throw new CliError(
      code === "EADDRINUSE"
        ? `${host}:${port}${udp ? "/udp" : ""} (${what}) is already in use — is another \`meridian up\` running? Stop it, or choose other ports (see \`meridian up --help\`).`
        : `Cannot listen on ${host}:${port} (${what}): ${taken.message}`,
    );
  }
}

async function waitHealthy(url: string, child: Child, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child.process?.exitCode !== null && child.process?.exitCode !== undefined) {
      throw new CliError(`${child.name} exited with code ${child.process.exitCode}; see ${child.logFile}`);
    }
    try {
      const res = await request(url, { headersTimeout: 1000, bodyTimeout: 1000 });
      await res.body.dump();
      if (res.statusCode === 200) return;
    } catch {}
    await sleep(150);
  }
  throw new CliError(
    `${child.name} did not become healthy within ${timeoutMs / 1000} s; see ${child.logFile}`,
  );
}

export async function runUp(config: UpConfig): Promise<{ stop(): Promise<void>; manifest: UpManifest }> {
  const dir = resolve(config.dataDir);
  mkdirSync(join(dir, "logs"), { recursive: true });
  const out = config.out;
  const controlUrl = `http://127.0.0.1:${config.controlPort}`;

  await checkFree("127.0.0.1", config.controlPort, "control plane");
  for (const p of UP_PLANES) {
    await checkFree(p.host, config.httpsPort, `${p.name} ingress`);
    await checkFree(p.host, config.adminPort, `${p.name} operator listener`);
  }
  await checkFree(config.dns.host, config.dns.port, "DNS", true);
  await checkFree(config.dns.host, config.dns.port, "DNS over TCP");

  // The CA stays in `tls/`; each plane gets its own certificate and the hostnames it may serve (tls-keeper).
  const tls = await ensureLocalCa(join(dir, "tls"), config.domain);
  let keeping: TlsKeeping | null = null;

  const children: Child[] = [];
  let shuttingDown = false;
  const launch = (child: Child) => {
    if (shuttingDown) return;
    const log = openSync(child.logFile, "a");
    let proc: ChildProcess;
    try {
      // Its own process group: a Ctrl-C in the terminal reaches `up` alone, which then stops the children
      // in order (DNS, planes, control plane) instead of all of them at once. The lifeline is what stops
      // them when `up` cannot: the child's process object keeps its end open as long as `up` lives.
      proc = spawn(process.execPath, [BIN, ...child.args], {
        ...lifelineSpawn(["ignore", log, log], process.env),
        detached: true,
      });
    } finally {
      closeSync(log);
    }
    child.process = proc;
    proc.once("exit", (code, signal) => {
      // A child whose lifeline broke exits because `up` is gone, so no one is left here to restart it.
      if (child.stopping || shuttingDown) return;
      child.restarts++;
      const delay = Math.min(30_000, 500 * 2 ** Math.min(child.restarts, 6));
      out(
        `! ${child.name} exited (${signal ?? code}); restarting in ${delay / 1000} s (log: ${child.logFile})`,
      );
      setTimeout(() => !shuttingDown && launch(child), delay).unref();
    });
  };
  const start = (name: string, args: string[]): Child => {
    const child: Child = {
      name,
      args,
      process: null,
      logFile: join(dir, "logs", `${name}.log`),
      restarts: 0,
      stopping: false,
    };
    children.push(child);
    launch(child);
    return child;
  };
  const stop = async () => {
    shuttingDown = true;
    await keeping?.stop();
    for (const child of [...children].reverse()) {
      child.stopping = true;
      const proc = child.process;
      if (!proc || proc.exitCode !== null || proc.signalCode !== null) continue;
      const exited = new Promise((ok) => proc.once("exit", ok));
      proc.kill("SIGTERM");
      const timer = setTimeout(() => proc.kill("SIGKILL"), 20_000);
      await exited;
      clearTimeout(timer);
      out(`  ${child.name} stopped`);
    }
  };

  try {
    privateDir(join(dir, "control"));
    const control = start("control", [
      "control",
      "--data-dir",
      join(dir, "control"),
      "--listen",
      `127.0.0.1:${config.controlPort}`,
      "--domain",
      config.domain,
    ]);
    await waitHealthy(`${controlUrl}/healthz`, control);
    const keyFile = join(dir, "control", "admin.key");
    const apiKey = readFileSync(keyFile, "utf8").trim();
    const api = new ManagementApi({
      apiUrl: controlUrl,
      apiKey,
      dns: null,
      caFile: tls.caFile,
      domain: config.domain,
      ingressPort: config.httpsPort,
      source: "up",
    });

    const registered = await api.get<{ planes: Array<{ name: string }> }>("/v1/admin/planes");
    // The credentials are each readable by their plane alone (the same user here): 0600 files in a 0700
    // directory, next to the planes' own 0700 data directories.
    passableDir(join(dir, "planes"));
    for (const p of UP_PLANES) {
      passableDir(join(dir, "planes", p.name));
      const tokenFile = join(dir, "planes", `${p.name}.token`);
      const ingress = [`${p.host}:${config.httpsPort}`];
      if (!registered.planes.some((r) => r.name === p.name)) {
        const res = await api.post<{ credential: string }>("/v1/admin/planes", {
          name: p.name,
          region: p.region,
          ingress,
          capacity: 16,
          global_ingress: p.global,
        });
        writeSecretFile(tokenFile, `${res.credential}\n`);
      } else {
        // Ports may differ from the last run; a lost credential is replaced.
        await api.patch(`/v1/admin/planes/${p.name}`, { ingress });
        if (!existsSync(tokenFile)) {
          const res = await api.post<{ credential: string }>(`/v1/admin/planes/${p.name}/credential`);
          writeSecretFile(tokenFile, `${res.credential}\n`);
        } else {
          chmodSync(tokenFile, 0o600);
        }
      }
    }
    // Every plane's certificates are on disk before it starts: its own, and those of the names DNS sends
    // clients to it for. From here on the keeper follows the DNS snapshot (us-1's credential, as DNS does).
    const planeTls = new Map<string, { certFile: string; keyFile: string; dir: string }>();
    for (const p of UP_PLANES) {
      const own = await ensurePlaneCertificate(tls.ca, join(dir, "planes", p.name), p.name, [p.host]);
      const tlsDir = join(dir, "planes", p.name, "tls");
      privateDir(tlsDir);
      planeTls.set(p.name, { ...own, dir: tlsDir });
    }
    keeping = await startTlsKeeping({
      ca: tls.ca,
      planes: UP_PLANES.map((p) => ({ name: p.name, address: p.host, dir: planeTls.get(p.name)!.dir })),
      snapshotUrl: `${controlUrl}/${DNS_SNAPSHOT_PATH}`,
      token: readFileSync(join(dir, "planes", `${UP_PLANES[0].name}.token`), "utf8").trim(),
      report: out,
    });
    const planeChildren = UP_PLANES.map((p) =>
      start(p.name, [
        "plane",
        "--name",
        p.name,
        "--region",
        p.region,
        "--control-url",
        controlUrl,
        "--token-file",
        join(dir, "planes", `${p.name}.token`),
        "--data-dir",
        join(dir, "planes", p.name),
        "--ingress",
        `${p.host}:${config.httpsPort}`,
        "--admin",
        `${p.host}:${config.adminPort}`,
        "--tls-cert",
        planeTls.get(p.name)!.certFile,
        "--tls-key",
        planeTls.get(p.name)!.keyFile,
        "--tls-dir",
        planeTls.get(p.name)!.dir,
        "--peer-ca",
        tls.caFile,
      ]),
    );
    const dnsChild = start("dns", [
      "dns",
      "--listen",
      `${config.dns.host}:${config.dns.port}`,
      "--domain",
      config.domain,
      "--control-url",
      controlUrl,
      "--token-file",
      join(dir, "planes", `${UP_PLANES[0].name}.token`),
      "--data-dir",
      join(dir, "dns"),
    ]);
    await Promise.all(
      UP_PLANES.map((p, i) => waitHealthy(`http://${p.host}:${config.adminPort}/healthz`, planeChildren[i]!)),
    );

    const manifest: UpManifest = {
      control_url: controlUrl,
      api_key_file: keyFile,
      domain: config.domain,
      dns: `${config.dns.host}:${config.dns.port}`,
      ca_file: tls.caFile,
      planes: UP_PLANES.map((p) => ({
        name: p.name,
        region: p.region,
        ingress: `${p.host}:${config.httpsPort}`,
        global_ingress: p.global,
      })),
    };
    writeFileSync(join(dir, "up.json"), `${JSON.stringify(manifest, null, 2)}\n`);
    void dnsChild;

    let example: ExampleRecord | null = null;
    const exampleFile = join(dir, "example.json");
    const recorded = existsSync(exampleFile)
      ? (JSON.parse(readFileSync(exampleFile, "utf8")) as ExampleRecord)
      : null;
    // Pushed on first start (not under --no-example, which leaves no example.json); an installation
    // started with one example and now asked for another gets that one pushed too. An example.json of
    // an older version names no example: it was hello-js.
    const wanted = config.example;
    const known = wanted === null ? undefined : EXAMPLE_MODELS[wanted];
    if (
      wanted !== null &&
      known !== undefined &&
      (recorded === null || (recorded.example ?? "hello-js") !== wanted)
    ) {
      const what = known;
      out(
        `${recorded === null ? "First start: pushing" : "Pushing"} the example model (examples/${wanted}) into prod-eu, restricted to region eu…`,
      );
      await api.patch("/v1/environment_groups/prod-eu", {
        region_restriction: { region: "eu", standard_endpoint_policy: "warn" },
      });
      const pushed = await push(api, config.domain, {
        dir: join(EXAMPLES, wanted),
        environment: "prod-eu",
        promote: false,
        deploymentName: null,
        modelName: what.model,
        wait: true,
        waitTimeoutSeconds: 120,
        progress: false,
        log: (l) => out(`  ${l.trim()}`),
      });
      const record: ExampleRecord = { id: pushed.model.id, example: wanted! };
      writeFileSync(exampleFile, `${JSON.stringify(record, null, 2)}\n`);
    }
    if (existsSync(exampleFile)) example = JSON.parse(readFileSync(exampleFile, "utf8")) as ExampleRecord;

    // What was pushed has its hostnames' certificates before the summary invites a call.
    await keeping.sync();
    printSummary(config, manifest, dir, example, out);
    return { stop, manifest };
  } catch (err) {
    await stop();
    throw err;
  }
}

/** example.json: the example model up pushed (written by versions before --example without `example`). */
interface ExampleRecord {
  id: string;
  example?: string;
}

function printSummary(
  config: UpConfig,
  m: UpManifest,
  dir: string,
  example: ExampleRecord | null,
  out: (line: string) => void,
) {
  const rel = (p: string) => {
    const r = relative(process.cwd(), p);
    return r.startsWith("..") ? p : r;
  };
  const port = config.httpsPort === 443 ? "" : `:${config.httpsPort}`;
  out("");
  out("Meridian is up.");
  out("");
  out(`  Control API  ${m.control_url}      admin API key: ${rel(m.api_key_file)}`);
  out(`  DNS          ${m.dns}         authoritative for ${m.domain}`);
  for (const p of m.planes) {
    out(
      `  Plane ${p.name.padEnd(5)}  region ${p.region}   https://${p.ingress}${p.global_ingress ? "   (global ingress: standard endpoints)" : ""}`,
    );
  }
  out(`  Local CA     ${rel(m.ca_file)}   (trust it: curl --cacert, SSL_CERT_FILE, or your OS trust store)`);
  out(
    `  Logs         ${rel(join(dir, "logs"))}/     state: ${rel(dir)}/   manifest: ${rel(join(dir, "up.json"))}`,
  );
  out("");
  out("Use it from another terminal (the CLI reads up.json from ./.meridian):");
  out(`  export MERIDIAN_API_URL=${m.control_url} MERIDIAN_API_KEY=$(cat ${rel(m.api_key_file)})`);
  if (example) {
    const host = `model-${example.id}-prod-eu.${m.domain}`;
    const eu = m.planes.find((p) => p.region === "eu")!;
    const shown = EXAMPLE_MODELS[example.example ?? "hello-js"] ?? EXAMPLE_MODELS["hello-js"]!;
    out("");
    out(
      `The example model '${shown.model}' (${example.id}, examples/${example.example ?? "hello-js"}) serves prod-eu, restricted to region eu. Call its regional endpoint:`,
    );
    out(`  npx meridian predict --model ${example.id} --regional prod-eu --data '${shown.input}'`);
    out(
      "or with curl (resolving the name as Meridian's DNS does: dig @" +
        m.dns.replace(/:(\d+)$/, " -p $1") +
        ` ${host}):`,
    );
    out(
      `  curl${shown.stream ? " -N" : ""} --cacert ${rel(m.ca_file)} --resolve ${host}${port ? port : ":443"}:${eu.ingress.split(":")[0]} \\\n       -H "Authorization: Api-Key $MERIDIAN_API_KEY" -d '${shown.input}' https://${host}${port}/predict -i`,
    );
    out("The response headers x-meridian-region and x-meridian-plane say where it was processed.");
  }
  out("");
  out("Next: push your own model — npx meridian push examples/stream-js --environment prod-eu --wait");
  out("Stop with Ctrl-C; state survives restarts.");
}
