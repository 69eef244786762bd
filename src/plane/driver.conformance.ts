// The shared conformance suite of ReplicaDriver: every driver's test calls
// describeReplicaDriverConformance, so `process` and `kubernetes` keep one meaning for ensure, remove,
// list, logs and events. Replicas run testdata/server.mjs (real HTTP servers), chosen by its flags.
//
// A harness must build its driver with short timings so the suite stays fast: readiness deadline at most
// 1.5 s, backoff base at most 200 ms, at most 3 fast crashes before FAILED, probe interval at most 300 ms
// with 2 liveness failures restarting, stop grace at most 1 s. Endpoints (`host:port`, or `unix:/path`
// for a harness whose replicas run under egress deny) must be reachable from the test.

import { request } from "node:http";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { ReplicaState } from "../core/domain.ts";
import type { ReplicaDriver, ReplicaEvent, ReplicaSpec, ReplicaStatus } from "./driver.ts";

export interface ConformanceHarness {
  driver: ReplicaDriver;
  /**
   * A spec whose command runs testdata/server.mjs with `--listen {listen}` and `flags`, with
   * MERIDIAN_TEST_TOKEN=`token` (default: the id) in its env, readiness `/v1/models/model`, liveness `/`
   * and fatal_exit_codes `{ 3: "model load failed" }`; its egress is the harness's.
   */
  spec(id: string, flags?: string[], token?: string): ReplicaSpec;
  /** Stops the driver (if the test did not) and removes what the harness created. */
  cleanup(): Promise<void>;
}

/** The driver is not started; the suite calls start(). */
export type MakeHarness = () => Promise<ConformanceHarness>;

