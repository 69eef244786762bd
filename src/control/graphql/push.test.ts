// The truss push arguments as they become the REST push's payload, and truss_validation's verdicts, as
// tables of cases; the base64 decoder against Node's, property-tested.

import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { MeridianError } from "../../core/errors.ts";
import {
  decodeBase64,
  decodeTrussConfig,
  pushPayload,
  type TrussPushArgs,
  validateTrussConfig,
} from "./push.ts";

const b64 = (value: unknown) => Buffer.from(JSON.stringify(value)).toString("base64");
const CONFIG = { model_name: "m", python_version: "py311", secrets: { hf_token: null } };
const base: TrussPushArgs = { s3_key: "uploads/t/k.tgz", config: b64(CONFIG) };

function refusal(fn: () => unknown) {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(MeridianError);
    return {
      code: (err as MeridianError).code,
      detail: (err as MeridianError).detail as Record<string, string>,
    };
  }
  throw new Error("not refused");
}

describe("pushPayload", () => {
  it("maps every flag as the CLI sends it", () => {
    expect(
      pushPayload(
        {
          ...base,
          semver_bump: "MINOR",
          truss_user_env: '{"truss_client_version":"0.18.25"}',
          environment_name: "prod-eu",
          user_deploy_metadata: { team: "ml" },
          raw_config: Buffer.from("model_name: m\n").toString("base64"),
          deploy_timeout_minutes: 1440,
          allow_truss_download: false,
          preserve_env_instance_type: false,
          scale_down_old_production: false,
          model_origin: "BASETEN",
        },
        { kind: "new_version", deployment_name: "v2" },
      ),
    ).toEqual({
      config: CONFIG,
      raw_config: "model_name: m\n",
      labels: { team: "ml" },
      environment_name: "prod-eu",
      deployment_name: "v2",
      scale_down_previous: false,
    });
  });

  it("leaves the previous deployment to the environment's cleanup unless told to keep it", () => {
    for (const scale of [true, null, undefined]) {
      expect(
        pushPayload(
          { ...base, scale_down_old_production: scale },
          { kind: "new_model", deployment_name: null },
        ),
      ).not.toHaveProperty("scale_down_previous");
    }
  });

  it("makes a development push of deploy_draft_truss, with no environment or name", () => {
    expect(pushPayload({ ...base, user_deploy_metadata: null }, { kind: "development" })).toEqual({
      config: CONFIG,
      raw_config: null,
      labels: null,
      is_development: true,
    });
  });

  it("drops a raw_config that is not base64, as Baseten does", () => {
    expect(pushPayload({ ...base, raw_config: "%%%" }, { kind: "development" }).raw_config).toBeNull();
  });

  const bad: Array<[string, TrussPushArgs, Parameters<typeof pushPayload>[1], string, string]> = [
    ["an empty s3_key", { ...base, s3_key: "" }, { kind: "development" }, "s3_key", "length"],
    ["a config that is not base64", { ...base, config: "e30" }, { kind: "development" }, "config", "base64"],
    ["a config of no JSON", { ...base, config: "bm9wZQ==" }, { kind: "development" }, "config", "json"],
    ["a config that is a list", { ...base, config: b64([1]) }, { kind: "development" }, "config", "object"],
    ["chains", { ...base, model_origin: "CHAINS" }, { kind: "development" }, "model_origin", "chains"],
    [
      "an unknown semver bump",
      { ...base, semver_bump: "minor" },
      { kind: "development" },
      "semver_bump",
      "enum",
    ],
    [
      "a timeout under 10",
      { ...base, deploy_timeout_minutes: 9 },
      { kind: "development" },
      "deploy_timeout_minutes",
      "range",
    ],
    [
      "a timeout over 1440",
      { ...base, deploy_timeout_minutes: 1441 },
      { kind: "development" },
      "deploy_timeout_minutes",
      "range",
    ],
    [
      "labels that are a list",
      { ...base, user_deploy_metadata: [1] },
      { kind: "development" },
      "user_deploy_metadata",
      "object",
    ],
    [
      "labels that are a string",
      { ...base, user_deploy_metadata: "x" },
      { kind: "development" },
      "user_deploy_metadata",
      "object",
    ],
    [
      "a user env that is not JSON",
      { ...base, truss_user_env: "{" },
      { kind: "development" },
      "truss_user_env",
      "json_object",
    ],
    [
      "a user env that is a list",
      { ...base, truss_user_env: "[]" },
      { kind: "development" },
      "truss_user_env",
      "json_object",
    ],
    [
      "a version name with a space",
      base,
      { kind: "new_model", deployment_name: "a b" },
      "version_name",
      "pattern",
    ],
    ["a name with a slash", base, { kind: "new_version", deployment_name: "a/b" }, "name", "pattern"],
    ["a name too long", base, { kind: "new_version", deployment_name: "a".repeat(256) }, "name", "pattern"],
  ];
  it.each(bad)("refuses %s, naming the argument", (_name, args, which, field, rule) => {
    expect(refusal(() => pushPayload(args, which))).toEqual({
      code: "invalid_request",
      detail: { field, rule },
    });
  });
});

