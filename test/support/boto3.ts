// Drives real boto3 (the machine's `python3` on PATH: pyenv's 3.11.7, which has boto3; Debian's
// /usr/bin/python3 does not) from tests: a Python script written to a temp dir runs a list of steps
// against an S3 endpoint and prints one JSON outcome per step, S3 error codes included.

import { execFile } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";

export const PYTHON = process.env["MERIDIAN_TEST_PYTHON"] ?? "python3";

const SCRIPT = String.raw`
import base64, datetime, hashlib, json, sys
import boto3, botocore
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

spec = json.load(sys.stdin)
creds = spec["creds"]
config = Config(
    retries={"max_attempts": 1, "mode": "standard"},
    s3={"addressing_style": "path"} if spec.get("force_path") else {},
    **({"signature_version": botocore.UNSIGNED} if spec.get("unsigned") else {}),
)
kwargs = dict(
    aws_access_key_id=creds["aws_access_key_id"],
    aws_secret_access_key=creds["aws_secret_access_key"],
    aws_session_token=creds.get("aws_session_token"),
    endpoint_url=spec["endpoint_url"],
    region_name=spec.get("region_name"),
    config=config,
)
if spec.get("ca_file"):
    kwargs["verify"] = spec["ca_file"]
# As the truss CLI does: a resource, built from the credentials answer.
resource = boto3.resource("s3", **kwargs)
client = resource.meta.client

def tamper(request, **_):
    # After signing: the bytes on the wire are no longer the bytes the signature and checksums cover.
    body = request.body
    data = body.read() if hasattr(body, "read") else bytes(body or b"")
    # The middle byte: inside the payload, also when it is framed as aws-chunked.
    mid = len(data) // 2
    request.body = data[:mid] + bytes([data[mid] ^ 1]) + data[mid + 1:] if data else b"x"

if spec.get("tamper"):
    client.meta.events.register_last("before-send.s3.*", tamper)

def body_of(step):
    if "file" in step:
        return open(step["file"], "rb").read()
    return step.get("text", "").encode()

out = []
for step in spec["steps"]:
    op = step["op"]
    try:
        if op == "upload_file":
            cfg = TransferConfig(
                multipart_threshold=step.get("threshold", 8 * 1024 * 1024),
                multipart_chunksize=step.get("chunksize", 8 * 1024 * 1024),
                max_concurrency=step.get("concurrency", 4),
                use_threads=True,
            )
            resource.Bucket(step.get("bucket", spec["bucket"])).upload_file(
                step["file"], step.get("key", spec["key"]), Config=cfg
            )
            out.append({"ok": True})
        elif op == "put_object":
            params = dict(Bucket=step.get("bucket", spec["bucket"]), Key=step.get("key", spec["key"]), Body=body_of(step))
            params.update(step.get("params", {}))
            r = client.put_object(**params)
            out.append({"ok": True, "etag": r.get("ETag"), "crc32": r.get("ChecksumCRC32")})
        elif op == "create":
            r = client.create_multipart_upload(Bucket=spec["bucket"], Key=step.get("key", spec["key"]), **step.get("params", {}))
            out.append({"ok": True, "upload_id": r["UploadId"]})
        elif op == "upload_part":
            r = client.upload_part(Bucket=spec["bucket"], Key=spec["key"], UploadId=step["upload_id"],
                                   PartNumber=step["part"], Body=body_of(step), **step.get("params", {}))
            out.append({"ok": True, "etag": r["ETag"], "crc32": r.get("ChecksumCRC32")})
        elif op == "complete":
            r = client.complete_multipart_upload(Bucket=spec["bucket"], Key=spec["key"], UploadId=step["upload_id"],
                                                 MultipartUpload={"Parts": step["parts"]})
            out.append({"ok": True, "etag": r.get("ETag")})
        elif op == "abort":
            client.abort_multipart_upload(Bucket=spec["bucket"], Key=spec["key"], UploadId=step["upload_id"])
            out.append({"ok": True})
        else:
            raise ValueError("unknown step " + op)
    except ClientError as e:
        err = e.response.get("Error", {})
        out.append({"ok": False, "code": err.get("Code"), "message": err.get("Message"),
                    "status": e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")})
    except Exception as e:
        # boto3's transfer manager wraps the client error; keep its text for the assertion message.
        cause = e
        while getattr(cause, "__cause__", None) is not None and not isinstance(cause, ClientError):
            cause = cause.__cause__
        if isinstance(cause, ClientError):
            err = cause.response.get("Error", {})
            out.append({"ok": False, "code": err.get("Code"), "message": err.get("Message"),
                        "status": cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode")})
        else:
            # S3UploadFailedError carries the S3 error only in its text.
            import re
            m = re.search(r"An error occurred \((\w+)\)", str(e))
            out.append({"ok": False, "code": m.group(1) if m else type(e).__name__, "message": str(e),
                        "status": None})
print(json.dumps(out))
`;

export interface Boto3Spec {
  endpoint_url: string;
  region_name?: string | null;
  creds: { aws_access_key_id: string; aws_secret_access_key: string; aws_session_token?: string | null };
  bucket: string;
  key: string;
  ca_file?: string;
  unsigned?: boolean;
  tamper?: boolean;
  steps: Array<Record<string, unknown>>;
}

export interface Boto3Outcome {
  ok: boolean;
  code?: string;
  message?: string;
  status?: number | null;
  etag?: string;
  crc32?: string;
  upload_id?: string;
}

/** Runs the steps with boto3 and returns one outcome per step. */
export async function runBoto3(dir: string, spec: Boto3Spec): Promise<Boto3Outcome[]> {
  const script = join(dir, "boto3_steps.py");
  writeFileSync(script, SCRIPT);
  const env = { ...process.env };
  // As the truss CLI does for the upload: no AWS_* settings of the machine take part.
  for (const name of Object.keys(env)) if (name.startsWith("AWS_")) delete env[name];
  env["AWS_CONFIG_FILE"] = join(dir, "no-aws-config");
  env["AWS_SHARED_CREDENTIALS_FILE"] = join(dir, "no-aws-credentials");
  return new Promise((resolve, reject) => {
    const child = execFile(
      PYTHON,
      [script],
      { env, timeout: 120_000, maxBuffer: 16 * 1024 * 1024 },
      (err, stdout, stderr) => {
        if (err) return reject(new Error(`boto3 script failed: ${err.message}\n${stderr}`));
        try {
          resolve(JSON.parse(stdout) as Boto3Outcome[]);
        } catch {
          reject(new Error(`boto3 script printed no JSON:\n${stdout}\n${stderr}`));
        }
      },
    );
    child.stdin!.end(JSON.stringify(spec));
  });
}
