// The control plane's build step for an uploaded model package: read the tar (gzipped, or plain as truss
// sends it; the parser tells them apart by their first bytes), find `config.yaml` and the model's entry
// point, and validate the config, so a broken package fails at push with a clear message (BUILD_FAILED)
// instead of on every plane.

import type { Readable } from "node:stream";
import { Parser, type ReadEntry } from "tar";
import { parseDocument } from "yaml";
import { parseModelConfig } from "../core/model-config.ts";
import { parseSecretsConfig, secretsEntry } from "../core/secrets.ts";

export type PackageCheck =
  | { ok: true; raw_config: string; config: Record<string, unknown> }
  | { ok: false; message: string };

const MAX_CONFIG_BYTES = 1024 * 1024;

/** Entry names inside a package are relative; tools often prefix them with `./`. */
function normalize(path: string): string {
  return path.replace(/^(\.\/)+/, "");
}

export async function checkPackage(archive: Readable): Promise<PackageCheck> {
  let rawConfig: string | null = null;
  let hasModelModule = false;
  let tooLarge = false;
  const parser = new Parser({
    onReadEntry: (entry: ReadEntry) => {
      const name = normalize(entry.path);
      if (name === "model/model.js") hasModelModule = true;
      if (name !== "config.yaml") {
        entry.resume();
        return;
      }
      const chunks: Buffer[] = [];
      let size = 0;
      entry.on("data", (c: Buffer) => {
        size += c.length;
        if (size <= MAX_CONFIG_BYTES) chunks.push(c);
        else tooLarge = true;
      });
      entry.on("end", () => {
        rawConfig = Buffer.concat(chunks).toString("utf8");
      });
    },
  });
  try {
    await new Promise<void>((resolve, reject) => {
      parser.on("end", resolve);
      parser.on("error", reject);
      archive.on("error", reject);
      archive.pipe(parser);
    });
  } catch (err) {
    return {
      ok: false,
      message: `The model archive is not a readable tar (gzipped or plain): ${(err as Error).message}`,
    };
  }
  if (tooLarge) return { ok: false, message: "config.yaml is larger than 1 MiB." };
  if (rawConfig === null) return { ok: false, message: "The model package has no config.yaml at its root." };
  const parsed = parseModelConfig(rawConfig);
  if (!parsed.ok) return { ok: false, message: `config.yaml: ${parsed.key}: ${parsed.message}` };
  if (parsed.config.docker_server === null && !hasModelModule) {
    return {
      ok: false,
      message: "The model package has neither model/model.js nor docker_server.start_command in config.yaml.",
    };
  }
  const secrets = secretsOf(rawConfig);
  if (!secrets.ok) return { ok: false, message: `config.yaml: ${secrets.key}: ${secrets.message}` };
  const config = parsed.config as unknown as Record<string, unknown>;
  return {
    ok: true,
    raw_config: rawConfig,
    // Only the names are kept (with null placeholders): a value written into config.yaml is never stored.
    config: secrets.names.length > 0 ? { ...config, secrets: secretsEntry(secrets.names) } : config,
  };
}

/** The `secrets:` names of a config.yaml that parseModelConfig has accepted (so it is valid YAML). */
function secretsOf(rawConfig: string) {
  const raw = parseDocument(rawConfig, { uniqueKeys: true }).toJS() as unknown;
  const value = typeof raw === "object" && raw !== null ? (raw as Record<string, unknown>)["secrets"] : null;
  return parseSecretsConfig(value);
}
