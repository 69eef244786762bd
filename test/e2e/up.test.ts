// `meridian up` as a newcomer runs it, then the seed's three setup steps with the CLI: create regional
// environments, restrict them as the operator, push, and call the regional endpoint with the seed's own
// Python httpx client — names resolved through Meridian's DNS, the local CA trusted.

import { type ChildProcess, execFile, spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import { Agent, request } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BIN, freePort } from "../support/cluster.ts";
import { tempDir } from "../support/control.ts";

const run = promisify(execFile);
const EXAMPLES = resolve(import.meta.dirname, "../../examples");
const SEED_CLIENT = resolve(import.meta.dirname, "fixtures/seed_client.py");
const PYTHON = "/usr/bin/python3";

interface Up {
  child: ChildProcess;
  output: string;
  exited: Promise<number | null>;
}

function startUp(cwd: string, args: string[]): Up {
  const child = spawn(process.execPath, [BIN, "up", ...args], { cwd, stdio: ["ignore", "pipe", "pipe"] });
  const up: Up = { child, output: "", exited: new Promise((ok) => child.once("exit", (code) => ok(code))) };
  child.stdout!.on("data", (d: Buffer) => (up.output += d.toString()));
  child.stderr!.on("data", (d: Buffer) => (up.output += d.toString()));
  return up;
}

