// No caller-controlled cardinality (DESIGN.md §2.8, issue 10): a stranger flooding the ingress with
// invented environment names, regional hostnames and model ids makes Meridian store nothing that names
// them. Real `meridian control` and `meridian plane` processes; 100,000 unauthenticated requests (and a
// few thousand authenticated ones with guessed names), pipelined over raw sockets. Afterwards the plane's
// Prometheus series, its request counts and the control plane's `request_counts` rows are where they were.

import { randomBytes } from "node:crypto";
import net from "node:net";
import { request } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Cluster, DOMAIN, eventually, type PlaneHandle, startCluster } from "../support/cluster.ts";
import { packExample } from "../support/control.ts";
import { createModelFrom } from "../support/planes.ts";

const FLOOD = 100_000;
const GUESSED_WITH_KEY = 5_000;
const CONNECTIONS = 8;
/** Requests written per batch on one connection, before waiting for their answers. */
const BATCH = 250;

/** Every sample line of the plane's /metrics (one per series and bucket), comments left out. */
async function seriesLines(p: PlaneHandle): Promise<string[]> {
  const res = await request(`http://${p.host}:${p.admin}/metrics`);
  const text = await res.body.text();
  return text.split("\n").filter((l) => l.startsWith("meridian_"));
}

async function requestCountRows(cluster: Cluster): Promise<Array<Record<string, unknown>>> {
  const res = await cluster.api.get("/v1/admin/request_counts");
  expect(res.status).toBe(200);
  return res.body.request_counts;
}

const guess = () => `g${randomBytes(6).toString("hex")}`;

/**
 * Sends `count` requests made by `make(i)` over `CONNECTIONS` keep-alive connections, pipelined in
 * batches; resolves with the status codes seen (every request must be answered).
 */
async function flood(
  p: PlaneHandle,
  count: number,
  make: (i: number) => { host: string; path: string; key: string | null },
): Promise<Map<number, number>> {
  const statuses = new Map<number, number>();
  const perConnection = Math.ceil(count / CONNECTIONS);
  await Promise.all(
    Array.from({ length: CONNECTIONS }, async (_, c) => {
      const first = c * perConnection;
      const last = Math.min(count, first + perConnection);
      const socket = net.connect(p.port, p.host);
      await new Promise<void>((ok, fail) => socket.once("connect", ok).once("error", fail));
      let buffered = "";
      let answered = 0;
      let waiting: { want: number; resolve: () => void } | null = null;
      socket.setEncoding("latin1");
      socket.on("data", (chunk: string) => {
        buffered += chunk;
        // Answers are small JSON error bodies with Content-Length: count status lines as they complete.
        for (;;) {
          const head = buffered.indexOf("\r\n\r\n");
          if (head < 0) break;
          const length = /\r\ncontent-length: (\d+)/i.exec(buffered.slice(0, head));
          const end = head + 4 + Number(length?.[1] ?? 0);
          if (buffered.length < end) break;
          const status = Number(buffered.slice(9, 12));
          statuses.set(status, (statuses.get(status) ?? 0) + 1);
          buffered = buffered.slice(end);
          answered++;
        }
        if (waiting && answered >= waiting.want) waiting.resolve();
      });
      for (let i = first; i < last; i += BATCH) {
        const upTo = Math.min(last, i + BATCH);
        let text = "";
        for (let j = i; j < upTo; j++) {
          const r = make(j);
          text +=
            `POST ${r.path} HTTP/1.1\r\nhost: ${r.host}\r\ncontent-type: application/json\r\n` +
            `${r.key === null ? "" : `authorization: Api-Key ${r.key}\r\n`}content-length: 2\r\n\r\n{}`;
        }
        const want = upTo - first;
        const done = new Promise<void>((resolve) => {
          waiting = { want, resolve };
        });
        socket.write(text);
        if (answered < want) await done;
      }
      socket.end();
    }),
  );
  return statuses;
}

