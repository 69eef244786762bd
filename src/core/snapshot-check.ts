// The plane's check of every snapshot it receives (from the control plane, or from its disk cache) before it
// serves from it: every field's type and shape, names and ids well formed, public keys decodable,
// references consistent, and the plane and region its own. Pure and total: any value in, a decision out
// naming the first field that failed; never a throw. Unknown fields are ignored, so a newer control plane
// can add one without freezing older planes.

import { API_KEY_CATEGORIES, EGRESS_POLICIES, STANDARD_ENDPOINT_POLICIES } from "./domain.ts";
import { normalizeDomain } from "./host.ts";
import { checkEnvironmentName, isModelId, isSlug } from "./names.ts";
import type { PlaneRef, PlaneSnapshot } from "./snapshot.ts";

export type PlaneSnapshotCheck =
  | { ok: true; snapshot: PlaneSnapshot }
  | { ok: false; field: string; message: string };

/** Who the checking plane is: a snapshot for another plane or region is refused. */
export interface SnapshotOwner {
  plane: string;
  region: string;
}

/** Deployment, replica and team ids: they name directories and URL path segments on the plane. */
const OPAQUE_ID = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;
const SHA256_HEX = /^[0-9a-f]{64}$/;
const KEY_ID = /^[0-9a-f]{16}$/;
/**
 * 32 bytes in unpadded base64url (RFC 4648 §5): 42 characters and a last one that carries 2 data bits, so
 * its 4 low bits are zero (a canonical encoding has no stray bits).
 */
const RAW_ED25519_KEY = /^[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]$/;
/** As the operator API accepts ingress addresses (src/control/admin.ts `checkIngress`). */
const HOST_PORT = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/;
const DNS_LABEL = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;
const ISO_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$/;

class Invalid {
  constructor(
    readonly field: string,
    readonly message: string,
  ) {}
}

function fail(field: string, message: string): never {
  throw new Invalid(field, message);
}

export function checkPlaneSnapshot(value: unknown, owner: SnapshotOwner): PlaneSnapshotCheck {
  try {
    return { ok: true, snapshot: check(value, owner) };
  } catch (err) {
    if (err instanceof Invalid) return { ok: false, field: err.field, message: err.message };
    // Unreachable for JSON values; an exotic object (a throwing getter, a proxy) is refused, not thrown.
    return { ok: false, field: "", message: `the snapshot could not be read: ${String(err)}` };
  }
}

