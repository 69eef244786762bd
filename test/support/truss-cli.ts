// The truss CLI as Meridian sees it (truss 0.18.x; /work/shared/reference/truss-cli-protocol.md): its GraphQL
// documents, built as its f-strings build them (`truss/remote/baseten/api.py`), values interpolated where it
// interpolates them; and a Python client that sends them the way it does (`requests.post(json=…)` with its
// error handling), uploads with boto3 exactly as `multipart_upload_boto3` does (every key of the credentials
// answer but `s3_bucket` and `s3_key` passed to `boto3.resource("s3", …)`), packs a package as
// `create_tar_with_progress_bar` does (an uncompressed tar of files), and predicts as `BasetenService.predict`.

import { execFile } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { PYTHON } from "./boto3.ts";

/** `TrussUserEnv.collect().json()` of truss 0.18.25 on this machine's Python. */
export const TRUSS_USER_ENV =
  '{"truss_client_version":"0.18.25","python_version":"3.11.7","pydantic_version":"2.13.4","mypy_version":null,"git_info":null}';

/**
 * `base64_encoded_json_str(config.to_dict())` for examples/hello-py/config.yaml, as truss 0.18.25 makes it:
 * every key of TrussConfig, truss's defaults filled in.
 */
export const HELLO_PY_CONFIG = {
  model_name: "hello-py",
  model_metadata: { example_model_input: { prompt: "Hello, world!" } },
  description: null,
  examples_filename: "examples.yaml",
  data_dir: "data",
  external_data: null,
  external_package_dirs: [],
  python_version: "py311",
  base_image: null,
  requirements_file: null,
  requirements: [],
  system_packages: [],
  environment_variables: { GREETING: "Hello" },
  secrets: {},
  resources: { cpu: "1", memory: "512Mi", accelerator: null, use_gpu: false },
  runtime: {
    predict_concurrency: 4,
    streaming_read_timeout: 60,
    enable_tracing_data: false,
    enable_debug_logs: false,
    transport: { kind: "http" },
    is_websocket_endpoint: false,
    health_checks: {
      restart_check_delay_seconds: null,
      restart_threshold_seconds: null,
      stop_traffic_threshold_seconds: null,
      startup_threshold_seconds: null,
    },
    oidc: { enabled: null },
    remote_ssh: { enabled: false },
    egress_restrictions: null,
    truss_server_version_override: null,
  },
  build: { model_server: "TrussServer", arguments: {}, secret_to_path_mapping: {}, no_cache: false },
  build_commands: [],
  docker_server: null,
  model_cache: [],
  weights: [],
  trt_llm: null,
  training_checkpoints: null,
  bis_llm: null,
  input_type: "Any",
  model_framework: "custom",
  model_type: "Model",
  model_module_dir: "model",
  model_class_filename: "model.py",
  model_class_name: "Model",
  bundled_packages_dir: "packages",
  use_local_src: false,
  cache_internal: [],
  live_reload: false,
  apply_library_patches: true,
  spec_version: "2.0",
};

/**
 * The same for examples/custom-python/config.yaml: a truss custom server (`docker_server`), which truss
 * pushes without a model.py.
 */
export const CUSTOM_PYTHON_CONFIG = {
  ...HELLO_PY_CONFIG,
  model_name: "custom-python",
  model_metadata: {},
  python_version: "py313",
  environment_variables: { GREETING: "Bonjour" },
  resources: { cpu: "1", memory: "2Gi", accelerator: null, use_gpu: false },
  runtime: { ...HELLO_PY_CONFIG.runtime, predict_concurrency: 2 },
  docker_server: {
    start_command: "python3 server.py",
    server_port: 8000,
    predict_endpoint: "/predict",
    readiness_endpoint: "/health/ready",
    liveness_endpoint: "/health/live",
    run_as_user_id: null,
    no_build: null,
  },
};

/** `base64_encoded_json_str`: Python's json.dumps separators (", ", ": ") before base64. */
export function encodeConfig(config: unknown): string {
  return Buffer.from(pythonJsonDumps(config)).toString("base64");
}

