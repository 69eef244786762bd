import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { afterEach, describe, expect, it } from "vitest";
import { ORPHAN_STOP_LIMIT_MS } from "./shutdown.ts";

const LIFELINE = resolve(import.meta.dirname, "lifeline.ts");
const SHUTDOWN = resolve(import.meta.dirname, "shutdown.ts");

// A role's entry point in miniature: it watches its parent first, "starts" for START_MS, then runs until
// stopped. Each stop appends its name to MARKS; BRIEF decides what the brief stop does.
const ROLE = `
import { appendFileSync } from "node:fs";
import { runUntilStopped, watchParent } from ${JSON.stringify(SHUTDOWN)};
const mark = (m) => appendFileSync(process.env.MARKS, m + "\\n");
const parent = watchParent(process.env, "test");
console.log(JSON.stringify({ pid: process.pid, watched: parent.watched }));
await new Promise((r) => setTimeout(r, Number(process.env.START_MS)));
mark("started");
setInterval(() => {}, 1000);
runUntilStopped(parent, {
  drain: async () => { mark("drain"); },
  brief: async () => {
    mark("brief");
    if (process.env.BRIEF === "hang") await new Promise(() => {});
    // Its parent held the other end of stdout: these writes fail with EPIPE and must not crash it.
    if (process.env.BRIEF === "write") for (let i = 0; i < 1000; i++) process.stdout.write("x".repeat(1024) + "\\n");
    await new Promise((r) => setTimeout(r, 50));
    mark("brief done");
  },
});
`;

// Starts ROLE with a lifeline and stdout piped to itself, prints the role's first line, then lives on.
const PARENT = `
import { spawn } from "node:child_process";
import { lifelineSpawn } from ${JSON.stringify(LIFELINE)};
const { stdio, env } = lifelineSpawn(["ignore", "pipe", "inherit"], process.env);
const role = spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", ${JSON.stringify(ROLE)}], { stdio, env });
role.stdout.once("data", (b) => process.stdout.write(b));
setInterval(() => {}, 1000);
`;

function node(code: string, env: NodeJS.ProcessEnv): ChildProcess {
  return spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", code], {
    stdio: ["ignore", "pipe", "inherit"],
    env: { ...process.env, ...env },
  });
}

/** Running, not a zombie: an orphan's exit is reaped by init whenever init gets to it. */
function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const state = stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
    return state !== "Z" && state !== "X";
  } catch {
    return false;
  }
}

async function firstLine(child: ChildProcess): Promise<{ pid: number; watched: boolean }> {
  return new Promise((ok, fail) => {
    let buf = "";
    child.stdout!.on("data", (b: Buffer) => {
      buf += b.toString();
      const i = buf.indexOf("\n");
      if (i >= 0) ok(JSON.parse(buf.slice(0, i)));
    });
    child.once("exit", (code) => fail(new Error(`exited ${code} before a line`)));
  });
}

/** Waits until `pid` is gone, at most a second past the limit; returns whether it is. */
async function gone(pid: number): Promise<boolean> {
  const deadline = Date.now() + ORPHAN_STOP_LIMIT_MS + 1_000;
  while (alive(pid) && Date.now() < deadline) await sleep(20);
  return !alive(pid);
}

const marksFile = () => join(mkdtempSync(join(tmpdir(), "meridian-shutdown-")), "marks");
const marks = (file: string) => (existsSync(file) ? readFileSync(file, "utf8").trim().split("\n") : []);

const started: ChildProcess[] = [];
const rolePids: number[] = [];
afterEach(() => {
  for (const c of started.splice(0)) c.kill("SIGKILL");
  for (const pid of rolePids.splice(0)) if (alive(pid)) process.kill(pid, "SIGKILL");
});

/** A parent with a role under it; returns the role's pid once it has said it watches. */
async function parentWithRole(env: NodeJS.ProcessEnv): Promise<{ parent: ChildProcess; role: number }> {
  const parent = node(PARENT, env);
  started.push(parent);
  const info = await firstLine(parent);
  rolePids.push(info.pid);
  expect(info.watched).toBe(true);
  return { parent, role: info.pid };
}

describe("a role's lifetime", () => {
  it("stops briefly, not by its drain, once its parent is SIGKILLed, even while stdout has no reader", async () => {
    const file = marksFile();
    const { parent, role } = await parentWithRole({ MARKS: file, START_MS: "0", BRIEF: "write" });
    const deadline = Date.now() + 5_000;
    while (!marks(file).includes("started") && Date.now() < deadline) await sleep(20);
    parent.kill("SIGKILL");
    expect(await gone(role)).toBe(true);
    expect(marks(file)).toEqual(["started", "brief", "brief done"]);
  });

  it("exits at once, without finishing its start, when its parent died while it was starting", async () => {
    const file = marksFile();
    const { parent, role } = await parentWithRole({ MARKS: file, START_MS: "2000", BRIEF: "" });
    const killed = Date.now();
    parent.kill("SIGKILL");
    expect(await gone(role)).toBe(true);
    // Well before its 2 s start would have ended: nothing of it served, so there is nothing to stop.
    expect(Date.now() - killed).toBeLessThan(1_500);
    expect(marks(file)).toEqual([]);
  });

  it("exits within the limit when its brief stop never ends", async () => {
    const file = marksFile();
    const { parent, role } = await parentWithRole({ MARKS: file, START_MS: "0", BRIEF: "hang" });
    const deadline = Date.now() + 5_000;
    while (!marks(file).includes("started") && Date.now() < deadline) await sleep(20);
    parent.kill("SIGKILL");
    expect(await gone(role)).toBe(true);
    expect(marks(file)).toEqual(["started", "brief"]);
  });

  it("exits within the limit when its parent dies while a start hangs", async () => {
    const file = marksFile();
    const { parent, role } = await parentWithRole({ MARKS: file, START_MS: "600000", BRIEF: "" });
    parent.kill("SIGKILL");
    expect(await gone(role)).toBe(true);
    expect(marks(file)).toEqual([]);
  });

  it("started by hand (no lifeline), drains on SIGTERM and nothing else stops it", async () => {
    const file = marksFile();
    const role = node(ROLE, { MARKS: file, START_MS: "0", BRIEF: "" });
    started.push(role);
    const info = await firstLine(role);
    expect(info.watched).toBe(false);
    const deadline = Date.now() + 5_000;
    while (!marks(file).includes("started") && Date.now() < deadline) await sleep(20);
    await sleep(300);
    expect(alive(info.pid)).toBe(true);
    const exited = new Promise((ok) => role.once("exit", (code) => ok(code)));
    role.kill("SIGTERM");
    expect(await exited).toBe(0);
    expect(marks(file)).toEqual(["started", "drain"]);
  });
});
