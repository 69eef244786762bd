// config.yaml parsing: a table of packages that must parse, a table of broken ones that must name the
// offending key, truss's Python keys, the YAML subset both runtimes read, what a package runs, and
// properties over predict_concurrency and variable names.

import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  type ModelPackageConfig,
  packageEntryPoint,
  parseModelConfig,
  pythonModulePath,
} from "./model-config.ts";

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
      "model_name: x\nresources:\n  cpu: '1'\nrequirements: []\nsystem_packages: []\nruntime:\n  predict_concurrency: 2\n  streaming_read_timeout: 60\n",
    );
    expect(outcome).toMatchObject({
      ok: true,
      ignored: ["resources", "system_packages", "runtime.streaming_read_timeout"],
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

function config(text: string): ModelPackageConfig {
  const outcome = parseModelConfig(text);
  if (!outcome.ok) throw new Error(`${outcome.key}: ${outcome.message}`);
  return outcome.config;
}

describe("truss's Python keys", () => {
  it("take truss's defaults", () => {
    expect(config("").python).toEqual({
      python_version: null,
      requirements: [],
      requirements_file: null,
      secrets: {},
      model_module_dir: "model",
      model_class_filename: "model.py",
      model_class_name: "Model",
      bundled_packages_dir: "packages",
      data_dir: "data",
      external_package_dirs: [],
    });
  });

  it("read what a truss package declares, requirements normalised and paths in POSIX form", () => {
    const python = config(`python_version: py310
requirements:
  - Torch==2.1.0
  - numpy
  - numpy
secrets:
  hf_access_token: null
  fallback: placeholder
model_module_dir: ./src/models/
model_class_filename: net.py
model_class_name: Net
bundled_packages_dir: libs
data_dir: weights
external_package_dirs: [../shared]
model_metadata:
  example_model_input: {prompt: hi}
`).python;
    expect(python).toEqual({
      python_version: "py310",
      requirements: ["numpy", "torch==2.1.0"],
      requirements_file: null,
      // A value in config.yaml is a placeholder and is not kept (the team's secret supplies it).
      secrets: { hf_access_token: null, fallback: null },
      model_module_dir: "src/models",
      model_class_filename: "net.py",
      model_class_name: "Net",
      bundled_packages_dir: "libs",
      data_dir: "weights",
      external_package_dirs: ["../shared"],
    });
    expect(config("requirements_file: ./reqs/requirements.txt\n").python.requirements_file).toBe(
      "reqs/requirements.txt",
    );
  });

  it.each([
    ["python_version: 3.11\n", "python_version", /must be a string such as py311, got 3\.11/],
    ["python_version: python3\n", "python_version", /such as py311, got "python3"/],
    ["requirements: numpy\n", "requirements", /list of pip requirements/],
    ["requirements: [1]\n", "requirements", /list of pip requirements/],
    ["requirements: ['-r /etc/passwd']\n", "requirements", /^line 1: the pip option -r is not allowed/],
    ["requirements: [./local]\n", "requirements", /local paths are not allowed/],
    [
      "requirements_file: pyproject.toml\n",
      "requirements_file",
      /pyproject\.toml and uv\.lock are not supported/,
    ],
    ["requirements_file: uv.lock\n", "requirements_file", /not supported/],
    ["requirements_file: ../../etc/passwd\n", "requirements_file", /inside the package/],
    ["requirements_file: /etc/passwd\n", "requirements_file", /inside the package/],
    ["requirements: [numpy]\nrequirements_file: r.txt\n", "requirements_file", /together with requirements/],
    ["secrets: [a]\n", "secrets", /mapping of secret names/],
    ["secrets:\n  ../../x: null\n", "secrets.../../x", /not a valid secret name/],
    ["secrets:\n  token: 5\n", "secrets.token", /null \(a placeholder\) or a string/],
    ["model_module_dir: ../up\n", "model_module_dir", /inside the package/],
    ["model_module_dir: a/../../b\n", "model_module_dir", /inside the package/],
    ["bundled_packages_dir: /abs\n", "bundled_packages_dir", /inside the package/],
    ["model_class_filename: model.js\n", "model_class_filename", /ending in \.py/],
    ["model_class_filename: sub/model.py\n", "model_class_filename", /file name/],
    ["model_class_name: 1Model\n", "model_class_name", /Python class name/],
    ["external_package_dirs: shared\n", "external_package_dirs", /list of directory paths/],
    ["model_metadata: [1]\n", "model_metadata", /must be a mapping/],
    [
      "external_data:\n  - url: https://example.com/w.bin\n    local_data_path: w.bin\n",
      "external_data",
      /not supported: Meridian does not download files at serving time/,
    ],
  ])("refuses %j", (text, key, message) => {
    const outcome = parseModelConfig(text);
    expect(outcome).toMatchObject({ ok: false, key });
    if (!outcome.ok) expect(outcome.message).toMatch(message);
  });
});

describe("the YAML subset both runtimes read", () => {
  it.each([
    ["an anchor and an alias", "a: &x 1\nb: *x\n", /anchors \(&name\) are not supported/],
    ["an alias to nothing", "b: *x\n", /not valid YAML|aliases/],
    ["a tag", "a: !!str 1\n", /tags \(!tag\) are not supported/],
    ["an explicit key", "? a\n: 1\n", /explicit keys \(\? key\) are not supported/],
    ["a collection as a key", "[a, b]: 1\n", /collections as mapping keys|not valid YAML/],
    ["a directive", "%YAML 1.2\n---\na: 1\n", /directives/],
    ["two documents", "a: 1\n---\nb: 2\n", /not valid YAML/],
  ])("refuses %s", (_name, text, message) => {
    const outcome = parseModelConfig(text);
    expect(outcome).toMatchObject({ ok: false, key: "(document)" });
    if (!outcome.ok) expect(outcome.message).toMatch(message);
  });
});

describe("packageEntryPoint", () => {
  const has =
    (...files: string[]) =>
    (p: string) =>
      files.includes(p);
  const DOCKER_CONFIG = `docker_server:
  start_command: ./serve
  server_port: 9000
  predict_endpoint: /p
  readiness_endpoint: /r
  liveness_endpoint: /l
`;

  it.each([
    [
      "a custom server, whatever files there are",
      DOCKER_CONFIG,
      ["model/model.py"],
      { type: "custom_server" },
    ],
    [
      "truss's model/model.py",
      "",
      ["model/model.py"],
      { type: "python", module: "model/model.py", className: "Model" },
    ],
    [
      "a class named by config.yaml",
      "model_module_dir: src\nmodel_class_filename: net.py\nmodel_class_name: Net\n",
      ["src/net.py"],
      { type: "python", module: "src/net.py", className: "Net" },
    ],
    [
      "a class at the package root",
      "model_module_dir: .\n",
      ["model.py"],
      { type: "python", module: "model.py" },
    ],
    ["Meridian's model/model.js", "", ["model/model.js"], { type: "javascript", module: "model/model.js" }],
  ])("runs %s", (_name, text, files, expected) => {
    const outcome = packageEntryPoint(config(text), has(...files));
    expect(outcome).toMatchObject({ ok: true, entry: expected });
  });

  it("refuses a package with both model files, or with nothing to run", () => {
    expect(packageEntryPoint(config(""), has("model/model.py", "model/model.js"))).toMatchObject({
      ok: false,
      message: expect.stringMatching(/both model\/model\.py and model\/model\.js/),
    });
    expect(packageEntryPoint(config("model_module_dir: src\n"), has("model/model.py"))).toMatchObject({
      ok: false,
      message: expect.stringMatching(/neither src\/model\.py \(a truss Model class\)/),
    });
    expect(pythonModulePath(config(""))).toBe("model/model.py");
  });
});
