// Async inference end to end (issue 13 item 1–2 and their "must show"), with real processes: a control
// plane, four planes (us-1 the global ingress), a slow model in prod-eu (restricted to eu), and a local
// webhook receiver. An async request is accepted at once, queued and run on eu-1 only, its result signed
// with the team's webhook secret; its status is readable from either hostname form; a cancelled one never
// runs; one left waiting past max_time_in_queue_seconds ends EXPIRED; eu-1 SIGKILLed with requests queued
// serves them after its restart; and no other region's plane stores or processes any of it.

import { readdirSync, readFileSync, statSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { join, resolve } from "node:path";
import { request } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { planeTag, verifyWebhookSignature } from "../../src/core/async.ts";
import { type Cluster, DOMAIN, eventually, FOUR_REGIONS, startCluster } from "../support/cluster.ts";
import { packDirectory } from "../support/control.ts";

const FIXTURE = resolve(import.meta.dirname, "fixtures/async-js");
/** A string in every payload of this file: no plane outside eu may have it in a file. */
const MARKER = "residency-marker-7f3a";
const WEBHOOK_FLAGS = ["--webhook-allow-http", "--webhook-allow-private", "--async-concurrency", "1"];

interface Delivery {
  headers: http.IncomingHttpHeaders;
  body: string;
  json: {
    request_id: string;
    model_id: string;
    deployment_id: string;
    type: string;
    time: string;
    data: { tag: string; environment: string; seen: string[] } | null;
    errors: Array<{ code: string; message: string }>;
  };
}

function filesUnder(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    const st = statSync(path, { throwIfNoEntry: false });
    if (st === undefined) return [];
    return st.isDirectory() ? filesUnder(path) : st.isFile() ? [path] : [];
  });
}

