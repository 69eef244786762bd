// A child process for audit.test.ts: writes audit records as fast as it can through a real AuditLog and
// prints `durable N` each time a flush it asked for has returned (records 0…N-1 are then fsynced), until
// it is killed.
import { createHash, createPrivateKey, createPublicKey } from "node:crypto";
import { AuditLog } from "../audit.ts";

const [dir, seedHex] = process.argv.slice(2);
if (dir === undefined || seedHex === undefined) throw new Error("usage: audit-writer DIR SEED_HEX");
// RFC 8410 §7: PKCS #8 of an Ed25519 key is this prefix and the 32-byte seed.
const der = Buffer.concat([
  Buffer.from("302e020100300506032b657004220420", "hex"),
  Buffer.from(seedHex, "hex"),
]);
const privateKey = createPrivateKey({ key: der, format: "der", type: "pkcs8" });
const raw = Buffer.from(createPublicKey(privateKey).export({ format: "jwk" }).x!, "base64url");
const keyId = createHash("sha256").update(raw).digest("hex").slice(0, 16);

const log = new AuditLog({
  dir,
  plane: { name: "eu-1", region: "eu" },
  signingKey: { keyId, privateKey },
  flushIntervalMs: 5,
  maxBufferedRecords: 500,
});
await log.start();
process.stdout.write("started\n");

let i = 0;
let flushing = false;
// About the pace of a busy ingress (≤ 100 records a millisecond), with the flush timer doing most writes
// and one explicit flush at a time reporting what is durable.
for (;;) {
  for (let k = 0; k < 100; k++, i++) {
    log.record({
      time: new Date().toISOString(),
      request_id: `req-${i}`,
      model_id: "aaaaaaa1",
      environment: "prod-eu",
      deployment_id: "d1",
      hostname_form: "regional",
      route: ["eu-1"],
      status: 200,
      latency_ms: 1.25,
      plane: "eu-1",
      region: "eu",
      processed_by: "eu-1",
      forwarded_from: null,
      error_code: null,
      aborted: false,
    });
  }
  if (!flushing) {
    flushing = true;
    const upTo = i;
    void log.flush().then(() => {
      process.stdout.write(`durable ${upTo}\n`);
      flushing = false;
    });
  }
  await new Promise((r) => setTimeout(r, 1));
}
