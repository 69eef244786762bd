import { mkdtemp, readFile, rm, stat, utimes, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { loadOrCreatePlaneKey, signMessage, verifyMessage } from "../lib/keys.ts";
import { KEY_HISTORY_KIND, recordPlaneKey } from "./key-history.ts";

const dirs: string[] = [];
afterEach(async () => {
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
});

async function dataDir() {
  const dir = await mkdtemp(join(tmpdir(), "meridian-keyhist-"));
  dirs.push(dir);
  return { history: join(dir, "plane-keys.json"), key: join(dir, "plane.key") };
}

describe("recordPlaneKey", () => {
  it("dates a new key from its creation and keeps it (0600) across starts", async () => {
    const d = await dataDir();
    const k = await loadOrCreatePlaneKey(d.key);
    const first = await recordPlaneKey(d.history, d.key, k.key, k.created, Date.UTC(2025, 5, 2));
    expect(first.since).toBe("2025-06-02T00:00:00.000Z");
    expect(first.reset).toBeNull();
    expect((await stat(d.history)).mode & 0o777).toBe(0o600);
    const again = await recordPlaneKey(d.history, d.key, k.key, false, Date.UTC(2025, 5, 9));
    expect(again.since).toBe("2025-06-02T00:00:00.000Z");
    expect(again.entries).toHaveLength(1);
  });

  it("dates a key it did not see created by its file's mtime (a plane upgraded to this version)", async () => {
    const d = await dataDir();
    const k = await loadOrCreatePlaneKey(d.key);
    const written = new Date(Date.UTC(2025, 4, 1, 9, 12, 44));
    await utimes(d.key, written, written);
    const h = await recordPlaneKey(d.history, d.key, k.key, false, Date.UTC(2025, 5, 2));
    expect(h.since).toBe(written.toISOString());
  });

  it("keeps the replaced keys, and checks signatures with every one of them", async () => {
    const d = await dataDir();
    const old = await loadOrCreatePlaneKey(d.key);
    await recordPlaneKey(d.history, d.key, old.key, true, Date.UTC(2025, 5, 1));
    const signedByOld = signMessage(old.key.privateKey, "seal");
    await rm(d.key); // the operator rotates: the key file is moved away, a new one created at start
    const fresh = await loadOrCreatePlaneKey(d.key);
    const h = await recordPlaneKey(d.history, d.key, fresh.key, fresh.created, Date.UTC(2025, 5, 2));
    expect(h.since).toBe("2025-06-02T00:00:00.000Z");
    expect(h.entries.map((e) => e.key_id)).toEqual([old.key.keyId, fresh.key.keyId]);
    expect(verifyMessage(h.verifyingKeys.get(old.key.keyId)!, "seal", signedByOld)).toBe(true);
    expect(h.verifyingKeys.has(fresh.key.keyId)).toBe(true);
    const doc = JSON.parse(await readFile(d.history, "utf8"));
    expect(doc).toMatchObject({ kind: KEY_HISTORY_KIND, version: 1 });
    expect(JSON.stringify(doc)).not.toContain("PRIVATE");
  });

  it("starts anew, saying why, from a file that is not a history", async () => {
    const d = await dataDir();
    const k = await loadOrCreatePlaneKey(d.key);
    for (const text of [
      "{",
      '{"kind":"x","keys":[]}',
      `{"kind":"${KEY_HISTORY_KIND}","keys":[{"key_id":"zz"}]}`,
    ]) {
      await writeFile(d.history, text);
      const h = await recordPlaneKey(d.history, d.key, k.key, false, Date.UTC(2025, 5, 2));
      expect(h.reset).not.toBeNull();
      expect(h.entries.map((e) => e.key_id)).toEqual([k.key.keyId]);
      expect(JSON.parse(await readFile(d.history, "utf8")).keys).toHaveLength(1);
    }
  });

  it("does not take a history entry that names the key's id with another public key", async () => {
    const d = await dataDir();
    const k = await loadOrCreatePlaneKey(d.key);
    const other = await loadOrCreatePlaneKey(join(d.key, "..", "other.key"));
    await writeFile(
      d.history,
      JSON.stringify({
        kind: KEY_HISTORY_KIND,
        version: 1,
        keys: [{ key_id: k.key.keyId, public_key: other.key.publicKey, since: "2020-01-01T00:00:00.000Z" }],
      }),
    );
    const h = await recordPlaneKey(d.history, d.key, k.key, false, Date.UTC(2025, 5, 2));
    expect(h.reset).toContain(k.key.keyId);
    expect(h.since).not.toBe("2020-01-01T00:00:00.000Z");
    expect(h.entries).toEqual([expect.objectContaining({ public_key: k.key.publicKey })]);
  });
});
