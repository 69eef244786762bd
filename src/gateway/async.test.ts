// The ingress's async hook over real sockets, on both transports: two planes (us-1 the global ingress, eu-1)
// whose async services are stand-ins on Unix sockets that record what reaches them. What a client sends
// never forges the gateway's context; the API key stops at the ingress; the standard form is handed into eu
// over the hop with the client's method; refusals (wrong region, too large, smuggling) reach no service.
import { createHash } from "node:crypto";
import { mkdtemp } from "node:fs/promises";
import http from "node:http";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { newAsyncRequestId } from "../core/async.ts";
import type { PlaneRef, PlaneSnapshot } from "../core/snapshot.ts";
import { generateSigningKey, type SigningKey } from "../lib/keys.ts";
import { ASYNC_CONTEXT_HEADER, readAsyncContext } from "./async.ts";
import { createIngress, type Ingress, type IngressTransport } from "./ingress.ts";
import { call } from "./testing.ts";

const DOMAIN = "meridian.test";
const M1 = "aaaaaaa1";
const STD = `model-${M1}.${DOMAIN}`;
const REG = `model-${M1}-prod-eu.${DOMAIN}`;
const sha = (k: string) => createHash("sha256").update(k).digest("hex");
const PLANES = [
  { name: "us-1", region: "us", ip: "127.0.1.1", global: true },
  { name: "eu-1", region: "eu", ip: "127.0.2.1", global: false },
] as const;
const KEYS = new Map<string, SigningKey>(PLANES.map((p) => [p.name, generateSigningKey()]));
const CONTROL = generateSigningKey();

interface Seen {
  method: string;
  path: string;
  headers: http.IncomingHttpHeaders;
  rawHeaders: string[];
}

