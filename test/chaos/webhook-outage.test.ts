// Issue 15's async-webhook finding, as a regression test with real processes: async jobs end while the
// control plane is SIGKILLed, and it is started again only after longer than a delivery's five attempts
// take (1 + 2 + 4 + 8 s = 15 s). Every webhook must still be delivered exactly once, signed with the team's
// secret (verified as a receiver would), and none may end WEBHOOK_FAILED. Two cases in one outage: jobs
// ending on a plane that asked for the team's secrets before the outage (it signs and delivers during it),
// and jobs ending on a plane restarted during the outage (it holds no secret: the deliveries wait, unsigned
// never, until the control plane is back). One control plane, one plane (eu-1), the JS fixture model.

import http from "node:http";
import type { AddressInfo } from "node:net";
import { resolve } from "node:path";
import { request } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { verifyWebhookSignature } from "../../src/core/async.ts";
import { type Cluster, DOMAIN, eventually, startCluster } from "../support/cluster.ts";
import { packDirectory } from "../support/control.ts";

const FIXTURE = resolve(import.meta.dirname, "../e2e/fixtures/async-js");
/** Longer than the 15 s the five delivery attempts used to take before WEBHOOK_FAILED. */
const OUTAGE_MS = 25_000;
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

interface Delivery {
  at: number;
  signature: string;
  body: string;
  json: { request_id: string; errors: unknown[]; data: { tag?: string } | null };
}