function pythonJsonDumps(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(pythonJsonDumps).join(", ")}]`;
  if (value !== null && typeof value === "object") {
    return `{${Object.entries(value)
      .map(([k, v]) => `${JSON.stringify(k)}: ${pythonJsonDumps(v)}`)
      .join(", ")}}`;
  }
  return JSON.stringify(value);
}

// —— the documents (api.py, verbatim but for the interpolated values) ——

export const TEAMS_QUERY = `
        query Teams {
            teams {
                id
                name
                default
            }
        }
        `;

/** `models(team_id)` with a team, else `models(all: true)`. */
export function modelsQuery(teamId: string | null): string {
  const filter = teamId ? `team_id: "${teamId}"` : "all: true";
  return `
        {
            models(${filter}) {
                id,
                name
                team {
                    id
                    name
                }
            }
        }
        `;
}

export function validateTrussQuery(config: string): string {
  return `
        query ($trussUserEnv: String) {
            truss_validation(
                truss_user_env: $trussUserEnv
                config: "${config}"
            ) {
                success
                details
            }
        }
        `;
}

export const UPLOAD_CREDENTIALS_QUERY = `
        {
            model_s3_upload_credentials {
                s3_bucket
                s3_key
                aws_access_key_id
                aws_secret_access_key
                aws_session_token
            }
        }
        `;

export interface NewModelPush {
  name: string;
  s3_key: string;
  config: string;
  semver_bump?: string;
  allow_truss_download?: boolean;
  deployment_name?: string;
  origin?: "BASETEN" | "CHAINS";
  environment?: string;
  deploy_timeout_minutes?: number;
  team_id?: string;
}

export function createModelMutation(p: NewModelPush): string {
  return `
            mutation ($trussUserEnv: String, $userDeployMetadata: JSONString, $rawConfig: String) {
                create_model_from_truss(
                    name: "${p.name}"
                    s3_key: "${p.s3_key}"
                    config: "${p.config}"
                    semver_bump: "${p.semver_bump ?? "MINOR"}"
                    truss_user_env: $trussUserEnv
                    allow_truss_download: ${p.allow_truss_download === false ? "false" : "true"}
                    ${p.deployment_name ? `version_name: "${p.deployment_name}"` : ""}
                    ${p.origin ? `model_origin: ${p.origin}` : ""}
                    ${p.environment ? `environment_name: "${p.environment}"` : ""}
                    ${p.deploy_timeout_minutes !== undefined ? `deploy_timeout_minutes: ${p.deploy_timeout_minutes}` : ""}
                    ${p.team_id ? `team_id: "${p.team_id}"` : ""}
                    user_deploy_metadata: $userDeployMetadata
                    raw_config: $rawConfig
                ) {
                    model_version {
                        id
                        oracle {
                            id
                            name
                            hostname
                        }
                        instance_type {
                            name
                        }
                    }
                }
            }
        `;
}

export interface NewVersionPush {
  model_id: string;
  s3_key: string;
  config: string;
  semver_bump?: string;
  preserve_previous_prod_deployment?: boolean;
  deployment_name?: string;
  environment?: string;
  preserve_env_instance_type?: boolean;
  deploy_timeout_minutes?: number;
}

export function createVersionMutation(p: NewVersionPush): string {
  return `
            mutation ($trussUserEnv: String, $userDeployMetadata: JSONString, $rawConfig: String) {
                create_model_version_from_truss(
                    model_id: "${p.model_id}"
                    s3_key: "${p.s3_key}"
                    config: "${p.config}"
                    semver_bump: "${p.semver_bump ?? "MINOR"}"
                    truss_user_env: $trussUserEnv
                    scale_down_old_production: ${p.preserve_previous_prod_deployment ? "false" : "true"}
                    preserve_env_instance_type: ${p.preserve_env_instance_type === false ? "false" : "true"}
                    ${p.deployment_name ? `name: "${p.deployment_name}"` : ""}
                    ${p.environment ? `environment_name: "${p.environment}"` : ""}
                    ${p.deploy_timeout_minutes !== undefined ? `deploy_timeout_minutes: ${p.deploy_timeout_minutes}` : ""}
                    user_deploy_metadata: $userDeployMetadata
                    raw_config: $rawConfig
                ) {
                    model_version {
                        id
                        oracle {
                            id
                            name
                            hostname
                        }
                        instance_type {
                            name
                        }
                    }
                }
            }
        `;
}

export interface DraftPush {
  name: string;
  s3_key: string;
  config: string;
  allow_truss_download?: boolean;
  origin?: "BASETEN" | "CHAINS";
  deploy_timeout_minutes?: number;
  team_id?: string;
}

export function deployDraftMutation(p: DraftPush): string {
  return `
            mutation ($trussUserEnv: String, $userDeployMetadata: JSONString, $rawConfig: String) {
                deploy_draft_truss(name: "${p.name}"
                    s3_key: "${p.s3_key}"
                    config: "${p.config}"
                    truss_user_env: $trussUserEnv
                    allow_truss_download: ${p.allow_truss_download === false ? "false" : "true"}
                    ${p.origin ? `model_origin: ${p.origin}` : ""}
                    ${p.deploy_timeout_minutes !== undefined ? `deploy_timeout_minutes: ${p.deploy_timeout_minutes}` : ""}
                    ${p.team_id ? `team_id: "${p.team_id}"` : ""}
                    user_deploy_metadata: $userDeployMetadata
                    raw_config: $rawConfig
                ) {
                    model_version {
                        id
                        oracle {
                            id
                            name
                            hostname
                        }
                        instance_type {
                            name
                        }
                    }
                }
            }
        `;
}

/** The variables every push mutation sends: `--labels` as a JSON string or null, the raw config.yaml. */
export function pushVariables(labels: Record<string, unknown> | null, rawConfig: Buffer | null) {
  return {
    trussUserEnv: TRUSS_USER_ENV,
    userDeployMetadata: labels === null ? null : pythonJsonDumps(labels),
    rawConfig: rawConfig === null ? null : rawConfig.toString("base64"),
  };
}

/** `truss predict --model M` (get_model_by_id). */
export function modelByIdQuery(modelId: string): string {
  return `
        {
            model(id: "${modelId}") {
                id
                name
                hostname
                primary_version{
                    id
                    semver
                    truss_hash
                    truss_signature
                    is_draft
                    current_model_deployment_status {
                        status
                    }
                }
            }
          }
        `;
}

/** `truss predict --published` in a package directory (get_model_with_versions_by_id). */
export function modelWithVersionsQuery(modelId: string): string {
  return `
        {
            model(id: "${modelId}") {
                id
                name
                hostname
                team {
                    id
                    name
                }
                versions {
                    id
                    semver
                    truss_hash
                    truss_signature
                    is_draft
                    is_primary
                    current_model_deployment_status {
                        status
                    }
                }
            }
        }
        `;
}

/** get_model(name), for `truss watch`. */
export function modelByNameQuery(name: string): string {
  return modelWithVersionsQuery("").replace(`model(id: "")`, `model(name: "${name}")`);
}

/** get_model_version_by_id. */
export function modelVersionQuery(versionId: string): string {
  return `
        {
            model_version(id: "${versionId}") {
                id
                is_draft
                truss_hash
                truss_signature
                oracle{
                    id
                    name
                    hostname
                }
            }
          }
        `;
}

/** `truss whoami` (remote.py). */
export const WHOAMI_QUERY = "query{organization{workspace_name}user{email}}";

/** get_organization_id. */
export const ORGANIZATION_QUERY = `
        query {
            organization {
                id
            }
        }
        `;

// —— the client, in Python, as the CLI sends it ——

const CLIENT = `
import json, os, socket, sys, tarfile, tempfile
from pathlib import Path

