// `meridian control`: parses flags and the environment once into a frozen config, starts the control
// plane, and drains on SIGTERM/SIGINT; stops at once when the process that started it (`meridian up`) is gone.

import { resolve } from "node:path";
import { runUntilStopped, watchParent } from "../lib/shutdown.ts";
import { startControl } from "./main.ts";

export interface ControlFlags {
  dataDir: string;
  listen: string;
  databaseUrl?: string;
  domain: string;
  publicUrl?: string;
  artifactStore?: string;
  planeTimeout?: string;
  secretsKeyFile?: string;
  autoscalerIntervalMs?: string;
}

/** Splits `host:port` (IPv6 in brackets). */
export function parseListen(value: string): { host: string; port: number } | null {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(value);
  if (!m) return null;
  const port = Number(m[3]);
  if (port > 65535) return null;
  return { host: (m[1] ?? m[2])!, port };
}

function seconds(flag: string, value: string): number {
  if (!/^\d{1,6}$/.test(value) || Number(value) < 1)
    throw new Error(`${flag} takes a whole number of seconds, got '${value}'`);
  return Number(value);
}

function intervalMs(flag: string, value: string): number {
  if (!/^\d{1,6}$/.test(value) || Number(value) < 100 || Number(value) > 60_000)
    throw new Error(`${flag} takes milliseconds from 100 to 60000, got '${value}'`);
  return Number(value);
}

function artifactStoreKind(value: string): "files" | "database" {
  if (value !== "files" && value !== "database") {
    throw new Error(`--artifact-store takes files or database, got '${value}'`);
  }
  return value;
}

export async function runControlCommand(flags: ControlFlags, env: NodeJS.ProcessEnv): Promise<void> {
  const parent = watchParent(env, "control");
  const listen = parseListen(flags.listen);
  if (!listen) throw new Error(`--listen must be HOST:PORT, got '${flags.listen}'`);
  const config = Object.freeze({
    dataDir: resolve(flags.dataDir),
    host: listen.host,
    port: listen.port,
    databaseUrl: flags.databaseUrl ?? env["MERIDIAN_DATABASE_URL"] ?? null,
    domain: flags.domain.toLowerCase().replace(/\.$/, ""),
    publicUrl: flags.publicUrl ?? null,
    ...(flags.artifactStore ? { artifactStore: artifactStoreKind(flags.artifactStore) } : {}),
    ...(flags.planeTimeout ? { planeTimeoutMs: seconds("--plane-timeout", flags.planeTimeout) * 1000 } : {}),
    ...(flags.secretsKeyFile ? { secretsKeyFile: resolve(flags.secretsKeyFile) } : {}),
    ...(flags.autoscalerIntervalMs
      ? { autoscalerIntervalMs: intervalMs("--autoscaler-interval-ms", flags.autoscalerIntervalMs) }
      : {}),
  });
  const control = await startControl(config);
  if (control.adminKey) {
    process.stderr.write(
      `\nFirst start: created the organization and an admin API key, saved to ${control.adminKeyFile} (mode 0600).\n` +
        `  export MERIDIAN_API_URL=${control.url}\n  export MERIDIAN_API_KEY=$(cat ${control.adminKeyFile})\n\n`,
    );
  }
  // Without its parent the same stop, cut short by the limit: nothing the control plane runs outlives it.
  runUntilStopped(parent, { drain: () => control.stop() });
}
