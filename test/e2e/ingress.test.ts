// End to end over real sockets: a control plane and three planes (us-1, the global ingress; eu-1 and eu-2)
// on their own loopback addresses. What a client sees from the ingresses (DESIGN.md §2.2, §2.3, §2.6,
// §2.7): the regional endpoint served only in eu, failing closed; the standard endpoint under each policy;
// the proof headers, the planes' audit trails and metrics agreeing with them; the control plane holding
// only aggregates; serving on with the control plane stopped, also across a plane restart.

import { randomUUID } from "node:crypto";
import { readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { join } from "node:path";
import SQLite from "better-sqlite3";
import { request } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CONTROL_KEY_META } from "../../src/control/keys.ts";
import { loadOrCreatePlaneKey, signingKeyFromJwk } from "../../src/lib/keys.ts";
import { type Cluster, DOMAIN, eventually, type PlaneHandle, startCluster } from "../support/cluster.ts";

interface Exchange {
  requestId: string;
  /** The plane the client sent the request to, and the Host it named. */
  entry: string;
  host: string;
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: any;
}

const RUN = randomUUID().slice(0, 8);
let sequence = 0;
/** Every exchange a test made, to hold the planes' audit trails against. */
const exchanges: Exchange[] = [];

async function call(
  cluster: Cluster,
  plane: string,
  host: string,
  path: string,
  options: { key?: string; record?: boolean } = {},
): Promise<Exchange> {
  const p = cluster.plane(plane);
  const requestId = `e2e-${RUN}-${++sequence}`;
  const res = await request(`http://${p.host}:${p.port}${path}`, {
    method: "POST",
    headers: {
      host,
      authorization: `Api-Key ${options.key ?? cluster.api.key}`,
      "content-type": "application/json",
      "x-request-id": requestId,
    },
    body: JSON.stringify({ n: sequence }),
    headersTimeout: 10_000,
    bodyTimeout: 10_000,
  });
  const text = await res.body.text();
  let body: any = text;
  try {
    body = JSON.parse(text);
  } catch {}
  const exchange = { requestId, entry: plane, host, status: res.statusCode, headers: res.headers, body };
  if (options.record !== false) exchanges.push(exchange);
  return exchange;
}

/** Refusals decided before the request's model resolved (routing order: path, method, key, model). */
const UNRESOLVED_REFUSALS = new Set([
  "route_not_found",
  "regional_path_not_allowed",
  "method_not_allowed",
  "unauthorized",
  "forbidden",
  "model_not_found",
  "invalid_host",
]);

const route = (e: Exchange) => String(e.headers["x-meridian-route"] ?? "").split(/,\s*/);

async function audit(p: PlaneHandle, query: string): Promise<any[]> {
  const res = await request(`http://${p.host}:${p.admin}/v1/audit?${query}`, {
    headers: { authorization: `Bearer ${p.token}` },
  });
  const body = (await res.body.json()) as { items: any[] };
  if (res.statusCode !== 200)
    throw new Error(`audit on ${p.name}: ${res.statusCode} ${JSON.stringify(body)}`);
  return body.items;
}

async function scrape(p: PlaneHandle): Promise<string> {
  const res = await request(`http://${p.host}:${p.admin}/metrics`);
  expect(res.statusCode).toBe(200);
  return res.body.text();
}

/** The value of one Prometheus sample whose labels include `labels`, or 0 when there is none. */
function sample(text: string, name: string, labels: Record<string, string>): number {
  let total = 0;
  for (const line of text.split("\n")) {
    const m = /^([a-z_]+)\{([^}]*)\} (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = Object.fromEntries([...m[2]!.matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1], x[2]]));
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) total += Number(m[3]);
  }
  return total;
}

