// Runs the store's one conformance suite against both backends: a SQLite file in a fresh temporary
// directory, and a fresh database on the machine's PostgreSQL (dropped afterwards).

import { join } from "node:path";
import { createTestDatabase } from "../../test/support/databases.ts";
import { storeConformance } from "./store.conformance.ts";

storeConformance("sqlite", {
  sharedByReplicas: false,
  async fresh() {
    const db = await createTestDatabase("sqlite");
    return { config: { kind: "sqlite", file: join(db.dir, "meridian.db") }, drop: db.drop };
  },
});

storeConformance("postgres", {
  sharedByReplicas: true,
  async fresh() {
    const db = await createTestDatabase("postgres");
    return { config: { kind: "postgres", url: db.url! }, drop: db.drop };
  },
});