describe("validateTrussConfig", () => {
  it("passes a config at truss's defaults without a word", () => {
    expect(
      validateTrussConfig(b64({ resources: { cpu: "1", memory: "2Gi", accelerator: null, use_gpu: false } })),
    ).toEqual({
      success: true,
      errors: [],
      warnings: [],
    });
  });

  it("warns about each ignored key that is not at truss's default", () => {
    const v = validateTrussConfig(
      b64({
        system_packages: ["ffmpeg"],
        resources: { accelerator: "H100", use_gpu: true },
        runtime: { predict_concurrency: 2, transport: { kind: "grpc" }, streaming_read_timeout: 60 },
        some_future_key: { on: true },
        empty_future_key: [],
      }),
    );
    expect(v.success).toBe(true);
    expect(v.warnings).toEqual([
      "system_packages is ignored: Meridian builds no image, so system packages are not installed.",
      expect.stringMatching(/^resources is ignored: every replica runs in one slot/),
      "some_future_key is ignored: Meridian does not act on it.",
      "runtime.transport is ignored: only HTTP is served.",
    ]);
  });

  const refused: Array<[string, string | null, RegExp]> = [
    ["nothing", null, /config is required/],
    ["an empty string", "", /config is required/],
    ["no base64", "not base64", /not base64/],
    ["a bad python_version", b64({ python_version: "3.11" }), /^python_version: /],
    [
      "requirements and a requirements file",
      b64({ requirements: ["a"], requirements_file: "r.txt" }),
      /^requirements_file: /,
    ],
    [
      "a docker_server without start_command",
      b64({ docker_server: { server_port: 1 } }),
      /^docker_server\.start_command: is required/,
    ],
    [
      "too many secrets",
      b64({ secrets: Object.fromEntries(Array.from({ length: 101 }, (_, i) => [`s${i}`, null])) }),
      /^secrets: /,
    ],
    [
      "a model_class_name that is no identifier",
      b64({ model_class_name: "not-python" }),
      /^model_class_name: /,
    ],
  ];
  it.each(refused)("refuses %s", (_name, config, error) => {
    const v = validateTrussConfig(config);
    expect(v.success).toBe(false);
    expect(v.errors).toEqual([expect.stringMatching(error)]);
  });
});

describe("decodeBase64", () => {
  it("decodes what Node encodes, and refuses what is not RFC 4648 base64", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 64 }), (bytes) => {
        const encoded = Buffer.from(bytes).toString("base64");
        expect(decodeBase64(encoded)?.equals(Buffer.from(bytes))).toBe(true);
      }),
    );
    for (const bad of ["e30", "e3=0", "e30-", "e3 0", "====", "e30==="])
      expect(decodeBase64(bad), bad).toBeNull();
    expect(decodeTrussConfig(b64({ a: 1 }))).toMatchObject({ ok: true, config: { a: 1 } });
  });
});
