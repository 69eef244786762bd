// A test program standing in for a plane process: hosts a ProcessDriver running one replica of
// server.mjs (without a sandbox), prints `{"endpoint"}` once it is READY, and waits to be killed.
// Usage: node --import tsx plane-host.ts DATA_DIR PACKAGE_DIR
import { join } from "node:path";
import { ProcessDriver } from "../process-driver.ts";
import { Unsandboxed } from "../sandbox.ts";

const [dataDir, packageDir] = process.argv.slice(2);
if (dataDir === undefined || packageDir === undefined)
  throw new Error("usage: plane-host.ts DATA_DIR PACKAGE_DIR");
const sandbox = new Unsandboxed({ dataDir, planeEnv: process.env });
const driver = new ProcessDriver({ dataDir, readinessIntervalMs: 50, sandbox });
driver.subscribe((event) => {
  if (event.type === "state" && event.replica.state === "READY") {
    process.stdout.write(`${JSON.stringify({ endpoint: event.replica.endpoint })}\n`);
  }
});
await driver.start();
await driver.ensure({
  id: "survivor",
  deployment_id: "dep1",
  model_id: "abcd1234",
  environment: null,
  package_dir: packageDir,
  artifact: null,
  command: {
    argv: [process.execPath, join(import.meta.dirname, "server.mjs"), "--listen", "{listen}"],
    env: {},
  },
  egress: "allow",
  readiness_path: "/v1/models/model",
  liveness_path: "/",
});
setInterval(() => {}, 1_000);
