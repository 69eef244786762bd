// The S3-compatible upload endpoint on the control plane's own listener, path-style
// (`{public url}/{bucket}/{key}`): PutObject and the multipart upload (Create, UploadPart, Complete,
// Abort), authenticated with SigV4 against the credentials `prepare_model_upload` issued. A finished upload
// lands in the artifact store and the upload target's state machine exactly as `PUT /v1/artifacts/{key}`
// does. Every refusal is S3's XML error, and nothing of a refused request is kept.

import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { join } from "node:path";
import { Readable } from "node:stream";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import type { S3CredentialRow, S3MultipartUploadRow } from "../../store/schema.ts";
import { BlobTooLargeError, LocalArtifactStore } from "../artifacts.ts";
import type { ControlContext } from "../context.ts";
import { newId } from "../identity.ts";
import { claimUploadTarget, releaseUploadTarget, storeUploadTarget } from "../models.ts";
import {
  type ChecksumAlgorithm,
  checksumHeader,
  checksumHeadersIn,
  parseAlgorithmName,
} from "./checksums.ts";
import { AwsChunkedDecoder } from "./chunked.ts";
import { tokenHash, UPLOAD_BUCKET } from "./credentials.ts";
import { S3_ERRORS, type S3Failure, S3Refusal, s3Failure } from "./errors.ts";
import { type PayloadExpectations, readExpectations, VerifyingStream } from "./payload.ts";
import { type Claim, checkSignature, headerMap, percentDecode, type RawRequest, readClaim } from "./sigv4.ts";
import { DatabasePartStaging, FilePartStaging, type PartStaging } from "./staging.ts";
import { completeResult, errorDocument, initiateResult, parseCompleteMultipartUpload } from "./xml.ts";

export interface S3EndpointOptions {
  /** Largest object, as for `PUT /v1/artifacts/{key}`; also the most a multipart upload may stage. */
  uploadLimit: number;
  /** How often expired multipart uploads and leftovers are swept. Default one minute. */
  sweepEveryMs?: number;
}

/** S3's limits on multipart uploads (S3 user guide, "Amazon S3 multipart upload limits"). */
export const MIN_PART_BYTES = 5 * 1024 * 1024;
export const MAX_PART_BYTES = 5 * 1024 * 1024 * 1024;
export const MAX_PARTS = 10_000;
const MAX_COMPLETE_XML_BYTES = 2 * 1024 * 1024;
/** A multipart upload being assembled when its credentials expire gets this long to finish. */
const COMPLETING_GRACE_MS = 60 * 60 * 1000;
/** Expired credentials are kept a day, so a late client hears ExpiredToken rather than an unknown key. */
const EXPIRED_CREDENTIALS_KEPT_MS = 24 * 60 * 60 * 1000;

interface Answer {
  status: number;
  headers?: Record<string, string>;
  xml?: string;
}

/** A request that has proved its credentials, and what it addresses. */
interface Authenticated {
  claim: Claim;
  cred: S3CredentialRow;
  headers: Map<string, string[]>;
  query: URLSearchParams;
  body: Readable;
}

const refusal = (code: S3Failure["code"], message?: string, extra?: Record<string, string>) =>
  new S3Refusal(s3Failure(code, message, extra));

/** The target was released under the upload (its credentials expired and the sweep freed it). */
const targetLost = (key: string) =>
  refusal(
    "AccessDenied",
    `The upload target s3://${UPLOAD_BUCKET}/${key} is no longer waiting for this upload.`,
  );

const etagOf = (md5: Buffer | string) => `"${typeof md5 === "string" ? md5 : md5.toString("hex")}"`;

/** Parts of aws-chunked and multipart uploads are staged beside the packages: on disk or in the database. */
export function partStagingFor(ctx: ControlContext): PartStaging {
  return ctx.artifacts instanceof LocalArtifactStore
    ? new FilePartStaging(join(ctx.artifacts.dir, "s3-parts"))
    : new DatabasePartStaging(ctx.store);
}

