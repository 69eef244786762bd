// End-to-end tests of the ingress over real sockets: four planes on their own loopback addresses (us-1,
// us-2 on 127.0.1.x; eu-1, eu-2 on 127.0.2.x), snapshots built here, real HTTP servers as replicas.
// The suite runs on the wire transport here and on the node:http fallback in ingress.http.test.ts.
import { createHash } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { Registry } from "prom-client";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import type { StandardEndpointPolicy } from "../core/domain.ts";
import type { PlaneKey, PlaneRef, PlaneSnapshot } from "../core/snapshot.ts";
import { generateSigningKey, type SigningKey } from "../lib/keys.ts";
import { AuditLog } from "./audit.ts";
import { type HopClaims, signHop } from "./hop.ts";
import { createIngress, type Ingress, type IngressTransport } from "./ingress.ts";
import type { IngressOptions } from "./options.ts";
import { type CallOptions, call, startReplica, type TestReplica } from "./testing.ts";

const DOMAIN = "meridian.test";
const M1 = "aaaaaaa1";
const M2 = "bbbbbbb2";
const STD = `model-${M1}.${DOMAIN}`;
const REG = `model-${M1}-prod-eu.${DOMAIN}`;
const sha = (k: string) => createHash("sha256").update(k).digest("hex");
const LIMIT = 256 * 1024;
/** The hop's wait for a peer's 100 Continue in this suite (the hop timeout is predict + 1 s = 1.8 s). */
const CONTINUE_MS = 300;
const TRANSPORT: IngressTransport =
  (globalThis as { ingressTransportUnderTest?: IngressTransport }).ingressTransportUnderTest ?? "wire";

const PLANES = [
  { name: "us-1", region: "us", ip: "127.0.1.1", global: true },
  { name: "us-2", region: "us", ip: "127.0.1.2", global: false },
  { name: "eu-1", region: "eu", ip: "127.0.2.1", global: false },
  { name: "eu-2", region: "eu", ip: "127.0.2.2", global: false },
] as const;
type PlaneName = (typeof PLANES)[number]["name"];
/** Each plane's own key pair; its peers get only the public half, in their snapshots. */
const KEYS = new Map<string, SigningKey>(PLANES.map((p) => [p.name, generateSigningKey()]));
const CONTROL_KEY = generateSigningKey();
const keyOf = (name: string) => KEYS.get(name)!;
const publicKeyOf = (plane: string, k: SigningKey, retired_at: string | null = null): PlaneKey => ({
  plane,
  key_id: k.keyId,
  public_key: k.publicKey,
  retired_at,
});

interface Plane {
  name: PlaneName;
  ingress: Ingress;
  audit: AuditLog;
  registry: Registry;
  /** deployment id → READY replica endpoints on this plane. */
  replicas: Map<string, string[]>;
}

const world = {
  revision: 1,
  policy: "allow" as StandardEndpointPolicy,
  euReady: ["eu-2"] as string[],
  /** Keys retired by a rotation, still carried for the hop window. */
  retired: [] as PlaneKey[],
};
const planes = new Map<PlaneName, Plane>();
const refs: PlaneRef[] = [];
const cache = new Map<string, PlaneSnapshot>();
let repUs: TestReplica;
let repEu: TestReplica;
let repUsM2: TestReplica;
let dataDir: string;

function bump(change: () => void): void {
  change();
  world.revision++;
}

function snapshotFor(name: PlaneName): PlaneSnapshot {
  const cacheKey = `${name}@${world.revision}`;
  const hit = cache.get(cacheKey);
  if (hit) return hit;
  const snap: PlaneSnapshot = {
    revision: world.revision,
    domain: DOMAIN,
    plane: refs.find((p) => p.name === name)!,
    planes: refs,
    plane_keys: [
      ...PLANES.filter((p) => p.name !== name).map((p) => publicKeyOf(p.name, keyOf(p.name))),
      ...world.retired.filter((k) => k.plane !== name),
    ],
    control_key: { key_id: CONTROL_KEY.keyId, public_key: CONTROL_KEY.publicKey },
    api_keys: [
      { hash: sha("k-personal"), prefix: "k-pe", team_id: "t1", category: "PERSONAL", model_ids: null },
      { hash: sha("k-scoped"), prefix: "k-sc", team_id: "t1", category: "WORKSPACE_INVOKE", model_ids: [M1] },
      {
        hash: sha("k-scoped-other"),
        prefix: "k-so",
        team_id: "t1",
        category: "WORKSPACE_INVOKE",
        model_ids: ["ccccccc3"],
      },
      {
        hash: sha("k-metrics"),
        prefix: "k-me",
        team_id: "t1",
        category: "WORKSPACE_EXPORT_METRICS",
        model_ids: null,
      },
      { hash: sha("k-team2"), prefix: "k-t2", team_id: "t2", category: "PERSONAL", model_ids: null },
      {
        hash: sha("k-eu"),
        prefix: "k-eu",
        team_id: "t1",
        category: "PERSONAL",
        model_ids: null,
        regions: ["eu"],
      },
      {
        hash: sha("k-us"),
        prefix: "k-us",
        team_id: "t1",
        category: "WORKSPACE_INVOKE",
        model_ids: null,
        regions: ["us"],
      },
    ],
    models: [
      {
        id: M1,
        team_id: "t1",
        name: "m1",
        development_deployment_id: null,
        environments: [
          { name: "production", deployment_id: "d-prod", region: null, standard_endpoint_policy: "allow" },
          { name: "prod-eu", deployment_id: "d-eu", region: "eu", standard_endpoint_policy: world.policy },
        ],
        deployments: [
          { id: "d-prod", region: null, ready_planes: ["us-1"] },
          { id: "d-eu", region: "eu", ready_planes: world.euReady },
        ],
      },
      {
        id: M2,
        team_id: "t2",
        name: "m2",
        development_deployment_id: null,
        environments: [
          { name: "production", deployment_id: "d-m2", region: null, standard_endpoint_policy: "allow" },
        ],
        deployments: [{ id: "d-m2", region: null, ready_planes: ["us-1"] }],
      },
    ],
    replicas: [],
  };
  cache.set(cacheKey, snap);
  return snap;
}

function plane(name: PlaneName): Plane {
  return planes.get(name)!;
}

function send(name: PlaneName, o: Omit<CallOptions, "address">) {
  return call({ address: plane(name).ingress.address!, ...o });
}

beforeAll(async () => {
  dataDir = await mkdtemp(join(tmpdir(), "meridian-ingress-"));
  repUs = await startReplica("rep-us", "127.0.1.1");
  repUsM2 = await startReplica("rep-us-m2", "127.0.1.1");
  repEu = await startReplica("rep-eu", "127.0.2.2");
  for (const p of PLANES) {
    const audit = new AuditLog({ dir: join(dataDir, p.name), flushIntervalMs: 20 });
    await audit.start();
    const registry = new Registry();
    const replicas = new Map<string, string[]>();
    const ingress = createIngress({
      plane: { name: p.name, region: p.region },
      listen: { host: p.ip, port: 0 },
      signingKey: keyOf(p.name),
      snapshot: () => snapshotFor(p.name),
      localReplicas: (id) => replicas.get(id) ?? [],
      limits: {
        maxBodyBytes: LIMIT,
        predictTimeoutMs: 800,
        headersTimeoutMs: 1_500,
        requestTimeoutMs: 4_000,
        keepAliveTimeoutMs: 4_000,
        maxHeaderBytes: 8 * 1024,
        connectTimeoutMs: 1_000,
        hopContinueTimeoutMs: CONTINUE_MS,
      },
      registry,
      audit,
      transport: TRANSPORT,
    });
    await ingress.start();
    expect(ingress.transport).toBe(TRANSPORT);
    planes.set(p.name, { name: p.name, ingress, audit, registry, replicas });
    refs.push({
      name: p.name,
      region: p.region,
      ingress: [`${p.ip}:${ingress.address!.port}`],
      global_ingress: p.global,
    });
  }
  plane("us-1").replicas.set("d-prod", [repUs.endpoint]);
  plane("us-1").replicas.set("d-m2", [repUsM2.endpoint]);
  plane("eu-2").replicas.set("d-eu", [repEu.endpoint]);
});

