// Enforces the layout of STYLE.md: `src/core` imports no I/O, and roles meet only through `src/core`
// and `src/store`, never through each other's internals.
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
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

/**
 * The first import cycle among `files` (relative imports only, type-only ones included: a cycle of types
 * is a tangle too), as the chain of files that closes it, or null.
 */
function importCycle(files: readonly string[]): string[] | null {
  const known = new Set(files);
  const edges = new Map(
    files.map((file) => [
      file,
      importsOf(file)
        .filter((spec) => spec.startsWith("."))
        .map((spec) => resolve(file, "..", spec))
        .filter((target) => known.has(target)),
    ]),
  );
  const state = new Map<string, "open" | "done">();
  const path: string[] = [];
  const visit = (file: string): string[] | null => {
    if (state.get(file) === "done") return null;
    if (state.get(file) === "open") return [...path.slice(path.indexOf(file)), file];
    state.set(file, "open");
    path.push(file);
    for (const next of edges.get(file) ?? []) {
      const cycle = visit(next);
      if (cycle !== null) return cycle;
    }
    path.pop();
    state.set(file, "done");
    return null;
  };
  for (const file of files) {
    const cycle = visit(file);
    if (cycle !== null) return cycle;
  }
  return null;
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

  it("src/gateway has no import cycle (options and plan types live apart from the transports)", () => {
    const cycle = importCycle(filesUnder(join(SRC, "gateway")));
    expect(cycle?.map((file) => relative(SRC, file)).join(" -> ") ?? null).toBe(null);
  });

  it("the cycle check finds a cycle where there is one", () => {
    // The attempt: the graph as it was before the untangling (ingress -> http-transport -> gateway ->
    // ingress), rebuilt from real files in a scratch directory.
    const dir = mkdtempSync(join(tmpdir(), "meridian-arch-"));
    try {
      writeFileSync(join(dir, "ingress.ts"), 'import { createHttpIngress } from "./http-transport.ts";\n');
      writeFileSync(join(dir, "http-transport.ts"), 'import { createGateway } from "./gateway.ts";\n');
      writeFileSync(join(dir, "gateway.ts"), 'import type { IngressOptions } from "./ingress.ts";\n');
      writeFileSync(join(dir, "options.ts"), 'import type { X } from "../elsewhere.ts";\n');
      const cycle = importCycle(filesUnder(dir));
      expect(cycle?.map((file) => relative(dir, file))).toEqual([
        "gateway.ts",
        "ingress.ts",
        "http-transport.ts",
        "gateway.ts",
      ]);
      rmSync(join(dir, "gateway.ts"));
      writeFileSync(join(dir, "gateway.ts"), 'import type { IngressOptions } from "./options.ts";\n');
      expect(importCycle(filesUnder(dir))).toBe(null);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