/** Registers the endpoint's routes, and its sweep of expired uploads at start and every minute. */
export async function registerS3Endpoint(
  app: FastifyInstance,
  ctx: ControlContext,
  options: S3EndpointOptions,
): Promise<void> {
  const endpoint = new S3UploadEndpoint(ctx, partStagingFor(ctx), options.uploadLimit);
  await app.register(async (scope) => {
    // Bodies are streamed by the handler itself, whatever their type (boto3 sends none).
    scope.removeAllContentTypeParsers();
    scope.addContentTypeParser("*", (_request, payload, done) => done(null, payload));
    for (const url of ["/:bucket", "/:bucket/*"]) {
      scope.route({
        method: ["GET", "HEAD", "PUT", "POST", "DELETE"],
        url,
        exposeHeadRoute: false,
        handler: (request, reply) => endpoint.handle(request, reply),
      });
    }
  });
  let timer: NodeJS.Timeout | undefined;
  app.addHook("onReady", async () => {
    await endpoint.sweep();
    timer = setInterval(() => {
      endpoint.sweep().catch((err) => ctx.logger.error({ err }, "s3 upload sweep failed"));
    }, options.sweepEveryMs ?? 60_000);
    timer.unref();
  });
  app.addHook("onClose", async () => clearInterval(timer));
}

/** An S3 client says so by its signature or its headers; anything else under `/{x}/…` is not ours. */
function looksLikeS3(request: FastifyRequest, bucket: string): boolean {
  if (bucket === UPLOAD_BUCKET) return true;
  const auth = request.headers.authorization;
  if (typeof auth === "string" && /^AWS[\s4]/.test(auth)) return true;
  if (Object.keys(request.headers).some((h) => h.startsWith("x-amz-"))) return true;
  return /[?&](X-Amz-|AWSAccessKeyId=)/.test(request.url);
}

export class S3UploadEndpoint {
  private readonly ctx: ControlContext;
  private readonly staging: PartStaging;
  private readonly uploadLimit: number;

  constructor(ctx: ControlContext, staging: PartStaging, uploadLimit: number) {
    this.ctx = ctx;
    this.staging = staging;
    this.uploadLimit = uploadLimit;
  }

  async handle(request: FastifyRequest, reply: FastifyReply): Promise<FastifyReply> {
    const url = request.url;
    const q = url.indexOf("?");
    const rawPath = q < 0 ? url : url.slice(0, q);
    const rawQuery = q < 0 ? "" : url.slice(q + 1);
    const slash = rawPath.indexOf("/", 1);
    const bucket =
      percentDecode(slash < 0 ? rawPath.slice(1) : rawPath.slice(1, slash))?.toString("utf8") ?? "";
    if (!looksLikeS3(request, bucket)) {
      reply.callNotFound();
      return reply;
    }
    const requestId = randomBytes(8).toString("hex").toUpperCase();
    const decodedKey = slash < 0 ? Buffer.alloc(0) : percentDecode(rawPath.slice(slash + 1));
    const key = decodedKey?.toString("utf8") ?? "";
    const resource = `/${bucket}${key ? `/${key}` : ""}`;
    let answer: Answer;
    try {
      if (decodedKey === null) throw refusal("InvalidURI");
      const raw: RawRequest = {
        method: request.method,
        path: rawPath,
        query: rawQuery,
        headers: pairs(request.raw.rawHeaders),
      };
      const auth = await this.authenticate(raw);
      answer = await this.dispatch(
        {
          ...auth,
          headers: headerMap(raw.headers),
          query: new URLSearchParams(rawQuery),
          body: (request.body as Readable | undefined) ?? Readable.from([]),
        },
        request.method,
        bucket,
        key,
      );
    } catch (err) {
      const failure = this.failureOf(err, resource, requestId);
      answer = {
        status: S3_ERRORS[failure.code].status,
        xml: errorDocument(failure, resource, requestId),
      };
      this.ctx.logger.info(
        { request_id: requestId, method: request.method, resource, code: failure.code },
        "s3 request refused",
      );
    }
    reply.code(answer.status).header("x-amz-request-id", requestId);
    for (const [name, value] of Object.entries(answer.headers ?? {})) reply.header(name, value);
    if (answer.xml === undefined) return reply.send();
    return reply.type("application/xml").send(answer.xml);
  }

