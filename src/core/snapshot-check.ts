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
    if (!planes.has(name)) fail(`${at}.plane`, `names '${clip(name)}', which is not in planes`);
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

  // The lists below can hold hundreds of thousands of entries: a field's path is built only when it fails.
  let m: string | null;
  const apiKeys = array(s["api_keys"], "api_keys");
  for (let i = 0; i < apiKeys.length; i++) {
    const key = apiKeys[i];
    if (!isRecord(key)) fail(`api_keys[${i}]`, "must be an object");
    if (typeof key["hash"] !== "string" || !SHA256_HEX.test(key["hash"])) {
      fail(`api_keys[${i}].hash`, "must be a sha256 in lowercase hex");
    }
    const prefix = key["prefix"];
    if (typeof prefix !== "string" || prefix.length === 0 || prefix.length > 64) {
      fail(`api_keys[${i}].prefix`, "must be a string of 1 to 64 characters");
    }
    m = opaqueIdError(key["team_id"]);
    if (m !== null) fail(`api_keys[${i}].team_id`, m);
    m = oneOfError(key["category"], API_KEY_CATEGORIES);
    if (m !== null) fail(`api_keys[${i}].category`, m);
    const scope = key["model_ids"];
    if (scope !== null) {
      if (!Array.isArray(scope)) fail(`api_keys[${i}].model_ids`, "must be an array or null");
      for (let j = 0; j < scope.length; j++) {
        m = modelIdError(scope[j]);
        if (m !== null) fail(`api_keys[${i}].model_ids[${j}]`, m);
      }
    }
  }

  /** deployment id → the model it belongs to. */
  const deploymentModel = new Map<string, string>();
  const modelIds = new Set<string>();
  const models = array(s["models"], "models");
  for (let i = 0; i < models.length; i++) {
    const model = models[i];
    if (!isRecord(model)) fail(`models[${i}]`, "must be an object");
    const id = model["id"];
    m = modelIdError(id);
    if (m !== null) fail(`models[${i}].id`, m);
    const mid = id as string;
    if (modelIds.has(mid)) fail(`models[${i}].id`, `'${mid}' is listed twice`);
    modelIds.add(mid);
    m = opaqueIdError(model["team_id"]);
    if (m !== null) fail(`models[${i}].team_id`, m);
    if (typeof model["name"] !== "string") fail(`models[${i}].name`, "must be a string");
    const deployments = model["deployments"];
    if (!Array.isArray(deployments)) fail(`models[${i}].deployments`, "must be an array");
    for (let j = 0; j < deployments.length; j++) {
      const d = deployments[j];
      if (!isRecord(d)) fail(`models[${i}].deployments[${j}]`, "must be an object");
      const did = d["id"];
      m = opaqueIdError(did);
      if (m !== null) fail(`models[${i}].deployments[${j}].id`, m);
      if (deploymentModel.has(did as string)) {
        fail(`models[${i}].deployments[${j}].id`, `'${did}' is listed twice`);
      }
      deploymentModel.set(did as string, mid);
      m = nullableSlugError(d["region"]);
      if (m !== null) fail(`models[${i}].deployments[${j}].region`, m);
      const ready = d["ready_planes"];
      if (!Array.isArray(ready)) fail(`models[${i}].deployments[${j}].ready_planes`, "must be an array");
      for (let k = 0; k < ready.length; k++) {
        const name = ready[k];
        if (typeof name !== "string" || !planes.has(name)) {
          fail(
            `models[${i}].deployments[${j}].ready_planes[${k}]`,
            `names '${clip(String(name))}', which is not in planes`,
          );
        }
        if (ready.indexOf(name) !== k) {
          fail(`models[${i}].deployments[${j}].ready_planes[${k}]`, `'${name}' is listed twice`);
        }
      }
      if (d["scale"] !== undefined) checkScale(d["scale"], `models[${i}].deployments[${j}].scale`);
    }
    const dev = model["development_deployment_id"];
    if (dev !== null) {
      m = opaqueIdError(dev);
      if (m !== null) fail(`models[${i}].development_deployment_id`, m);
      if (deploymentModel.get(dev as string) !== mid)
        fail(`models[${i}].development_deployment_id`, `'${dev}' is not among the model's deployments`);
    }
    const envs = model["environments"];
    if (!Array.isArray(envs)) fail(`models[${i}].environments`, "must be an array");
    for (let j = 0; j < envs.length; j++) {
      const env = envs[j];
      if (!isRecord(env)) fail(`models[${i}].environments[${j}]`, "must be an object");
      const name = env["name"];
      m = environmentNameError(name);
      if (m !== null) fail(`models[${i}].environments[${j}].name`, m);
      for (let k = 0; k < j; k++) {
        if ((envs[k] as Record<string, unknown>)["name"] === name) {
          fail(`models[${i}].environments[${j}].name`, `'${name}' is listed twice`);
        }
      }
      const served = env["deployment_id"];
      if (served !== null) {
        m = opaqueIdError(served);
        if (m !== null) fail(`models[${i}].environments[${j}].deployment_id`, m);
        if (deploymentModel.get(served as string) !== mid) {
          fail(
            `models[${i}].environments[${j}].deployment_id`,
            `'${served}' is not among the model's deployments`,
          );
        }
      }
      m = nullableSlugError(env["region"]);
      if (m !== null) fail(`models[${i}].environments[${j}].region`, m);
      m = oneOfError(env["standard_endpoint_policy"], STANDARD_ENDPOINT_POLICIES);
      if (m !== null) {
        fail(`models[${i}].environments[${j}].standard_endpoint_policy`, m);
      }
    }
  }

  const replicaIds = new Set<string>();
  const replicas = array(s["replicas"], "replicas");
  for (let i = 0; i < replicas.length; i++) {
    const at = `replicas[${i}]`; // a plane runs a handful of replicas: no need to save this string
    const replica = record(replicas[i], at);
    const id = opaqueId(replica["id"], `${at}.id`);
    if (replicaIds.has(id)) fail(`${at}.id`, `'${id}' is listed twice`);
    replicaIds.add(id);
    const model = modelId(replica["model_id"], `${at}.model_id`);
    if (!modelIds.has(model)) fail(`${at}.model_id`, `'${model}' is not in models`);
    const did = opaqueId(replica["deployment_id"], `${at}.deployment_id`);
    if (deploymentModel.get(did) !== model) {
      fail(`${at}.deployment_id`, `'${did}' is not among model ${model}'s deployments`);
    }
    const env = replica["environment"];
    m = env === null ? null : environmentNameError(env);
    if (m !== null) fail(`${at}.environment`, m);
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
    m = oneOfError(replica["egress"], EGRESS_POLICIES);
    if (m !== null) fail(`${at}.egress`, m);
  }
  return value as PlaneSnapshot;
}

