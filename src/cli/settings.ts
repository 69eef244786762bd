// Where the CLI finds its control plane, key, DNS and CA: flags, then MERIDIAN_* environment variables,
// then the profile saved by `meridian login`, then the `up.json` of a local `meridian up`. Resolved once
// per command into a frozen object.

import { existsSync, mkdirSync, readFileSync } from "node:fs";
import { homedir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { writeSecretFile } from "../lib/files.ts";

export interface Profile {
  api_url: string;
  api_key: string;
  /** `ip:port` of Meridian's DNS, for `predict`. */
  dns?: string | null;
  /** CA certificate (PEM file) that signs the ingress certificates. */
  ca_file?: string | null;
  /** The inference domain; asked of the control plane when unknown. */
  domain?: string | null;
}

/** What `meridian up` writes to `{data-dir}/up.json`. */
export interface UpManifest {
  control_url: string;
  api_key_file: string;
  domain: string;
  dns: string;
  ca_file: string;
  planes: Array<{ name: string; region: string; ingress: string; global_ingress: boolean }>;
}

export interface Settings {
  apiUrl: string | null;
  apiKey: string | null;
  dns: string | null;
  caFile: string | null;
  domain: string | null;
  /** Ingress port of a local `meridian up`; null means HTTPS's 443. */
  ingressPort: number | null;
  /** Where the settings came from, for error messages. */
  source: string;
}

export function profilePath(env: NodeJS.ProcessEnv): string {
  const base = env["XDG_CONFIG_HOME"] ?? join(env["HOME"] ?? homedir(), ".config");
  return join(base, "meridian", "profile.json");
}

export function saveProfile(env: NodeJS.ProcessEnv, profile: Profile): string {
  const path = profilePath(env);
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  writeSecretFile(path, `${JSON.stringify(profile, null, 2)}\n`);
  return path;
}

function readJson<T>(path: string): T | null {
  try {
    return JSON.parse(readFileSync(path, "utf8")) as T;
  } catch {
    return null;
  }
}

export function readUpManifest(dataDir: string): UpManifest | null {
  return readJson<UpManifest>(join(dataDir, "up.json"));
}

export function resolveSettings(
  flags: { apiUrl?: string; apiKey?: string; dns?: string; ca?: string; dataDir?: string; domain?: string },
  env: NodeJS.ProcessEnv,
): Settings {
  const profile = readJson<Profile>(profilePath(env));
  const upDir = resolve(flags.dataDir ?? env["MERIDIAN_DATA_DIR"] ?? ".meridian");
  const up = existsSync(join(upDir, "up.json")) ? readUpManifest(upDir) : null;
  let upKey: string | null = null;
  if (up) {
    try {
      upKey = readFileSync(up.api_key_file, "utf8").trim();
    } catch {
      upKey = null;
    }
  }
  const pick = <T>(...values: Array<T | null | undefined>) =>
    values.find((v) => v !== undefined && v !== null) ?? null;
  const apiUrl = pick(flags.apiUrl, env["MERIDIAN_API_URL"], profile?.api_url, up?.control_url);
  const source = flags.apiUrl
    ? "--api-url"
    : env["MERIDIAN_API_URL"]
      ? "MERIDIAN_API_URL"
      : profile
        ? profilePath(env)
        : up
          ? join(upDir, "up.json")
          : "nothing";
  return Object.freeze({
    apiUrl: apiUrl?.replace(/\/$/, "") ?? null,
    apiKey: pick(flags.apiKey, env["MERIDIAN_API_KEY"], profile?.api_key, upKey),
    dns: pick(flags.dns, env["MERIDIAN_DNS"], profile?.dns, up?.dns),
    caFile: pick(flags.ca, env["MERIDIAN_CA_FILE"], profile?.ca_file, up?.ca_file),
    domain: pick(flags.domain, env["MERIDIAN_DOMAIN"], profile?.domain, up?.domain),
    ingressPort: up?.planes[0] ? Number(up.planes[0].ingress.split(":").pop()) : null,
    source,
  });
}
