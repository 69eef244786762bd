// The async service on its real Unix socket: only its ingress's context opens it (a replica or a local user
// that reaches the socket cannot forge one), bodies beyond 256 KiB are refused however they are framed, the
// queue's bound answers 429, cancel follows the reference's rule, and the counts it offers hold no id.
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import pino from "pino";
import { Agent, request } from "undici";
import { afterEach, describe, expect, it } from "vitest";
import { ASYNC_CONTEXT_HEADER, type AsyncContext } from "../gateway/async.ts";
import { AsyncService } from "./async-service.ts";

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

const TOKEN = "the-plane-token";

function context(over: Partial<AsyncContext> = {}): AsyncContext {
  return {
    token: TOKEN,
    op: "predict",
    request_id: null,
    form: "regional",
    model_id: "aaaaaaa1",
    team_id: "t1",
    environment: "prod-eu",
    deployment_id: "d1",
    region: "eu",
    target: { kind: "environment", name: "prod-eu" },
    ...over,
  };
}

async function start(maxLive = 100) {
  const dir = await mkdtemp(join(tmpdir(), "meridian-async-svc-"));
  const service = new AsyncService({
    plane: "eu-1",
    dir: join(dir, "async"),
    socketPath: join(dir, "async", "s.sock"),
    token: TOKEN,
    maxLive,
    // No replica: requests stay QUEUED, so the service's answers are all there is to see.
    worker: {
      replicas: () => [],
      resolve: () => ({ ok: true, deploymentId: "d1" }),
      webhookSecrets: async () => [],
    },
    logger: pino({ level: "silent" }),
  });
  await service.start();
  const agent = new Agent({ connect: { socketPath: join(dir, "async", "s.sock") } });
  cleanups.push(async () => {
    await agent.close();
    await service.stop();
  });
  const call = async (
    method: string,
    path: string,
    ctx: AsyncContext | string | null,
    body?: string | AsyncIterable<Buffer>,
  ) => {
    const headers: Record<string, string> = { "content-type": "application/json" };
    if (ctx !== null) {
      headers[ASYNC_CONTEXT_HEADER] =
        typeof ctx === "string" ? ctx : Buffer.from(JSON.stringify(ctx)).toString("base64url");
    }
    const res = await request(`http://localhost${path}`, {
      method: method as "POST",
      dispatcher: agent,
      headers,
      ...(body === undefined ? {} : { body: typeof body === "string" ? body : Readable.from(body) }),
    });
    return { status: res.statusCode, json: (await res.body.json()) as any };
  };
  return { service, call };
}

describe("AsyncService", () => {
  it("answers only its ingress: no context, a forged token or garbage is 403", async () => {
    const { service, call } = await start();
    const body = JSON.stringify({ model_input: {} });
    expect((await call("POST", "/async_predict", null, body)).status).toBe(403);
    expect((await call("POST", "/async_predict", context({ token: "guess" }), body)).status).toBe(403);
    expect((await call("POST", "/async_predict", "not-base64-json", body)).status).toBe(403);
    expect(service.queue.size).toBe(0);
  });

  it("refuses a body beyond 256 KiB sent chunked, and stores nothing", async () => {
    const { service, call } = await start();
    async function* chunks() {
      yield Buffer.from('{"model_input":"');
      for (let i = 0; i < 40; i++) yield Buffer.alloc(8 * 1024, 0x61);
      yield Buffer.from('"}');
    }
    const res = await call("POST", "/async_predict", context(), chunks());
    expect([res.status, res.json.error_code]).toEqual([413, "payload_too_large"]);
    expect(service.queue.size).toBe(0);
  });

  it("answers 429 at its bound, and cancels by the reference's rule", async () => {
    const { service, call } = await start(2);
    const body = JSON.stringify({ model_input: { n: 1 } });
    const a = await call("POST", "/async_predict", context(), body);
    const b = await call("POST", "/async_predict", context(), body);
    expect([a.status, b.status]).toEqual([201, 201]);
    const full = await call("POST", "/async_predict", context(), body);
    expect([full.status, full.json.error_code]).toEqual([429, "async_queue_full"]);

    const id = a.json.request_id as string;
    const statusCtx = context({ op: "request", request_id: id, target: null, deployment_id: null });
    const cancel = await call("DELETE", `/async_request/${id}`, statusCtx);
    expect(cancel.json).toMatchObject({ request_id: id, canceled: true });
    expect((await call("DELETE", `/async_request/${id}`, statusCtx)).json.canceled).toBe(false);
    const s = await call("GET", `/async_request/${id}`, statusCtx);
    expect(s.json).toMatchObject({
      status: "CANCELED",
      webhook_status: "NO_WEBHOOK_PROVIDED",
      model_id: "aaaaaaa1",
    });
    // Another model's caller, or another environment's on the regional form, does not see it.
    const other = await call("GET", `/async_request/${id}`, { ...statusCtx, model_id: "bbbbbbb2" });
    expect([other.status, other.json.error_code]).toEqual([404, "async_request_not_found"]);
    const otherEnv = await call("GET", `/async_request/${id}`, { ...statusCtx, environment: "staging" });
    expect(otherEnv.status).toBe(404);
    // A cancelled one makes room.
    expect((await call("POST", "/async_predict", context(), body)).status).toBe(201);

    expect(service.counts().get("d1")).toEqual({ queued: 2, in_progress: 0 });
    const q = await call("GET", "/async_queue_status", context({ op: "queue_status" }));
    expect(q.json).toEqual({
      model_id: "aaaaaaa1",
      deployment_id: "d1",
      num_queued_requests: 2,
      num_in_progress_requests: 0,
    });
  });

  it("refuses http and private-address webhooks unless the plane allows them", async () => {
    const { call } = await start();
    for (const url of [
      "http://hooks.example/x",
      "https://127.0.0.1/x",
      "https://[::1]/x",
      "https://169.254.169.254/",
    ]) {
      const res = await call(
        "POST",
        "/async_predict",
        context(),
        JSON.stringify({ model_input: {}, webhook_endpoint: url }),
      );
      expect([res.status, res.json.detail?.field], url).toEqual([400, "webhook_endpoint"]);
    }
    const ok = await call(
      "POST",
      "/async_predict",
      context(),
      JSON.stringify({ model_input: {}, webhook_endpoint: "https://hooks.example/x" }),
    );
    expect(ok.status).toBe(201);
  });
});
