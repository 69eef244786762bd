import { defineConfig } from "vitest/config";

// Unit tests sit beside their files (src/**); end-to-end tests that start real `meridian` processes live
// in test/. Process-heavy files run in forked workers so a crash stays contained.
export default defineConfig({
  test: {
    include: ["src/**/*.test.ts", "test/**/*.test.ts"],
    pool: "forks",
    poolOptions: { forks: { maxForks: 2, minForks: 1 } },
    testTimeout: 30_000,
    hookTimeout: 60_000,
    teardownTimeout: 20_000,
  },
});