/** Names of planes that run a READY replica of `deploymentId`, as the planes themselves report them. */
async function readyPlanes(cluster: Cluster, deploymentId: string): Promise<string[]> {
  const out: string[] = [];
  for (const p of cluster.planes.values()) {
    if (!p.process) continue;
    const res = await request(`http://${p.host}:${p.admin}/v1/replicas`, {
      headers: { authorization: `Bearer ${p.token}` },
    });
    const { replicas } = (await res.body.json()) as {
      replicas: Array<{ deployment_id: string; state: string }>;
    };
    if (replicas.some((r) => r.deployment_id === deploymentId && r.state === "READY")) out.push(p.name);
  }
  return out;
}

/** Every file under `dir`, read whole. */
function filesUnder(dir: string): Array<{ path: string; data: Buffer }> {
  const out: Array<{ path: string; data: Buffer }> = [];
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) out.push(...filesUnder(path));
    else out.push({ path, data: readFileSync(path) });
  }
  return out;
}

describe("the inference ingress end to end", () => {
  let cluster: Cluster;
  let residency: string; // model with prod-eu, restricted to eu
  let plain: string; // model with an unrestricted production environment
  let euDeployment: string;
  let plainDeployment: string;
  /** The eu plane that runs prod-eu's replica, and the one that does not. */
  let euServing: string;
  let euOther: string;
  const regionalHost = () => `model-${residency}-prod-eu.${DOMAIN}`;
  const standardHost = () => `model-${residency}.${DOMAIN}`;
  const regionalUrl = () => `http://${regionalHost()}/predict`;

  async function findEuServing() {
    const ready = await eventually(async () => {
      const r = await readyPlanes(cluster, euDeployment);
      return r.length === 1 ? r : null;
    }, 30_000);
    euServing = ready[0]!;
    expect(["eu-1", "eu-2"]).toContain(euServing);
    euOther = euServing === "eu-1" ? "eu-2" : "eu-1";
  }

  beforeAll(async () => {
    cluster = await startCluster({
      planes: [
        { name: "us-1", region: "us", global: true },
        { name: "eu-1", region: "eu" },
        { name: "eu-2", region: "eu" },
      ],
    });
    const api = cluster.api;
    const group = await api.patch("/v1/environment_groups/prod-eu", { region_restriction: { region: "eu" } });
    expect(group.status, JSON.stringify(group.body)).toBe(200);
    const a = await api.createModel("residency", "hello-js", { environment_name: "prod-eu" });
    const b = await api.createModel("plain", "hello-js", { environment_name: "production" });
    expect(a.status, JSON.stringify(a.body)).toBe(200);
    expect(b.status, JSON.stringify(b.body)).toBe(200);
    residency = a.body.model.id;
    plain = b.body.model.id;
    const active = async (model: string, env: string) =>
      eventually(async () => {
        const e = await api.get(`/v1/models/${model}/environments/${env}`);
        return e.body.current_deployment?.status === "ACTIVE"
          ? (e.body.current_deployment.id as string)
          : null;
      }, 60_000);
    euDeployment = await active(residency, "prod-eu");
    plainDeployment = await active(plain, "production");
    await findEuServing();
    // Every plane's snapshot names the ready planes before the tests start.
    await eventually(
      async () =>
        (await call(cluster, euOther, regionalHost(), "/predict", { record: false })).status === 200,
    );
    await eventually(async () => {
      const r = await call(cluster, "us-1", `model-${plain}.${DOMAIN}`, "/production/predict", {
        record: false,
      });
      return r.status === 200;
    });
  }, 80_000);

  afterAll(async () => {
    await cluster?.stop();
    if (cluster) rmSync(cluster.dir, { recursive: true, force: true });
  }, 60_000);

  it("serves the regional endpoint in eu only: locally, forwarded within eu, refused (421) in us", async () => {
    const local = await call(cluster, euServing, regionalHost(), "/predict");
    expect(local.status, JSON.stringify(local.body)).toBe(200);
    expect(local.body.environment).toBe("prod-eu");
    expect(local.body.echo).toEqual({ n: sequence });
    expect(local.headers["x-request-id"]).toBe(local.requestId);
    expect(local.headers["x-meridian-region"]).toBe("eu");
    expect(local.headers["x-meridian-plane"]).toBe(euServing);
    expect(local.headers["x-meridian-deployment-id"]).toBe(euDeployment);
    expect(route(local)).toEqual([euServing]);

    const forwarded = await call(cluster, euOther, regionalHost(), "/predict");
    expect(forwarded.status, JSON.stringify(forwarded.body)).toBe(200);
    expect(forwarded.headers["x-request-id"]).toBe(forwarded.requestId);
    expect(forwarded.headers["x-meridian-region"]).toBe("eu");
    expect(forwarded.headers["x-meridian-plane"]).toBe(euServing);
    expect(forwarded.headers["x-meridian-deployment-id"]).toBe(euDeployment);
    expect(route(forwarded)).toEqual([euOther, euServing]);

    const misdirected = await call(cluster, "us-1", regionalHost(), "/predict");
    expect(misdirected.status).toBe(421);
    expect(misdirected.body.error_code).toBe("misdirected_request");
    expect(misdirected.body.detail).toMatchObject({ region: "eu", plane_region: "us" });
    expect(misdirected.headers["x-meridian-region"]).toBe("us");
    expect(misdirected.headers["x-meridian-plane"]).toBe("us-1");
    expect(route(misdirected)).toEqual(["us-1"]);
    // Never processed in us: us-1 runs no replica of the deployment, recorded no processing plane, and
    // handed the request to nobody.
    expect(await readyPlanes(cluster, euDeployment)).toEqual([euServing]);
    const [record] = await eventually(async () => {
      const r = await audit(cluster.plane("us-1"), `request_id=${misdirected.requestId}`);
      return r.length ? r : null;
    });
    expect(record).toMatchObject({ status: 421, processed_by: null, error_code: "misdirected_request" });
    for (const eu of ["eu-1", "eu-2"]) {
      expect(await audit(cluster.plane(eu), `request_id=${misdirected.requestId}`)).toEqual([]);
    }
  });

  it("refuses path routes on a regional host, and regional hosts of unrestricted environments", async () => {
    for (const path of [
      "/environments/prod-eu/predict",
      "/production/predict",
      "/development/predict",
      `/deployment/${euDeployment}/predict`,
    ]) {
      const r = await call(cluster, euServing, regionalHost(), path);
      expect(r.status, path).toBe(404);
      expect(r.body.error_code, path).toBe("regional_path_not_allowed");
      expect(r.headers["x-meridian-plane"]).toBe(euServing);
    }
    for (const [plane, host] of [
      ["us-1", `model-${plain}-production.${DOMAIN}`],
      [euServing, `model-${residency}-production.${DOMAIN}`],
    ] as const) {
      const r = await call(cluster, plane, host, "/predict");
      expect(r.status, host).toBe(404);
      expect(r.body.error_code, host).toBe("environment_not_regional");
    }
  });

  it("keeps the standard endpoint working at the global ingress under allow, warn and deny", async () => {
    const path = "/environments/prod-eu/predict";
    const allowed = await call(cluster, "us-1", standardHost(), path);
    expect(allowed.status, JSON.stringify(allowed.body)).toBe(200);
    expect(allowed.body.environment).toBe("prod-eu");
    expect(allowed.headers.warning).toBeUndefined();
    expect(allowed.headers["x-meridian-region"]).toBe("eu");
    expect(allowed.headers["x-meridian-plane"]).toBe(euServing);
    expect(allowed.headers["x-meridian-deployment-id"]).toBe(euDeployment);
    expect(route(allowed)).toEqual(["us-1", euServing]);

    const plainServed = await call(cluster, "us-1", `model-${plain}.${DOMAIN}`, "/production/predict");
    expect(plainServed.status).toBe(200);
    expect(plainServed.headers["x-meridian-plane"]).toBe("us-1");
    expect(plainServed.headers["x-meridian-deployment-id"]).toBe(plainDeployment);
    expect(route(plainServed)).toEqual(["us-1"]);

    const policy = async (standard_endpoint_policy: string) => {
      const r = await cluster.api.patch("/v1/environment_groups/prod-eu", {
        region_restriction: { region: "eu", standard_endpoint_policy },
      });
      expect(r.status, JSON.stringify(r.body)).toBe(200);
    };

    await policy("warn");
    const warned = await eventually(async () => {
      const r = await call(cluster, "us-1", standardHost(), path, { record: false });
      return r.headers.warning ? r : null;
    });
    expect(warned.status).toBe(200);
    expect(String(warned.headers.warning)).toMatch(/^299 - "/);
    expect(String(warned.headers.warning)).toContain(regionalUrl());
    expect(warned.headers["x-meridian-plane"]).toBe(euServing);
    exchanges.push(warned);

    await policy("deny");
    const denied = await eventually(async () => {
      const r = await call(cluster, "us-1", standardHost(), path, { record: false });
      // Until its own snapshot has the policy, us-1 forwards and the eu plane refuses: wait for us-1's.
      return r.status === 403 && route(r).length === 1 ? r : null;
    });
    expect(denied.body.error_code).toBe("standard_endpoint_denied");
    expect(denied.body.detail).toMatchObject({ regional_url: regionalUrl(), region: "eu" });
    expect(denied.body.error).toContain(regionalUrl());
    expect(denied.headers["x-meridian-plane"]).toBe("us-1");
    expect(route(denied)).toEqual(["us-1"]);
    exchanges.push(denied);
    // The regional endpoint is unaffected by the standard endpoint's policy.
    expect((await call(cluster, euOther, regionalHost(), "/predict")).status).toBe(200);

    await policy("allow");
    const back = await eventually(async () => {
      const r = await call(cluster, "us-1", standardHost(), path, { record: false });
      return r.status === 200 && r.headers.warning === undefined ? r : null;
    });
    exchanges.push(back);
  });

  it("keeps an audit record on each plane that agrees with what clients saw; the control plane gets counts", async () => {
    expect(exchanges.length).toBeGreaterThan(10);
    const names = [...cluster.planes.keys()];
    for (const e of exchanges) {
      const passed = route(e);
      expect(passed[0]).toBe(e.entry);
      for (const name of names) {
        const records = await audit(cluster.plane(name), `request_id=${e.requestId}`);
        if (!passed.includes(name)) {
          expect(records, `${e.requestId} on ${name}`).toEqual([]);
          continue;
        }
        expect(records, `${e.requestId} on ${name}`).toHaveLength(1);
        const r = records[0];
        expect(r).toMatchObject({
          request_id: e.requestId,
          status: e.status,
          route: passed,
          plane: name,
          region: cluster.plane(name).region,
          forwarded_from: name === e.entry ? null : e.entry,
          error_code: e.status === 200 ? null : e.body.error_code,
          aborted: false,
        });
        expect(r.processed_by).toBe(e.status === 200 ? e.headers["x-meridian-plane"] : null);
        expect(r.deployment_id ?? "-").toBe(e.headers["x-meridian-deployment-id"]);
        const [, modelId, env] = /^model-([a-z0-9]{8})(?:-([a-z0-9-]+))?\./.exec(e.host)!;
        // A name is recorded only once it resolved: the key authenticated and the model exists for it
        // (DESIGN.md §2.8). Refusals before that record none.
        const resolved = e.status === 200 || !UNRESOLVED_REFUSALS.has(e.body.error_code);
        expect(r.model_id).toBe(resolved ? modelId : null);
        expect(r.hostname_form).toBe(env === undefined ? "standard" : "regional");
        if (env !== undefined) expect(r.environment).toBe(resolved ? env : null);
        // Metadata only: no bodies, no keys.
        expect(JSON.stringify(r)).not.toContain(cluster.api.key!);
        expect(Object.keys(r)).not.toContain("body");
      }
    }

    // The control plane's aggregates equal the planes' own audit trails, counted by (plane, model,
    // environment, status class), once the planes have reported.
    const expected = new Map<string, number>();
    for (const name of names) {
      for (const r of await audit(cluster.plane(name), "limit=10000")) {
        if (r.model_id === null) continue;
        const key = `${name}|${r.model_id}|${r.environment ?? ""}|${Math.floor(r.status / 100)}xx`;
        expected.set(key, (expected.get(key) ?? 0) + 1);
      }
    }
    const reported = await eventually(async () => {
      const res = await cluster.api.get("/v1/admin/request_counts");
      expect(res.status, JSON.stringify(res.body)).toBe(200);
      const got = new Map<string, number>(
        res.body.request_counts.map((c: any) => [
          `${c.plane}|${c.model_id}|${c.environment ?? ""}|${c.status_class}`,
          c.count,
        ]),
      );
      return JSON.stringify([...got].sort()) === JSON.stringify([...expected].sort()) ? got : null;
    }, 15_000);
    expect(reported.get(`${euServing}|${residency}|prod-eu|2xx`)).toBeGreaterThan(0);
    expect(reported.get(`us-1|${residency}|prod-eu|4xx`)).toBeGreaterThan(0);
    expect(
      Object.keys((await cluster.api.get("/v1/admin/request_counts")).body.request_counts[0]).sort(),
    ).toEqual(["count", "environment", "model_id", "plane", "status_class"]);

    // Only an org admin may read them.
    const user = await cluster.api.post("/v1/admin/users", { email: `viewer-${RUN}@example.com` });
    expect(user.status, JSON.stringify(user.body)).toBe(200);
    expect((await cluster.api.as(user.body.api_key).get("/v1/admin/request_counts")).status).toBe(403);

    // No request record reaches the control plane: none of the request ids is in its files or its log.
    const files = filesUnder(join(cluster.dir, "control"));
    expect(files.length).toBeGreaterThan(0);
    for (const e of exchanges) {
      for (const f of files) expect(f.data.includes(e.requestId), `${e.requestId} in ${f.path}`).toBe(false);
      expect(cluster.control.output.some((l) => l.includes(e.requestId))).toBe(false);
    }
  });

  it("exports request counts by environment, region, hostname form and status, and replicas by state", async () => {
    for (const name of cluster.planes.keys()) {
      const p = cluster.plane(name);
      const text = await scrape(p);
      const records = await audit(p, "limit=10000");
      // Each plane's counter equals its own audit trail, label by label.
      const seen = new Map<string, Record<string, string>>();
      for (const r of records) {
        const labels = {
          // What did not resolve to a model is counted under a fixed label.
          environment: r.model_id === null ? "unknown" : (r.environment ?? ""),
          region: p.region,
          hostname_form: r.hostname_form ?? "unknown",
          status_code: String(r.status),
        };
        seen.set(JSON.stringify(labels), labels);
      }
      expect(seen.size).toBeGreaterThan(0);
      for (const labels of seen.values()) {
        const inAudit = records.filter(
          (r) =>
            (r.model_id === null ? "unknown" : (r.environment ?? "")) === labels.environment &&
            (r.hostname_form ?? "unknown") === labels.hostname_form &&
            String(r.status) === labels.status_code,
        ).length;
        expect(
          sample(text, "meridian_ingress_requests_total", labels),
          `${name} ${JSON.stringify(labels)}`,
        ).toBe(inAudit);
        expect(
          sample(text, "meridian_ingress_request_duration_seconds_count", labels),
          `${name} ${JSON.stringify(labels)}`,
        ).toBe(inAudit);
      }
    }
    const served = await scrape(cluster.plane(euServing));
    expect(
      sample(served, "meridian_ingress_requests_total", {
        environment: "prod-eu",
        region: "eu",
        hostname_form: "regional",
        status_code: "200",
      }),
    ).toBeGreaterThan(0);
    expect(sample(served, "meridian_plane_replicas", { state: "READY" })).toBe(1);
    expect(sample(await scrape(cluster.plane(euOther)), "meridian_plane_replicas", { state: "READY" })).toBe(
      0,
    );
    const us = await scrape(cluster.plane("us-1"));
    expect(sample(us, "meridian_plane_replicas", { state: "READY" })).toBe(1);
    for (const [form, status] of [
      ["regional", "421"],
      ["standard", "403"],
      ["standard", "200"],
    ]) {
      expect(
        sample(us, "meridian_ingress_requests_total", {
          environment: "prod-eu",
          region: "us",
          hostname_form: form!,
          status_code: status!,
        }),
        `${form} ${status}`,
      ).toBeGreaterThan(0);
    }
  });

  it("fails closed with 503 model_unavailable when no eu replica is ready, while us keeps serving", async () => {
    const api = cluster.api;
    const off = await api.post(`/v1/models/${residency}/environments/prod-eu/deactivate`, {});
    expect(off.status, JSON.stringify(off.body)).toBe(200);
    await eventually(async () => (await readyPlanes(cluster, euDeployment)).length === 0);
    for (const plane of [euServing, euOther]) {
      const r = await eventually(async () => {
        const x = await call(cluster, plane, regionalHost(), "/predict", { record: false });
        return x.status === 503 ? x : null;
      });
      expect(r.body.error_code).toBe("model_unavailable");
      expect(r.body.detail).toMatchObject({ region: "eu", deployment_id: euDeployment });
      expect(r.headers["x-meridian-region"]).toBe("eu");
      expect(r.headers["x-meridian-plane"]).toBe(plane);
      expect(route(r)).toEqual([plane]);
    }
    // The global ingress has nowhere to send the standard form either: never to a replica in another region.
    const standard = await call(cluster, "us-1", standardHost(), "/environments/prod-eu/predict", {
      record: false,
    });
    expect(standard.status).toBe(503);
    expect(standard.body.error_code).toBe("model_unavailable");
    // us replicas of another model are healthy and serving.
    const us = await call(cluster, "us-1", `model-${plain}.${DOMAIN}`, "/production/predict", {
      record: false,
    });
    expect(us.status).toBe(200);
    expect(us.headers["x-meridian-plane"]).toBe("us-1");
    expect(sample(await scrape(cluster.plane("us-1")), "meridian_plane_replicas", { state: "READY" })).toBe(
      1,
    );

    const on = await api.post(`/v1/models/${residency}/environments/prod-eu/activate`, {});
    expect(on.status, JSON.stringify(on.body)).toBe(200);
    await findEuServing();
    for (const plane of [euServing, euOther]) {
      await eventually(
        async () =>
          (await call(cluster, plane, regionalHost(), "/predict", { record: false })).status === 200,
        30_000,
      );
    }
    await eventually(async () => {
      const r = await call(cluster, "us-1", standardHost(), "/environments/prod-eu/predict", {
        record: false,
      });
      return r.status === 200;
    });
  }, 60_000);

  it("hands out public keys only: no snapshot, served or cached, holds a private key or a shared secret", async () => {
    const database = new SQLite(join(cluster.dir, "control", "meridian.db"), { readonly: true });
    const meta = database.prepare("select key, value from meta").all() as Array<{
      key: string;
      value: string;
    }>;
    database.close();
    expect(meta.map((m) => m.key)).not.toContain("hop_secret");
    const control = signingKeyFromJwk(meta.find((m) => m.key === CONTROL_KEY_META)!.value);
    const controlD = control.privateKey.export({ format: "jwk" }).d!;
    const planeKeys = new Map<string, { publicKey: string; d: string }>();
    for (const p of cluster.planes.values()) {
      const file = join(p.dataDir, "plane.key");
      expect(statSync(file).mode & 0o777).toBe(0o600);
      const { key } = await loadOrCreatePlaneKey(file);
      planeKeys.set(p.name, { publicKey: key.publicKey, d: key.privateKey.export({ format: "jwk" }).d! });
    }
    const secrets = [
      controlD,
      ...[...planeKeys.values()].map((k) => k.d),
      ...[...cluster.planes.values()].map((p) => p.token.split(".").at(-1)!),
    ];
    for (const p of cluster.planes.values()) {
      const served = await request(`${cluster.controlUrl}/v1/internal/planes/${p.name}/snapshot?wait=0`, {
        headers: { authorization: `Bearer ${p.token}` },
      });
      expect(served.statusCode).toBe(200);
      const texts = [await served.body.text(), readFileSync(join(p.dataDir, "snapshot.json"), "utf8")];
      for (const text of texts) {
        for (const secret of secrets) expect(text).not.toContain(secret);
        expect(text).not.toMatch(/hop_secret|PRIVATE KEY|"d":/);
        const snap = JSON.parse(text);
        // What it does carry: the control plane's public key and every other plane's current one.
        expect(snap.control_key).toEqual({ key_id: control.keyId, public_key: control.publicKey });
        const current = (snap.plane_keys as Array<{ plane: string; public_key: string; retired_at: null }>)
          .filter((k) => k.retired_at === null)
          .map((k) => [k.plane, k.public_key]);
        const others = [...planeKeys].filter(([n]) => n !== p.name).map(([n, k]) => [n, k.publicKey]);
        expect(current.sort()).toEqual(others.sort());
      }
    }
  });

  it("keeps serving with the control plane stopped, also after the planes restart", async () => {
    await cluster.stopControl();
    const check = async () => {
      const local = await call(cluster, euServing, regionalHost(), "/predict", { record: false });
      const forwarded = await call(cluster, euOther, regionalHost(), "/predict", { record: false });
      const standard = await call(cluster, "us-1", standardHost(), "/environments/prod-eu/predict", {
        record: false,
      });
      const us = await call(cluster, "us-1", `model-${plain}.${DOMAIN}`, "/production/predict", {
        record: false,
      });
      return { local, forwarded, standard, us };
    };
    const expectServed = (r: Awaited<ReturnType<typeof check>>) => {
      expect(r.local.status, JSON.stringify(r.local.body)).toBe(200);
      expect(r.local.headers["x-meridian-plane"]).toBe(euServing);
      expect(r.forwarded.status, JSON.stringify(r.forwarded.body)).toBe(200);
      expect(route(r.forwarded)).toEqual([euOther, euServing]);
      expect(r.standard.status, JSON.stringify(r.standard.body)).toBe(200);
      expect(route(r.standard)).toEqual(["us-1", euServing]);
      expect(r.us.status).toBe(200);
    };
    expectServed(await check());
    // The planes notice the control plane is gone, and keep serving.
    for (const p of cluster.planes.values()) {
      await eventually(async () => {
        const res = await request(`http://${p.host}:${p.admin}/healthz`);
        return ((await res.body.json()) as { control_plane: string }).control_plane === "disconnected";
      });
    }
    expectServed(await check());

    // Restart the eu plane that serves and the global ingress, the control plane still stopped: each
    // starts from its cached snapshot and artifacts, restarts its replicas, and serves again.
    for (const name of [euServing, "us-1"]) {
      await cluster.plane(name).stop();
      await cluster.plane(name).start();
    }
    const after = await eventually(async () => {
      const r = await check();
      return [r.local, r.forwarded, r.standard, r.us].every((x) => x.status === 200) ? r : null;
    }, 30_000);
    expectServed(after);
    expect(cluster.control.child.exitCode ?? cluster.control.child.signalCode).not.toBeNull();
  }, 60_000);
});