describe("async inference stays in its region", () => {
  let cluster: Cluster;
  let model: string;
  let deploymentId: string;
  let secret: string;
  let hook: http.Server;
  let hookUrl: string;
  const deliveries: Delivery[] = [];
  /** Every request id this file was given. */
  const ids: string[] = [];

  const regional = () => `model-${model}-prod-eu.${DOMAIN}`;
  const standard = () => `model-${model}.${DOMAIN}`;

  async function call(plane: string, host: string, method: string, path: string, body?: unknown) {
    const p = cluster.plane(plane);
    const res = await request(`http://${p.host}:${p.port}${path}`, {
      method: method as "GET",
      headers: {
        host,
        authorization: `Api-Key ${cluster.api.key}`,
        ...(body === undefined ? {} : { "content-type": "application/json" }),
      },
      ...(body === undefined ? {} : { body: typeof body === "string" ? body : JSON.stringify(body) }),
      headersTimeout: 20_000,
      bodyTimeout: 20_000,
    });
    const text = await res.body.text();
    let json: any = null;
    try {
      json = JSON.parse(text);
    } catch {}
    return { status: res.statusCode, headers: res.headers, json, text };
  }

  async function submit(input: Record<string, unknown>, extra: Record<string, unknown> = {}) {
    const res = await call("eu-1", regional(), "POST", "/async_predict", {
      model_input: { marker: MARKER, ...input },
      webhook_endpoint: hookUrl,
      ...extra,
    });
    expect(res.status, res.text).toBe(201);
    ids.push(res.json.request_id);
    return res.json.request_id as string;
  }

  const status = async (id: string, plane = "eu-1") =>
    (await call(plane, plane === "eu-1" ? regional() : standard(), "GET", `/async_request/${id}`)).json;
  const deliveryOf = (id: string) =>
    eventually(async () => deliveries.find((d) => d.json.request_id === id), 60_000);

  beforeAll(async () => {
    hook = http.createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (c) => chunks.push(c));
      req.on("end", () => {
        const body = Buffer.concat(chunks).toString("utf8");
        deliveries.push({ headers: req.headers, body, json: JSON.parse(body) });
        res.writeHead(200).end("ok");
      });
    });
    await new Promise<void>((ok) => hook.listen(0, "127.0.0.1", ok));
    hookUrl = `http://127.0.0.1:${(hook.address() as AddressInfo).port}/hook`;

    cluster = await startCluster({
      planes: FOUR_REGIONS.map((p) => ({ ...p, args: WEBHOOK_FLAGS })),
      controlArgs: ["--autoscaler-interval-ms", "250"],
    });
    const api = cluster.api;
    const restricted = await api.patch("/v1/environment_groups/prod-eu", {
      region_restriction: { region: "eu" },
    });
    expect(restricted.status).toBe(200);
    const created = await api.post("/v1/webhook_secrets", {});
    expect(created.status, JSON.stringify(created.body)).toBe(200);
    secret = created.body.secret;
    const archive = await packDirectory(FIXTURE);
    const s3_key = await api.upload(archive, { name: "async-e2e", deployment: { config: {} } });
    const made = await api.post("/v1/models", {
      source: {
        kind: "model_archive",
        name: "async-e2e",
        s3_key,
        deployment: { config: { model_name: "async-e2e" }, environment_name: "prod-eu" },
      },
    });
    expect(made.status, JSON.stringify(made.body)).toBe(200);
    model = made.body.model.id;
    deploymentId = made.body.deployment.id;
    await eventually(
      async () => (await call("eu-1", regional(), "POST", "/predict", { tag: "warm" })).status === 200,
      90_000,
      250,
    );
  }, 240_000);

  afterAll(async () => {
    await cluster?.stop();
    await new Promise<void>((ok) => (hook ? hook.close(() => ok()) : ok()));
  }, 60_000);

  it("accepts at once, runs in eu, and delivers a result signed with the team's webhook secret", async () => {
    const res = await call("eu-1", regional(), "POST", "/async_predict", {
      model_input: { tag: "first", marker: MARKER },
      webhook_endpoint: hookUrl,
    });
    expect(res.status, res.text).toBe(201);
    expect(res.headers["x-meridian-region"]).toBe("eu");
    const id = res.json.request_id as string;
    ids.push(id);
    expect(id).toMatch(/^[0-9a-f]{32}$/);
    expect(id.slice(0, 8)).toBe(planeTag("eu-1"));

    const d = await deliveryOf(id);
    expect(verifyWebhookSignature(String(d.headers["x-baseten-signature"]), secret, d.body)).toBe(true);
    // A receiver with another secret (or a forged body) does not verify.
    expect(verifyWebhookSignature(String(d.headers["x-baseten-signature"]), "whsec_other", d.body)).toBe(
      false,
    );
    expect(verifyWebhookSignature(String(d.headers["x-baseten-signature"]), secret, `${d.body} `)).toBe(
      false,
    );
    expect(d.json).toMatchObject({
      request_id: id,
      model_id: model,
      type: "async_request_completed",
      errors: [],
    });
    expect(d.json.data?.tag).toBe("first");
    expect(d.json.data?.environment).toBe("prod-eu");
    expect(Math.abs(Date.parse(d.json.time) - Date.now())).toBeLessThan(60_000);

    const s = await eventually(async () => {
      const x = await status(id);
      return x.webhook_status === "SUCCEEDED" ? x : null;
    });
    expect(s).toMatchObject({ request_id: id, model_id: model, status: "SUCCEEDED", errors: [] });
    expect(s.deployment_id).toBe(d.json.deployment_id);
  });

  it("takes the standard hostname at the global ingress and hands it into eu before storing it", async () => {
    const res = await call("us-1", standard(), "POST", "/environments/prod-eu/async_predict", {
      model_input: { tag: "via-us", marker: MARKER },
      webhook_endpoint: hookUrl,
    });
    expect(res.status, res.text).toBe(201);
    expect(res.headers["x-meridian-route"]).toBe("us-1, eu-1");
    expect(res.headers["x-meridian-plane"]).toBe("eu-1");
    const id = res.json.request_id as string;
    ids.push(id);
    expect(id.slice(0, 8)).toBe(planeTag("eu-1"));
    await deliveryOf(id);
    // Its status is readable from the global ingress too: the id names the plane that holds it.
    const s = await eventually(async () => {
      const x = await call("us-1", standard(), "GET", `/async_request/${id}`);
      return x.status === 200 && x.json.webhook_status === "SUCCEEDED" ? x : null;
    });
    expect(s.headers["x-meridian-route"]).toBe("us-1, eu-1");
    expect(s.json.status).toBe("SUCCEEDED");
    // The queue status of the regional form, on its plane.
    const q = await call("eu-1", regional(), "GET", "/async_queue_status");
    expect(q.status, q.text).toBe(200);
    expect(q.json).toMatchObject({ model_id: model, num_queued_requests: 0 });
  });

  it("refuses on a plane of another region, as predict does, and stores nothing there", async () => {
    for (const plane of ["uk-1", "us-1", "au-1"]) {
      const res = await call(plane, regional(), "POST", "/async_predict", {
        model_input: { tag: "wrong-region", marker: MARKER },
      });
      const sync = await call(plane, regional(), "POST", "/predict", { tag: "wrong-region", marker: MARKER });
      // The same refusal as predict's: 421 where the plane knows the model (the global ingress), the 404 of
      // a model it was never told about elsewhere (a plane's snapshot holds only what it serves).
      expect([res.status, res.json.error_code], res.text).toEqual([sync.status, sync.json.error_code]);
      expect([421, 404]).toContain(res.status);
      expect(res.headers["x-meridian-plane"]).toBe(plane);
    }
    const us = await call("us-1", regional(), "POST", "/async_predict", { model_input: { marker: MARKER } });
    expect([us.status, us.json.error_code]).toEqual([421, "misdirected_request"]);
    // A path-based route on the regional hostname, as for predict.
    const path = await call("eu-1", regional(), "POST", "/environments/prod-eu/async_predict", {
      model_input: {},
    });
    expect([path.status, path.json.error_code]).toEqual([404, "regional_path_not_allowed"]);
  });

  it("refuses bad input with a clear error and keeps nothing of it", async () => {
    const missing = await call("eu-1", regional(), "POST", "/async_predict", { webhook_endpoint: hookUrl });
    expect([missing.status, missing.json.error_code, missing.json.detail.field]).toEqual([
      400,
      "invalid_request",
      "model_input",
    ]);
    const priority = await call("eu-1", regional(), "POST", "/async_predict", {
      model_input: {},
      priority: 3,
    });
    expect([priority.status, priority.json.detail.field]).toEqual([400, "priority"]);
    const queue = await call("eu-1", regional(), "POST", "/async_predict", {
      model_input: {},
      max_time_in_queue_seconds: 5,
    });
    expect([queue.status, queue.json.detail.field]).toEqual([400, "max_time_in_queue_seconds"]);
    const json = await call("eu-1", regional(), "POST", "/async_predict", "{not json");
    expect([json.status, json.json.error_code]).toEqual([400, "invalid_json"]);
    const big = await call("eu-1", regional(), "POST", "/async_predict", {
      model_input: { pad: "x".repeat(256 * 1024) },
    });
    expect([big.status, big.json.error_code]).toEqual([413, "payload_too_large"]);
    const method = await call("eu-1", regional(), "GET", "/async_predict");
    expect([method.status, method.headers.allow]).toEqual([405, "POST"]);
    const unknown = await call(
      "eu-1",
      regional(),
      "GET",
      `/async_request/${planeTag("eu-1")}${"0".repeat(24)}`,
    );
    expect([unknown.status, unknown.json.error_code]).toEqual([404, "async_request_not_found"]);
    // Without a key: 401, and nothing about the model.
    const p = cluster.plane("eu-1");
    const anon = await request(`http://${p.host}:${p.port}/async_predict`, {
      method: "POST",
      headers: { host: regional(), "content-type": "application/json" },
      body: JSON.stringify({ model_input: {} }),
    });
    expect(anon.statusCode).toBe(401);
    await anon.body.text();
  });

  it("runs by priority, never runs a cancelled request, and expires one left waiting", async () => {
    // One request at a time on the one replica: the blocker holds it while the others queue.
    const blocker = await submit({ tag: "blocker", sleep_ms: 12_000 });
    await eventually(async () => (await status(blocker)).status === "IN_PROGRESS");
    const low = await submit({ tag: "low" }, { priority: 2 });
    const victim = await submit({ tag: "victim" });
    const high = await submit({ tag: "high" }, { priority: 0 });
    const expiring = await submit({ tag: "expiring" }, { max_time_in_queue_seconds: 10 });

    const cancel = await call("eu-1", regional(), "DELETE", `/async_request/${victim}`);
    expect(cancel.status, cancel.text).toBe(200);
    expect(cancel.json).toMatchObject({ request_id: victim, canceled: true });
    // Only QUEUED requests may be cancelled: the running one is not, nor the cancelled one again.
    const running = await call("eu-1", regional(), "DELETE", `/async_request/${blocker}`);
    expect(running.json).toMatchObject({ canceled: false });
    expect(running.json.message).toContain("IN_PROGRESS");
    const again = await call("eu-1", regional(), "DELETE", `/async_request/${victim}`);
    expect(again.json.canceled).toBe(false);
    expect(await status(victim)).toMatchObject({ status: "CANCELED", webhook_status: "CANCELED" });

    const q = await call("eu-1", regional(), "GET", "/async_queue_status");
    expect(q.json).toMatchObject({ num_in_progress_requests: 1 });
    expect(q.json.num_queued_requests).toBeGreaterThanOrEqual(3);

    const expired = await deliveryOf(expiring);
    expect(expired.json.data).toBeNull();
    expect(expired.json.errors[0]?.code).toBe("MODEL_UNAVAILABLE");
    expect(await status(expiring)).toMatchObject({ status: "EXPIRED" });

    const lowDone = await deliveryOf(low);
    const highDone = await deliveryOf(high);
    await deliveryOf(blocker);
    // What the model saw, in order: high (priority 0) before low (priority 2), never the victim.
    const seen = lowDone.json.data!.seen;
    expect(seen.indexOf("high")).toBeGreaterThan(seen.indexOf("blocker"));
    expect(seen.indexOf("low")).toBeGreaterThan(seen.indexOf("high"));
    expect(highDone.json.data!.seen).not.toContain("low");
    expect(seen).not.toContain("victim");
    expect(seen).not.toContain("expiring");
    expect(deliveries.some((d) => d.json.request_id === victim)).toBe(false);
  }, 90_000);

  it("serves the requests queued on a plane SIGKILLed mid-queue once it is back", async () => {
    const blocker = await submit({ tag: "kill-blocker", sleep_ms: 4_000 });
    await eventually(async () => (await status(blocker)).status === "IN_PROGRESS");
    const queued = [
      await submit({ tag: "kill-1" }),
      await submit({ tag: "kill-2" }),
      await submit({ tag: "kill-3" }),
    ];
    const eu = cluster.plane("eu-1");
    await eu.stop("SIGKILL");
    await eu.start();
    for (const id of [blocker, ...queued]) {
      const d = await deliveryOf(id);
      expect(d.json.errors).toEqual([]);
      expect(verifyWebhookSignature(String(d.headers["x-baseten-signature"]), secret, d.body)).toBe(true);
    }
    for (const id of queued) {
      expect(
        await eventually(async () => {
          const s = await status(id);
          return s.webhook_status === "SUCCEEDED" ? s : null;
        }),
      ).toMatchObject({ status: "SUCCEEDED" });
    }
  }, 180_000);

  it("wakes its deployment from zero for a queued request, and runs it in eu", async () => {
    const patched = await cluster.api.patch(`/v1/models/${model}/environments/prod-eu`, {
      autoscaling_settings: { scale_down_delay: 3, autoscaling_window: 10, concurrency_target: 1 },
    });
    expect(patched.status, JSON.stringify(patched.body)).toBe(200);
    await eventually(async () => {
      const d = await cluster.api.get(`/v1/models/${model}/deployments/${deploymentId}`);
      return d.body.status === "SCALED_TO_ZERO";
    }, 90_000);
    // Accepted at once with nothing ready; the queue asks for the wake and waits for the replica.
    const id = await submit({ tag: "from-zero" });
    expect((await status(id)).status).toBe("QUEUED");
    const d = await deliveryOf(id);
    expect([d.json.errors, d.json.data?.tag, d.json.deployment_id]).toEqual([[], "from-zero", deploymentId]);
    // The replica that ran it was started in eu only.
    for (const name of ["us-1", "uk-1", "au-1"]) {
      const p = cluster.plane(name);
      const res = await request(`http://${p.host}:${p.admin}/v1/replicas`, {
        headers: { authorization: `Bearer ${p.token}` },
      });
      const replicas = ((await res.body.json()) as { replicas: Array<{ deployment_id: string }> }).replicas;
      expect(replicas.filter((r) => r.deployment_id === deploymentId)).toEqual([]);
    }
  }, 180_000);

  it("leaves no trace of any async request on a plane outside eu, and was processed only by eu-1", async () => {
    expect(ids.length).toBeGreaterThan(8);
    for (const name of ["us-1", "uk-1", "au-1"]) {
      const p = cluster.plane(name);
      // No payload, result or id in any file the plane keeps (its queue journal, audit, snapshot cache).
      for (const file of filesUnder(p.dataDir)) {
        if (file.endsWith(".sock")) continue;
        const text = readFileSync(file, "latin1");
        expect(text.includes(MARKER), `${file} holds a payload`).toBe(false);
        for (const id of ids) expect(text.includes(id), `${file} holds ${id}`).toBe(false);
      }
      // Its audit: it processed nothing of the model (us-1 only handed requests to eu-1).
      const res = await request(`http://${p.host}:${p.admin}/v1/audit?model_id=${model}&limit=1000`, {
        headers: { authorization: `Bearer ${p.token}` },
      });
      const items = ((await res.body.json()) as { items: Array<{ processed_by: string | null }> }).items;
      for (const r of items) expect([null, "eu-1"]).toContain(r.processed_by);
      if (name !== "us-1") expect(items.filter((r) => r.processed_by !== null)).toEqual([]);
    }
    // eu-1 holds the queue: its journal has the requests, in its own data directory.
    const journal = readFileSync(join(cluster.plane("eu-1").dataDir, "async", "queue.log"), "utf8");
    expect(journal).toContain(ids[ids.length - 1]);
  });
});
