// Graceful shutdown for a role's process: the first SIGTERM or SIGINT drains it once; a second signal
// while it drains exits at once (an impatient operator's second Ctrl-C).

export function drainOnSignal(drain: () => Promise<void>): void {
  let draining = false;
  const onSignal = () => {
    if (draining) process.exit(1);
    draining = true;
    drain().then(
      () => process.exit(0),
      (err: unknown) => {
        process.stderr.write(`shutdown failed: ${err instanceof Error ? err.message : String(err)}\n`);
        process.exit(1);
      },
    );
  };
  process.on("SIGTERM", onSignal);
  process.on("SIGINT", onSignal);
}
