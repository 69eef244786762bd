// The Python side of the runtime, as the TypeScript code sees it: the host script and the machine's
// interpreters (src/lib/pythons.ts, shared with the plane, which starts the host), and the pure rules of
// src/core/python.ts.

export { choosePython, parsePythonVersion, trussHostCommand } from "../core/python.ts";
export {
  type Discovery,
  type DiscoveryOptions,
  discoverPythons,
  type ProbeOutcome,
  probePython,
  pythonCandidates,
  TRUSS_HOST_SCRIPT,
} from "../lib/pythons.ts";
