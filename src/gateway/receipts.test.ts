// Receipts at the ingress (docs/evidence.md#receipts), on both transports, over real sockets: three planes
// (us-1 the global ingress; eu-1, eu-2 with eu-2 serving the regional deployment), a real HTTP server as the
// replica, and the offline verifier and an independent RFC 9421 implementation checking what clients got.

import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import http from "node:http";
import https from "node:https";
import type { AddressInfo } from "node:net";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { createVerifier, httpbis } from "http-message-signatures";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type DirectoryKey, type KeyDirectory, keyDirectory } from "../core/key-directory.ts";
import type { PlaneKey, PlaneRef, PlaneSnapshot } from "../core/snapshot.ts";
import { generateSigningKey, type SigningKey } from "../lib/keys.ts";
import {
  contentDigest,
  type ReceiptVerification,
  type SavedResponse,
  signReceipt,
  verifyReceipt,
} from "../lib/receipts.ts";
import { createIngress, type Ingress, type IngressTransport } from "./ingress.ts";

const DOMAIN = "meridian.test";
const M1 = "rcpt0001";
const STD = `model-${M1}.${DOMAIN}`;
const REG = `model-${M1}-prod-eu.${DOMAIN}`;
const KEY = "k-receipts";
/** The ingresses' receipt body bound here (`receiptBodyBytes`), smaller than the default to test past it. */
const BOUND = 64 * 1024;
const sha = (k: string) => createHash("sha256").update(k).digest("hex");

const PLANES = [
  { name: "us-1", region: "us", ip: "127.0.1.1", global: true },
  { name: "eu-1", region: "eu", ip: "127.0.2.1", global: false },
  { name: "eu-2", region: "eu", ip: "127.0.2.2", global: false },
] as const;
type PlaneName = (typeof PLANES)[number]["name"];
const KEYS = new Map<string, SigningKey>(PLANES.map((p) => [p.name, generateSigningKey()]));
const keyOf = (name: string) => KEYS.get(name)!;

/** The key directory the control plane would publish for these planes. */
const DIRECTORY: KeyDirectory = keyDirectory(
  PLANES.map(
    (p): DirectoryKey => ({
      key_id: keyOf(p.name).keyId,
      plane: p.name,
      region: p.region,
      alg: "ed25519",
      public_key: keyOf(p.name).publicKey,
      valid_from: new Date(Date.now() - 3_600_000).toISOString(),
      retired_at: null,
    }),
  ),
  new Date(),
);

/**
 * The replica: echoes what it got as JSON (with a Content-Length); `x-test-mode: stream` answers three
 * chunks 200 ms apart; `spoof` signs its answer with a member that claims to be the plane's receipt, and one
 * of its own.
 */