spec = json.load(sys.stdin)
op = spec["op"]

def auth_header():
    # AuthService.fetch_auth_header: "Api-Key" for a trussrc key, "Bearer" for the environment's.
    return {"Authorization": ("Bearer " if spec.get("bearer") else "Api-Key ") + spec["api_key"]}

def graphql():
    import requests
    payload = {"query": spec["query"]}
    if spec.get("variables") is not None:
        payload["variables"] = spec["variables"]
    # BasetenApi._post_graphql_query
    resp = requests.post(spec["url"], json=payload, headers=auth_header(), timeout=120)
    if not resp.ok:
        return {"http_error": resp.status_code, "body": resp.text}
    body = resp.json()
    errors = body.get("errors")
    if errors:
        message = errors[0]["message"]
        code = errors[0].get("extensions", {}).get("code")
        if errors[0].get("extensions", {}).get("description") is not None:
            message = errors[0].get("extensions", {}).get("description")
        return {"api_error": message, "code": code}
    return {"data": body["data"]}

def pack():
    # create_tar_with_progress_bar: files only, paths relative to the package, tarfile "w:" (PAX, no gzip).
    source = Path(spec["dir"])
    files = sorted(p for p in source.rglob("*") if p.is_file())
    out = tempfile.NamedTemporaryFile(suffix=".tgz", delete=False, dir=spec["work"])
    with tarfile.open(out.name, "w:") as tar:
        for f in files:
            with f.open("rb") as fh:
                tar.addfile(tarinfo=tar.gettarinfo(name=str(f), arcname=str(f.relative_to(source))), fileobj=fh)
    return {"file": out.name, "size": os.stat(out.name).st_size}

