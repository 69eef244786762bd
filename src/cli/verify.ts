// `meridian verify`: checks offline, against a key directory, what a plane signed (issue 14): a saved
// response's receipt, an evidence document, or a plane's audit chain (its directory or an export). Exit 0
// with a one-line summary when it holds; 1 with the reason when it does not; 2 when it could not be checked.

import { readFile } from "node:fs/promises";
import { normalizeAuthority, pathOfTarget } from "../core/http-signatures.ts";
import { type KeyDirectory, parseKeyDirectory } from "../core/key-directory.ts";
import type { ReceiptRequest } from "../core/receipt.ts";
import {
  type AuditCheck,
  checkAuditDirectory,
  checkAuditExport,
  directorySealKeys,
} from "../lib/audit-chain.ts";
import { verifyEvidence } from "../lib/evidence.ts";
import { contentDigest, type SavedResponse, verifyReceipt } from "../lib/receipts.ts";

export interface VerifyFlags {
  keys: string;
  url?: string;
  method?: string;
  data?: string;
  bodyFile?: string;
  bodyDigest?: string;
  evidence?: string;
  audit?: string;
  auditExport?: string;
  json?: boolean;
}

/** What was checked and what it says; `exitCode` 0 (holds), 1 (does not), 2 (could not check). */
export interface VerifyOutcome {
  exitCode: 0 | 1 | 2;
  /** One line for stdout on success, or the reason (stderr) otherwise. */
  line: string;
  /** Further lines: notes on success, every problem on failure. */
  details: string[];
  result: unknown;
}

class InputError extends Error {}

export async function verifyCommand(
  response: string | undefined,
  flags: VerifyFlags,
  stdin: () => Promise<Buffer>,
): Promise<VerifyOutcome> {
  try {
    const targets = [response, flags.evidence, flags.audit, flags.auditExport].filter((t) => t !== undefined);
    if (targets.length !== 1) {
      throw new InputError(
        "give exactly one of: a saved response file, --evidence FILE, --audit DIR, --audit-export FILE",
      );
    }
    const directory = await readDirectory(flags.keys);
    if (flags.evidence !== undefined) return await evidenceOutcome(flags.evidence, directory);
    if (flags.audit !== undefined) {
      return auditOutcome(
        await checkAuditDirectory(flags.audit, { keys: directorySealKeys(directory) }),
        flags.audit,
      );
    }
    if (flags.auditExport !== undefined) {
      const check = await checkAuditExport(flags.auditExport, { keys: directorySealKeys(directory) });
      return auditOutcome(check, flags.auditExport);
    }
    const raw = response === "-" ? await stdin() : await readInput(response!, "response");
    return await receiptOutcome(raw, flags, directory);
  } catch (err) {
    if (err instanceof InputError)
      return { exitCode: 2, line: err.message, details: [], result: { error: err.message } };
    throw err;
  }
}

async function readInput(path: string, what: string): Promise<Buffer> {
  try {
    return await readFile(path);
  } catch (err) {
    throw new InputError(`cannot read the ${what} file ${path}: ${(err as Error).message}`);
  }
}

async function readDirectory(path: string): Promise<KeyDirectory> {
  let doc: unknown;
  try {
    doc = JSON.parse((await readInput(path, "key directory")).toString("utf8"));
  } catch (err) {
    if (err instanceof InputError) throw err;
    throw new InputError(`the key directory ${path} is not JSON: ${(err as Error).message}`);
  }
  const parsed = parseKeyDirectory(doc);
  if (!parsed.ok) throw new InputError(`the key directory ${path} is not valid: ${parsed.error}`);
  return parsed.directory;
}