for (const transport of ["wire", "http"] as IngressTransport[]) {
  describe(`the async hook (${transport} transport)`, () => {
    const refs: PlaneRef[] = [];
    const ingresses = new Map<string, Ingress>();
    const seen = new Map<string, Seen[]>();
    const services: http.Server[] = [];
    const tokens = new Map<string, string>();

    const snapshotFor = (name: string): PlaneSnapshot => ({
      revision: 1,
      domain: DOMAIN,
      plane: refs.find((p) => p.name === name)!,
      planes: refs,
      plane_keys: PLANES.filter((p) => p.name !== name).map((p) => ({
        plane: p.name,
        key_id: KEYS.get(p.name)!.keyId,
        public_key: KEYS.get(p.name)!.publicKey,
        retired_at: null,
      })),
      control_key: { key_id: CONTROL.keyId, public_key: CONTROL.publicKey },
      api_keys: [{ hash: sha("k1"), prefix: "k1", team_id: "t1", category: "PERSONAL", model_ids: null }],
      models: [
        {
          id: M1,
          team_id: "t1",
          name: "m1",
          development_deployment_id: null,
          environments: [
            { name: "production", deployment_id: "d-prod", region: null, standard_endpoint_policy: "allow" },
            { name: "prod-eu", deployment_id: "d-eu", region: "eu", standard_endpoint_policy: "allow" },
          ],
          deployments: [
            { id: "d-prod", region: null, ready_planes: [] },
            { id: "d-eu", region: "eu", ready_planes: ["eu-1"] },
          ],
        },
      ],
      replicas: [],
    });

    beforeAll(async () => {
      const dir = await mkdtemp(join(tmpdir(), "meridian-async-hook-"));
      for (const p of PLANES) {
        refs.push({ name: p.name, region: p.region, ingress: [], global_ingress: p.global });
      }
      for (const p of PLANES) {
        const socketPath = join(dir, `${p.name}.sock`);
        const list: Seen[] = [];
        seen.set(p.name, list);
        const service = http.createServer((req, res) => {
          req.resume();
          req.on("end", () => {
            list.push({
              method: req.method ?? "",
              path: req.url ?? "",
              headers: req.headers,
              rawHeaders: req.rawHeaders,
            });
            res.writeHead(201, { "content-type": "application/json", "x-meridian-region": "forged" });
            res.end(JSON.stringify({ request_id: newAsyncRequestId(p.name, new Uint8Array(12)) }));
          });
        });
        await new Promise<void>((ok) => service.listen(socketPath, ok));
        services.push(service);
        const token = `token-of-${p.name}`;
        tokens.set(p.name, token);
        const ingress = createIngress({
          plane: { name: p.name, region: p.region },
          listen: { host: p.ip, port: 0 },
          signingKey: KEYS.get(p.name)!,
          snapshot: () => snapshotFor(p.name),
          localReplicas: () => [],
          transport,
          async: { socketPath, token },
        });
        await ingress.start();
        ingresses.set(p.name, ingress);
        const ref = refs.find((r) => r.name === p.name)!;
        ref.ingress.push(`${ingress.address!.host}:${ingress.address!.port}`);
      }
    });

    afterAll(async () => {
      for (const i of ingresses.values()) await i.stop();
      for (const s of services) await new Promise<void>((ok) => s.close(() => ok()));
    });

    const send = (
      plane: string,
      o: Omit<Parameters<typeof call>[0], "address" | "key"> & { key?: string | null },
    ) => call({ address: ingresses.get(plane)!.address!, key: "k1", ...o });
    const fresh = () => {
      for (const l of seen.values()) l.length = 0;
    };

    it("hands a regional async_predict to its plane's service with the gateway's context only", async () => {
      fresh();
      const forged = Buffer.from(
        JSON.stringify({ token: "guess", op: "predict", model_id: "zzzzzzz9" }),
      ).toString("base64url");
      const res = await send("eu-1", {
        host: REG,
        path: "/async_predict",
        body: JSON.stringify({ model_input: {} }),
        headers: { [ASYNC_CONTEXT_HEADER]: forged, "x-meridian-plane": "us-1" },
      });
      expect(res.status, res.body).toBe(201);
      // The service's own proof claims are replaced by the plane's.
      expect([res.headers["x-meridian-region"], res.headers["x-meridian-plane"]]).toEqual(["eu", "eu-1"]);
      const [s] = seen.get("eu-1")!;
      expect([s!.method, s!.path]).toEqual(["POST", "/async_predict"]);
      const contexts = s!.rawHeaders.filter(
        (_, i) => i % 2 === 0 && s!.rawHeaders[i]!.toLowerCase() === ASYNC_CONTEXT_HEADER,
      );
      expect(contexts).toHaveLength(1);
      const ctx = readAsyncContext(String(s!.headers[ASYNC_CONTEXT_HEADER]), tokens.get("eu-1")!);
      expect(ctx).toMatchObject({
        op: "predict",
        model_id: M1,
        team_id: "t1",
        environment: "prod-eu",
        region: "eu",
      });
      expect(s!.headers["x-meridian-plane"]).toBeUndefined();
      // The API key stops at the ingress.
      expect(s!.headers.authorization).toBeUndefined();
      expect(seen.get("us-1")).toHaveLength(0);
    });

    it("hands the standard form into eu over the hop, and status calls with their method", async () => {
      fresh();
      const res = await send("us-1", {
        host: STD,
        path: "/environments/prod-eu/async_predict",
        body: '{"model_input":1}',
      });
      expect(res.status, res.body).toBe(201);
      expect(res.headers["x-meridian-route"]).toBe("us-1, eu-1");
      expect(seen.get("us-1")).toHaveLength(0);
      expect(seen.get("eu-1")).toHaveLength(1);
      const id = newAsyncRequestId("eu-1", new Uint8Array(12).fill(1));
      for (const method of ["GET", "DELETE"]) {
        const r = await send("us-1", { host: STD, path: `/async_request/${id}`, method, body: "" });
        expect(r.status, r.body).toBe(201);
        const last = seen.get("eu-1")!.at(-1)!;
        expect([last.method, last.path]).toEqual([method, `/async_request/${id}`]);
        expect(
          readAsyncContext(String(last.headers[ASYNC_CONTEXT_HEADER]), tokens.get("eu-1")!),
        ).toMatchObject({
          op: "request",
          request_id: id,
        });
      }
      expect(seen.get("us-1")).toHaveLength(0);
    });

    it("refuses before any service sees it: wrong region, too large, no key", async () => {
      fresh();
      const wrong = await send("us-1", { host: REG, path: "/async_predict", body: '{"model_input":1}' });
      expect([wrong.status, (wrong.json as { error_code: string }).error_code]).toEqual([
        421,
        "misdirected_request",
      ]);
      const big = await send("eu-1", {
        host: REG,
        path: "/async_predict",
        body: JSON.stringify({ model_input: "x".repeat(256 * 1024) }),
      });
      expect(big.status).toBe(413);
      const anon = await send("eu-1", { host: REG, path: "/async_predict", key: null });
      expect(anon.status).toBe(401);
      expect([seen.get("us-1")!.length, seen.get("eu-1")!.length]).toEqual([0, 0]);
    });

    it("a smuggling attempt on async_predict (Content-Length with Transfer-Encoding) reaches no service", async () => {
      fresh();
      const a = ingresses.get("eu-1")!.address!;
      const smuggled = `GET /async_request/${"0".repeat(32)} HTTP/1.1\r\nHost: ${REG}\r\nAuthorization: Api-Key k1\r\n\r\n`;
      const raw =
        `POST /async_predict HTTP/1.1\r\nHost: ${REG}\r\nAuthorization: Api-Key k1\r\n` +
        `Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n${smuggled}`;
      const answer = await new Promise<string>((ok) => {
        const socket = net.connect(a.port, a.host, () => socket.end(raw));
        let out = "";
        socket.setEncoding("latin1");
        socket.on("data", (c) => (out += c));
        socket.on("close", () => ok(out));
        socket.on("error", () => ok(out));
      });
      expect(answer.startsWith("HTTP/1.1 400")).toBe(true);
      expect(answer.match(/HTTP\/1\.1 /g)).toHaveLength(1);
      expect(seen.get("eu-1")).toHaveLength(0);
    });

    it("status calls over 20/s per key get 429 rate_limited with Retry-After; hopped calls count at the entry only", async () => {
      fresh();
      const id = newAsyncRequestId("eu-1", new Uint8Array(12).fill(2));
      // The calls of the test above reached eu-1 over the hop from us-1: counted there, not here.
      const started = Date.now();
      const answers = await Promise.all(
        Array.from({ length: 80 }, () =>
          send("eu-1", { host: REG, path: `/async_request/${id}`, method: "GET", body: "" }),
        ),
      );
      const elapsedS = (Date.now() - started) / 1000;
      const passed = answers.filter((a) => a.status === 201).length;
      const limited = answers.filter((a) => a.status === 429);
      expect(passed + limited.length).toBe(80);
      expect(passed).toBeGreaterThanOrEqual(20);
      // A full bucket, plus what refilled while the calls arrived (a loaded machine spreads them out).
      expect(passed).toBeLessThanOrEqual(20 + Math.ceil(elapsedS * 20) + 1);
      expect(limited.length).toBeGreaterThan(0);
      expect(limited[0]!.json).toMatchObject({
        error_code: "rate_limited",
        detail: { limit_per_second: 20, retry_after_seconds: 1 },
      });
      expect(limited[0]!.headers["retry-after"]).toBe("1");
      expect(seen.get("eu-1")).toHaveLength(passed);
      // Cancel is its own bucket, and async_predict is bounded by the queue, not by a rate.
      const cancel = await send("eu-1", {
        host: REG,
        path: `/async_request/${id}`,
        method: "DELETE",
        body: "",
      });
      expect(cancel.status).toBe(201);
      const predict = await send("eu-1", { host: REG, path: "/async_predict", body: '{"model_input":1}' });
      expect(predict.status).toBe(201);
      // A second later the bucket has refilled.
      await new Promise((ok) => setTimeout(ok, 1_100));
      const again = await send("eu-1", { host: REG, path: `/async_request/${id}`, method: "GET", body: "" });
      expect(again.status).toBe(201);
    });
  });
}
