// What the GraphQL fields do, on the store: reads scoped like the REST routes' (a team or model the caller
// cannot see is "not found"), and the truss CLI's pushes made through the very functions the REST push uses
// (`createModel`, `createDeployment` in ../models.ts), so region restrictions, manage access, egress and
// the package check hold on this path exactly as on that one.

import { canSeeModel, canSeeTeam, type Principal } from "../../core/access.ts";
import type { DeploymentStatus } from "../../core/domain.ts";
import { MeridianError } from "../../core/errors.ts";
import { standardHostname } from "../../core/host.ts";
import { PRODUCTION } from "../../core/names.ts";
import type { DeploymentRow, ModelRow, TeamRow } from "../../store/schema.ts";
import type { ControlContext } from "../context.ts";
import { defaultTeam, loadModel, loadTeam, requireCapability } from "../lookup.ts";
import { createDeployment, createModel, type DeploymentPayload, issueUploadTarget } from "../models.ts";

/** One request's view of the store: the caller, and what several fields of one answer share. */
export class RequestScope {
  #teams: Promise<Map<string, TeamRow>> | null = null;
  #port: Promise<string> | null = null;
  #deployments = new Batch<string, DeploymentRow[]>((ids) => this.#loadDeployments(ids));
  #production = new Batch<string, string | null>((ids) => this.#loadProduction(ids));

  constructor(
    readonly ctx: ControlContext,
    readonly principal: Principal,
  ) {}

  get db() {
    return this.ctx.store.db;
  }

  /** Every team, once per request (a short table); visibility is checked by whoever reads one. */
  teams(): Promise<Map<string, TeamRow>> {
    this.#teams ??= this.db
      .selectFrom("teams")
      .selectAll()
      .execute()
      .then((rows) => new Map(rows.map((t) => [t.id, t])));
    return this.#teams;
  }

  async team(id: string): Promise<TeamRow> {
    const team = (await this.teams()).get(id);
    if (!team) throw new MeridianError("team_not_found");
    return team;
  }

  /** A model's deployments, oldest first; the models of one answer are read in one query. */
  deploymentsOf(modelId: string): Promise<DeploymentRow[]> {
    return this.#deployments.load(modelId);
  }

  /** The deployment that serves a model's production environment, if any. */
  productionOf(modelId: string): Promise<string | null> {
    return this.#production.load(modelId);
  }

  /**
   * `https://model-{id}.{domain}[:port]`: the standard endpoint's base, which the CLI appends
   * `/development/predict` or `/deployment/{id}/predict` to. The port is the global ingress's: Meridian's DNS
   * answers a standard name with the global-ingress planes' addresses, so their port is the one to call.
   */
  async hostname(modelId: string): Promise<string> {
    this.#port ??= globalIngressPort(this.ctx);
    return `https://${standardHostname(modelId, this.ctx.domain)}${await this.#port}`;
  }

  async #loadDeployments(ids: readonly string[]): Promise<Map<string, DeploymentRow[]>> {
    const rows = await this.db
      .selectFrom("deployments")
      .selectAll()
      .where("model_id", "in", [...ids])
      .orderBy("created_at")
      .orderBy("id")
      .execute();
    const out = new Map<string, DeploymentRow[]>(ids.map((id) => [id, []]));
    for (const d of rows) out.get(d.model_id)?.push(d);
    return out;
  }

  async #loadProduction(ids: readonly string[]): Promise<Map<string, string | null>> {
    const rows = await this.db
      .selectFrom("environments")
      .select(["model_id", "current_deployment_id"])
      .where("model_id", "in", [...ids])
      .where("name", "=", PRODUCTION)
      .execute();
    return new Map(rows.map((e) => [e.model_id, e.current_deployment_id]));
  }
}

/**
 * Collects the keys asked for in one turn of the event loop and loads them with one call (slices of 500,
 * inside every database's parameter limit), so `models { versions { … } }` is two queries, not one per model.
 */
class Batch<K, V> {
  #pending = new Map<K, Array<{ ok: (v: V) => void; fail: (e: unknown) => void }>>();
  #cache = new Map<K, Promise<V>>();

  constructor(private readonly loadMany: (keys: readonly K[]) => Promise<Map<K, V>>) {}

