// Residency evidence end to end (issue 14 items 1, 3, 4 and their "must show"), with real processes: a
// control plane, four planes (us-1 the global ingress), and the `meridian` CLI an auditor runs.
//
// "A day of traffic in compressed time": 24 slots stand for the day's hours, each with the traffic of its
// hour in a diurnal shape, through both hostname forms (the standard one enters at us-1 and hops to eu-1).
// The clocks are not faked: a plane's key is only valid from its registration (the key directory must not
// vouch for a key before that), so a plane living in a shifted past would — rightly — not verify. The
// slots' boundaries are taken between slots, when nothing is in flight, so each hour's requests fall on
// one side of them on every plane.
//
// What the clients saw (the proof headers of every response) is the expectation; the evidence document,
// assembled by the control plane from the planes' signed pieces, must verify offline and say the same.

import { type ChildProcess, spawn } from "node:child_process";
import { readdirSync, readFileSync, renameSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import SQLite from "better-sqlite3";
import { request } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CONTROL_KEY_META } from "../../src/control/keys.ts";
import type { EvidenceCount, EvidenceDocument } from "../../src/core/evidence.ts";
import { parseKeyDirectory } from "../../src/core/key-directory.ts";
import { signControlAccess } from "../../src/lib/control-access.ts";
import { verifyEvidence } from "../../src/lib/evidence.ts";
import { loadOrCreatePlaneKey, type SigningKey, signingKeyFromJwk } from "../../src/lib/keys.ts";
import { BIN, type Cluster, DOMAIN, eventually, FOUR_REGIONS, startCluster } from "../support/cluster.ts";
import { tempDir } from "../support/control.ts";

/** Requests of each compressed hour: quiet nights, a busy day. */
const DAY = [1, 1, 1, 1, 1, 2, 3, 4, 5, 5, 4, 4, 5, 5, 4, 4, 4, 3, 3, 3, 2, 2, 1, 1];

interface Seen {
  slot: number;
  form: "regional" | "standard";
  status: number;
  requestId: string;
  region: string;
  plane: string;
  route: string[];
  /** The response's header fields, in order, and its body. */
  head: Array<[string, string]>;
  body: string;
  /** When the answer arrived (ms). */
  at: number;
  request: { method: string; authority: string; path: string; body: string };
}

/** The response as `curl -i` saves it, with `extra` header fields after its own. */
function saved(s: Seen, extra: string[] = []): string {
  const fields = [...s.head.map(([n, v]) => `${n}: ${v}`)];
  for (let i = 0; i < extra.length; i += 2) fields.push(`${extra[i]}: ${extra[i + 1]}`);
  return `HTTP/1.1 ${s.status} OK\r\n${fields.join("\r\n")}\r\n\r\n${s.body}`;
}

/** The response as the client saved it, with the receipt the ingress signed (never one made here). */
function withReceipt(s: Seen, key: SigningKey): string {
  const input = s.head.find(([n]) => n === "signature-input")?.[1];
  if (input === undefined) throw new Error(`the response to ${s.requestId} carries no receipt`);
  expect(input).toContain(`keyid="${key.keyId}"`);
  return saved(s);
}

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the `meridian` CLI as an auditor would, in a directory of its own. */
function cli(args: string[], env: Record<string, string>, cwd: string): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child: ChildProcess = spawn(process.execPath, [BIN, ...args], {
      cwd,
      env: { ...process.env, MERIDIAN_DATA_DIR: join(cwd, "no-up"), ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout!.on("data", (c) => (stdout += c));
    child.stderr!.on("data", (c) => (stderr += c));
    child.once("error", reject);
    child.once("exit", (code) => resolve({ code, stdout, stderr }));
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Every file under `dir`, recursively. */
function filesUnder(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? filesUnder(path) : [path];
  });
}

/** The evidence counts the clients' proof headers imply: the entry plane's record, and the processor's. */
function countsSeen(seen: Seen[], regionOf: (plane: string) => string): EvidenceCount[] {
  const counts = new Map<string, EvidenceCount>();
  const add = (c: Omit<EvidenceCount, "count">) => {
    const key = JSON.stringify([c.processed_region, c.processed_by, c.hostname_form, c.forwarded_from]);
    const have = counts.get(key);
    if (have) have.count++;
    else counts.set(key, { ...c, count: 1 });
  };
  for (const s of seen) {
    const entry = s.route[0]!;
    const c = { processed_region: regionOf(s.plane), processed_by: s.plane, hostname_form: s.form };
    add({ ...c, forwarded_from: null });
    if (s.plane !== entry) add({ ...c, forwarded_from: entry });
  }
  const key = (c: EvidenceCount) =>
    JSON.stringify([c.processed_region, c.processed_by, c.hostname_form, c.forwarded_from]);
  return [...counts.values()].sort((a, b) => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0));
}