describe("no caller-controlled cardinality", () => {
  let cluster: Cluster;
  let model: string;

  beforeAll(async () => {
    cluster = await startCluster({
      planes: [
        { name: "us-1", region: "us", global: true },
        { name: "eu-1", region: "eu" },
      ],
    });
    const created = await createModelFrom(cluster, "hello", await packExample("hello-js"), {
      environment_name: "prod-eu",
    });
    expect(created.status).toBe(200);
    model = created.body.model.id;
    expect(
      (
        await cluster.api.patch("/v1/environment_groups/prod-eu", {
          region_restriction: { region: "eu", standard_endpoint_policy: "allow" },
        })
      ).status,
    ).toBe(200);
  }, 120_000);

  afterAll(async () => {
    await cluster?.stop();
  });

  it("keeps the plane's series and the control plane's counts where they were under a flood of guesses", async () => {
    const us = cluster.plane("us-1");
    const eu = cluster.plane("eu-1");
    const key = cluster.api.key!;
    const standard = `model-${model}.${DOMAIN}`;
    // Every kind of request once first, so each fixed series a refusal is counted under exists already.
    const kinds = (i: number) => {
      switch (i % 5) {
        case 0:
          return { host: standard, path: `/environments/${guess()}/predict`, key: null };
        case 1:
          return { host: `model-${model}-${guess()}.${DOMAIN}`, path: "/predict", key: null };
        case 2:
          return {
            host: `model-${randomBytes(4).toString("hex")}.${DOMAIN}`,
            path: "/production/predict",
            key: null,
          };
        case 3:
          return { host: standard, path: `/environments/${guess()}/predict`, key: `bad-${guess()}` };
        default:
          return { host: `${guess()}.${DOMAIN}`, path: `/environments/${guess()}/predict`, key: null };
      }
    };
    const withKey = (i: number) =>
      i % 2 === 0
        ? { host: standard, path: `/environments/${guess()}/predict`, key }
        : { host: `model-${randomBytes(4).toString("hex")}-${guess()}.${DOMAIN}`, path: "/predict", key };
    for (const plane of [us, eu]) {
      await flood(plane, 10, kinds);
      await flood(plane, 4, withKey);
    }
    // The counts reach the control plane with the next report (every 2 s).
    await new Promise((r) => setTimeout(r, 3_000));
    const before = {
      us: await seriesLines(us),
      eu: await seriesLines(eu),
      rows: await requestCountRows(cluster),
    };

    const usStatuses = await flood(us, FLOOD / 2, kinds);
    const euStatuses = await flood(eu, FLOOD / 2, kinds);
    const keyed = await flood(us, GUESSED_WITH_KEY, withKey);
    const answered = (m: Map<number, number>) => [...m.values()].reduce((a, b) => a + b, 0);
    expect(answered(usStatuses) + answered(euStatuses)).toBe(FLOOD);
    expect(answered(keyed)).toBe(GUESSED_WITH_KEY);
    expect([...usStatuses.keys(), ...euStatuses.keys()].every((s) => s >= 400 && s < 500)).toBe(true);
    expect([...keyed.keys()].every((s) => s === 404)).toBe(true);

    await new Promise((r) => setTimeout(r, 3_000));
    const after = {
      us: await seriesLines(us),
      eu: await seriesLines(eu),
      rows: await requestCountRows(cluster),
    };
    const names = (lines: string[]) => lines.map((l) => l.slice(0, l.lastIndexOf(" "))).sort();
    // Counts first: a failure then reports two numbers, not a diff of a hundred thousand lines.
    expect(after.us.length).toBe(before.us.length);
    expect(after.eu.length).toBe(before.eu.length);
    expect(after.rows.length).toBe(before.rows.length);
    expect(names(after.us)).toEqual(names(before.us));
    expect(names(after.eu)).toEqual(names(before.eu));
    const rowKeys = (rows: Array<Record<string, unknown>>) =>
      rows.map((r) => `${r["plane"]}/${r["model_id"]}/${r["environment"]}/${r["status_class"]}`).sort();
    expect(rowKeys(after.rows)).toEqual(rowKeys(before.rows));
    // Nothing the flood invented is named anywhere.
    const text = [...after.us, ...after.eu, JSON.stringify(after.rows)].join("\n");
    expect(text).not.toMatch(/\bg[0-9a-f]{12}\b/);

    // The requests are in the planes' audit (that is the proof), without the names the callers invented.
    const res = await request(`http://${us.host}:${us.admin}/v1/audit?limit=200`, {
      headers: { authorization: `Bearer ${us.token}` },
    });
    const { items } = (await res.body.json()) as { items: Array<Record<string, unknown>> };
    expect(items.length).toBe(200);
    for (const r of items) {
      expect(r["environment"]).toBeNull();
      expect([null, model]).toContain(r["model_id"]);
    }
    await eventually(async () => (await requestCountRows(cluster)).length === before.rows.length, 5_000);
  }, 240_000);
});
