#!/usr/bin/env node
// The `meridian` command: loads the TypeScript entry point through tsx's ESM loader, so the package runs
// from source with no build step.
import { register } from "tsx/esm/api";

register();
await import("../src/cli/main.ts");
