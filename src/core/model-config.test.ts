// config.yaml parsing: a table of packages that must parse, a table of broken ones that must name the
// offending key, and properties over predict_concurrency and variable names.

import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { parseModelConfig } from "./model-config.ts";

const DOCKER = `docker_server:
  start_command: python3 server.py
  server_port: 8000
  predict_endpoint: /predict
  readiness_endpoint: /health/ready
  liveness_endpoint: /health/live
`;

describe("parseModelConfig accepts", () => {
  it.each([
    ["an empty file", "", { model_name: null, runtime: { predict_concurrency: 1 }, docker_server: null }],
    ["only comments", "# nothing here\n", { model_name: null }],
    ["a model name", "model_name: hello\n", { model_name: "hello" }],
    ["concurrency", "runtime:\n  predict_concurrency: 8\n", { runtime: { predict_concurrency: 8 } }],
    [
      "variables of every scalar type",
      "environment_variables:\n  A: x\n  B: 2\n  C: true\n",
      { environment_variables: { A: "x", B: "2", C: "true" } },
    ],
    [
      "a custom server",
      DOCKER,
      {
        docker_server: {
          start_command: "python3 server.py",
          server_port: 8000,
          predict_endpoint: "/predict",
          readiness_endpoint: "/health/ready",
          liveness_endpoint: "/health/live",
        },
      },
    ],
  ])("%s", (_name, text, expected) => {
    const outcome = parseModelConfig(text);
    expect(outcome.ok).toBe(true);
    if (outcome.ok) expect(outcome.config).toMatchObject(expected);
  });

  it("reports truss keys it does not act on instead of refusing them", () => {
    const outcome = parseModelConfig(
      "model_name: x\nresources:\n  cpu: '1'\nrequirements: []\nruntime:\n  predict_concurrency: 2\n  streaming_read_timeout: 60\n",
    );
    expect(outcome).toMatchObject({
      ok: true,
      ignored: ["resources", "requirements", "runtime.streaming_read_timeout"],
    });
  });
});

describe("parseModelConfig refuses, naming the key", () => {
  it.each([
    ["broken YAML", "model_name: [unclosed\n", "(document)", /is not valid YAML \(line \d+\)/],
    ["duplicate keys", "model_name: a\nmodel_name: b\n", "(document)", /not valid YAML/],
    ["a list document", "- a\n- b\n", "(document)", /must be a mapping of keys, got a list/],
    ["a scalar document", "hello\n", "(document)", /must be a mapping/],
    ["a numeric model name", "model_name: 12\n", "model_name", /non-empty string, got 12/],
    ["an empty model name", "model_name: ''\n", "model_name", /non-empty string/],
    ["variables as a list", "environment_variables: [A]\n", "environment_variables", /mapping/],
    ["a bad variable name", "environment_variables:\n  1A: x\n", "environment_variables.1A", /not a valid/],
    [
      "a reserved variable",
      "environment_variables:\n  MERIDIAN_ENVIRONMENT: x\n",
      "environment_variables.MERIDIAN_ENVIRONMENT",
      /set by the runtime/,
    ],
    [
      "a nested variable",
      "environment_variables:\n  A:\n    b: 1\n",
      "environment_variables.A",
      /got a mapping/,
    ],
    ["runtime as a string", "runtime: fast\n", "runtime", /must be a mapping/],
    [
      "zero concurrency",
      "runtime:\n  predict_concurrency: 0\n",
      "runtime.predict_concurrency",
      /positive integer, got 0/,
    ],
    [
      "text concurrency",
      "runtime:\n  predict_concurrency: two\n",
      "runtime.predict_concurrency",
      /got "two"/,
    ],
    [
      "fractional concurrency",
      "runtime:\n  predict_concurrency: 1.5\n",
      "runtime.predict_concurrency",
      /got 1.5/,
    ],
    ["docker_server as a string", "docker_server: yes\n", "docker_server", /must be a mapping/],
    [
      "a missing start_command",
      DOCKER.replace("  start_command: python3 server.py\n", ""),
      "docker_server.start_command",
      /is required/,
    ],
    [
      "a missing readiness_endpoint",
      DOCKER.replace("  readiness_endpoint: /health/ready\n", ""),
      "docker_server.readiness_endpoint",
      /is required/,
    ],
    [
      "a port out of range",
      DOCKER.replace("8000", "70000"),
      "docker_server.server_port",
      /1 to 65535, got 70000/,
    ],
    ["a port as text", DOCKER.replace("8000", "http"), "docker_server.server_port", /got "http"/],
    [
      "a relative endpoint",
      DOCKER.replace("/predict", "predict"),
      "docker_server.predict_endpoint",
      /starting with "\/", got "predict"/,
    ],
    [
      "a blank start_command",
      DOCKER.replace("python3 server.py", "'  '"),
      "docker_server.start_command",
      /non-empty/,
    ],
  ])("%s", (_name, text, key, message) => {
    const outcome = parseModelConfig(text);
    expect(outcome.ok).toBe(false);
    if (!outcome.ok) {
      expect(outcome.key).toBe(key);
      expect(outcome.message).toMatch(message);
    }
  });
});

describe("parseModelConfig properties", () => {
  it("accepts every positive integer predict_concurrency and refuses every other integer", () => {
    fc.assert(
      fc.property(fc.integer({ min: -1000, max: 1_000_000 }), (n) => {
        const outcome = parseModelConfig(`runtime:\n  predict_concurrency: ${n}\n`);
        if (n >= 1) return outcome.ok && outcome.config.runtime.predict_concurrency === n;
        return !outcome.ok && outcome.key === "runtime.predict_concurrency";
      }),
    );
  });

  it("keeps any string value of a valid variable name verbatim", () => {
    fc.assert(
      fc.property(fc.stringMatching(/^[A-LN-Z_][A-Z0-9_]{0,20}$/), fc.string(), (name, value) => {
        const outcome = parseModelConfig(`environment_variables:\n  "${name}": ${JSON.stringify(value)}\n`);
        return outcome.ok && outcome.config.environment_variables[name] === value;
      }),
    );
  });
});
