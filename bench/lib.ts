// Shared plumbing of the benchmark: child processes tracked for cleanup, a wrk driver that returns
// throughput and latency percentiles, CPU and memory read from /proc, and small statistics helpers.

import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

export const ROOT = resolve(import.meta.dirname, "..");
export const BIN = join(ROOT, "bin/meridian.js");
export const CLK_TCK = Number(execFileSync("getconf", ["CLK_TCK"]).toString().trim()) || 100;

const tempDirs: string[] = [];

export function tempDir(prefix = "meridian-bench-"): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  tempDirs.push(dir);
  return dir;
}

/** Removes every directory tempDir() made (snapshots, SQLite files, audit logs, nginx's files). */
export function removeTempDirs(): void {
  for (const dir of tempDirs.splice(0)) rmSync(dir, { recursive: true, force: true });
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

// —— child processes ——

export interface Child {
  name: string;
  proc: ChildProcess;
  output: string[];
  /** Resolves with the first output line that satisfies `match`. */
  waitFor(match: (line: string) => boolean, timeoutMs?: number): Promise<string>;
  stop(): Promise<void>;
}

const children = new Set<Child>();

export function startChild(
  name: string,
  cmd: string,
  args: string[],
  env: NodeJS.ProcessEnv = {},
  cwd = ROOT,
): Child {
  const proc = spawn(cmd, args, { cwd, env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  const output: string[] = [];
  const waiters: Array<{ match: (l: string) => boolean; ok: (l: string) => void }> = [];
  for (const stream of [proc.stdout!, proc.stderr!]) {
    let buf = "";
    stream.setEncoding("utf8");
    stream.on("data", (chunk: string) => {
      buf += chunk;
      let i = buf.indexOf("\n");
      while (i >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        output.push(line);
        if (output.length > 2000) output.shift();
        for (const w of [...waiters]) {
          if (w.match(line)) {
            waiters.splice(waiters.indexOf(w), 1);
            w.ok(line);
          }
        }
        i = buf.indexOf("\n");
      }
    });
  }
  const exited = new Promise<void>((r) => proc.once("exit", () => r()));
  const child: Child = {
    name,
    proc,
    output,
    waitFor(match, timeoutMs = 30_000) {
      const seen = output.find(match);
      if (seen !== undefined) return Promise.resolve(seen);
      return new Promise((ok, fail) => {
        const timer = setTimeout(
          () =>
            fail(
              new Error(`${name}: no expected line within ${timeoutMs} ms\n${output.slice(-20).join("\n")}`),
            ),
          timeoutMs,
        );
        waiters.push({
          match,
          ok: (l) => {
            clearTimeout(timer);
            ok(l);
          },
        });
        proc.once("exit", (code) => {
          clearTimeout(timer);
          fail(new Error(`${name} exited (${code})\n${output.slice(-20).join("\n")}`));
        });
      });
    },
    async stop() {
      children.delete(child);
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      proc.kill("SIGTERM");
      const timer = setTimeout(() => proc.kill("SIGKILL"), 10_000);
      await exited;
      clearTimeout(timer);
    },
  };
  children.add(child);
  return child;
}

/** Stops every child still running (reverse start order). */
export async function stopAllChildren(): Promise<void> {
  for (const c of [...children].reverse()) await c.stop();
}

/** A TypeScript file of this repository run as its own Node process (through tsx). */
export function startTs(
  name: string,
  file: string,
  env: NodeJS.ProcessEnv = {},
  nodeArgs: string[] = [],
): Child {
  return startChild(name, process.execPath, [...nodeArgs, "--import", "tsx", join(ROOT, file)], env);
}

export function freePort(host = "127.0.0.1"): Promise<number> {
  return new Promise((ok, fail) => {
    const server = net.createServer();
    server.once("error", fail);
    server.listen(0, host, () => {
      const port = (server.address() as net.AddressInfo).port;
      server.close(() => ok(port));
    });
  });
}

// —— /proc ——

/** User + system CPU time of a process so far, in microseconds (Linux /proc/PID/stat, fields 14 and 15). */
export function cpuMicros(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // fields[0] is field 3 (state): utime is field 14, stime field 15.
  return ((Number(fields[11]) + Number(fields[12])) * 1e6) / CLK_TCK;
}

/** User and system CPU time of a process so far, separately, in microseconds. */
export function cpuSplitMicros(pid: number): { user: number; system: number } {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return { user: (Number(fields[11]) * 1e6) / CLK_TCK, system: (Number(fields[12]) * 1e6) / CLK_TCK };
}

/** Resident set size of a process in MiB. */
export function rssMiB(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const m = /VmRSS:\s+(\d+) kB/.exec(status);
  return m ? Number(m[1]) / 1024 : Number.NaN;
}

export function loadAverage(): string {
  return readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ");
}

// —— statistics ——

export function median(xs: number[]): number {
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** Nearest-rank percentile (p in 0..100). */
export function percentile(xs: number[], p: number): number {
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  const rank = Math.max(1, Math.ceil((p / 100) * s.length));
  return s[Math.min(rank, s.length) - 1]!;
}

export function fmt(x: number, digits = 0): string {
  if (!Number.isFinite(x)) return "—";
  return x.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

export function ratio(a: number, b: number): string {
  return Number.isFinite(a) && Number.isFinite(b) && b !== 0 ? `${(a / b).toFixed(2)}×` : "—";
}

// —— wrk ——

export interface WrkOptions {
  url: string;
  /** Default POST (with `bodyFile`). */
  method?: "GET" | "POST";
  host?: string;
  headers?: Record<string, string>;
  bodyFile?: string;
  connections: number;
  threads: number;
  durationS: number;
}

export interface WrkResult {
  requests: number;
  rps: number;
  p50us: number;
  p99us: number;
  errors: number;
  non2xx: number;
}

let wrkDir: string | null = null;

function wrkScript(o: WrkOptions): string {
  wrkDir ??= tempDir("meridian-wrk-");
  const post = (o.method ?? "POST") === "POST";
  const headers = {
    ...(post ? { "Content-Type": "application/json" } : {}),
    ...(o.host ? { Host: o.host } : {}),
    ...o.headers,
  };
  const lines = [
    `wrk.method = "${post ? "POST" : "GET"}"`,
    ...Object.entries(headers).map(([k, v]) => `wrk.headers[${JSON.stringify(k)}] = ${JSON.stringify(v)}`),
    ...(post && o.bodyFile
      ? [`local f = io.open(${JSON.stringify(o.bodyFile)}, "rb")`, "wrk.body = f:read('*a')", "f:close()"]
      : []),
    "done = function(summary, latency, requests)",
    "  local e = summary.errors",
    '  io.write(string.format("BENCH %d %d %d %d %d %d %d %d %d\\n", summary.requests, summary.duration,',
    "    latency:percentile(50), latency:percentile(99), e.connect, e.read, e.write, e.status, e.timeout))",
    "end",
  ];
  const file = join(wrkDir, `s-${Math.random().toString(36).slice(2)}.lua`);
  writeFileSync(file, lines.join("\n"));
  return file;
}

/** One wrk run (keep-alive, POST); throws if wrk reports no summary. */
export function runWrk(o: WrkOptions): Promise<WrkResult> {
  const script = wrkScript(o);
  const args = ["-t", String(o.threads), "-c", String(o.connections), "-d", `${o.durationS}s`, "-s", script];
  args.push("--timeout", "30s", o.url);
  return new Promise((ok, fail) => {
    const proc = spawn("wrk", args, { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    proc.stdout.on("data", (c) => {
      out += c;
    });
    proc.stderr.on("data", (c) => {
      out += c;
    });
    proc.once("exit", () => {
      const m = /BENCH (\d+) (\d+) (\d+) (\d+) (\d+) (\d+) (\d+) (\d+) (\d+)/.exec(out);
      if (!m) {
        fail(new Error(`wrk gave no summary:\n${out}`));
        return;
      }
      const n = m.slice(1).map(Number) as number[];
      const [requests, durationUs, p50, p99, connect, read, write, status, timeout] = n as [
        number,
        number,
        number,
        number,
        number,
        number,
        number,
        number,
        number,
      ];
      ok({
        requests,
        rps: requests / (durationUs / 1e6),
        p50us: p50,
        p99us: p99,
        errors: connect + read + write + timeout,
        non2xx: status,
      });
    });
  });
}

export function writeBody(dir: string, name: string, bytes: number | null): string {
  const file = join(dir, name);
  if (bytes === null) {
    writeFileSync(file, JSON.stringify({ inputs: [1, 2, 3], text: "hello" }));
  } else {
    // A JSON document of exactly `bytes` bytes.
    const pad = bytes - '{"text":""}'.length;
    writeFileSync(file, `{"text":"${"x".repeat(pad)}"}`);
  }
  return file;
}

/** POSTs until a 200 comes back (readiness of a proxy chain), or throws after `timeoutMs`. */
export async function until200(
  url: string,
  headers: Record<string, string>,
  body = "{}",
  timeoutMs = 30_000,
): Promise<void> {
  const { request } = await import("undici");
  const deadline = Date.now() + timeoutMs;
  let last = "";
  for (;;) {
    try {
      const res = await request(url, { method: "POST", headers, body });
      const text = await res.body.text();
      if (res.statusCode === 200) return;
      last = `${res.statusCode} ${text.slice(0, 300)}`;
    } catch (err) {
      last = String(err);
    }
    if (Date.now() > deadline) throw new Error(`${url} not ready: ${last}`);
    await sleep(100);
  }
}
