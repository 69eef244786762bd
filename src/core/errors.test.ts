// Keeps the error catalog and docs/errors.md in step: every code documented with its status, nothing extra.
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { describe, expect, it } from "vitest";
import { ERRORS, MeridianError } from "./errors.ts";

const doc = readFileSync(resolve(import.meta.dirname, "../../docs/errors.md"), "utf8");
const documented = new Map(
  [...doc.matchAll(/^\| `([a-z_]+)` \| (\d{3}) \|/gm)].map((m) => [m[1]!, Number(m[2])] as const),
);

describe("error catalog", () => {
  it("documents every code with its status", () => {
    for (const [code, { status }] of Object.entries(ERRORS)) {
      expect(documented.get(code), `docs/errors.md row for ${code}`).toBe(status);
    }
  });

  it("documents no code that the catalog lacks", () => {
    for (const code of documented.keys()) expect(Object.keys(ERRORS)).toContain(code);
  });

  it("maps an error to the reference's ErrorResponse body", () => {
    const err = new MeridianError("model_unavailable", undefined, { region: "eu" });
    expect(err.status).toBe(503);
    expect(err.toBody()).toEqual({
      error: "No replica is ready to serve this request.",
      error_code: "model_unavailable",
      detail: { region: "eu" },
    });
  });
});
