// CRC-32 and CRC-32C against their published check values (the "123456789" check of the CRC catalogue,
// RFC 3720 §B.4 for CRC-32C), against a bit-at-a-time reference and zlib, fed whole or in pieces; and the
// strict reading of checksum headers.

import { randomBytes } from "node:crypto";
import { crc32 as zlibCrc32 } from "node:zlib";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  Crc32Digest,
  checksumHeadersIn,
  newDigest,
  parseAlgorithmName,
  parseChecksumValue,
  parseContentMd5,
} from "./checksums.ts";

const crc = (variant: "crc32" | "crc32c", bytes: Uint8Array) => {
  const d = new Crc32Digest(variant);
  d.update(bytes);
  return d.value();
};

/** The textbook definition, one bit at a time: what the table-driven version must equal. */
function reference(poly: number, bytes: Uint8Array): number {
  let c = 0xffffffff;
  for (const b of bytes) {
    c ^= b;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ poly : c >>> 1;
  }
  return (c ^ 0xffffffff) >>> 0;
}

describe("CRC-32 and CRC-32C", () => {
  it("match the catalogue's check values", () => {
    const check = Buffer.from("123456789");
    expect(crc("crc32", check)).toBe(0xcbf43926);
    expect(crc("crc32c", check)).toBe(0xe3069283);
    expect(crc("crc32", new Uint8Array())).toBe(0);
  });

  it("match RFC 3720's CRC-32C examples", () => {
    expect(crc("crc32c", new Uint8Array(32))).toBe(0x8a9136aa);
    expect(crc("crc32c", new Uint8Array(32).fill(0xff))).toBe(0x62a8ab43);
    expect(
      crc(
        "crc32c",
        Uint8Array.from({ length: 32 }, (_, i) => i),
      ),
    ).toBe(0x46dd794e);
    expect(
      crc(
        "crc32c",
        Uint8Array.from({ length: 32 }, (_, i) => 31 - i),
      ),
    ).toBe(0x113fdb5c);
  });

  it("equal the bit-at-a-time definition and zlib for any bytes, however they are split", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), fc.array(fc.nat(), { maxLength: 5 }), (bytes, cuts) => {
        const points = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
        for (const variant of ["crc32", "crc32c"] as const) {
          const d = new Crc32Digest(variant);
          let at = 0;
          for (const p of [...points, bytes.length]) {
            d.update(bytes.subarray(at, p));
            at = p;
          }
          expect(d.value()).toBe(reference(variant === "crc32" ? 0xedb88320 : 0x82f63b78, bytes));
        }
        expect(crc("crc32", bytes)).toBe(zlibCrc32(bytes));
      }),
    );
    const big = randomBytes(3 * 1024 * 1024 + 5);
    expect(crc("crc32", big)).toBe(zlibCrc32(big));
  });

  it("encode big-endian, as the x-amz-checksum-crc32 header carries them", () => {
    const d = newDigest("crc32");
    d.update(Buffer.from("123456789"));
    expect(d.digest().toString("base64")).toBe(Buffer.from([0xcb, 0xf4, 0x39, 0x26]).toString("base64"));
  });
});

describe("checksum headers", () => {
  it("read values only in strict base64 of the right length", () => {
    expect(parseChecksumValue("crc32", "y/Q5Jg==")).toEqual(Buffer.from([0xcb, 0xf4, 0x39, 0x26]));
    for (const bad of ["y/Q5Jg", "y/Q5Jg==x", "y/Q5Jh==", "AAAAAAA=", "y/Q5 Jg==", "", "!!!!"]) {
      expect(parseChecksumValue("crc32", bad), bad).toBeNull();
    }
    expect(parseChecksumValue("sha256", Buffer.alloc(32, 7).toString("base64"))).toEqual(Buffer.alloc(32, 7));
    expect(parseChecksumValue("sha256", Buffer.alloc(31).toString("base64"))).toBeNull();
    expect(parseContentMd5(Buffer.alloc(16, 1).toString("base64"))).toEqual(Buffer.alloc(16, 1));
    expect(parseContentMd5(Buffer.alloc(16, 1).toString("hex"))).toBeNull();
  });

  it("name the algorithms S3 spells in upper case, and refuse the ones not implemented by name", () => {
    expect(parseAlgorithmName("CRC32")).toEqual({ ok: true, algorithm: "crc32" });
    expect(parseAlgorithmName("sha256")).toEqual({ ok: true, algorithm: "sha256" });
    expect(parseAlgorithmName("CRC64NVME")).toMatchObject({
      ok: false,
      message: /CRC64NVME is not supported/,
    });
    expect(parseAlgorithmName("MD5")).toMatchObject({ ok: false });
  });

  it("find the checksum headers among others", () => {
    expect(
      checksumHeadersIn([
        "x-amz-checksum-crc32",
        "x-amz-checksum-algorithm",
        "x-amz-checksum-type",
        "x-amz-checksum-crc64nvme",
        "host",
      ]),
    ).toEqual({ supported: ["crc32"], unsupported: ["x-amz-checksum-crc64nvme"] });
  });
});