/** A deployment's `scale` (optional): what an ingress parks by. */
function checkScale(value: unknown, at: string): void {
  const scale = record(value, at);
  if (typeof scale["wakeable"] !== "boolean") fail(`${at}.wakeable`, "must be a boolean");
  const target = scale["concurrency_target"];
  if (typeof target !== "number" || !Number.isSafeInteger(target) || target < 1) {
    fail(`${at}.concurrency_target`, "must be an integer of at least 1");
  }
  const policy = scale["policy"];
  if (policy !== null && policy !== "QUEUE_ON_FULL" && policy !== "REJECT_ON_FULL") {
    fail(`${at}.policy`, "must be QUEUE_ON_FULL, REJECT_ON_FULL or null");
  }
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

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function record(value: unknown, at: string): Record<string, unknown> {
  if (!isRecord(value)) fail(at, "must be an object");
  return value;
}

function array(value: unknown, at: string): unknown[] {
  if (!Array.isArray(value)) fail(at, "must be an array");
  return value;
}

function string(value: unknown, at: string): string {
  if (typeof value !== "string") fail(at, "must be a string");
  return value;
}

// Each `…Error` returns what is wrong with a value, or null: the caller names the field only on failure.

function slugError(value: unknown): string | null {
  if (typeof value !== "string") return "must be a string";
  return isSlug(value) ? null : `'${clip(value)}' is not a slug (lowercase letters, digits, inner hyphens)`;
}

function nullableSlugError(value: unknown): string | null {
  return value === null ? null : slugError(value);
}

function opaqueIdError(value: unknown): string | null {
  if (typeof value !== "string") return "must be a string";
  return OPAQUE_ID.test(value)
    ? null
    : `'${clip(value)}' is not an id (letters, digits, '_' and '-', at most 64)`;
}

function modelIdError(value: unknown): string | null {
  if (typeof value !== "string") return "must be a string";
  return isModelId(value) ? null : `'${clip(value)}' is not a model id`;
}

function environmentNameError(value: unknown): string | null {
  if (typeof value !== "string") return "must be a string";
  const c = checkEnvironmentName(value);
  return c.ok ? null : `'${clip(value)}' is not an environment name: ${c.message}`;
}

function oneOfError(value: unknown, allowed: readonly string[]): string | null {
  return typeof value === "string" && allowed.includes(value) ? null : `must be one of ${allowed.join(", ")}`;
}

function slug(value: unknown, at: string): string {
  const m = slugError(value);
  if (m !== null) fail(at, m);
  return value as string;
}

function opaqueId(value: unknown, at: string): string {
  const m = opaqueIdError(value);
  if (m !== null) fail(at, m);
  return value as string;
}

function modelId(value: unknown, at: string): string {
  const m = modelIdError(value);
  if (m !== null) fail(at, m);
  return value as string;
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

/** Quotes at most 64 characters of a refused value, so a hostile snapshot cannot flood the log. */
function clip(s: string): string {
  return s.length > 64 ? `${s.slice(0, 64)}…` : s;
}
