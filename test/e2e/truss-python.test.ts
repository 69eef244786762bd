// Truss Python packages on real planes: `meridian control` and three `meridian plane`s (us, eu, uk), each
// running replicas in its bubblewrap sandbox. Unmodified truss packages written here — a `model.py` with
// preprocess and postprocess, one whose predict is a generator, both reading a team secret, their `data/`
// dir and their environment's name, one installing a requirement (a wheel built here, installed with
// `--no-index --find-links`: no package index is reached) — are pushed with `meridian push` into prod-eu,
// restricted to eu: they run only on eu-1 and answer through the regional endpoint, the stream chunk by
// chunk; a fresh requirement set shows the deployment BUILDING while eu-1 installs it. Then every bad
// package ends with its reason in status_message and in the logs API, with no process left and no
// virtualenv half-made: DEPLOY_FAILED for a syntax error, load() raising, a missing secret; BUILD_FAILED
// for no fitting python_version and (passing through BUILDING while pip runs) a requirement that cannot
// install.

import { execFile, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { promisify } from "node:util";
import { request } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BIN, type Cluster, DOMAIN, eventually, startCluster } from "../support/cluster.ts";
import { tempDir } from "../support/control.ts";
import { PlacementWatch, planeReplicas, predict, processAlive, replicaPid } from "../support/planes.ts";
import { expectReferenceShape } from "../support/reference.ts";

const run = promisify(execFile);
const DEBIAN_PYTHON = "/usr/bin/python3";

/** A pure-Python wheel built with zipfile (name, version, module, source, out dir). */
const WHEEL = `
import base64, hashlib, os, sys, zipfile
name, version, module, source, out = sys.argv[1:6]
dist = f"{name}-{version}.dist-info"
files = {
    f"{module}.py": source.encode(),
    f"{dist}/METADATA": f"Metadata-Version: 2.1\\nName: {name}\\nVersion: {version}\\n".encode(),
    f"{dist}/WHEEL": b"Wheel-Version: 1.0\\nGenerator: meridian-test\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n",
}
def digest(data):
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
record = "".join(f"{p},{digest(b)},{len(b)}\\n" for p, b in files.items()) + f"{dist}/RECORD,,\\n"
with zipfile.ZipFile(os.path.join(out, f"{name}-{version}-py3-none-any.whl"), "w") as z:
    for p, b in files.items():
        z.writestr(p, b)
    z.writestr(f"{dist}/RECORD", record)
`;

const GREETING_TOKEN = `tok-${createHash("sha256").update(String(Math.random())).digest("hex").slice(0, 24)}`;
const STREAM_TOKEN = `str-${createHash("sha256").update(String(Math.random())).digest("hex").slice(0, 24)}`;

/** truss's own package layout; nothing in it knows Meridian. */
const RESIDENCY_PY: Record<string, string> = {
  "config.yaml": `model_name: residency-py
python_version: py311
requirements:
  - meridian-greeting==1.0
environment_variables:
  SALUTATION: Guten Tag
model_metadata:
  example_model_input: {"name": "ada"}
secrets:
  greeting_token: null
resources:
  cpu: "1"
  memory: 512Mi
  use_gpu: false
`,
  "data/words.txt": "residency stays in region\n",
  "model/__init__.py": "",
  "model/model.py": `import hashlib
import os

from meridian_greeting import greet


class Model:
    def __init__(self, config, data_dir, secrets, environment, **kwargs):
        self._data_dir = data_dir
        self._secrets = secrets
        self._environment = environment["name"] if environment else None
        self._example = config["model_metadata"]["example_model_input"]
        self._words = None
        self._token = None

    def load(self):
        self._words = (self._data_dir / "words.txt").read_text().split()
        self._token = self._secrets["greeting_token"]

    def preprocess(self, model_input):
        model_input = model_input or self._example
        return {"name": str(model_input.get("name", "")).strip().title(), "probe": model_input.get("probe")}

    def predict(self, model_input):
        probe = model_input.get("probe")
        reached = None
        if probe:
            try:
                with open(probe) as f:
                    reached = f.read()
            except OSError as err:
                reached = type(err).__name__
        secret_file = "/secrets/greeting_token"
        st = os.stat(secret_file)
        try:
            with open(secret_file, "a") as f:
                f.write("x")
            writable = True
        except OSError:
            writable = False
        return {
            "greeting": greet(os.environ["SALUTATION"], model_input["name"]),
            "words": self._words,
            "environment": self._environment,
            "token_sha256": hashlib.sha256(self._token.encode()).hexdigest(),
            "secret_file": {"mode": oct(st.st_mode & 0o777), "same_value": open(secret_file).read() == self._token, "writable": writable},
            "secrets_dir_mode": oct(os.stat("/secrets").st_mode & 0o777),
            "probe": reached,
        }

    def postprocess(self, model_output):
        model_output["postprocessed"] = True
        return model_output
`,
};

