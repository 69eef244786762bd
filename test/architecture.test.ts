// Enforces the layout of STYLE.md: `src/core` imports no I/O, and roles meet only through `src/core`
// and `src/store`, never through each other's internals.
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join, relative, resolve, sep } from "node:path";
import { describe, expect, it } from "vitest";

const SRC = resolve(import.meta.dirname, "../src");
const ROLES = ["lib", "control", "plane", "gateway", "dns", "runtime", "cli", "up"];
/** Roles that compose others: the CLI starts every role, `up` starts them all in one process tree. */
const COMPOSERS: Record<string, string[]> = {
  cli: ROLES,
  up: ROLES,
  // A plane hosts its ingress gateway in the same process.
  plane: ["gateway"],
};
const IO_MODULES =
  /^(node:)?(fs|net|http|https|http2|dgram|child_process|cluster|dns|tls|worker_threads|fs\/promises)$/;

function filesUnder(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) return filesUnder(path);
    return path.endsWith(".ts") && !path.endsWith(".test.ts") ? [path] : [];
  });
}

function importsOf(file: string): string[] {
  const text = readFileSync(file, "utf8");
  return [...text.matchAll(/(?:^|\n)\s*(?:import|export)[^"']*?from\s+["']([^"']+)["']/g)].map((m) => m[1]!);
}

function roleOf(path: string): string | undefined {
  return relative(SRC, path).split(sep)[0];
}

describe("architecture", () => {
  it("src/core imports no I/O module and nothing outside src/core", () => {
    for (const file of filesUnder(join(SRC, "core"))) {
      for (const spec of importsOf(file)) {
        expect(IO_MODULES.test(spec), `${relative(SRC, file)} imports ${spec}`).toBe(false);
        if (spec.startsWith(".")) {
          expect(roleOf(resolve(file, "..", spec)), `${relative(SRC, file)} imports ${spec}`).toBe("core");
        }
      }
    }
  });

  it("roles import each other only where one composes the other", () => {
    for (const role of ROLES) {
      for (const file of filesUnder(join(SRC, role))) {
        for (const spec of importsOf(file)) {
          if (!spec.startsWith(".")) continue;
          const target = roleOf(resolve(file, "..", spec));
          if (target === undefined || target === role || ["core", "store", "lib"].includes(target)) continue;
          expect(COMPOSERS[role] ?? [], `${relative(SRC, file)} imports ${spec}`).toContain(target);
        }
      }
    }
  });
});