  private failureOf(err: unknown, resource: string, requestId: string): S3Failure {
    if (err instanceof S3Refusal) return err.failure;
    if (err instanceof BlobTooLargeError) {
      return s3Failure("EntityTooLarge", undefined, { MaxSizeAllowed: String(this.uploadLimit) });
    }
    const code = (err as { code?: unknown }).code;
    if (
      code === "ECONNRESET" ||
      code === "ERR_STREAM_PREMATURE_CLOSE" ||
      (err as Error).message === "aborted"
    ) {
      return s3Failure("IncompleteBody", "The request body ended before all of it arrived.");
    }
    this.ctx.logger.error({ err, request_id: requestId, resource }, "s3 request failed");
    return s3Failure("InternalError");
  }

  /** Who is asking: SigV4 checked against the issued credentials, in S3's order of refusals. */
  private async authenticate(raw: RawRequest): Promise<Pick<Authenticated, "claim" | "cred">> {
    const nowMs = Date.parse(this.ctx.now());
    const read = readClaim(raw, nowMs);
    if (!read.ok) throw new S3Refusal(read.failure);
    const claim = read.claim;
    const cred = await this.ctx.store.db
      .selectFrom("s3_credentials")
      .selectAll()
      .where("access_key_id", "=", claim.accessKeyId)
      .executeTakeFirst();
    // Issued credentials always carry a session token; without one the key id names nothing.
    if (!cred || claim.securityToken === null) {
      throw refusal("InvalidAccessKeyId", undefined, { AWSAccessKeyId: claim.accessKeyId });
    }
    if (claim.region !== cred.region) {
      throw refusal(
        "AuthorizationHeaderMalformed",
        `The authorization header is malformed; the region '${claim.region}' is wrong; expecting '${cred.region}'.`,
        { Region: cred.region },
      );
    }
    const sent = Buffer.from(tokenHash(claim.securityToken), "hex");
    if (!timingSafeEqual(sent, Buffer.from(cred.session_token_hash, "hex"))) throw refusal("InvalidToken");
    const signature = checkSignature(raw, claim, cred.secret_access_key);
    if (!signature.ok) throw new S3Refusal(signature.failure);
    if (Date.parse(cred.expires_at) <= nowMs) {
      throw refusal("ExpiredToken", undefined, { "Token-0": claim.securityToken.slice(0, 12) });
    }
    return { claim, cred };
  }

  /** What the request is, and whether these credentials may do it: only uploads, only to their one key. */
  private dispatch(a: Authenticated, method: string, bucket: string, key: string): Promise<Answer> {
    if (bucket !== UPLOAD_BUCKET || key !== a.cred.artifact_key) {
      throw refusal(
        "AccessDenied",
        `These credentials may upload only to s3://${UPLOAD_BUCKET}/${a.cred.artifact_key}.`,
      );
    }
    const params = [...a.query.keys()].filter((k) => k !== "x-id");
    const only = (...allowed: string[]) => params.every((p) => allowed.includes(p));
    if (method === "PUT" && a.query.has("uploadId") && only("uploadId", "partNumber")) {
      return this.uploadPart(a);
    }
    if (method === "PUT" && params.length === 0) {
      if (a.headers.has("x-amz-copy-source")) {
        throw refusal("NotImplemented", "CopyObject is not supported: upload the archive's bytes.");
      }
      return this.putObject(a);
    }
    if (method === "POST" && a.query.has("uploads") && only("uploads")) return this.createMultipart(a);
    if (method === "POST" && a.query.has("uploadId") && only("uploadId")) return this.completeMultipart(a);
    if (method === "DELETE" && a.query.has("uploadId") && only("uploadId")) return this.abortMultipart(a);
    throw refusal(
      "AccessDenied",
      "Upload credentials allow PutObject and the multipart upload operations, and nothing else.",
    );
  }

  /** Claims the credentials' target for one upload: used credentials and a busy target are refused. */
  private async claim(a: Authenticated, db = this.ctx.store.db): Promise<void> {
    const outcome = await claimUploadTarget(db, a.cred.artifact_key);
    const target = `s3://${UPLOAD_BUCKET}/${a.cred.artifact_key}`;
    if (outcome === "used") {
      throw refusal("AccessDenied", `These upload credentials have been used: ${target} is stored.`);
    }
    if (outcome === "in_progress") {
      throw refusal("OperationAborted", `An upload to ${target} is already in progress.`);
    }
    if (outcome === "missing") throw refusal("AccessDenied", `The upload target ${target} no longer exists.`);
  }

