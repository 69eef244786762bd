// The build check at push: real tar archives (plain, as the truss CLI uploads them, and gzipped, as
// `meridian push` does) of truss Python packages, JavaScript packages and broken ones; each broken one
// is refused with the reason a user can act on.

import path from "node:path";
import { Readable } from "node:stream";
import { create } from "tar";
import { describe, expect, it } from "vitest";
import { EXAMPLES, writePackage } from "../runtime/testing.ts";
import { checkPackage } from "./package-check.ts";

async function archive(files: Record<string, string>, gzip = false): Promise<Readable> {
  const dir = await writePackage(files);
  // Entries as `tar -C dir .` writes them: `./config.yaml`, `./model/model.py`, …
  return create({ cwd: dir, gzip, portable: true }, ["."]) as unknown as Readable;
}

const MODEL_PY = "class Model:\n    def predict(self, model_input):\n        return model_input\n";

describe("checkPackage", () => {
  it("accepts a truss package in a plain tar, with its requirements normalised in the config", async () => {
    const check = await checkPackage(
      await archive({
        "config.yaml":
          "model_name: hello-py\npython_version: py311\nrequirements:\n  - Numpy==1.26.4\nresources:\n  cpu: '1'\n",
        "model/model.py": MODEL_PY,
        "data/weights.txt": "0.5\n",
      }),
    );
    expect(check).toMatchObject({
      ok: true,
      raw_config: expect.stringContaining("hello-py"),
      config: {
        model_name: "hello-py",
        python: { python_version: "py311", requirements: ["numpy==1.26.4"] },
      },
    });
  });

  it("accepts a JavaScript package gzipped, and a class where config.yaml says it is", async () => {
    expect(
      await checkPackage(
        await archive({ "config.yaml": "", "model/model.js": "export class Model {}\n" }, true),
      ),
    ).toMatchObject({ ok: true });
    expect(
      await checkPackage(
        await archive({
          "config.yaml": "model_module_dir: src\nmodel_class_filename: net.py\n",
          "src/net.py": MODEL_PY,
        }),
      ),
    ).toMatchObject({ ok: true });
  });

  it("checks a requirements_file in the package, and refuses one that is missing or reads the plane's files", async () => {
    const config = "requirements_file: requirements.txt\n";
    expect(
      await checkPackage(
        await archive({
          "config.yaml": config,
          "model/model.py": MODEL_PY,
          "requirements.txt": "numpy\n# a comment\n",
        }),
      ),
    ).toMatchObject({ ok: true });
    expect(await checkPackage(await archive({ "config.yaml": config, "model/model.py": MODEL_PY }))).toEqual({
      ok: false,
      message: "config.yaml: requirements_file: the package has no requirements.txt.",
    });
    expect(
      await checkPackage(
        await archive({
          "config.yaml": config,
          "model/model.py": MODEL_PY,
          "requirements.txt": "numpy\n-r /etc/passwd\n",
        }),
      ),
    ).toEqual({
      ok: false,
      message: expect.stringMatching(
        /^config\.yaml: requirements_file: requirements\.txt line 2: the pip option -r is not allowed/,
      ),
    });
  });

  it.each([
    [
      "both model files",
      { "config.yaml": "", "model/model.py": MODEL_PY, "model/model.js": "export class Model {}\n" },
      /both model\/model\.py and model\/model\.js/,
    ],
    [
      "nothing to run",
      { "config.yaml": "model_name: empty\n" },
      /neither model\/model\.py \(a truss Model class\), model\/model\.js nor docker_server/,
    ],
    [
      "a class file elsewhere than config.yaml says",
      { "config.yaml": "model_module_dir: src\n", "model/model.py": MODEL_PY },
      /neither src\/model\.py/,
    ],
    ["no config.yaml", { "model/model.py": MODEL_PY }, /no config\.yaml at its root/],
    [
      "an anchor in config.yaml",
      { "config.yaml": "a: &x 1\nb: *x\n", "model/model.py": MODEL_PY },
      /^config\.yaml: \(document\): uses YAML that Meridian does not accept: anchors/,
    ],
    [
      "a bad python_version",
      { "config.yaml": "python_version: '3.11'\n", "model/model.py": MODEL_PY },
      /^config\.yaml: python_version: must name a Python 3 version such as py311/,
    ],
    [
      "external_data",
      { "config.yaml": "external_data:\n  - url: https://x/y\n", "model/model.py": MODEL_PY },
      /external_data: is not supported/,
    ],
  ])("refuses %s", async (_name, files, message) => {
    const check = await checkPackage(await archive(files as Record<string, string>));
    expect(check.ok).toBe(false);
    if (!check.ok) expect(check.message).toMatch(message);
  });

  it.each(["hello-py", "stream-py", "hello-js", "stream-js", "custom-python"])(
    "accepts examples/%s packed as `meridian push` packs it",
    async (example) => {
      const packed = create({ cwd: path.join(EXAMPLES, example), gzip: true, portable: true }, ["."]);
      expect(await checkPackage(packed as unknown as Readable)).toMatchObject({ ok: true });
    },
  );

  it("refuses what is not a tar", async () => {
    const check = await checkPackage(Readable.from([Buffer.from("PK\x03\x04 this is a zip, not a tar")]));
    expect(check).toMatchObject({ ok: false });
  });
});