async function receiptOutcome(
  raw: Buffer,
  flags: VerifyFlags,
  directory: KeyDirectory,
): Promise<VerifyOutcome> {
  const saved = parseSavedResponse(raw);
  if (!saved.ok) throw new InputError(`the response file is not a saved HTTP response: ${saved.error}`);
  const request = await givenRequest(flags);
  // The body as saved (`curl -i`): checked against the receipt's content-digest when it covers the answer.
  // A head saved alone (`curl -D`: no body where the head declares one) is not a changed body: not checked.
  const declared = saved.response.fields.find(([n]) => n.toLowerCase() === "content-length")?.[1].trim();
  const headOnly = saved.body.length === 0 && declared !== undefined && declared !== "0";
  const r = verifyReceipt(saved.response, directory, {
    request,
    ...(headOnly ? {} : { body: saved.body }),
  });
  if (!r.ok) {
    return { exitCode: 1, line: `receipt not valid: ${r.message} (${r.reason})`, details: [], result: r };
  }
  const v = r.receipt;
  const at = new Date(v.created * 1000).toISOString();
  const line =
    `processed in region ${v.region} by plane ${v.plane}, key ${v.keyId}, at ${at}: ` +
    `${v.status} for ${v.request.method} ${v.request.authority}${v.request.path} ` +
    `(request ${v.requestId}, deployment ${v.deploymentId}, route ${v.route.join(" > ")})`;
  const details: string[] = [];
  if (v.requestFrom === "echo") {
    details.push(
      "the request is as the response states it (x-meridian-receipt-request); give --url, --method and the body to check it is yours",
    );
  }
  if (!v.coversBody)
    details.push("the receipt does not cover the request body: the plane answered before reading it");
  else details.push(`request body digest: ${v.request.contentDigest}`);
  if (v.responseBody === false) {
    details.push(
      "response body not covered: the receipt signs the head only (the answer was streamed, or larger than the plane holds before signing)",
    );
  } else if (v.responseBody === "not_checked") {
    details.push(
      "response body covered by the receipt, but not checked: the file holds the head only (save it with curl -i)",
    );
  } else {
    details.push(`response body covered: ${saved.body.length} bytes match the signed content-digest`);
  }
  for (const o of v.alsoSignedBy)
    details.push(`also signed by plane ${o.plane} (region ${o.region}), key ${o.keyId}`);
  return { exitCode: 0, line, details, result: r };
}