function check(value: unknown, owner: SnapshotOwner): PlaneSnapshot {
  const s = record(value, "");
  const revision = s["revision"];
  if (typeof revision !== "number" || !Number.isSafeInteger(revision) || revision < 0) {
    fail("revision", "must be a non-negative integer");
  }
  domain(s["domain"], "domain");

  const plane = planeRef(s["plane"], "plane");
  if (plane.name !== owner.plane)
    fail("plane.name", `is '${plane.name}', but this plane is '${owner.plane}'`);
  if (plane.region !== owner.region) {
    fail("plane.region", `is '${plane.region}', but this plane is in region '${owner.region}'`);
  }
  const planes = new Map<string, PlaneRef>();
  for (const [i, p] of array(s["planes"], "planes").entries()) {
    const ref = planeRef(p, `planes[${i}]`);
    if (planes.has(ref.name)) fail(`planes[${i}].name`, `'${ref.name}' is listed twice`);
    planes.set(ref.name, ref);
  }
  const listedSelf = planes.get(plane.name);
  if (listedSelf === undefined) fail("planes", `does not list this plane ('${plane.name}')`);
  if (listedSelf.region !== plane.region) fail("planes", `lists '${plane.name}' in another region`);

  const keyIds = new Set<string>();
  for (const [i, k] of array(s["plane_keys"], "plane_keys").entries()) {
    const at = `plane_keys[${i}]`;
    const key = record(k, at);
    const name = string(key["plane"], `${at}.plane`);
    if (!planes.has(name)) fail(`${at}.plane`, `names '${name}', which is not in planes`);
    const id = keyId(key["key_id"], `${at}.key_id`);
    publicKey(key["public_key"], `${at}.public_key`);
    const retired = key["retired_at"];
    if (retired !== null) time(retired, `${at}.retired_at`);
    if (keyIds.has(`${name}/${id}`)) fail(`${at}.key_id`, `'${id}' of '${name}' is listed twice`);
    keyIds.add(`${name}/${id}`);
  }
  const control = record(s["control_key"], "control_key");
  keyId(control["key_id"], "control_key.key_id");
  publicKey(control["public_key"], "control_key.public_key");

  for (const [i, k] of array(s["api_keys"], "api_keys").entries()) {
    const at = `api_keys[${i}]`;
    const key = record(k, at);
    if (typeof key["hash"] !== "string" || !SHA256_HEX.test(key["hash"])) {
      fail(`${at}.hash`, "must be a sha256 in lowercase hex");
    }
    const prefix = string(key["prefix"], `${at}.prefix`);
    if (prefix.length === 0 || prefix.length > 64) fail(`${at}.prefix`, "must be 1 to 64 characters");
    opaqueId(key["team_id"], `${at}.team_id`);
    oneOf(key["category"], API_KEY_CATEGORIES, `${at}.category`);
    const scope = key["model_ids"];
    if (scope !== null) {
      for (const [j, id] of array(scope, `${at}.model_ids`).entries()) modelId(id, `${at}.model_ids[${j}]`);
    }
  }

  /** deployment id → the model it belongs to. */
  const deploymentModel = new Map<string, string>();
  const models = new Map<string, Set<string>>();
  for (const [i, m] of array(s["models"], "models").entries()) {
    const at = `models[${i}]`;
    const model = record(m, at);
    const id = modelId(model["id"], `${at}.id`);
    if (models.has(id)) fail(`${at}.id`, `'${id}' is listed twice`);
    opaqueId(model["team_id"], `${at}.team_id`);
    string(model["name"], `${at}.name`);
    const own = new Set<string>();
    for (const [j, d] of array(model["deployments"], `${at}.deployments`).entries()) {
      const dat = `${at}.deployments[${j}]`;
      const deployment = record(d, dat);
      const did = opaqueId(deployment["id"], `${dat}.id`);
      if (deploymentModel.has(did)) fail(`${dat}.id`, `'${did}' is listed twice`);
      deploymentModel.set(did, id);
      own.add(did);
      nullableSlug(deployment["region"], `${dat}.region`);
      const ready = new Set<string>();
      for (const [k, p] of array(deployment["ready_planes"], `${dat}.ready_planes`).entries()) {
        const name = string(p, `${dat}.ready_planes[${k}]`);
        if (!planes.has(name)) fail(`${dat}.ready_planes[${k}]`, `names '${name}', which is not in planes`);
        if (ready.has(name)) fail(`${dat}.ready_planes[${k}]`, `'${name}' is listed twice`);
        ready.add(name);
      }
    }
    const dev = model["development_deployment_id"];
    if (dev !== null) {
      const did = opaqueId(dev, `${at}.development_deployment_id`);
      if (!own.has(did))
        fail(`${at}.development_deployment_id`, `'${did}' is not among the model's deployments`);
    }
    const envs = new Set<string>();
    for (const [j, e] of array(model["environments"], `${at}.environments`).entries()) {
      const eat = `${at}.environments[${j}]`;
      const env = record(e, eat);
      const name = environmentName(env["name"], `${eat}.name`);
      if (envs.has(name)) fail(`${eat}.name`, `'${name}' is listed twice`);
      envs.add(name);
      const served = env["deployment_id"];
      if (served !== null) {
        const did = opaqueId(served, `${eat}.deployment_id`);
        if (!own.has(did)) fail(`${eat}.deployment_id`, `'${did}' is not among the model's deployments`);
      }
      nullableSlug(env["region"], `${eat}.region`);
      oneOf(env["standard_endpoint_policy"], STANDARD_ENDPOINT_POLICIES, `${eat}.standard_endpoint_policy`);
    }
    models.set(id, own);
  }

  const replicaIds = new Set<string>();
  for (const [i, r] of array(s["replicas"], "replicas").entries()) {
    const at = `replicas[${i}]`;
    const replica = record(r, at);
    const id = opaqueId(replica["id"], `${at}.id`);
    if (replicaIds.has(id)) fail(`${at}.id`, `'${id}' is listed twice`);
    replicaIds.add(id);
    const model = modelId(replica["model_id"], `${at}.model_id`);
    const own = models.get(model);
    if (own === undefined) fail(`${at}.model_id`, `'${model}' is not in models`);
    const did = opaqueId(replica["deployment_id"], `${at}.deployment_id`);
    if (!own.has(did)) fail(`${at}.deployment_id`, `'${did}' is not among model ${model}'s deployments`);
    const env = replica["environment"];
    if (env !== null) environmentName(env, `${at}.environment`);
    const artifact = record(replica["artifact"], `${at}.artifact`);
    if (typeof artifact["sha256"] !== "string" || !SHA256_HEX.test(artifact["sha256"])) {
      fail(`${at}.artifact.sha256`, "must be a sha256 in lowercase hex");
    }
    const key = string(artifact["key"], `${at}.artifact.key`);
    if (key.length === 0 || key.length > 1024) fail(`${at}.artifact.key`, "must be 1 to 1024 characters");
    const size = artifact["size"];
    if (typeof size !== "number" || !Number.isSafeInteger(size) || size < 0) {
      fail(`${at}.artifact.size`, "must be a non-negative integer");
    }
    oneOf(replica["egress"], EGRESS_POLICIES, `${at}.egress`);
  }
  return value as PlaneSnapshot;
}