const RESIDENCY_STREAM: Record<string, string> = {
  "config.yaml": `model_name: residency-stream
python_version: py311
secrets:
  stream_token: null
`,
  "data/words.txt": "one two three\n",
  "model/model.py": `import hashlib
import time


class Model:
    def __init__(self, data_dir, secrets, environment=None, **kwargs):
        self._data_dir = data_dir
        self._secrets = secrets
        self._environment = environment["name"] if environment else None

    def load(self):
        self._words = (self._data_dir / "words.txt").read_text().split()
        self._digest = hashlib.sha256(self._secrets["stream_token"].encode()).hexdigest()

    def predict(self, model_input):
        for i, word in enumerate(self._words):
            if i > 0:
                time.sleep(0.4)
            yield f"{word}\\n"
        yield f"[{self._environment} {self._digest}]\\n"
`,
};

/** A truss custom server (docker_server): it reads its secret as truss provides it, a file under /secrets. */
const CUSTOM_SECRETS: Record<string, string> = {
  "config.yaml": `model_name: custom-secrets
secrets:
  greeting_token: null
docker_server:
  start_command: python3 server.py
  server_port: 8000
  predict_endpoint: /predict
  readiness_endpoint: /ready
  liveness_endpoint: /ready
`,
  "server.py": `import hashlib, http.server, json, os

class Handler(http.server.BaseHTTPRequestHandler):
    def _send(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._send({})

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length") or 0))
        with open("/secrets/greeting_token") as f:
            value = f.read()
        self._send({"token_sha256": hashlib.sha256(value.encode()).hexdigest(), "listing": sorted(os.listdir("/secrets"))})

    def log_message(self, *args):
        pass

http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
`,
};

/**
 * Each bad package: its files, what status_message and the logs must say, and the status it ends in (its
 * replica on eu-1 is BUILD_FAILED for a build that failed, FAILED otherwise).
 */
const BAD: Array<{
  name: string;
  files: Record<string, string>;
  reason: RegExp;
  status: "DEPLOY_FAILED" | "BUILD_FAILED";
}> = [
  {
    name: "bad-syntax",
    files: {
      "config.yaml": "model_name: bad-syntax\npython_version: py311\n",
      "model/model.py": "class Model:\n    def predict(self, model_input)\n        return model_input\n",
    },
    reason: /SyntaxError.*model\.py.*line 2|model\.py.*line 2.*SyntaxError/s,
    status: "DEPLOY_FAILED",
  },
  {
    name: "bad-load",
    files: {
      "config.yaml": "model_name: bad-load\n",
      "model/model.py":
        "class Model:\n    def load(self):\n        raise RuntimeError('the weights are not where they should be')\n\n    def predict(self, model_input):\n        return model_input\n",
    },
    reason: /RuntimeError: the weights are not where they should be/,
    status: "DEPLOY_FAILED",
  },
  {
    name: "bad-secret",
    files: {
      "config.yaml": "model_name: bad-secret\nsecrets:\n  nowhere_token: null\n",
      "model/model.py": "class Model:\n    def predict(self, model_input):\n        return model_input\n",
    },
    reason: /Secret 'nowhere_token' not found/,
    status: "DEPLOY_FAILED",
  },
  {
    name: "bad-python",
    files: {
      "config.yaml": "model_name: bad-python\npython_version: py314\n",
      "model/model.py": "class Model:\n    def predict(self, model_input):\n        return model_input\n",
    },
    reason: /No interpreter on this plane fits: the package needs Python 3\.14 \(py314\); present: 3\.11/,
    status: "BUILD_FAILED",
  },
  {
    name: "bad-requirement",
    files: {
      "config.yaml": "model_name: bad-requirement\nrequirements:\n  - meridian-absent==9.9\n",
      "model/model.py": "class Model:\n    def predict(self, model_input):\n        return model_input\n",
    },
    reason:
      /pip could not install the requirements[\s\S]*ERROR: (Could not find a version that satisfies the requirement meridian-absent==9\.9|No matching distribution found for meridian-absent==9\.9)/,
    status: "BUILD_FAILED",
  },
];

