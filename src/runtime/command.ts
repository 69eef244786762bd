// `meridian serve-model DIR --listen HOST:PORT|unix:/PATH`: the entry point of one replica. Parses flags
// and environment into a frozen options object, composes logger and runtime, drains on SIGTERM/SIGINT, and
// exits when the plane that started it is gone (its lifeline).

import { closeSync, readdirSync, readFileSync } from "node:fs";
import pino, { type Logger } from "pino";
import { MeridianError } from "../core/errors.ts";
import { checkEnvironmentName, isModelId } from "../core/names.ts";
import { EXIT_CODES, type ExitCode } from "../core/runtime-exit-codes.ts";
import { LIFELINE_ENV, watchLifeline } from "../lib/lifeline.ts";
import { loadModelPackage, modelEnvironment, type ReplicaIdentity } from "./package.ts";
import { type ModelServer, type ServeOutcome, serveModel } from "./server.ts";

/** Flags as commander hands them over (all strings). */
export interface ServeModelFlags {
  listen: string;
  modelId?: string;
  deploymentId?: string;
  environment?: string;
  serverPort?: string;
  maxQueued?: string;
}

/** Where the runtime listens: TCP, or a Unix socket (a plane's replica under egress `deny`). */
export type ListenAddress = { host: string; port: number } | { path: string };

export interface ServeModelCommandOptions {
  readonly dir: string;
  readonly listen: Readonly<ListenAddress>;
  readonly identity: Readonly<ReplicaIdentity>;
  readonly serverPort: number | null;
  readonly maxQueued: number;
}

export type ParseOutcome = { ok: true; options: ServeModelCommandOptions } | { ok: false; message: string };

const DEFAULT_MAX_QUEUED = 64;

/** Flags win over MERIDIAN_MODEL_ID, MERIDIAN_DEPLOYMENT_ID and MERIDIAN_ENVIRONMENT. */
export function parseServeModelOptions(
  dir: string,
  flags: ServeModelFlags,
  env: Readonly<Record<string, string | undefined>>,
): ParseOutcome {
  const listen = parseListen(flags.listen);
  if (listen === null) {
    return {
      ok: false,
      message: `--listen must be HOST:PORT or unix:/ABSOLUTE/PATH (at most ${MAX_SOCKET_PATH_BYTES} bytes), got ${JSON.stringify(flags.listen)}`,
    };
  }

  const modelId = nonEmpty(flags.modelId ?? env["MERIDIAN_MODEL_ID"]);
  if (modelId !== null && !isModelId(modelId)) {
    return {
      ok: false,
      message: `the model id ${JSON.stringify(modelId)} is not 8 lowercase letters or digits`,
    };
  }
  const deploymentId = nonEmpty(flags.deploymentId ?? env["MERIDIAN_DEPLOYMENT_ID"]);
  if (deploymentId !== null && !/^[A-Za-z0-9_-]{1,64}$/.test(deploymentId)) {
    return { ok: false, message: `the deployment id ${JSON.stringify(deploymentId)} is not valid` };
  }
  const environment = nonEmpty(flags.environment ?? env["MERIDIAN_ENVIRONMENT"]);
  if (environment !== null) {
    const check = checkEnvironmentName(environment);
    // A reserved name is still a well-formed label; the control plane decides where it may be used.
    if (!check.ok && check.rule !== "reserved") return { ok: false, message: check.message };
  }

  let serverPort: number | null = null;
  if (flags.serverPort !== undefined) {
    serverPort = parsePort(flags.serverPort);
    if (serverPort === null)
      return { ok: false, message: "--server-port must be a port number from 0 to 65535" };
  }
  let maxQueued = DEFAULT_MAX_QUEUED;
  if (flags.maxQueued !== undefined) {
    if (!/^\d+$/.test(flags.maxQueued)) return { ok: false, message: "--max-queued must be a whole number" };
    maxQueued = Number(flags.maxQueued);
  }

  return {
    ok: true,
    options: Object.freeze({
      dir,
      listen: Object.freeze(listen),
      identity: Object.freeze({ modelId, deploymentId, environment }),
      serverPort,
      maxQueued,
    }),
  };
}

/** The longest Unix socket path Linux takes (`sun_path` is 108 bytes with its NUL; unix(7)). */
const MAX_SOCKET_PATH_BYTES = 107;

/**
 * `host:port` or `[v6]:port` (RFC 3986 §3.2.2), port 0 asking the kernel for a free one; or
 * `unix:/absolute/path`, refused when longer than a socket path may be (the kernel's error would be EINVAL).
 */
export function parseListen(text: string): ListenAddress | null {
  if (text.startsWith("unix:")) {
    const path = text.slice("unix:".length);
    if (!path.startsWith("/") || path.includes("\0") || Buffer.byteLength(path) > MAX_SOCKET_PATH_BYTES)
      return null;
    return { path };
  }
  const match = /^(?:\[([0-9A-Fa-f:.]+)\]|([^:[\]\s]+)):(\d{1,5})$/.exec(text);
  if (match === null) return null;
  const port = parsePort(match[3]!);
  if (port === null) return null;
  return { host: match[1] ?? match[2]!, port };
}

function parsePort(text: string): number | null {
  if (!/^\d{1,5}$/.test(text)) return null;
  const port = Number(text);
  return port <= 65535 ? port : null;
}

function nonEmpty(value: string | undefined): string | null {
  return value === undefined || value === "" ? null : value;
}

/** Events go to stdout; errors (with stacks) to stderr, where a plane's driver looks for the reason. */
function createLogger(identity: ReplicaIdentity): Logger {
  const streams = pino.multistream(
    [
      { level: "info", stream: pino.destination({ dest: 1, sync: true }) },
      { level: "error", stream: pino.destination({ dest: 2, sync: true }) },
    ],
    { dedupe: true },
  );
  return pino(
    {
      base: {
        pid: process.pid,
        model_id: identity.modelId,
        deployment_id: identity.deploymentId,
        environment: identity.environment,
      },
    },
    streams,
  );
}

