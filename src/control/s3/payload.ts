// What a request body must prove, read from its headers (length, `x-amz-content-sha256`, `Content-MD5`, one
// `x-amz-checksum-*` header or trailer), and the stream that checks it: digests are computed as the bytes
// pass, and a mismatch fails the stream at its end, before the consumer commits anything, so a refused
// body is never stored.

import { Transform, type TransformCallback } from "node:stream";
import {
  type ChecksumAlgorithm,
  checksumHeader,
  checksumHeadersIn,
  type Digest,
  newDigest,
  parseAlgorithmName,
  parseChecksumValue,
  parseContentMd5,
} from "./checksums.ts";
import { type S3Failure, S3Refusal, s3Failure } from "./errors.ts";
import { headerValue, type PayloadMode } from "./sigv4.ts";

export interface PayloadExpectations {
  /** Bytes of the payload itself (after aws-chunked decoding). */
  length: number;
  /** The body is aws-chunked and must be decoded first. */
  awsChunked: boolean;
  sha256: string | null;
  md5: Buffer | null;
  /** The one flexible checksum, from its header or (`fromTrailer`) from the aws-chunked trailer. */
  checksum: { algorithm: ChecksumAlgorithm; expected: Buffer | null; fromTrailer: boolean } | null;
}

export type ExpectationsOutcome =
  | { ok: true; expect: PayloadExpectations }
  | { ok: false; failure: S3Failure };

const refuse = (failure: S3Failure): ExpectationsOutcome => ({ ok: false, failure });

function parseLength(value: string | null): number | null {
  if (value === null || !/^\d{1,16}$/.test(value.trim())) return null;
  const n = Number(value.trim());
  return Number.isSafeInteger(n) ? n : null;
}

/** Reads what the body must prove from its headers; refuses before a byte is read when they are wrong. */
export function readExpectations(
  headers: Map<string, string[]>,
  mode: PayloadMode,
  maxBytes: number,
): ExpectationsOutcome {
  const awsChunked = mode.kind === "streaming-unsigned-trailer";
  const encodings = (headerValue(headers, "content-encoding") ?? "")
    .split(",")
    .map((e) => e.trim().toLowerCase())
    .filter(Boolean);
  if (!awsChunked && encodings.includes("aws-chunked")) {
    return refuse(
      s3Failure(
        "InvalidRequest",
        "Content-Encoding aws-chunked needs x-amz-content-sha256: STREAMING-UNSIGNED-PAYLOAD-TRAILER.",
      ),
    );
  }
  const lengthHeader = awsChunked ? "x-amz-decoded-content-length" : "content-length";
  const length = parseLength(headerValue(headers, lengthHeader));
  if (length === null) {
    return refuse(s3Failure("MissingContentLength", `You must provide the ${lengthHeader} HTTP header.`));
  }
  if (length > maxBytes) {
    return refuse(
      s3Failure("EntityTooLarge", undefined, {
        ProposedSize: String(length),
        MaxSizeAllowed: String(maxBytes),
      }),
    );
  }

  let md5: Buffer | null = null;
  const md5Header = headerValue(headers, "content-md5");
  if (md5Header !== null) {
    md5 = parseContentMd5(md5Header);
    if (md5 === null) return refuse(s3Failure("InvalidDigest"));
  }

  const { supported, unsupported } = checksumHeadersIn(headers.keys());
  if (unsupported.length > 0) {
    return refuse(
      s3Failure(
        "InvalidRequest",
        `${unsupported.join(", ")} is not supported here; send x-amz-checksum-crc32, -crc32c, -sha1 or -sha256.`,
      ),
    );
  }
  let checksum: PayloadExpectations["checksum"] = null;
  const trailer = headerValue(headers, "x-amz-trailer");
  if (awsChunked) {
    if (trailer === null) {
      return refuse(
        s3Failure("InvalidRequest", "STREAMING-UNSIGNED-PAYLOAD-TRAILER needs an x-amz-trailer header."),
      );
    }
    const named = checksumHeadersIn([trailer.trim().toLowerCase()]);
    if (named.supported.length !== 1) {
      return refuse(
        s3Failure(
          "InvalidRequest",
          `x-amz-trailer must name one of x-amz-checksum-crc32, -crc32c, -sha1 or -sha256, not '${trailer}'.`,
        ),
      );
    }
    if (supported.length > 0) {
      return refuse(
        s3Failure(
          "InvalidRequest",
          "Expecting a single x-amz-checksum- header. Multiple checksum Types are not allowed.",
        ),
      );
    }
    checksum = { algorithm: named.supported[0]!, expected: null, fromTrailer: true };
  } else {
    if (trailer !== null) {
      return refuse(
        s3Failure(
          "InvalidRequest",
          "x-amz-trailer needs x-amz-content-sha256: STREAMING-UNSIGNED-PAYLOAD-TRAILER.",
        ),
      );
    }
    if (supported.length > 1) {
      return refuse(
        s3Failure(
          "InvalidRequest",
          "Expecting a single x-amz-checksum- header. Multiple checksum Types are not allowed.",
        ),
      );
    }
    const algorithm = supported[0];
    if (algorithm !== undefined) {
      const expected = parseChecksumValue(algorithm, headerValue(headers, checksumHeader(algorithm))!);
      if (expected === null) {
        return refuse(
          s3Failure("InvalidRequest", `Value for ${checksumHeader(algorithm)} header is invalid.`),
        );
      }
      checksum = { algorithm, expected, fromTrailer: false };
    }
  }
  const sdkAlgorithm = headerValue(headers, "x-amz-sdk-checksum-algorithm");
  if (sdkAlgorithm !== null) {
    const named = parseAlgorithmName(sdkAlgorithm);
    if (!named.ok) return refuse(s3Failure("InvalidRequest", named.message));
    if (checksum?.algorithm !== named.algorithm) {
      return refuse(
        s3Failure(
          "InvalidRequest",
          "x-amz-sdk-checksum-algorithm specified, but no corresponding x-amz-checksum-* or x-amz-trailer headers were found.",
        ),
      );
    }
  }
  return {
    ok: true,
    expect: { length, awsChunked, sha256: mode.kind === "sha256" ? mode.sha256 : null, md5, checksum },
  };
}

