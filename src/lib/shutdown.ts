// How a role's process ends. The first SIGTERM or SIGINT drains it once, in order; a second signal while it
// drains exits at once (an impatient operator's second Ctrl-C). When the process that started it is gone
// (its lifeline, src/lib/lifeline.ts: `meridian up` SIGKILLed, OOM-killed, its terminal closed), it stops
// briefly instead and is gone within ORPHAN_STOP_LIMIT_MS; one that has not finished starting exits at once.

import { watchLifeline } from "./lifeline.ts";

/**
 * How long a role whose parent is gone may take before it exits. Everything `meridian up` started is gone
 * within 5 s of its death: loss is seen at once (end-of-file), this bounds the rest, with room to spare.
 */
export const ORPHAN_STOP_LIMIT_MS = 3_000;

export interface ParentWatch {
  /** Whether a parent passed a lifeline. Without one (started by hand) the role behaves as it always did. */
  readonly watched: boolean;
  /** Resolves once the parent is gone; never without a lifeline. */
  readonly gone: Promise<void>;
  /** The role has started (runUntilStopped): from now on a lost parent gets the brief stop. */
  started(): void;
}

/** How a started role stops: `drain` on a signal, `brief` (default: `drain`) once its parent is gone. */
export interface RoleStop {
  drain(): Promise<void>;
  brief?(): Promise<void>;
}

/**
 * Watches for the death of the process that started this one. Call it first in an entry point, before the
 * role starts, so a parent that dies while the role is still starting is seen too. From the moment the
 * parent is gone the process exits within ORPHAN_STOP_LIMIT_MS, whatever it is doing: a start that hangs
 * on a dead control plane, or a graceful drain already under way, cannot keep it alive.
 */
export function watchParent(env: NodeJS.ProcessEnv, role: string): ParentWatch {
  let lost: () => void = () => {};
  let running = false;
  const gone = new Promise<void>((resolve) => {
    lost = resolve;
  });
  const watched = watchLifeline(env, () => {
    if (!running) {
      // Still starting (loading its code, a self-test, a first snapshot): nothing of it serves or holds
      // work yet, and what it started dies with it (lifelines, bwrap's --die-with-parent). A start can
      // take seconds on a loaded machine; finishing it first would break the 5 s promise.
      note(`meridian ${role}: the process that started it is gone before it started; exiting\n`);
      process.exit();
    }
    note(
      `meridian ${role}: the process that started it is gone; stopping within ${ORPHAN_STOP_LIMIT_MS / 1000} s\n`,
    );
    // Unref'd: a role that finished its brief stop exits on its own; this only cuts a slow one short.
    // process.exit() keeps an exit code already set (a start that failed).
    setTimeout(() => process.exit(), ORPHAN_STOP_LIMIT_MS).unref();
    lost();
  });
  if (watched) {
    // The parent may own the other ends of stdout and stderr; once it is gone a write fails with EPIPE,
    // which must not crash the role in the middle of stopping its replicas. Such output has no reader.
    process.stdout.on("error", () => {});
    process.stderr.on("error", () => {});
  }
  return {
    watched,
    gone,
    started() {
      running = true;
    },
  };
}

/**
 * Runs a started role until it is told to stop: a signal drains it (drainOnSignal), the loss of its parent
 * stops it briefly. Either way the process then exits; after a brief stop with 0, so that no supervisor
 * counts it as a crash to restart: it ended because it was no longer wanted.
 */
export function runUntilStopped(parent: ParentWatch, role: RoleStop): void {
  parent.started();
  drainOnSignal(() => role.drain());
  void parent.gone.then(() => finish(role.brief ? () => role.brief!() : () => role.drain()));
}

export function drainOnSignal(drain: () => Promise<void>): void {
  let draining = false;
  const onSignal = () => {
    if (draining) process.exit(1);
    draining = true;
    finish(drain);
  };
  process.on("SIGTERM", onSignal);
  process.on("SIGINT", onSignal);
}

function finish(stop: () => Promise<void>): void {
  stop().then(
    () => process.exit(0),
    (err: unknown) => {
      note(`shutdown failed: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exit(1);
    },
  );
}

function note(line: string): void {
  try {
    process.stderr.write(line);
  } catch {
    // stderr may be closed along with the parent; there is no one left to tell.
  }
}