  load(key: K): Promise<V> {
    const cached = this.#cache.get(key);
    if (cached) return cached;
    const promise = new Promise<V>((ok, fail) => {
      if (this.#pending.size === 0) setImmediate(() => void this.#flush());
      const waiters = this.#pending.get(key) ?? [];
      waiters.push({ ok, fail });
      this.#pending.set(key, waiters);
    });
    this.#cache.set(key, promise);
    return promise;
  }

  async #flush(): Promise<void> {
    const batch = this.#pending;
    this.#pending = new Map();
    const keys = [...batch.keys()];
    try {
      const found = new Map<K, V>();
      for (let i = 0; i < keys.length; i += 500) {
        for (const [k, v] of await this.loadMany(keys.slice(i, i + 500))) found.set(k, v);
      }
      for (const [k, waiters] of batch) for (const w of waiters) w.ok(found.get(k) as V);
    } catch (err) {
      for (const waiters of batch.values()) for (const w of waiters) w.fail(err);
    }
  }
}

/** `:port` of the first global-ingress plane (by name), or nothing for 443 or when none is registered. */
async function globalIngressPort(ctx: ControlContext): Promise<string> {
  const plane = await ctx.store.db
    .selectFrom("planes")
    .select("ingress")
    .where("global_ingress", "=", 1)
    .orderBy("name")
    .executeTakeFirst();
  if (!plane) return "";
  const first = (JSON.parse(plane.ingress) as string[])[0];
  const port = first === undefined ? null : /:(\d{1,5})$/.exec(first)?.[1];
  return port === undefined || port === null || port === "443" ? "" : `:${port}`;
}

/** The teams the caller sees (all of them for an org admin), oldest first, as `GET /v1/teams`. */
export async function visibleTeams(scope: RequestScope): Promise<TeamRow[]> {
  const p = scope.principal;
  requireCapability(p, "read");
  return [...(await scope.teams()).values()]
    .filter((t) => canSeeTeam(p, t.id))
    .sort((a, b) => a.created_at.localeCompare(b.created_at) || a.id.localeCompare(b.id));
}

/**
 * The models the caller may see: in one team (a team it cannot see is 404, as on `/v1/teams/{id}/models`),
 * or in every team it sees; a model-scoped key sees only its models.
 */
export async function visibleModels(scope: RequestScope, teamId: string | null): Promise<ModelRow[]> {
  const p = scope.principal;
  requireCapability(p, "read");
  if (teamId !== null) await loadTeam(scope.db, p, teamId);
  const teams = teamId !== null ? [teamId] : [...p.teams.keys()];
  const rows = await scope.db
    .selectFrom("models")
    .selectAll()
    .$if(teamId !== null || !p.is_org_admin, (q) => q.where("team_id", "in", teams.length ? teams : [""]))
    .orderBy("created_at")
    .orderBy("id")
    .execute();
  return rows.filter((m) => canSeeModel(p, m.team_id, m.id));
}

/** `model(id:)` or `model(name:)`: exactly one; a name found in several teams is the default team's. */
export async function findModel(
  scope: RequestScope,
  id: string | null | undefined,
  name: string | null | undefined,
): Promise<ModelRow> {
  const p = scope.principal;
  requireCapability(p, "read");
  if ((id === undefined || id === null) === (name === undefined || name === null)) {
    throw new MeridianError("invalid_request", "Ask for a model by exactly one of id or name.", {
      rule: "exactly_one_of_id_or_name",
      fields: ["id", "name"],
    });
  }
  if (id !== undefined && id !== null) return loadModel(scope.db, p, id);
  const named = (await visibleModels(scope, null)).filter((m) => m.name === name);
  if (named.length === 0) throw new MeridianError("model_not_found", `No model named '${name}'.`);
  if (named.length === 1) return named[0]!;
  const home = await defaultTeam(scope.db, p);
  const mine = named.find((m) => m.team_id === home.id);
  if (mine) return mine;
  throw new MeridianError(
    "invalid_request",
    `Models named '${name}' exist in several teams; ask for one by id.`,
    { rule: "ambiguous_name", model_ids: named.map((m) => m.id) },
  );
}

/** `model_version(id:)`: a deployment of a model the caller sees; any other id is not found. */
export async function findVersion(
  scope: RequestScope,
  id: string | null | undefined,
): Promise<{ model: ModelRow; deployment: DeploymentRow }> {
  requireCapability(scope.principal, "read");
  if (id === undefined || id === null) {
    throw new MeridianError("invalid_request", "Ask for a model version by id.", { field: "id" });
  }
  const d = await scope.db.selectFrom("deployments").selectAll().where("id", "=", id).executeTakeFirst();
  const model = d
    ? await scope.db.selectFrom("models").selectAll().where("id", "=", d.model_id).executeTakeFirst()
    : undefined;
  if (!d || !model || !canSeeModel(scope.principal, model.team_id, model.id)) {
    throw new MeridianError("deployment_not_found", `No deployment '${id}'.`);
  }
  return { model, deployment: d };
}

