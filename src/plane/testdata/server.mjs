// A test replica: a real HTTP server with truss's probe paths (readiness `GET /v1/models/model`, liveness
// `GET /`) whose misbehaviour is chosen by flags. Used by the driver tests as the program a replica runs.
//   --listen HOST:PORT          where to listen (required); unix:/PATH for a Unix socket
//   --ready-after MS            readiness answers 503 until MS after start      --never-ready
//   --crash-after MS            exit with --crash-code (default 1) MS after start
//   --exit-at-start CODE        print a load error and exit with CODE before listening
//   --liveness-fail-after MS    liveness answers 500 from MS after start
//   --ignore-sigterm            keep running on SIGTERM      --grandchild   spawn a long-lived child
//   --lines N                   print N numbered lines at start
import { spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { createServer } from "node:http";
import { parseArgs } from "node:util";

const { values } = parseArgs({
  options: {
    listen: { type: "string" },
    "ready-after": { type: "string", default: "0" },
    "never-ready": { type: "boolean", default: false },
    "crash-after": { type: "string" },
    "crash-code": { type: "string", default: "1" },
    "exit-at-start": { type: "string" },
    "liveness-fail-after": { type: "string" },
    "ignore-sigterm": { type: "boolean", default: false },
    grandchild: { type: "boolean", default: false },
    lines: { type: "string", default: "0" },
  },
});

const startedAt = Date.now();
/** Distinguishes runs where pids do not (a container's pid is often 1). */
const boot = randomUUID();
const log = (fields) => process.stdout.write(`${JSON.stringify({ time: Date.now(), ...fields })}\n`);
const since = (flag) => values[flag] !== undefined && Date.now() - startedAt >= Number(values[flag]);

log({ msg: "starting", pid: process.pid, token: process.env.MERIDIAN_TEST_TOKEN ?? null });
process.stderr.write(`stderr hello from ${process.pid}\n`);
for (let i = 0; i < Number(values.lines); i++) log({ msg: "line", i });

if (values["exit-at-start"] !== undefined) {
  process.stderr.write("Error: load() failed: weights.bin not found\n");
  process.exit(Number(values["exit-at-start"]));
}
if (values["ignore-sigterm"]) process.on("SIGTERM", () => log({ msg: "ignoring SIGTERM" }));
if (values.grandchild) {
  const child = spawn(process.execPath, ["-e", "setInterval(() => {}, 1000)"], { stdio: "ignore" });
  log({ msg: "grandchild", pid: child.pid });
}
if (values["crash-after"] !== undefined) {
  setTimeout(() => {
    log({ msg: "crashing" });
    process.exit(Number(values["crash-code"]));
  }, Number(values["crash-after"]));
}

const listen = values.listen ?? "";
const [host, port] = listen.split(/:(?=\d+$)/);
const server = createServer((req, res) => {
  const reply = (status, body) => {
    res.writeHead(status, { "content-type": "application/json" });
    res.end(JSON.stringify(body));
  };
  if (req.url === "/v1/models/model") {
    const ready = !values["never-ready"] && since("ready-after");
    return reply(ready ? 200 : 503, { ready });
  }
  if (req.url === "/")
    return since("liveness-fail-after") ? reply(500, { alive: false }) : reply(200, { alive: true });
  if (req.url === "/info") {
    return reply(200, {
      boot,
      pid: process.pid,
      argv: process.argv.slice(2),
      cwd: process.cwd(),
      token: process.env.MERIDIAN_TEST_TOKEN ?? null,
      env: process.env,
    });
  }
  reply(404, { error: "not found" });
});
if (listen.startsWith("unix:")) {
  server.listen(listen.slice("unix:".length), () => log({ msg: "listening", address: listen }));
} else {
  server.listen(Number(port), host, () =>
    log({ msg: "listening", address: `${host}:${server.address().port}` }),
  );
}
