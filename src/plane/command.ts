// `meridian plane`: parses flags once into a frozen config, starts the plane, drains on SIGTERM/SIGINT, and
// stops briefly (replicas included) when the process that started it (`meridian up`) is gone.

import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import {
  type BackpressureLimits,
  checkBackpressureLimits,
  DEFAULT_BACKPRESSURE_LIMITS,
} from "../core/autoscaling-settings.ts";
import { parseAuditRetention } from "../gateway/audit.ts";
import { runUntilStopped, watchParent } from "../lib/shutdown.ts";
import { startPlane } from "./main.ts";

export interface PlaneFlags {
  name: string;
  region: string;
  controlUrl: string;
  tokenFile?: string;
  dataDir: string;
  ingress: string;
  admin?: string;
  tlsCert?: string;
  tlsKey?: string;
  tlsDir?: string;
  peerCa?: string;
  predictTimeout?: string;
  hopContinueTimeout?: string;
  websocketMaxFrame?: string;
  websocketIdleTimeout?: string;
  parkQueue?: string;
  retryAfter?: string;
  ingressTransport?: string;
  sandbox?: string;
  sandboxUid?: string;
  sandboxBwrap?: string;
  auditRetention?: string;
  receipts?: string;
  receiptBodyLimit?: string;
  python?: string[];
  pipFindLinks?: string;
  pipIndexUrl?: string;
  asyncConcurrency?: string;
  webhookAllowHttp?: boolean;
  webhookAllowPrivate?: boolean;
  webhookCa?: string;
}

/** `--sandbox-uid UID[:GID]`: an unprivileged host id for replicas (GID defaults to UID). */
export function parseSandboxUid(value: string): { uid: number; gid: number } {
  const m = /^(\d{1,10})(?::(\d{1,10}))?$/.exec(value);
  const uid = Number(m?.[1]);
  const gid = m?.[2] === undefined ? uid : Number(m[2]);
  const valid = (n: number) => Number.isSafeInteger(n) && n > 0 && n < 2 ** 32 - 1;
  if (m === null || !valid(uid) || !valid(gid)) {
    throw new Error(`--sandbox-uid is UID or UID:GID, unprivileged (not 0), got '${value}'`);
  }
  return { uid, gid };
}

function parseHostPort(flag: string, value: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(value);
  if (!m || Number(m[3]) > 65535) throw new Error(`${flag} must be HOST:PORT, got '${value}'`);
  return { host: (m[1] ?? m[2])!, port: Number(m[3]) };
}

/** `--websocket-max-frame BYTES` (1 B … 1 GiB) and `--websocket-idle-timeout SECONDS` (≥ 1). */
export function parseWebSocketLimits(flags: Pick<PlaneFlags, "websocketMaxFrame" | "websocketIdleTimeout">): {
  websocketMaxFrameBytes?: number;
  websocketIdleTimeoutMs?: number;
} {
  const out: { websocketMaxFrameBytes?: number; websocketIdleTimeoutMs?: number } = {};
  if (flags.websocketMaxFrame !== undefined) {
    const n = Number(flags.websocketMaxFrame);
    if (!/^\d+$/.test(flags.websocketMaxFrame) || n < 1 || n > 2 ** 30) {
      throw new Error(
        `--websocket-max-frame is a number of bytes from 1 to 1073741824, got '${flags.websocketMaxFrame}'`,
      );
    }
    out.websocketMaxFrameBytes = n;
  }
  if (flags.websocketIdleTimeout !== undefined) {
    const n = Number(flags.websocketIdleTimeout);
    if (!/^\d+$/.test(flags.websocketIdleTimeout) || n < 1) {
      throw new Error(
        `--websocket-idle-timeout is a whole number of seconds (at least 1), got '${flags.websocketIdleTimeout}'`,
      );
    }
    out.websocketIdleTimeoutMs = n * 1000;
  }
  return out;
}