/**
 * The primary version, as Baseten's `primary_version`: what production serves; else the newest published
 * deployment; else the development deployment (the CLI's own comment: "primary_version is set to the
 * development version ID if no published models exist").
 */
export function primaryVersion(
  deployments: readonly DeploymentRow[],
  productionId: string | null,
): DeploymentRow | null {
  const serving = productionId === null ? undefined : deployments.find((d) => d.id === productionId);
  if (serving) return serving;
  const published = deployments.filter((d) => d.is_development === 0);
  return published.at(-1) ?? deployments.find((d) => d.is_development === 1) ?? null;
}

/**
 * Baseten's GraphQL names deployment states by its internal model state machine; truss maps them back to
 * the REST names (`truss/remote/baseten/utils/status.py` STATUS_TO_DISPLAYABLE). This is that map reversed.
 */
export const GRAPHQL_STATUS: Record<DeploymentStatus, string> = {
  BUILDING: "BUILDING_MODEL",
  DEPLOYING: "DEPLOYING_MODEL",
  DEPLOY_FAILED: "MODEL_DEPLOY_FAILED",
  LOADING_MODEL: "MODEL_LOADING",
  ACTIVE: "MODEL_READY",
  UNHEALTHY: "MODEL_UNHEALTHY",
  BUILD_FAILED: "BUILDING_MODEL_FAILED",
  BUILD_STOPPED: "BUILDING_MODEL_STOPPED",
  DEACTIVATING: "DEACTIVATING_MODEL",
  INACTIVE: "DEACTIVATED_MODEL",
  FAILED: "MODEL_DNE_ERROR",
  UPDATING: "UPDATING",
  SCALED_TO_ZERO: "SCALED_TO_ZERO",
  WAKING_UP: "SCALING_FROM_ZERO",
};

/**
 * `model_s3_upload_credentials`: an upload target of the caller's default team (the query names none), with
 * the S3 answer's fields and the two keys boto3 needs to reach Meridian's endpoint instead of AWS.
 */
export async function uploadCredentials(scope: RequestScope) {
  const p = scope.principal;
  requireCapability(p, "manage");
  const target = await issueUploadTarget(scope.ctx, await defaultTeam(scope.db, p));
  return {
    answer: {
      s3_bucket: target.s3_bucket,
      s3_key: target.s3_key,
      aws_access_key_id: target.creds.aws_access_key_id,
      aws_secret_access_key: target.creds.aws_secret_access_key,
      aws_session_token: target.creds.aws_session_token,
    },
    // Keyword arguments of boto3.resource("s3", …): exactly these, since boto3 refuses unknown ones.
    boto3: { endpoint_url: target.s3_endpoint_url, region_name: target.s3_region },
  };
}

export interface Created {
  model: ModelRow;
  deployment: DeploymentRow;
}

async function created(scope: RequestScope, result: { model: { id: string }; deployment: { id: string } }) {
  const model = await scope.db
    .selectFrom("models")
    .selectAll()
    .where("id", "=", result.model.id)
    .executeTakeFirstOrThrow();
  const deployment = await scope.db
    .selectFrom("deployments")
    .selectAll()
    .where("id", "=", result.deployment.id)
    .executeTakeFirstOrThrow();
  return { model, deployment };
}

/**
 * Runs a push of the upload `key` into `team`. The credentials query names no team, so the CLI's upload
 * lands in the caller's default team; a push into another team the caller also sees takes that upload
 * along, if no deployment uses it yet (a fresh upload, not someone's package of another team). When the
 * push is refused the upload goes back where it was, so a refusal changes nothing.
 */
