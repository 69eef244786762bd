// `meridian up --example stream-py` as a user runs it: the truss example is pushed into prod-eu on first
// start and answers, streamed, through its regional endpoint with `meridian predict`; a restart asking for
// hello-py pushes that one too (the model 'hello'), and an unknown example is refused before anything starts.

import { type ChildProcess, execFile, spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BIN, freePort } from "../support/cluster.ts";
import { tempDir } from "../support/control.ts";

const run = promisify(execFile);

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

async function waitFor(up: Up, text: string, timeoutMs = 150_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!up.output.includes(text)) {
    if (up.child.exitCode !== null) throw new Error(`meridian up exited ${up.child.exitCode}:\n${up.output}`);
    if (Date.now() > deadline) throw new Error(`no '${text}' within ${timeoutMs} ms:\n${up.output}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function stopUp(up: Up | undefined): Promise<void> {
  if (up && up.child.exitCode === null) {
    up.child.kill("SIGINT");
    await up.exited;
  }
}

describe("meridian up --example with the truss examples", () => {
  const dir = tempDir();
  let flags: string[];
  let up: Up | undefined;

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

  beforeAll(async () => {
    flags = [
      "--control-port",
      String(await freePort("127.0.0.1")),
      "--https-port",
      String(await freePort("127.0.1.1")),
      "--admin-port",
      String(await freePort("127.0.1.1")),
      "--dns",
      `127.0.0.1:${await freePort("127.0.0.1")}`,
    ];
  });

  afterAll(() => stopUp(up), 60_000);

  it("refuses an example it does not have, before starting anything", async () => {
    const res = await meridian("up", ...flags, "--example", "hello-rust");
    expect(res.code).toBe(1);
    expect(res.stderr).toContain(
      "--example is one of hello-js, hello-py, stream-js, stream-py, got 'hello-rust' (push your own with meridian push)",
    );
  });

  it("pushes stream-py on first start; it streams from prod-eu, in eu", async () => {
    up = startUp(dir, [...flags, "--example", "stream-py"]);
    await waitFor(up, "Stop with Ctrl-C");
    expect(up.output).toContain(
      "First start: pushing the example model (examples/stream-py) into prod-eu, restricted to region eu…",
    );
    const example = JSON.parse(readFileSync(join(dir, ".meridian", "example.json"), "utf8"));
    expect(example.example).toBe("stream-py");
    expect(up.output).toContain(
      `The example model 'stream' (${example.id}, examples/stream-py) serves prod-eu`,
    );
    expect(up.output).toContain(`curl -N --cacert`);
    const res = await meridian(
      "predict",
      "--model",
      example.id,
      "--regional",
      "prod-eu",
      "--data",
      '{"prompt": "streaming from Meridian", "delay_ms": 10}',
    );
    expect(res.code, res.stderr).toBe(0);
    expect(res.stdout.trimEnd()).toBe("streaming\nfrom\nMeridian\n[done in prod-eu]");
    expect(res.stderr).toContain("processed in region eu by plane eu-1");
  }, 240_000);

  it("a restart with --example hello-py pushes it as the model 'hello'", async () => {
    await stopUp(up);
    up = startUp(dir, [...flags, "--example", "hello-py"]);
    await waitFor(up, "Stop with Ctrl-C");
    expect(up.output).toContain("Pushing the example model (examples/hello-py) into prod-eu");
    const example = JSON.parse(readFileSync(join(dir, ".meridian", "example.json"), "utf8"));
    expect(example.example).toBe("hello-py");
    const res = await meridian("predict", "--model", example.id, "--regional", "prod-eu", "--json");
    expect(res.code, res.stderr).toBe(0);
    expect(JSON.parse(res.stdout)).toMatchObject({ status: 200 });
  }, 240_000);
});