afterAll(async () => {
  for (const p of planes.values()) {
    await p.ingress.stop();
    await p.audit.stop();
  }
  await Promise.all([repUs.close(), repEu.close(), repUsM2.close()]);
  await rm(dataDir, { recursive: true, force: true });
});

beforeEach(() => {
  bump(() => {
    world.policy = "allow";
    world.euReady = ["eu-2"];
  });
  plane("eu-2").replicas.set("d-eu", [repEu.endpoint]);
});

function proof(r: { headers: Record<string, unknown> }) {
  return {
    region: r.headers["x-meridian-region"],
    plane: r.headers["x-meridian-plane"],
    deployment: r.headers["x-meridian-deployment-id"],
    route: r.headers["x-meridian-route"],
  };
}

describe("regional endpoint", () => {
  it("is served in region, locally", async () => {
    const r = await send("eu-2", { host: REG, path: "/predict", body: '{"x":1}' });
    expect(r.status).toBe(200);
    expect((r.json as { replica: string }).replica).toBe("rep-eu");
    expect(proof(r)).toEqual({ region: "eu", plane: "eu-2", deployment: "d-eu", route: "eu-2" });
    expect(r.headers["x-request-id"]).toMatch(/^[0-9a-f-]{36}$/);
  });

  it("is forwarded to another plane of the same region, with the route showing both", async () => {
    const before = repEu.seen.length;
    const r = await send("eu-1", { host: REG, path: "/predict", headers: { "x-request-id": "trace-abc.1" } });
    expect(r.status).toBe(200);
    expect((r.json as { replica: string }).replica).toBe("rep-eu");
    expect(proof(r)).toEqual({ region: "eu", plane: "eu-2", deployment: "d-eu", route: "eu-1, eu-2" });
    expect(r.headers["x-request-id"]).toBe("trace-abc.1");
    const seen = repEu.seen[before]!;
    expect(seen.path).toBe("/v1/models/model:predict");
    expect(seen.headers["x-request-id"]).toBe("trace-abc.1");
    expect(seen.headers.authorization).toBeUndefined();
    expect(seen.headers["x-meridian-hop"]).toBeUndefined();
  });

  it("fails closed with 503 when every eu replica is down while us replicas are healthy", async () => {
    bump(() => {
      world.euReady = [];
    });
    plane("eu-2").replicas.set("d-eu", []);
    const usBefore = repUs.seen.length;
    for (const p of ["eu-1", "eu-2"] as const) {
      const r = await send(p, { host: REG, path: "/predict" });
      expect(r.status).toBe(503);
      expect(r.json).toMatchObject({ error_code: "model_unavailable", detail: { region: "eu" } });
      expect(proof(r)).toMatchObject({ region: "eu", plane: p });
    }
    const us = await send("us-1", { host: STD, path: "/production/predict" });
    expect(us.status).toBe(200);
    expect(repUs.seen.length).toBe(usBefore + 1); // only the production call reached a us replica
  });

  it("fails closed with 503 when the in-region replica refuses connections (snapshot still says ready)", async () => {
    const dead = await startReplica("dead", "127.0.2.2");
    await dead.close();
    plane("eu-2").replicas.set("d-eu", [dead.endpoint]);
    const r = await send("eu-1", { host: REG, path: "/predict" });
    expect(r.status).toBe(503);
    expect(r.json).toMatchObject({ error_code: "model_unavailable" });
    expect(proof(r)).toMatchObject({ region: "eu", plane: "eu-2", route: "eu-1, eu-2" });
  });

  it("a request no local replica accepts (dead, restarting) goes once to the region's other ready plane", async () => {
    const dead = await startReplica("dead", "127.0.2.1");
    await dead.close();
    bump(() => {
      world.euReady = ["eu-1", "eu-2"];
    });
    plane("eu-1").replicas.set("d-eu", [dead.endpoint]);
    try {
      for (const chunked of [false, true]) {
        const before = repEu.seen.length;
        const id = `handover-${chunked ? "chunked" : "json"}`;
        const r = await send("eu-1", {
          host: REG,
          path: "/predict",
          body: '{"x":"handed over"}',
          chunked,
          headers: { "x-request-id": id },
        });
        expect(r.status, r.body).toBe(200);
        expect(proof(r)).toEqual({ region: "eu", plane: "eu-2", deployment: "d-eu", route: "eu-1, eu-2" });
        // Executed once, by the peer's replica, with the whole body; the key stopped at the ingress.
        expect(repEu.seen.length).toBe(before + 1);
        const seen = repEu.seen[before]!;
        expect(seen.headers["x-request-id"]).toBe(id);
        expect(seen.bodyBytes).toBe(Buffer.byteLength('{"x":"handed over"}'));
        expect(seen.headers.authorization).toBeUndefined();
        expect(seen.headers.expect).toBeUndefined();
      }
    } finally {
      plane("eu-1").replicas.delete("d-eu");
    }
  });

  it("a request that reached a local replica that then died is 502, never handed to a peer", async () => {
    const dying = await startReplica("dying", "127.0.2.1");
    bump(() => {
      world.euReady = ["eu-1", "eu-2"];
    });
    plane("eu-1").replicas.set("d-eu", [dying.endpoint]);
    try {
      const before = repEu.seen.length;
      const r = await send("eu-1", { host: REG, path: "/predict", headers: { "x-test-mode": "die-before" } });
      expect(r.status).toBe(502);
      expect(r.json).toMatchObject({ error_code: "replica_failed" });
      expect(dying.seen.length).toBe(1);
      expect(repEu.seen.length).toBe(before);
    } finally {
      plane("eu-1").replicas.delete("d-eu");
      await dying.close();
    }
  });

  it("a peer plane that takes the hop's head and never answers (frozen): 503 within the continue bound, or the next plane of the region", async () => {
    // A frozen ingress as its peers see it: the kernel completes the handshake and takes the bytes.
    const frozen = net.createServer((socket) => {
      socket.on("data", (c: Buffer) => received.push(c));
      socket.on("error", () => {});
      held.push(socket);
    });
    const received: Buffer[] = [];
    const held: net.Socket[] = [];
    await new Promise<void>((r) => frozen.listen(0, "127.0.2.3", r));
    refs.push({
      name: "eu-3",
      region: "eu",
      ingress: [`127.0.2.3:${(frozen.address() as net.AddressInfo).port}`],
      global_ingress: false,
    });
    try {
      bump(() => {
        world.euReady = ["eu-3"];
      });
      const started = Date.now();
      const r = await send("eu-1", { host: REG, path: "/predict", body: '{"x":1}' });
      const took = Date.now() - started;
      expect(r.status).toBe(503);
      expect(r.json).toMatchObject({ error_code: "model_unavailable", detail: { region: "eu" } });
      expect(took).toBeLessThan(CONTINUE_MS + 1_000); // the hop timeout here is 1.8 s
      const bytes = Buffer.concat(received).toString("latin1");
      expect(bytes).toMatch(/expect: 100-continue/i);
      expect(bytes.endsWith("\r\n\r\n"), "the head alone: the body never left").toBe(true);
      // With another ready plane in the region, the request goes there (each plane in turn comes first).
      bump(() => {
        world.euReady = ["eu-3", "eu-2"];
      });
      for (let i = 0; i < 4; i++) {
        const ok = await send("eu-1", { host: REG, path: "/predict", body: '{"x":1}' });
        expect(ok.status, ok.body).toBe(200);
        expect(proof(ok)).toMatchObject({ region: "eu", plane: "eu-2", route: "eu-1, eu-2" });
      }
    } finally {
      refs.splice(
        refs.findIndex((p) => p.name === "eu-3"),
        1,
      );
      bump(() => {});
      for (const socket of held) socket.destroy();
      await new Promise<void>((r) => frozen.close(() => r()));
    }
  });

  /** eu-3, a third eu plane of the test's own on 127.0.2.3 (by default serving d-eu), while `run` runs. */
  async function withEu3(overrides: Partial<IngressOptions>, run: () => Promise<void>): Promise<void> {
    const eu3 = createIngress({
      plane: { name: "eu-3", region: "eu" },
      listen: { host: "127.0.2.3", port: 0 },
      signingKey: generateSigningKey(),
      snapshot: () => snapshotFor("eu-3" as PlaneName),
      localReplicas: (id) => (id === "d-eu" ? [repEu.endpoint] : []),
      limits: { predictTimeoutMs: 800, connectTimeoutMs: 1_000, hopContinueTimeoutMs: CONTINUE_MS },
      transport: TRANSPORT,
      ...overrides,
    });
    await eu3.start();
    refs.push({
      name: "eu-3",
      region: "eu",
      ingress: [`127.0.2.3:${eu3.address!.port}`],
      global_ingress: false,
    });
    try {
      await run();
    } finally {
      refs.splice(
        refs.findIndex((p) => p.name === "eu-3"),
        1,
      );
      bump(() => {});
      await eu3.stop();
    }
  }

  /**
   * eu-3 alone named ready: a request at eu-1, with a body (sent head first, waiting for the 100 the refusal
   * replaces) and without one, gets eu-1's own 503, never eu-3's fields, and eu-3 ran nothing.
   */
  async function expectSenders503(): Promise<void> {
    bump(() => {
      world.euReady = ["eu-3"];
    });
    for (const body of ['{"x":1}', ""]) {
      const before = repEu.seen.length;
      const r = await send("eu-1", { host: REG, path: "/predict", body });
      expect(r.status, r.body).toBe(503);
      expect(r.json).toMatchObject({ error_code: "model_unavailable", detail: { region: "eu" } });
      expect(r.headers["x-meridian-hop-refused"]).toBeUndefined();
      expect(proof(r)).toMatchObject({ region: "eu", plane: "eu-1" });
      expect(repEu.seen.length, "eu-3 never ran it").toBe(before);
    }
  }

  /**
   * eu-3 and eu-2 named ready: `n` requests, entering at eu-1's regional endpoint, or at us-1's standard
   * endpoint from `globalFrom` on, with bodies and without, each answered 200 by eu-2, once, its body whole.
   */
  async function expectServedByEu2(n: number, globalFrom = n): Promise<void> {
    bump(() => {
      world.euReady = ["eu-3", "eu-2"];
    });
    for (let i = 0; i < n; i++) {
      const before = repEu.seen.length;
      const body = i % 4 < 2 ? `{"x":${i}}` : "";
      const entry = i < globalFrom ? "eu-1" : "us-1";
      const ok = await send(entry, {
        host: entry === "eu-1" ? REG : STD,
        path: entry === "eu-1" ? "/predict" : "/environments/prod-eu/predict",
        body,
      });
      expect(ok.status, ok.body).toBe(200);
      expect(proof(ok)).toMatchObject({ region: "eu", plane: "eu-2", route: `${entry}, eu-2` });
      expect(repEu.seen.length).toBe(before + 1);
      expect(repEu.seen.at(-1)!.bodyBytes).toBe(body.length);
    }
  }

  const upstreamFailures = async (kind: string) =>
    Number(new RegExp(`kind="${kind}"[^\\n]* (\\d+)`).exec(await plane("eu-1").registry.metrics())?.[1] ?? 0);

  it("a peer plane whose clock is outside the hop window refuses the hop: the next plane of the region takes the request, or 503, never the peer's 403", async () => {
    // eu-3's clock runs 60 s ahead (past the hop window of 30 s).
    await withEu3({ now: () => Date.now() + 60_000 }, async () => {
      await expectSenders503();
      // The planes are tried in turn: some of the eight met eu-3 first.
      await expectServedByEu2(8);
      expect(await upstreamFailures("hop_refused")).toBeGreaterThan(0);
    });
  });

  it("a peer plane that takes the hop with no replica of its own ready runs nothing: the next plane of the region takes the request, or 503 from the sender", async () => {
    // eu-3: the snapshot names it ready for d-eu, but its replica is gone (died since its last report).
    await withEu3({ localReplicas: () => [] }, async () => {
      await expectSenders503();
      const first = await upstreamFailures("hop_no_replica");
      expect(first, "eu-3's answers counted as hops it could not serve").toBe(2);
      // Through eu-1's regional endpoint, then the global ingress's standard endpoint.
      await expectServedByEu2(12, 8);
      expect(await upstreamFailures("hop_no_replica")).toBeGreaterThan(first);
    });
  });

  it("a model that answers as a plane that nothing ran is not believed: its request is not sent to another plane", async () => {
    // eu-2 and eu-3 both serve d-eu; the replica says, in its answer, what only a plane may say.
    await withEu3({}, async () => {
      bump(() => {
        world.euReady = ["eu-2", "eu-3"];
      });
      const counted = await upstreamFailures("hop_no_replica");
      for (const body of ['{"x":1}', ""]) {
        const before = repEu.seen.length;
        const r = await send("eu-1", {
          host: REG,
          path: "/predict",
          body,
          headers: { "x-test-mode": "claims-unserved" },
        });
        expect(r.status, r.body).toBe(503);
        expect(r.headers["x-meridian-hop-refused"]).toBeUndefined();
        // The peer that ran it answered; the entry plane did not try the other one.
        expect(proof(r).plane).toMatch(/^eu-[23]$/);
        expect(repEu.seen.length, "executed once").toBe(before + 1);
      }
      expect(await upstreamFailures("hop_no_replica")).toBe(counted);
    });
  });

  it("a peer plane that could hold the hop while its deployment wakes does not when another plane of the region is ready: the sender sends it there", async () => {
    // eu-3 as a real plane is: it wakes deployments (parking), and d-eu is wakeable. Before this, it held
    // the hop, let its body come (100 Continue), released it at once (eu-2 ready) and refused it, too late
    // for the sender to send the body elsewhere: 503 where eu-2 could have served.
    const woken: string[] = [];
    const wakeable = new WeakMap<PlaneSnapshot, PlaneSnapshot>();
    const withScale = (base: PlaneSnapshot): PlaneSnapshot => {
      let snap = wakeable.get(base);
      if (snap === undefined) {
        snap = {
          ...base,
          models: base.models.map((m) => ({
            ...m,
            deployments: m.deployments.map((d) =>
              d.id === "d-eu" ? { ...d, scale: { wakeable: true, concurrency_target: 4, policy: null } } : d,
            ),
          })),
        };
        wakeable.set(base, snap);
      }
      return snap;
    };
    const overrides: Partial<IngressOptions> = {
      snapshot: () => withScale(snapshotFor("eu-3" as PlaneName)),
      localReplicas: () => [],
      wake: async (id) => {
        woken.push(id);
      },
    };
    await withEu3(overrides, async () => {
      await expectServedByEu2(8, 4);
      expect(woken, "nothing held at eu-3, so nothing woken there").toEqual([]);
    });
  });

  it("a plane with no replica ready says no_replica only to a hop: a client's own call gets a 503 without the field", async () => {
    plane("eu-2").replicas.set("d-eu", []);
    try {
      const r = await send("eu-2", { host: REG, path: "/predict", body: '{"x":1}' });
      expect(r.status).toBe(503);
      expect(r.headers["x-meridian-hop-refused"]).toBeUndefined();
    } finally {
      plane("eu-2").replicas.set("d-eu", [repEu.endpoint]);
    }
  });

  it("retries another local replica when the first refuses the connection", async () => {
    const dead = await startReplica("dead", "127.0.2.2");
    await dead.close();
    plane("eu-2").replicas.set("d-eu", [dead.endpoint, repEu.endpoint]);
    for (let i = 0; i < 4; i++) {
      const r = await send("eu-2", { host: REG, path: "/predict" });
      expect(r.status).toBe(200);
    }
  });

  it("is refused (421) at a plane of another region, and the body never reaches a replica", async () => {
    const before = repUs.seen.length + repEu.seen.length;
    const r = await send("us-1", { host: REG, path: "/predict" });
    expect(r.status).toBe(421);
    expect(r.json).toMatchObject({ error_code: "misdirected_request", detail: { region: "eu" } });
    expect(proof(r)).toMatchObject({ region: "us", plane: "us-1", route: "us-1" });
    expect(repUs.seen.length + repEu.seen.length).toBe(before);
  });

  it.each([
    "/environments/prod-eu/predict",
    "/production/predict",
    "/development/predict",
    "/deployment/d-eu/predict",
  ])("refuses the path route %s", async (path) => {
    const r = await send("eu-2", { host: REG, path });
    expect(r.status).toBe(404);
    expect(r.json).toMatchObject({ error_code: "regional_path_not_allowed" });
  });

  it("answers 404 environment_not_regional for an unrestricted environment's regional host", async () => {
    const r = await send("eu-2", { host: `model-${M1}-production.${DOMAIN}`, path: "/predict" });
    expect(r.status).toBe(404);
    expect(r.json).toMatchObject({ error_code: "environment_not_regional" });
  });
});