async function withUploadIn<T>(scope: RequestScope, team: TeamRow, key: string, push: () => Promise<T>) {
  const p = scope.principal;
  const db = scope.db;
  const row = await db.selectFrom("artifacts").select(["team_id"]).where("key", "=", key).executeTakeFirst();
  const from = row?.team_id;
  let moved = false;
  if (from !== undefined && from !== team.id && canSeeTeam(p, from)) {
    const unused = (q: typeof db) =>
      q
        .updateTable("artifacts")
        .where("key", "=", key)
        .where("state", "=", "STORED")
        .where((eb) =>
          eb.not(eb.exists(eb.selectFrom("deployments").select("id").where("artifact_key", "=", key))),
        );
    const update = await unused(db).set({ team_id: team.id }).where("team_id", "=", from).executeTakeFirst();
    moved = Number(update.numUpdatedRows) === 1;
    if (moved) {
      try {
        return await push();
      } catch (err) {
        await unused(db).set({ team_id: from }).where("team_id", "=", team.id).execute();
        throw err;
      }
    }
  }
  return push();
}

/** `create_model_from_truss`: a new model of `team_id` (or the caller's default team). */
export async function createModelFromTruss(
  scope: RequestScope,
  args: { name: string; s3_key: string; team_id?: string | null },
  payload: DeploymentPayload,
): Promise<Created> {
  const p = scope.principal;
  requireCapability(p, "manage");
  const team = args.team_id ? await loadTeam(scope.db, p, args.team_id) : await defaultTeam(scope.db, p);
  const result = await withUploadIn(scope, team, args.s3_key, () =>
    createModel(scope.ctx, p, team.id, { name: args.name, s3_key: args.s3_key, deployment: payload }),
  );
  return created(scope, result);
}

/** `create_model_version_from_truss`: a new deployment of an existing model. */
export async function createVersionFromTruss(
  scope: RequestScope,
  args: { model_id: string; s3_key: string },
  payload: DeploymentPayload,
): Promise<Created> {
  const p = scope.principal;
  requireCapability(p, "manage");
  const model = await loadModel(scope.db, p, args.model_id);
  const team = await scope.team(model.team_id);
  const result = await withUploadIn(scope, team, args.s3_key, () =>
    createDeployment(scope.ctx, p, model.id, { s3_key: args.s3_key, deployment: payload }),
  );
  return created(scope, result);
}

/**
 * `deploy_draft_truss` (`truss push --watch`): the development deployment of the model of that name in the
 * team, overwritten in place; the model is created when the team has none of that name.
 */
export async function deployDraftTruss(
  scope: RequestScope,
  args: { name: string; s3_key: string; team_id?: string | null },
  payload: DeploymentPayload,
): Promise<Created> {
  const p = scope.principal;
  requireCapability(p, "manage");
  const team = args.team_id ? await loadTeam(scope.db, p, args.team_id) : await defaultTeam(scope.db, p);
  const name = args.name.trim();
  const existing = async () =>
    scope.db
      .selectFrom("models")
      .selectAll()
      .where("team_id", "=", team.id)
      .where("name", "=", name)
      .executeTakeFirst();
  const update = (model: ModelRow) =>
    withUploadIn(scope, team, args.s3_key, () =>
      createDeployment(scope.ctx, p, model.id, { s3_key: args.s3_key, deployment: payload }),
    );
  const model = await existing();
  if (model) return created(scope, await update(model));
  try {
    return created(
      scope,
      await withUploadIn(scope, team, args.s3_key, () =>
        createModel(scope.ctx, p, team.id, { name, s3_key: args.s3_key, deployment: payload }),
      ),
    );
  } catch (err) {
    // Another draft push of the same name created the model meanwhile: this one updates its dev slot.
    const raced =
      err instanceof MeridianError && err.code === "model_name_taken" ? await existing() : undefined;
    if (!raced) throw err;
    return created(scope, await update(raced));
  }
}

/** `truss_validation`: the caller may read; the config is judged without I/O (./push.ts). */
export function requireRead(scope: RequestScope): void {
  requireCapability(scope.principal, "read");
}

export async function organization(scope: RequestScope) {
  requireCapability(scope.principal, "read");
  const [id, name] = await Promise.all([
    scope.ctx.store.getMeta("organization_id"),
    scope.ctx.store.getMeta("organization_name"),
  ]);
  return { id: id ?? "", workspace_name: name ?? "" };
}

/** `user`: the person behind a personal key; a workspace key acts for no one, so its email is null. */
export async function user(scope: RequestScope) {
  const p = scope.principal;
  requireCapability(p, "read");
  if (p.user_id === null) return { email: null };
  const row = await scope.db
    .selectFrom("users")
    .select("email")
    .where("id", "=", p.user_id)
    .executeTakeFirst();
  return { email: row?.email ?? null };
}
