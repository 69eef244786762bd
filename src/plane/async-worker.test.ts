// The async worker against real sockets: a replica stand-in (an HTTP server speaking the truss predict
// route, as src/plane/testdata/server.mjs does) and a webhook receiver. The retry policy, a busy replica,
// a model's refusal, the concurrency bound, the webhook's signature, retries and their bound, and the
// addresses a webhook may not reach.
import { mkdtemp } from "node:fs/promises";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pino from "pino";
import { afterEach, describe, expect, it } from "vitest";
import { verifyWebhookSignature } from "../core/async.ts";
import { AsyncQueue, type AsyncRecord } from "./async-queue.ts";
import { AsyncWorker, type AsyncWorkerOptions } from "./async-worker.ts";

interface Server {
  url: string;
  hostPort: string;
  hits: Array<{ body: string; headers: http.IncomingHttpHeaders }>;
  close(): Promise<void>;
}

async function serve(handler: (body: string, n: number, res: http.ServerResponse) => void): Promise<Server> {
  const hits: Server["hits"] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks).toString("utf8");
      hits.push({ body, headers: req.headers });
      handler(body, hits.length, res);
    });
  });
  await new Promise<void>((ok) => server.listen(0, "127.0.0.1", ok));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}/hook`,
    hostPort: `127.0.0.1:${port}`,
    hits,
    close: () => new Promise((ok) => server.close(() => ok())),
  };
}

const json = (res: http.ServerResponse, status: number, body: unknown) => {
  res.writeHead(status, { "content-type": "application/json" });
  res.end(JSON.stringify(body));
};

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

let n = 0;
function record(over: Partial<AsyncRecord> = {}): Omit<AsyncRecord, "seq"> {
  const now = Date.now();
  return {
    id: `r${n++}`,
    model_id: "abcd1234",
    team_id: "team1",
    environment: "prod-eu",
    target: { kind: "environment", name: "prod-eu" },
    deployment_id: "dep1",
    priority: 0,
    created_at: now,
    expires_at: now + 600_000,
    webhook: null,
    retry: { max_attempts: 3, initial_delay_ms: 10, max_delay_ms: 40 },
    status: "QUEUED",
    webhook_status: "NO_WEBHOOK_PROVIDED",
    status_at: now,
    attempts: 0,
    errors: [],
    input: {},
    input_bytes: 2,
    output: null,
    ...over,
  };
}

async function setup(replica: Server | null, over: Partial<AsyncWorkerOptions> = {}) {
  const queue = new AsyncQueue({ dir: await mkdtemp(join(tmpdir(), "meridian-async-worker-")) });
  await queue.open();
  const worker = new AsyncWorker({
    queue,
    replicas: () => (replica === null ? [] : [replica.hostPort]),
    resolve: () => ({ ok: true, deploymentId: "dep1" }),
    webhookSecrets: async () => ["whsec_test"],
    logger: pino({ level: "silent" }),
    webhook: { allowHttp: true, allowPrivate: true, initialDelayMs: 10, maxDelayMs: 40, maxAttempts: 3 },
    ...over,
  });
  worker.start();
  cleanups.push(async () => {
    await worker.stop(1_000);
    await queue.close();
  });
  const add = async (over2: Partial<AsyncRecord> = {}) => {
    const r = record(over2);
    await queue.add(r);
    worker.notify();
    return queue.get(r.id)!;
  };
  return { queue, worker, add };
}

const until = async (fn: () => boolean, ms = 10_000) => {
  const end = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > end) throw new Error("condition not met in time");
    await new Promise((r) => setTimeout(r, 10));
  }
};

describe("AsyncWorker", () => {
  it("retries a failing replica per the request's retry policy, then succeeds", async () => {
    const replica = await serve((_b, i, res) =>
      i < 3 ? json(res, 500, { error: "boom" }) : json(res, 200, { ok: i }),
    );
    cleanups.push(replica.close);
    const { add } = await setup(replica);
    const r = await add();
    await until(() => r.status === "SUCCEEDED");
    expect(r.attempts).toBe(3);
    expect(replica.hits).toHaveLength(3);
  });

  it("fails after max_attempts and sends the errors to the webhook, signed", async () => {
    const replica = await serve((_b, _i, res) => json(res, 500, { error: "the model broke" }));
    const hook = await serve((_b, _i, res) => res.writeHead(204).end());
    cleanups.push(replica.close, hook.close);
    const { add } = await setup(replica);
    const r = await add({
      webhook: hook.url,
      webhook_status: "PENDING",
      retry: { max_attempts: 2, initial_delay_ms: 0, max_delay_ms: 0 },
    });
    await until(() => r.webhook_status === "SUCCEEDED");
    expect([r.status, r.attempts, replica.hits.length]).toEqual(["FAILED", 2, 2]);
    expect(r.errors[0]).toMatchObject({ code: "MODEL_PREDICT_ERROR" });
    expect(r.errors[0]!.message).toContain("the model broke");
    const d = hook.hits[0]!;
    expect(verifyWebhookSignature(String(d.headers["x-baseten-signature"]), "whsec_test", d.body)).toBe(true);
    expect(JSON.parse(d.body)).toMatchObject({
      request_id: r.id,
      data: null,
      errors: [{ code: "MODEL_PREDICT_ERROR" }],
    });
  });

  it("does not retry a model's refusal of its input", async () => {
    const replica = await serve((_b, _i, res) => json(res, 400, { error: "bad input" }));
    cleanups.push(replica.close);
    const { add } = await setup(replica);
    const r = await add();
    await until(() => r.status === "FAILED");
    expect([r.errors[0]?.code, replica.hits.length]).toEqual(["MODEL_INVALID_INPUT", 1]);
  });

  it("asks a busy replica again without counting the attempt", async () => {
    const replica = await serve((_b, i, res) =>
      i < 4 ? json(res, 429, { error: "busy" }) : json(res, 200, "done"),
    );
    cleanups.push(replica.close);
    const { add } = await setup(replica);
    const r = await add({ retry: { max_attempts: 1, initial_delay_ms: 0, max_delay_ms: 0 } });
    await until(() => r.status === "SUCCEEDED");
    expect([r.attempts, replica.hits.length]).toEqual([1, 4]);
  });

  it("runs at most `concurrency` requests per replica at once", async () => {
    let open = 0;
    let most = 0;
    const replica = await serve((_b, _i, res) => {
      open++;
      most = Math.max(most, open);
      setTimeout(() => {
        open--;
        json(res, 200, {});
      }, 30);
    });
    cleanups.push(replica.close);
    const { add } = await setup(replica, { concurrency: 2 });
    const rs = await Promise.all(Array.from({ length: 8 }, () => add()));
    await until(() => rs.every((r) => r.status === "SUCCEEDED"));
    expect(most).toBe(2);
  });

  it("waits for a replica, and expires a request that waited max_time_in_queue_seconds", async () => {
    const { add } = await setup(null);
    const r = await add({ expires_at: Date.now() + 200 });
    await new Promise((ok) => setTimeout(ok, 50));
    expect(r.status).toBe("QUEUED");
    await until(() => r.status === "EXPIRED");
    expect(r.errors[0]?.code).toBe("MODEL_UNAVAILABLE");
  });

  it("retries a failing webhook with backoff, a bounded number of times, and says so in the status", async () => {
    const replica = await serve((_b, _i, res) => json(res, 200, { out: 1 }));
    const hook = await serve((_b, _i, res) => res.writeHead(503).end());
    cleanups.push(replica.close, hook.close);
    const { add } = await setup(replica);
    const r = await add({ webhook: hook.url, webhook_status: "PENDING" });
    await until(() => r.webhook_status === "FAILED");
    expect(r.status).toBe("WEBHOOK_FAILED");
    expect(hook.hits).toHaveLength(3);
    // The output is not kept once the webhook is given up.
    expect(r.output).toBeNull();
    await new Promise((ok) => setTimeout(ok, 200));
    expect(hook.hits).toHaveLength(3);
  });

  it("delivers once the receiver recovers", async () => {
    const replica = await serve((_b, _i, res) => json(res, 200, { out: 2 }));
    const hook = await serve((_b, i, res) => res.writeHead(i < 2 ? 500 : 200).end());
    cleanups.push(replica.close, hook.close);
    const { add } = await setup(replica);
    const r = await add({ webhook: hook.url, webhook_status: "PENDING" });
    await until(() => r.webhook_status === "SUCCEEDED");
    expect([r.status, hook.hits.length]).toEqual(["SUCCEEDED", 2]);
    expect(JSON.parse(hook.hits[1]!.body).data).toEqual({ out: 2 });
  });

  it("never sends a webhook to a private address unless the plane allows it, nor over http", async () => {
    const replica = await serve((_b, _i, res) => json(res, 200, { out: 3 }));
    const hook = await serve((_b, _i, res) => res.writeHead(200).end());
    cleanups.push(replica.close, hook.close);
    const strict = await setup(replica, {
      webhook: { allowHttp: true, allowPrivate: false, maxAttempts: 3 },
    });
    const byIp = await strict.add({ webhook: hook.url, webhook_status: "PENDING" });
    const byName = await strict.add({
      webhook: hook.url.replace("127.0.0.1", "localhost"),
      webhook_status: "PENDING",
    });
    await until(() => byIp.webhook_status === "FAILED" && byName.webhook_status === "FAILED");
    const https = await setup(replica, { webhook: { allowHttp: false, allowPrivate: true } });
    const plain = await https.add({ webhook: hook.url, webhook_status: "PENDING" });
    await until(() => plain.webhook_status === "FAILED");
    // Refused before any connection: the receiver never saw one.
    expect(hook.hits).toHaveLength(0);
  });

  it("counts queued and running requests in the load signal, and wakes a deployment with nothing ready", async () => {
    const held = new Map<object, string>();
    const wakes: string[] = [];
    let endpoints: string[] = [];
    const replica = await serve((_b, _i, res) => setTimeout(() => json(res, 200, {}), 50));
    cleanups.push(replica.close);
    const { add, queue } = await setup(null, {
      replicas: () => endpoints,
      resolve: () => ({ ok: true, deploymentId: "dep1", wakeable: true }),
      load: { begin: (t, d) => held.set(t, d), end: (t) => held.delete(t) },
      wake: async (d) => {
        wakes.push(d);
      },
    });
    const a = await add();
    const b = await add();
    await until(() => held.size === 2 && wakes.length === 1);
    expect([...held.values()]).toEqual(["dep1", "dep1"]);
    // Cancelled by the service: it leaves the count.
    await queue.finish(b, "CANCELED", []);
    await until(() => held.size === 1);
    // Woken: a replica is ready, the request runs, and the count is back to zero.
    endpoints = [replica.hostPort];
    await until(() => a.status === "SUCCEEDED" && held.size === 0);
    // One wake while nothing was ready (they are at least 5 s apart).
    expect(wakes).toEqual(["dep1"]);
  });

  it("holds a webhook while the team's secrets cannot be had, rather than send it unsigned", async () => {
    const replica = await serve((_b, _i, res) => json(res, 200, {}));
    const hook = await serve((_b, _i, res) => res.writeHead(200).end());
    cleanups.push(replica.close, hook.close);
    let calls = 0;
    const { add } = await setup(replica, {
      webhookSecrets: async () => {
        if (++calls < 2) throw new Error("control plane unreachable");
        return ["whsec_late"];
      },
    });
    const r = await add({ webhook: hook.url, webhook_status: "PENDING" });
    await until(() => r.webhook_status === "SUCCEEDED");
    expect(hook.hits).toHaveLength(1);
    const d = hook.hits[0]!;
    expect(verifyWebhookSignature(String(d.headers["x-baseten-signature"]), "whsec_late", d.body)).toBe(true);
  });

  it("waits out a control-plane outage longer than all its attempts: delivered once, signed, never unsigned", async () => {
    const replica = await serve((_b, _i, res) => json(res, 200, { ok: true }));
    const hook = await serve((_b, _i, res) => res.writeHead(200).end());
    cleanups.push(replica.close, hook.close);
    // Three attempts 10–40 ms apart used to give up within ~50 ms; the secrets come back after 600 ms.
    const back = Date.now() + 600;
    let asked = 0;
    const { add } = await setup(replica, {
      webhookSecrets: async () => {
        asked++;
        if (Date.now() < back) throw new Error("connect ECONNREFUSED (the control plane is down)");
        return ["whsec_back"];
      },
    });
    const r = await add({ webhook: hook.url, webhook_status: "PENDING" });
    await until(() => r.status === "SUCCEEDED");
    expect(r.webhook_status, "the result waits for its delivery").toBe("PENDING");
    expect(r.output, "the output is kept until delivered").toEqual({ ok: true });
    expect(hook.hits, "nothing goes out while no secret is known").toHaveLength(0);
    await until(() => r.webhook_status === "SUCCEEDED");
    expect(r.status).toBe("SUCCEEDED");
    expect(asked).toBeGreaterThan(3);
    expect(hook.hits).toHaveLength(1);
    const d = hook.hits[0]!;
    expect(verifyWebhookSignature(String(d.headers["x-baseten-signature"]), "whsec_back", d.body)).toBe(true);
  });

  it("gives a webhook up once the secrets stayed unavailable for secretsWaitMs: WEBHOOK_FAILED, nothing sent", async () => {
    const replica = await serve((_b, _i, res) => json(res, 200, {}));
    const hook = await serve((_b, _i, res) => res.writeHead(200).end());
    cleanups.push(replica.close, hook.close);
    const { add } = await setup(replica, {
      webhookSecrets: async () => {
        throw new Error("the control plane answered 503");
      },
      webhook: {
        allowHttp: true,
        allowPrivate: true,
        initialDelayMs: 10,
        maxDelayMs: 40,
        secretsWaitMs: 300,
      },
    });
    const r = await add({ webhook: hook.url, webhook_status: "PENDING" });
    await until(() => r.webhook_status === "FAILED");
    expect(r.status).toBe("WEBHOOK_FAILED");
    expect(hook.hits).toHaveLength(0);
  });
});