def upload():
    import boto3
    from boto3.s3.transfer import TransferConfig
    # upload_truss: pop s3_key and s3_bucket, every other key of the answer goes to boto3.
    creds = dict(spec["credentials"])
    key = creds.pop("s3_key")
    bucket = creds.pop("s3_bucket")
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        del os.environ[name]
    s3 = boto3.resource("s3", **creds)
    s3.Object(bucket, key).upload_file(spec["file"], Config=TransferConfig(max_concurrency=10, use_threads=True))
    return {"s3_key": key, "kwargs": sorted(creds)}

def rest_get():
    import requests
    # RestAPIClient.get, against the REST base the CLI derives (here the control plane itself).
    resp = requests.get(spec["url"], headers=auth_header(), timeout=30)
    return {"status": resp.status_code, "body": resp.json()}

def predict():
    import requests
    # The system resolver as Meridian's DNS would answer the model's standard name: the global ingress.
    real = socket.getaddrinfo
    def resolve(host, port, *args, **kwargs):
        if host in spec["hosts"]:
            return real(spec["hosts"][host], port, *args, **kwargs)
        return real(host, port, *args, **kwargs)
    socket.getaddrinfo = resolve
    # BasetenService.predict
    # TLS is verified against REQUESTS_CA_BUNDLE (the local CA), as requests does for the CLI.
    resp = requests.request("POST", spec["url"], json=spec["body"], headers=auth_header(), stream=True)
    headers = {k.lower(): v for k, v in resp.headers.items()}
    if resp.headers.get("transfer-encoding") == "chunked":
        chunks = [c if isinstance(c, str) else c.decode(resp.encoding or "utf-8")
                  for c in resp.iter_content(chunk_size=8192, decode_unicode=True)]
        return {"status": resp.status_code, "headers": headers, "stream": chunks}
    return {"status": resp.status_code, "headers": headers, "json": resp.json()}

print(json.dumps({"graphql": graphql, "pack": pack, "upload": upload, "rest_get": rest_get, "predict": predict}[op]()))
`;

/**
 * Runs one step of the CLI's client in the machine's Python (pyenv's, which has requests and boto3), with
 * `env` added to its environment (REQUESTS_CA_BUNDLE, say).
 */
export function trussClient<T = any>(
  work: string,
  spec: Record<string, unknown>,
  extraEnv: Record<string, string> = {},
): Promise<T> {
  const script = join(work, "truss_client.py");
  writeFileSync(script, CLIENT);
  const env = { ...process.env, ...extraEnv };
  env["AWS_CONFIG_FILE"] = join(work, "no-aws-config");
  env["AWS_SHARED_CREDENTIALS_FILE"] = join(work, "no-aws-credentials");
  return new Promise((resolve, reject) => {
    const child = execFile(
      PYTHON,
      [script],
      { env, timeout: 120_000, maxBuffer: 16 * 1024 * 1024 },
      (err, stdout, stderr) => {
        if (err)
          return reject(new Error(`truss client (${String(spec["op"])}) failed: ${err.message}\n${stderr}`));
        try {
          resolve(JSON.parse(stdout) as T);
        } catch {
          reject(new Error(`truss client printed no JSON:\n${stdout}\n${stderr}`));
        }
      },
    );
    child.stdin!.end(JSON.stringify({ work, ...spec }));
  });
}