async function waitFor(up: Up, text: string, timeoutMs = 90_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!up.output.includes(text)) {
    if (up.child.exitCode !== null) throw new Error(`meridian up exited ${up.child.exitCode}:\n${up.output}`);
    if (Date.now() > deadline) throw new Error(`no '${text}' within ${timeoutMs} ms:\n${up.output}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe("meridian up and the seed's walkthrough", () => {
  const dir = tempDir();
  const dataDir = join(dir, ".meridian");
  let flags: string[];
  let up: Up;
  let httpsPort: number;
  let dnsPort: number;

  /** Runs the CLI from the user's directory; settings come from ./.meridian/up.json alone. */
  async function meridian(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
    const env = { ...process.env };
    for (const k of ["MERIDIAN_API_URL", "MERIDIAN_API_KEY", "MERIDIAN_DNS", "MERIDIAN_CA_FILE"])
      delete env[k];
    env["XDG_CONFIG_HOME"] = join(dir, "config");
    try {
      const { stdout, stderr } = await run(process.execPath, [BIN, ...args], {
        cwd: dir,
        env,
        timeout: 120_000,
      });
      return { code: 0, stdout, stderr };
    } catch (err) {
      const e = err as { code: number; stdout: string; stderr: string };
      return { code: typeof e.code === "number" ? e.code : 1, stdout: e.stdout, stderr: e.stderr };
    }
  }
  async function json(...args: string[]): Promise<any> {
    const res = await meridian(...args, "--json");
    expect(res.code, `${args.join(" ")}: ${res.stderr}`).toBe(0);
    return JSON.parse(res.stdout);
  }
  async function seedClient(modelId: string, env: string): Promise<any> {
    const manifest = JSON.parse(readFileSync(join(dataDir, "up.json"), "utf8"));
    const { stdout } = await run(PYTHON, [SEED_CLIENT], {
      env: {
        ...process.env,
        MODEL_ID: modelId,
        ENV_NAME: env,
        BASETEN_API_KEY: readFileSync(manifest.api_key_file, "utf8").trim(),
        MERIDIAN_DOMAIN: manifest.domain,
        MERIDIAN_DNS: manifest.dns,
        MERIDIAN_HTTPS_PORT: String(httpsPort),
        SSL_CERT_FILE: manifest.ca_file,
      },
      timeout: 30_000,
    });
    return JSON.parse(stdout.trim().split("\n").pop()!);
  }

  beforeAll(async () => {
    httpsPort = await freePort("127.0.1.1");
    dnsPort = await freePort("127.0.0.1");
    flags = [
      "--control-port",
      String(await freePort("127.0.0.1")),
      "--https-port",
      String(httpsPort),
      "--admin-port",
      String(await freePort("127.0.1.1")),
      "--dns",
      `127.0.0.1:${dnsPort}`,
    ];
    up = startUp(dir, flags);
    await waitFor(up, "Stop with Ctrl-C");
  }, 120_000);

  afterAll(async () => {
    if (up && up.child.exitCode === null) {
      up.child.kill("SIGINT");
      await up.exited;
    }
  }, 60_000);

  it("prints the endpoints, the key, the DNS and a ready-to-paste call, and writes up.json", () => {
    for (const text of [
      "Meridian is up.",
      "Control API",
      "admin API key: .meridian/control/admin.key",
      "Local CA",
      "meridian predict --model",
    ]) {
      expect(up.output).toContain(text);
    }
    const manifest = JSON.parse(readFileSync(join(dataDir, "up.json"), "utf8"));
    expect(manifest).toMatchObject({ domain: "meridian.internal", dns: `127.0.0.1:${dnsPort}` });
    expect(existsSync(manifest.api_key_file)).toBe(true);
    expect(manifest.planes.map((p: { region: string }) => p.region)).toEqual(["us", "eu", "uk", "au"]);
    expect(new Set(manifest.planes.map((p: { ingress: string }) => p.ingress.split(":")[0])).size).toBe(4);
  });

  it("serves the example model from its regional endpoint in eu", async () => {
    const example = JSON.parse(readFileSync(join(dataDir, "example.json"), "utf8"));
    const res = await json(
      "predict",
      "--model",
      example.id,
      "--regional",
      "prod-eu",
      "--data",
      '{"prompt":"hi"}',
    );
    expect(res.status).toBe(200);
    expect(res.processed).toMatchObject({ region: "eu", plane: "eu-1" });
  });

  it("walks the seed: regional environments, restricted by the operator, called with the seed's client", async () => {
    const alpha = await json(
      "push",
      join(EXAMPLES, "hello-js"),
      "--model-name",
      "alpha",
      "--promote",
      "--wait",
    );
    const beta = await json(
      "push",
      join(EXAMPLES, "hello-js"),
      "--model-name",
      "beta",
      "--promote",
      "--wait",
    );
    expect(alpha.deployment.status).toBe("ACTIVE");

    // 1. Create environments with region-specific names.
    for (const m of [alpha.model.id, beta.model.id]) {
      for (const env of ["prod-us", "prod-eu"]) await json("environments", "create", env, "--model", m);
    }
    // 2. The operator restricts them (Baseten: "contact support").
    await json("admin", "restrict", "--environment", "prod-eu", "--region", "eu");
    await json("admin", "restrict", "--environment", "prod-us", "--region", "us");
    const envs = await json("environments", "list", "--model", beta.model.id);
    const restricted = Object.fromEntries(
      envs.environments.map((e: any) => [e.name, e.region_restriction?.region]),
    );
    expect(restricted).toMatchObject({ "prod-eu": "eu", "prod-us": "us" });

    // Deploy to regional environments the same way as standard ones.
    const pushedEu = await json(
      "push",
      join(EXAMPLES, "hello-js"),
      "--model-name",
      "alpha",
      "--environment",
      "prod-eu",
      "--wait",
    );
    expect(pushedEu.endpoints.regional).toBe(
      `https://model-${alpha.model.id}-prod-eu.meridian.internal:${httpsPort}/predict`,
    );
    const pushedUs = await json(
      "push",
      join(EXAMPLES, "hello-js"),
      "--model-name",
      "beta",
      "--environment",
      "prod-us",
      "--wait",
    );
    expect(pushedUs.deployment.region.slug).toBe("us");

    // 3. Call the regional endpoint with the seed's own code.
    const eu = await seedClient(alpha.model.id, "prod-eu");
    expect(eu).toMatchObject({ status: 200, region: "eu", plane: "eu-1", route: "eu-1" });
    expect(eu.body.environment).toBe("prod-eu");
    const us = await seedClient(beta.model.id, "prod-us");
    expect(us).toMatchObject({ status: 200, region: "us", plane: "us-1" });

    // The standard endpoint keeps working; it enters at the global ingress and is handed to eu.
    const standard = await json(
      "predict",
      "--model",
      alpha.model.id,
      "--environment",
      "prod-eu",
      "--data",
      "{}",
    );
    expect(standard.status).toBe(200);
    expect(standard.processed).toMatchObject({ region: "eu", route: "us-1, eu-1" });

    // A regional name for an environment without a restriction does not exist.
    const missing = await meridian("predict", "--model", alpha.model.id, "--regional", "production");
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain("NXDOMAIN");
  }, 180_000);

  it("pushes and calls every example: a streaming model streams through the ingress, a Python custom server answers", async () => {
    const stream = await json("push", join(EXAMPLES, "stream-js"), "--environment", "prod-eu", "--wait");
    expect(stream.deployment.status).toBe("ACTIVE");
    const streamed = await json(
      "predict",
      "--model",
      stream.model.id,
      "--regional",
      "prod-eu",
      "--data",
      '{"prompt":"one two three"}',
    );
    expect(streamed.status).toBe(200);
    expect(streamed.body).toBe("one\ntwo\nthree\n[done in prod-eu]\n");

    // Chunks reach the client as the model yields them, through the eu ingress over HTTPS.
    const manifest = JSON.parse(readFileSync(join(dataDir, "up.json"), "utf8"));
    const host = `model-${stream.model.id}-prod-eu.${manifest.domain}`;
    const dispatcher = new Agent({
      connect: {
        ca: readFileSync(manifest.ca_file),
        servername: host,
        lookup: (_h, o, cb) =>
          (o as { all?: boolean }).all
            ? cb(null, [{ address: "127.0.2.1", family: 4 }] as never)
            : cb(null, "127.0.2.1", 4),
      },
    });
    try {
      const started = Date.now();
      const res = await request(`https://${host}:${httpsPort}/predict`, {
        method: "POST",
        dispatcher,
        headers: { authorization: `Api-Key ${readFileSync(manifest.api_key_file, "utf8").trim()}` },
        body: JSON.stringify({ prompt: "a b c", delay_ms: 400 }),
      });
      const arrivals: number[] = [];
      for await (const _chunk of res.body) arrivals.push(Date.now() - started);
      expect(res.headers["x-meridian-region"]).toBe("eu");
      expect(arrivals[0]!).toBeLessThan(arrivals.at(-1)! - 600);
    } finally {
      await dispatcher.close();
    }

    const custom = await json("push", join(EXAMPLES, "custom-python"), "--environment", "prod-eu", "--wait");
    const answer = await json(
      "predict",
      "--model",
      custom.model.id,
      "--regional",
      "prod-eu",
      "--data",
      '{"q":1}',
    );
    expect(answer.status).toBe(200);
    expect(answer.body).toMatchObject({ server: "python", message: "Bonjour from prod-eu", echo: { q: 1 } });
    expect(answer.processed.plane).toBe("eu-1");
  }, 120_000);

  it("refuses reserved and invalid environment names with the rule they break", async () => {
    const example = JSON.parse(readFileSync(join(dataDir, "example.json"), "utf8"));
    const reserved = await meridian("environments", "create", "development", "--model", example.id);
    expect(reserved.code).toBe(1);
    expect(reserved.stderr).toContain("reserved");
    const invalid = await meridian("environments", "create", "Prod_EU", "--model", example.id);
    expect(invalid.code).toBe(1);
    expect(invalid.stderr).toContain("lowercase letters, digits and hyphens");
    const long = await meridian("environments", "create", "x".repeat(41), "--model", example.id);
    expect(long.stderr).toContain("at most 40 characters");
  });

  it("forces a redeploy when promoting an unrestricted deployment into a regional environment", async () => {
    const model = await json(
      "push",
      join(EXAMPLES, "hello-js"),
      "--model-name",
      "gamma",
      "--promote",
      "--wait",
    );
    await json("environments", "create", "prod-eu", "--model", model.model.id);
    const envBefore = await json("environments", "list", "--model", model.model.id);
    expect(
      envBefore.environments.find((e: any) => e.name === "prod-eu").promotion_settings.redeploy_on_promotion,
    ).toBe(false);
    const promoted = await json(
      "promote",
      "--model",
      model.model.id,
      "--deployment",
      model.deployment.id,
      "--environment",
      "prod-eu",
    );
    expect(promoted.id).not.toBe(model.deployment.id);
    expect(promoted.region.slug).toBe("eu");
    const deadline = Date.now() + 60_000;
    for (;;) {
      const res = await meridian("predict", "--model", model.model.id, "--regional", "prod-eu", "--json");
      if (res.code === 0 && JSON.parse(res.stdout).processed.deployment === promoted.id) {
        expect(JSON.parse(res.stdout).processed.region).toBe("eu");
        break;
      }
      if (Date.now() > deadline)
        throw new Error(`prod-eu never served ${promoted.id}: ${res.stdout} ${res.stderr}`);
      await new Promise((r) => setTimeout(r, 300));
    }
  }, 90_000);

  it("refuses clearly when its addresses are taken", async () => {
    const second = startUp(dir, [...flags, "--data-dir", join(dir, "other")]);
    const code = await second.exited;
    expect(code).toBe(1);
    expect(second.output).toContain("is already in use");
  });

  it("drains on Ctrl-C and comes back with its state", async () => {
    const example = JSON.parse(readFileSync(join(dataDir, "example.json"), "utf8"));
    up.child.kill("SIGINT");
    expect(await up.exited).toBe(0);
    expect(up.output).toContain("Stopped.");
    up = startUp(dir, flags);
    await waitFor(up, "Stop with Ctrl-C");
    expect(up.output).not.toContain("First start");
    const deadline = Date.now() + 60_000;
    for (;;) {
      const res = await meridian("predict", "--model", example.id, "--regional", "prod-eu", "--json");
      if (res.code === 0) {
        expect(JSON.parse(res.stdout).processed.region).toBe("eu");
        break;
      }
      if (Date.now() > deadline) throw new Error(`example not served after restart: ${res.stderr}`);
      await new Promise((r) => setTimeout(r, 300));
    }
  }, 120_000);
});
