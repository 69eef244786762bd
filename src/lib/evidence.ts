// Signing and verifying residency evidence (src/core/evidence.ts) with Ed25519: a plane signs its piece,
// `meridian verify --evidence` checks a whole document against a key directory.

import { type KeyObject, sign, verify } from "node:crypto";
import { checkEvidence, type EvidenceCheck, type EvidencePiece, pieceMessage } from "../core/evidence.ts";
import type { KeyDirectory } from "../core/key-directory.ts";
import { publicKeyOf } from "./receipts.ts";

export interface PieceKey {
  keyId: string;
  privateKey: KeyObject;
}

/** The piece with its signature; unsigned (null) when the plane has no key yet, which verifiers refuse. */
export function signPiece(piece: EvidencePiece, key: PieceKey | null): EvidencePiece {
  const unsigned = { ...piece, signature: null };
  if (key === null) return unsigned;
  const value = sign(null, Buffer.from(pieceMessage(unsigned), "utf8"), key.privateKey).toString("base64url");
  return { ...unsigned, signature: { alg: "ed25519", keyid: key.keyId, value } };
}

export function verifyEvidence(doc: unknown, directory: KeyDirectory): EvidenceCheck {
  return checkEvidence(doc, directory, (publicKey, message, signature) => {
    if (!/^[A-Za-z0-9_-]{86}$/.test(signature)) return false;
    try {
      return verify(
        null,
        Buffer.from(message, "utf8"),
        publicKeyOf(publicKey),
        Buffer.from(signature, "base64url"),
      );
    } catch {
      return false;
    }
  });
}