async function givenRequest(flags: VerifyFlags): Promise<Partial<ReceiptRequest>> {
  const out: Partial<ReceiptRequest> = {};
  if (flags.method !== undefined) out.method = flags.method.toUpperCase();
  if (flags.url !== undefined) {
    const m = /^(https?):\/\/([^/?#]+)/i.exec(flags.url);
    if (m === null) throw new InputError(`--url ${flags.url} is not an http(s) URL`);
    out.authority = normalizeAuthority(m[2]!, m[1]!.toLowerCase() as "http" | "https");
    out.path = pathOfTarget(flags.url);
  }
  const bodies = [flags.data, flags.bodyFile, flags.bodyDigest].filter((b) => b !== undefined);
  if (bodies.length > 1) throw new InputError("give at most one of --data, --body-file and --body-digest");
  if (flags.data !== undefined) out.contentDigest = contentDigest(flags.data);
  if (flags.bodyFile !== undefined)
    out.contentDigest = contentDigest(await readInput(flags.bodyFile, "body"));
  if (flags.bodyDigest !== undefined) out.contentDigest = flags.bodyDigest;
  return out;
}

async function evidenceOutcome(path: string, directory: KeyDirectory): Promise<VerifyOutcome> {
  let doc: unknown;
  try {
    doc = JSON.parse((await readInput(path, "evidence")).toString("utf8"));
  } catch (err) {
    if (err instanceof InputError) throw err;
    throw new InputError(`the evidence file ${path} is not JSON: ${(err as Error).message}`);
  }
  const check = verifyEvidence(doc, directory);
  if (!check.ok) {
    const [first, ...rest] = check.problems;
    return { exitCode: 1, line: `evidence not valid: ${first}`, details: rest, result: check };
  }
  const d = doc as {
    scope: { model_id: string; environment: string; restricted_to: string | null; from: string; to: string };
  };
  const t = check.totals!;
  const region = d.scope.restricted_to;
  const line =
    `evidence verified: ${d.scope.environment} of model ${d.scope.model_id}, ${d.scope.from} to ${d.scope.to}: ` +
    `${t.client_requests} client requests (${t.records} records) from ${check.planes.length} planes, ` +
    (region === null ? "not restricted to a region" : `none processed outside region ${region}`);
  const details = check.planes.map(
    (p) => `plane ${p.plane} (region ${p.region}), key ${p.keyId}: ${p.requests} records`,
  );
  return { exitCode: 0, line, details, result: check };
}

function auditOutcome(check: AuditCheck, where: string): VerifyOutcome {
  if (!check.ok) {
    const b = check.break!;
    return {
      exitCode: 1,
      line: `audit chain broken at ${b.file} offset ${b.offset}: ${b.message} (${b.kind})`,
      details: [],
      result: check,
    };
  }
  const span =
    check.first === null || check.head === null
      ? "no batches"
      : `seals ${check.first.seq} to ${check.head.seq} (head ${check.head.hash.slice(0, 16)}…, ${check.head.sealed_at})`;
  const line = `audit chain intact in ${where}: ${check.records} records in ${check.batches} batches, ${span}`;
  const details: string[] = [];
  if (check.unsigned > 0)
    details.push(`${check.unsigned} batches are unsigned (written before the plane had a key)`);
  for (const t of check.torn) {
    details.push(
      `${t.bytes} bytes after the last seal of ${t.file} (offset ${t.offset}, ${t.records} records) were cut short by a crash${t.acknowledged ? " and recorded at restart" : ""}; they are not proven`,
    );
  }
  if (check.legacy.length > 0) details.push(`not chained (older version): ${check.legacy.join(", ")}`);
  return { exitCode: 0, line, details, result: check };
}

export type SavedParse = { ok: true; response: SavedResponse; body: Buffer } | { ok: false; error: string };

const STATUS_LINE = /^HTTP\/(\d(?:\.\d)?) (\d{3})(?: .*)?$/;
const FIELD_NAME = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

/**
 * A response as `curl -i` (head and body) or `curl -D` (head only) saves it: status line and field lines
 * (CRLF or LF), an empty line, then the body. Interim 1xx heads (RFC 9110 §15.2) and a proxy's answer to
 * CONNECT are skipped. Folded field lines are refused (RFC 9112 §5.2), as a signed field must be read one
 * way only.
 */
export function parseSavedResponse(raw: Buffer): SavedParse {
  let pos = 0;
  for (;;) {
    const head = readHead(raw, pos);
    if (!head.ok) return head;
    pos = head.end;
    // A proxy's answer to CONNECT (`HTTP/1.1 200 Connection established`, no fields) precedes the response.
    const proxied =
      head.fields.length === 0 && /^HTTP\/\d/.test(raw.subarray(pos, pos + 8).toString("latin1"));
    if ((head.status >= 200 || head.status < 100) && !proxied) {
      return { ok: true, response: { status: head.status, fields: head.fields }, body: raw.subarray(pos) };
    }
  }
}

function readHead(
  raw: Buffer,
  start: number,
): { ok: true; status: number; fields: Array<[string, string]>; end: number } | { ok: false; error: string } {
  const fields: Array<[string, string]> = [];
  let status = -1;
  let pos = start;
  for (;;) {
    const nl = raw.indexOf(0x0a, pos);
    const lineEnd = nl < 0 ? raw.length : nl;
    let line = raw.subarray(pos, lineEnd).toString("latin1");
    if (line.endsWith("\r")) line = line.slice(0, -1);
    pos = nl < 0 ? raw.length : nl + 1;
    if (status < 0) {
      const m = STATUS_LINE.exec(line);
      if (m === null)
        return {
          ok: false,
          error: `the first line is not an HTTP status line: ${JSON.stringify(line.slice(0, 60))}`,
        };
      status = Number(m[2]);
      continue;
    }
    if (line === "") return { ok: true, status, fields, end: pos };
    if (line.startsWith(" ") || line.startsWith("\t"))
      return { ok: false, error: "a folded header line (obs-fold)" };
    const colon = line.indexOf(":");
    const name = colon < 0 ? "" : line.slice(0, colon);
    if (!FIELD_NAME.test(name))
      return { ok: false, error: `not a header line: ${JSON.stringify(line.slice(0, 60))}` };
    fields.push([name.toLowerCase(), line.slice(colon + 1).replace(/^[ \t]+|[ \t]+$/g, "")]);
    if (nl < 0) return { ok: true, status, fields, end: pos }; // a head saved without its final empty line
  }
}

/** The command's shell: prints the outcome and returns the exit code. */
export async function runVerifyCommand(response: string | undefined, flags: VerifyFlags): Promise<number> {
  const outcome = await verifyCommand(response, flags, async () => {
    const chunks: Buffer[] = [];
    for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
    return Buffer.concat(chunks);
  });
  if (flags.json) {
    process.stdout.write(
      `${JSON.stringify({ ok: outcome.exitCode === 0, summary: outcome.line, notes: outcome.details, result: outcome.result }, null, 2)}\n`,
    );
  } else if (outcome.exitCode === 0) {
    process.stdout.write(`${outcome.line}\n`);
    for (const d of outcome.details) process.stderr.write(`  ${d}\n`);
  } else {
    process.stderr.write(`meridian: ${outcome.line}\n`);
    for (const d of outcome.details) process.stderr.write(`  ${d}\n`);
  }
  return outcome.exitCode;
}