describe("standard endpoint of a regional environment", () => {
  it("allow: served (forwarded from the global ingress to the region)", async () => {
    const r = await send("us-1", { host: STD, path: "/environments/prod-eu/predict" });
    expect(r.status).toBe(200);
    expect(proof(r)).toEqual({ region: "eu", plane: "eu-2", deployment: "d-eu", route: "us-1, eu-2" });
    expect(r.headers.warning).toBeUndefined();
  });

  it("warn: served with a Warning naming the regional URL", async () => {
    bump(() => {
      world.policy = "warn";
    });
    const r = await send("us-1", { host: `${STD}:8080`, path: "/environments/prod-eu/predict" });
    expect(r.status).toBe(200);
    expect(r.headers.warning).toBe(
      `299 - "Environment prod-eu is restricted to region eu; only http://${REG}:8080/predict guarantees that"`,
    );
  });

  it("deny: 403 naming the regional URL", async () => {
    bump(() => {
      world.policy = "deny";
    });
    const r = await send("us-1", { host: STD, path: "/environments/prod-eu/predict" });
    expect(r.status).toBe(403);
    expect(r.json).toMatchObject({
      error_code: "standard_endpoint_denied",
      detail: { regional_url: `http://${REG}/predict`, region: "eu" },
    });
    expect(proof(r)).toMatchObject({ plane: "us-1", deployment: "d-eu", route: "us-1" });
    // the regional endpoint keeps working under deny
    expect((await send("eu-2", { host: REG, path: "/predict" })).status).toBe(200);
  });

  it("production of an unrestricted environment is served by the us replica", async () => {
    const r = await send("us-1", { host: STD, path: "/production/predict", scheme: "Bearer" });
    expect(r.status).toBe(200);
    expect((r.json as { replica: string }).replica).toBe("rep-us");
    expect(proof(r)).toEqual({ region: "us", plane: "us-1", deployment: "d-prod", route: "us-1" });
  });
});

