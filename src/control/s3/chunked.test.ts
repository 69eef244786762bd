// The aws-chunked decoder against the bytes botocore's AwsChunkedWrapper writes (the machine's `python3`
// on PATH: pyenv's 3.11.7 with botocore), fed in any split, and against malformed framing.

import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { Readable } from "node:stream";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { Crc32Digest } from "./checksums.ts";
import { AwsChunkedDecoder } from "./chunked.ts";
import { S3Refusal } from "./errors.ts";

const PYTHON = process.env["MERIDIAN_TEST_PYTHON"] ?? "python3";

/** botocore's aws-chunked encoding of `payload` with a CRC32 trailer, in chunks of `chunkSize`. */
function botocoreChunked(payload: Buffer, chunkSize: number): Buffer {
  const script = `
import io, sys
from botocore.httpchecksum import AwsChunkedWrapper, Crc32Checksum
data = sys.stdin.buffer.read()
w = AwsChunkedWrapper(io.BytesIO(data), checksum_cls=Crc32Checksum, checksum_name="x-amz-checksum-crc32", chunk_size=${chunkSize})
sys.stdout.buffer.write(w.read())
`;
  return execFileSync(PYTHON, ["-c", script], { input: payload });
}

async function decode(pieces: Buffer[]): Promise<{ body: Buffer; trailers: Map<string, string> }> {
  const decoder = new AwsChunkedDecoder();
  const out: Buffer[] = [];
  await new Promise<void>((resolve, reject) => {
    decoder.on("data", (c: Buffer) => out.push(c));
    decoder.on("end", resolve);
    decoder.on("error", reject);
    Readable.from(pieces).pipe(decoder);
  });
  return { body: Buffer.concat(out), trailers: decoder.trailers };
}

function crc32Base64(bytes: Buffer): string {
  const d = new Crc32Digest("crc32");
  d.update(bytes);
  return d.digest().toString("base64");
}

describe("aws-chunked decoding", () => {
  const payload = randomBytes(70_000);
  const encoded = botocoreChunked(payload, 16 * 1024);

  it("gives back botocore's payload and its trailing checksum", async () => {
    const { body, trailers } = await decode([encoded]);
    expect(body.equals(payload)).toBe(true);
    expect(trailers.get("x-amz-checksum-crc32")).toBe(crc32Base64(payload));
  });

  it("decodes the same whatever the pieces the network delivers", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.integer({ min: 1, max: encoded.length - 1 }), { maxLength: 12 }),
        async (cuts) => {
          const points = [...new Set(cuts)].sort((a, b) => a - b);
          const pieces: Buffer[] = [];
          let at = 0;
          for (const p of [...points, encoded.length]) {
            pieces.push(encoded.subarray(at, p));
            at = p;
          }
          const { body } = await decode(pieces);
          expect(body.equals(payload)).toBe(true);
        },
      ),
      { numRuns: 40 },
    );
    // One byte at a time, across every boundary.
    const small = botocoreChunked(Buffer.from("hello, chunks"), 4);
    const { body } = await decode([...small].map((b) => Buffer.from([b])));
    expect(body.toString()).toBe("hello, chunks");
  });

  it("decodes an empty payload", async () => {
    const { body, trailers } = await decode([botocoreChunked(Buffer.alloc(0), 1024)]);
    expect(body.length).toBe(0);
    expect(trailers.get("x-amz-checksum-crc32")).toBe(crc32Base64(Buffer.alloc(0)));
  });

  it.each([
    ["a size that is not hex", "zz\r\nabc\r\n0\r\n\r\n"],
    ["a size line without CRLF", "3\nabc\r\n0\r\n\r\n"],
    ["data longer than its size", "3\r\nabcd\r\n0\r\n\r\n"],
    ["no final chunk", "3\r\nabc\r\n"],
    ["no empty line after the trailer", "3\r\nabc\r\n0\r\nx-amz-checksum-crc32:AAAAAA==\r\n"],
    ["a trailer line without a colon", "3\r\nabc\r\n0\r\nbroken\r\n\r\n"],
    ["bytes after the end", "3\r\nabc\r\n0\r\n\r\nmore"],
    ["an endless size line", `${"1".repeat(5000)}`],
    ["a size beyond any file", "fffffffffffffffff\r\n"],
  ])("refuses %s", async (_name, text) => {
    const err = await decode([Buffer.from(text)]).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(S3Refusal);
    expect((err as S3Refusal).failure.code).toBe("IncompleteBody");
  });
});
