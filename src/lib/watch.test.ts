// The snapshot watcher against a real HTTP server that implements the long-poll protocol (a test peer
// standing in for the control plane): long-poll, 304, backoff, static stability, the cache file, stop().
import { once } from "node:events";
import { mkdtemp, readdir, readFile, writeFile } from "node:fs/promises";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { backoffDelay, SnapshotWatcher, type SnapshotWatcherOptions, type WatchState } from "./watch.ts";

interface Snap {
  revision: number;
  value: string;
}

interface Seen {
  at: number;
  after: string | null;
  wait: string | null;
  authorization: string | undefined;
  path: string;
}

/** The control plane's side of the protocol: holds a poll until a newer revision exists or `wait` ends. */
class ControlPeer {
  current: Snap | null = null;
  seen: Seen[] = [];
  /** Status codes to answer the next polls with, before behaving. */
  failures: number[] = [];
  /** Answer the next poll with this raw body (status 200), before behaving. */
  rawBodies: string[] = [];
  readonly #held = new Set<{ after: number; res: ServerResponse; timer: NodeJS.Timeout }>();
  readonly server: Server;

  constructor(readonly token = "s3cret") {
    this.server = createServer((req, res) => this.#handle(req, res));
  }

  async listen(port = 0): Promise<number> {
    this.server.listen(port, "127.0.0.1");
    await once(this.server, "listening");
    return (this.server.address() as AddressInfo).port;
  }

  publish(snapshot: Snap): void {
    this.current = snapshot;
    for (const held of [...this.#held]) {
      if (snapshot.revision > held.after) {
        clearTimeout(held.timer);
        this.#held.delete(held);
        this.#send(held.res);
      }
    }
  }

  /** Dies like a crashed process: every connection dropped. */
  async kill(): Promise<void> {
    for (const held of this.#held) clearTimeout(held.timer);
    this.#held.clear();
    this.server.closeAllConnections();
    await new Promise((resolve) => this.server.close(resolve));
  }

  #handle(req: IncomingMessage, res: ServerResponse): void {
    const url = new URL(req.url ?? "/", "http://peer");
    const after = url.searchParams.get("after");
    const wait = url.searchParams.get("wait");
    this.seen.push({
      at: Date.now(),
      after,
      wait,
      authorization: req.headers.authorization,
      path: url.pathname,
    });
    if (req.headers.authorization !== `Bearer ${this.token}`) {
      res.writeHead(401).end();
      return;
    }
    const failure = this.failures.shift();
    if (failure !== undefined) {
      res.writeHead(failure).end("boom");
      return;
    }
    const raw = this.rawBodies.shift();
    if (raw !== undefined) {
      res.writeHead(200, { "content-type": "application/json" }).end(raw);
      return;
    }
    const afterRevision = Number(after ?? 0);
    if (this.current !== null && this.current.revision > afterRevision) {
      this.#send(res);
      return;
    }
    const held = {
      after: afterRevision,
      res,
      timer: setTimeout(
        () => {
          this.#held.delete(held);
          res.writeHead(304).end();
        },
        Number(wait ?? 30) * 1000,
      ),
    };
    this.#held.add(held);
    res.on("close", () => {
      clearTimeout(held.timer);
      this.#held.delete(held);
    });
  }

  #send(res: ServerResponse): void {
    res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(this.current));
  }
}

function parseSnap(body: unknown): Snap {
  const b = body as Snap;
  if (typeof b?.revision !== "number" || typeof b.value !== "string") throw new Error("not a Snap");
  return { revision: b.revision, value: b.value };
}

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function startPeer(port = 0): Promise<{ peer: ControlPeer; url: string }> {
  const peer = new ControlPeer();
  const bound = await peer.listen(port);
  cleanups.push(() => (peer.server.listening ? peer.kill() : Promise.resolve()));
  return { peer, url: `http://127.0.0.1:${bound}/v1/internal/dns/snapshot` };
}