function writePackage(root: string, files: Record<string, string>): string {
  const dir = join(root, createHash("sha256").update(JSON.stringify(files)).digest("hex").slice(0, 12));
  for (const [path, content] of Object.entries(files)) {
    mkdirSync(dirname(join(dir, path)), { recursive: true });
    writeFileSync(join(dir, path), content);
  }
  return dir;
}

describe("truss Python packages on planes", () => {
  let cluster: Cluster;
  let work: string;
  let wheels: string;
  let watch: PlacementWatch;

  /** `meridian push DIR --environment prod-eu --wait --json`, the CLI a user runs. */
  async function meridianPush(dir: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
    return new Promise((resolve) => {
      const child = spawn(
        process.execPath,
        [BIN, "push", dir, "--environment", "prod-eu", "--wait", "--timeout", "240", "--json"],
        {
          cwd: work,
          env: {
            ...process.env,
            MERIDIAN_API_URL: cluster.controlUrl,
            MERIDIAN_API_KEY: cluster.api.key!,
            MERIDIAN_DOMAIN: DOMAIN,
          },
          stdio: ["ignore", "pipe", "pipe"],
        },
      );
      let stdout = "";
      let stderr = "";
      child.stdout.setEncoding("utf8").on("data", (s: string) => (stdout += s));
      child.stderr.setEncoding("utf8").on("data", (s: string) => (stderr += s));
      child.once("close", (code) => resolve({ code, stdout, stderr }));
    });
  }

  async function modelNamed(name: string): Promise<{ id: string }> {
    const res = await cluster.api.get(`/v1/models?name=${encodeURIComponent(name)}`);
    const model = (res.body.models as Array<{ id: string; name: string }>).find((m) => m.name === name);
    if (!model) throw new Error(`no model ${name}: ${JSON.stringify(res.body)}`);
    return model;
  }

  async function deploymentOf(modelId: string) {
    const res = await cluster.api.get(`/v1/models/${modelId}/deployments`);
    return res.body.deployments[0] as {
      id: string;
      status: string;
      status_message: string | null;
    };
  }

  /**
   * The distinct `STATUS: status_message` lines of model `name`'s deployment, polled through the API as a
   * user would while `pending` (its push) runs, and once more after it.
   */
  async function statusesDuring(name: string, pending: Promise<unknown>): Promise<string[]> {
    const seen: string[] = [];
    let done = false;
    void pending.finally(() => {
      done = true;
    });
    for (let last = false; !last; ) {
      last = done;
      const res = await cluster.api.get(`/v1/models?name=${encodeURIComponent(name)}`);
      const model = (res.body.models as Array<{ id: string; name: string }>).find((m) => m.name === name);
      const d = model === undefined ? undefined : await deploymentOf(model.id);
      if (d !== undefined) {
        const line = `${d.status}${d.status_message ? `: ${d.status_message}` : ""}`;
        if (seen.at(-1) !== line) seen.push(line);
      }
      if (!last) await new Promise((r) => setTimeout(r, 100));
    }
    return seen;
  }

  async function logLines(modelId: string, deploymentId: string): Promise<string[]> {
    const res = await cluster.api.get(`/v1/models/${modelId}/deployments/${deploymentId}/logs`);
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    // Baseten's shape, with Meridian's documented fields (a `build` stream among them).
    expectReferenceShape("GetLogsResponseV1", res.body);
    return (res.body.logs as Array<{ message: string }>).map((l) => l.message);
  }

  beforeAll(async () => {
    work = tempDir();
    wheels = join(work, "wheels");
    mkdirSync(wheels, { recursive: true });
    await run(DEBIAN_PYTHON, [
      "-c",
      WHEEL,
      "meridian_greeting",
      "1.0",
      "meridian_greeting",
      "def greet(salutation, name):\n    return f'{salutation}, {name}!'\n",
      wheels,
    ]);
    const planeArgs = ["--pip-find-links", wheels];
    // pip reads no configuration of this machine.
    const env = { PIP_CONFIG_FILE: "/dev/null" };
    cluster = await startCluster({
      planes: [
        { name: "us-1", region: "us", global: true, args: planeArgs, env },
        { name: "eu-1", region: "eu", args: planeArgs, env },
        { name: "uk-1", region: "uk", args: planeArgs, env },
      ],
    });
    watch = new PlacementWatch(cluster).start();
    const restricted = await cluster.api.patch("/v1/environment_groups/prod-eu", {
      region_restriction: { region: "eu" },
    });
    expect(restricted.status, JSON.stringify(restricted.body)).toBe(200);
    for (const [name, value] of [
      ["greeting_token", GREETING_TOKEN],
      ["stream_token", STREAM_TOKEN],
    ]) {
      const made = await cluster.api.post("/v1/secrets", { name, value });
      expect(made.status, JSON.stringify(made.body)).toBe(200);
    }
  }, 120_000);

  afterAll(async () => {
    watch?.stop();
    await cluster?.stop();
  }, 60_000);

  it("serves an unmodified truss package from prod-eu, only in eu: preprocess, postprocess, its secret, data dir, environment and requirement", async () => {
    const push = meridianPush(writePackage(work, RESIDENCY_PY));
    const statuses = await statusesDuring("residency-py", push);
    const pushed = await push;
    expect(pushed.code, `${pushed.stdout}\n${pushed.stderr}`).toBe(0);
    const model = await modelNamed("residency-py");
    const deployment = await deploymentOf(model.id);
    expect(deployment.status).toBe("ACTIVE");
    // Its requirement set is new to eu-1: the deployment is BUILDING while eu-1 installs it, then comes up.
    const building = statuses.indexOf("BUILDING: Installing requirements on eu-1.");
    expect(building, statuses.join("\n")).toBeGreaterThanOrEqual(0);
    expect(statuses.indexOf("ACTIVE"), statuses.join("\n")).toBeGreaterThan(building);

    const host = `model-${model.id}-prod-eu.${DOMAIN}`;
    const eu = cluster.plane("eu-1");
    const secretFiles = join(eu.dataDir, "sandbox", "secrets");
    const replicaIds = readdirSync(secretFiles);
    expect(replicaIds).toHaveLength(1);
    const secretPath = join(secretFiles, replicaIds[0]!, "greeting_token");
    const served = await eventually(async () => {
      // The probe: a path on the plane where this replica's own secret lies; the replica must not reach it.
      const r = await predict(cluster, "eu-1", host, "/predict", { name: "  ada ", probe: secretPath });
      return r.status === 200 ? r : null;
    }, 30_000);
    expect(served.headers["x-meridian-region"]).toBe("eu");
    expect(served.headers["x-meridian-plane"]).toBe("eu-1");
    expect(served.body).toEqual({
      greeting: "Guten Tag, Ada!",
      words: ["residency", "stays", "in", "region"],
      environment: "prod-eu",
      token_sha256: createHash("sha256").update(GREETING_TOKEN).digest("hex"),
      secret_file: { mode: "0o400", same_value: true, writable: false },
      secrets_dir_mode: "0o500",
      probe: "FileNotFoundError",
      postprocessed: true,
    });

    // On the plane: the secret is a file only the replica's uid reads (0400 in a 0500 directory).
    const file = statSync(secretPath);
    expect(file.mode & 0o777).toBe(0o400);
    expect(file.uid).toBe(65534);
    expect(statSync(dirname(secretPath)).mode & 0o777).toBe(0o500);
    expect(readFileSync(secretPath, "utf8")).toBe(GREETING_TOKEN);

    // The requirement's build is in the logs API; the value of the secret is nowhere in the logs.
    const lines = await logLines(model.id, deployment.id);
    expect(
      lines.some((l) => l.includes("Successfully installed meridian-greeting-1.0")),
      lines.join("\n"),
    ).toBe(true);
    expect(lines).toContain("secrets in place: greeting_token");
    const build = await cluster.api.get(
      `/v1/models/${model.id}/deployments/${deployment.id}/logs?component=build`,
    );
    expect(build.body.logs.length).toBeGreaterThan(0);
    expect(build.body.logs.every((l: { stream: string }) => l.stream === "build")).toBe(true);
    expect(lines.join("\n")).not.toContain(GREETING_TOKEN);
    const planeLogs = [...cluster.planes.values()].flatMap((p) => p.process?.output ?? []).join("\n");
    expect(planeLogs).not.toContain(GREETING_TOKEN);
    expect(cluster.control.output.join("\n")).not.toContain(GREETING_TOKEN);

    // Built once, cached by content hash: one complete virtualenv, no build directory left.
    const venvs = readdirSync(join(eu.dataDir, "venvs"));
    expect(venvs).toHaveLength(1);
    expect(existsSync(join(eu.dataDir, "venvs", venvs[0]!, "meridian-venv.json"))).toBe(true);

    // The regional name is not served anywhere else.
    for (const other of ["us-1", "uk-1"]) {
      const r = await predict(cluster, other, host, "/predict", { name: "x" });
      expect(r.status, `${other}: ${JSON.stringify(r.body)}`).not.toBe(200);
    }
    expect([...(watch.seen.get(deployment.id) ?? [])]).toEqual(["eu-1"]);
  }, 300_000);

  it("streams a generator's chunks through the regional endpoint as they are yielded", async () => {
    const pushed = await meridianPush(writePackage(work, RESIDENCY_STREAM));
    expect(pushed.code, `${pushed.stdout}\n${pushed.stderr}`).toBe(0);
    const model = await modelNamed("residency-stream");
    const deployment = await deploymentOf(model.id);
    const eu = cluster.plane("eu-1");
    const host = `model-${model.id}-prod-eu.${DOMAIN}`;
    const res = await request(`http://${eu.host}:${eu.port}/predict`, {
      method: "POST",
      headers: { host, authorization: `Api-Key ${cluster.api.key}`, "content-type": "application/json" },
      body: "{}",
    });
    expect(res.statusCode).toBe(200);
    expect(res.headers["transfer-encoding"]).toBe("chunked");
    expect(res.headers["x-meridian-region"]).toBe("eu");
    const arrivals: Array<{ at: number; text: string }> = [];
    for await (const chunk of res.body) arrivals.push({ at: Date.now(), text: chunk.toString() });
    const text = arrivals.map((a) => a.text).join("");
    expect(text).toBe(
      `one\ntwo\nthree\n[prod-eu ${createHash("sha256").update(STREAM_TOKEN).digest("hex")}]\n`,
    );
    // The first word arrived while the model was still sleeping between the next ones (0.8 s in all).
    const firstAt = arrivals.find((a) => a.text.includes("one"))!.at;
    expect(arrivals.at(-1)!.at - firstAt).toBeGreaterThanOrEqual(600);
    expect([...(watch.seen.get(deployment.id) ?? [])]).toEqual(["eu-1"]);
  }, 300_000);

  it("gives a custom server its secrets as files under /secrets, as truss does", async () => {
    const pushed = await meridianPush(writePackage(work, CUSTOM_SECRETS));
    expect(pushed.code, `${pushed.stdout}\n${pushed.stderr}`).toBe(0);
    const model = await modelNamed("custom-secrets");
    const host = `model-${model.id}-prod-eu.${DOMAIN}`;
    const served = await predict(cluster, "eu-1", host, "/predict", {});
    expect(served.status, JSON.stringify(served.body)).toBe(200);
    // Only what its config.yaml names: greeting_token, not the team's other secret.
    expect(served.body).toEqual({
      token_sha256: createHash("sha256").update(GREETING_TOKEN).digest("hex"),
      listing: ["greeting_token"],
    });
  }, 300_000);

  it("fails every bad package with its reason in status_message and the logs, leaving nothing half-made", async () => {
    const eu = cluster.plane("eu-1");
    const venvsBefore = readdirSync(join(eu.dataDir, "venvs")).sort();
    const pushes = BAD.map((bad) => meridianPush(writePackage(work, bad.files)));
    const badRequirement = BAD.findIndex((b) => b.name === "bad-requirement");
    const requirementStatuses = await statusesDuring("bad-requirement", pushes[badRequirement]!);
    const results = await Promise.all(pushes);
    // pip ran (BUILDING, naming the plane) and failed: BUILD_FAILED, never DEPLOY_FAILED on the way.
    expect(requirementStatuses, requirementStatuses.join("\n")).toContain(
      "BUILDING: Installing requirements on eu-1.",
    );
    expect(requirementStatuses.at(-1), requirementStatuses.join("\n")).toMatch(
      /^BUILD_FAILED: pip could not/,
    );
    expect(requirementStatuses.some((l) => l.startsWith("DEPLOY_FAILED"))).toBe(false);
    for (const [i, bad] of BAD.entries()) {
      const pushed = results[i]!;
      // --wait ends with the failure: a non-zero exit that says why.
      expect(pushed.code, `${bad.name}: ${pushed.stdout}\n${pushed.stderr}`).not.toBe(0);
      const model = await modelNamed(bad.name);
      const deployment = await eventually(async () => {
        const d = await deploymentOf(model.id);
        return d.status === "DEPLOY_FAILED" || d.status === "BUILD_FAILED" ? d : null;
      }, 60_000);
      expect(deployment.status, bad.name).toBe(bad.status);
      expect(deployment.status_message ?? "", bad.name).toMatch(bad.reason);
      const lines = await logLines(model.id, deployment.id);
      expect(lines.join("\n"), bad.name).toMatch(bad.reason);

      // No replica process is left; the failed replica is FAILED (BUILD_FAILED) on eu-1 only, kept there
      // so the logs API still reads its lines.
      const replicas = (await planeReplicas(eu))!.filter((r) => r.deployment_id === deployment.id);
      expect(
        replicas.map((r) => r.state),
        bad.name,
      ).toEqual([bad.status === "BUILD_FAILED" ? "BUILD_FAILED" : "FAILED"]);
      const pid = replicaPid(eu, replicas[0]!.id);
      expect(pid === null || !processAlive(pid), bad.name).toBe(true);
      // No secret of a failed replica stays on the plane.
      expect(existsSync(join(eu.dataDir, "sandbox", "secrets", replicas[0]!.id)), bad.name).toBe(false);
      expect([...(watch.seen.get(deployment.id) ?? [])], bad.name).toEqual(["eu-1"]);
    }
    // The requirement that could not install left no virtualenv, nor a build directory, behind.
    expect(readdirSync(join(eu.dataDir, "venvs")).sort()).toEqual(venvsBefore);
    const python = (await planeReplicas(eu))!.filter((r) => r.state === "READY");
    expect(python.length).toBeGreaterThanOrEqual(2);
  }, 300_000);
});