describe("residency evidence end to end", () => {
  let cluster: Cluster;
  let model: string;
  let work: string;
  let env: Record<string, string>;
  const seen: Seen[] = [];
  /** Slot boundaries: `bounds[h]` is the start of hour h, `bounds[24]` the end of the day. */
  const bounds: string[] = [];
  const REGION: Record<string, string> = Object.fromEntries(FOUR_REGIONS.map((p) => [p.name, p.region]));

  async function send(form: Seen["form"], slot: number): Promise<Seen> {
    const regional = form === "regional";
    const p = cluster.plane(regional ? "eu-1" : "us-1");
    const host = regional ? `model-${model}-prod-eu.${DOMAIN}` : `model-${model}.${DOMAIN}`;
    const path = regional ? "/predict" : "/environments/prod-eu/predict";
    const body = JSON.stringify({ hour: slot });
    const res = await request(`http://${p.host}:${p.port}${path}`, {
      method: "POST",
      headers: { host, authorization: `Api-Key ${cluster.api.key}`, "content-type": "application/json" },
      body,
      headersTimeout: 15_000,
      bodyTimeout: 15_000,
    });
    const text = await res.body.text();
    const at = Date.now();
    const head = Object.entries(res.headers).flatMap(([name, value]) =>
      [value ?? []].flat().map((v): [string, string] => [name, v]),
    );
    const h = (name: string) => String(res.headers[name] ?? "");
    return {
      slot,
      form,
      status: res.statusCode,
      requestId: h("x-request-id"),
      region: h("x-meridian-region"),
      plane: h("x-meridian-plane"),
      route: h("x-meridian-route")
        .split(",")
        .map((s) => s.trim()),
      head,
      body: text,
      at,
      request: { method: "POST", authority: host, path, body },
    };
  }

  const evidence = async (from: string, to: string): Promise<EvidenceDocument> => {
    const res = await cluster.api.get(
      `/v1/models/${model}/environments/prod-eu/evidence?from=${encodeURIComponent(from)}&to=${encodeURIComponent(to)}`,
    );
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    return res.body;
  };
  const directory = async () => {
    const parsed = parseKeyDirectory((await cluster.api.as(null).get("/v1/keys")).body);
    if (!parsed.ok) throw new Error(parsed.error);
    return parsed.directory;
  };
  const adminUrl = (plane: string) => {
    const p = cluster.plane(plane);
    return `http://${p.host}:${p.admin}`;
  };

  beforeAll(async () => {
    cluster = await startCluster({ planes: FOUR_REGIONS });
    work = tempDir();
    env = { MERIDIAN_API_URL: cluster.controlUrl, MERIDIAN_API_KEY: cluster.api.key! };
    const api = cluster.api;
    expect(
      (await api.patch("/v1/environment_groups/prod-eu", { region_restriction: { region: "eu" } })).status,
    ).toBe(200);
    const created = await api.createModel("evidence", "hello-js", { environment_name: "prod-eu" });
    expect(created.status, JSON.stringify(created.body)).toBe(200);
    model = created.body.model.id;
    // Warm up: both forms answer before the day begins (these requests are before its first hour).
    await eventually(async () => (await send("regional", -1)).status === 200, 60_000);
    await eventually(async () => (await send("standard", -1)).status === 200, 30_000);
    await sleep(20);
    for (const [hour, n] of DAY.entries()) {
      bounds.push(new Date().toISOString());
      await sleep(15);
      await Promise.all(
        (["regional", "standard"] as const).map(async (form) => {
          for (let i = 0; i < n; i++) seen.push(await send(form, hour));
        }),
      );
      await sleep(15);
    }
    bounds.push(new Date().toISOString());
  }, 180_000);
  afterAll(async () => cluster?.stop(), 60_000);

  it("serves the day's traffic in region eu, each response with its proof", () => {
    expect(seen).toHaveLength(2 * DAY.reduce((a, b) => a + b, 0));
    for (const s of seen) {
      expect(s.status, saved(s).slice(0, 400)).toBe(200);
      expect([s.region, s.plane]).toEqual(["eu", "eu-1"]);
      expect(s.route).toEqual(s.form === "regional" ? ["eu-1"] : ["us-1", "eu-1"]);
    }
  });

  it("exports the day's evidence, which verifies offline and counts what the clients saw", async () => {
    const keys = await cli(["keys", "--out", "directory.json"], env, work);
    expect(keys.code, keys.stderr).toBe(0);
    const exported = await cli(
      [
        "evidence",
        "--model",
        model,
        "-e",
        "prod-eu",
        "--from",
        bounds[0]!,
        "--to",
        bounds[24]!,
        "--out",
        "day.json",
      ],
      env,
      work,
    );
    expect(exported.code, exported.stderr).toBe(0);
    const verified = await cli(["verify", "--evidence", "day.json", "--keys", "directory.json"], env, work);
    expect(verified.code, verified.stderr).toBe(0);
    expect(verified.stdout).toContain(`${seen.length} client requests`);
    expect(verified.stdout).toContain("none processed outside region eu");

    const doc = JSON.parse(readFileSync(join(work, "day.json"), "utf8")) as EvidenceDocument;
    // Every plane gave its piece, the global ingress outside the region too.
    expect(doc.pieces.map((p) => p.plane)).toEqual(["au-1", "eu-1", "uk-1", "us-1"]);
    expect(doc.unreachable_planes).toEqual([]);
    expect(doc.scope).toEqual({
      model_id: model,
      environment: "prod-eu",
      restricted_to: "eu",
      from: bounds[0],
      to: bounds[24],
    });
    expect(doc.totals.client_requests).toBe(seen.length);
    expect(doc.totals.counts).toEqual(countsSeen(seen, (p) => REGION[p]!));
    expect(doc.totals.out_of_region).toBe(0);
    for (const p of doc.pieces) {
      expect(p.chain.intact, p.plane).toBe(true);
      expect(p.out_of_region).toEqual([]);
    }
    expect(doc.pieces.find((p) => p.plane === "us-1")?.requests).toBe(
      seen.filter((s) => s.form === "standard").length,
    );

    // Hours of the day: each range counts exactly its slots' requests.
    const dir = await directory();
    for (const [from, to] of [
      [0, 6],
      [6, 18],
      [18, 24],
      [9, 10],
    ] as const) {
      const part = await evidence(bounds[from]!, bounds[to]!);
      const check = verifyEvidence(part, dir);
      expect(check.ok, check.problems.join("; ")).toBe(true);
      const slots = seen.filter((s) => s.slot >= from && s.slot < to);
      expect(part.totals.client_requests, `hours ${from}–${to}`).toBe(slots.length);
      expect(part.totals.counts).toEqual(countsSeen(slots, (p) => REGION[p]!));
    }
  });

  it("holds no request-level record on the control plane after the exports", async () => {
    const ids = seen.map((s) => s.requestId);
    expect(new Set(ids).size).toBe(ids.length);
    // The planes have them (the regional ones in eu-1's audit)…
    const eu = cluster.plane("eu-1");
    const audit = await request(`${adminUrl("eu-1")}/v1/audit?request_id=${ids[0]}`, {
      headers: { authorization: `Bearer ${eu.token}` },
    });
    expect(((await audit.body.json()) as { items: unknown[] }).items).toHaveLength(1);
    // …the control plane's store, every file of its data directory and its log name none of them.
    const controlDir = join(cluster.dir, "control");
    const db = new SQLite(join(controlDir, "meridian.db"), { readonly: true });
    let dump = "";
    try {
      const tables = db.prepare("select name from sqlite_master where type = 'table'").all() as Array<{
        name: string;
      }>;
      for (const { name } of tables) {
        for (const row of db.prepare(`select * from "${name}"`).all()) {
          dump += JSON.stringify(row, (_k, v) => (Buffer.isBuffer(v) ? v.toString("latin1") : v));
        }
      }
    } finally {
      db.close();
    }
    expect(dump.length).toBeGreaterThan(0);
    const files = filesUnder(controlDir).map((f) => readFileSync(f).toString("latin1"));
    const log = cluster.control.output.join("\n");
    for (const id of ids) {
      expect(dump.includes(id), `store holds ${id}`).toBe(false);
      expect(
        files.some((f) => f.includes(id)),
        `a control file holds ${id}`,
      ).toBe(false);
      expect(log.includes(id), `the control log holds ${id}`).toBe(false);
    }
  });

  it("still verifies a receipt, an evidence document and the audit chain of a retired key", async () => {
    const eu = cluster.plane("eu-1");
    const before = (await directory()).keys.filter((k) => k.plane === "eu-1");
    expect(before).toHaveLength(1);
    const oldKey = before[0]!;
    const receipt = seen.find((s) => s.form === "regional")!;
    const oldSigningKey = (await loadOrCreatePlaneKey(join(eu.dataDir, "plane.key"))).key;
    expect(oldSigningKey.keyId).toBe(oldKey.key_id);
    writeFileSync(join(work, "old-response.txt"), withReceipt(receipt, oldSigningKey));

    // The operator rotates eu-1's key: the key file is moved away, the plane restarted with a new one.
    await eu.stop();
    renameSync(join(eu.dataDir, "plane.key"), join(eu.dataDir, "plane.key.retired"));
    await eu.start();
    const after = await eventually(async () => {
      const keys = (await directory()).keys.filter((k) => k.plane === "eu-1");
      return keys.length === 2 && keys.some((k) => k.retired_at !== null) ? keys : null;
    });
    const retired = after.find((k) => k.key_id === oldKey.key_id)!;
    const current = after.find((k) => k.key_id !== oldKey.key_id)!;
    expect(retired.retired_at).not.toBeNull();
    expect(current.retired_at).toBeNull();
    // Every answer counts, the refusals while its replica starts again included: each is a client request.
    const answered: Seen[] = [];
    const fresh = await eventually(async () => {
      const s = await send("regional", 99).catch(() => null);
      if (s !== null) answered.push(s);
      return s?.status === 200 ? s : null;
    }, 30_000);
    const newSigningKey = (await loadOrCreatePlaneKey(join(eu.dataDir, "plane.key"))).key;
    expect(newSigningKey.keyId).toBe(current.key_id);
    writeFileSync(join(work, "new-response.txt"), withReceipt(fresh, newSigningKey));

    const keys = await cli(["keys", "--out", "directory-2.json"], env, work);
    expect(keys.code, keys.stderr).toBe(0);
    const old = await cli(["verify", "--keys", "directory-2.json", "old-response.txt"], env, work);
    expect(old.code, old.stderr).toBe(0);
    expect(old.stdout).toContain(`by plane eu-1, key ${oldKey.key_id}`);
    // With the request as the client knows it, not the response's word for it.
    const mine = await cli(
      [
        "verify",
        "--keys",
        "directory-2.json",
        "--url",
        `http://${receipt.request.authority}${receipt.request.path}`,
        "--method",
        "POST",
        "--data",
        receipt.request.body,
        "old-response.txt",
      ],
      env,
      work,
    );
    expect(mine.code, mine.stderr).toBe(0);
    const notMine = await cli(
      ["verify", "--keys", "directory-2.json", "--data", '{"hour":1}', "old-response.txt"],
      env,
      work,
    );
    expect(notMine.code).toBe(1);
    const now = await cli(["verify", "--keys", "directory-2.json", "new-response.txt"], env, work);
    expect(now.code, now.stderr).toBe(0);
    expect(now.stdout).toContain(`key ${current.key_id}`);
    // Swapping the directories' roles: the old directory does not know the new key.
    const unknown = await cli(["verify", "--keys", "directory.json", "new-response.txt"], env, work);
    expect(unknown.code).toBe(1);

    // The day's document, signed by the retired key, still verifies against the new directory.
    const day = await cli(["verify", "--evidence", "day.json", "--keys", "directory-2.json"], env, work);
    expect(day.code, day.stderr).toBe(0);
    // A document over the rotation: eu-1 signs with its new key, its chain holds seals of both.
    const span = await evidence(bounds[0]!, new Date().toISOString());
    const check = verifyEvidence(span, await directory());
    expect(check.ok, check.problems.join("; ")).toBe(true);
    const piece = span.pieces.find((p) => p.plane === "eu-1")!;
    expect(piece.signature?.keyid).toBe(current.key_id);
    expect(piece.chain.intact).toBe(true);
    expect(span.totals.client_requests).toBe(seen.length + answered.length);
    // The whole audit directory, both keys' seals, checks offline.
    const chain = await cli(
      ["verify", "--audit", join(eu.dataDir, "audit"), "--keys", "directory-2.json"],
      env,
      work,
    );
    expect(chain.code, chain.stderr).toBe(0);
    expect(chain.stdout).toContain("audit chain intact");
  }, 120_000);

  it("says where a modified, deleted or reordered audit record breaks the chain", async () => {
    const eu = cluster.plane("eu-1");
    const dir = join(eu.dataDir, "audit");
    // The first file of the chain: the day's records, written by the process before the rotation, closed.
    const file = readdirSync(dir)
      .filter((n) => n.startsWith("audit-"))
      .sort()[0]!;
    const path = join(dir, file);
    const original = readFileSync(path);
    const lines = original.toString("latin1").split("\n");
    const offsetOf = (i: number) => lines.slice(0, i).reduce((n, l) => n + l.length + 1, 0);
    // Two adjacent records of one batch, inside the day.
    const isRecord = (l: string | undefined) => l?.startsWith('{"time":"') === true;
    const i = lines.findIndex(
      (l, j) =>
        isRecord(l) &&
        l.includes(`"model_id":"${model}"`) &&
        l.slice(9, 33) > bounds[1]! &&
        l.slice(9, 33) < bounds[23]! &&
        isRecord(lines[j + 1]),
    );
    expect(i).toBeGreaterThan(0);

    const exportOk = await request(`${adminUrl("eu-1")}/v1/audit/export?from=${bounds[0]}&to=${bounds[24]}`, {
      headers: { authorization: `Bearer ${eu.token}` },
    });
    expect(exportOk.statusCode).toBe(200);
    expect(exportOk.headers["content-type"]).toBe("application/x-ndjson");
    writeFileSync(join(work, "eu-1.export.jsonl"), await exportOk.body.text());
    const exportCheck = await cli(
      ["verify", "--audit-export", "eu-1.export.jsonl", "--keys", "directory-2.json"],
      env,
      work,
    );
    expect(exportCheck.code, exportCheck.stderr).toBe(0);

    const tamperings: Array<{ kind: string; lines: string[]; offset: number }> = [
      {
        kind: "record_modified",
        lines: lines.map((l, j) => (j === i ? l.replace('"status":200', '"status":201') : l)),
        offset: offsetOf(i),
      },
      { kind: "record_deleted", lines: lines.filter((_, j) => j !== i), offset: offsetOf(i) },
      {
        kind: "records_reordered",
        lines: lines.map((l, j) => (j === i ? lines[i + 1]! : j === i + 1 ? lines[i]! : l)),
        offset: offsetOf(i),
      },
    ];
    try {
      for (const t of tamperings) {
        writeFileSync(path, Buffer.from(t.lines.join("\n"), "latin1"));
        // The plane's own piece says where, and the document then fails verification with it.
        const doc = await evidence(bounds[0]!, bounds[24]!);
        const piece = doc.pieces.find((p) => p.plane === "eu-1")!;
        expect(piece.chain.intact, t.kind).toBe(false);
        expect(piece.chain.break).toMatch(new RegExp(`^${t.kind} at ${file}:${t.offset}: `));
        writeFileSync(join(work, `${t.kind}.json`), JSON.stringify(doc));
        const v = await cli(
          ["verify", "--evidence", `${t.kind}.json`, "--keys", "directory-2.json"],
          env,
          work,
        );
        expect(v.code, t.kind).toBe(1);
        expect(v.stderr).toContain(
          `its plane found its audit chain broken: ${t.kind} at ${file}:${t.offset}`,
        );
        // The offline check of the plane's directory names the same place.
        const a = await cli(["verify", "--audit", dir, "--keys", "directory-2.json"], env, work);
        expect(a.code, t.kind).toBe(1);
        expect(a.stderr).toContain(`audit chain broken at ${file} offset ${t.offset}`);
        expect(a.stderr).toContain(`(${t.kind})`);
        writeFileSync(path, original);
      }
    } finally {
      writeFileSync(path, original);
    }
    const restored = await evidence(bounds[0]!, bounds[24]!);
    expect(restored.pieces.every((p) => p.chain.intact)).toBe(true);
  }, 120_000);

  it("opens a plane's evidence to the control plane's signature, and its audit export to its credential only", async () => {
    const eu = cluster.plane("eu-1");
    const db = new SQLite(join(cluster.dir, "control", "meridian.db"), { readonly: true });
    const stored = db.prepare("select value from meta where key = ?").get(CONTROL_KEY_META) as {
      value: string;
    };
    db.close();
    const control = signingKeyFromJwk(stored.value);
    const q = new URLSearchParams({
      model_id: model,
      environment: "prod-eu",
      restricted_to: "eu",
      from: bounds[0]!,
      to: bounds[24]!,
    });
    const target = `/v1/evidence?${q}`;
    const get = async (path: string, headers: Record<string, string> = {}) => {
      const res = await request(`${adminUrl("eu-1")}${path}`, { headers });
      const text = await res.body.text();
      return { status: res.statusCode, body: text.startsWith("{") ? JSON.parse(text) : text };
    };
    expect((await get(target)).status).toBe(401);
    const byCredential = await get(target, { authorization: `Bearer ${eu.token}` });
    expect(byCredential.status).toBe(200);
    expect(byCredential.body.kind).toBe("meridian-evidence-piece");
    const signed = signControlAccess(control, { plane: "eu-1", method: "GET", target }, Date.now());
    expect((await get(target, { "x-meridian-control": signed })).status).toBe(200);
    // Once only; not on another scope; not for the audit export; not signed by a plane's key.
    expect((await get(target, { "x-meridian-control": signed })).status).toBe(401);
    const other = `/v1/evidence?${new URLSearchParams({ ...Object.fromEntries(q), environment: "production" })}`;
    const forOne = signControlAccess(control, { plane: "eu-1", method: "GET", target }, Date.now());
    expect((await get(other, { "x-meridian-control": forOne })).status).toBe(401);
    const exportPath = "/v1/audit/export";
    const toExport = signControlAccess(
      control,
      { plane: "eu-1", method: "GET", target: exportPath },
      Date.now(),
    );
    expect((await get(exportPath, { "x-meridian-control": toExport })).status).toBe(401);
    const planeKey = (await loadOrCreatePlaneKey(join(cluster.plane("us-1").dataDir, "plane.key"))).key;
    const forged = signControlAccess(planeKey, { plane: "eu-1", method: "GET", target }, Date.now());
    expect((await get(target, { "x-meridian-control": forged })).status).toBe(401);
    // Bad scopes and ranges are refused with the field named, before any audit is read.
    const auth = { authorization: `Bearer ${eu.token}` };
    for (const [field, value] of [
      ["model_id", "NOT-AN-ID"],
      ["from", "yesterday"],
      ["restricted_to", ""],
    ] as const) {
      const bad = new URLSearchParams(q);
      bad.set(field, value);
      const res = await get(`/v1/evidence?${bad}`, auth);
      expect(res.status, field).toBe(400);
      expect(res.body).toMatchObject({ error_code: "invalid_request", detail: { field } });
    }
    const badExport = await get("/v1/audit/export?to=tomorrow", auth);
    expect(badExport.status).toBe(400);
    expect(badExport.body.detail).toEqual({ field: "to" });
    // The audit files are the plane's alone.
    const dir = join(eu.dataDir, "audit");
    expect(statSync(dir).mode & 0o777).toBe(0o700);
    for (const f of readdirSync(dir)) expect(statSync(join(dir, f)).mode & 0o777, f).toBe(0o600);
  });

  it("names a plane that does not answer; the document is saved, and does not verify", async () => {
    await cluster.plane("uk-1").stop();
    const partial = await cli(
      [
        "evidence",
        "--model",
        model,
        "-e",
        "prod-eu",
        "--from",
        bounds[0]!,
        "--to",
        bounds[24]!,
        "--out",
        "partial.json",
      ],
      env,
      work,
    );
    expect(partial.code).toBe(1);
    expect(partial.stderr).toContain("plane(s) uk-1 did not answer");
    const doc = JSON.parse(readFileSync(join(work, "partial.json"), "utf8")) as EvidenceDocument;
    expect(doc.unreachable_planes).toEqual(["uk-1"]);
    expect(doc.pieces.map((p) => p.plane)).toEqual(["au-1", "eu-1", "us-1"]);
    const v = await cli(["verify", "--evidence", "partial.json", "--keys", "directory-2.json"], env, work);
    expect(v.code).toBe(1);
    expect(v.stderr).toContain("plane uk-1 did not answer: its requests are not in the document");
  });
});