function watcher(options: Partial<SnapshotWatcherOptions<Snap>> & { url: string }) {
  const states: WatchState[] = [];
  const received: Snap[] = [];
  const w = new SnapshotWatcher<Snap>({
    token: "s3cret",
    parse: parseSnap,
    waitSeconds: 5,
    backoff: { initialMs: 40, maxMs: 400 },
    onStateChange: (s) => states.push(s),
    onSnapshot: (s) => received.push(s),
    ...options,
  });
  cleanups.push(() => w.stop());
  return { w, states, received };
}

async function until(check: () => boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe("backoffDelay", () => {
  it("doubles from the initial delay, is capped, and jitters within [d/2, d)", () => {
    const delays = [0, 1, 2, 3, 4, 5, 60].map((n) => backoffDelay(n, 100, 1_000, () => 0.999));
    expect(delays.map(Math.round)).toEqual([100, 200, 400, 800, 1000, 1000, 1000]);
    expect(backoffDelay(3, 100, 1_000, () => 0)).toBe(400);
  });
});

describe("SnapshotWatcher", () => {
  it("long-polls with after/wait and a bearer token, and gets a published snapshot at once", async () => {
    const { peer, url } = await startPeer();
    peer.publish({ revision: 1, value: "one" });
    const { w, received, states } = watcher({ url });
    await w.start();
    expect(await w.ready()).toEqual({ revision: 1, value: "one" });
    await until(() => peer.seen.length === 2); // the second poll is now held by the server
    const published = Date.now();
    peer.publish({ revision: 2, value: "two" });
    await until(() => w.revision === 2);
    expect(Date.now() - published).toBeLessThan(500);
    expect(received.map((s) => s.revision)).toEqual([1, 2]);
    expect(w.current()).toEqual({ revision: 2, value: "two" });
    expect(peer.seen[0]).toMatchObject({
      after: "0",
      wait: "5",
      authorization: "Bearer s3cret",
      path: "/v1/internal/dns/snapshot",
    });
    expect(peer.seen[1]!.after).toBe("1");
    expect(states).toEqual(["connected"]);
  });

  it("polls again after a 304 with the same revision", async () => {
    const { peer, url } = await startPeer();
    peer.publish({ revision: 7, value: "seven" });
    const { w } = watcher({ url, waitSeconds: 1 });
    await w.start();
    await until(() => peer.seen.length >= 3, 4_000);
    expect(peer.seen.slice(1, 3).map((s) => s.after)).toEqual(["7", "7"]);
    // The second poll was held for the whole wait and answered 304.
    expect(peer.seen[2]!.at - peer.seen[1]!.at).toBeGreaterThanOrEqual(950);
    expect(w.current()?.revision).toBe(7);
    expect(w.state).toBe("connected");
  });

  it("backs off exponentially on errors, then recovers", async () => {
    const { peer, url } = await startPeer();
    peer.publish({ revision: 3, value: "three" });
    peer.failures = [500, 503, 502, 500];
    const { w, states } = watcher({ url, random: () => 0.999 });
    await w.start();
    await until(() => w.revision === 3);
    const gaps = peer.seen.slice(0, 5).map((s, i, all) => (i === 0 ? 0 : s.at - all[i - 1]!.at));
    // 40, 80, 160, 320 ms (×0.9995 jitter), give or take the scheduler.
    for (const [i, expected] of [40, 80, 160, 320].entries()) {
      expect(gaps[i + 1]).toBeGreaterThanOrEqual(expected - 5);
      // Generous: a loaded CI machine may run timers late, never early.
      expect(gaps[i + 1]).toBeLessThan(expected + 400);
    }
    expect(states).toEqual(["disconnected", "connected"]);
  });

  it("keeps the last snapshot when a body is rejected or the revision does not advance", async () => {
    const { peer, url } = await startPeer();
    peer.publish({ revision: 5, value: "five" });
    const { w, received } = watcher({ url });
    await w.start();
    await w.ready();
    peer.rawBodies = [
      "{not json",
      JSON.stringify({ revision: 9 }),
      JSON.stringify({ revision: 4, value: "old" }),
    ];
    // The held poll is answered by publish(); the queued raw bodies answer the next three polls.
    peer.publish({ revision: 6, value: "six" });
    await until(() => peer.seen.length >= 6, 4_000);
    expect(w.current()).toEqual({ revision: 6, value: "six" });
    expect(received.map((s) => s.revision)).toEqual([5, 6]);
  });

  it("keeps serving the last snapshot while the control plane is down, and resumes when it returns", async () => {
    const { peer, url } = await startPeer();
    const port = Number(new URL(url).port);
    peer.publish({ revision: 10, value: "ten" });
    const { w, states } = watcher({ url });
    await w.start();
    await w.ready();
    await until(() => peer.seen.length === 2);
    await peer.kill();
    await until(() => w.state === "disconnected");
    expect(w.current()).toEqual({ revision: 10, value: "ten" });

    const { peer: revived } = await startPeer(port);
    revived.publish({ revision: 11, value: "eleven" });
    await until(() => w.revision === 11);
    expect(revived.seen[0]!.after).toBe("10");
    expect(states).toEqual(["connected", "disconnected", "connected"]);
  });

  it("writes every accepted snapshot to the cache file and serves it after a restart with the control plane down", async () => {
    const dir = await mkdtemp(join(tmpdir(), "meridian-watch-"));
    const cacheFile = join(dir, "nested", "snapshot.json");
    const { peer, url } = await startPeer();
    peer.publish({ revision: 20, value: "twenty" });
    const first = watcher({ url, cacheFile });
    await first.w.start();
    await until(() => peer.seen.length === 2);
    peer.publish({ revision: 21, value: "twenty-one" });
    await until(() => first.w.revision === 21);
    await first.w.stop();
    await peer.kill();
    expect(JSON.parse(await readFile(cacheFile, "utf8"))).toEqual({ revision: 21, value: "twenty-one" });
    expect((await readdir(join(dir, "nested"))).filter((f) => f.endsWith(".tmp"))).toEqual([]);

    const second = watcher({ url, cacheFile });
    await second.w.start();
    expect(second.w.current()).toEqual({ revision: 21, value: "twenty-one" });
    expect(second.received.map((s) => s.revision)).toEqual([21]);
    await until(() => second.w.state === "disconnected");
    expect(second.w.current()?.revision).toBe(21);
  });

  it("ignores a corrupt cache file", async () => {
    const dir = await mkdtemp(join(tmpdir(), "meridian-watch-"));
    const cacheFile = join(dir, "snapshot.json");
    await writeFile(cacheFile, '{"revision": "x"}');
    const { peer, url } = await startPeer();
    peer.publish({ revision: 2, value: "two" });
    const { w } = watcher({ url, cacheFile });
    await w.start();
    expect(w.current()).toBeNull();
    expect((await w.ready()).revision).toBe(2);
    expect(peer.seen[0]!.after).toBe("0");
  });

  it("stop() aborts a held poll promptly", async () => {
    const { peer, url } = await startPeer();
    const { w } = watcher({ url, waitSeconds: 30 });
    await w.start();
    await until(() => peer.seen.length === 1);
    const started = Date.now();
    await w.stop();
    expect(Date.now() - started).toBeLessThan(200);
    await new Promise((r) => setTimeout(r, 100));
    expect(peer.seen).toHaveLength(1);
  });

  it("stop() interrupts a backoff sleep", async () => {
    const { w } = watcher({ url: "http://127.0.0.1:1/none", backoff: { initialMs: 60_000, maxMs: 60_000 } });
    await w.start();
    await until(() => w.state === "disconnected");
    const started = Date.now();
    await w.stop();
    expect(Date.now() - started).toBeLessThan(200);
  });

  it("treats 401 as a failure and keeps retrying", async () => {
    const { peer, url } = await startPeer();
    peer.publish({ revision: 1, value: "one" });
    const { w } = watcher({ url, token: "wrong" });
    await w.start();
    await until(() => peer.seen.length >= 3);
    expect(w.current()).toBeNull();
    expect(w.state).toBe("disconnected");
  });
});