  /** The body as a stream that fails at its end unless it is what its headers promise. */
  private verified(body: Readable, expect: PayloadExpectations): VerifyingStream {
    const decoder = expect.awsChunked ? new AwsChunkedDecoder() : null;
    const verifier = new VerifyingStream(expect, () => decoder?.trailers ?? new Map());
    // Errors are forwarded by hand: a pipeline would destroy the request, and with it the socket the
    // refusal must be sent on.
    const forward = (from: Readable, to: NodeJS.WritableStream & { destroy(err?: Error): void }) => {
      from.on("error", (err) => to.destroy(err));
      from.pipe(to);
    };
    // The consumer may attach only after an await (a directory made, a row read) while a small body has
    // already failed; it then reads the error from the stream's errored state, so none is lost here.
    verifier.on("error", () => {});
    body.on("aborted", () => verifier.destroy(refusal("IncompleteBody")));
    if (decoder) {
      forward(body, decoder);
      forward(decoder, verifier);
    } else forward(body, verifier);
    return verifier;
  }

  private async putObject(a: Authenticated): Promise<Answer> {
    const expect = readExpectations(a.headers, a.claim.payload, this.uploadLimit);
    if (!expect.ok) throw new S3Refusal(expect.failure);
    await this.claim(a);
    const key = a.cred.artifact_key;
    const verifier = this.verified(a.body, expect.expect);
    let blob: { sha256: string; size: number };
    try {
      blob = await this.ctx.artifacts.put(verifier, this.uploadLimit);
    } catch (err) {
      await releaseUploadTarget(this.ctx.store.db, key);
      throw err;
    }
    if (!(await storeUploadTarget(this.ctx.store.db, key, blob))) throw targetLost(key);
    const payload = verifier.result();
    this.ctx.logger.info({ key, size: blob.size, sha256: blob.sha256 }, "s3 object stored");
    return { status: 200, headers: { etag: etagOf(payload.md5), ...checksumEcho(payload.checksum) } };
  }

  /** A small body read whole (CreateMultipartUpload, CompleteMultipartUpload), its digests checked. */
  private async smallBody(a: Authenticated, limit: number): Promise<Buffer> {
    const { supported } = checksumHeadersIn(a.headers.keys());
    if (supported.length > 0) {
      throw refusal(
        "NotImplemented",
        `${checksumHeader(supported[0]!)} on this operation (a full-object checksum) is not supported; the parts' checksums are verified instead.`,
      );
    }
    const noBody = !a.headers.has("content-length") && !a.headers.has("transfer-encoding");
    const headers = noBody ? new Map([...a.headers, ["content-length", ["0"]]]) : a.headers;
    const expect = readExpectations(headers, a.claim.payload, limit);
    if (!expect.ok) throw new S3Refusal(expect.failure);
    const chunks: Buffer[] = [];
    for await (const chunk of this.verified(a.body, expect.expect) as AsyncIterable<Buffer>)
      chunks.push(chunk);
    return Buffer.concat(chunks);
  }

  private async createMultipart(a: Authenticated): Promise<Answer> {
    let algorithm: ChecksumAlgorithm | null = null;
    const named = a.headers.get("x-amz-checksum-algorithm");
    if (named !== undefined) {
      const parsed = parseAlgorithmName(named.join(","));
      if (!parsed.ok) throw refusal("InvalidRequest", parsed.message);
      algorithm = parsed.algorithm;
    }
    await this.smallBody(a, 0);
    const uploadId = newId(32);
    const now = this.ctx.now();
    await this.ctx.store.transaction(async (trx) => {
      await this.claim(a, trx);
      await trx
        .insertInto("s3_multipart_uploads")
        .values({
          upload_id: uploadId,
          access_key_id: a.cred.access_key_id,
          artifact_key: a.cred.artifact_key,
          state: "ACTIVE",
          checksum_algorithm: algorithm,
          expires_at: a.cred.expires_at,
          created_at: now,
          updated_at: now,
        })
        .execute();
    });
    return {
      status: 200,
      headers: algorithm === null ? {} : { "x-amz-checksum-algorithm": algorithm.toUpperCase() },
      xml: initiateResult(UPLOAD_BUCKET, a.cred.artifact_key, uploadId),
    };
  }

