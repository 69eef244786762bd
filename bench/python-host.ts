// The Python host against its baselines, same run: requests/s and CPU per request of
//   (a) a bare `http.server` (ThreadingHTTPServer, HTTP/1.1 keep-alive, Nagle off) answering what
//       examples/hello-py answers, written inline in its handler, and
//   (b) the Python host (src/runtime/python/truss_host.py) serving examples/hello-py, and (b′) the same
//       model with `async def predict` (no worker thread: the host's own cost), all on Debian's
//       /usr/bin/python3, and
//   (c) the JavaScript host (`meridian serve-model examples/hello-js`), which answers the same JSON;
// plus each host's start → first answer. wrk, keep-alive POSTs, runs interleaved, the median reported.
//
//   npx tsx bench/python-host.ts [--quick] [--write]     (--write replaces the section in BENCHMARKS.md)

import { spawn } from "node:child_process";
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { TRUSS_HOST_SCRIPT } from "../src/runtime/python.ts";
import {
  BIN,
  type Child,
  cpuMicros,
  fmt,
  freePort,
  loadAverage,
  median,
  ROOT,
  ratio,
  removeTempDirs,
  runWrk,
  sleep,
  startChild,
  stopAllChildren,
  tempDir,
  until200,
  writeBody,
} from "./lib.ts";

export const PYTHON = "/usr/bin/python3";

// What examples/hello-py's Model answers, in a plain http.server handler: the baseline does the same
// JSON work (parse the body, build the answer, serialise it) and nothing of the host's.
const BARE_SERVER = `
import http.server, json, os, sys

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        answer = json.dumps({
            "message": "Hello from bench", "environment": "bench",
            "model_id": os.environ.get("MERIDIAN_MODEL_ID"), "echo": json.loads(body),
        }, separators=(",", ":")).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
print("listening", flush=True)
server.serve_forever()
`;

type Server = "bare" | "python" | "python-async" | "javascript";
const SERVERS: Server[] = ["bare", "python", "python-async", "javascript"];
const LABELS: Record<Server, string> = {
  bare: "(a) bare `http.server`, the same answer inline",
  python: "(b) Python host, examples/hello-py",
  "python-async": "(b′) Python host, hello-py with `async def predict`",
  javascript: "(c) JavaScript host, examples/hello-js",
};

/** examples/hello-py with its predict made `async def`: the same answer without the worker thread. */
function asyncHello(dir: string): string {
  const pkg = join(dir, "hello-py-async");
  mkdirSync(join(pkg, "model"), { recursive: true });
  copyFileSync(join(ROOT, "examples/hello-py/config.yaml"), join(pkg, "config.yaml"));
  const source = readFileSync(join(ROOT, "examples/hello-py/model/model.py"), "utf8");
  if (!source.includes("    def predict("))
    throw new Error("examples/hello-py has no sync predict to make async");
  writeFileSync(join(pkg, "model/model.py"), source.replace("    def predict(", "    async def predict("));
  return pkg;
}

export interface PythonHostOptions {
  runs: number;
  durationS: number;
  connections: number[];
}

export interface PythonHostFigures {
  options: PythonHostOptions;
  /** server → connections → per-run { rps, cpuUs, p50, p99 } */
  cells: Record<Server, Record<number, Array<{ rps: number; cpuUs: number; p50: number; p99: number }>>>;
  /** start → first 200 from predict, ms, per run */
  firstAnswer: Record<"python" | "javascript", number[]>;
  python: string;
  loadBefore: string;
  loadAfter: string;
}

async function start(kind: Server, port: number, asyncPackage = ""): Promise<Child> {
  const listen = `127.0.0.1:${port}`;
  switch (kind) {
    case "python-async":
      return startChild(
        "python host (async)",
        PYTHON,
        ["-B", "-s", TRUSS_HOST_SCRIPT, asyncPackage, "--listen", listen, "--environment", "bench"],
        { MERIDIAN_MODEL_ID: "" },
      );
    case "bare":
      return startChild("bare http.server", PYTHON, ["-c", BARE_SERVER, String(port)]);
    case "python":
      return startChild(
        "python host",
        PYTHON,
        [
          "-B",
          "-s",
          TRUSS_HOST_SCRIPT,
          join(ROOT, "examples/hello-py"),
          "--listen",
          listen,
          "--environment",
          "bench",
        ],
        { MERIDIAN_MODEL_ID: "" },
      );
    case "javascript":
      return startChild("javascript host", process.execPath, [
        BIN,
        "serve-model",
        join(ROOT, "examples/hello-js"),
        "--listen",
        listen,
        "--environment",
        "bench",
      ]);
  }
}