export function describeReplicaDriverConformance(name: string, makeHarness: MakeHarness): void {
  describe(`ReplicaDriver conformance: ${name}`, () => {
    let h: ConformanceHarness;
    let driver: ReplicaDriver;

    beforeEach(async () => {
      h = await makeHarness();
      driver = h.driver;
      await driver.start();
    });
    afterEach(async () => {
      await driver.stop();
      await h.cleanup();
    });

    async function status(id: string): Promise<ReplicaStatus | undefined> {
      return (await driver.list()).find((r) => r.id === id);
    }

    async function waitForState(id: string, state: ReplicaState, timeoutMs = 8_000): Promise<ReplicaStatus> {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const current = await status(id);
        if (current?.state === state) return current;
        if (Date.now() > deadline) {
          throw new Error(`replica ${id} not ${state} after ${timeoutMs} ms: ${JSON.stringify(current)}`);
        }
        await new Promise((r) => setTimeout(r, 25));
      }
    }

    it("an ensured replica becomes READY with an endpoint that serves it", async () => {
      const spec = h.spec("r-ready");
      await driver.ensure(spec);
      const accepted = await status("r-ready");
      expect(accepted).toBeDefined();
      expect(["PENDING", "STARTING", "READY"]).toContain(accepted!.state);

      const ready = await waitForState("r-ready", "READY");
      expect(ready).toMatchObject({
        id: "r-ready",
        deployment_id: spec.deployment_id,
        model_id: spec.model_id,
        environment: spec.environment,
        message: null,
        restarts: 0,
      });
      expect(ready.endpoint).toMatch(/^([^:]+:\d+|unix:\/.+)$/);
      expect(Date.parse(ready.started_at!)).toBeGreaterThan(Date.now() - 60_000);
      expect((await get(ready.endpoint!, "/v1/models/model")).status).toBe(200);
      const info = JSON.parse((await get(ready.endpoint!, "/info")).body);
      // Placeholders were filled: the env reached the process, and it listens where the endpoint says (a
      // Unix socket has one path inside a sandbox and another on the host).
      expect(info.token).toBe("r-ready");
      if (ready.endpoint!.startsWith("unix:"))
        expect(info.argv.some((a: string) => a.startsWith("unix:/"))).toBe(true);
      else expect(info.argv).toContain(ready.endpoint);
    });

    it("ensure with the same spec again changes nothing (no restart)", async () => {
      await driver.ensure(h.spec("r-same"));
      const first = await waitForState("r-same", "READY");
      const boot = JSON.parse((await get(first.endpoint!, "/info")).body).boot;
      const events: ReplicaEvent[] = [];
      driver.subscribe((e) => events.push(e));
      await driver.ensure(h.spec("r-same"));
      await driver.ensure(h.spec("r-same"));
      await new Promise((r) => setTimeout(r, 300));
      const after = await status("r-same");
      expect(after).toMatchObject({ state: "READY", endpoint: first.endpoint, restarts: 0 });
      expect(after!.started_at).toBe(first.started_at);
      expect(JSON.parse((await get(after!.endpoint!, "/info")).body).boot).toBe(boot);
      expect(events.filter((e) => e.type === "state" && e.replica.state !== "READY")).toEqual([]);
    });

    it("ensure with a changed spec for the same id replaces the replica", async () => {
      await driver.ensure(h.spec("r-change", [], "old"));
      const before = await waitForState("r-change", "READY");
      const oldBoot = JSON.parse((await get(before.endpoint!, "/info")).body).boot;
      await driver.ensure(h.spec("r-change", [], "new"));
      const after = await waitForState("r-change", "READY");
      const info = JSON.parse((await get(after.endpoint!, "/info")).body);
      expect(info.token).toBe("new");
      expect(info.boot).not.toBe(oldBoot);
      expect((await driver.list()).filter((r) => r.id === "r-change")).toHaveLength(1);
    });

    it("events report each state change, then the removal; unsubscribing stops them", async () => {
      const events: ReplicaEvent[] = [];
      const unsubscribe = driver.subscribe((e) => events.push(e));
      await driver.ensure(h.spec("r-events"));
      await waitForState("r-events", "READY");
      await driver.remove("r-events");
      const states = events.flatMap((e) => (e.type === "state" ? [e.replica.state] : []));
      expect(states[0]).toBe("PENDING");
      expect(states).toContain("READY");
      expect(states.indexOf("STARTING")).toBeLessThan(states.indexOf("READY"));
      const ready = events.find((e) => e.type === "state" && e.replica.state === "READY");
      expect(ready?.type === "state" && ready.previous).toBe("STARTING");
      expect(events.at(-1)).toEqual({ type: "removed", id: "r-events", deployment_id: "dep-r-events" });

      unsubscribe();
      const seen = events.length;
      await driver.ensure(h.spec("r-events-2"));
      await waitForState("r-events-2", "READY");
      expect(events.length).toBe(seen);
    });

    it("logs hold stdout and stderr lines with timestamps; limit and since filter them", async () => {
      const before = new Date(Date.now() - 1);
      await driver.ensure(h.spec("r-logs", ["--lines", "20"]));
      await waitForState("r-logs", "READY");
      const lines = await driver.logs("r-logs");
      const text = lines.map((l) => l.line);
      expect(text.some((l) => l.includes('"msg":"starting"') && l.includes('"token":"r-logs"'))).toBe(true);
      expect(lines.some((l) => l.stream === "stderr" && l.line.startsWith("stderr hello"))).toBe(true);
      expect(text.filter((l) => l.includes('"msg":"line"'))).toHaveLength(20);
      for (const l of lines) expect(Date.parse(l.ts)).toBeGreaterThanOrEqual(before.getTime());

      const lastFive = await driver.logs("r-logs", { limit: 5 });
      expect(lastFive).toEqual(lines.slice(-5));
      const future = await driver.logs("r-logs", { since: new Date(Date.now() + 60_000) });
      expect(future).toEqual([]);
      expect(await driver.logs("no-such-replica")).toEqual([]);
    });

    it("remove stops the replica and forgets it; removing an unknown id is a no-op", async () => {
      await driver.ensure(h.spec("r-remove"));
      const ready = await waitForState("r-remove", "READY");
      await driver.remove("r-remove");
      expect(await status("r-remove")).toBeUndefined();
      expect(await refused(ready.endpoint!)).toBe(true);
      await driver.remove("r-remove");
      await driver.remove("never-existed");
    });

    it("several replicas run side by side on distinct endpoints", async () => {
      const ids = ["r-a", "r-b", "r-c"];
      await Promise.all(ids.map((id) => driver.ensure(h.spec(id))));
      const ready = await Promise.all(ids.map((id) => waitForState(id, "READY")));
      expect(new Set(ready.map((r) => r.endpoint)).size).toBe(3);
      for (const r of ready) expect(JSON.parse((await get(r.endpoint!, "/info")).body).token).toBe(r.id);
    });

    it("a replica that crashes is restarted and becomes READY again", async () => {
      await driver.ensure(h.spec("r-crash", ["--crash-after", "700"]));
      const first = await waitForState("r-crash", "READY");
      const deadline = Date.now() + 8_000;
      let current = first;
      while (!(current.restarts >= 1 && current.state === "READY")) {
        expect(Date.now()).toBeLessThan(deadline);
        await new Promise((r) => setTimeout(r, 25));
        current = (await status("r-crash"))!;
      }
      expect(current.started_at).not.toBe(first.started_at);
      expect((await driver.logs("r-crash")).some((l) => l.line.includes('"msg":"crashing"'))).toBe(true);
    });

    it("a load failure (exit code 3 before ready) is FAILED with the reason and is not restarted", async () => {
      await driver.ensure(h.spec("r-load", ["--exit-at-start", "3"]));
      const failed = await waitForState("r-load", "FAILED");
      expect(failed.message).toMatch(/^model load failed: .*code 3/);
      expect(failed.message).toContain("weights.bin not found");
      expect(failed.endpoint).toBeNull();
      await new Promise((r) => setTimeout(r, 700));
      expect(await status("r-load")).toMatchObject({ state: "FAILED", restarts: 0 });
    });

    it("a replica that keeps crashing at start ends FAILED with its last log lines", async () => {
      await driver.ensure(h.spec("r-loop", ["--exit-at-start", "1"]));
      const failed = await waitForState("r-loop", "FAILED", 10_000);
      expect(failed.restarts).toBeGreaterThanOrEqual(1);
      expect(failed.message).toMatch(/code 1/);
      expect(failed.message).toContain("weights.bin not found");
      const restarts = failed.restarts;
      await new Promise((r) => setTimeout(r, 700));
      expect((await status("r-loop"))!.restarts).toBe(restarts);
    });

    it("a replica that never becomes ready turns UNHEALTHY with a message and no endpoint", async () => {
      await driver.ensure(h.spec("r-slow", ["--never-ready"]));
      await waitForState("r-slow", "STARTING", 3_000);
      const unhealthy = await waitForState("r-slow", "UNHEALTHY", 5_000);
      expect(unhealthy.endpoint).toBeNull();
      expect(unhealthy.message).toMatch(/ready/);
      expect(unhealthy.restarts).toBe(0);
    });

    it("a replica that becomes ready late turns READY after being UNHEALTHY", async () => {
      await driver.ensure(h.spec("r-late", ["--ready-after", "2200"]));
      await waitForState("r-late", "UNHEALTHY", 5_000);
      const ready = await waitForState("r-late", "READY", 5_000);
      expect(ready.restarts).toBe(0);
    });

    it("failing liveness restarts the replica", async () => {
      await driver.ensure(h.spec("r-live", ["--liveness-fail-after", "300"]));
      await waitForState("r-live", "READY");
      const deadline = Date.now() + 8_000;
      while (((await status("r-live"))?.restarts ?? 0) < 1) {
        expect(Date.now()).toBeLessThan(deadline);
        await new Promise((r) => setTimeout(r, 25));
      }
      expect((await driver.logs("r-live")).some((l) => /liveness/.test(l.line))).toBe(true);
    });

    it("stop() stops every replica", async () => {
      await Promise.all(["r-s1", "r-s2"].map((id) => driver.ensure(h.spec(id))));
      const ready = await Promise.all(["r-s1", "r-s2"].map((id) => waitForState(id, "READY")));
      await driver.stop();
      for (const r of ready) expect(await refused(r.endpoint!)).toBe(true);
      await expect(driver.ensure(h.spec("r-after"))).rejects.toThrow();
    });

    it("an invalid spec is refused", async () => {
      await expect(driver.ensure({ ...h.spec("ok"), id: "../etc" })).rejects.toThrow(/id/);
      await expect(driver.ensure({ ...h.spec("r-empty"), command: { argv: [], env: {} } })).rejects.toThrow(
        /argv/,
      );
      expect(await driver.list()).toEqual([]);
    });
  });
}

function get(endpoint: string, path: string): Promise<{ status: number; body: string }> {
  const where = endpoint.startsWith("unix:")
    ? { socketPath: endpoint.slice("unix:".length) }
    : { host: splitEndpoint(endpoint)[0], port: splitEndpoint(endpoint)[1] };
  return new Promise((resolve, reject) => {
    const req = request({ ...where, path, agent: false, timeout: 2_000 }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => {
        body += chunk;
      });
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on("timeout", () => req.destroy(new Error("timeout")));
    req.on("error", reject);
    req.end();
  });
}

/** True when nothing listens at the endpoint any more (a Unix socket may also be gone). */
async function refused(endpoint: string): Promise<boolean> {
  try {
    await get(endpoint, "/");
    return false;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    return code === "ECONNREFUSED" || (endpoint.startsWith("unix:") && code === "ENOENT");
  }
}

function splitEndpoint(endpoint: string): [string, number] {
  const at = endpoint.lastIndexOf(":");
  return [endpoint.slice(0, at), Number(endpoint.slice(at + 1))];
}