  /** The in-progress upload named by `uploadId`, if it belongs to these credentials. */
  private async upload(a: Authenticated): Promise<S3MultipartUploadRow> {
    const uploadId = a.query.get("uploadId") ?? "";
    const row = await this.ctx.store.db
      .selectFrom("s3_multipart_uploads")
      .selectAll()
      .where("upload_id", "=", uploadId)
      .executeTakeFirst();
    if (!row || row.access_key_id !== a.cred.access_key_id || row.artifact_key !== a.cred.artifact_key) {
      throw refusal("NoSuchUpload", undefined, { UploadId: uploadId.slice(0, 100) });
    }
    return row;
  }

  private async uploadPart(a: Authenticated): Promise<Answer> {
    const partParam = a.query.get("partNumber") ?? "";
    const partNumber = /^\d{1,5}$/.test(partParam) ? Number(partParam) : 0;
    if (partNumber < 1 || partNumber > MAX_PARTS) {
      throw refusal("InvalidArgument", "Part number must be an integer between 1 and 10000, inclusive", {
        ArgumentName: "partNumber",
        ArgumentValue: partParam.slice(0, 20),
      });
    }
    const upload = await this.upload(a);
    if (upload.state !== "ACTIVE") throw refusal("NoSuchUpload", undefined, { UploadId: upload.upload_id });
    const expect = readExpectations(a.headers, a.claim.payload, Math.min(MAX_PART_BYTES, this.uploadLimit));
    if (!expect.ok) throw new S3Refusal(expect.failure);
    const required = upload.checksum_algorithm;
    const sent = expect.expect.checksum?.algorithm ?? null;
    if (required !== null && sent !== required) {
      throw refusal(
        "InvalidRequest",
        `Checksum Type mismatch occurred, expected checksum Type: ${required}, actual checksum Type: ${sent}`,
      );
    }
    const ref = `${upload.upload_id}/${partNumber}-${newId(12)}`;
    const verifier = this.verified(a.body, expect.expect);
    const size = await this.staging.write(ref, verifier);
    const payload = verifier.result();
    const now = this.ctx.now();
    let replaced: string | null = null;
    try {
      await this.ctx.store.transaction(async (trx) => {
        // Taking the upload's row first orders this part against a Complete or Abort racing it: either
        // the part is in before the upload moves on, or it sees the upload gone.
        const live = await trx
          .updateTable("s3_multipart_uploads")
          .set({ updated_at: now })
          .where("upload_id", "=", upload.upload_id)
          .where("state", "=", "ACTIVE")
          .executeTakeFirst();
        if (Number(live.numUpdatedRows) === 0) {
          throw refusal("NoSuchUpload", undefined, { UploadId: upload.upload_id });
        }
        const others = await trx
          .selectFrom("s3_parts")
          .select((eb) => eb.fn.sum<string | number>("size").as("bytes"))
          .where("upload_id", "=", upload.upload_id)
          .where("part_number", "!=", partNumber)
          .executeTakeFirstOrThrow();
        const total = Number(others.bytes ?? 0) + size;
        if (total > this.uploadLimit) {
          throw refusal("EntityTooLarge", "The upload's parts together exceed the largest object allowed.", {
            ProposedSize: String(total),
            MaxSizeAllowed: String(this.uploadLimit),
          });
        }
        const previous = await trx
          .selectFrom("s3_parts")
          .select("ref")
          .where("upload_id", "=", upload.upload_id)
          .where("part_number", "=", partNumber)
          .executeTakeFirst();
        replaced = previous?.ref ?? null;
        const checksums = JSON.stringify(
          payload.checksum ? { [payload.checksum.algorithm]: payload.checksum.value.toString("base64") } : {},
        );
        const part = { ref, size, md5: payload.md5.toString("hex"), checksums, created_at: now };
        await trx
          .insertInto("s3_parts")
          .values({ upload_id: upload.upload_id, part_number: partNumber, ...part })
          .onConflict((oc) => oc.columns(["upload_id", "part_number"]).doUpdateSet(part))
          .execute();
      });
    } catch (err) {
      await this.staging.remove(ref);
      throw err;
    }
    if (replaced !== null) await this.staging.remove(replaced);
    return { status: 200, headers: { etag: etagOf(payload.md5), ...checksumEcho(payload.checksum) } };
  }

