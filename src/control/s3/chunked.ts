// Decodes an `aws-chunked` body with unsigned chunks and trailing headers, as sent with
// `x-amz-content-sha256: STREAMING-UNSIGNED-PAYLOAD-TRAILER` (boto3 over HTTPS): `hex-size\r\n data \r\n` …
// `0\r\n` then trailer lines `name:value\r\n` and an empty line ("Using trailing checksums", S3 user guide).
// This framing is inside the HTTP body, whatever HTTP's own Transfer-Encoding was.

import { Transform, type TransformCallback } from "node:stream";
import { S3Refusal, s3Failure } from "./errors.ts";

const MAX_LINE = 4096;
const MAX_TRAILER_BYTES = 16 * 1024;

type State = "size" | "data" | "data-end" | "trailer" | "done";

export class AwsChunkedDecoder extends Transform {
  /** Trailing headers, lowercase names; complete once the stream has ended. */
  readonly trailers = new Map<string, string>();
  private state: State = "size";
  private line = Buffer.alloc(0);
  private remaining = 0;
  private trailerBytes = 0;

  private fail(message: string): S3Refusal {
    return new S3Refusal(s3Failure("IncompleteBody", `The aws-chunked body is malformed: ${message}.`));
  }

  /** Accumulates up to a CRLF; returns the line without it, or null when more bytes are needed. */
  private takeLine(chunk: Buffer, at: number): { line: string; next: number } | { line: null; next: number } {
    const nl = chunk.indexOf(0x0a, at);
    const piece = chunk.subarray(at, nl < 0 ? chunk.length : nl + 1);
    this.line = Buffer.concat([this.line, piece]);
    if (this.line.length > MAX_LINE) throw this.fail("a line is too long");
    if (nl < 0) return { line: null, next: chunk.length };
    const text = this.line.toString("latin1");
    this.line = Buffer.alloc(0);
    if (!text.endsWith("\r\n")) throw this.fail("a line does not end with CRLF");
    return { line: text.slice(0, -2), next: nl + 1 };
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, done: TransformCallback): void {
    try {
      let at = 0;
      while (at < chunk.length) {
        switch (this.state) {
          case "size": {
            const { line, next } = this.takeLine(chunk, at);
            at = next;
            if (line === null) break;
            // Chunk extensions (`;chunk-signature=…`) belong to the signed forms, which are refused earlier.
            const size = line.split(";")[0]!;
            if (!/^[0-9a-fA-F]{1,16}$/.test(size)) throw this.fail(`bad chunk size '${line.slice(0, 40)}'`);
            this.remaining = Number.parseInt(size, 16);
            if (!Number.isSafeInteger(this.remaining)) throw this.fail("a chunk size is too large");
            this.state = this.remaining === 0 ? "trailer" : "data";
            break;
          }
          case "data": {
            const take = Math.min(this.remaining, chunk.length - at);
            this.push(chunk.subarray(at, at + take));
            at += take;
            this.remaining -= take;
            if (this.remaining === 0) this.state = "data-end";
            break;
          }
          case "data-end": {
            const { line, next } = this.takeLine(chunk, at);
            at = next;
            if (line === null) break;
            if (line !== "") throw this.fail("chunk data is longer than its size");
            this.state = "size";
            break;
          }
          case "trailer": {
            const { line, next } = this.takeLine(chunk, at);
            this.trailerBytes += next - at;
            at = next;
            if (this.trailerBytes > MAX_TRAILER_BYTES) throw this.fail("the trailer is too large");
            if (line === null) break;
            if (line === "") {
              this.state = "done";
              break;
            }
            const colon = line.indexOf(":");
            if (colon <= 0) throw this.fail("a trailer line is not 'name:value'");
            this.trailers.set(line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim());
            break;
          }
          case "done":
            throw this.fail("bytes follow the final chunk");
        }
      }
      done();
    } catch (err) {
      done(err as Error);
    }
  }

  override _flush(done: TransformCallback): void {
    done(this.state === "done" ? null : this.fail("the body ended before its final chunk and trailer"));
  }
}