/** What a verified payload was, for the answer's ETag and checksum headers. */
export interface VerifiedPayload {
  size: number;
  md5: Buffer;
  checksum: { algorithm: ChecksumAlgorithm; value: Buffer } | null;
}

const NAMES: Record<ChecksumAlgorithm, string> = {
  crc32: "CRC32",
  crc32c: "CRC32C",
  sha1: "SHA1",
  sha256: "SHA256",
};

export class VerifyingStream extends Transform {
  private readonly expect: PayloadExpectations;
  private readonly trailers: () => Map<string, string>;
  private readonly md5 = newDigest("md5");
  private readonly sha256: Digest | null;
  private readonly checksum: Digest | null;
  private size = 0;
  private verified: VerifiedPayload | null = null;

  /** `trailers` gives the aws-chunked trailer once the decoder upstream has ended. */
  constructor(expect: PayloadExpectations, trailers: () => Map<string, string> = () => new Map()) {
    super();
    this.expect = expect;
    this.trailers = trailers;
    this.sha256 = expect.sha256 === null ? null : newDigest("sha256");
    this.checksum = expect.checksum === null ? null : newDigest(expect.checksum.algorithm);
  }

  /** The payload's digests; only after the stream has ended without error. */
  result(): VerifiedPayload {
    if (this.verified === null) throw new Error("the payload has not been verified");
    return this.verified;
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, done: TransformCallback): void {
    this.size += chunk.length;
    if (this.size > this.expect.length) {
      done(
        new S3Refusal(
          s3Failure(
            "IncompleteBody",
            `The body has more than the ${this.expect.length} bytes its length header announced.`,
          ),
        ),
      );
      return;
    }
    this.md5.update(chunk);
    this.sha256?.update(chunk);
    this.checksum?.update(chunk);
    done(null, chunk);
  }

  override _flush(done: TransformCallback): void {
    const failure = this.verify();
    done(failure === null ? null : new S3Refusal(failure));
  }

  /** Checks every digest against what was promised; records the result when all match. */
  private verify(): S3Failure | null {
    if (this.size !== this.expect.length) return s3Failure("IncompleteBody");
    if (this.sha256 !== null) {
      const computed = this.sha256.digest().toString("hex");
      if (computed !== this.expect.sha256) {
        return s3Failure("XAmzContentSHA256Mismatch", undefined, {
          ClientComputedContentSHA256: this.expect.sha256!,
          S3ComputedContentSHA256: computed,
        });
      }
    }
    const md5 = this.md5.digest();
    if (this.expect.md5 !== null && !md5.equals(this.expect.md5)) {
      return s3Failure("BadDigest", "The Content-MD5 you specified did not match what we received.", {
        ExpectedDigest: this.expect.md5.toString("base64"),
        CalculatedDigest: md5.toString("base64"),
      });
    }
    let checksum: VerifiedPayload["checksum"] = null;
    if (this.expect.checksum !== null && this.checksum !== null) {
      const { algorithm, fromTrailer } = this.expect.checksum;
      let expected = this.expect.checksum.expected;
      if (fromTrailer) {
        const sent = this.trailers().get(checksumHeader(algorithm));
        if (sent === undefined) {
          return s3Failure(
            "InvalidRequest",
            `The trailer ${checksumHeader(algorithm)} was announced but not sent.`,
          );
        }
        expected = parseChecksumValue(algorithm, sent);
        if (expected === null) {
          return s3Failure("InvalidRequest", `Value for ${checksumHeader(algorithm)} trailer is invalid.`);
        }
      }
      const value = this.checksum.digest();
      if (!value.equals(expected!)) {
        return s3Failure(
          "BadDigest",
          `The ${NAMES[algorithm]} you specified did not match the calculated checksum.`,
        );
      }
      checksum = { algorithm, value };
    }
    this.verified = { size: this.size, md5, checksum };
    return null;
  }
}