describe("authentication", () => {
  it.each([
    ["no key", null, 401, "unauthorized"],
    ["an unknown key", "k-nope", 401, "unauthorized"],
    ["another team's key", "k-team2", 404, "model_not_found"],
    ["a key scoped to other models", "k-scoped-other", 404, "model_not_found"],
    ["a metrics key", "k-metrics", 403, "forbidden"],
  ])("refuses %s", async (_n, key, status, code) => {
    const r = await send("us-1", { host: STD, path: "/production/predict", key });
    expect(r.status).toBe(status);
    expect(r.json).toMatchObject({ error_code: code });
    expect(proof(r)).toMatchObject({ region: "us", plane: "us-1", route: "us-1" });
  });

  it("serves a key scoped to the model, with either scheme", async () => {
    expect((await send("us-1", { host: STD, path: "/production/predict", key: "k-scoped" })).status).toBe(
      200,
    );
    const b = await send("us-1", {
      host: STD,
      path: "/production/predict",
      key: "k-scoped",
      scheme: "Bearer",
    });
    expect(b.status).toBe(200);
  });

  it("hides another team's model even from a valid key", async () => {
    const r = await send("us-1", { host: `model-${M2}.${DOMAIN}`, path: "/production/predict" });
    expect(r.status).toBe(404);
    const own = await send("us-1", {
      host: `model-${M2}.${DOMAIN}`,
      path: "/production/predict",
      key: "k-team2",
    });
    expect(own.status).toBe(200);
  });
});

