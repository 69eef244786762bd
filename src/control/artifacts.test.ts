import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createTestDatabase } from "../../test/support/databases.ts";
import { Store } from "../store/store.ts";
import { describeArtifactStoreConformance } from "./artifacts.conformance.ts";
import { DatabaseArtifactStore, LocalArtifactStore } from "./artifacts.ts";

describeArtifactStoreConformance("files", async () => {
  const dir = mkdtempSync(join(tmpdir(), "meridian-artifacts-"));
  return {
    store: new LocalArtifactStore(dir),
    cleanup: async () => rmSync(dir, { recursive: true, force: true }),
  };
});

for (const kind of ["sqlite", "postgres"] as const) {
  describeArtifactStoreConformance(`database (${kind})`, async () => {
    const db = await createTestDatabase(kind);
    const store = await Store.open(
      db.url === null
        ? { kind: "sqlite", file: join(db.dir, "meridian.db") }
        : { kind: "postgres", url: db.url },
    );
    return {
      store: new DatabaseArtifactStore(store),
      async cleanup() {
        await store.close();
        await db.drop();
      },
    };
  });
}
