// Drives real boto3 (the machine's `python3` on PATH: pyenv's 3.11.7, which has boto3; Debian's
// /usr/bin/python3 does not) from tests: a Python script written to a temp dir runs a list of steps
// against an S3 endpoint and prints one JSON outcome per step, S3 error codes included. The script is a
// worker that takes one spec per line: the processes are kept and reused, as a Python start with boto3's
// import is most of a call's cost.

import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export const PYTHON = process.env["MERIDIAN_TEST_PYTHON"] ?? "python3";

const SCRIPT = String.raw`
import base64, datetime, hashlib, json, sys
import boto3, botocore
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

def run(spec):
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
    # As the truss CLI does: a resource, built from the credentials answer; a session of its own per spec, so
    # nothing (an event handler, a cached setting) carries from one spec to the next.
    resource = boto3.session.Session().resource("s3", **kwargs)
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
    return out

# One spec per line, one line of outcomes per spec: a worker process serves many (test/support/boto3.ts).
for line in sys.stdin:
    print(json.dumps(run(json.loads(line))), flush=True)
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

/** A `python3` running SCRIPT, taking one spec at a time. */
interface Worker {
  child: ChildProcess;
  /** The call being served: resolved with the next line the worker prints. */
  pending: { resolve: (o: Boto3Outcome[]) => void; reject: (e: Error) => void } | null;
  stderr: string;
}

/** Workers not serving a call. A Python start and boto3's import cost about a second of CPU: paid once per worker. */
const idle: Worker[] = [];
let scratch: string | null = null;

function startWorker(): Worker {
  scratch ??= mkdtempSync(join(tmpdir(), "meridian-boto3-"));
  const script = join(scratch, "boto3_steps.py");
  writeFileSync(script, SCRIPT);
  const env = { ...process.env };
  // As the truss CLI does for the upload: no AWS_* settings of the machine take part.
  for (const name of Object.keys(env)) if (name.startsWith("AWS_")) delete env[name];
  env["AWS_CONFIG_FILE"] = join(scratch, "no-aws-config");
  env["AWS_SHARED_CREDENTIALS_FILE"] = join(scratch, "no-aws-credentials");
  const child = spawn(PYTHON, [script], { env, stdio: ["pipe", "pipe", "pipe"] });
  const worker: Worker = { child, pending: null, stderr: "" };
  const fail = (why: string) => {
    const i = idle.indexOf(worker);
    if (i >= 0) idle.splice(i, 1);
    const p = worker.pending;
    worker.pending = null;
    p?.reject(new Error(`boto3 worker ${why}\n${worker.stderr.slice(-4000)}`));
  };
  let buffered = "";
  child.stdout!.setEncoding("utf8").on("data", (chunk: string) => {
    buffered += chunk;
    let nl = buffered.indexOf("\n");
    while (nl >= 0) {
      const line = buffered.slice(0, nl);
      buffered = buffered.slice(nl + 1);
      const p = worker.pending;
      worker.pending = null;
      try {
        p?.resolve(JSON.parse(line) as Boto3Outcome[]);
      } catch {
        p?.reject(new Error(`boto3 worker printed no JSON:\n${line}\n${worker.stderr.slice(-4000)}`));
      }
      if (p !== null && worker.child.exitCode === null) idle.push(worker);
      nl = buffered.indexOf("\n");
    }
  });
  child.stderr!.setEncoding("utf8").on("data", (chunk: string) => {
    worker.stderr = (worker.stderr + chunk).slice(-16_000);
  });
  child.on("exit", (code, signal) => fail(`exited (${code ?? signal})`));
  child.on("error", (err) => fail(`failed: ${err.message}`));
  // The test process may end with idle workers: they do not keep it alive, and end with it (stdin closes).
  child.unref();
  for (const stream of [child.stdin, child.stdout, child.stderr])
    (stream as unknown as { unref?: () => void }).unref?.();
  return worker;
}

/**
 * Runs the steps with boto3 and returns one outcome per step. Calls at once run on workers of their own (a
 * worker serves one spec at a time, each with a boto3 session of its own); a worker is kept for the next.
 */
export async function runBoto3(_dir: string, spec: Boto3Spec): Promise<Boto3Outcome[]> {
  const worker = idle.pop() ?? startWorker();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      worker.child.kill("SIGKILL");
      reject(new Error(`boto3 worker gave no answer within 120 s\n${worker.stderr.slice(-4000)}`));
    }, 120_000);
    worker.pending = {
      resolve: (o) => {
        clearTimeout(timer);
        resolve(o);
      },
      reject: (e) => {
        clearTimeout(timer);
        reject(e);
      },
    };
    worker.child.stdin!.write(`${JSON.stringify(spec)}\n`);
  });
}
