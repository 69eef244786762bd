import { execFile } from "node:child_process";
import { createHash, generateKeyPairSync } from "node:crypto";
import { mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { AuditRecord } from "../core/audit-record.ts";
import { assembleEvidence } from "../core/evidence.ts";
import { keyDirectory } from "../core/key-directory.ts";
import { AuditLog } from "../gateway/audit.ts";
import { contentDigest, signReceipt } from "../lib/receipts.ts";
import { parseSavedResponse, type VerifyFlags, verifyCommand } from "./verify.ts";

const run = promisify(execFile);
const BIN = resolve(import.meta.dirname, "../../bin/meridian.js");

function planeKey() {
  const { privateKey, publicKey } = generateKeyPairSync("ed25519");
  const raw = publicKey.export({ format: "jwk" }).x!;
  const keyId = createHash("sha256").update(Buffer.from(raw, "base64url")).digest("hex").slice(0, 16);
  return { keyId, privateKey, raw };
}

const eu1 = planeKey();
const us1 = planeKey();
const T = Date.parse("2025-06-02T10:00:00Z");
const BODY = '{"text":"bonjour"}';
const AUTHORITY = "model-abcd1234-prod-eu.meridian.internal:8443";
let dir = "";
let keysFile = "";
let responseFile = "";

/** A response as `curl -i` saves it: the status line, fields, an empty line and the body, CRLF. */
function curlI(status: number, fields: readonly string[], body: string): string {
  let head = `HTTP/1.1 ${status} OK\r\n`;
  for (let i = 0; i < fields.length; i += 2) head += `${fields[i]}: ${fields[i + 1]}\r\n`;
  return `${head}\r\n${body}`;
}

function signed(key = eu1, proof: Record<string, string> = {}, answer = '{"label":"positive"}'): string {
  const headers = Object.entries({
    "content-type": "application/json",
    "x-request-id": "req-7",
    "x-meridian-region": "eu",
    "x-meridian-plane": "eu-1",
    "x-meridian-deployment-id": "d7k2p9q",
    "x-meridian-route": "eu-1",
    ...proof,
  }).flat();
  const r = signReceipt(key, {
    status: 200,
    headers,
    request: { method: "POST", authority: AUTHORITY, path: "/predict", contentDigest: contentDigest(BODY) },
    now: T,
  });
  if (!r.ok) throw new Error(r.reason);
  return curlI(200, [...headers, ...r.headers], answer);
}

/** As the plane signs a small answer: its content-digest in the head, covered by the receipt. */
function signedWithBody(answer: string): string {
  return signed(eu1, { "content-digest": contentDigest(answer) }, answer);
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "meridian-verify-"));
  keysFile = join(dir, "keys.json");
  const entry = (k: typeof eu1, plane: string, region: string) => ({
    key_id: k.keyId,
    plane,
    region,
    alg: "ed25519" as const,
    public_key: k.raw,
    valid_from: "2025-01-01T00:00:00.000Z",
    retired_at: null,
  });
  await writeFile(
    keysFile,
    JSON.stringify(keyDirectory([entry(eu1, "eu-1", "eu"), entry(us1, "us-1", "us")], new Date(T))),
  );
  responseFile = join(dir, "response.txt");
  await writeFile(responseFile, signed());
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const noStdin = async () => Buffer.alloc(0);
const check = (file: string | undefined, flags: Partial<VerifyFlags> = {}) =>
  verifyCommand(file, { keys: keysFile, ...flags }, noStdin);

describe("saved responses", () => {
  it("reads curl -i and curl -D output, CRLF or LF, skipping interim 1xx heads", () => {
    const cases: Array<[string, number, number, string]> = [
      ["HTTP/1.1 200 OK\r\nA: 1\r\nb:  2 \r\n\r\nbody", 200, 2, "body"],
      ["HTTP/1.1 200 OK\nA: 1\n\nbody\n", 200, 1, "body\n"],
      ["HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 421 Misdirected Request\r\nA: 1\r\n\r\n{}", 421, 1, "{}"],
      ["HTTP/2 200\r\nx-meridian-plane: eu-1\r\n\r\n", 200, 1, ""],
      ["HTTP/1.1 200 Connection established\r\n\r\nHTTP/2 200 \r\na: 1\r\n\r\nok", 200, 1, "ok"],
      ["HTTP/1.1 200 OK\r\nA: 1\r\n", 200, 1, ""], // a head saved without its last empty line
    ];
    for (const [text, status, n, body] of cases) {
      const r = parseSavedResponse(Buffer.from(text));
      expect(r.ok, text).toBe(true);
      if (!r.ok) continue;
      expect(r.response.status).toBe(status);
      expect(r.response.fields).toHaveLength(n);
      expect(r.body.toString()).toBe(body);
    }
    const fields = parseSavedResponse(Buffer.from("HTTP/1.1 200 OK\r\nB:  2 \r\n\r\n"));
    expect(fields.ok && fields.response.fields).toEqual([["b", "2"]]);
  });

  it("refuses folded lines and what is not a response", () => {
    expect(parseSavedResponse(Buffer.from("HTTP/1.1 200 OK\r\nA: 1\r\n  more\r\n\r\n"))).toEqual({
      ok: false,
      error: "a folded header line (obs-fold)",
    });
    expect(parseSavedResponse(Buffer.from("<html>"))).toMatchObject({ ok: false });
    expect(parseSavedResponse(Buffer.from("HTTP/1.1 200 OK\r\nno colon\r\n\r\n"))).toMatchObject({
      ok: false,
    });
  });
});