function planeRef(value: unknown, at: string): PlaneRef {
  const p = record(value, at);
  const name = slug(p["name"], `${at}.name`);
  const region = slug(p["region"], `${at}.region`);
  const ingress = array(p["ingress"], `${at}.ingress`);
  for (const [i, a] of ingress.entries()) {
    const m = typeof a === "string" ? HOST_PORT.exec(a) : null;
    if (m === null || Number(m[2]) < 1 || Number(m[2]) > 65535) {
      fail(`${at}.ingress[${i}]`, "must be host:port");
    }
  }
  if (typeof p["global_ingress"] !== "boolean") fail(`${at}.global_ingress`, "must be a boolean");
  return { name, region, ingress: ingress as string[], global_ingress: p["global_ingress"] };
}

function record(value: unknown, at: string): Record<string, unknown> {
  if (typeof value !== "object" || value === null || Array.isArray(value)) fail(at, "must be an object");
  return value as Record<string, unknown>;
}

function array(value: unknown, at: string): unknown[] {
  if (!Array.isArray(value)) fail(at, "must be an array");
  return value;
}

function string(value: unknown, at: string): string {
  if (typeof value !== "string") fail(at, "must be a string");
  return value;
}

function slug(value: unknown, at: string): string {
  const s = string(value, at);
  if (!isSlug(s)) fail(at, `'${clip(s)}' is not a slug (lowercase letters, digits, inner hyphens)`);
  return s;
}

function nullableSlug(value: unknown, at: string): void {
  if (value !== null) slug(value, at);
}

function opaqueId(value: unknown, at: string): string {
  const s = string(value, at);
  if (!OPAQUE_ID.test(s)) fail(at, `'${clip(s)}' is not an id (letters, digits, '_' and '-', at most 64)`);
  return s;
}

function modelId(value: unknown, at: string): string {
  const s = string(value, at);
  if (!isModelId(s)) fail(at, `'${clip(s)}' is not a model id`);
  return s;
}

function environmentName(value: unknown, at: string): string {
  const s = string(value, at);
  const c = checkEnvironmentName(s);
  if (!c.ok) fail(at, `'${clip(s)}' is not an environment name: ${c.message}`);
  return s;
}

function keyId(value: unknown, at: string): string {
  const s = string(value, at);
  if (!KEY_ID.test(s)) fail(at, "must be 16 lowercase hex digits");
  return s;
}

function publicKey(value: unknown, at: string): void {
  if (typeof value !== "string" || !RAW_ED25519_KEY.test(value)) {
    fail(at, "must be a raw Ed25519 public key (32 bytes, base64url)");
  }
}

function time(value: unknown, at: string): void {
  if (typeof value !== "string" || !ISO_TIME.test(value) || !Number.isFinite(Date.parse(value))) {
    fail(at, "must be an ISO-8601 time or null");
  }
}

function domain(value: unknown, at: string): void {
  const s = string(value, at);
  const d = normalizeDomain(s);
  if (d.length === 0 || d.length > 253 || !d.split(".").every((l) => DNS_LABEL.test(l))) {
    fail(at, `'${clip(s)}' is not a domain name`);
  }
}

function oneOf<T extends string>(value: unknown, allowed: readonly T[], at: string): T {
  if (typeof value !== "string" || !(allowed as readonly string[]).includes(value)) {
    fail(at, `must be one of ${allowed.join(", ")}`);
  }
  return value as T;
}

/** Quotes at most 64 characters of a refused value, so a hostile snapshot cannot flood the log. */
function clip(s: string): string {
  return s.length > 64 ? `${s.slice(0, 64)}…` : s;
}
