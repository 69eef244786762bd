// What the soak (soak.ts) makes of its samples and requests: per-kind traffic counts, per-process memory,
// file-descriptor and event-loop figures with a leak verdict, the gnuplot charts, and the markdown summary
// that goes in RELIABILITY.md's `## Soak` section. Pure functions except `plot`, which runs gnuplot.

import { spawnSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";

export type Kind = "predict" | "stream" | "async" | "websocket" | "wake";
export const KINDS: Kind[] = ["predict", "stream", "async", "websocket", "wake"];

export type SoakOutcome = "ok" | "typed_error" | "other_error" | "hung";

export interface SoakRequest {
  kind: Kind;
  target: string;
  id: string;
  startedAt: number;
  latencyMs: number;
  outcome: SoakOutcome;
  status: number;
  /** The typed error's `error_code`, or what else went wrong (a transport error code, a close code). */
  detail: string | null;
  /** The region the answer's proof header names (x-meridian-region), when the kind has one. */
  region: string | null;
  /** The region that must serve it (restricted environment), or null. */
  want: string | null;
}

export interface Sample {
  t: number;
  label: string;
  group: "control" | "plane" | "replica" | "driver";
  pid: number;
  rssMb: number;
  fds: number;
  /** Processes summed into this row (a sandboxed replica is bwrap and its child). */
  procs: number;
  eldP99Ms: number | null;
  eldMaxMs: number | null;
}

export interface FaultMark {
  name: string;
  startedAt: number;
  restoredAt: number;
  endedAt: number;
  extra: Record<string, string | number | boolean>;
  recoveryMs: number | null;
}

export interface KindCounts {
  sent: number;
  ok: number;
  typed_error: number;
  other_error: number;
  hung: number;
  out_of_region: number;
  rate_per_min: number;
  p50_ms: number;
  p99_ms: number;
  details: Record<string, number>;
}

function pct(values: number[], p: number): number {
  if (values.length === 0) return 0;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}

export function kindCounts(rs: readonly SoakRequest[], fromMs: number, toMs: number): KindCounts {
  const mine = rs.filter((r) => r.startedAt >= fromMs && r.startedAt < toMs);
  const ok = mine.filter((r) => r.outcome === "ok");
  const details: Record<string, number> = {};
  for (const r of mine) {
    if (r.outcome === "ok") continue;
    const k = `${r.outcome}: ${r.status ? `${r.status} ` : ""}${r.detail ?? "?"}`;
    details[k] = (details[k] ?? 0) + 1;
  }
  const round = (n: number) => Math.round(n * 10) / 10;
  return {
    sent: mine.length,
    ok: ok.length,
    typed_error: mine.filter((r) => r.outcome === "typed_error").length,
    other_error: mine.filter((r) => r.outcome === "other_error").length,
    hung: mine.filter((r) => r.outcome === "hung").length,
    out_of_region: ok.filter((r) => r.want !== null && r.region !== null && r.region !== r.want).length,
    rate_per_min: round((mine.length / Math.max(1, toMs - fromMs)) * 60_000),
    p50_ms: round(
      pct(
        ok.map((r) => r.latencyMs),
        50,
      ),
    ),
    p99_ms: round(
      pct(
        ok.map((r) => r.latencyMs),
        99,
      ),
    ),
    details,
  };
}

export interface ProcessFigures {
  label: string;
  group: Sample["group"];
  samples: number;
  /** Distinct pids seen under this label (a replica restarted after a kill, a plane restarted). */
  pids: number;
  rssWarmMb: number;
  rssEndMb: number;
  rssMaxMb: number;
  /** Least-squares slope of RSS over the last 2/3 of the run, samples of the final pid only. */
  rssSlopeMbPerH: number | null;
  fdsWarm: number;
  fdsEnd: number;
  fdsMax: number;
  eldP99MedianMs: number | null;
  eldP99MaxMs: number | null;
  eldMaxMs: number | null;
  verdict: string;
}

function slope(points: Array<[number, number]>): number | null {
  if (points.length < 3) return null;
  const n = points.length;
  const mx = points.reduce((s, p) => s + p[0], 0) / n;
  const my = points.reduce((s, p) => s + p[1], 0) / n;
  let num = 0;
  let den = 0;
  for (const [x, y] of points) {
    num += (x - mx) * (y - my);
    den += (x - mx) ** 2;
  }
  return den === 0 ? null : num / den;
}

/**
 * Per process label. The warm-up sample is the first one of the final pid after `warmUntil` and after that
 * pid's own warm-up (a process restarted during the run); the leak
 * verdict needs at least 20 minutes in the last 2/3 of the run to call RSS growth, and counts fds growth
 * of 10 or more on the same pid at any length.
 */
export function processFigures(
  samples: readonly Sample[],
  runStart: number,
  runEnd: number,
  warmUntil: number,
): ProcessFigures[] {
  const labels = [...new Set(samples.map((s) => s.label))];
  const tailFrom = runStart + (runEnd - runStart) / 3;
  const judgeRss = (runEnd - tailFrom) / 60_000 >= 20;
  return labels.map((label) => {
    const mine = samples.filter((s) => s.label === label).sort((a, b) => a.t - b.t);
    const last = mine[mine.length - 1]!;
    const finalPid = mine.filter((s) => s.pid === last.pid);
    // A process (re)started during the run is given the same warm-up from its own first sample.
    const warmFrom = Math.max(warmUntil, finalPid[0]!.t + (warmUntil - runStart));
    const warm = finalPid.find((s) => s.t >= warmFrom) ?? finalPid[finalPid.length - 1]!;
    const tail = finalPid.filter((s) => s.t >= Math.max(tailFrom, warm.t));
    const perH = slope(tail.map((s) => [(s.t - runStart) / 3_600_000, s.rssMb]));
    const p99s = mine.flatMap((s) => (s.eldP99Ms === null ? [] : [s.eldP99Ms]));
    const maxes = mine.flatMap((s) => (s.eldMaxMs === null ? [] : [s.eldMaxMs]));
    const notes: string[] = [];
    const fdGrowth = last.fds - warm.fds;
    if (fdGrowth >= 10) notes.push(`fds +${fdGrowth} on one pid: suspect`);
    if (!judgeRss) notes.push("RSS: run too short to judge (needs ≥ 20 min after the first third)");
    else if (perH !== null && perH > 10 && last.rssMb > warm.rssMb * 1.1)
      notes.push(`RSS grows ${perH.toFixed(1)} MB/h: suspect`);
    else notes.push("RSS flat");
    if (fdGrowth < 10) notes.push("fds flat");
    const r1 = (n: number) => Math.round(n * 10) / 10;
    return {
      label,
      group: last.group,
      samples: mine.length,
      pids: new Set(mine.map((s) => s.pid)).size,
      rssWarmMb: r1(warm.rssMb),
      rssEndMb: r1(last.rssMb),
      rssMaxMb: r1(Math.max(...mine.map((s) => s.rssMb))),
      rssSlopeMbPerH: perH === null ? null : r1(perH),
      fdsWarm: warm.fds,
      fdsEnd: last.fds,
      fdsMax: Math.max(...mine.map((s) => s.fds)),
      eldP99MedianMs: p99s.length ? r1(pct(p99s, 50)) : null,
      eldP99MaxMs: p99s.length ? r1(Math.max(...p99s)) : null,
      eldMaxMs: maxes.length ? r1(Math.max(...maxes)) : null,
      verdict: notes.join("; "),
    };
  });
}

/** Distinct line colours (labels are many: every plane and every replica). */
const PALETTE = [
  "#1f77b4",
  "#d62728",
  "#2ca02c",
  "#ff7f0e",
  "#9467bd",
  "#8c564b",
  "#e377c2",
  "#7f7f7f",
  "#bcbd22",
  "#17becf",
  "#000000",
  "#aec7e8",
  "#98df8a",
  "#ff9896",
  "#c5b0d5",
  "#ffbb78",
];

const GROUP_ORDER: Sample["group"][] = ["control", "plane", "driver", "replica"];

function safe(label: string): string {
  return label.replace(/[^A-Za-z0-9._-]+/g, "_");
}

/**
 * One data file per process label (minutes since start, RSS MB, fds, event-loop p99 and max ms; a blank
 * line where the process changed pid or samples are missing, so gnuplot breaks the line), then three PNGs
 * drawn by gnuplot. Returns the PNG paths, or the reason there are none.
 */
export function plot(
  dir: string,
  samples: readonly Sample[],
  runStart: number,
  intervalMs: number,
  faults: readonly FaultMark[],
): { pngs: string[] } | { error: string } {
  const which = spawnSync("gnuplot", ["--version"], { encoding: "utf8" });
  if (which.error || which.status !== 0)
    return { error: "gnuplot is not installed: apt-get install -y gnuplot-nox (Debian), then run again" };
  const dataDir = join(dir, "plot");
  mkdirSync(dataDir, { recursive: true });
  const series = new Map<string, { group: Sample["group"]; file: string }>();
  for (const label of [...new Set(samples.map((s) => s.label))]) {
    const mine = samples.filter((s) => s.label === label).sort((a, b) => a.t - b.t);
    const lines: string[] = [];
    let prev: Sample | null = null;
    for (const s of mine) {
      if (prev && (s.pid !== prev.pid || s.t - prev.t > intervalMs * 2.5)) lines.push("");
      const na = (v: number | null) => (v === null ? "NaN" : v.toFixed(2));
      lines.push(
        `${((s.t - runStart) / 60_000).toFixed(3)} ${s.rssMb.toFixed(2)} ${s.fds} ${na(s.eldP99Ms)} ${na(s.eldMaxMs)}`,
      );
      prev = s;
    }
    const file = join(dataDir, `${safe(label)}.dat`);
    writeFileSync(file, `${lines.join("\n")}\n`);
    series.set(label, { group: mine[0]!.group, file });
  }
  const ordered = [...series.entries()].sort(
    (a, b) => GROUP_ORDER.indexOf(a[1].group) - GROUP_ORDER.indexOf(b[1].group) || a[0].localeCompare(b[0]),
  );
  const node = ordered.filter(([, s]) => s.group !== "replica");
  const replicas = ordered.filter(([, s]) => s.group === "replica");
  const marks = faults
    .map((f, i) => {
      const x = ((f.startedAt - runStart) / 60_000).toFixed(3);
      const short = f.name.startsWith("replica")
        ? "R"
        : f.name.startsWith("plane")
          ? "P"
          : f.name.startsWith("control")
            ? "S"
            : "F";
      return `set arrow ${i + 1} from ${x}, graph 0 to ${x}, graph 1 nohead dt 2 lc rgb "#999999"\nset label ${i + 1} "${short}" at ${x}, graph 0.97 offset 0.3,0 tc rgb "#666666"`;
    })
    .join("\n");
  const esc = (s: string) => s.replace(/"/g, "'");
  const plotLines = (rows: typeof ordered, col: number) =>
    rows.length === 0
      ? 'plot NaN title "none"'
      : `plot ${rows.map(([label, s]) => `"${s.file}" using 1:${col} with lines title "${esc(label)}"`).join(", \\\n  ")}`;
  const head = (title: string) => `set terminal pngcairo size 1400,1000 font "DejaVu Sans,10"
set output "${join(dir, title)}"
set termoption noenhanced
${PALETTE.map((c, i) => `set linetype ${i + 1} lc rgb "${c}" lw 1.5`).join("\n")}
set linetype cycle ${PALETTE.length}
set multiplot layout 2,1
set grid
set key outside right top
set xlabel "minutes since the load started (dashed: faults; R replica SIGKILL, P plane SIGKILL+restart, S control plane SIGSTOP)"
${marks}
`;
  const scripts: Array<[string, string]> = [
    [
      "soak-rss.png",
      `${head("soak-rss.png")}set title "RSS (MB): control plane, planes (agent and ingress: one process), soak driver"
set ylabel "MB"
${plotLines(node, 2)}
set title "RSS (MB): replica processes (sandbox tree summed: bwrap and the model server)"
${plotLines(replicas, 2)}
unset multiplot
`,
    ],
    [
      "soak-fds.png",
      `${head("soak-fds.png")}set title "open file descriptors: control plane, planes, soak driver"
set ylabel "fds"
${plotLines(node, 3)}
set title "open file descriptors: replica processes"
${plotLines(replicas, 3)}
unset multiplot
`,
    ],
    [
      "soak-eld.png",
      `${head("soak-eld.png")}set title "event-loop delay p99 per 5 s (ms), monitorEventLoopDelay; replicas not measured"
set ylabel "ms"
${plotLines(node, 4)}
set title "event-loop delay max per 5 s (ms, log scale)"
set logscale y
${plotLines(node, 5)}
unset multiplot
`,
    ],
  ];
  const pngs: string[] = [];
  for (const [name, script] of scripts) {
    const scriptFile = join(dataDir, `${name}.gp`);
    writeFileSync(scriptFile, script);
    const r = spawnSync("gnuplot", [scriptFile], { encoding: "utf8", timeout: 60_000 });
    if (r.status !== 0) return { error: `gnuplot failed on ${scriptFile}: ${r.stderr}` };
    pngs.push(join(dir, name));
  }
  return { pngs };
}

const cell = (v: number | string | null) => (v === null ? "n/a" : String(v));

export interface SummaryInput {
  command: string;
  minutes: number;
  runStart: number;
  runEnd: number;
  warmUntil: number;
  requests: readonly SoakRequest[];
  faults: readonly FaultMark[];
  processes: readonly ProcessFigures[];
  duplicates: string[];
  audit: { records: number; outside: string[] };
  eldSource: string;
  pngs: string[] | null;
  plotError: string | null;
  pngPrefix: string;
  world: string;
  traffic: Record<Kind, string>;
  machine: string;
}

export function summary(s: SummaryInput): string {
  const out: string[] = [];
  const iso = (t: number) => new Date(t).toISOString().replace(/\.\d+Z$/, "Z");
  out.push("## Soak", "");
  out.push(
    `Reproduce: \`${s.command}\` (${s.minutes} min of load; ${s.machine}). Run ${iso(s.runStart)} to ${iso(s.runEnd)}.`,
    "",
    s.world,
    "",
  );
  out.push("### Traffic, whole run", "");
  out.push(
    "| kind | what | sent | 2xx | typed error | other error | hung | out of region | rate /min | p50 ms | p99 ms |",
  );
  out.push("|---|---|---|---|---|---|---|---|---|---|---|");
  for (const k of KINDS) {
    const kc = kindCounts(
      s.requests.filter((r) => r.kind === k),
      s.runStart,
      s.runEnd + 1,
    );
    out.push(
      `| ${k} | ${s.traffic[k]} | ${kc.sent} | ${kc.ok} | ${kc.typed_error} | ${kc.other_error} | ${kc.hung} | ${kc.out_of_region} | ${kc.rate_per_min} | ${kc.p50_ms} | ${kc.p99_ms} |`,
    );
  }
  const all = kindCounts(s.requests, s.runStart, s.runEnd + 1);
  out.push(
    `| all | | ${all.sent} | ${all.ok} | ${all.typed_error} | ${all.other_error} | ${all.hung} | ${all.out_of_region} | ${all.rate_per_min} | | |`,
    "",
  );
  const details = Object.entries(all.details).sort((a, b) => b[1] - a[1]);
  if (details.length) {
    out.push(
      `Failures by kind of failure: ${details.map(([k, n]) => `${k} × ${n}`).join("; ")}. "other error" is a failure`,
      "without a JSON `error_code`: a connection refused or reset at the client, a stream cut before its last chunk, a",
      "websocket closed or failed before its echo.",
      "",
    );
  }
  out.push(
    `Out of region from the planes' audit trails: ${s.audit.outside.length} of ${s.audit.records} records` +
      (s.audit.outside.length ? ` (${s.audit.outside.slice(0, 5).join(", ")})` : "") +
      `. Duplicate executions (request ids a replica logged more than once): ${s.duplicates.length}` +
      (s.duplicates.length ? ` (${s.duplicates.slice(0, 5).join(", ")})` : "") +
      ".",
    "",
  );
  out.push("### Faults", "");
  out.push(
    "| # | fault | at (min) | lasted s | sent | 2xx | typed | other | hung | out of region | predict recovery after restore s | notes |",
  );
  out.push("|---|---|---|---|---|---|---|---|---|---|---|---|");
  s.faults.forEach((f, i) => {
    const c = kindCounts(s.requests, f.startedAt, f.endedAt);
    const notes = Object.entries(f.extra)
      .map(([k, v]) => `${k}: ${v}`)
      .concat(Object.entries(c.details).map(([k, n]) => `${k} × ${n}`))
      .join("; ")
      .replace(/\|/g, "/");
    out.push(
      `| ${i + 1} | ${f.name} | ${((f.startedAt - s.runStart) / 60_000).toFixed(1)} | ${((f.endedAt - f.startedAt) / 1000).toFixed(0)} | ${c.sent} | ${c.ok} | ${c.typed_error} | ${c.other_error} | ${c.hung} | ${c.out_of_region} | ${f.recoveryMs === null ? "not recovered" : (f.recoveryMs / 1000).toFixed(1)} | ${notes || "—"} |`,
    );
  });
  out.push("");
  out.push("### Processes", "");
  out.push(
    `Sampled every 5 s from /proc/<pid>/status (VmRSS) and /proc/<pid>/fd. ${s.eldSource} "warm" is the first sample after ${((s.warmUntil - s.runStart) / 60_000).toFixed(1)} min on the process's final pid; the slope is a least-squares fit over the last 2/3 of the run on that pid.`,
    "",
  );
  out.push(
    "| process | pids | RSS warm MB | RSS end MB | RSS max MB | RSS slope MB/h | fds warm | fds end | fds max | ELD p99 median ms | ELD p99 max ms | ELD max ms | verdict |",
  );
  out.push("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
  for (const p of s.processes) {
    out.push(
      `| ${p.label} | ${p.pids} | ${p.rssWarmMb} | ${p.rssEndMb} | ${p.rssMaxMb} | ${cell(p.rssSlopeMbPerH)} | ${p.fdsWarm} | ${p.fdsEnd} | ${p.fdsMax} | ${cell(p.eldP99MedianMs)} | ${cell(p.eldP99MaxMs)} | ${cell(p.eldMaxMs)} | ${p.verdict} |`,
    );
  }
  out.push("");
  const suspects = s.processes.filter((p) => p.verdict.includes("suspect"));
  out.push(
    `Leak verdict: ${suspects.length === 0 ? "no process shows growth" : `suspect: ${suspects.map((p) => `${p.label} (${p.verdict})`).join(", ")}`}` +
      (s.processes.some((p) => p.verdict.includes("too short"))
        ? " in file descriptors; RSS is not judged on a run this short (it needs ≥ 30 min)."
        : "."),
    "",
  );
  if (s.pngs) {
    out.push(
      "Charts drawn by gnuplot (Debian `gnuplot-nox`: axes, legends and text without writing a font renderer; the soak says how to install it when it is missing) from DIR/plot/*.dat; dashed lines mark the faults.",
      "",
    );
    for (const png of s.pngs) {
      const name = png.split("/").pop()!;
      out.push(`![${name.replace(/\.png$/, "")}](${s.pngPrefix}${name})`, "");
    }
  } else {
    out.push(`No charts: ${s.plotError}`, "");
  }
  return `${out.join("\n")}\n`;
}