describe("plane-to-plane hops", () => {
  const ID = "hop-req-1";
  /** A hop as eu-1 would sign it for eu-2, for the regional request hopCall sends. */
  const claims = (over: Partial<HopClaims> = {}): HopClaims => ({
    from: "eu-1",
    to: "eu-2",
    ms: Date.now(),
    requestId: ID,
    method: "POST",
    authority: REG,
    target: "/predict",
    ...over,
  });
  const hopCall = (hop: string, to: PlaneName = "eu-2", requestId = ID) =>
    send(to, {
      host: REG,
      path: "/predict",
      headers: { "x-request-id": requestId, "x-meridian-hop": hop, "x-meridian-route": "evil" },
    });

  it("accepts a valid hop and rebuilds the route from it", async () => {
    const r = await hopCall(signHop(keyOf("eu-1"), claims()));
    expect(r.status).toBe(200);
    expect(r.headers["x-meridian-route"]).toBe("eu-1, eu-2");
  });

  it.each<[string, () => string, string]>([
    ["signed with another plane's key", () => signHop(keyOf("us-1"), claims()), "bad_signature"],
    [
      "signed by a key the snapshot does not hold",
      () => signHop(generateSigningKey(), claims()),
      "bad_signature",
    ],
    // us-1 is a known plane and eu-1's signature is valid for eu-1: it proves nothing for us-1.
    ["claiming another source", () => signHop(keyOf("eu-1"), claims({ from: "us-1" })), "bad_signature"],
    ["addressed to another target", () => signHop(keyOf("eu-1"), claims({ to: "eu-1" })), "wrong_target"],
    ["expired", () => signHop(keyOf("eu-1"), claims({ ms: Date.now() - 120_000 })), "expired"],
    ["for another request id", () => signHop(keyOf("eu-1"), claims({ requestId: "other" })), "bad_signature"],
    ["for another path", () => signHop(keyOf("eu-1"), claims({ target: "/wake" })), "bad_signature"],
    ["from an unknown plane", () => signHop(generateSigningKey(), claims({ from: "zz-9" })), "unknown_plane"],
    ["from itself", () => signHop(keyOf("eu-2"), claims({ from: "eu-2" })), "unknown_plane"],
    ["malformed", () => "eu-1;x;y", "malformed"],
    ["in the old shared-secret form", () => `eu-1;${Date.now()};${"0".repeat(64)}`, "malformed"],
  ])("refuses a hop %s with 403 hop_invalid", async (_n, make, reason) => {
    const before = repEu.seen.length;
    const r = await hopCall(make());
    expect(r.status).toBe(403);
    expect(r.json).toMatchObject({ error_code: "hop_invalid", detail: { reason } });
    expect(r.headers["x-meridian-route"]).toBe("eu-2");
    expect(repEu.seen.length).toBe(before);
  });

  it("refuses the same hop a second time with 403 hop_replayed", async () => {
    const hop = signHop(keyOf("eu-1"), claims({ requestId: "replayed-1" }));
    expect((await hopCall(hop, "eu-2", "replayed-1")).status).toBe(200);
    const before = repEu.seen.length;
    const again = await hopCall(hop, "eu-2", "replayed-1");
    expect(again.status).toBe(403);
    expect(again.json).toMatchObject({ error_code: "hop_replayed" });
    expect(repEu.seen.length).toBe(before);
    // A client may send the same request id again: a new hop of it is a new hop.
    const fresh = signHop(keyOf("eu-1"), claims({ requestId: "replayed-1" }));
    expect((await hopCall(fresh, "eu-2", "replayed-1")).status).toBe(200);
  });

  it("a client reusing its request id through the global ingress is served every time", async () => {
    for (let i = 0; i < 3; i++) {
      const r = await send("us-1", {
        host: STD,
        path: "/environments/prod-eu/predict",
        headers: { "x-request-id": "the-same-id" },
      });
      expect(r.status).toBe(200);
      expect(r.headers["x-meridian-route"]).toBe("us-1, eu-2");
    }
  });

  it("a hop from another region with a regional request is refused (421)", async () => {
    const r = await hopCall(signHop(keyOf("us-1"), claims({ from: "us-1" })));
    expect(r.status).toBe(421);
  });

  it("a forwarded request is never forwarded again", async () => {
    const hop = signHop(keyOf("eu-2"), claims({ from: "eu-2", to: "eu-1", requestId: "r2" }));
    const r = await hopCall(hop, "eu-1", "r2");
    expect(r.status).toBe(503);
    expect(r.headers["x-meridian-route"]).toBe("eu-2, eu-1");
  });

  it("survives a key rotation for hops signed with the just-retired key", async () => {
    const old = keyOf("eu-1");
    await send("eu-2", { host: REG, path: "/predict" }); // index built with the old key
    KEYS.set("eu-1", generateSigningKey());
    bump(() => {
      world.retired = [publicKeyOf("eu-1", old, new Date().toISOString())];
    });
    try {
      expect((await hopCall(signHop(old, claims({ requestId: "rot-1" })), "eu-2", "rot-1")).status).toBe(200);
      const fresh = signHop(keyOf("eu-1"), claims({ requestId: "rot-2" }));
      expect((await hopCall(fresh, "eu-2", "rot-2")).status).toBe(200);
      // Retired longer ago than the window: no longer accepted.
      bump(() => {
        world.retired = [publicKeyOf("eu-1", old, new Date(Date.now() - 31_000).toISOString())];
      });
      const late = await hopCall(signHop(old, claims({ requestId: "rot-3" })), "eu-2", "rot-3");
      expect(late.json).toMatchObject({ error_code: "hop_invalid", detail: { reason: "bad_signature" } });
    } finally {
      KEYS.set("eu-1", old);
      bump(() => {
        world.retired = [];
      });
    }
  });
});

describe("region-bound API keys", () => {
  const reached = () => repUs.seen.length + repEu.seen.length;

  it("serve in their region on both hostname forms, forwarded within it", async () => {
    const regional = await send("eu-1", { host: REG, path: "/predict", key: "k-eu" });
    expect(regional.status).toBe(200);
    expect(proof(regional)).toEqual({ region: "eu", plane: "eu-2", deployment: "d-eu", route: "eu-1, eu-2" });
    const standard = await send("eu-1", { host: STD, path: "/environments/prod-eu/predict", key: "k-eu" });
    expect(standard.status).toBe(200);
    expect(proof(standard)).toMatchObject({ region: "eu", plane: "eu-2", route: "eu-1, eu-2" });
    const us = await send("us-1", { host: STD, path: "/production/predict", key: "k-us" });
    expect(us.status).toBe(200);
    expect(proof(us)).toMatchObject({ region: "us", plane: "us-1" });
  });

  it.each([
    ["the standard hostname", STD, "/environments/prod-eu/predict"],
    ["the regional hostname", REG, "/predict"],
  ])(
    "are refused with 403 at a plane outside their regions, on %s, before any replica",
    async (_n, host, path) => {
      const before = reached();
      const r = await send("us-1", { host, path, key: "k-eu", headers: { "x-request-id": `kr-${host}` } });
      expect(r.status).toBe(403);
      expect(r.json).toMatchObject({
        error_code: "key_region_forbidden",
        detail: { plane_region: "us", key_regions: ["eu"] },
      });
      expect(proof(r)).toMatchObject({ region: "us", plane: "us-1", route: "us-1" });
      expect(reached()).toBe(before);
      await new Promise((res) => setTimeout(res, 60));
      const [rec] = await plane("us-1").audit.query({ request_id: `kr-${host}` });
      expect(rec).toMatchObject({ status: 403, error_code: "key_region_forbidden", model_id: null });
    },
  );

  it("are refused when the request would be forwarded to a plane outside their regions", async () => {
    const before = reached();
    // Enters at us-1 (the key's region); prod-eu is ready only on eu-2.
    const toEu = await send("us-1", { host: STD, path: "/environments/prod-eu/predict", key: "k-us" });
    expect(toEu.status).toBe(403);
    expect(toEu.json).toMatchObject({
      error_code: "key_region_forbidden",
      detail: { plane_region: "us", key_regions: ["us"], target_regions: ["eu"] },
    });
    expect(proof(toEu)).toMatchObject({ plane: "us-1", route: "us-1" });
    // Enters at eu-1 (the key's region); production is ready only on us-1.
    const toUs = await send("eu-1", { host: STD, path: "/production/predict", key: "k-eu" });
    expect(toUs.status).toBe(403);
    expect(toUs.json).toMatchObject({
      error_code: "key_region_forbidden",
      detail: { plane_region: "eu", target_regions: ["us"] },
    });
    expect(reached()).toBe(before);
  });

  it("are re-checked by the receiving plane: a hop from outside their regions is refused", async () => {
    const hop = (key: string, id: string) =>
      send("eu-2", {
        host: STD,
        path: "/environments/prod-eu/predict",
        key,
        headers: {
          "x-request-id": id,
          "x-meridian-hop": signHop(keyOf("us-1"), {
            from: "us-1",
            to: "eu-2",
            ms: Date.now(),
            requestId: id,
            method: "POST",
            authority: STD,
            target: "/environments/prod-eu/predict",
          }),
        },
      });
    const before = repEu.seen.length;
    const refused = await hop("k-eu", "kr-hop-1");
    expect(refused.status).toBe(403);
    expect(refused.json).toMatchObject({
      error_code: "key_region_forbidden",
      detail: { plane_region: "eu", key_regions: ["eu"], forwarded_from_region: "us" },
    });
    expect(proof(refused)).toMatchObject({ plane: "eu-2", route: "us-1, eu-2" });
    expect(repEu.seen.length).toBe(before);
    // The same hop with a key bound to no region is served: the refusal is the key's.
    expect((await hop("k-personal", "kr-hop-2")).status).toBe(200);
  });
});

