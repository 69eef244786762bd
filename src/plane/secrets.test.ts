// The plane's secret files against answers a compromised or broken control plane (or anything in between)
// could send: names that are paths, values out of bounds, oversized or malformed answers, and a directory
// an attacker replaced with a symlink. The happy path and the real control plane's refusals are tested end
// to end in test/control/secrets.test.ts.

import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { fetchReplicaSecrets, ReplicaSecretsError, removeReplicaSecrets } from "./secrets.ts";

describe("fetchReplicaSecrets against hostile answers", () => {
  let server: Server;
  let url: string;
  let answer: { status: number; body: string } = { status: 200, body: "{}" };
  let root: string;
  let seenAuthorization: string | undefined;
  let seenPath: string | undefined;

  beforeAll(async () => {
    server = createServer((req, res) => {
      seenAuthorization = req.headers.authorization;
      seenPath = req.url;
      res.writeHead(answer.status, { "content-type": "application/json" });
      res.end(answer.body);
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    await new Promise((resolve) => server.close(resolve));
  });
  beforeEach(() => {
    root = mkdtempSync(join(tmpdir(), "meridian-plane-secrets-"));
    return () => rmSync(root, { recursive: true, force: true });
  });

  const fetchInto = (dir: string) =>
    fetchReplicaSecrets({
      controlUrl: url,
      planeToken: "plane-eu-1.token",
      plane: "eu-1",
      replicaId: "r1",
      dir,
    });

  async function refused(dir: string, reason: string) {
    let error: unknown;
    try {
      await fetchInto(dir);
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(ReplicaSecretsError);
    expect((error as ReplicaSecretsError).reason).toBe(reason);
    return error as ReplicaSecretsError;
  }

  it("asks for its own plane's replica with its credential", async () => {
    answer = { status: 200, body: JSON.stringify({ secrets: { a: "1" } }) };
    const dir = join(root, "r1");
    expect(await fetchInto(dir)).toEqual(["a"]);
    expect(seenAuthorization).toBe("Bearer plane-eu-1.token");
    expect(seenPath).toBe("/v1/internal/planes/eu-1/replicas/r1/secrets");
    await removeReplicaSecrets(dir);
    expect(existsSync(dir)).toBe(false);
  });

  it("writes nothing outside its directory, whatever the names", async () => {
    for (const name of ["../escape", "..", ".", "a/b", "/etc/passwd", "", "x\u0000y"]) {
      answer = { status: 200, body: JSON.stringify({ secrets: { ok: "1", [name]: "planted" } }) };
      const dir = join(root, "replica");
      const err = await refused(dir, "invalid_answer");
      expect(err.message).not.toContain("planted");
      expect(existsSync(dir)).toBe(false);
      expect(readdirSync(root)).toEqual([]);
    }
  });

  it("refuses values that are not strings, empty or too large, without quoting them", async () => {
    for (const value of [42, null, { nested: "x" }, "", `planted${"x".repeat(64 * 1024)}`]) {
      answer = { status: 200, body: JSON.stringify({ secrets: { a: value } }) };
      const err = await refused(join(root, "replica"), "invalid_answer");
      expect(err.message).not.toContain("planted");
    }
    answer = { status: 200, body: JSON.stringify({ secrets: ["a"] }) };
    await refused(join(root, "replica"), "invalid_answer");
    answer = { status: 200, body: "not json" };
    await refused(join(root, "replica"), "invalid_answer");
  });

  it("stops reading an answer larger than any the contract allows", async () => {
    answer = { status: 200, body: `{"secrets":{"a":"${"x".repeat(50 * 1024 * 1024)}"}}` };
    await refused(join(root, "replica"), "invalid_answer");
  });

  it("keeps the control plane's message for a missing secret, and says the rest plainly", async () => {
    answer = {
      status: 409,
      body: JSON.stringify({
        error: "Secret 'hf_token' not found: …",
        error_code: "secret_missing",
        detail: null,
      }),
    };
    expect((await refused(join(root, "replica"), "missing")).message).toBe("Secret 'hf_token' not found: …");
    answer = {
      status: 404,
      body: JSON.stringify({ error: "x", error_code: "replica_not_found", detail: null }),
    };
    expect((await refused(join(root, "replica"), "not_placed")).message).toContain("r1");
    answer = {
      status: 500,
      body: JSON.stringify({ error: "x", error_code: "internal_error", detail: null }),
    };
    expect((await refused(join(root, "replica"), "http_status")).message).toContain("500 (internal_error)");
  });

  it("fails on an unreachable control plane", async () => {
    const closed = createServer();
    await new Promise<void>((resolve) => closed.listen(0, "127.0.0.1", resolve));
    const port = (closed.address() as AddressInfo).port;
    await new Promise((resolve) => closed.close(resolve));
    await expect(
      fetchReplicaSecrets({
        controlUrl: `http://127.0.0.1:${port}`,
        planeToken: "t",
        plane: "eu-1",
        replicaId: "r1",
        dir: join(root, "replica"),
      }),
    ).rejects.toMatchObject({ reason: "network" });
  });

  it("refuses a directory replaced by a symlink, and links planted inside it", async () => {
    answer = { status: 200, body: JSON.stringify({ secrets: { hf_token: "value" } }) };
    const elsewhere = join(root, "elsewhere");
    mkdirSync(elsewhere);
    const dir = join(root, "replica");
    symlinkSync(elsewhere, dir);
    await refused(dir, "filesystem");
    expect(readdirSync(elsewhere)).toEqual([]);

    // A link planted where a value will be written is removed, never followed.
    const target = join(root, "target");
    mkdirSync(join(root, "real"));
    symlinkSync(target, join(root, "real", "hf_token"));
    expect(await fetchInto(join(root, "real"))).toEqual(["hf_token"]);
    expect(existsSync(target)).toBe(false);
    expect(readFileSync(join(root, "real", "hf_token"), "utf8")).toBe("value");
  });
});
