// A control plane that could not hear its planes never blames them (issue 15): paused with SIGSTOP for
// longer than `--plane-timeout`, it resumes with every plane's last report stale, judges none down, moves no
// replica, and regional requests are answered 200 throughout. The converse holds in the same installation:
// a plane really killed afterwards is judged down and its region's other plane takes over, in-region.

import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Cluster, DOMAIN, eventually, startCluster } from "../support/cluster.ts";
import { PlacementWatch, planeReplicas, predict, Traffic } from "../support/planes.ts";

const TIMEOUT_S = 3;

describe("a control plane paused longer than --plane-timeout", () => {
  let cluster: Cluster;
  let watch: PlacementWatch;
  let eu: { model: string; deployment: string };
  let uk: { model: string; deployment: string };
  let plain: string;

  const regional = (model: string, env: string) => `model-${model}-${env}.${DOMAIN}`;
  const euHolder = async () =>
    eventually(async () => {
      for (const name of ["eu-1", "eu-2"]) {
        const rs = (await planeReplicas(cluster.plane(name))) ?? [];
        if (rs.some((r) => r.deployment_id === eu.deployment && r.state === "READY")) return name;
      }
      return null;
    }, 30_000);
  const replicaIds = async () => {
    const out: Record<string, string[]> = {};
    for (const p of cluster.planes.values()) {
      out[p.name] = ((await planeReplicas(p)) ?? []).map((r) => r.id).sort();
    }
    return out;
  };

  beforeAll(async () => {
    cluster = await startCluster({
      planes: [
        { name: "us-1", region: "us", global: true },
        { name: "eu-1", region: "eu" },
        { name: "eu-2", region: "eu" },
        { name: "uk-1", region: "uk" },
      ],
      controlArgs: ["--plane-timeout", String(TIMEOUT_S)],
    });
    watch = new PlacementWatch(cluster).start();
    const api = cluster.api;
    for (const [group, region] of [
      ["prod-eu", "eu"],
      ["prod-uk", "uk"],
    ]) {
      const r = await api.patch(`/v1/environment_groups/${group}`, { region_restriction: { region } });
      expect(r.status, JSON.stringify(r.body)).toBe(200);
    }
    const e = (await api.createModel("stall-eu", "hello-js", { environment_name: "prod-eu" })).body;
    const u = (await api.createModel("stall-uk", "hello-js", { environment_name: "prod-uk" })).body;
    const p = (await api.createModel("stall-plain", "hello-js", { environment_name: "production" })).body;
    eu = { model: e.model.id, deployment: e.deployment.id };
    uk = { model: u.model.id, deployment: u.deployment.id };
    plain = p.model.id;
    for (const [plane, host, path] of [
      ["eu-1", regional(eu.model, "prod-eu"), "/predict"],
      ["eu-2", regional(eu.model, "prod-eu"), "/predict"],
      ["uk-1", regional(uk.model, "prod-uk"), "/predict"],
      ["us-1", `model-${plain}.${DOMAIN}`, "/production/predict"],
    ] as const) {
      let last = "";
      await eventually(async () => {
        const r = await predict(cluster, plane, host, path);
        last = `${plane} ${host}: ${r.status} ${JSON.stringify(r.body)}`;
        return r.status === 200;
      }, 40_000).catch((err) => {
        throw new Error(`${err}: ${last}`);
      });
    }
  }, 120_000);

  afterAll(async () => {
    watch?.stop();
    if (cluster?.control.child.exitCode === null) cluster.control.child.kill("SIGCONT");
    await cluster?.stop();
  }, 60_000);

  it("judges no plane down when it resumes, moves nothing, and every regional request is answered 200", async () => {
    const before = await replicaIds();
    const traffic = [
      new Traffic(() => predict(cluster, "eu-1", regional(eu.model, "prod-eu"), "/predict"), 50),
      new Traffic(() => predict(cluster, "eu-2", regional(eu.model, "prod-eu"), "/predict"), 50),
      new Traffic(() => predict(cluster, "uk-1", regional(uk.model, "prod-uk"), "/predict"), 50),
      new Traffic(() => predict(cluster, "us-1", `model-${plain}.${DOMAIN}`, "/production/predict"), 50),
    ];
    await new Promise((r) => setTimeout(r, 1_000));
    const mark = cluster.control.output.length;

    const pid = cluster.control.child.pid!;
    process.kill(pid, "SIGSTOP");
    await new Promise((r) => setTimeout(r, (TIMEOUT_S * 2 + 2) * 1000));
    process.kill(pid, "SIGCONT");
    // Long enough for a judgement made on stale reports to show, and for the wait after the stall to end.
    await new Promise((r) => setTimeout(r, TIMEOUT_S * 3 * 1000));

    for (const t of traffic) await t.stop();
    for (const t of traffic) {
      expect(t.results.length).toBeGreaterThan(20);
      expect(t.failures()).toEqual([]);
    }
    expect(new Set(traffic[0]!.header("x-meridian-region"))).toEqual(new Set(["eu"]));
    expect(new Set(traffic[2]!.header("x-meridian-region"))).toEqual(new Set(["uk"]));

    const logs = cluster.control.output.slice(mark).filter((l) => l.startsWith("{"));
    const parsed = logs.map((l) => JSON.parse(l) as Record<string, unknown>);
    // The control plane noticed its own stall and waited for fresh reports.
    expect(
      parsed.some((l) => l["msg"] === "plane judgement waits for fresh reports" && l["cause"] === "stalled"),
      logs.join("\n"),
    ).toBe(true);
    // No plane was judged down, and no replica moved or restarted.
    const judged = parsed.filter((l) => l["msg"] === "plane health changed");
    expect(judged, JSON.stringify(judged)).toEqual([]);
    expect(await replicaIds()).toEqual(before);
  }, 60_000);

  it("every plane frozen at once (the control plane cut off from all of them): none judged down, nothing moved", async () => {
    const before = await replicaIds();
    const mark = cluster.control.output.length;
    const pids = [...cluster.planes.values()].map((p) => p.process!.child.pid!);
    for (const pid of pids) process.kill(pid, "SIGSTOP");
    await new Promise((r) => setTimeout(r, (TIMEOUT_S * 2 + 2) * 1000));
    for (const pid of pids) process.kill(pid, "SIGCONT");
    // Planes report again one by one: the first report after the silence restarts the wait for the others.
    await new Promise((r) => setTimeout(r, TIMEOUT_S * 3 * 1000));
    const parsed = cluster.control.output
      .slice(mark)
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(parsed.filter((l) => l["msg"] === "plane health changed")).toEqual([]);
    expect(
      parsed.some(
        (l) => l["msg"] === "plane judgement waits for fresh reports" && l["cause"] === "heard_again",
      ),
    ).toBe(true);
    expect(await replicaIds()).toEqual(before);
    for (const [plane, host, path] of [
      ["eu-1", regional(eu.model, "prod-eu"), "/predict"],
      ["uk-1", regional(uk.model, "prod-uk"), "/predict"],
    ] as const) {
      expect((await predict(cluster, plane, host, path)).status).toBe(200);
    }
  }, 60_000);

  it("a plane really killed after the stall is still judged down and its region's other plane takes over", async () => {
    const first = await euHolder();
    const survivor = first === "eu-1" ? "eu-2" : "eu-1";
    await cluster.plane(first).stop("SIGKILL");
    const served = await eventually(async () => {
      const r = await predict(cluster, survivor, regional(eu.model, "prod-eu"), "/predict");
      return r.status === 200 ? r : null;
    }, 30_000);
    expect(served.headers["x-meridian-plane"]).toBe(survivor);
    const judged = await eventually(async () =>
      cluster.control.output
        .filter((l) => l.includes('"msg":"plane health changed"'))
        .map((l) => JSON.parse(l) as { down: string[] })
        .find((l) => l.down.includes(first)),
    );
    expect(judged.down).toEqual([first]);
    await watch.sample();
    expect(watch.planesOf(eu.deployment).every((p) => p.startsWith("eu-"))).toBe(true);
    expect(watch.planesOf(uk.deployment)).toEqual(["uk-1"]);
  }, 60_000);
});