describe("proxying", () => {
  it("strips hop-by-hop headers both ways, sets X-Forwarded-*, and keeps end-to-end ones", async () => {
    const before = repUs.seen.length;
    const r = await send("us-1", {
      host: STD,
      path: "/production/predict?q=1",
      headers: {
        connection: "keep-alive, x-conn-named",
        "x-conn-named": "1",
        "keep-alive": "timeout=5",
        te: "trailers",
        "proxy-authorization": "Basic eA==",
        "x-custom": "kept",
        "x-forwarded-for": "203.0.113.9",
        "x-forwarded-proto": "https",
        "x-meridian-route": "spoofed",
      },
    });
    expect(r.status).toBe(200);
    const seen = repUs.seen[before]!.headers;
    for (const h of [
      "x-conn-named",
      "keep-alive",
      "te",
      "proxy-authorization",
      "authorization",
      "x-meridian-route",
    ]) {
      expect(seen[h], h).toBeUndefined();
    }
    expect(seen["x-custom"]).toBe("kept");
    expect(seen["x-forwarded-for"]).toBe("203.0.113.9, 127.0.0.1");
    expect(seen["x-forwarded-proto"]).toBe("http");
    expect(seen["x-forwarded-host"]).toBe(STD);
    expect(r.headers["x-resp-hop"]).toBeUndefined();
    expect(r.headers["x-model-header"]).toBe("kept");
    expect(r.headers["x-meridian-plane"]).toBe("us-1"); // the replica's spoofed value is dropped
  });

  it("reuses pooled upstream connections", async () => {
    const before = repUs.sockets.size;
    for (let i = 0; i < 15; i++) await send("us-1", { host: STD, path: "/production/predict" });
    expect(repUs.sockets.size - before).toBeLessThanOrEqual(1);
  });

  it("streams the response: chunks arrive before the upstream ends", async () => {
    const r = await send("us-1", {
      host: STD,
      path: "/production/predict",
      headers: { "x-test-mode": "stream" },
    });
    expect(r.status).toBe(200);
    expect(r.body).toBe("abc");
    expect(r.chunkTimes.length).toBeGreaterThanOrEqual(2);
    expect(r.chunkTimes.at(-1)! - r.chunkTimes[0]!).toBeGreaterThan(400);
  });

  it("streams a large request body through (chunked, under the limit)", async () => {
    const before = repUs.seen.length;
    const body = Buffer.alloc(LIMIT - 10, 97);
    const r = await send("us-1", { host: STD, path: "/production/predict", body, chunked: true });
    expect(r.status).toBe(200);
    expect(repUs.seen[before]!.bodyBytes).toBe(LIMIT - 10);
  });

  it("answers 413 on a declared Content-Length over the limit, before reading it", async () => {
    const before = repUs.seen.length;
    const r = await new Promise<string>((resolve) => {
      const s = net.connect(plane("us-1").ingress.address!.port, "127.0.1.1", () => {
        s.write(
          `POST /production/predict HTTP/1.1\r\nHost: ${STD}\r\nAuthorization: Api-Key k-personal\r\nContent-Length: ${LIMIT + 1}\r\n\r\n`,
        );
      });
      let data = "";
      s.on("data", (c) => {
        data += c;
      });
      s.on("close", () => resolve(data));
    });
    expect(r).toMatch(/^HTTP\/1\.1 413 /);
    expect(r).toContain('"error_code":"payload_too_large"');
    expect(r.toLowerCase()).toContain("x-meridian-plane: us-1");
    expect(repUs.seen.length).toBe(before);
  });

  it("answers 413 on a chunked body that grows over the limit", async () => {
    const r = await send("us-1", {
      host: STD,
      path: "/production/predict",
      body: Buffer.alloc(LIMIT + 1024, 97),
      chunked: true,
      headers: { "x-request-id": "too-big-chunked" },
    }).catch((err: Error) => err);
    await new Promise((res) => setTimeout(res, 50));
    const [rec] = await plane("us-1").audit.query({ request_id: "too-big-chunked" });
    expect(rec).toMatchObject({ status: 413, error_code: "payload_too_large" });
    // The ingress answers 413 and closes; a client still writing may see the close first.
    if (r instanceof Error) expect(r.message).toMatch(/EPIPE|ECONNRESET|socket hang up/);
    else expect(r).toMatchObject({ status: 413, json: { error_code: "payload_too_large" } });
  });

  it("answers 504 when the model does not answer in time", async () => {
    const t0 = performance.now();
    const r = await send("us-1", {
      host: STD,
      path: "/production/predict",
      headers: { "x-test-mode": "slow" },
    });
    expect(r.status).toBe(504);
    expect(r.json).toMatchObject({ error_code: "upstream_timeout" });
    expect(performance.now() - t0).toBeLessThan(1_900);
  });

  it("answers 502 when the replica dies before answering", async () => {
    const r = await send("us-1", {
      host: STD,
      path: "/production/predict",
      headers: { "x-test-mode": "die-before" },
    });
    expect(r.status).toBe(502);
    expect(r.json).toMatchObject({ error_code: "replica_failed" });
    expect(proof(r)).toMatchObject({ plane: "us-1", deployment: "d-prod" });
  });

  it("aborts the response when the replica dies after its headers were sent", async () => {
    const r = await send("us-1", {
      host: STD,
      path: "/production/predict",
      headers: { "x-test-mode": "die-mid" },
    });
    expect(r.status).toBe(200);
    expect(r.aborted).toBe(true);
    expect(r.body).toBe("partial");
  });

  it("cancels the upstream request when the client goes away", async () => {
    const before = repUs.seen.length;
    const s = net.connect(plane("us-1").ingress.address!.port, "127.0.1.1", () => {
      s.write(
        `POST /production/predict HTTP/1.1\r\nHost: ${STD}\r\nAuthorization: Api-Key k-personal\r\nx-request-id: gone-1\r\nx-test-mode: hang\r\nContent-Length: 2\r\n\r\n{}`,
      );
    });
    while (repUs.seen.length === before) await new Promise((r) => setTimeout(r, 10));
    s.destroy();
    await repUs.seen[before]!.closedEarly; // resolves only if the ingress dropped the upstream request
    await new Promise((r) => setTimeout(r, 50));
    const [rec] = await plane("us-1").audit.query({ request_id: "gone-1" });
    expect(rec).toMatchObject({ status: 499, aborted: true, model_id: M1 });
  });

  it("handles Expect: 100-continue, refusing before the body when the key is bad", async () => {
    const raw = (key: string) =>
      new Promise<string>((resolve) => {
        const s = net.connect(plane("us-1").ingress.address!.port, "127.0.1.1", () => {
          s.write(
            `POST /production/predict HTTP/1.1\r\nHost: ${STD}\r\nAuthorization: Api-Key ${key}\r\nExpect: 100-continue\r\nContent-Length: 2\r\nConnection: close\r\n\r\n`,
          );
        });
        let data = "";
        s.on("data", (c) => {
          data += c;
          if (data.startsWith("HTTP/1.1 100")) s.write("{}");
        });
        s.on("close", () => resolve(data));
      });
    expect(await raw("k-nope")).toMatch(/^HTTP\/1\.1 401 /);
    const ok = await raw("k-personal");
    expect(ok).toMatch(/^HTTP\/1\.1 100 Continue\r\n\r\nHTTP\/1\.1 200 /);
  });
});