describe("meridian verify (receipts)", () => {
  it("summarizes a valid receipt in one line, from the response alone or with the request given", async () => {
    const alone = await check(responseFile);
    expect(alone.exitCode).toBe(0);
    expect(alone.line).toBe(
      `processed in region eu by plane eu-1, key ${eu1.keyId}, at 2025-06-02T10:00:00.000Z: 200 for POST ${AUTHORITY}/predict (request req-7, deployment d7k2p9q, route eu-1)`,
    );
    expect(alone.details[0]).toMatch(/as the response states it/);
    const body = join(dir, "body.json");
    await writeFile(body, BODY);
    const given = await check(responseFile, {
      url: `https://${AUTHORITY}/predict?x=1`,
      method: "post",
      bodyFile: body,
    });
    expect(given.exitCode).toBe(0);
    expect(given.details[0]).toBe(`request body digest: ${contentDigest(BODY)}`);
  });

  it("fails with the reason: a changed header, another request, another plane's key", async () => {
    const changed = join(dir, "changed.txt");
    await writeFile(
      changed,
      signed().replace("x-meridian-deployment-id: d7k2p9q", "x-meridian-deployment-id: zzzzzzz"),
    );
    expect(await check(changed)).toMatchObject({
      exitCode: 1,
      line: expect.stringMatching(/\(bad_signature\)$/),
    });
    expect(await check(responseFile, { data: '{"text":"hello"}' })).toMatchObject({
      exitCode: 1,
      line: expect.stringMatching(
        /^receipt not valid: the receipt is for a request body with digest .* \(request_mismatch\)$/,
      ),
    });
    expect(
      await check(responseFile, { url: "https://model-abcd1234-prod-us.meridian.internal:8443/predict" }),
    ).toMatchObject({
      exitCode: 1,
      line: `receipt not valid: the receipt is for a request with authority ${AUTHORITY}, not model-abcd1234-prod-us.meridian.internal:8443 (request_mismatch)`,
    });
    const other = join(dir, "other.txt");
    await writeFile(other, signed(us1));
    expect(await check(other)).toMatchObject({
      exitCode: 1,
      line: expect.stringMatching(/\(wrong_plane\)$/),
    });
  });

  it("says whether the response body is covered, and fails on a changed body when it is", async () => {
    const head = await check(responseFile);
    expect(head.details).toContain(
      "response body not covered: the receipt signs the head only (the answer was streamed, or larger than the plane holds before signing)",
    );
    const answer = '{"label":"negative"}';
    const covered = join(dir, "covered.txt");
    await writeFile(covered, signedWithBody(answer));
    const ok = await check(covered);
    expect(ok.exitCode).toBe(0);
    expect(ok.details).toContain(
      `response body covered: ${answer.length} bytes match the signed content-digest`,
    );
    // The body changed after the fact: the receipt says it was not this one.
    const changed = join(dir, "changed.txt");
    await writeFile(changed, signedWithBody(answer).replace("negative", "positive"));
    const bad = await check(changed);
    expect(bad.exitCode).toBe(1);
    expect(bad.line).toMatch(
      /^receipt not valid: the receipt covers the response body, .*\(response_body_changed\)$/,
    );
    // The head alone (`curl -D`): covered, said not checked, not a failure.
    const headFile = join(dir, "head-only.txt");
    const full = signedWithBody(answer);
    await writeFile(
      headFile,
      full
        .slice(0, full.indexOf("\r\n\r\n") + 4)
        .replace("\r\n\r\n", `\r\ncontent-length: ${answer.length}\r\n\r\n`),
    );
    const headOnly = await check(headFile);
    expect(headOnly.exitCode).toBe(0);
    expect(headOnly.details).toContain(
      "response body covered by the receipt, but not checked: the file holds the head only (save it with curl -i)",
    );
    // And the digest rewritten to fit: the signature does not cover that one.
    const refit = signedWithBody(answer)
      .replace("negative", "positive")
      .replace(contentDigest(answer), contentDigest('{"label":"positive"}'));
    await writeFile(changed, refit);
    expect((await check(changed)).line).toMatch(/\(bad_signature\)$/);
  });

  it("could not check (exit 2): no such file, a bad key directory, two things at once", async () => {
    expect(await check(join(dir, "nope.txt"))).toMatchObject({ exitCode: 2 });
    const bad = join(dir, "bad-keys.json");
    await writeFile(
      bad,
      JSON.stringify({ kind: "meridian-key-directory", version: 1, generated_at: "x", keys: [] }),
    );
    expect(await verifyCommand(responseFile, { keys: bad }, noStdin)).toMatchObject({
      exitCode: 2,
      line: `the key directory ${bad} is not valid: generated_at is not an ISO 8601 time`,
    });
    expect(await check(responseFile, { evidence: "x.json" })).toMatchObject({ exitCode: 2 });
    expect(await check(responseFile, { data: "a", bodyDigest: "b" })).toMatchObject({ exitCode: 2 });
  });

  it("works as the real command: exit 0 and one line, exit 1 and the reason", async () => {
    const ok = await run(process.execPath, [BIN, "verify", "--keys", keysFile, responseFile]);
    expect(ok.stdout.trim().split("\n")).toHaveLength(1);
    expect(ok.stdout).toMatch(/^processed in region eu by plane eu-1, key /);
    const changed = join(dir, "changed-cli.txt");
    await writeFile(changed, signed().replace("x-meridian-region: eu", "x-meridian-region: us"));
    const failed = await run(process.execPath, [BIN, "verify", "--keys", keysFile, changed]).catch((e) => e);
    expect(failed.code).toBe(1);
    expect(failed.stderr).toMatch(/^meridian: receipt not valid: the signature does not match/);
  });
});