export async function runPlaneCommand(flags: PlaneFlags, env: NodeJS.ProcessEnv): Promise<void> {
  const parent = watchParent(env, "plane");
  const token = flags.tokenFile
    ? readFileSync(flags.tokenFile, "utf8").trim()
    : (env["MERIDIAN_PLANE_TOKEN"] ?? "");
  if (!token)
    throw new Error("the plane's credential is required: --token-file FILE or MERIDIAN_PLANE_TOKEN");
  if (Boolean(flags.tlsCert) !== Boolean(flags.tlsKey))
    throw new Error("--tls-cert and --tls-key go together");
  if (flags.tlsDir && !flags.tlsCert)
    throw new Error(
      "--tls-dir needs --tls-cert and --tls-key: the plane's own certificate, served to hops and to names the directory has no certificate for",
    );
  const predictTimeout = flags.predictTimeout === undefined ? undefined : Number(flags.predictTimeout);
  if (predictTimeout !== undefined && !(Number.isInteger(predictTimeout) && predictTimeout > 0)) {
    throw new Error("--predict-timeout is a whole number of seconds");
  }
  const hopContinue = flags.hopContinueTimeout === undefined ? undefined : Number(flags.hopContinueTimeout);
  if (
    hopContinue !== undefined &&
    !(Number.isInteger(hopContinue) && hopContinue >= 0 && hopContinue <= 60_000)
  ) {
    throw new Error("--hop-continue-timeout is a whole number of milliseconds from 0 to 60000");
  }
  const websocket = parseWebSocketLimits(flags);
  let backpressure: BackpressureLimits | null = null;
  if (flags.parkQueue !== undefined || flags.retryAfter !== undefined) {
    const check = checkBackpressureLimits({
      queue_per_environment: Number(flags.parkQueue ?? DEFAULT_BACKPRESSURE_LIMITS.queue_per_environment),
      retry_after_seconds: Number(flags.retryAfter ?? DEFAULT_BACKPRESSURE_LIMITS.retry_after_seconds),
    });
    if (!check.ok) {
      const flag = check.field === "queue_per_environment" ? "--park-queue" : "--retry-after";
      throw new Error(`${flag}: ${check.message}`);
    }
    backpressure = check.limits;
  }
  const transport = flags.ingressTransport;
  if (transport !== undefined && transport !== "wire" && transport !== "http") {
    throw new Error(`--ingress-transport is wire or http, got '${transport}'`);
  }
  const sandbox = flags.sandbox ?? "bwrap";
  if (sandbox !== "bwrap" && sandbox !== "none") {
    throw new Error(`--sandbox is bwrap or none, got '${sandbox}'`);
  }
  const mode: "bwrap" | "none" = sandbox;
  const sandboxUid = flags.sandboxUid === undefined ? undefined : parseSandboxUid(flags.sandboxUid);
  if (sandboxUid !== undefined && process.getuid?.() !== 0) {
    throw new Error(
      "--sandbox-uid needs a plane running as root; otherwise replicas run as the plane's own uid",
    );
  }
  const receipts = flags.receipts ?? "on";
  if (receipts !== "on" && receipts !== "off") {
    throw new Error(`--receipts is on or off, got '${receipts}'`);
  }
  // docs/evidence.md#receipts: answers of known length up to this are held whole so the receipt covers them.
  const receiptBodyBytes = flags.receiptBodyLimit === undefined ? undefined : Number(flags.receiptBodyLimit);
  if (
    receiptBodyBytes !== undefined &&
    !(Number.isInteger(receiptBodyBytes) && receiptBodyBytes >= 0 && receiptBodyBytes <= 64 * 1024 * 1024)
  ) {
    throw new Error("--receipt-body-limit is a whole number of bytes from 0 to 67108864 (64 MiB)");
  }
  if (flags.pipFindLinks !== undefined && flags.pipIndexUrl !== undefined) {
    throw new Error("--pip-find-links and --pip-index-url exclude each other");
  }
  if (flags.pipIndexUrl !== undefined && !/^https?:\/\/[^\s/?#]+/i.test(flags.pipIndexUrl)) {
    throw new Error(`--pip-index-url needs an http(s) URL, got '${flags.pipIndexUrl}'`);
  }
  const indexArgs =
    flags.pipFindLinks !== undefined
      ? ["--no-index", "--find-links", resolve(flags.pipFindLinks)]
      : flags.pipIndexUrl !== undefined
        ? ["--index-url", flags.pipIndexUrl]
        : null;
  const retention = flags.auditRetention === undefined ? null : parseAuditRetention(flags.auditRetention);
  if (retention !== null && !retention.ok) throw new Error(retention.error);
  const asyncConcurrency = flags.asyncConcurrency === undefined ? undefined : Number(flags.asyncConcurrency);
  if (
    asyncConcurrency !== undefined &&
    !(Number.isInteger(asyncConcurrency) && asyncConcurrency >= 1 && asyncConcurrency <= 1024)
  ) {
    throw new Error("--async-concurrency is a whole number from 1 to 1024");
  }
  const config = Object.freeze({
    name: flags.name,
    region: flags.region,
    controlUrl: flags.controlUrl.replace(/\/$/, ""),
    token,
    dataDir: resolve(flags.dataDir),
    ingress: parseHostPort("--ingress", flags.ingress),
    admin: flags.admin ? parseHostPort("--admin", flags.admin) : null,
    peerCa: flags.peerCa ? readFileSync(flags.peerCa, "utf8") : null,
    tls:
      flags.tlsCert && flags.tlsKey
        ? { cert: readFileSync(flags.tlsCert, "utf8"), key: readFileSync(flags.tlsKey, "utf8") }
        : null,
    tlsDir: flags.tlsDir ? resolve(flags.tlsDir) : null,
    limits: {
      ...(predictTimeout ? { predictTimeoutMs: predictTimeout * 1000 } : {}),
      ...(receiptBodyBytes !== undefined ? { receiptBodyBytes } : {}),
      ...(hopContinue !== undefined ? { hopContinueTimeoutMs: hopContinue } : {}),
      ...websocket,
    },
    ...(transport ? { ingressTransport: transport } : {}),
    ...(backpressure !== null ? { backpressure } : {}),
    ...(retention !== null ? { auditRetentionMs: retention.ms } : {}),
    receipts: receipts === "on",
    python: {
      interpreters: (flags.python ?? []).map((p) => resolve(p)),
      ...(indexArgs !== null ? { indexArgs } : {}),
    },
    async: {
      ...(asyncConcurrency !== undefined ? { concurrency: asyncConcurrency } : {}),
      webhook: {
        allowHttp: flags.webhookAllowHttp === true,
        allowPrivate: flags.webhookAllowPrivate === true,
        ...(flags.webhookCa ? { ca: readFileSync(flags.webhookCa, "utf8") } : {}),
      },
    },
    sandbox: {
      mode,
      ...(flags.sandboxBwrap !== undefined ? { bwrapPath: resolve(flags.sandboxBwrap) } : {}),
      ...(sandboxUid !== undefined ? { uid: sandboxUid } : {}),
    },
  });
  const plane = await startPlane(config);
  runUntilStopped(parent, { drain: () => plane.stop(), brief: () => plane.stop({ brief: true }) });
}