describe("replicas on Unix sockets (egress deny)", () => {
  let repUnix: TestReplica;
  beforeAll(async () => {
    repUnix = await startReplica("rep-unix", "127.0.0.1", join(dataDir, "rep-unix.sock"));
  });
  afterAll(async () => {
    plane("us-1").replicas.set("d-prod", [repUs.endpoint]);
    await repUnix.close();
  });
  beforeEach(() => {
    plane("us-1").replicas.set("d-prod", [repUnix.endpoint]);
  });

  it("proxies to a unix: endpoint with the same header rules, Host localhost, and proof headers", async () => {
    const before = repUnix.seen.length;
    const r = await send("us-1", {
      host: STD,
      path: "/production/predict",
      headers: { "x-custom": "kept", "keep-alive": "timeout=5" },
    });
    expect(r.status).toBe(200);
    expect(r.json).toMatchObject({ replica: "rep-unix", path: "/v1/models/model:predict" });
    const seen = repUnix.seen[before]!.headers;
    expect(seen.host).toBe("localhost");
    expect(seen["x-custom"]).toBe("kept");
    expect(seen["keep-alive"]).toBeUndefined();
    expect(seen.authorization).toBeUndefined();
    expect(proof(r)).toMatchObject({ region: "us", plane: "us-1", deployment: "d-prod", route: "us-1" });
    expect(r.headers["x-meridian-plane"]).toBe("us-1");
  });

  it("pools its connections as it does TCP ones", async () => {
    const before = repUnix.sockets.size;
    for (let i = 0; i < 15; i++) {
      expect((await send("us-1", { host: STD, path: "/production/predict" })).status).toBe(200);
    }
    expect(repUnix.sockets.size - before).toBeLessThanOrEqual(1);
  });

  it("streams the response through", async () => {
    const r = await send("us-1", {
      host: STD,
      path: "/production/predict",
      headers: { "x-test-mode": "stream" },
    });
    expect(r.status).toBe(200);
    expect(r.body).toBe("abc");
    expect(r.chunkTimes.length).toBeGreaterThanOrEqual(2);
  });

  it("a socket that is gone is skipped for the next replica, and with none left the answer is 503", async () => {
    const gone = `unix:${join(dataDir, "no-such-replica.sock")}`;
    plane("us-1").replicas.set("d-prod", [gone, repUnix.endpoint]);
    for (let i = 0; i < 4; i++) {
      expect((await send("us-1", { host: STD, path: "/production/predict" })).status).toBe(200);
    }
    plane("us-1").replicas.set("d-prod", [gone]);
    const r = await send("us-1", { host: STD, path: "/production/predict" });
    expect(r.status).toBe(503);
    expect(r.json).toMatchObject({ error_code: "model_unavailable" });
  });

  it("times out like a TCP replica (504), and one that drops the connection is a 502", async () => {
    const slow = await send("us-1", {
      host: STD,
      path: "/production/predict",
      headers: { "x-test-mode": "slow" },
    });
    expect(slow.status).toBe(504);
    expect(slow.json).toMatchObject({ error_code: "upstream_timeout" });
    const before = await send("us-1", {
      host: STD,
      path: "/production/predict",
      headers: { "x-test-mode": "die-before" },
    });
    expect(before.status).toBe(502);
    expect(before.json).toMatchObject({ error_code: "replica_failed" });
  });
});

describe("audit and metrics", () => {
  it("records on every plane what the client saw", async () => {
    const r = await send("eu-1", { host: REG, path: "/predict", headers: { "x-request-id": "audit-1" } });
    expect(r.status).toBe(200);
    await new Promise((res) => setTimeout(res, 60));
    const [atEntry] = await plane("eu-1").audit.query({ request_id: "audit-1" });
    const [atServer] = await plane("eu-2").audit.query({ request_id: "audit-1" });
    expect(atEntry).toMatchObject({
      model_id: M1,
      environment: "prod-eu",
      deployment_id: "d-eu",
      hostname_form: "regional",
      route: ["eu-1", "eu-2"],
      status: 200,
      plane: "eu-1",
      region: "eu",
      processed_by: "eu-2",
      forwarded_from: null,
      aborted: false,
    });
    expect(atServer).toMatchObject({
      route: ["eu-1", "eu-2"],
      status: 200,
      plane: "eu-2",
      processed_by: "eu-2",
      forwarded_from: "eu-1",
    });
    const denied = await send("us-1", {
      host: STD,
      path: "/environments/nope/predict",
      headers: { "x-request-id": "audit-2" },
    });
    const [rec] = await plane("us-1").audit.query({ request_id: "audit-2" });
    expect(rec).toMatchObject({
      status: denied.status,
      error_code: "environment_not_found",
      hostname_form: "standard",
    });
    // no record anywhere holds a key
    const all = JSON.stringify(await plane("us-1").audit.query({ limit: 10_000 }));
    expect(all).not.toContain("k-personal");
    expect(plane("eu-2").audit.takeRequestCounts()).toContainEqual(
      expect.objectContaining({ model_id: M1, environment: "prod-eu", status_class: "2xx" }),
    );
  });

  it("exposes request counters and latency histograms by environment, region, form and status", async () => {
    await send("eu-2", { host: REG, path: "/predict" });
    const text = await plane("eu-2").registry.metrics();
    expect(text).toMatch(
      /meridian_ingress_requests_total\{environment="prod-eu",region="eu",hostname_form="regional",status_code="200"\} \d+/,
    );
    expect(text).toContain("meridian_ingress_request_duration_seconds_bucket{");
  });
});

