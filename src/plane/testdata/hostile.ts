// Hostile model packages for the sandbox tests: a JavaScript model (`model/model.js`), a custom server
// (`docker_server.start_command`, /usr/bin/python3) and a truss model (`model/model.py`, on the Python
// host) whose predict() tries to reach what a replica must
// never reach, and answers with the outcome of each attempt. Written by the tests, never shipped.

/** What the model is told to go after (host paths and addresses, as an attacker would guess them). */
export interface HostileTargets {
  /** Files it must not read: the plane's snapshot, credentials (`*.token`). */
  files: string[];
  /** Directories it must not list: the plane's data directory, another replica's private directory. */
  dirs: string[];
  /** A TCP server on the host's loopback; under egress deny it must be out of reach. */
  tcp: { host: string; port: number };
  /** The plane's pid: `/proc/{pid}/environ` holds the plane's environment. */
  planePid: number;
  /** A secret planted in the plane's environment and files (HOSTILE_TARGETS itself is left out of checks). */
  canary: string;
}

/** One attempt: `reached` is true when the model got what it tried for. */
export interface Attempt {
  what: string;
  target: string;
  reached: boolean;
  detail: string;
}

/** What the hostile predict() answers. */
export interface HostileAnswer {
  answered: true;
  uid: number;
  env: Record<string, string>;
  attempts: Attempt[];
  /** Its own private directory is writable: the positive control. */
  homeWritable: boolean;
}

const MODEL_JS = `
import fs from "node:fs";
import net from "node:net";
import os from "node:os";

const targets = JSON.parse(process.env.HOSTILE_TARGETS);

function attempt(what, target, fn) {
  try {
    const detail = fn();
    return { what, target, reached: true, detail: String(detail).slice(0, 200) };
  } catch (err) {
    return { what, target, reached: false, detail: err.code ?? err.message };
  }
}

/** Every *.token file under dir, a few levels deep: credentials the model could steal. */
function findTokens(dir, depth, found) {
  if (depth < 0 || found.length > 20) return found;
  let entries = [];
  try { entries = fs.readdirSync(dir, { withFileTypes: true }); } catch { return found; }
  for (const e of entries) {
    const path = dir === "/" ? "/" + e.name : dir + "/" + e.name;
    if (["proc", "sys", "dev"].includes(e.name) && dir === "/") continue;
    if (e.isDirectory()) findTokens(path, depth - 1, found);
    else if (e.name.endsWith(".token")) found.push(path);
  }
  return found;
}

function connect({ host, port }) {
  return new Promise((resolve) => {
    const s = net.connect({ host, port, timeout: 1500 });
    s.once("connect", () => { s.destroy(); resolve({ what: "tcp", target: host + ":" + port, reached: true, detail: "connected" }); });
    s.once("timeout", () => { s.destroy(); resolve({ what: "tcp", target: host + ":" + port, reached: false, detail: "timeout" }); });
    s.once("error", (err) => resolve({ what: "tcp", target: host + ":" + port, reached: false, detail: err.code ?? err.message }));
  });
}

/** The environment without HOSTILE_TARGETS, which names the canary for the checks above. */
function ownEnv() {
  const { HOSTILE_TARGETS, ...rest } = process.env;
  return rest;
}

export class Model {
  async predict() {
    const attempts = [];
    for (const f of targets.files) attempts.push(attempt("read", f, () => fs.readFileSync(f, "utf8")));
    for (const d of targets.dirs) attempts.push(attempt("list", d, () => fs.readdirSync(d).join(",")));
    for (const f of findTokens("/", 6, [])) attempts.push(attempt("read", f, () => fs.readFileSync(f, "utf8")));
    attempts.push(attempt("read", "/proc/1/environ", () => {
      const text = fs.readFileSync("/proc/1/environ", "utf8");
      if (!text.includes(targets.canary)) throw Object.assign(new Error("no canary"), { code: "NO_CANARY" });
      return text;
    }));
    attempts.push(attempt("read", "/proc/" + targets.planePid + "/environ", () => fs.readFileSync("/proc/" + targets.planePid + "/environ", "utf8")));
    attempts.push(attempt("env", "process.env", () => {
      if (!JSON.stringify(ownEnv()).includes(targets.canary)) throw Object.assign(new Error("no canary"), { code: "NO_CANARY" });
      return "canary";
    }));
    attempts.push(attempt("write", "/app/pwned", () => { fs.writeFileSync("/app/pwned", "x"); return "written"; }));
    attempts.push(attempt("write", process.cwd() + "/pwned", () => { fs.writeFileSync(process.cwd() + "/pwned", "x"); return "written"; }));
    attempts.push(await connect(targets.tcp));
    let homeWritable = false;
    try { fs.writeFileSync(os.homedir() + "/mine", "ok"); homeWritable = fs.readFileSync(os.homedir() + "/mine", "utf8") === "ok"; } catch {}
    return { answered: true, uid: process.getuid(), env: ownEnv(), attempts, homeWritable };
  }
}
`;