async function startReplica(): Promise<{ endpoint: string; close(): Promise<void> }> {
  const server = http.createServer((req, res) => {
    let bytes = 0;
    req.on("data", (c: Buffer) => {
      bytes += c.length;
    });
    req.on("end", () => {
      const mode = req.headers["x-test-mode"];
      if (mode === "stream") {
        res.writeHead(200, { "content-type": "text/event-stream" });
        res.write("data: a\n\n");
        setTimeout(() => res.write("data: b\n\n"), 200);
        setTimeout(() => res.end("data: c\n\n"), 400);
        return;
      }
      if (mode === "big" || mode === "pieces") {
        // A body of declared length written in pieces; "big" is over the ingress's receipt bound.
        const size = mode === "big" ? BOUND + 1 : BOUND;
        res.writeHead(200, { "content-type": "application/octet-stream", "content-length": size });
        const all = Buffer.alloc(size, 0x61);
        const q = Math.floor(size / 4);
        res.write(all.subarray(0, q));
        setTimeout(() => res.write(all.subarray(q, 2 * q)), 20);
        setTimeout(() => res.end(all.subarray(2 * q)), 40);
        return;
      }
      if (mode === "short") {
        // Declares more than it sends, then dies.
        res.writeHead(200, { "content-type": "application/json", "content-length": "100" });
        res.write('{"partial":');
        setTimeout(() => res.destroy(), 50);
        return;
      }
      const body = JSON.stringify({ bytes });
      const headers: Record<string, string> = {
        "content-type": "application/json",
        "content-length": String(Buffer.byteLength(body)),
      };
      // A replica's own digest, wrong: the plane's replaces it.
      if (mode === "digest") headers["content-digest"] = contentDigest("not the body");
      if (mode === "spoof") {
        headers["signature-input"] =
          'receipt=("@status");created=1;keyid="x";alg="ed25519";tag="meridian-receipt", forged=("@status");created=1;keyid="y";alg="ed25519";tag="meridian-receipt", own=("content-type");created=1;keyid="model"';
        headers.signature = "receipt=:AAAA:, forged=:AAAA:, own=:BBBB:";
        headers["x-meridian-receipt-request"] = 'method="GET"';
      }
      res.writeHead(200, headers);
      res.end(body);
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.2.2", r));
  return {
    endpoint: `127.0.2.2:${(server.address() as AddressInfo).port}`,
    close: () =>
      new Promise<void>((r) => {
        server.close(() => r());
        server.closeAllConnections();
      }),
  };
}

interface Got {
  status: number;
  /** Field lines as received, names lowercased: what `curl -D` saves. */
  fields: Array<[string, string]>;
  body: string;
  /** Milliseconds from the first byte of the head to each body chunk. */
  chunkTimes: number[];
  header(name: string): string | undefined;
}

interface Send {
  host: string;
  path: string;
  body?: string | Buffer;
  chunked?: boolean;
  key?: string | null;
  headers?: Record<string, string>;
}

function send(address: { host: string; port: number }, o: Send): Promise<Got> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = { host: o.host, ...o.headers };
    if (o.key !== null) headers.authorization = `Api-Key ${o.key ?? KEY}`;
    const body = o.body ?? "";
    if (o.chunked) headers["transfer-encoding"] = "chunked";
    else headers["content-length"] = String(Buffer.byteLength(body));
    const req = http.request({ ...address, method: "POST", path: o.path, headers, agent: false }, (res) => {
      const t0 = performance.now();
      const chunks: Buffer[] = [];
      const chunkTimes: number[] = [];
      res.on("data", (c: Buffer) => {
        chunks.push(c);
        chunkTimes.push(performance.now() - t0);
      });
      res.on("end", () => {
        const fields: Array<[string, string]> = [];
        for (let i = 0; i < res.rawHeaders.length; i += 2)
          fields.push([res.rawHeaders[i]!.toLowerCase(), res.rawHeaders[i + 1]!]);
        resolve({
          status: res.statusCode ?? 0,
          fields,
          body: Buffer.concat(chunks).toString("utf8"),
          chunkTimes,
          header: (name) => fields.find(([n]) => n === name)?.[1],
        });
      });
      res.on("error", reject);
    });
    req.on("error", reject);
    if (o.chunked && Buffer.isBuffer(body)) {
      // Several writes, so the body arrives at the ingress in more than one piece.
      for (let at = 0; at < body.length; at += 16 * 1024) req.write(body.subarray(at, at + 16 * 1024));
      req.end();
    } else {
      req.end(body);
    }
  });
}

const saved = (g: Got): SavedResponse => ({ status: g.status, fields: g.fields });
const verify = (g: Got | SavedResponse, request?: Parameters<typeof verifyReceipt>[2]) =>
  verifyReceipt("fields" in g ? { status: g.status, fields: g.fields } : g, DIRECTORY, request);
const withField = (g: Got, name: string, value: string): SavedResponse => ({
  status: g.status,
  fields: g.fields.map(([n, v]): [string, string] => [n, n === name ? value : v]),
});
const fail = (r: ReceiptVerification) => (r.ok ? "verified" : r.reason);

describe.each<IngressTransport>(["wire", "http"])("receipts on the %s transport", (transport) => {
  const ingresses = new Map<PlaneName, Ingress>();
  const refs: PlaneRef[] = [];
  let replica: Awaited<ReturnType<typeof startReplica>>;
  let unsigned: Ingress;
  const snapshots = new Map<string, PlaneSnapshot>();

  function snapshotFor(name: string): PlaneSnapshot {
    const hit = snapshots.get(name);
    if (hit) return hit;
    const snap: PlaneSnapshot = {
      revision: 1,
      domain: DOMAIN,
      plane: refs.find((p) => p.name === name)!,
      planes: refs,
      plane_keys: PLANES.filter((p) => p.name !== name).map(
        (p): PlaneKey => ({
          plane: p.name,
          key_id: keyOf(p.name).keyId,
          public_key: keyOf(p.name).publicKey,
          retired_at: null,
        }),
      ),
      control_key: { key_id: "c", public_key: generateSigningKey().publicKey },
      api_keys: [{ hash: sha(KEY), prefix: "k-re", team_id: "t1", category: "PERSONAL", model_ids: null }],
      models: [
        {
          id: M1,
          team_id: "t1",
          name: "m1",
          development_deployment_id: null,
          environments: [
            { name: "production", deployment_id: "d-none", region: null, standard_endpoint_policy: "allow" },
            { name: "prod-eu", deployment_id: "d-eu", region: "eu", standard_endpoint_policy: "allow" },
          ],
          deployments: [
            { id: "d-none", region: null, ready_planes: [] },
            { id: "d-eu", region: "eu", ready_planes: ["eu-2"] },
          ],
        },
      ],
      replicas: [],
    };
    snapshots.set(name, snap);
    return snap;
  }

  const at = (name: PlaneName) => ingresses.get(name)!.address!;

  beforeAll(async () => {
    replica = await startReplica();
    for (const p of PLANES) {
      const ingress = createIngress({
        plane: { name: p.name, region: p.region },
        listen: { host: p.ip, port: 0 },
        signingKey: keyOf(p.name),
        snapshot: () => snapshotFor(p.name),
        localReplicas: (id) => (p.name === "eu-2" && id === "d-eu" ? [replica.endpoint] : []),
        limits: { maxBodyBytes: 1024 * 1024, predictTimeoutMs: 3_000, receiptBodyBytes: BOUND },
        transport,
      });
      await ingress.start();
      ingresses.set(p.name, ingress);
      refs.push({
        name: p.name,
        region: p.region,
        ingress: [`${p.ip}:${ingress.address!.port}`],
        global_ingress: p.global,
      });
    }
    // eu-2 again, with receipts turned off (`--receipts off`).
    unsigned = createIngress({
      plane: { name: "eu-2", region: "eu" },
      listen: { host: "127.0.2.2", port: 0 },
      signingKey: keyOf("eu-2"),
      snapshot: () => snapshotFor("eu-2"),
      localReplicas: (id) => (id === "d-eu" ? [replica.endpoint] : []),
      receipts: false,
      transport,
    });
    await unsigned.start();
  });

  afterAll(async () => {
    for (const i of ingresses.values()) await i.stop();
    await unsigned.stop();
    await replica.close();
  });

  it("signs a response its replica answered; the receipt verifies from the response and from the request", async () => {
    const body = '{"text":"bonjour"}';
    const g = await send(at("eu-2"), { host: REG, path: "/predict", body });
    expect(g.status).toBe(200);
    expect(g.header("signature-input")).toMatch(
      new RegExp(
        `^receipt=\\("@status" "x-request-id" "x-meridian-region" "x-meridian-plane" "x-meridian-deployment-id" "x-meridian-route" "@method";req "@authority";req "@path";req "content-digest";req "content-digest"\\);created=\\d+;keyid="${keyOf("eu-2").keyId}";alg="ed25519";tag="meridian-receipt"$`,
      ),
    );
    expect(g.header("content-digest")).toBe(contentDigest(g.body));
    const created = Number(/created=(\d+)/.exec(g.header("signature-input")!)![1]);
    expect(Math.abs(created - Date.now() / 1000)).toBeLessThan(5);
    const fromEcho = verify(g);
    expect(fromEcho).toMatchObject({
      ok: true,
      receipt: {
        plane: "eu-2",
        region: "eu",
        keyId: keyOf("eu-2").keyId,
        status: 200,
        deploymentId: "d-eu",
        route: ["eu-2"],
        requestFrom: "echo",
        coversBody: true,
        request: { method: "POST", authority: REG, path: "/predict", contentDigest: contentDigest(body) },
      },
    });
    const request = { method: "POST", authority: REG, path: "/predict", contentDigest: contentDigest(body) };
    expect(verify(g, { request })).toMatchObject({ ok: true, receipt: { requestFrom: "given" } });
  });

  it("is verified by http-message-signatures, an independent RFC 9421 implementation", async () => {
    const body = '{"n":7}';
    const g = await send(at("eu-2"), { host: REG, path: "/predict", body });
    const headers: Record<string, string | string[]> = {};
    for (const [n, v] of g.fields) {
      const prev = headers[n];
      headers[n] = prev === undefined ? v : [...[prev].flat(), v];
    }
    const keyLookup = async (params: { keyid?: string }) => {
      const k = PLANES.map((p) => keyOf(p.name)).find((x) => x.keyId === params.keyid);
      return k === undefined
        ? null
        : {
            id: k.keyId,
            algs: ["ed25519" as const],
            verify: createVerifier(
              (await import("node:crypto")).createPublicKey({
                key: { kty: "OKP", crv: "Ed25519", x: k.publicKey },
                format: "jwk",
              }),
              "ed25519",
            ),
          };
    };
    const request = (b: string) => ({
      method: "POST",
      url: `http://${REG}/predict`,
      headers: { "content-digest": contentDigest(b) },
    });
    expect(
      await httpbis.verifyMessage(
        { keyLookup, requiredFields: ["@status", "x-meridian-plane", "x-meridian-region"] },
        { status: g.status, headers },
        request(body),
      ),
    ).toBe(true);
    // Another request body: the library refuses it too.
    expect(
      await httpbis.verifyMessage({ keyLookup }, { status: g.status, headers }, request('{"n":8}')),
    ).toBe(false);
  });

  it("fails verification when a covered header, the status or the request body changes, or another plane's key signed", async () => {
    const body = '{"x":1}';
    const g = await send(at("eu-2"), { host: REG, path: "/predict", body });
    expect(verify(g).ok).toBe(true);
    for (const [name, value] of [
      ["x-request-id", "another-id"],
      ["x-meridian-region", "us"],
      ["x-meridian-plane", "eu-1"],
      ["x-meridian-deployment-id", "d-other"],
      ["x-meridian-route", "us-1, eu-2"],
    ] as const) {
      expect(fail(verify(withField(g, name, value))), name).not.toBe("verified");
    }
    expect(fail(verify({ ...saved(g), status: 201 }))).toBe("bad_signature");
    // The client's own body, not the response's word for it.
    expect(fail(verify(g, { request: { contentDigest: contentDigest('{"x":2}') } }))).toBe(
      "request_mismatch",
    );
    // The echo rewritten to the other body: the signature does not cover that digest.
    const echo = g.header("x-meridian-receipt-request")!;
    const forgedEcho = echo.replace(/content-digest="[^"]*"/, `content-digest="${contentDigest('{"x":2}')}"`);
    expect(fail(verify(withField(g, "x-meridian-receipt-request", forgedEcho)))).toBe("bad_signature");
    // The same head signed by us-1's key: us-1 is not the plane the response names.
    const resigned = signReceipt(keyOf("us-1"), {
      status: g.status,
      headers: g.fields.filter(([n]) => !n.startsWith("signature")).flat(),
      request: { method: "POST", authority: REG, path: "/predict", contentDigest: contentDigest(body) },
      now: Date.now(),
    });
    if (!resigned.ok) throw new Error(resigned.reason);
    const other: SavedResponse = {
      status: g.status,
      fields: [
        ...g.fields.filter(
          ([n]) => n !== "signature" && n !== "signature-input" && n !== "x-meridian-receipt-request",
        ),
        ["signature-input", resigned.headers[1]!],
        ["signature", resigned.headers[3]!],
        ["x-meridian-receipt-request", resigned.headers[5]!],
      ],
    };
    expect(fail(verify(other))).toBe("wrong_plane");
    // A directory that lists eu-2's key under another plane, or without it.
    const moved = keyDirectory(
      DIRECTORY.keys.map((k) => (k.plane === "eu-2" ? { ...k, plane: "eu-9" } : k)),
      new Date(),
    );
    expect(fail(verifyReceipt(saved(g), moved))).toBe("wrong_plane");
    const without = keyDirectory(
      DIRECTORY.keys.filter((k) => k.plane !== "eu-2"),
      new Date(),
    );
    expect(fail(verifyReceipt(saved(g), without))).toBe("unknown_key");
  });

  it("passes the processing plane's receipt through a hop, regional and standard", async () => {
    const body = '{"via":"hop"}';
    for (const [entry, host, path, route] of [
      ["eu-1", REG, "/predict", ["eu-1", "eu-2"]],
      ["us-1", STD, "/environments/prod-eu/predict", ["us-1", "eu-2"]],
    ] as const) {
      const g = await send(at(entry), { host, path, body });
      expect(g.status, entry).toBe(200);
      expect(
        g.fields.filter(([n]) => n === "signature-input"),
        entry,
      ).toHaveLength(1);
      const r = verify(g, {
        request: { method: "POST", authority: host, path, contentDigest: contentDigest(body) },
      });
      expect(r, entry).toMatchObject({
        ok: true,
        receipt: { plane: "eu-2", region: "eu", route, coversBody: true, alsoSignedBy: [] },
      });
    }
  });

  it("signs the refusals it answers itself: 401, 421, 404, 503", async () => {
    const cases: Array<[PlaneName, Send, number]> = [
      ["eu-2", { host: REG, path: "/predict", key: "k-wrong" }, 401],
      ["us-1", { host: REG, path: "/predict" }, 421],
      ["eu-2", { host: `model-zzzzzzz9.${DOMAIN}`, path: "/production/predict" }, 404],
      ["us-1", { host: STD, path: "/production/predict" }, 503],
    ];
    for (const [plane, o, status] of cases) {
      const g = await send(at(plane), o);
      expect(g.status, `${plane} ${status}`).toBe(status);
      const r = verify(g);
      expect(r, `${plane} ${status}`).toMatchObject({
        ok: true,
        receipt: { plane, status, coversBody: true, request: { contentDigest: contentDigest("") } },
      });
    }
  });

  it("does not vouch for a body it refused before reading: the receipt then covers no digest", async () => {
    // Declared over the limit: refused on the head alone (413), the body never read.
    const g = await new Promise<Got>((resolve, reject) => {
      const socket = net.connect(at("eu-2"));
      let raw = "";
      socket.on("data", (c) => {
        raw += c.toString("latin1");
      });
      socket.on("error", reject);
      socket.on("close", () => {
        const [head, ...rest] = raw.split("\r\n\r\n");
        const [statusLine, ...lines] = head!.split("\r\n");
        const fields = lines.map((l): [string, string] => {
          const i = l.indexOf(":");
          return [l.slice(0, i).toLowerCase(), l.slice(i + 1).trim()];
        });
        resolve({
          status: Number(statusLine!.split(" ")[1]),
          fields,
          body: rest.join("\r\n\r\n"),
          chunkTimes: [],
          header: (n) => fields.find(([x]) => x === n)?.[1],
        });
      });
      socket.write(
        `POST /predict HTTP/1.1\r\nhost: ${REG}\r\nauthorization: Api-Key ${KEY}\r\ncontent-length: ${2 * 1024 * 1024}\r\n\r\n`,
      );
      setTimeout(() => socket.end(), 500);
    });
    expect(g.status).toBe(413);
    expect(g.header("signature-input")).not.toContain('"content-digest";req');
    // Its own JSON answer is covered, though: it was whole before the head.
    expect(verify(g, { body: Buffer.from(g.body) })).toMatchObject({
      ok: true,
      receipt: { coversBody: false, responseBody: "checked", status: 413 },
    });
    // A verifier who gives the body is told it cannot be checked.
    expect(fail(verify(g, { request: { contentDigest: contentDigest("x") } }))).toBe("body_not_covered");
  });

  it("binds a large streamed request body by its digest, hashed as it passes", async () => {
    const big = Buffer.alloc(300 * 1024, 7);
    for (let i = 0; i < big.length; i += 997) big[i] = i & 0xff;
    const g = await send(at("eu-1"), { host: REG, path: "/predict", body: big, chunked: true });
    expect(g.status).toBe(200);
    expect(JSON.parse(g.body)).toEqual({ bytes: big.length });
    expect(verify(g, { request: { contentDigest: contentDigest(big) } })).toMatchObject({
      ok: true,
      receipt: { plane: "eu-2", coversBody: true, route: ["eu-1", "eu-2"] },
    });
    const changed = Buffer.from(big);
    changed[1000] = changed[1000]! ^ 1;
    expect(fail(verify(g, { request: { contentDigest: contentDigest(changed) } }))).toBe("request_mismatch");
  });

  it("binds a large body of declared length (streamed upstream as it arrives) by its digest", async () => {
    const big = Buffer.alloc(200 * 1024, 3);
    big[12345] = 9;
    const g = await send(at("eu-2"), { host: REG, path: "/predict", body: big });
    expect(g.status).toBe(200);
    expect(verify(g, { request: { contentDigest: contentDigest(big) } })).toMatchObject({
      ok: true,
      receipt: { plane: "eu-2", coversBody: true },
    });
  });

  it("binds @authority normalized: lowercase, without the scheme's default port", async () => {
    const g = await send(at("eu-2"), {
      host: `${REG.toUpperCase()}:80`,
      path: "/predict?trace=1",
      body: "{}",
    });
    expect(g.status).toBe(200);
    expect(verify(g)).toMatchObject({ ok: true, receipt: { request: { authority: REG, path: "/predict" } } });
    // The authority a client computes from its URL (http://REG:80/predict) is the same.
    expect(verify(g, { request: { authority: REG, path: "/predict" } }).ok).toBe(true);
    expect(fail(verify(g, { request: { authority: `${REG}:80` } }))).toBe("request_mismatch");
  });

  it("signs a streamed response in its head, which arrives before the stream ends", async () => {
    const g = await send(at("eu-2"), {
      host: REG,
      path: "/predict",
      body: "{}",
      headers: { "x-test-mode": "stream" },
    });
    expect(g.status).toBe(200);
    expect(g.body).toBe("data: a\n\ndata: b\n\ndata: c\n\n");
    expect(g.chunkTimes.at(-1)! - g.chunkTimes[0]!).toBeGreaterThan(250); // streamed, not buffered
    expect(verify(g)).toMatchObject({ ok: true, receipt: { plane: "eu-2", status: 200 } });
  });

  it("keeps a replica's own signatures, but none that could pass for the plane's receipt", async () => {
    const g = await send(at("eu-2"), {
      host: REG,
      path: "/predict",
      body: "{}",
      headers: { "x-test-mode": "spoof" },
    });
    expect(g.status).toBe(200);
    const inputs = g.fields.filter(([n]) => n === "signature-input").map(([, v]) => v);
    const sigs = g.fields.filter(([n]) => n === "signature").map(([, v]) => v);
    expect(inputs).toHaveLength(2);
    expect(inputs[0]).toBe('own=("content-type");created=1;keyid="model"');
    expect(inputs[1]).toMatch(/^receipt=\(/);
    expect(sigs[0]).toBe("own=:BBBB:");
    expect(inputs.join(", ")).not.toContain("forged");
    expect(g.fields.filter(([n]) => n === "x-meridian-receipt-request")).toHaveLength(1);
    expect(verify(g)).toMatchObject({ ok: true, receipt: { plane: "eu-2", alsoSignedBy: [] } });
  });

  it("covers the answer's body: a changed body, or a digest rewritten to match it, fails verification", async () => {
    for (const [entry, host, path] of [
      ["eu-2", REG, "/predict"],
      ["eu-1", REG, "/predict"],
      ["us-1", STD, "/environments/prod-eu/predict"],
    ] as const) {
      const g = await send(at(entry), { host, path, body: '{"q":1}' });
      expect(g.status, entry).toBe(200);
      // One receipt, the processing plane's: the entry plane passes it and the digest through unchanged.
      expect(
        g.fields.filter(([n]) => n === "signature-input"),
        entry,
      ).toHaveLength(1);
      expect(
        g.fields.filter(([n]) => n === "content-digest"),
        entry,
      ).toEqual([["content-digest", contentDigest(g.body)]]);
      const body = Buffer.from(g.body);
      expect(verify(g, { body }), entry).toMatchObject({
        ok: true,
        receipt: { plane: "eu-2", responseBody: "checked" },
      });
      expect(verify(g), entry).toMatchObject({ ok: true, receipt: { responseBody: "not_checked" } });
      const changed = Buffer.from(g.body.replace("7", "8"));
      expect(changed.equals(body)).toBe(false);
      expect(fail(verify(g, { body: changed })), entry).toBe("response_body_changed");
      // The attacker rewrites the content-digest to fit the new body: the signature no longer holds.
      const rewritten = withField(g, "content-digest", contentDigest(changed));
      expect(fail(verify(rewritten, { body: changed })), entry).toBe("bad_signature");
      // Or drops the response digest from the covered list: the signature base changes with it.
      const dropped = withField(
        g,
        "signature-input",
        g.header("signature-input")!.replace(' "content-digest")', ")"),
      );
      expect(fail(verify(dropped, { body: changed })), entry).toBe("bad_signature");
    }
  });

  it("replaces a replica's own wrong Content-Digest with the digest of the bytes the client gets", async () => {
    const g = await send(at("eu-2"), {
      host: REG,
      path: "/predict",
      body: "{}",
      headers: { "x-test-mode": "digest" },
    });
    expect(g.status).toBe(200);
    expect(g.fields.filter(([n]) => n === "content-digest")).toEqual([
      ["content-digest", contentDigest(g.body)],
    ]);
    expect(verify(g, { body: Buffer.from(g.body) })).toMatchObject({
      ok: true,
      receipt: { responseBody: "checked" },
    });
  });

  it("covers a body of declared length up to the bound that arrives in pieces; past the bound says it does not", async () => {
    const whole = await send(at("eu-1"), {
      host: REG,
      path: "/predict",
      body: "{}",
      headers: { "x-test-mode": "pieces" },
    });
    expect(whole.status).toBe(200);
    expect(whole.body).toBe("a".repeat(BOUND));
    expect(verify(whole, { body: Buffer.from(whole.body) })).toMatchObject({
      ok: true,
      receipt: { responseBody: "checked" },
    });
    expect(fail(verify(whole, { body: Buffer.from(`${whole.body.slice(1)}b`) }))).toBe(
      "response_body_changed",
    );
    for (const mode of ["big", "stream"]) {
      const g = await send(at("eu-1"), {
        host: REG,
        path: "/predict",
        body: "{}",
        headers: { "x-test-mode": mode },
      });
      expect(g.status, mode).toBe(200);
      expect(g.header("signature-input"), mode).not.toMatch(/"content-digest"[ )]/);
      expect(g.header("content-digest"), mode).toBeUndefined();
      // Not covered: the verifier says so, and a changed body is not its to judge.
      const r = verify(g, { body: Buffer.from("anything") });
      expect(r, mode).toMatchObject({ ok: true, receipt: { plane: "eu-2", responseBody: false } });
    }
  });

  it("answers 502 when the replica sends less than it declared, with no receipt for the replica's digest", async () => {
    for (const entry of ["eu-2", "eu-1"] as const) {
      const g = await send(at(entry), {
        host: REG,
        path: "/predict",
        body: "{}",
        headers: { "x-test-mode": "short" },
      });
      expect(g.status, entry).toBe(502);
      expect(JSON.parse(g.body), entry).toMatchObject({ error_code: "replica_failed" });
      expect(g.body).not.toContain("partial");
      // The receipt is eu-2's refusal, covering the refusal's own body.
      expect(
        g.fields.filter(([n]) => n === "content-digest"),
        entry,
      ).toEqual([["content-digest", contentDigest(g.body)]]);
      expect(verify(g, { body: Buffer.from(g.body) }), entry).toMatchObject({
        ok: true,
        receipt: { plane: "eu-2", status: 502, responseBody: "checked" },
      });
    }
  });

  it("covers a replica's answer that declines a websocket upgrade (read whole by the relay)", async () => {
    const head = await new Promise<string>((resolve, reject) => {
      const socket = net.connect(at("eu-2").port, at("eu-2").host);
      let got = "";
      socket.on("data", (d: Buffer) => {
        got += d.toString("latin1");
      });
      socket.on("close", () => resolve(got));
      socket.on("error", reject);
      socket.write(
        `GET /websocket HTTP/1.1\r\nhost: ${REG}\r\nauthorization: Api-Key ${KEY}\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`,
      );
      setTimeout(() => socket.end(), 1_000);
    });
    const [top, ...rest] = head.split("\r\n\r\n");
    const lines = top!.split("\r\n");
    const fields = lines.slice(1).map((l): [string, string] => {
      const i = l.indexOf(":");
      return [l.slice(0, i).toLowerCase(), l.slice(i + 1).trim()];
    });
    const status = Number(lines[0]!.split(" ")[1]);
    const body = rest.join("\r\n\r\n");
    // The test replica has no websocket: it answers the GET as any request, with a Content-Length.
    expect(status, head).toBe(200);
    const r = verify({ status, fields }, { body: Buffer.from(body) });
    expect(r).toMatchObject({ ok: true, receipt: { plane: "eu-2", responseBody: "checked" } });
  });

  it("property: any body, query and request id through any entry plane gives a receipt that binds exactly them", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.uint8Array({ maxLength: 4096 }),
        fc.stringMatching(/^[A-Za-z0-9=&%._~-]{0,40}$/),
        fc.oneof(fc.stringMatching(/^[A-Za-z0-9._:-]{1,40}$/), fc.constant("bad id!")),
        fc.constantFrom<PlaneName>("eu-1", "eu-2"),
        fc.boolean(),
        async (bytes, query, requestId, entry, chunked) => {
          const body = Buffer.from(bytes);
          const g = await send(at(entry), {
            host: REG,
            path: query === "" ? "/predict" : `/predict?${query}`,
            body,
            chunked,
            headers: { "x-request-id": requestId },
          });
          expect(g.status).toBe(200);
          const request = {
            method: "POST",
            authority: REG,
            path: "/predict",
            contentDigest: contentDigest(body),
          };
          const answer = Buffer.from(g.body);
          const r = verify(g, { request, body: answer });
          expect(r).toMatchObject({
            ok: true,
            receipt: { plane: "eu-2", coversBody: true, responseBody: "checked" },
          });
          // The answer with one byte more, or one changed: not the one eu-2 signed.
          const longer = Buffer.concat([answer, Buffer.from(" ")]);
          expect(fail(verify(g, { request, body: longer }))).toBe("response_body_changed");
          if (r.ok && requestId !== "bad id!") expect(r.receipt.requestId).toBe(requestId);
          const other = Buffer.concat([body, Buffer.from("x")]);
          expect(fail(verify(g, { request: { ...request, contentDigest: contentDigest(other) } }))).toBe(
            "request_mismatch",
          );
        },
      ),
      { numRuns: 40 },
    );
  });

  it("over HTTPS, and over a hop from an HTTPS entry, binds the authority with https's default port dropped", async () => {
    const dir = mkdtempSync(join(tmpdir(), "meridian-receipts-tls-"));
    try {
      execFileSync(
        "openssl",
        [
          "req",
          "-x509",
          "-newkey",
          "ec",
          "-pkeyopt",
          "ec_paramgen_curve:prime256v1",
          "-nodes",
          "-days",
          "1",
          "-subj",
          `/CN=*.${DOMAIN}`,
          "-addext",
          `subjectAltName=DNS:*.${DOMAIN}`,
          "-keyout",
          join(dir, "key.pem"),
          "-out",
          join(dir, "cert.pem"),
        ],
        { stdio: "ignore" },
      );
      const cert = readFileSync(join(dir, "cert.pem"));
      const tlsPlanes: Array<[PlaneName, Ingress]> = [];
      for (const name of ["eu-1", "eu-2"] as const) {
        const p = PLANES.find((x) => x.name === name)!;
        const ingress = createIngress({
          plane: { name, region: "eu" },
          listen: { host: p.ip, port: 0 },
          tls: { cert, key: readFileSync(join(dir, "key.pem")) },
          signingKey: keyOf(name),
          // eu-1 hops to the plain-HTTP eu-2 of the suite: the client's scheme travels as X-Forwarded-Proto.
          snapshot: () => snapshotFor(name),
          localReplicas: (id) => (name === "eu-2" && id === "d-eu" ? [replica.endpoint] : []),
          transport,
        });
        await ingress.start();
        tlsPlanes.push([name, ingress]);
      }
      try {
        for (const [name, ingress] of tlsPlanes) {
          const g = await new Promise<Got>((resolve, reject) => {
            const req = https.request(
              {
                ...ingress.address!,
                method: "POST",
                path: "/predict",
                servername: REG,
                ca: cert,
                agent: false,
                headers: { host: `${REG}:443`, authorization: `Api-Key ${KEY}`, "content-length": "2" },
              },
              (res) => {
                let body = "";
                res.on("data", (c) => {
                  body += c;
                });
                res.on("end", () => {
                  const fields: Array<[string, string]> = [];
                  for (let i = 0; i < res.rawHeaders.length; i += 2)
                    fields.push([res.rawHeaders[i]!.toLowerCase(), res.rawHeaders[i + 1]!]);
                  resolve({
                    status: res.statusCode ?? 0,
                    fields,
                    body,
                    chunkTimes: [],
                    header: (n) => fields.find(([x]) => x === n)?.[1],
                  });
                });
              },
            );
            req.on("error", reject);
            req.end("{}");
          });
          expect(g.status, name).toBe(200);
          // What a client computes from https://REG:443/predict (RFC 9421 §2.2.3: the default port is omitted).
          expect(verify(g, { request: { authority: REG, path: "/predict" } }), name).toMatchObject({
            ok: true,
            receipt: { plane: "eu-2", route: name === "eu-1" ? ["eu-1", "eu-2"] : ["eu-2"] },
          });
        }
      } finally {
        for (const [, i] of tlsPlanes) await i.stop();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("signs a request held while its deployment wakes, binding the body that arrived meanwhile", async () => {
    let awake = false;
    const base = snapshotFor("eu-2");
    const sleeping: PlaneSnapshot = {
      ...base,
      models: base.models.map((m) => ({
        ...m,
        deployments: m.deployments.map((d) =>
          d.id === "d-eu" ? { ...d, scale: { wakeable: true, concurrency_target: 4, policy: null } } : d,
        ),
      })),
    };
    const waking = createIngress({
      plane: { name: "eu-2", region: "eu" },
      listen: { host: "127.0.2.2", port: 0 },
      signingKey: keyOf("eu-2"),
      snapshot: () => sleeping,
      localReplicas: (id) => (awake && id === "d-eu" ? [replica.endpoint] : []),
      wake: async () => {
        setTimeout(() => {
          awake = true;
        }, 300);
      },
      transport,
    });
    await waking.start();
    try {
      const body = Buffer.alloc(100 * 1024, 5);
      const started = Date.now();
      const g = await send(waking.address!, { host: REG, path: "/predict", body, chunked: true });
      expect(g.status).toBe(200);
      expect(Date.now() - started).toBeGreaterThanOrEqual(250); // it was held
      expect(verify(g, { request: { contentDigest: contentDigest(body) } })).toMatchObject({
        ok: true,
        receipt: { plane: "eu-2", coversBody: true, status: 200 },
      });
    } finally {
      await waking.stop();
    }
  });

  it("signs nothing with receipts off, and hashes no body", async () => {
    const g = await send(unsigned.address!, { host: REG, path: "/predict", body: "{}" });
    expect(g.status).toBe(200);
    expect(g.header("x-meridian-plane")).toBe("eu-2");
    for (const n of ["signature", "signature-input", "x-meridian-receipt-request"]) {
      expect(g.header(n), n).toBeUndefined();
    }
    expect(verify(g)).toMatchObject({ ok: false, reason: "no_receipt" });
  });

  it("answers a request without a Host unsigned: it names no authority to bind", async () => {
    const raw = await new Promise<string>((resolve, reject) => {
      const socket = net.connect(at("eu-2"));
      let out = "";
      socket.on("data", (c) => {
        out += c.toString("latin1");
      });
      socket.on("error", reject);
      socket.on("close", () => resolve(out));
      socket.end("POST /predict HTTP/1.0\r\ncontent-length: 0\r\n\r\n");
    });
    expect(raw).toMatch(/^HTTP\/1\.1 400 /);
    expect(raw).toContain("x-meridian-plane: eu-2");
    expect(raw.toLowerCase()).not.toContain("signature");
  });
});