/** Process start → the first 200 from predict (import, load(), listen, one request). */
async function firstAnswer(kind: "python" | "javascript"): Promise<number> {
  const port = await freePort();
  const began = performance.now();
  const child = await start(kind, port);
  await until200(
    `http://127.0.0.1:${port}/v1/models/model:predict`,
    { "content-type": "application/json" },
    "{}",
    30_000,
  );
  const ms = performance.now() - began;
  await child.stop();
  return ms;
}

export async function runPythonHost(
  o: PythonHostOptions,
  log: (m: string) => void = () => {},
): Promise<PythonHostFigures> {
  const dir = tempDir("meridian-bench-py-");
  const body = writeBody(dir, "small.json", null);
  const loadBefore = loadAverage();
  const servers = SERVERS;
  const asyncPackage = asyncHello(dir);
  const running = new Map<Server, { child: Child; url: string }>();
  for (const kind of servers) {
    const port = await freePort();
    const child = await start(kind, port, asyncPackage);
    const url = `http://127.0.0.1:${port}/v1/models/model:predict`;
    await until200(url, { "content-type": "application/json" }, "{}", 30_000);
    running.set(kind, { child, url });
  }
  const cells = Object.fromEntries(servers.map((s) => [s, {}])) as PythonHostFigures["cells"];
  for (let run = 0; run < o.runs; run++) {
    for (const connections of o.connections) {
      for (const kind of servers) {
        const { child, url } = running.get(kind)!;
        const pid = child.proc.pid!;
        const cpuBefore = cpuMicros(pid);
        const result = await runWrk({ url, bodyFile: body, connections, threads: 1, durationS: o.durationS });
        const cpu = cpuMicros(pid) - cpuBefore;
        if (result.errors > 0 || result.non2xx > 0) {
          throw new Error(
            `${kind} c=${connections}: ${result.errors} errors, ${result.non2xx} non-2xx answers`,
          );
        }
        cells[kind][connections] ??= [];
        cells[kind][connections].push({
          rps: result.rps,
          cpuUs: cpu / result.requests,
          p50: result.p50us,
          p99: result.p99us,
        });
        log(
          `run ${run + 1} c=${connections} ${kind}: ${fmt(result.rps)} req/s, ${fmt(cpu / result.requests, 1)} µs CPU/req`,
        );
        await sleep(200);
      }
    }
  }
  for (const { child } of running.values()) await child.stop();
  const firstAnswers: PythonHostFigures["firstAnswer"] = { python: [], javascript: [] };
  for (let run = 0; run < Math.max(3, o.runs); run++) {
    for (const kind of ["python", "javascript"] as const) firstAnswers[kind].push(await firstAnswer(kind));
  }
  const version = await new Promise<string>((ok) => {
    const p = spawn(PYTHON, ["--version"]);
    let out = "";
    p.stdout.on("data", (c) => {
      out += c;
    });
    p.on("close", () => ok(out.trim()));
  });
  return {
    options: o,
    cells,
    firstAnswer: firstAnswers,
    python: `${PYTHON} (${version})`,
    loadBefore,
    loadAfter: loadAverage(),
  };
}

export const SECTION_START = "<!-- python-host: generated by `npx tsx bench/python-host.ts --write` -->";
export const SECTION_END = "<!-- /python-host -->";

