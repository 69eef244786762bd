// `meridian up`: flags into a frozen config, then the embedded installation until Ctrl-C or SIGTERM.

import { CliError } from "../cli/api.ts";
import { EXAMPLE_MODELS, runUp } from "./main.ts";

export interface UpFlags {
  dataDir: string;
  domain: string;
  controlPort: string;
  httpsPort: string;
  adminPort: string;
  dns: string;
  /** commander: the example's name, or false with --no-example. */
  example: string | boolean;
}

function port(flag: string, value: string): number {
  if (!/^\d{1,5}$/.test(value) || Number(value) < 1 || Number(value) > 65535) {
    throw new CliError(`${flag} takes a port number (1–65535), got '${value}'`);
  }
  return Number(value);
}

export async function runUpCommand(flags: UpFlags): Promise<void> {
  try {
    const dns = /^(\d{1,3}(?:\.\d{1,3}){3}):(\d+)$/.exec(flags.dns);
    if (!dns) throw new CliError(`--dns takes IPv4:PORT, got '${flags.dns}'`);
    const example = flags.example === false ? null : flags.example === true ? "hello-js" : flags.example;
    if (example !== null && !Object.hasOwn(EXAMPLE_MODELS, example)) {
      throw new CliError(
        `--example is one of ${Object.keys(EXAMPLE_MODELS).join(", ")}, got '${example}' (push your own with meridian push)`,
      );
    }
    const config = Object.freeze({
      dataDir: flags.dataDir,
      domain: flags.domain.toLowerCase().replace(/\.$/, ""),
      controlPort: port("--control-port", flags.controlPort),
      httpsPort: port("--https-port", flags.httpsPort),
      adminPort: port("--admin-port", flags.adminPort),
      dns: { host: dns[1]!, port: port("--dns", dns[2]!) },
      example,
      out: (line: string) => process.stdout.write(`${line}\n`),
    });
    const up = await runUp(config);
    let stopping = false;
    const stop = async () => {
      // A second Ctrl-C must not kill `up` before its children: it is ignored while they drain.
      if (stopping) return;
      stopping = true;
      process.stdout.write("\nStopping: DNS, planes, control plane…\n");
      await up.stop();
      process.stdout.write("Stopped. State is kept in the data directory.\n");
      process.exit(0);
    };
    process.on("SIGINT", stop);
    process.on("SIGTERM", stop);
  } catch (err) {
    process.stderr.write(`meridian up: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  }
}
