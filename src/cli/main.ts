// The `meridian` command: parses the command line and hands each command's typed options to its role.
// Roles are loaded lazily so `meridian predict` does not pay for the control plane's imports.
import { Command } from "commander";

const program = new Command("meridian")
  .description("Self-hosted model serving with regional environments")
  .showHelpAfterError()
  .configureOutput({ outputError: (text, write) => write(text) });

// @commands: each role registers its commands below this line.

program.parseAsync(process.argv).catch((err: unknown) => {
  const message = err instanceof Error ? err.message : String(err);
  process.stderr.write(`meridian: ${message}\n`);
  process.exitCode = 1;
});