/**
 * Runs one replica until it is told to stop or its model fails; returns the exit code. `env` is this
 * process's environment: read for defaults, and given the model's variables when the model runs in-process.
 */
export async function runServeModel(
  dir: string,
  flags: ServeModelFlags,
  env: NodeJS.ProcessEnv,
): Promise<ExitCode> {
  const parsed = parseServeModelOptions(dir, flags, env);
  if (!parsed.ok) {
    process.stderr.write(`meridian serve-model: ${parsed.message}\n`);
    return EXIT_CODES.usage;
  }
  const options = parsed.options;
  // Before any model code runs: descriptors this process was handed by mistake are not the model's to use.
  closeInheritedDescriptors(Number(env[LIFELINE_ENV]));
  const logger = createLogger(options.identity);

  let modelPackage: Awaited<ReturnType<typeof loadModelPackage>>;
  try {
    modelPackage = await loadModelPackage(options.dir);
  } catch (err) {
    if (!(err instanceof MeridianError)) throw err;
    logger.error({ error_code: err.code, detail: err.detail, error: err.message }, "invalid model package");
    return EXIT_CODES.invalid_package;
  }
  if (modelPackage.kind.type === "javascript") {
    Object.assign(env, modelEnvironment(modelPackage.config, options.identity));
  }

  const server = serveModel({
    modelPackage,
    ...("path" in options.listen
      ? { host: "", port: 0, socketPath: options.listen.path }
      : { host: options.listen.host, port: options.listen.port }),
    identity: options.identity,
    logger,
    inheritedEnv: env,
    serverPort: options.serverPort,
    maxQueued: options.maxQueued,
  });
  const detach = handleSignals(server, logger);
  // Started by a plane without a sandbox: when the plane is gone (however it died), so is this replica
  // and its model server. (A sandboxed replica dies with its sandbox: bwrap --die-with-parent.)
  watchLifeline(env, () => {
    logger.error({}, "the plane that started this replica is gone; exiting");
    server.kill();
    process.exit(EXIT_CODES.fault);
  });
  try {
    let address: string;
    try {
      address = await server.start();
    } catch (err) {
      logger.error({ err, listen: flags.listen }, "listen failed");
      return EXIT_CODES.fault;
    }
    logger.info({ address }, "listening");
    const outcome = await server.finished;
    await server.stop();
    return exitCode(outcome);
  } finally {
    detach();
  }
}

/**
 * Closes every descriptor above stderr that would survive exec (no close-on-exec flag). Node marks the
 * low ones close-on-exec at start-up, but one a parent left open further up (a directory of the host, a
 * socket) would reach the model and every process it starts; through a directory descriptor a sandboxed
 * model could walk the host's filesystem. Everything Node and the runtime open is close-on-exec; `keep`
 * is the lifeline's descriptor, read by watchLifeline.
 */
export function closeInheritedDescriptors(keep: number): void {
  let names: string[];
  try {
    names = readdirSync("/proc/self/fd");
  } catch {
    return; // not Linux: nothing to inspect
  }
  for (const name of names) {
    const fd = Number(name);
    if (!Number.isInteger(fd) || fd <= 2 || fd === keep) continue;
    let flags: number;
    try {
      const info = readFileSync(`/proc/self/fdinfo/${fd}`, "utf8");
      flags = Number.parseInt(/^flags:\s*([0-7]+)/m.exec(info)?.[1] ?? "", 8);
    } catch {
      continue; // closed meanwhile (readdir's own descriptor)
    }
    if (Number.isNaN(flags) || (flags & O_CLOEXEC) !== 0) continue;
    try {
      closeSync(fd);
    } catch {
      // Already closed.
    }
  }
}

/** O_CLOEXEC as /proc/self/fdinfo shows it (octal flags; Linux's value on every architecture Node runs). */
const O_CLOEXEC = 0o2000000;

export function exitCode(outcome: ServeOutcome): ExitCode {
  switch (outcome.kind) {
    case "stopped":
      return EXIT_CODES.stopped;
    case "load_failed":
      return EXIT_CODES.load_failed;
    case "model_server_exited":
      return outcome.wasReady ? EXIT_CODES.model_server_crashed : EXIT_CODES.model_server_failed;
  }
}

function handleSignals(server: ModelServer, logger: Logger): () => void {
  let draining = false;
  const onSignal = (signal: NodeJS.Signals) => {
    // A second Ctrl-C means "now"; a repeated SIGTERM (supervisors and `timeout` send one to the whole
    // process group as well) does not cut the drain short.
    if (draining && signal === "SIGINT") {
      logger.warn({ signal }, "second interrupt; exiting without draining");
      server.kill();
      process.exit(EXIT_CODES.fault);
    }
    if (draining) return;
    draining = true;
    logger.info({ signal }, "signal received; draining");
    void server.stop();
  };
  const onExit = () => server.kill();
  const onFault = (err: unknown) => {
    logger.fatal({ err }, "uncaught error in the runtime");
    server.kill();
    process.exit(EXIT_CODES.fault);
  };
  process.on("SIGTERM", onSignal);
  process.on("SIGINT", onSignal);
  process.on("exit", onExit);
  process.on("uncaughtException", onFault);
  process.on("unhandledRejection", onFault);
  return () => {
    process.off("SIGTERM", onSignal);
    process.off("SIGINT", onSignal);
    process.off("exit", onExit);
    process.off("uncaughtException", onFault);
    process.off("unhandledRejection", onFault);
  };
}