describe("meridian verify --evidence and --audit", () => {
  it("checks an evidence document and a plane's audit directory, and says where an audit breaks", async () => {
    const auditDir = join(dir, "audit");
    let now = Date.parse("2025-06-02T00:00:00Z");
    const log = new AuditLog({
      dir: auditDir,
      plane: { name: "eu-1", region: "eu" },
      signingKey: eu1,
      now: () => now,
    });
    await log.start();
    for (let i = 0; i < 12; i++) {
      const r: AuditRecord = {
        time: new Date(now).toISOString(),
        request_id: `r${i}`,
        model_id: "abcd1234",
        environment: "prod-eu",
        deployment_id: "d7k2p9q",
        hostname_form: "regional",
        route: ["eu-1"],
        status: 200,
        latency_ms: 3,
        plane: "eu-1",
        region: "eu",
        processed_by: "eu-1",
        forwarded_from: null,
        error_code: null,
        aborted: false,
      };
      log.record(r);
      if (i % 4 === 3) await log.flush();
      now += 60_000;
    }
    const scope = {
      model_id: "abcd1234",
      environment: "prod-eu",
      restricted_to: "eu",
      from: "2025-06-02T00:00:00.000Z",
      to: "2025-06-03T00:00:00.000Z",
    };
    const piece = await log.evidencePiece(scope, () => undefined);
    await log.stop();
    // us-1 had a key too; its piece (no requests of prod-eu) completes the document.
    const usDir = join(dir, "audit-us");
    const usLog = new AuditLog({
      dir: usDir,
      plane: { name: "us-1", region: "us" },
      signingKey: us1,
      now: () => now,
    });
    await usLog.start();
    const usPiece = await usLog.evidencePiece(scope, () => undefined);
    await usLog.stop();
    const evidence = join(dir, "evidence.json");
    await writeFile(evidence, JSON.stringify(assembleEvidence(scope, [piece, usPiece], [], new Date(now))));

    const okEvidence = await run(process.execPath, [
      BIN,
      "verify",
      "--keys",
      keysFile,
      "--evidence",
      evidence,
    ]);
    expect(okEvidence.stdout.trim()).toBe(
      "evidence verified: prod-eu of model abcd1234, 2025-06-02T00:00:00.000Z to 2025-06-03T00:00:00.000Z: 12 client requests (12 records) from 2 planes, none processed outside region eu",
    );
    const okAudit = await check(undefined, { audit: auditDir });
    expect(okAudit).toMatchObject({
      exitCode: 0,
      line: expect.stringMatching(/^audit chain intact in .*: 12 records in 4 batches, seals 0 to 3/),
    });

    const [file] = (await readdir(auditDir)).filter((n) => n.startsWith("audit-"));
    const path = join(auditDir, file!);
    const text = await readFile(path, "utf8");
    const offset = Buffer.byteLength(text.slice(0, text.indexOf('"request_id":"r5"')));
    const lineStart = text.lastIndexOf("\n", text.indexOf('"request_id":"r5"')) + 1;
    expect(lineStart).toBeLessThan(offset);
    await writeFile(path, text.replace('"request_id":"r5"', '"request_id":"r6"'));
    const broken = await run(process.execPath, [
      BIN,
      "verify",
      "--keys",
      keysFile,
      "--audit",
      auditDir,
    ]).catch((e) => e);
    expect(broken.code).toBe(1);
    expect(broken.stderr.trim()).toBe(
      `meridian: audit chain broken at ${file} offset ${Buffer.byteLength(text.slice(0, lineStart))}: record 2 of batch 2 was modified (record_modified)`,
    );
  });
});
