import { type ChildProcess, spawn } from "node:child_process";
import { resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { afterEach, describe, expect, it } from "vitest";

const LIFELINE = resolve(import.meta.dirname, "lifeline.ts");

/** Node with tsx, running an ES module given as text. */
function node(code: string, stdio: Array<"ignore" | "pipe" | "inherit"> = ["ignore", "pipe", "inherit"]) {
  return spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", code], { stdio });
}

// A child that watches its lifeline and says so; it stays alive on its own (an interval) until lost.
const CHILD = `
import { watchLifeline } from ${JSON.stringify(LIFELINE)};
const watching = watchLifeline(process.env, () => { console.log("lost"); process.exit(0); });
console.log(JSON.stringify({ pid: process.pid, watching, leaked: process.env.MERIDIAN_LIFELINE_FD ?? null }));
setInterval(() => {}, 1000);
`;

// A parent that starts CHILD with a lifeline and prints the child's first line, then lives on.
const PARENT = `
import { spawn } from "node:child_process";
import { lifelineSpawn } from ${JSON.stringify(LIFELINE)};
const { stdio, env } = lifelineSpawn(["ignore", "pipe", "inherit"], process.env);
const child = spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", ${JSON.stringify(CHILD)}], { stdio, env });
child.stdout.once("data", (b) => process.stdout.write(b));
setInterval(() => {}, 1000);
`;

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function firstLine(child: ChildProcess): Promise<string> {
  return new Promise((ok, fail) => {
    let buf = "";
    child.stdout!.on("data", (b: Buffer) => {
      buf += b.toString();
      const i = buf.indexOf("\n");
      if (i >= 0) ok(buf.slice(0, i));
    });
    child.once("exit", (code) => fail(new Error(`exited ${code} before a line`)));
  });
}

const started: ChildProcess[] = [];
afterEach(() => {
  for (const c of started.splice(0)) c.kill("SIGKILL");
});

describe("lifeline", () => {
  it("ends the child within a second of its parent's SIGKILL, and hides the variable from the child's own children", async () => {
    const parent = node(PARENT);
    started.push(parent);
    const info = JSON.parse(await firstLine(parent)) as { pid: number; watching: boolean; leaked: unknown };
    expect(info.watching).toBe(true);
    expect(info.leaked).toBeNull();
    expect(alive(info.pid)).toBe(true);
    parent.kill("SIGKILL");
    const deadline = Date.now() + 2_000;
    while (alive(info.pid) && Date.now() < deadline) await sleep(20);
    expect(alive(info.pid)).toBe(false);
  });

  it("does nothing without a lifeline: a process started by hand keeps running", async () => {
    const child = node(CHILD);
    started.push(child);
    const info = JSON.parse(await firstLine(child)) as { pid: number; watching: boolean };
    expect(info.watching).toBe(false);
    await sleep(300);
    expect(alive(info.pid)).toBe(true);
  });
});
