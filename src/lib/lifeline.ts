// A child's lifeline to the process that started it: parent-death detection that holds however the parent
// dies (SIGKILL, an OOM kill, a closed terminal), which forwarding signals cannot. The parent passes one end
// of a pipe it never writes to as file descriptor 3 and names it in MERIDIAN_LIFELINE_FD; when the parent is
// gone the kernel closes its end and the child reads end-of-file.

import net from "node:net";

export const LIFELINE_ENV = "MERIDIAN_LIFELINE_FD";
/** The descriptor the lifeline is passed on (the first one after stdin, stdout and stderr). */
export const LIFELINE_FD = 3;

/** What `spawn()` takes for stdin, stdout and stderr; a number is an open file descriptor (a log file). */
export type StdioOption = "ignore" | "pipe" | "inherit" | number;

/**
 * What to add to `spawn()` options so the child gets a lifeline: stdio with the pipe at fd 3, and the
 * variable that names it. Keep the returned child's `stdio[3]` open for as long as the child should live
 * (it closes with this process, which is the point).
 */
export function lifelineSpawn(
  stdio: readonly [StdioOption, StdioOption, StdioOption],
  env: NodeJS.ProcessEnv,
): { stdio: StdioOption[]; env: NodeJS.ProcessEnv } {
  return { stdio: [...stdio, "pipe"], env: { ...env, [LIFELINE_ENV]: String(LIFELINE_FD) } };
}

/**
 * Calls `onLost` once when the parent that passed a lifeline is gone. Without one (started by hand, or by
 * a supervisor that has its own means), it does nothing and returns false. The variable is removed from
 * `env` so processes this one starts do not take it for their own. The pipe never keeps the event loop
 * alive.
 */
export function watchLifeline(env: NodeJS.ProcessEnv, onLost: () => void): boolean {
  const value = env[LIFELINE_ENV];
  if (value === undefined) return false;
  delete env[LIFELINE_ENV];
  const fd = Number(value);
  if (!Number.isInteger(fd) || fd < 3) return false;
  let socket: net.Socket;
  try {
    socket = new net.Socket({ fd, readable: true, writable: false });
  } catch {
    // Not a pipe we can read (the variable came from somewhere else): there is no lifeline to watch.
    return false;
  }
  let lost = false;
  const lose = () => {
    if (lost) return;
    lost = true;
    onLost();
  };
  socket.on("data", () => {});
  socket.once("end", lose);
  socket.once("close", lose);
  socket.once("error", lose);
  socket.unref();
  return true;
}