describe("malformed requests", () => {
  const port = () => plane("us-1").ingress.address!.port;
  function raw(payload: string | Buffer, end: boolean): Promise<{ data: string; closed: boolean }> {
    return new Promise((resolve) => {
      const s = net.connect(port(), "127.0.1.1");
      let data = "";
      const timer = setTimeout(() => {
        s.destroy();
        resolve({ data, closed: false });
      }, 6_000);
      s.on("data", (c) => {
        data += c.toString("latin1");
      });
      s.on("error", () => {});
      s.on("close", () => {
        clearTimeout(timer);
        resolve({ data, closed: true });
      });
      s.write(payload, () => {
        if (end) s.end();
      });
    });
  }
  const auth = "Authorization: Api-Key k-personal\r\n";
  const line = "POST /production/predict HTTP/1.1\r\n";
  const cases: Array<[string, string, RegExp | null]> = [
    [
      "duplicate Host",
      `${line}Host: ${STD}\r\nHost: model-${M2}.${DOMAIN}\r\n${auth}Content-Length: 0\r\nConnection: close\r\n\r\n`,
      /^HTTP\/1\.1 400 /,
    ],
    ["no Host", `${line}${auth}Content-Length: 0\r\nConnection: close\r\n\r\n`, /^HTTP\/1\.1 400 /],
    [
      "empty Host",
      `${line}Host: \r\n${auth}Content-Length: 0\r\nConnection: close\r\n\r\n`,
      /^HTTP\/1\.1 400 /,
    ],
    [
      "userinfo Host",
      `${line}Host: u@${STD}\r\n${auth}Content-Length: 0\r\nConnection: close\r\n\r\n`,
      /^HTTP\/1\.1 400 /,
    ],
    [
      "IPv6 Host",
      `${line}Host: [::1]:80\r\n${auth}Content-Length: 0\r\nConnection: close\r\n\r\n`,
      /^HTTP\/1\.1 404 /,
    ],
    [
      "unknown Host",
      `${line}Host: example.com\r\n${auth}Content-Length: 0\r\nConnection: close\r\n\r\n`,
      /^HTTP\/1\.1 404 /,
    ],
    ["huge headers", `${line}Host: ${STD}\r\nX-Big: ${"a".repeat(20_000)}\r\n\r\n`, /^HTTP\/1\.1 431 /],
    [
      "CL and TE",
      `${line}Host: ${STD}\r\n${auth}Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n`,
      /^HTTP\/1\.1 400 /,
    ],
    [
      "two Content-Lengths",
      `${line}Host: ${STD}\r\n${auth}Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd`,
      /^HTTP\/1\.1 400 /,
    ],
    [
      "bad chunk size",
      `${line}Host: ${STD}\r\n${auth}Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n`,
      null,
    ],
    ["obs-fold", `${line}Host: ${STD}\r\nX-A: b\r\n c\r\n\r\n`, /^HTTP\/1\.1 400 /],
    ["NUL in a header", `${line}Host: ${STD}\r\nX-A: b\u0000c\r\n\r\n`, /^HTTP\/1\.1 400 /],
    [
      "space before colon",
      `${line}Host: ${STD}\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n`,
      /^HTTP\/1\.1 400 /,
    ],
    ["bad version", `POST / HTTP/9.9\r\nHost: ${STD}\r\n\r\n`, /^HTTP\/1\.1 (400|505) /],
    ["garbage", "\u0000\u0001\u0002 nonsense\r\n\r\n", /^HTTP\/1\.1 400 /],
    ["truncated body", `${line}Host: ${STD}\r\n${auth}Content-Length: 100\r\n\r\nabc`, null],
    [
      "truncated chunked body",
      `${line}Host: ${STD}\r\n${auth}Transfer-Encoding: chunked\r\n\r\n10\r\nabc`,
      null,
    ],
    ["headers never finished", `${line}Host: ${STD}\r\nX-A: b`, null],
  ];

  it("answers or closes every malformed request, with proof headers on answers, and stays up", async () => {
    const results = await Promise.all(
      cases.flatMap(([name, payload, want]) =>
        [true, false].map(async (end) => ({ name, want, end, ...(await raw(payload, end)) })),
      ),
    );
    for (const r of results) {
      expect(r.closed || r.data.length > 0, `${r.name} got neither an answer nor a close`).toBe(true);
      if (r.data.length > 0) {
        expect(r.data, r.name).toMatch(/^HTTP\/1\.1 \d{3} /);
        expect(r.data.toLowerCase(), r.name).toContain("x-meridian-plane: us-1");
      }
      if (r.want !== null && !(r.end && r.data.length === 0)) expect(r.data, `${r.name}`).toMatch(r.want);
    }
    expect((await send("us-1", { host: STD, path: "/production/predict" })).status).toBe(200);
  });

  it("answers HEAD without a body, so the next response on the connection is read right", async () => {
    const r = await raw(
      `HEAD /production/predict HTTP/1.1\r\nHost: ${STD}\r\n${auth}\r\n` +
        `${line}Host: ${STD}\r\n${auth}Content-Length: 0\r\nConnection: close\r\n\r\n`,
      false,
    );
    expect(r.data).toMatch(/^HTTP\/1\.1 405 [\s\S]*?\r\n\r\nHTTP\/1\.1 200 /);
    expect(r.data.toLowerCase()).toContain("allow: post");
  });

  it("survives random bytes", async () => {
    const inputs = fc.sample(
      fc.oneof(
        fc.string({ unit: "binary", maxLength: 300 }),
        fc
          .tuple(
            fc.constantFrom("POST", "GET", "XYZ", ""),
            fc.string({ maxLength: 40 }),
            fc.string({ maxLength: 200 }),
          )
          .map(([m, p, h]) => `${m} /${p} HTTP/1.1\r\nHost: ${STD}\r\n${h}\r\n\r\n`),
      ),
      60,
    );
    const results = await Promise.all(inputs.map((p) => raw(Buffer.from(p, "latin1"), true)));
    for (const r of results) {
      expect(r.closed || r.data.length > 0).toBe(true);
      if (r.data.length > 0) expect(r.data).toMatch(/^HTTP\/1\.1 \d{3} /);
    }
    expect((await send("us-1", { host: STD, path: "/production/predict" })).status).toBe(200);
  });
});

describe("HTTPS", () => {
  it("serves the same routes over TLS when given a certificate and key", async () => {
    const { execFileSync } = await import("node:child_process");
    const { readFileSync } = await import("node:fs");
    const https = await import("node:https");
    const dir = await mkdtemp(join(tmpdir(), "meridian-tls-"));
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
      const tls = createIngress({
        plane: { name: "us-1", region: "us" },
        signingKey: keyOf("us-1"),
        listen: { host: "127.0.1.1", port: 0 },
        tls: { cert, key: readFileSync(join(dir, "key.pem")) },
        snapshot: () => snapshotFor("us-1"),
        localReplicas: (id) => plane("us-1").replicas.get(id) ?? [],
        transport: TRANSPORT,
      });
      await tls.start();
      const r = await new Promise<{ status: number; headers: Record<string, unknown>; body: string }>(
        (resolve, reject) => {
          const req = https.request(
            {
              host: "127.0.1.1",
              port: tls.address!.port,
              method: "POST",
              path: "/environments/prod-eu/predict",
              servername: STD,
              ca: cert,
              headers: { host: STD, authorization: "Api-Key k-personal", "content-length": "2" },
            },
            (res) => {
              let body = "";
              res.on("data", (c) => {
                body += c;
              });
              res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
            },
          );
          req.on("error", reject);
          req.end("{}");
        },
      );
      await tls.stop();
      expect(r.status).toBe(200);
      expect(r.headers["x-meridian-route"]).toBe("us-1, eu-2");
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