describe("async webhooks across a control-plane outage", () => {
  let cluster: Cluster;
  let model: string;
  let secret: string;
  let hook: http.Server;
  let hookUrl: string;
  const deliveries: Delivery[] = [];

  async function call(method: "GET" | "POST", path: string, body?: unknown) {
    const p = cluster.plane("eu-1");
    const res = await request(`http://${p.host}:${p.port}${path}`, {
      method,
      headers: {
        host: `model-${model}-prod-eu.${DOMAIN}`,
        authorization: `Api-Key ${cluster.api.key}`,
        ...(body === undefined ? {} : { "content-type": "application/json" }),
      },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      headersTimeout: 10_000,
      bodyTimeout: 10_000,
    });
    const text = await res.body.text();
    let json: any = null;
    try {
      json = JSON.parse(text);
    } catch {}
    return { status: res.statusCode, json, text };
  }

  beforeAll(async () => {
    hook = http.createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => {
        const body = Buffer.concat(chunks).toString("utf8");
        deliveries.push({
          at: Date.now(),
          signature: String(req.headers["x-baseten-signature"] ?? ""),
          body,
          json: JSON.parse(body),
        });
        res.writeHead(200).end("ok");
      });
    });
    await new Promise<void>((ok) => hook.listen(0, "127.0.0.1", ok));
    hookUrl = `http://127.0.0.1:${(hook.address() as AddressInfo).port}/hook`;
    cluster = await startCluster({
      planes: [
        {
          name: "eu-1",
          region: "eu",
          global: true,
          args: ["--webhook-allow-http", "--webhook-allow-private", "--async-concurrency", "1"],
        },
      ],
    });
    const api = cluster.api;
    const restricted = await api.patch("/v1/environment_groups/prod-eu", {
      region_restriction: { region: "eu" },
    });
    expect(restricted.status, JSON.stringify(restricted.body)).toBe(200);
    const created = await api.post("/v1/webhook_secrets", {});
    expect(created.status, JSON.stringify(created.body)).toBe(200);
    secret = created.body.secret;
    const s3_key = await api.upload(await packDirectory(FIXTURE), {
      name: "webhook-outage",
      deployment: { config: {} },
    });
    const made = await api.post("/v1/models", {
      source: {
        kind: "model_archive",
        name: "webhook-outage",
        s3_key,
        deployment: { config: { model_name: "webhook-outage" }, environment_name: "prod-eu" },
      },
    });
    expect(made.status, JSON.stringify(made.body)).toBe(200);
    model = made.body.model.id;
    await eventually(
      async () => (await call("POST", "/predict", { tag: "warm" })).status === 200,
      60_000,
      250,
    );
  }, 120_000);

  afterAll(async () => {
    await cluster?.stop();
    await new Promise<void>((ok) => (hook ? hook.close(() => ok()) : ok()));
  }, 30_000);

  it("delivers every webhook once, signed, though the control plane was down longer than all attempts", async () => {
    const submit = async (tag: string, sleepMs: number) => {
      const r = await call("POST", "/async_predict", {
        model_input: { tag, sleep_ms: sleepMs },
        webhook_endpoint: hookUrl,
      });
      expect(r.status, r.text).toBe(201);
      return r.json.request_id as string;
    };
    // Two short jobs end during the outage on the plane that asked for the secrets at acceptance; two
    // more are still queued behind a long one when the plane is SIGKILLed and restarted mid-outage.
    const early = [await submit("early-1", 1_000), await submit("early-2", 1_000)];
    const long = await submit("long", 1_500);
    const late = [await submit("late-1", 500), await submit("late-2", 500)];
    const ids = [...early, long, ...late];
    await eventually(
      async () => (await call("GET", `/async_request/${early[0]}`)).json?.status === "IN_PROGRESS",
    );

    const killedAt = Date.now();
    await cluster.stopControl("SIGKILL");
    // The early jobs end and are delivered while the control plane is down (the plane holds the secrets).
    await eventually(
      async () => early.every((id) => deliveries.some((d) => d.json.request_id === id)),
      10_000,
    );
    // Now the plane too, while the long job runs: it restarts from its cached snapshot with no secret in
    // memory; the long job runs again (at-least-once) and the late ones after it; their webhooks wait.
    await cluster.plane("eu-1").stop("SIGKILL");
    await cluster.plane("eu-1").start();
    const ended = await eventually(
      async () => {
        const s = await Promise.all(late.map(async (id) => (await call("GET", `/async_request/${id}`)).json));
        return s.every((x) => x?.status === "SUCCEEDED") ? s : null;
      },
      Math.max(1_000, killedAt + OUTAGE_MS - Date.now() - 1_000),
      250,
    ).catch(async (err) => {
      const s = await Promise.all(ids.map(async (id) => (await call("GET", `/async_request/${id}`)).text));
      console.log(s.join("\n"), cluster.plane("eu-1").process?.output.slice(-40).join("\n"));
      throw err;
    });
    for (const x of ended)
      expect(x.webhook_status, "nothing is given up while the secrets are awaited").toBe("PENDING");
    expect(
      deliveries.filter((d) => late.includes(d.json.request_id)),
      "never sent unsigned",
    ).toEqual([]);
    await sleep(Math.max(0, killedAt + OUTAGE_MS - Date.now()));
    expect(
      (
        await Promise.all(ids.map(async (id) => (await call("GET", `/async_request/${id}`)).json.status))
      ).filter((s) => s === "WEBHOOK_FAILED"),
      "no webhook failed over the outage",
    ).toEqual([]);
    const restartedAt = Date.now();
    await cluster.startControl();

    const final = await eventually(
      async () => {
        const s = await Promise.all(ids.map(async (id) => (await call("GET", `/async_request/${id}`)).json));
        return s.every((x) => x?.webhook_status !== "PENDING") ? s : null;
      },
      30_000,
      250,
    );
    const deliveredAfter = Date.now() - restartedAt;
    console.log(
      JSON.stringify({
        outage_ms: restartedAt - killedAt,
        late_delivered_after_restart_ms: deliveredAfter,
        statuses: final.map((x) => `${x.status}/${x.webhook_status}`),
      }),
    );
    for (const x of final) expect(`${x.status}/${x.webhook_status}`).toBe("SUCCEEDED/SUCCEEDED");
    // Exactly once each, signed with the team's secret over the raw body, and the model's result in it.
    await sleep(1_000);
    for (const id of ids) {
      const got = deliveries.filter((d) => d.json.request_id === id);
      expect(got, `webhooks of ${id}`).toHaveLength(1);
      const d = got[0]!;
      expect(verifyWebhookSignature(d.signature, secret, d.body), `signature of ${id}`).toBe(true);
      expect(verifyWebhookSignature(d.signature, "whsec_other", d.body)).toBe(false);
      expect(d.json.errors).toEqual([]);
    }
    expect(deliveries.filter((d) => early.includes(d.json.request_id)).every((d) => d.at < restartedAt)).toBe(
      true,
    );
    expect(deliveries.filter((d) => late.includes(d.json.request_id)).every((d) => d.at >= restartedAt)).toBe(
      true,
    );
  }, 60_000);
});
