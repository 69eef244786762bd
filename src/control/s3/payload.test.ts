// What a body must prove, read from its headers, and the stream that holds it to that: each digest kind
// accepted when right and refused with S3's code when wrong, always at the end and before the consumer
// has the last byte.

import { createHash } from "node:crypto";
import { Readable } from "node:stream";
import { describe, expect, it } from "vitest";
import { Crc32Digest } from "./checksums.ts";
import { S3Refusal } from "./errors.ts";
import { type PayloadExpectations, readExpectations, VerifyingStream } from "./payload.ts";
import type { PayloadMode } from "./sigv4.ts";

const BODY = Buffer.from("a model archive, or rather its bytes");
const sha256 = (b: Buffer) => createHash("sha256").update(b).digest("hex");
const md5 = (b: Buffer) => createHash("md5").update(b).digest("base64");
const crc32 = (b: Buffer) => {
  const d = new Crc32Digest("crc32");
  d.update(b);
  return d.digest().toString("base64");
};
const headers = (list: Record<string, string>) => new Map(Object.entries(list).map(([k, v]) => [k, [v]]));
const SIGNED: PayloadMode = { kind: "sha256", sha256: sha256(BODY) };

async function run(expect_: PayloadExpectations, body: Buffer, trailers = new Map<string, string>()) {
  const v = new VerifyingStream(expect_, () => trailers);
  const out: Buffer[] = [];
  try {
    for await (const c of Readable.from([body]).pipe(v) as AsyncIterable<Buffer>) out.push(c);
    return { ok: true as const, result: v.result(), passed: Buffer.concat(out) };
  } catch (err) {
    if (!(err instanceof S3Refusal)) throw err;
    return { ok: false as const, code: err.failure.code, message: err.message };
  }
}

function expectations(list: Record<string, string>, mode: PayloadMode = SIGNED, max = 1024) {
  const read = readExpectations(headers(list), mode, max);
  if (!read.ok) throw new Error(`refused: ${read.failure.code}`);
  return read.expect;
}

describe("payload headers", () => {
  it.each([
    ["no Content-Length", {}, SIGNED, "MissingContentLength"],
    ["a length beyond the limit", { "content-length": "1025" }, SIGNED, "EntityTooLarge"],
    ["a malformed Content-MD5", { "content-length": "3", "content-md5": "abc" }, SIGNED, "InvalidDigest"],
    ["a malformed CRC32", { "content-length": "3", "x-amz-checksum-crc32": "abc" }, SIGNED, "InvalidRequest"],
    [
      "two checksums",
      {
        "content-length": "3",
        "x-amz-checksum-crc32": crc32(BODY),
        "x-amz-checksum-sha1": "AAAAAAAAAAAAAAAAAAAAAAAAAAA=",
      },
      SIGNED,
      "InvalidRequest",
    ],
    [
      "CRC64NVME",
      { "content-length": "3", "x-amz-checksum-crc64nvme": "AAAAAAAAAAA=" },
      SIGNED,
      "InvalidRequest",
    ],
    [
      "an SDK algorithm without its checksum",
      { "content-length": "3", "x-amz-sdk-checksum-algorithm": "CRC32" },
      SIGNED,
      "InvalidRequest",
    ],
    [
      "aws-chunked without the streaming payload form",
      { "content-length": "3", "content-encoding": "aws-chunked" },
      SIGNED,
      "InvalidRequest",
    ],
    [
      "the trailer form without x-amz-trailer",
      { "x-amz-decoded-content-length": "3" },
      { kind: "streaming-unsigned-trailer" },
      "InvalidRequest",
    ],
    [
      "the trailer form without its decoded length",
      { "x-amz-trailer": "x-amz-checksum-crc32" },
      { kind: "streaming-unsigned-trailer" },
      "MissingContentLength",
    ],
  ] as const)("refuses %s", (_name, list, mode, code) => {
    const read = readExpectations(headers(list), mode, 1024);
    expect(read).toMatchObject({ ok: false, failure: { code } });
  });
});

describe("the verifying stream", () => {
  const length = String(BODY.length);

  it("passes a body whose every digest matches, and reports its MD5 and checksum", async () => {
    const e = expectations({
      "content-length": length,
      "content-md5": md5(BODY),
      "x-amz-checksum-crc32": crc32(BODY),
    });
    const r = await run(e, BODY);
    expect(r.ok && r.passed.equals(BODY)).toBe(true);
    expect(r.ok && r.result.md5.toString("base64")).toBe(md5(BODY));
    expect(r.ok && r.result.checksum?.value.toString("base64")).toBe(crc32(BODY));
  });

  it("checks the checksum of the trailer, which arrives after the bytes", async () => {
    const e = expectations(
      { "x-amz-decoded-content-length": length, "x-amz-trailer": "x-amz-checksum-crc32" },
      { kind: "streaming-unsigned-trailer" },
    );
    expect(e.awsChunked).toBe(true);
    expect((await run(e, BODY, new Map([["x-amz-checksum-crc32", crc32(BODY)]]))).ok).toBe(true);
    expect(await run(e, BODY, new Map([["x-amz-checksum-crc32", crc32(Buffer.from("x"))]]))).toMatchObject({
      code: "BadDigest",
    });
    expect(await run(e, BODY)).toMatchObject({ code: "InvalidRequest", message: /announced but not sent/ });
  });

  it.each([
    ["a body unlike its signed sha256", {}, SIGNED, "XAmzContentSHA256Mismatch"],
    [
      "a body unlike its Content-MD5",
      { "content-md5": md5(Buffer.from("x")) },
      { kind: "unsigned" },
      "BadDigest",
    ],
    [
      "a body unlike its CRC32",
      { "x-amz-checksum-crc32": crc32(Buffer.from("x")) },
      { kind: "unsigned" },
      "BadDigest",
    ],
    [
      "a body unlike its SHA-256 checksum",
      { "x-amz-checksum-sha256": createHash("sha256").update("x").digest("base64") },
      { kind: "unsigned" },
      "BadDigest",
    ],
  ] as const)("refuses %s", async (_name, list, mode, code) => {
    const tampered = Buffer.from(BODY);
    tampered[3] = tampered[3]! ^ 1;
    expect(await run(expectations({ "content-length": length, ...list }, mode), tampered)).toMatchObject({
      code,
    });
  });

  it("refuses a body shorter or longer than announced", async () => {
    const e = expectations({ "content-length": length }, { kind: "unsigned" });
    expect(await run(e, BODY.subarray(1))).toMatchObject({ code: "IncompleteBody" });
    expect(await run(e, Buffer.concat([BODY, Buffer.from("!")]))).toMatchObject({ code: "IncompleteBody" });
  });
});