  private async completeMultipart(a: Authenticated): Promise<Answer> {
    const upload = await this.upload(a);
    const parsed = parseCompleteMultipartUpload(
      (await this.smallBody(a, MAX_COMPLETE_XML_BYTES)).toString("utf8"),
    );
    if (!parsed.ok) throw refusal("MalformedXML", parsed.message);
    const listed = parsed.parts;
    if (listed.length > MAX_PARTS) throw refusal("MalformedXML", `At most ${MAX_PARTS} parts may be listed.`);
    for (let i = 1; i < listed.length; i++) {
      if (listed[i]!.partNumber <= listed[i - 1]!.partNumber) throw refusal("InvalidPartOrder");
    }
    const db = this.ctx.store.db;
    const claimed = await db
      .updateTable("s3_multipart_uploads")
      .set({ state: "COMPLETING", updated_at: this.ctx.now() })
      .where("upload_id", "=", upload.upload_id)
      .where("state", "=", "ACTIVE")
      .executeTakeFirst();
    if (Number(claimed.numUpdatedRows) === 0) {
      throw refusal("NoSuchUpload", undefined, { UploadId: upload.upload_id });
    }
    let md5s: Buffer[];
    try {
      const rows = await db
        .selectFrom("s3_parts")
        .selectAll()
        .where("upload_id", "=", upload.upload_id)
        .execute();
      const byNumber = new Map(rows.map((r) => [r.part_number, r]));
      const parts = listed.map((p, i) => {
        const row = byNumber.get(p.partNumber);
        const stored = row ? (JSON.parse(row.checksums) as Partial<Record<ChecksumAlgorithm, string>>) : {};
        const checksumsMatch = Object.entries(p.checksums).every(
          ([alg, value]) => stored[alg as ChecksumAlgorithm] === value,
        );
        if (!row || row.md5 !== p.etag.toLowerCase() || !checksumsMatch) {
          throw refusal("InvalidPart", undefined, {
            UploadId: upload.upload_id,
            PartNumber: String(p.partNumber),
            ETag: p.etag.slice(0, 100),
          });
        }
        if (i < listed.length - 1 && row.size < MIN_PART_BYTES) {
          throw refusal("EntityTooSmall", undefined, {
            UploadId: upload.upload_id,
            PartNumber: String(p.partNumber),
            ProposedSize: String(row.size),
            MinSizeAllowed: String(MIN_PART_BYTES),
          });
        }
        return row;
      });
      const total = parts.reduce((n, p) => n + Number(p.size), 0);
      if (total > this.uploadLimit) {
        throw refusal("EntityTooLarge", undefined, {
          ProposedSize: String(total),
          MaxSizeAllowed: String(this.uploadLimit),
        });
      }
      const staging = this.staging;
      const assembled = Readable.from(
        (async function* () {
          for (const part of parts) {
            let bytes = 0;
            for await (const chunk of staging.open(part.ref) as AsyncIterable<Buffer>) {
              bytes += chunk.length;
              yield chunk;
            }
            if (bytes !== Number(part.size)) {
              throw new Error(`staged part ${part.part_number} has ${bytes} bytes, not ${part.size}`);
            }
          }
        })(),
      );
      const blob = await this.ctx.artifacts.put(assembled, this.uploadLimit);
      await this.ctx.store.transaction(async (trx) => {
        if (!(await storeUploadTarget(trx, a.cred.artifact_key, blob))) throw targetLost(a.cred.artifact_key);
        await trx.deleteFrom("s3_parts").where("upload_id", "=", upload.upload_id).execute();
        await trx.deleteFrom("s3_multipart_uploads").where("upload_id", "=", upload.upload_id).execute();
      });
      md5s = parts.map((p) => Buffer.from(p.md5, "hex"));
      this.ctx.logger.info(
        { key: a.cred.artifact_key, parts: parts.length, size: blob.size, sha256: blob.sha256 },
        "s3 multipart upload stored",
      );
    } catch (err) {
      // The client may fix the part list and complete again; an assembly that failed left no blob.
      await db
        .updateTable("s3_multipart_uploads")
        .set({ state: "ACTIVE" })
        .where("upload_id", "=", upload.upload_id)
        .where("state", "=", "COMPLETING")
        .execute();
      throw err;
    }
    await this.staging.removeUpload(upload.upload_id);
    // S3's multipart ETag: the MD5 of the parts' binary MD5s, and the number of parts.
    const etag = `"${createHash("md5").update(Buffer.concat(md5s)).digest("hex")}-${md5s.length}"`;
    return {
      status: 200,
      xml: completeResult(
        `${this.ctx.publicUrl}/${UPLOAD_BUCKET}/${a.cred.artifact_key}`,
        UPLOAD_BUCKET,
        a.cred.artifact_key,
        etag,
      ),
    };
  }

