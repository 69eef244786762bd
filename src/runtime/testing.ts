// Test helpers for the runtime's tests: model packages written to temp dirs, loggers that keep their
// lines, the real `meridian serve-model` as a child process, and file gates a fixture model waits on.

import { type ChildProcess, type ChildProcessByStdio, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import type { Readable } from "node:stream";
import { fileURLToPath } from "node:url";
import pino, { type Logger } from "pino";

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const EXAMPLES = path.join(REPO_ROOT, "examples");

/** Writes `files` (relative path → content) into a fresh temp directory and returns its path. */
export async function writePackage(files: Record<string, string>): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), "meridian-runtime-"));
  for (const [name, content] of Object.entries(files)) {
    const file = path.join(dir, name);
    await mkdir(path.dirname(file), { recursive: true });
    await writeFile(file, content);
  }
  return dir;
}

export interface LogLine {
  level: number;
  msg: string;
  [field: string]: unknown;
}

/** A pino logger whose lines are parsed into `lines`. */
export function capturingLogger(): { logger: Logger; lines: LogLine[] } {
  const lines: LogLine[] = [];
  const logger = pino(
    { level: "debug" },
    { write: (line: string) => lines.push(JSON.parse(line) as LogLine) },
  );
  return { logger, lines };
}

export async function waitFor<T>(
  probe: () => T | undefined | Promise<T | undefined>,
  what: string,
  ms = 10_000,
) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await probe();
    if (value !== undefined && value !== false) return value as T;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** JavaScript that resolves once `file` exists, for fixture models that wait on the test. */
export const WAIT_FOR_FILE_JS = `
import { existsSync } from "node:fs";
export function waitForFile(file) {
  return new Promise((resolve) => {
    const poll = () => (existsSync(file) ? resolve() : setTimeout(poll, 10));
    poll();
  });
}
`;

export function exists(file: string): boolean {
  return existsSync(file);
}

export interface RuntimeProcess {
  child: ChildProcess;
  /** Parsed JSON lines of stdout. */
  stdout: LogLine[];
  stderr: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Resolves with the bound address from the `listening` line. */
  address: () => Promise<string>;
}

/**
 * Starts the real `node bin/meridian.js serve-model ...` as a user or a plane's driver would; `extraStdio`
 * become its descriptors 3, 4, … (a lifeline pipe, a descriptor it should not keep).
 */
export function spawnServeModel(
  args: string[],
  env: Record<string, string | undefined> = {},
  extraStdio: Array<"pipe" | "ignore" | number> = [],
): RuntimeProcess {
  const child = spawn(process.execPath, [path.join(REPO_ROOT, "bin/meridian.js"), "serve-model", ...args], {
    cwd: REPO_ROOT,
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe", ...extraStdio],
  }) as ChildProcessByStdio<null, Readable, Readable>;
  const stdout: LogLine[] = [];
  let stderr = "";
  let partial = "";
  child.stdout.setEncoding("utf8").on("data", (text: string) => {
    const parts = (partial + text).split("\n");
    partial = parts.pop() ?? "";
    for (const line of parts) {
      if (line.trim() !== "") stdout.push(JSON.parse(line) as LogLine);
    }
  });
  child.stderr.setEncoding("utf8").on("data", (text: string) => {
    stderr += text;
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.on("close", (code, signal) => resolve({ code, signal }));
  });
  let done = false;
  void exited.then(() => {
    done = true;
  });
  const address = () =>
    waitFor(() => {
      const line = stdout.find((l) => l.msg === "listening");
      if (line) return line["address"] as string;
      if (done) throw new Error(`serve-model exited before listening; stderr: ${stderr}`);
      return undefined;
    }, "the listening line");
  return { child, stdout, stderr: () => stderr, exited, address };
}
