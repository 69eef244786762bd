// Small file helpers shared by the roles.

import { renameSync, writeFileSync } from "node:fs";

/** Writes a file readable by its owner only, atomically (temp file + rename). */
export function writeSecretFile(path: string, content: string): void {
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, content, { mode: 0o600 });
  renameSync(tmp, path);
}
