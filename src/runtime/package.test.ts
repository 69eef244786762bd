// Model packages: how a package is classified (JavaScript, truss Python or custom server), what its broken
// forms say, and which variables a model process gets.

import { writeFile } from "node:fs/promises";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { MeridianError } from "../core/errors.ts";
import { parseModelConfig } from "../core/model-config.ts";
import {
  childEnvironment,
  loadModelPackage,
  loadPackage,
  modelEnvironment,
  modelPackageFrom,
} from "./package.ts";
import { EXAMPLES, writePackage } from "./testing.ts";

function refusal(fn: () => unknown): MeridianError {
  try {
    fn();
  } catch (err) {
    if (err instanceof MeridianError) return err;
    throw err;
  }
  throw new Error("expected a refusal");
}

const JS = new Set(["model/model.js"]);
const PY = new Set(["model/model.py"]);

describe("modelPackageFrom", () => {
  it("runs model/model.js when there is no docker_server", () => {
    const pkg = modelPackageFrom("/pkg", parseModelConfig("model_name: m\n"), JS);
    expect(pkg.kind).toEqual({ type: "javascript", module: path.join("/pkg", "model", "model.js") });
  });

  it("runs a truss model/model.py with the Python host, at the path and class config.yaml names", () => {
    expect(modelPackageFrom("/pkg", parseModelConfig("model_name: m\n"), PY).kind).toEqual({
      type: "python",
      module: path.join("/pkg", "model", "model.py"),
      className: "Model",
    });
    const custom = parseModelConfig(
      "model_module_dir: ./src/models/\nmodel_class_filename: net.py\nmodel_class_name: Net\n",
    );
    expect(modelPackageFrom("/pkg", custom, new Set(["src/models/net.py"])).kind).toEqual({
      type: "python",
      module: path.join("/pkg", "src", "models", "net.py"),
      className: "Net",
    });
  });

  it("refuses a package with both model.py and model.js rather than guess", () => {
    const err = refusal(() =>
      modelPackageFrom("/pkg", parseModelConfig(""), new Set(["model/model.py", "model/model.js"])),
    );
    expect(err.message).toMatch(/both model\/model\.py and model\/model\.js/);
  });

  it("runs the custom server when docker_server is set, even beside a model.js", () => {
    const text =
      "docker_server:\n  start_command: ./serve\n  server_port: 9000\n  predict_endpoint: /p\n  readiness_endpoint: /r\n  liveness_endpoint: /l\n";
    const pkg = modelPackageFrom("/pkg", parseModelConfig(text), JS);
    expect(pkg.kind).toMatchObject({
      type: "custom_server",
      server: { start_command: "./serve", server_port: 9000 },
    });
  });

  it("refuses a package with nothing to run", () => {
    const err = refusal(() => modelPackageFrom("/pkg", parseModelConfig(""), new Set()));
    expect(err.code).toBe("invalid_model_package");
    expect(err.message).toMatch(
      /neither model\/model\.py \(a truss Model class\), model\/model\.js nor docker_server\.start_command/,
    );
  });

  it("names the file alone when the document as a whole is broken", () => {
    const err = refusal(() => modelPackageFrom("/pkg", parseModelConfig("model_name: [\n"), JS));
    expect(err.message).toMatch(/^config\.yaml is not valid YAML \(line \d+\): /);
    expect(err.detail).toEqual({ file: "config.yaml", key: "(document)" });
  });

  it("refuses a broken config with the file and key in the message and the detail", () => {
    const err = refusal(() =>
      modelPackageFrom("/pkg", parseModelConfig("runtime:\n  predict_concurrency: -1\n"), JS),
    );
    expect(err.code).toBe("invalid_model_package");
    expect(err.message).toBe("config.yaml: runtime.predict_concurrency must be a positive integer, got -1");
    expect(err.detail).toEqual({ file: "config.yaml", key: "runtime.predict_concurrency" });
  });
});

describe("loadModelPackage", () => {
  it("loads each example", async () => {
    expect((await loadModelPackage(path.join(EXAMPLES, "hello-js"))).kind.type).toBe("javascript");
    expect((await loadModelPackage(path.join(EXAMPLES, "stream-js"))).kind.type).toBe("javascript");
    expect((await loadModelPackage(path.join(EXAMPLES, "custom-python"))).kind.type).toBe("custom_server");
    expect((await loadPackage(path.join(EXAMPLES, "hello-py"))).kind.type).toBe("python");
    expect((await loadPackage(path.join(EXAMPLES, "stream-py"))).kind.type).toBe("python");
  });

  it("leaves a truss Python package to the Python host: serve-model refuses it by name", async () => {
    await expect(loadModelPackage(path.join(EXAMPLES, "hello-py"))).rejects.toThrow(
      /model\/model\.py is a truss Model class: it is served by the Python host/,
    );
  });

  it("refuses a directory without config.yaml, and a path that is not a directory", async () => {
    const dir = await writePackage({ "model/model.js": "export class Model {}\n" });
    await expect(loadModelPackage(dir)).rejects.toThrow(/config\.yaml is missing/);
    await writeFile(path.join(dir, "file"), "");
    await expect(loadModelPackage(path.join(dir, "file"))).rejects.toThrow(
      /is not a model package directory/,
    );
  });
});

describe("the model's environment", () => {
  const config = (text: string) => {
    const outcome = parseModelConfig(text);
    if (!outcome.ok) throw new Error(outcome.message);
    return outcome.config;
  };

  it("adds the replica's identity to the package's variables and leaves out what is unset", () => {
    const vars = modelEnvironment(config("environment_variables:\n  A: '1'\n"), {
      modelId: "abcd1234",
      deploymentId: null,
      environment: "prod-eu",
    });
    expect(vars).toEqual({ A: "1", MERIDIAN_MODEL_ID: "abcd1234", MERIDIAN_ENVIRONMENT: "prod-eu" });
  });

  it("drops inherited MERIDIAN_* settings so a model never sees the plane's", () => {
    const env = childEnvironment(
      { PATH: "/bin", MERIDIAN_API_KEY: "secret", MERIDIAN_ENVIRONMENT: "stale", EMPTY: undefined },
      { MERIDIAN_ENVIRONMENT: "prod-eu", A: "1" },
    );
    expect(env).toEqual({ PATH: "/bin", MERIDIAN_ENVIRONMENT: "prod-eu", A: "1" });
  });
});