  private async abortMultipart(a: Authenticated): Promise<Answer> {
    const upload = await this.upload(a);
    await this.smallBody(a, 0);
    const aborted = await this.ctx.store.transaction(async (trx) => {
      const deleted = await trx
        .deleteFrom("s3_multipart_uploads")
        .where("upload_id", "=", upload.upload_id)
        .where("state", "=", "ACTIVE")
        .executeTakeFirst();
      if (Number(deleted.numDeletedRows) === 0) return false;
      await trx.deleteFrom("s3_parts").where("upload_id", "=", upload.upload_id).execute();
      // The credentials may start again (a client retrying after a failed upload); they stay single-use.
      await releaseUploadTarget(trx, upload.artifact_key);
      return true;
    });
    if (!aborted) throw refusal("OperationAborted", "The multipart upload is being completed.");
    await this.staging.removeUpload(upload.upload_id);
    return { status: 204 };
  }

  /**
   * Removes multipart uploads whose credentials expired (their targets usable again), staged parts no
   * upload owns (a crash between staging and recording a part, or a replica killed mid-upload), and
   * credentials long expired. Safe to run on several replicas at once.
   */
  async sweep(): Promise<void> {
    const db = this.ctx.store.db;
    const nowMs = Date.parse(this.ctx.now());
    const now = new Date(nowMs).toISOString();
    const graceCutoff = new Date(nowMs - COMPLETING_GRACE_MS).toISOString();
    const stale = await db
      .selectFrom("s3_multipart_uploads")
      .selectAll()
      .where((eb) =>
        eb.or([
          eb.and([eb("state", "=", "ACTIVE"), eb("expires_at", "<", now)]),
          eb.and([eb("state", "=", "COMPLETING"), eb("expires_at", "<", graceCutoff)]),
        ]),
      )
      .execute();
    for (const upload of stale) {
      const removed = await this.ctx.store.transaction(async (trx) => {
        const deleted = await trx
          .deleteFrom("s3_multipart_uploads")
          .where("upload_id", "=", upload.upload_id)
          .where("state", "=", upload.state)
          .executeTakeFirst();
        if (Number(deleted.numDeletedRows) === 0) return false;
        await trx.deleteFrom("s3_parts").where("upload_id", "=", upload.upload_id).execute();
        await releaseUploadTarget(trx, upload.artifact_key);
        return true;
      });
      if (removed) await this.staging.removeUpload(upload.upload_id);
    }
    // Staged ids first, rows second: an upload's row exists before its first part is staged, so an id
    // staged but without a row by the time the rows are read is finished or gone.
    const staged = await this.staging.uploadIds();
    if (staged.length > 0) {
      const live = new Set(
        (await db.selectFrom("s3_multipart_uploads").select("upload_id").execute()).map((r) => r.upload_id),
      );
      for (const id of staged) if (!live.has(id)) await this.staging.removeUpload(id);
    }
    await db
      .deleteFrom("s3_credentials")
      .where("expires_at", "<", new Date(nowMs - EXPIRED_CREDENTIALS_KEPT_MS).toISOString())
      .execute();
  }
}

function checksumEcho(
  checksum: { algorithm: ChecksumAlgorithm; value: Buffer } | null,
): Record<string, string> {
  return checksum === null ? {} : { [checksumHeader(checksum.algorithm)]: checksum.value.toString("base64") };
}

/** Node's flat `rawHeaders` as name/value pairs, in arrival order and original case. */
function pairs(raw: string[]): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  for (let i = 0; i + 1 < raw.length; i += 2) out.push([raw[i]!, raw[i + 1]!]);
  return out;
}
