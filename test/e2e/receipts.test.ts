// Signed receipts end to end (issue 14 item 1 and its "must show"), with real processes: a control plane,
// three planes (us-1 the global ingress, eu-1 serving prod-eu, uk-1 started with `--receipts off`), `curl`
// saving responses as the docs tell a user to, and the `meridian` CLI checking them offline against the
// key directory fetched from `GET /v1/keys` (`meridian keys --out`).

import { type ChildProcess, execFile, spawn } from "node:child_process";
import { readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadOrCreatePlaneKey } from "../../src/lib/keys.ts";
import { contentDigest, signReceipt } from "../../src/lib/receipts.ts";
import { BIN, type Cluster, DOMAIN, eventually, startCluster } from "../support/cluster.ts";
import { tempDir } from "../support/control.ts";

const exec = promisify(execFile);

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function cli(args: string[], cwd: string, env: Record<string, string> = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child: ChildProcess = spawn(process.execPath, [BIN, ...args], {
      cwd,
      env: { ...process.env, MERIDIAN_DATA_DIR: join(cwd, "no-up"), ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout!.on("data", (c) => (stdout += c));
    child.stderr!.on("data", (c) => (stderr += c));
    child.once("error", reject);
    child.once("exit", (code) => resolve({ code, stdout, stderr }));
  });
}

/** A saved response (`curl -si`): its status line, field lines and body, for editing. */
interface Saved {
  statusLine: string;
  fields: Array<[string, string]>;
  body: string;
}

function parseSaved(saved: string): Saved {
  let text = saved;
  // Interim responses (`100 Continue`, RFC 9110 §15.2) come first; `meridian verify` skips them too.
  while (/^HTTP\/1\.1 1\d\d /.test(text)) text = text.slice(text.indexOf("\r\n\r\n") + 4);
  const at = text.indexOf("\r\n\r\n");
  const [statusLine, ...lines] = text.slice(0, at).split("\r\n");
  return {
    statusLine: statusLine!,
    fields: lines.map((l): [string, string] => {
      const i = l.indexOf(":");
      return [l.slice(0, i), l.slice(i + 1).trim()];
    }),
    body: text.slice(at + 4),
  };
}

function render(s: Saved): string {
  return `${s.statusLine}\r\n${s.fields.map(([n, v]) => `${n}: ${v}`).join("\r\n")}\r\n\r\n${s.body}`;
}

const field = (s: Saved, name: string) => s.fields.find(([n]) => n.toLowerCase() === name)?.[1];
const setField = (s: Saved, name: string, value: string): Saved => ({
  ...s,
  fields: s.fields.map(([n, v]): [string, string] => [n, n.toLowerCase() === name ? value : v]),
});

describe("signed receipts end to end", () => {
  let cluster: Cluster;
  let model: string;
  let work: string;
  let env: Record<string, string>;

  /** `curl -si` against a plane, by the model's hostname resolved to that plane (as DNS would). */
  async function curl(
    plane: string,
    o: { host: string; path: string; body: string; key?: string; out: string },
  ): Promise<Saved> {
    const p = cluster.plane(plane);
    const { stdout } = await exec(
      "curl",
      [
        "-si",
        "--max-time",
        "20",
        "--resolve",
        `${o.host}:${p.port}:${p.host}`,
        `http://${o.host}:${p.port}${o.path}`,
        "-H",
        `Authorization: Api-Key ${o.key ?? cluster.api.key}`,
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        o.body,
      ],
      { encoding: "latin1", maxBuffer: 64 * 1024 * 1024 },
    );
    writeFileSync(join(work, o.out), stdout, "latin1");
    return parseSaved(stdout);
  }

  const regional = () => `model-${model}-prod-eu.${DOMAIN}`;
  const verify = (file: string, extra: string[] = [], directory = "directory.json") =>
    cli(["verify", "--keys", directory, ...extra, file], work, env);

  beforeAll(async () => {
    cluster = await startCluster({
      planes: [
        { name: "us-1", region: "us", global: true },
        { name: "eu-1", region: "eu" },
        { name: "uk-1", region: "uk", args: ["--receipts", "off"] },
      ],
    });
    work = tempDir();
    env = { MERIDIAN_API_URL: cluster.controlUrl, MERIDIAN_API_KEY: cluster.api.key! };
    const api = cluster.api;
    expect(
      (await api.patch("/v1/environment_groups/prod-eu", { region_restriction: { region: "eu" } })).status,
    ).toBe(200);
    const created = await api.createModel("receipts", "hello-js", { environment_name: "prod-eu" });
    expect(created.status, JSON.stringify(created.body)).toBe(200);
    model = created.body.model.id;
    await eventually(
      async () =>
        (
          await curl("eu-1", { host: regional(), path: "/predict", body: "{}", out: "warm.txt" })
        ).statusLine.includes(" 200"),
      60_000,
    );
    const keys = await cli(["keys", "--out", "directory.json"], work, env);
    expect(keys.code, keys.stderr).toBe(0);
  }, 120_000);
  afterAll(async () => cluster?.stop(), 60_000);

  it("a regional response verifies offline, from the response alone and with the request as sent", async () => {
    const body = '{"text":"bonjour"}';
    const r = await curl("eu-1", { host: regional(), path: "/predict", body, out: "regional.txt" });
    expect(r.statusLine).toMatch(/^HTTP\/1\.1 200/);
    expect(field(r, "x-meridian-plane")).toBe("eu-1");
    const alone = await verify("regional.txt");
    expect(alone.code, alone.stderr).toBe(0);
    expect(alone.stdout).toMatch(
      new RegExp(
        `^processed in region eu by plane eu-1, key [0-9a-f]{16}, at .*: 200 for POST ${regional()}:\\d+/predict`,
      ),
    );
    const port = cluster.plane("eu-1").port;
    const mine = await verify("regional.txt", [
      "--url",
      `http://${regional()}:${port}/predict`,
      "--method",
      "POST",
      "--data",
      body,
    ]);
    expect(mine.code, mine.stderr).toBe(0);
    // The digest the client can compute itself is the one the plane bound.
    expect(field(r, "x-meridian-receipt-request")).toContain(`content-digest="${contentDigest(body)}"`);

    // A large body (curl sends it after `Expect: 100-continue`; the ingress streams it upstream and hashes it
    // as it passes), checked against the file the client sent.
    const large = join(work, "large.json");
    writeFileSync(large, JSON.stringify({ text: "x".repeat(3 * 1024 * 1024) }));
    const big = await curl("eu-1", {
      host: regional(),
      path: "/predict",
      body: `@${large}`,
      out: "large.txt",
    });
    expect(big.statusLine).toMatch(/^HTTP\/1\.1 200/);
    const ok = await verify("large.txt", ["--body-file", large]);
    expect(ok.code, ok.stderr).toBe(0);
    writeFileSync(
      join(work, "large-changed.json"),
      JSON.stringify({ text: `${"x".repeat(3 * 1024 * 1024 - 1)}y` }),
    );
    const changed = await verify("large.txt", ["--body-file", join(work, "large-changed.json")]);
    expect(changed.code).toBe(1);
    expect(changed.stderr).toContain("(request_mismatch)");
  });

  it("fails when a covered header, the status or the body is changed, or another plane's key signed", async () => {
    const original = parseSaved(readFileSync(join(work, "regional.txt"), "latin1"));
    const port = cluster.plane("eu-1").port;
    const tampered: Array<[string, Saved, string[]]> = [
      ["region", setField(original, "x-meridian-region", "us"), []],
      ["plane", setField(original, "x-meridian-plane", "us-1"), []],
      ["deployment", setField(original, "x-meridian-deployment-id", "0000000"), []],
      ["route", setField(original, "x-meridian-route", "us-1"), []],
      ["request id", setField(original, "x-request-id", "another"), []],
      ["status", { ...original, statusLine: original.statusLine.replace(" 200", " 500") }, []],
      ["body", original, ["--data", '{"text":"hello"}']],
      ["path", original, ["--url", `http://${regional()}:${port}/environments/prod-eu/predict`]],
    ];
    for (const [what, s, flags] of tampered) {
      writeFileSync(join(work, "tampered.txt"), render(s), "latin1");
      const v = await verify("tampered.txt", flags);
      expect(v.code, what).toBe(1);
      expect(v.stderr, what).toMatch(/receipt not valid/);
    }
    // The answer's body is covered (a small JSON answer of known length: the plane holds it and signs its
    // content-digest): the same head with another body fails, and so does the digest rewritten to fit it.
    const same = await verify("regional.txt");
    expect(same.code, same.stderr).toBe(0);
    expect(same.stderr).toContain("response body covered:");
    writeFileSync(join(work, "other-body.txt"), render({ ...original, body: '{"x":"changed"}' }), "latin1");
    const body = await verify("other-body.txt");
    expect(body.code, body.stderr).toBe(1);
    expect(body.stderr).toContain("(response_body_changed)");
    const refit = setField(
      { ...original, body: '{"x":"changed"}' },
      "content-digest",
      contentDigest('{"x":"changed"}'),
    );
    writeFileSync(join(work, "other-body.txt"), render(refit), "latin1");
    const refitted = await verify("other-body.txt");
    expect(refitted.code).toBe(1);
    expect(refitted.stderr).toContain("(bad_signature)");

    // us-1's own key (an operator who holds it) signs the same claim that eu-1 processed the request.
    const usKey = (await loadOrCreatePlaneKey(join(cluster.plane("us-1").dataDir, "plane.key"))).key;
    const head = original.fields.filter(
      ([n]) => !["signature", "signature-input", "x-meridian-receipt-request"].includes(n.toLowerCase()),
    );
    const echo = field(original, "x-meridian-receipt-request")!;
    const signed = signReceipt(usKey, {
      status: 200,
      headers: head.flatMap(([n, v]) => [n.toLowerCase(), v]),
      request: {
        method: "POST",
        authority: /authority="([^"]+)"/.exec(echo)![1]!,
        path: "/predict",
        contentDigest: /content-digest="([^"]+)"/.exec(echo)![1]!,
      },
      now: Date.now(),
    });
    if (!signed.ok) throw new Error(signed.reason);
    const forged: Saved = { ...original, fields: [...head] };
    for (let i = 0; i < signed.headers.length; i += 2)
      forged.fields.push([signed.headers[i]!, signed.headers[i + 1]!]);
    writeFileSync(join(work, "forged.txt"), render(forged), "latin1");
    const v = await verify("forged.txt");
    expect(v.code).toBe(1);
    expect(v.stderr).toContain("(wrong_plane)");
  }, 120_000);

  it("a standard-endpoint response that hops from us-1 carries eu-1's receipt", async () => {
    const body = '{"via":"us-1"}';
    const std = `model-${model}.${DOMAIN}`;
    const r = await curl("us-1", { host: std, path: "/environments/prod-eu/predict", body, out: "hop.txt" });
    expect(r.statusLine).toMatch(/^HTTP\/1\.1 200/);
    expect(field(r, "x-meridian-route")).toBe("us-1, eu-1");
    const port = cluster.plane("us-1").port;
    const v = await verify("hop.txt", [
      "--url",
      `http://${std}:${port}/environments/prod-eu/predict`,
      "--data",
      body,
    ]);
    expect(v.code, v.stderr).toBe(0);
    expect(v.stdout).toContain("processed in region eu by plane eu-1");
  }, 120_000);

  it("signs the ingress's own refusals; a plane with --receipts off signs nothing", async () => {
    const bad = await curl("eu-1", {
      host: regional(),
      path: "/predict",
      body: "{}",
      key: "nope",
      out: "401.txt",
    });
    expect(bad.statusLine).toMatch(/^HTTP\/1\.1 401/);
    const v401 = await verify("401.txt");
    expect(v401.code, v401.stderr).toBe(0);
    expect(v401.stdout).toContain(": 401 for POST");
    const misdirected = await curl("us-1", {
      host: regional(),
      path: "/predict",
      body: "{}",
      out: "421.txt",
    });
    expect(misdirected.statusLine).toMatch(/^HTTP\/1\.1 421/);
    expect((await verify("421.txt")).stdout).toContain("processed in region us by plane us-1");

    const off = await curl("uk-1", { host: regional(), path: "/predict", body: "{}", out: "off.txt" });
    // uk-1's snapshot holds nothing of a model it serves no environment of: a refusal either way.
    expect(off.statusLine).toMatch(/^HTTP\/1\.1 4\d\d/);
    expect(field(off, "x-meridian-plane")).toBe("uk-1");
    expect(field(off, "signature")).toBeUndefined();
    const none = await verify("off.txt");
    expect(none.code).toBe(1);
    expect(none.stderr).toContain("(no_receipt)");
  }, 120_000);

  it("refuses a --receipts value other than on or off, before starting anything", async () => {
    const r = await cli(
      [
        "plane",
        "--name",
        "zz-1",
        "--region",
        "eu",
        "--control-url",
        cluster.controlUrl,
        "--receipts",
        "maybe",
      ],
      work,
      { MERIDIAN_PLANE_TOKEN: "unused" },
    );
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain("--receipts is on or off, got 'maybe'");
  });

  it("a receipt from a retired key still verifies against the directory after a rotation", async () => {
    const eu = cluster.plane("eu-1");
    const before = JSON.parse(readFileSync(join(work, "directory.json"), "utf8")) as {
      keys: Array<{ key_id: string; plane: string; retired_at: string | null }>;
    };
    const oldKey = (await loadOrCreatePlaneKey(join(eu.dataDir, "plane.key"))).key.keyId;
    expect(before.keys.filter((k) => k.plane === "eu-1").map((k) => [k.key_id, k.retired_at])).toEqual([
      [oldKey, null],
    ]);
    await eu.stop();
    renameSync(join(eu.dataDir, "plane.key"), join(eu.dataDir, "plane.key.retired"));
    await eu.start();
    const fresh = await eventually(async () => {
      const r = await curl("eu-1", { host: regional(), path: "/predict", body: "{}", out: "new.txt" }).catch(
        () => null,
      );
      return r?.statusLine.includes(" 200") ? r : null;
    }, 60_000);
    const newKey = (await loadOrCreatePlaneKey(join(eu.dataDir, "plane.key"))).key.keyId;
    expect(newKey).not.toBe(oldKey);
    expect(fresh.fields.find(([n]) => n === "signature-input")?.[1]).toContain(`keyid="${newKey}"`);
    await eventually(async () => {
      const k = await cli(["keys", "--out", "directory-2.json"], work, env);
      const doc = JSON.parse(readFileSync(join(work, "directory-2.json"), "utf8")) as {
        keys: Array<{ key_id: string; retired_at: string | null }>;
      };
      return (
        k.code === 0 &&
        doc.keys.some((x) => x.key_id === oldKey && x.retired_at !== null) &&
        doc.keys.some((x) => x.key_id === newKey && x.retired_at === null)
      );
    });
    const old = await verify("regional.txt", [], "directory-2.json");
    expect(old.code, old.stderr).toBe(0);
    expect(old.stdout).toContain(`by plane eu-1, key ${oldKey}`);
    const now = await verify("new.txt", [], "directory-2.json");
    expect(now.code, now.stderr).toBe(0);
    expect(now.stdout).toContain(`key ${newKey}`);
    // The directory fetched before the rotation does not know the new key.
    const unknown = await verify("new.txt");
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toContain("(unknown_key)");
  }, 120_000);
});
