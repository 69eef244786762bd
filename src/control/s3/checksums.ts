// The payload checksums S3 clients send: CRC-32 and CRC-32C computed here (no dependency), SHA-1, SHA-256
// and MD5 through node:crypto; plus the rules for the headers that carry them (`x-amz-checksum-*`,
// `Content-MD5`), which name S3's error codes for a value that is malformed.

import { createHash, type Hash } from "node:crypto";

/** What every running digest offers: feed bytes, then read the raw digest once. */
export interface Digest {
  update(bytes: Uint8Array): void;
  digest(): Buffer;
}

/**
 * Slice-by-8 tables for a reflected CRC-32 with polynomial `poly` (the reversed form). Table 0 is the
 * classic byte-at-a-time table; table k advances a byte through k more zero bytes, so eight input bytes
 * are folded per step.
 */
function sliceBy8Tables(poly: number): Uint32Array[] {
  const tables = Array.from({ length: 8 }, () => new Uint32Array(256));
  const t0 = tables[0]!;
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ poly : c >>> 1;
    t0[n] = c >>> 0;
  }
  for (let k = 1; k < 8; k++) {
    const prev = tables[k - 1]!;
    const table = tables[k]!;
    for (let n = 0; n < 256; n++) table[n] = ((prev[n]! >>> 8) ^ t0[prev[n]! & 0xff]!) >>> 0;
  }
  return tables;
}

/** CRC-32/ISO-HDLC (zlib's, reversed polynomial 0xEDB88320). */
const CRC32_TABLES = sliceBy8Tables(0xedb88320);
/** CRC-32C/Castagnoli (iSCSI, RFC 3720 §B.4; reversed polynomial 0x82F63B78). */
const CRC32C_TABLES = sliceBy8Tables(0x82f63b78);

/** A running CRC-32 variant: initial value and final XOR 0xFFFFFFFF, reflected in and out. */
export class Crc32Digest implements Digest {
  private crc = 0xffffffff;
  private readonly t: Uint32Array[];

  constructor(variant: "crc32" | "crc32c" = "crc32") {
    this.t = variant === "crc32" ? CRC32_TABLES : CRC32C_TABLES;
  }

  update(bytes: Uint8Array): void {
    const [t0, t1, t2, t3, t4, t5, t6, t7] = this.t as [
      Uint32Array,
      Uint32Array,
      Uint32Array,
      Uint32Array,
      Uint32Array,
      Uint32Array,
      Uint32Array,
      Uint32Array,
    ];
    let crc = this.crc;
    let i = 0;
    const n = bytes.length;
    while (n - i >= 8) {
      const a =
        (crc ^ (bytes[i]! | (bytes[i + 1]! << 8) | (bytes[i + 2]! << 16) | (bytes[i + 3]! << 24))) >>> 0;
      crc =
        t7[a & 0xff]! ^
        t6[(a >>> 8) & 0xff]! ^
        t5[(a >>> 16) & 0xff]! ^
        t4[a >>> 24]! ^
        t3[bytes[i + 4]!]! ^
        t2[bytes[i + 5]!]! ^
        t1[bytes[i + 6]!]! ^
        t0[bytes[i + 7]!]!;
      i += 8;
    }
    while (i < n) crc = t0[(crc ^ bytes[i++]!) & 0xff]! ^ (crc >>> 8);
    this.crc = crc >>> 0;
  }

  /** The CRC as a number (after the final XOR). */
  value(): number {
    return (this.crc ^ 0xffffffff) >>> 0;
  }

  /** Big-endian, as S3 encodes it before base64. */
  digest(): Buffer {
    const out = Buffer.alloc(4);
    out.writeUInt32BE(this.value());
    return out;
  }
}

class HashDigest implements Digest {
  private readonly hash: Hash;
  constructor(algorithm: "sha1" | "sha256" | "md5") {
    this.hash = createHash(algorithm);
  }
  update(bytes: Uint8Array): void {
    this.hash.update(bytes);
  }
  digest(): Buffer {
    return this.hash.digest();
  }
}

/** The flexible checksums S3 defines; `crc64nvme` is recognised so it can be refused by name. */
export const CHECKSUM_ALGORITHMS = ["crc32", "crc32c", "sha1", "sha256"] as const;
export type ChecksumAlgorithm = (typeof CHECKSUM_ALGORITHMS)[number];
const UNSUPPORTED_ALGORITHMS = ["crc64nvme"];

const DIGEST_BYTES: Record<ChecksumAlgorithm, number> = { crc32: 4, crc32c: 4, sha1: 20, sha256: 32 };

export function newDigest(algorithm: ChecksumAlgorithm | "md5"): Digest {
  switch (algorithm) {
    case "crc32":
    case "crc32c":
      return new Crc32Digest(algorithm);
    case "sha1":
    case "sha256":
    case "md5":
      return new HashDigest(algorithm);
  }
}

export function checksumHeader(algorithm: ChecksumAlgorithm): string {
  return `x-amz-checksum-${algorithm}`;
}

/** Parses an algorithm name as S3 spells it in `x-amz-checksum-algorithm` (`CRC32`, `SHA256`, …). */
export function parseAlgorithmName(
  value: string,
): { ok: true; algorithm: ChecksumAlgorithm } | { ok: false; message: string } {
  const lower = value.trim().toLowerCase();
  if ((CHECKSUM_ALGORITHMS as readonly string[]).includes(lower)) {
    return { ok: true, algorithm: lower as ChecksumAlgorithm };
  }
  if (UNSUPPORTED_ALGORITHMS.includes(lower)) {
    return {
      ok: false,
      message: `Checksum algorithm ${value} is not supported here; use CRC32, CRC32C, SHA1 or SHA256.`,
    };
  }
  return { ok: false, message: `Checksum algorithm ${JSON.stringify(value)} is not valid.` };
}

/** Strict base64 of exactly `bytes` bytes: what decodes must encode back to the same text. */
function decodeBase64(value: string, bytes: number): Buffer | null {
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(value)) return null;
  const decoded = Buffer.from(value, "base64");
  if (decoded.length !== bytes || decoded.toString("base64") !== value) return null;
  return decoded;
}

/** The digest a checksum header announces, or why it is not a valid value for the algorithm. */
export function parseChecksumValue(algorithm: ChecksumAlgorithm, value: string): Buffer | null {
  return decodeBase64(value.trim(), DIGEST_BYTES[algorithm]);
}

/** `Content-MD5` is base64 of the 16-byte digest (RFC 1864). */
export function parseContentMd5(value: string): Buffer | null {
  return decodeBase64(value.trim(), 16);
}

/** The `x-amz-checksum-*` header names present, supported or not (for the refusal message). */
export function checksumHeadersIn(names: Iterable<string>): {
  supported: ChecksumAlgorithm[];
  unsupported: string[];
} {
  const supported: ChecksumAlgorithm[] = [];
  const unsupported: string[] = [];
  for (const name of names) {
    const m = /^x-amz-checksum-([a-z0-9]+)$/.exec(name);
    if (!m || ["algorithm", "type", "mode"].includes(m[1]!)) continue;
    if ((CHECKSUM_ALGORITHMS as readonly string[]).includes(m[1]!)) supported.push(m[1] as ChecksumAlgorithm);
    else unsupported.push(name);
  }
  return { supported, unsupported };
}
