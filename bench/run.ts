// `npm run bench`: every benchmark section in turn, then BENCHMARKS.md. Bounded load, loopback only; every
// child process is stopped at the end. Flags: --quick (short runs, for working on the harness),
// --only=gateway,routing,installation,control-api,sandbox, --out=FILE.

import { execFileSync, spawnSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { cpus, totalmem } from "node:os";
import { join } from "node:path";
import { type ControlApiOptions, runControlApi } from "./control-api.ts";
import { type GatewayFigures, type GatewayOptions, runGateway } from "./gateway.ts";
import { type InstallationFigures, type InstallationOptions, runInstallation } from "./installation.ts";
import { fmt, loadAverage, ROOT, removeTempDirs, stopAllChildren, tempDir } from "./lib.ts";
import { nginxVersion } from "./nginx.ts";
import { renderProfile, summarizeProfile } from "./profile.ts";
import { type RoutingOptions, runRouting } from "./routing.ts";
import { runSandbox, type SandboxBenchOptions, type SandboxFigures } from "./sandbox.ts";

const args = process.argv.slice(2);
const quick = args.includes("--quick");
const only = args
  .find((a) => a.startsWith("--only="))
  ?.slice(7)
  .split(",");
const out = args.find((a) => a.startsWith("--out="))?.slice(6) ?? join(ROOT, "BENCHMARKS.md");
const wants = (s: string) => only === undefined || only.includes(s);
const MARKER = "<!-- end of generated figures; the analysis below is bench/ANALYSIS.md -->";

// --reassemble: keep the figures of the last run and append the current bench/ANALYSIS.md (no measuring).
if (args.includes("--reassemble")) {
  const current = readFileSync(out, "utf8");
  const cut = current.indexOf(MARKER);
  const figures = cut < 0 ? current : current.slice(0, cut);
  writeFileSync(out, `${figures}${MARKER}\n\n${readFileSync(join(ROOT, "bench/ANALYSIS.md"), "utf8")}`);
  process.exit(0);
}

const gatewayOptions: Omit<GatewayOptions, "profileDir"> = quick
  ? { runs: 1, durationS: 1 }
  : { runs: 5, durationS: 3 };
const routingOptions: RoutingOptions = quick
  ? { models: 10_000, runs: 1, durationS: 1 }
  : { models: 100_000, runs: 3, durationS: 3 };
const installationOptions: InstallationOptions = quick
  ? { changes: 5, lifecycleRuns: 1, migrate: 5 }
  : { changes: 40, lifecycleRuns: 3, migrate: 50 };
const sandboxOptions: SandboxBenchOptions = quick
  ? { starts: 3, runs: 1, durationS: 1 }
  : { starts: 15, runs: 5, durationS: 2 };
const controlOptions: ControlApiOptions = quick
  ? { models: 10_000, runs: 1, durationS: 1, singleTimeoutMs: 10_000 }
  : { models: 10_000, runs: 3, durationS: 2, singleTimeoutMs: 20_000 };

const began = Date.now();
const log = (m: string) =>
  process.stdout.write(`[${((Date.now() - began) / 1000).toFixed(0).padStart(3)} s] ${m}\n`);

function sh(cmd: string, a: string[]): string {
  try {
    return execFileSync(cmd, a, { stdio: ["ignore", "pipe", "pipe"] })
      .toString()
      .trim();
  } catch (err) {
    return String((err as { stderr?: Buffer }).stderr ?? "").trim() || "unavailable";
  }
}

/** `wrk -v` prints its version and exits non-zero. */
function wrkVersion(): string {
  const r = spawnSync("wrk", ["-v"], { encoding: "utf8" });
  return `${r.stdout ?? ""}${r.stderr ?? ""}`
    .split("\n")[0]!
    .replace(/ Copyright.*/, "")
    .trim();
}

function machine(): string[] {
  const pkg = (name: string) =>
    (
      JSON.parse(readFileSync(join(ROOT, "node_modules", name, "package.json"), "utf8")) as {
        version: string;
      }
    ).version;
  const vitest = sh("pgrep", ["-af", "vitest"]);
  return [
    `- CPU: ${cpus().length} × ${cpus()[0]?.model ?? "unknown"} (${sh("uname", ["-m"])}), ${fmt(totalmem() / 2 ** 30, 0)} GiB RAM, Linux ${sh("uname", ["-r"])}`,
    `- Node.js ${process.version}, undici ${pkg("undici")}, tsx ${pkg("tsx")}; ${nginxVersion()} (Debian package); ${wrkVersion()}`,
    `- Meridian at \`${sh("git", ["-C", ROOT, "rev-parse", "--short", "HEAD"])}\`${sh("git", ["-C", ROOT, "status", "--porcelain", "src"]) ? " (with uncommitted changes in src/ at run time)" : ""}`,
    `- Load average (1, 5, 15 min) at start: ${startLoad}; at end: ${loadAverage()}. Other test runs (vitest) at the end: ${vitest === "unavailable" || vitest === "" ? "none" : "yes"}`,
  ];
}

const startLoad = loadAverage();
const busy = sh("pgrep", ["-af", "vitest"]);
log(
  `load average ${startLoad}${busy && busy !== "unavailable" ? "; WARNING: vitest is running, figures will be noisy" : ""}`,
);

let gateway: GatewayFigures | null = null;
let routing: { markdown: string } | null = null;
let installation: InstallationFigures | null = null;
let controlApi: { markdown: string } | null = null;
let sandbox: SandboxFigures | null = null;
let profile: string | null = null;
try {
  if (wants("gateway")) {
    log("1. gateway overhead");
    gateway = await runGateway({ ...gatewayOptions, profileDir: tempDir("meridian-prof-") }, log);
    if (gateway.profile) profile = renderProfile(summarizeProfile(gateway.profile, 25));
  }
  if (wants("routing")) {
    log("2. routing at scale");
    routing = await runRouting(routingOptions, log);
  }
  if (wants("installation")) {
    log("3–4. propagation and lifecycle (control, four planes, DNS)");
    installation = await runInstallation(installationOptions, log);
  }
  if (wants("control-api")) {
    log("5. control API");
    controlApi = await runControlApi(controlOptions, log);
  }
  if (wants("sandbox")) {
    log("6. sandbox");
    sandbox = await runSandbox(sandboxOptions, log);
  }
} finally {
  await stopAllChildren();
  removeTempDirs();
}
const elapsed = (Date.now() - began) / 1000;
log(`done in ${elapsed.toFixed(0)} s`);

const verdict = (ok: boolean) => (ok ? "**met**" : "**not met**");
const t = gateway?.targets;
const targets = [
  "| target (issue 6) | measured (median) | |",
  "|---|---:|---|",
  ...(t
    ? [
        `| ingress req/s at c=64 ≥ 0.45× nginx (same run) | ${t.throughputVsNginx.toFixed(2)}× | ${verdict(t.throughputVsNginx >= 0.45)} |`,
        `| ingress CPU per request ≤ 45 µs (c=64) | ${t.cpuPerReqUs.toFixed(1)} µs | ${verdict(t.cpuPerReqUs <= 45)} |`,
        `| p50 added to a direct call at c=1 ≤ 150 µs | ${t.addedP50Us.toFixed(0)} µs | ${verdict(t.addedP50Us <= 150)} |`,
      ]
    : []),
  ...(sandbox
    ? [
        `| sandbox adds ≤ 50 ms to a replica's start (issue 10) | ${sandbox.addedStartMs.toFixed(0)} ms | ${verdict(sandbox.addedStartMs <= 50)} |`,
      ]
    : []),
  ...(installation
    ? [
        `| propagation p99 < 500 ms with four planes | ${installation.propagationP99Ms.toFixed(0)} ms | ${verdict(installation.propagationP99Ms < 500)} |`,
      ]
    : []),
];

const generated = [
  `<!-- generated by \`npm run bench\`${quick ? " --quick" : ""} in ${elapsed.toFixed(0)} s; figures for the analysis section are in bench/ANALYSIS.md -->`,
  "# Benchmarks",
  "",
  `Generated by \`npm run bench\`${quick ? " -- --quick (short runs: NOT representative)" : ""} on ${new Date().toISOString().slice(0, 16).replace("T", " ")} UTC, in ${fmt(elapsed / 60, 1)} minutes.`,
  "",
  "## Machine",
  ...machine(),
  "",
  "## Targets",
  ...targets,
  "",
  gateway
    ? [
        "## 1. Gateway overhead",
        "",
        `Each cell: \`wrk -t1 -c{1|64} -d${gatewayOptions.durationS}s\` with a Lua script that POSTs the body with \`Host\` and \`Authorization: Api-Key …\` (keep-alive); ${gatewayOptions.runs} runs, interleaved (every cell once per round), the **median** reported; ratios are to the baseline of the same run. (a) is the upstream called directly; (b) is a Meridian ingress on the regional endpoint \`model-{id}-prod-eu.{domain}/predict\` doing everything it does per request (API-key hash lookup, Host parse and routing, x-request-id, proof headers, X-Forwarded-*, hop-by-hop stripping, one audit line, Prometheus metrics, the receipt: the request body's digest and one Ed25519 signature), on its default \`wire\` transport (node:net on Node's own llhttp, own upstream pool); (b″) is the same ingress with receipts off (\`--receipts off\`); (b′) is the same ingress on the node:http + undici fallback transport; (c) is nginx, one worker, \`proxy_pass\` to an upstream block with \`keepalive\`, routing by \`server_name\`, buffered access log. The standard endpoint row enters at us-1 (global ingress, no local replica), which forwards over a signed hop to eu-1. **The proxy baseline is the minimal node:http upstream**: it does almost nothing, so the difference is what the proxy costs; the \`serve-model\` rows show the same proxies in front of a real replica. CPU per request is utime+stime of the proxy process (both ingresses for the hop; nginx's worker) from /proc, divided by the requests wrk completed.`,
        gateway.markdown,
      ].join("\n")
    : "",
  "",
  profile ? ["### Profile of the ingress (c=64, small body, `node --cpu-prof`)", "", profile].join("\n") : "",
  "",
  routing ? ["## 2. Routing at scale", "", routing.markdown].join("\n") : "",
  "",
  installation
    ? ["## 3. Propagation (control, four planes, DNS)", "", installation.propagation].join("\n")
    : "",
  "",
  installation ? ["## 4. Lifecycle", "", installation.lifecycle].join("\n") : "",
  "",
  controlApi ? ["## 5. Control API", "", controlApi.markdown].join("\n") : "",
  "",
  sandbox ? ["## 6. Sandbox", "", sandbox.markdown].join("\n") : "",
  "",
];

// The hand-written analysis (bench/ANALYSIS.md) follows the generated figures.
let analysis = "";
try {
  analysis = readFileSync(join(ROOT, "bench/ANALYSIS.md"), "utf8");
} catch {}
writeFileSync(
  out,
  `${generated.filter((s, i, a) => !(s === "" && a[i - 1] === "")).join("\n")}\n${MARKER}\n\n${analysis}`,
);
log(`wrote ${out}`);