const SERVER_PY = `
import json, os, socket, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

targets = json.loads(os.environ["HOSTILE_TARGETS"])

def attempt(what, target, fn):
    try:
        return {"what": what, "target": target, "reached": True, "detail": str(fn())[:200]}
    except Exception as e:
        return {"what": what, "target": target, "reached": False, "detail": type(e).__name__ + ": " + str(e)[:120]}

def read(path):
    with open(path) as f:
        return f.read()

def write(path):
    with open(path, "w") as f:
        f.write("x")
    return "written"

def canary_in(text):
    if targets["canary"] not in text:
        raise LookupError("no canary")
    return text

def find_tokens(top):
    found = []
    for root, dirs, files in os.walk(top):
        if root == "/":
            dirs[:] = [d for d in dirs if d not in ("proc", "sys", "dev")]
        if root.count("/") > 6:
            dirs[:] = []
        found += [os.path.join(root, f) for f in files if f.endswith(".token")]
        if len(found) > 20:
            break
    return found

def own_env():
    """The environment without HOSTILE_TARGETS, which names the canary for the checks."""
    return {k: v for k, v in os.environ.items() if k != "HOSTILE_TARGETS"}

def tcp():
    s = socket.create_connection((targets["tcp"]["host"], targets["tcp"]["port"]), timeout=1.5)
    s.close()
    return "connected"

def run():
    attempts = []
    attempts += [attempt("read", f, lambda f=f: read(f)) for f in targets["files"]]
    attempts += [attempt("list", d, lambda d=d: ",".join(os.listdir(d))) for d in targets["dirs"]]
    attempts += [attempt("read", f, lambda f=f: read(f)) for f in find_tokens("/")]
    attempts.append(attempt("read", "/proc/1/environ", lambda: canary_in(read("/proc/1/environ"))))
    pid_environ = "/proc/%d/environ" % targets["planePid"]
    attempts.append(attempt("read", pid_environ, lambda: read(pid_environ)))
    attempts.append(attempt("env", "os.environ", lambda: canary_in(json.dumps(own_env()))))
    attempts.append(attempt("write", "/app/pwned", lambda: write("/app/pwned")))
    attempts.append(attempt("write", os.getcwd() + "/pwned", lambda: write(os.getcwd() + "/pwned")))
    t = targets["tcp"]
    attempts.append(attempt("tcp", "%s:%d" % (t["host"], t["port"]), tcp))
    home = False
    try:
        write(os.path.expanduser("~/mine"))
        home = True
    except Exception:
        pass
    return {"answered": True, "uid": os.getuid(), "env": own_env(), "attempts": attempts, "homeWritable": home}

class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass
    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def do_GET(self):
        self.reply(200, {"ok": True})
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.reply(200, run())

HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
`;

function config(lines: string[], targets: HostileTargets): string {
  return [
    "model_name: hostile",
    "environment_variables:",
    `  HOSTILE_TARGETS: '${JSON.stringify(targets).replaceAll("'", "''")}'`,
    ...lines,
    "",
  ].join("\n");
}

/** The JavaScript model: files of the package, path → content. */
export function hostileModelPackage(targets: HostileTargets): Record<string, string> {
  return { "config.yaml": config([], targets), "model/model.js": MODEL_JS };
}

/** A truss model.py whose predict() makes the custom server's attempts, on Meridian's Python host. */
export function hostileTrussPackage(targets: HostileTargets): Record<string, string> {
  const attempts = SERVER_PY.slice(0, SERVER_PY.indexOf("class Handler"));
  return {
    "config.yaml": config([], targets),
    "model/model.py": `${attempts}\nclass Model:\n    def predict(self, model_input):\n        return run()\n`,
  };
}

/** The custom server (Python's standard library), started by start_command. */
export function hostileServerPackage(targets: HostileTargets): Record<string, string> {
  return {
    "config.yaml": config(
      [
        "docker_server:",
        "  start_command: /usr/bin/python3 server.py",
        "  server_port: 8000",
        "  predict_endpoint: /predict",
        "  readiness_endpoint: /health",
        "  liveness_endpoint: /health",
      ],
      targets,
    ),
    "server.py": SERVER_PY,
  };
}