export function renderPythonHost(f: PythonHostFigures): string {
  const lines = [
    SECTION_START,
    "## 6. Python host",
    "",
    `Each cell: \`wrk -t1 -c{N} -d${f.options.durationS}s\`, keep-alive POSTs of a small JSON body (45 bytes) to \`/v1/models/model:predict\`; ${f.options.runs} runs, interleaved (every cell once per round), the **median** reported. (a) is a bare \`http.server\` (\`ThreadingHTTPServer\`, HTTP/1.1, Nagle off) whose handler builds the answer examples/hello-py gives, inline; (b) is the Python host serving examples/hello-py (a sync \`predict\`, so each request also crosses to a worker thread and back, as truss runs it); (b′) is the same model with \`async def predict\`, run on the event loop: what the host's HTTP layer and routing cost without the thread hop; all on ${f.python}. (c) is \`meridian serve-model examples/hello-js\`, the same answer from the JavaScript host. CPU per request is the server process's utime+stime from /proc divided by the requests wrk completed. Load average at start: ${f.loadBefore}; at end: ${f.loadAfter}.`,
    "",
    "Reproduce: `npx tsx bench/python-host.ts --write` (about 4 minutes; `--quick` makes one short run per cell and writes nothing). Read the ratios within the run: this machine's load moves absolute figures by ±50% (other test runs were going on).",
    "",
    "| conc. | server | req/s | p50 µs | p99 µs | CPU µs/req | req/s vs bare `http.server` | req/s vs JavaScript host |",
    "|---:|---|---:|---:|---:|---:|---:|---:|",
  ];
  for (const c of f.options.connections) {
    const rps = (s: Server) => median(f.cells[s][c]!.map((x) => x.rps));
    for (const s of SERVERS) {
      const cell = f.cells[s][c]!;
      lines.push(
        `| ${c} | ${LABELS[s]} | ${fmt(rps(s))} | ${fmt(median(cell.map((x) => x.p50)))} | ${fmt(median(cell.map((x) => x.p99)))} | ${fmt(median(cell.map((x) => x.cpuUs)), 1)} | ${ratio(rps(s), rps("bare"))} | ${ratio(rps(s), rps("javascript"))} |`,
      );
    }
  }
  const cpu = (s: Server, c: number) => median(f.cells[s][c]!.map((x) => x.cpuUs));
  const hop = f.options.connections.map(
    (c) => `${fmt(cpu("python", c) - cpu("python-async", c))} µs at c=${c}`,
  );
  const own = f.options.connections.map((c) => `${fmt(cpu("python-async", c), 1)} µs at c=${c}`);
  lines.push(
    "",
    `What the rows say: the host's own work per request (HTTP/1.1 parse and answer, routing, JSON, the model call on the event loop: row b′) costs ${own.join(", ")} of CPU, against ${f.options.connections.map((c) => `${fmt(cpu("bare", c), 1)}`).join(", ")} µs for the bare \`http.server\` doing the same JSON. A sync \`predict\` adds the round trip to a worker thread and back (row b minus row b′): ${hop.join(", ")}. That hop is what truss's contract asks for (sync methods run in a thread, so a slow \`predict\` never blocks the server); most of it is the interpreter's lock changing hands twice per request (\`strace -c\` counts about nine futex calls per request at c=16, against none for an async \`predict\`), which is why it grows with the machine's load.`,
    "",
    `Start → first answer (process start, import, \`load()\`, listen, one predict), median of ${f.firstAnswer.python.length}: Python host ${fmt(median(f.firstAnswer.python))} ms, JavaScript host ${fmt(median(f.firstAnswer.javascript))} ms.`,
    "",
    "Per run (req/s; c as in the table):",
    "",
    "| server | conc. | " +
      f.cells.bare[f.options.connections[0]!]!.map((_, i) => `run ${i + 1}`).join(" | ") +
      " |",
    `|---|---:|${f.cells.bare[f.options.connections[0]!]!.map(() => "---:").join("|")}|`,
  );
  for (const s of SERVERS) {
    for (const c of f.options.connections) {
      lines.push(`| ${s} | ${c} | ${f.cells[s][c]!.map((x) => fmt(x.rps)).join(" | ")} |`);
    }
  }
  lines.push("", SECTION_END);
  return lines.join("\n");
}

/** Puts the section into BENCHMARKS.md: in place of an earlier one, else before the analysis. */
export function writeSection(file: string, section: string): void {
  const text = readFileSync(file, "utf8");
  const begin = text.indexOf(SECTION_START);
  const end = text.indexOf(SECTION_END);
  if (begin >= 0 && end > begin) {
    writeFileSync(file, text.slice(0, begin) + section + text.slice(end + SECTION_END.length));
    return;
  }
  const marker = "<!-- end of generated figures";
  const at = text.indexOf(marker);
  writeFileSync(
    file,
    at < 0 ? `${text}\n${section}\n` : `${text.slice(0, at)}${section}\n\n${text.slice(at)}`,
  );
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const quick = process.argv.includes("--quick");
  const options: PythonHostOptions = quick
    ? { runs: 1, durationS: 1, connections: [1, 16] }
    : { runs: 5, durationS: 3, connections: [1, 16, 64] };
  const began = Date.now();
  try {
    const figures = await runPythonHost(options, (m) =>
      process.stdout.write(`[${((Date.now() - began) / 1000).toFixed(0).padStart(3)} s] ${m}\n`),
    );
    const section = renderPythonHost(figures);
    process.stdout.write(`\n${section}\n`);
    if (process.argv.includes("--write")) writeSection(join(ROOT, "BENCHMARKS.md"), section);
  } finally {
    await stopAllChildren();
    removeTempDirs();
  }
}
