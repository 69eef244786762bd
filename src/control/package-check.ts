// The control plane's build step for an uploaded model package: read the tar (gzipped, or plain as truss
// sends it; the parser tells them apart by their first bytes), find `config.yaml` and the model's entry
// point, validate the config and a truss package's requirements, so a broken package fails at push with a
// clear message (BUILD_FAILED) instead of on every plane.

import type { Readable } from "node:stream";
import { Parser, type ReadEntry } from "tar";
import { parseDocument } from "yaml";
import { packageEntryPoint, parseModelConfig } from "../core/model-config.ts";
import { normalizeRequirements, requirementsFileLines } from "../core/python.ts";
import { parseSecretsConfig, secretsEntry } from "../core/secrets.ts";

export type PackageCheck =
  | { ok: true; raw_config: string; config: Record<string, unknown> }
  | { ok: false; message: string };

const MAX_CONFIG_BYTES = 1024 * 1024;
/** Requirements files are kept while the tar streams by, before config.yaml says which one is used. */
const MAX_TEXT_FILE_BYTES = 1024 * 1024;
const MAX_TEXT_BYTES = 8 * 1024 * 1024;

/** Entry names inside a package are relative; tools often prefix them with `./`. */
function normalize(path: string): string {
  return path.replace(/^(\.\/)+/, "").replace(/\/+$/, "");
}

/** Files whose content may be needed once config.yaml is read: candidates for `requirements_file`. */
function maybeRequirements(name: string): boolean {
  return /\.(txt|in)$/i.test(name) || /requirements/i.test(name.split("/").pop() ?? "");
}

export async function checkPackage(archive: Readable): Promise<PackageCheck> {
  let rawConfig: string | null = null;
  let tooLarge = false;
  const files = new Set<string>();
  const texts = new Map<string, string>();
  let textBytes = 0;
  const parser = new Parser({
    onReadEntry: (entry: ReadEntry) => {
      const name = normalize(entry.path);
      if (entry.type === "File" || entry.type === "OldFile" || entry.type === "ContiguousFile")
        files.add(name);
      const keep = name === "config.yaml" || (maybeRequirements(name) && entry.size <= MAX_TEXT_FILE_BYTES);
      if (!keep || (name !== "config.yaml" && textBytes + entry.size > MAX_TEXT_BYTES)) {
        entry.resume();
        return;
      }
      if (name !== "config.yaml") textBytes += entry.size;
      const chunks: Buffer[] = [];
      let size = 0;
      entry.on("data", (c: Buffer) => {
        size += c.length;
        if (name !== "config.yaml" || size <= MAX_CONFIG_BYTES) chunks.push(c);
        else tooLarge = true;
      });
      entry.on("end", () => {
        const text = Buffer.concat(chunks).toString("utf8");
        if (name === "config.yaml") rawConfig = text;
        else texts.set(name, text);
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
  const entry = packageEntryPoint(parsed.config, (p) => files.has(p));
  if (!entry.ok) return { ok: false, message: entry.message };
  if (entry.entry.type === "python") {
    const file = parsed.config.python.requirements_file;
    if (file !== null) {
      if (!files.has(file)) {
        return { ok: false, message: `config.yaml: requirements_file: the package has no ${file}.` };
      }
      const text = texts.get(file);
      // A file of another name or size is checked on the plane, which reads it from the package itself.
      if (text !== undefined) {
        const normalized = normalizeRequirements(requirementsFileLines(text), file);
        if (!normalized.ok)
          return { ok: false, message: `config.yaml: requirements_file: ${normalized.message}` };
      }
    }
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
