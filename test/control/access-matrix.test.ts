// The security matrix (issue 10): every route of GET /v1/spec × seven principals × a restricted and an
// unrestricted environment, each cell with its expected status, against a real control plane on a SQLite
// file. A route of the spec without a row here fails the file, so no route is added without deciding who
// may call it. Every cell that is refused (and every read) must leave the whole database as it was — what
// environments serve, their promotions, the deployments, the audit log; every allowed change must show.

import { join } from "node:path";
import { sql } from "kysely";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type RunningControl, startControl } from "../../src/control/main.ts";
import type { ErrorCode } from "../../src/core/errors.ts";
import type { Db } from "../../src/store/store.ts";
import { ApiClient, NEW_MODEL_PUSH, packExample, type Response } from "../support/control.ts";
import { createTestDatabase, type TestDatabase } from "../support/databases.ts";
import {
  createModelMutation,
  createVersionMutation,
  deployDraftMutation,
  encodeConfig,
  HELLO_PY_CONFIG,
  modelByIdQuery,
  modelsQuery,
  modelVersionQuery,
  pushVariables,
  TEAMS_QUERY,
  TRUSS_USER_ENV,
  UPLOAD_CREDENTIALS_QUERY,
  validateTrussQuery,
  WHOAMI_QUERY,
} from "../support/truss-cli.ts";

// —— principals and variants ——

const WHO = [
  "listed", // a team member (personal key) on the restricted groups' list
  "member", // a team member (personal key) on no list
  "team_admin",
  "org_admin", // an org admin who is a plain member of the team: the power is the org role's
  "workspace", // WORKSPACE_MANAGE_ALL of the team
  "invoke", // WORKSPACE_INVOKE of the team
  "other_team", // the team admin of another team
] as const;
type Who = (typeof WHO)[number];

/**
 * `restricted`: team R, whose groups `production`, `prod-eu` and `prod-us` restrict manage access to the
 * listed user. `unrestricted`: team U, the same people and fixtures with no restriction at all.
 */
const VARIANTS = ["restricted", "unrestricted"] as const;
type Variant = (typeof VARIANTS)[number];

/** The restricted groups of team R; `prod-us` is configured before any environment has the name. */
const RESTRICTED_GROUPS = ["production", "prod-eu", "prod-us"];
/** The environment most rows act on; every fixture model has it. */
const SUBJECT = "prod-eu";

interface Expect {
  status: number;
  code?: ErrorCode;
}
const FORBIDDEN: Expect = { status: 403, code: "forbidden" };
const RESTRICTED: Expect = { status: 403, code: "environment_restricted" };
const UNAUTHORIZED: Expect = { status: 401, code: "unauthorized" };
/**
 * A route that names no team acts in the key's team; for an org admin that is the installation's default
 * team (src/control/lookup.ts `defaultTeam`), whatever teams they are a member of. There, T's upload,
 * T's members and T's groups do not exist.
 */
const ORG_ADMIN_ELSEWHERE = (code: ErrorCode): Expect => ({ status: 404, code });

// —— the table ——

type Policy =
  /** No key needed; every key gets 200 too. */
  | "public"
  /** Plane credentials only: an API key, any API key, is 401. */
  | "plane-only"
  /** The read capability (every key but invoke-only ones). */
  | "read"
  /** The manage capability; touches no environment's serving (`manage-environment` is for those). */
  | "manage"
  /** The manage capability and manage access to every restricted environment the change touches. */
  | "manage-environment"
  /** Team admins (personal keys) and org admins. */
  | "team-admin"
  /** The manage_api_keys capability; which keys a principal sees is the route's business (see except). */
  | "key-admin"
  /** Org admins only (the operator). */
  | "org-admin";

type Need =
  | "in_flight"
  | "failed"
  | "inactive"
  | "pending_upload"
  | "key_target"
  | "scratch_plane"
  | "secret_target"
  | "webhook_secret_target";

/** A model with its deployments (unless the row says `model: false`), and the row's targets. */
interface Fixture {
  model: string;
  /** Serves production. */
  P: string;
  /** Serves prod-eu (the subject). */
  E: string;
  /** Serves nothing: the source of promotions. */
  F: string;
  /** prod-eu's promotion candidate, held at STARTING (`in_flight`). */
  C?: string;
  /** A prepared, not yet used upload target (`pending_upload`). */
  pendingKey?: string;
  /** A WORKSPACE_INVOKE key of the team to delete (`key_target`). */
  keyPrefix?: string;
  /** A plane registered for this cell to change or remove (`scratch_plane`). */
  plane?: string;
  /** A secret of the team, named by no deployment (`secret_target`). */
  secretName?: string;
  /** A webhook secret of the team (`webhook_secret_target`). */
  webhookSecretId?: string;
}

interface Side {
  variant: Variant;
  team: string;
  clients: Record<Who, ApiClient>;
  listedUserId: string;
  memberUserId: string;
  /** An upload of this team, reused by every push of its fixtures. */
  s3Key: string;
}

interface Cell {
  who: Who;
  side: Side;
  f: Fixture;
  /** A number unique to this cell, for names that must not clash. */
  n: number;
}

interface EffectContext extends Cell {
  res: Response;
  diff: Diff;
  db: Db;
  /** The team the principal acts in when the route names none. */
  ownTeam: string;
}

interface Row {
  policy: Policy;
  /**
   * `team` (default): the request names team T's resources (path or body), so another team's key gets 404
   * `notFound`, never 403. `own`: the route acts in the caller's own team, so another team's key is allowed
   * there (in its own team, which the matrix checks is not T).
   */
  scope?: "team" | "own";
  notFound?: ErrorCode;
  /** Path parameters that are not the defaults (deployment E, environment prod-eu, …). */
  ids?: (c: Cell) => Partial<Ids>;
  body?: (c: Cell) => unknown;
  needs?: Need[];
  /** The route acts on no model of the fixture: no model is built for it (faster; ids stay empty). */
  model?: false;
  /** What an allowed principal gets when it is not 200 (the state refuses the change for everyone). */
  allowed?: Expect;
  /** Cells that differ from their policy, each with why. */
  except?: Partial<Record<Who, Expect | "allowed">>;
  /** What an allowed change must have done. Required on every route that is not a GET. */
  effect?: (e: EffectContext) => void | Promise<void>;
  /** The allowed change leaves the fixture as it was (it creates something new); no rebuild needed. */
  keepsFixture?: boolean;
  /** Not in /v1/spec (the public documents); the row checks they stay public and out of the spec. */
  notInSpec?: true;
  /**
   * A POST that only reads (Baseten's `POST …/logs`, the form truss sends): every cell, allowed or not,
   * must leave the database as it was, like a GET.
   */
  readOnly?: true;
  /**
   * An operation of the GraphQL endpoint (`POST /graphql/ {operation}`): a refusal is an HTTP 200 whose
   * first error carries the REST status and code (`extensions.status`, `extensions.code`), read as such.
   */
  graphql?: true;
}

interface Ids {
  team_id: string;
  model_id: string;
  deployment_id: string;
  env_name: string;
  user_id: string;
  api_key_prefix: string;
  key: string;
  name: string;
  sha256: string;
  secret_name: string;
  replica_id: string;
  webhook_secret_id: string;
}

const source = (c: Cell, name?: string) => ({
  kind: "model_archive",
  ...(name === undefined ? {} : { name }),
  s3_key: c.side.s3Key,
  deployment: { config: {}, environment_name: SUBJECT },
});

async function envRow(db: Db, model: string, name: string) {
  return db
    .selectFrom("environments")
    .selectAll()
    .where("model_id", "=", model)
    .where("name", "=", name)
    .executeTakeFirst();
}

async function deploymentStatus(db: Db, id: string) {
  return (await db.selectFrom("deployments").select("status").where("id", "=", id).executeTakeFirstOrThrow())
    .status;
}

const pushedIntoSubject = async (e: EffectContext, model: string) => {
  const candidate = e.res.body.deployment.id as string;
  const promotion = await e.db
    .selectFrom("promotions")
    .selectAll()
    .where("model_id", "=", model)
    .where("environment", "=", SUBJECT)
    .where("active", "=", 1)
    .executeTakeFirst();
  expect(promotion?.candidate_deployment_id).toBe(candidate);
};

const ROWS: Record<string, Row> = {
  // —— identity ——
  "GET /v1/teams": { model: false, policy: "read", scope: "own" },
  "GET /v1/teams/{team_id}": { model: false, policy: "read", notFound: "team_not_found" },
  "GET /v1/users": { model: false, policy: "read", scope: "own" },
  "GET /v1/users/me": {
    model: false,
    policy: "read",
    scope: "own",
    // A workspace key acts for no user.
    except: { workspace: FORBIDDEN },
  },
  "GET /v1/users/{user_id}": { model: false, policy: "read", notFound: "user_not_found" },
  "GET /v1/api_keys": { model: false, policy: "key-admin", scope: "own" },
  "POST /v1/api_keys": {
    model: false,
    policy: "key-admin",
    scope: "own",
    body: () => ({ type: "WORKSPACE_INVOKE", name: "probe" }),
    // Only team admins make workspace keys with a personal key.
    except: { listed: FORBIDDEN, member: FORBIDDEN },
    keepsFixture: true,
    effect: (e) => {
      const [key] = e.diff.added("api_keys");
      expect(e.diff.added("api_keys")).toHaveLength(1);
      expect(key).toMatchObject({ category: "WORKSPACE_INVOKE", team_id: e.ownTeam });
    },
  },
  "POST /v1/teams/{team_id}/api_keys": {
    model: false,
    policy: "key-admin",
    notFound: "team_not_found",
    body: () => ({ type: "WORKSPACE_INVOKE", name: "probe" }),
    except: { listed: FORBIDDEN, member: FORBIDDEN },
    keepsFixture: true,
    effect: (e) => {
      expect(e.diff.added("api_keys")).toEqual([
        expect.objectContaining({ category: "WORKSPACE_INVOKE", team_id: e.side.team }),
      ]);
    },
  },
  "DELETE /v1/api_keys/{api_key_prefix}": {
    model: false,
    policy: "key-admin",
    notFound: "api_key_not_found",
    needs: ["key_target"],
    // A personal key of a non-admin sees only its own keys: the team's workspace keys do not exist for it.
    except: {
      listed: { status: 404, code: "api_key_not_found" },
      member: { status: 404, code: "api_key_not_found" },
    },
    effect: (e) => {
      expect(e.diff.removed("api_keys").map((k) => k["prefix"])).toEqual([e.f.keyPrefix]);
      expect(e.diff.added("api_keys")).toEqual([]);
    },
  },

  // —— regions ——
  "GET /v1/regions": { model: false, policy: "read", scope: "own" },
  "GET /v1/teams/{team_id}/regions": { model: false, policy: "read", notFound: "team_not_found" },

  // —— instance types (the installation's, the same for every team) ——
  "GET /v1/instance_types": { model: false, policy: "read", scope: "own" },

  // —— uploads ——
  "POST /v1/prepare_model_upload": {
    model: false,
    policy: "manage",
    scope: "own",
    body: () => ({ ...NEW_MODEL_PUSH }),
    keepsFixture: true,
    effect: (e) => {
      expect(e.diff.added("artifacts")).toEqual([
        expect.objectContaining({ state: "PENDING", team_id: e.ownTeam, key: e.res.body.s3_key }),
      ]);
    },
  },
  "PUT /v1/artifacts/{key}": {
    model: false,
    policy: "manage",
    notFound: "artifact_not_found",
    needs: ["pending_upload"],
    effect: (e) => {
      expect(e.diff.added("artifacts")).toEqual([
        expect.objectContaining({ key: e.f.pendingKey, state: "STORED", team_id: e.side.team }),
      ]);
    },
  },

  // —— models ——
  "GET /v1/models": { policy: "read", scope: "own" },
  // A push into prod-eu: the route of the hole. Another team's key names T's upload: 404.
  "POST /v1/models": {
    model: false,
    policy: "manage-environment",
    notFound: "artifact_not_found",
    except: { org_admin: ORG_ADMIN_ELSEWHERE("artifact_not_found") },
    body: (c) => ({ source: source(c, `pushed-${c.n}`) }),
    keepsFixture: true,
    effect: async (e) => {
      expect(e.diff.added("models")).toEqual([
        expect.objectContaining({ team_id: e.side.team, name: `pushed-${e.n}` }),
      ]);
      await pushedIntoSubject(e, e.res.body.model.id);
    },
  },
  "GET /v1/teams/{team_id}/models": { policy: "read", notFound: "team_not_found" },
  "POST /v1/teams/{team_id}/models": {
    model: false,
    policy: "manage-environment",
    notFound: "team_not_found",
    body: (c) => ({ source: source(c, `pushed-${c.n}`) }),
    keepsFixture: true,
    effect: async (e) => {
      expect(e.diff.added("models")).toEqual([expect.objectContaining({ team_id: e.side.team })]);
      await pushedIntoSubject(e, e.res.body.model.id);
    },
  },
  "GET /v1/models/{model_id}": { policy: "read", notFound: "model_not_found" },
  // The model has prod-eu (and production): deleting it deletes them.
  "DELETE /v1/models/{model_id}": {
    policy: "manage-environment",
    notFound: "model_not_found",
    effect: (e) => {
      expect(e.diff.removed("models").map((m) => m["id"])).toEqual([e.f.model]);
      expect(
        e.diff
          .removed("environments")
          .map((x) => x["name"])
          .sort(),
      ).toEqual(["prod-eu", "production"]);
    },
  },

  // —— deployments ——
  "GET /v1/models/{model_id}/deployments": { policy: "read", notFound: "model_not_found" },
  "POST /v1/models/{model_id}/deployments": {
    policy: "manage-environment",
    notFound: "model_not_found",
    body: (c) => ({ source: source(c) }),
    effect: (e) => pushedIntoSubject(e, e.f.model),
  },
  "GET /v1/models/{model_id}/deployments/{deployment_id}": {
    policy: "read",
    notFound: "model_not_found",
  },
  // Renaming changes neither what is served nor how: any manager may, even of prod-eu's deployment.
  "PATCH /v1/models/{model_id}/deployments/{deployment_id}": {
    policy: "manage",
    notFound: "model_not_found",
    body: (c) => ({ name: `renamed-${c.n}` }),
    keepsFixture: true,
    effect: (e) => {
      expect(e.diff.added("deployments")).toEqual([
        expect.objectContaining({ id: e.f.E, name: `renamed-${e.n}` }),
      ]);
    },
  },
  // E serves prod-eu, so no one may delete it (409); who may not manage prod-eu is told so first.
  "DELETE /v1/models/{model_id}/deployments/{deployment_id}": {
    policy: "manage-environment",
    notFound: "model_not_found",
    allowed: { status: 409, code: "deployment_in_use" },
  },
  "GET /v1/models/{model_id}/deployments/{deployment_id}/config": {
    policy: "read",
    notFound: "model_not_found",
  },
  "GET /v1/models/{model_id}/deployments/{deployment_id}/logs": {
    policy: "read",
    notFound: "model_not_found",
  },
  "POST /v1/models/{model_id}/deployments/{deployment_id}/logs": {
    policy: "read",
    notFound: "model_not_found",
    readOnly: true,
    body: () => ({ start_epoch_millis: Date.now() - 60_000, end_epoch_millis: Date.now() }),
  },
  "GET /v1/models/{model_id}/deployments/{deployment_id}/metrics": {
    policy: "read",
    notFound: "model_not_found",
  },
  "POST /v1/models/{model_id}/deployments/{deployment_id}/activate": {
    policy: "manage-environment",
    notFound: "model_not_found",
    needs: ["inactive"],
    effect: async (e) => expect(await deploymentStatus(e.db, e.f.E)).not.toBe("INACTIVE"),
  },
  "PATCH /v1/models/{model_id}/deployments/{deployment_id}/autoscaling_settings": {
    policy: "manage-environment",
    notFound: "model_not_found",
    body: (c) => ({ max_replica: maxReplica(c) }),
    keepsFixture: true,
    effect: async (e) => {
      const d = await e.db
        .selectFrom("deployments")
        .select("autoscaling")
        .where("id", "=", e.f.E)
        .executeTakeFirstOrThrow();
      expect(JSON.parse(d.autoscaling).max_replica).toBe(maxReplica(e));
    },
  },
  "POST /v1/models/{model_id}/deployments/{deployment_id}/deactivate": {
    policy: "manage-environment",
    notFound: "model_not_found",
    effect: async (e) => expect(await deploymentStatus(e.db, e.f.E)).toBe("INACTIVE"),
  },
  "POST /v1/models/{model_id}/deployments/{deployment_id}/retry": {
    policy: "manage-environment",
    notFound: "model_not_found",
    needs: ["failed"],
    effect: async (e) => {
      expect(e.res.body.retried).toBe(true);
      expect(await deploymentStatus(e.db, e.f.E)).toBe("DEPLOYING");
    },
  },
  // Promotes F into production (restricted in team R).
  "POST /v1/models/{model_id}/deployments/{deployment_id}/promote": {
    policy: "manage-environment",
    notFound: "model_not_found",
    ids: (c) => ({ deployment_id: c.f.F }),
    body: () => ({}),
    effect: async (e) =>
      expect((await envRow(e.db, e.f.model, "production"))?.current_deployment_id).toBe(e.f.F),
  },

  // —— environments ——
  "GET /v1/models/{model_id}/environments": { policy: "read", notFound: "model_not_found" },
  // prod-us: a group restricted (in R) before any environment has the name.
  "POST /v1/models/{model_id}/environments": {
    policy: "manage-environment",
    notFound: "model_not_found",
    body: () => ({ name: "prod-us" }),
    effect: async (e) => expect(await envRow(e.db, e.f.model, "prod-us")).toBeDefined(),
  },
  "GET /v1/models/{model_id}/environments/{env_name}": { policy: "read", notFound: "model_not_found" },
  "PATCH /v1/models/{model_id}/environments/{env_name}": {
    policy: "manage-environment",
    notFound: "model_not_found",
    body: (c) => ({ autoscaling_settings: { max_replica: maxReplica(c) } }),
    keepsFixture: true,
    effect: async (e) => {
      const env = await envRow(e.db, e.f.model, SUBJECT);
      expect(JSON.parse(env!.autoscaling).max_replica).toBe(maxReplica(e));
    },
  },
  "DELETE /v1/models/{model_id}/environments/{env_name}": {
    policy: "manage-environment",
    notFound: "model_not_found",
    effect: async (e) => expect(await envRow(e.db, e.f.model, SUBJECT)).toBeUndefined(),
  },
  "POST /v1/models/{model_id}/environments/{env_name}/promote": {
    policy: "manage-environment",
    notFound: "model_not_found",
    body: (c) => ({ deployment_id: c.f.F }),
    effect: async (e) => expect((await envRow(e.db, e.f.model, SUBJECT))?.current_deployment_id).toBe(e.f.F),
  },
  "POST /v1/models/{model_id}/environments/{env_name}/cancel_promotion": {
    policy: "manage-environment",
    notFound: "model_not_found",
    needs: ["in_flight"],
    effect: async (e) => {
      const promotion = await e.db
        .selectFrom("promotions")
        .selectAll()
        .where("candidate_deployment_id", "=", e.f.C!)
        .executeTakeFirstOrThrow();
      expect(promotion).toMatchObject({ status: "CANCELED", active: 0 });
      expect((await envRow(e.db, e.f.model, SUBJECT))?.current_deployment_id).toBe(e.f.E);
    },
  },
  "GET /v1/models/{model_id}/environments/{env_name}/logs": { policy: "read", notFound: "model_not_found" },
  // Evidence is read like logs: the team's read capability. Manage access restricts changes, not reads.
  "GET /v1/models/{model_id}/environments/{env_name}/evidence": {
    policy: "read",
    notFound: "model_not_found",
  },
  "POST /v1/models/{model_id}/environments/{env_name}/activate": {
    policy: "manage-environment",
    notFound: "model_not_found",
    needs: ["inactive"],
    effect: async (e) => expect(await deploymentStatus(e.db, e.f.E)).not.toBe("INACTIVE"),
  },
  "POST /v1/models/{model_id}/environments/{env_name}/deactivate": {
    policy: "manage-environment",
    notFound: "model_not_found",
    effect: async (e) => expect(await deploymentStatus(e.db, e.f.E)).toBe("INACTIVE"),
  },

  // —— environment groups ——
  "GET /v1/environment_groups": { policy: "read", scope: "own" },
  // Acts in the caller's team; another team has no group of that name.
  "GET /v1/environment_groups/{env_name}": {
    policy: "read",
    notFound: "environment_group_not_found",
    except: { org_admin: ORG_ADMIN_ELSEWHERE("environment_group_not_found") },
  },
  // Setting who manages takes a team admin. The body names a member of T (for R: the list as it is), so
  // for another team's admin it names nobody of theirs: 404.
  "PATCH /v1/environment_groups/{env_name}": {
    policy: "team-admin",
    notFound: "user_not_found",
    except: { org_admin: ORG_ADMIN_ELSEWHERE("user_not_found") },
    body: (c) => groupBody(c),
    keepsFixture: true,
    effect: (e) => groupUpdated(e),
  },
  "GET /v1/teams/{team_id}/environment_groups": { policy: "read", notFound: "team_not_found" },
  "GET /v1/teams/{team_id}/environment_groups/{env_name}": { policy: "read", notFound: "team_not_found" },
  "PATCH /v1/teams/{team_id}/environment_groups/{env_name}": {
    policy: "team-admin",
    notFound: "team_not_found",
    body: (c) => groupBody(c),
    keepsFixture: true,
    effect: (e) => groupUpdated(e),
  },

  // —— audit ——
  "GET /v1/audit_logs": { model: false, policy: "read", scope: "own" },
  "GET /v1/models/{model_id}/audit_logs": { policy: "read", notFound: "model_not_found" },

  // —— operator ——
  "POST /v1/admin/regions": {
    model: false,
    policy: "org-admin",
    body: (c) => ({ slug: `r-${c.n}`, display_name: `Region ${c.n}` }),
    keepsFixture: true,
    effect: (e) => expect(e.diff.added("regions")).toEqual([expect.objectContaining({ slug: `r-${e.n}` })]),
  },
  "GET /v1/admin/planes": { model: false, policy: "org-admin" },
  "POST /v1/admin/planes": {
    model: false,
    policy: "org-admin",
    body: (c) => ({ name: `p-${c.n}`, region: "us", ingress: ["127.0.0.1:9"], capacity: 0 }),
    keepsFixture: true,
    effect: (e) => expect(e.diff.added("planes")).toEqual([expect.objectContaining({ name: `p-${e.n}` })]),
  },
  "GET /v1/admin/request_counts": { model: false, policy: "org-admin" },
  "PATCH /v1/admin/planes/{name}": {
    model: false,
    policy: "org-admin",
    needs: ["scratch_plane"],
    body: () => ({ capacity: 1 }),
    effect: (e) =>
      expect(e.diff.added("planes")).toEqual([expect.objectContaining({ name: e.f.plane, capacity: 1 })]),
  },
  "DELETE /v1/admin/planes/{name}": {
    model: false,
    policy: "org-admin",
    needs: ["scratch_plane"],
    effect: (e) => expect(e.diff.removed("planes").map((p) => p["name"])).toEqual([e.f.plane]),
  },
  "POST /v1/admin/planes/{name}/credential": {
    model: false,
    policy: "org-admin",
    needs: ["scratch_plane"],
    effect: (e) => {
      const [before] = e.diff.removed("planes");
      const [after] = e.diff.added("planes");
      expect(after?.["name"]).toBe(e.f.plane);
      expect(after?.["credential_hash"]).not.toBe(before?.["credential_hash"]);
    },
  },
  "POST /v1/admin/teams": {
    model: false,
    policy: "org-admin",
    body: (c) => ({ name: `Team ${c.n}` }),
    keepsFixture: true,
    effect: (e) => expect(e.diff.added("teams")).toEqual([expect.objectContaining({ name: `Team ${e.n}` })]),
  },
  "POST /v1/admin/users": {
    model: false,
    policy: "org-admin",
    body: (c) => ({ email: `u${c.n}@example.com` }),
    keepsFixture: true,
    effect: (e) =>
      expect(e.diff.added("users")).toEqual([expect.objectContaining({ email: `u${e.n}@example.com` })]),
  },

  // —— planes and DNS ——
  "GET /v1/internal/planes/{name}/snapshot": { model: false, policy: "plane-only" },
  "POST /v1/internal/planes/{name}/report": {
    model: false,
    policy: "plane-only",
    body: () => ({ revision: 0, replicas: [], request_counts: [] }),
  },
  "POST /v1/internal/planes/{name}/wake": {
    model: false,
    policy: "plane-only",
    body: () => ({
      deployment_id: "nosuchdeployment",
      load: { epoch: "2026-01-01T00:00:00.000Z", at: "2026-01-01T00:00:00.000Z", deployments: [] },
    }),
  },
  "GET /v1/internal/artifacts/{sha256}": { model: false, policy: "plane-only" },
  "GET /v1/internal/dns/snapshot": { model: false, policy: "plane-only" },
  "GET /v1/internal/planes/{name}/replicas/{replica_id}/secrets": {
    model: false,
    policy: "plane-only",
    ids: () => ({ replica_id: "zzzzzzzzzzzz" }),
  },

  // —— secrets (the fixtures' deployments name none; restricted ones are tried in test/control/secrets.test.ts) ——
  "GET /v1/secrets": { model: false, policy: "read", scope: "own" },
  "POST /v1/secrets": {
    model: false,
    policy: "manage",
    scope: "own",
    body: (c) => ({ name: `probe_${c.n}`, value: "probe-value" }),
    keepsFixture: true,
    effect: (e) => secretUpserted(e, e.ownTeam),
  },
  // Acts in the caller's team: another team, and the org admin's default team, have no such secret.
  "DELETE /v1/secrets/{secret_name}": {
    model: false,
    policy: "manage",
    notFound: "secret_not_found",
    except: { org_admin: ORG_ADMIN_ELSEWHERE("secret_not_found") },
    needs: ["secret_target"],
    effect: (e) => secretDeleted(e),
  },
  "GET /v1/teams/{team_id}/secrets": { model: false, policy: "read", notFound: "team_not_found" },
  "POST /v1/teams/{team_id}/secrets": {
    model: false,
    policy: "manage",
    notFound: "team_not_found",
    body: (c) => ({ name: `probe_${c.n}`, value: "probe-value" }),
    keepsFixture: true,
    effect: (e) => secretUpserted(e, e.side.team),
  },
  "DELETE /v1/teams/{team_id}/secrets/{secret_name}": {
    model: false,
    policy: "manage",
    notFound: "team_not_found",
    needs: ["secret_target"],
    effect: (e) => secretDeleted(e),
  },

  // —— webhook secrets (async inference): the value only in the create answer, and to planes ——
  "GET /v1/webhook_secrets": { model: false, policy: "read", scope: "own" },
  "POST /v1/webhook_secrets": {
    model: false,
    policy: "manage",
    scope: "own",
    keepsFixture: true,
    effect: (e) => webhookSecretCreated(e, e.ownTeam),
  },
  "DELETE /v1/webhook_secrets/{webhook_secret_id}": {
    model: false,
    policy: "manage",
    notFound: "webhook_secret_not_found",
    except: { org_admin: ORG_ADMIN_ELSEWHERE("webhook_secret_not_found") },
    needs: ["webhook_secret_target"],
    effect: (e) => webhookSecretDeleted(e),
  },
  "GET /v1/teams/{team_id}/webhook_secrets": { model: false, policy: "read", notFound: "team_not_found" },
  "POST /v1/teams/{team_id}/webhook_secrets": {
    model: false,
    policy: "manage",
    notFound: "team_not_found",
    keepsFixture: true,
    effect: (e) => webhookSecretCreated(e, e.side.team),
  },
  "DELETE /v1/teams/{team_id}/webhook_secrets/{webhook_secret_id}": {
    model: false,
    policy: "manage",
    notFound: "team_not_found",
    needs: ["webhook_secret_target"],
    effect: (e) => webhookSecretDeleted(e),
  },
  "GET /v1/internal/planes/{name}/webhook_secrets/{team_id}": { model: false, policy: "plane-only" },

  // —— the truss CLI's GraphQL endpoint (outside the route table): one row per operation, the CLI's documents ——
  "POST /graphql/ teams": {
    model: false,
    policy: "read",
    scope: "own",
    graphql: true,
    notInSpec: true,
    readOnly: true,
    body: () => ({ query: TEAMS_QUERY }),
  },
  "POST /graphql/ models": {
    policy: "read",
    scope: "own",
    graphql: true,
    notInSpec: true,
    readOnly: true,
    body: () => ({ query: modelsQuery(null) }),
  },
  "POST /graphql/ models(team_id)": {
    model: false,
    policy: "read",
    notFound: "team_not_found",
    graphql: true,
    notInSpec: true,
    readOnly: true,
    body: (c) => ({ query: modelsQuery(c.side.team) }),
  },
  "POST /graphql/ model": {
    policy: "read",
    notFound: "model_not_found",
    graphql: true,
    notInSpec: true,
    readOnly: true,
    body: (c) => ({ query: modelByIdQuery(c.f.model) }),
  },
  "POST /graphql/ model_version": {
    policy: "read",
    notFound: "deployment_not_found",
    graphql: true,
    notInSpec: true,
    readOnly: true,
    body: (c) => ({ query: modelVersionQuery(c.f.E) }),
  },
  "POST /graphql/ truss_validation": {
    model: false,
    policy: "read",
    scope: "own",
    graphql: true,
    notInSpec: true,
    readOnly: true,
    body: () => ({
      query: validateTrussQuery(encodeConfig(HELLO_PY_CONFIG)),
      variables: { trussUserEnv: TRUSS_USER_ENV },
    }),
  },
  "POST /graphql/ organization user": {
    model: false,
    policy: "read",
    scope: "own",
    graphql: true,
    notInSpec: true,
    readOnly: true,
    body: () => ({ query: WHOAMI_QUERY }),
  },
  "POST /graphql/ model_s3_upload_credentials": {
    model: false,
    policy: "manage",
    scope: "own",
    graphql: true,
    notInSpec: true,
    body: () => ({ query: UPLOAD_CREDENTIALS_QUERY }),
    keepsFixture: true,
    effect: (e) => {
      const creds = e.res.body.model_s3_upload_credentials;
      expect(creds).toMatchObject({ endpoint_url: expect.any(String), region_name: "us-east-1" });
      expect(e.diff.added("artifacts")).toEqual([
        expect.objectContaining({ state: "PENDING", team_id: e.ownTeam, key: creds.s3_key }),
      ]);
    },
  },
  // A push into prod-eu by truss push --environment: the same hole as POST /v1/models, on this path.
  "POST /graphql/ create_model_from_truss": {
    model: false,
    policy: "manage-environment",
    notFound: "team_not_found",
    graphql: true,
    notInSpec: true,
    body: (c) => ({
      query: createModelMutation({
        name: `truss-${c.n}`,
        s3_key: c.side.s3Key,
        config: encodeConfig(HELLO_PY_CONFIG),
        environment: SUBJECT,
        team_id: c.side.team,
      }),
      variables: pushVariables({ cell: c.n }, null),
    }),
    keepsFixture: true,
    effect: async (e) => {
      const version = e.res.body.create_model_from_truss.model_version;
      expect(e.diff.added("models")).toEqual([
        expect.objectContaining({ id: version.oracle.id, team_id: e.side.team, name: `truss-${e.n}` }),
      ]);
      await pushedVersionIntoSubject(e, version.oracle.id, version.id);
    },
  },
  "POST /graphql/ create_model_version_from_truss": {
    policy: "manage-environment",
    notFound: "model_not_found",
    graphql: true,
    notInSpec: true,
    body: (c) => ({
      query: createVersionMutation({
        model_id: c.f.model,
        s3_key: c.side.s3Key,
        config: encodeConfig(HELLO_PY_CONFIG),
        environment: SUBJECT,
        deployment_name: `v-${c.n}`,
      }),
      variables: pushVariables(null, null),
    }),
    effect: async (e) => {
      const version = e.res.body.create_model_version_from_truss.model_version;
      expect(e.diff.added("deployments")).toEqual(
        expect.arrayContaining([expect.objectContaining({ id: version.id, name: `v-${e.n}` })]),
      );
      await pushedVersionIntoSubject(e, e.f.model, version.id);
    },
  },
  // truss push --watch: a development deployment is not a managed change (as on the REST push).
  "POST /graphql/ deploy_draft_truss": {
    model: false,
    policy: "manage",
    notFound: "team_not_found",
    graphql: true,
    notInSpec: true,
    body: (c) => ({
      query: deployDraftMutation({
        name: `draft-${c.n}`,
        s3_key: c.side.s3Key,
        config: encodeConfig(HELLO_PY_CONFIG),
        team_id: c.side.team,
      }),
      variables: pushVariables(null, null),
    }),
    keepsFixture: true,
    effect: (e) => {
      const version = e.res.body.deploy_draft_truss.model_version;
      expect(e.diff.added("models")).toEqual([
        expect.objectContaining({ team_id: e.side.team, name: `draft-${e.n}` }),
      ]);
      expect(e.diff.added("deployments")).toEqual([
        expect.objectContaining({ id: version.id, is_development: 1, name: "development" }),
      ]);
    },
  },

  // —— public documents (served outside the route table, so not in the spec) ——
  "GET /v1/spec": { model: false, policy: "public", notInSpec: true },
  "GET /healthz": { model: false, policy: "public", notInSpec: true },
  "GET /v1/info": { model: false, policy: "public", notInSpec: true },
  // The key directory: public keys, planes and regions, for auditors who hold no key (docs/decisions.md).
  "GET /v1/keys": { model: false, policy: "public", notInSpec: true },
};

/** A truss push into the subject: the pushed version is the subject's promotion candidate. */
async function pushedVersionIntoSubject(e: EffectContext, model: string, version: string) {
  const promotion = await e.db
    .selectFrom("promotions")
    .selectAll()
    .where("model_id", "=", model)
    .where("environment", "=", SUBJECT)
    .where("active", "=", 1)
    .executeTakeFirst();
  expect(promotion?.candidate_deployment_id).toBe(version);
}

/**
 * A GraphQL answer read as the REST answer it stands for: its first error is the refusal (status and code
 * from its extensions, the message from its description); without errors, the body is its `data`.
 */
function asRestAnswer(res: Response): Response {
  if (res.status !== 200) return res;
  const error = res.body?.errors?.[0];
  if (error === undefined) return { ...res, body: res.body.data };
  const ext = error.extensions ?? {};
  return {
    ...res,
    status: ext.status,
    body: { error: ext.description, error_code: ext.code, detail: ext.detail ?? null },
  };
}

function secretUpserted(e: EffectContext, team: string) {
  expect(e.diff.added("secrets")).toEqual([expect.objectContaining({ team_id: team, name: `probe_${e.n}` })]);
  const [entry] = e.diff.added("audit_logs");
  expect(entry).toMatchObject({ action: "secret.create", target: `secret:${team}/probe_${e.n}` });
  expect(JSON.stringify(e.diff.added("audit_logs"))).not.toContain("probe-value");
  expect(JSON.stringify(e.diff.added("secrets"))).not.toContain("probe-value");
}

async function webhookSecretCreated(e: EffectContext, team: string) {
  const added = e.diff.added("webhook_secrets");
  expect(added.map((r) => r["team_id"])).toEqual([team]);
  expect(e.res.body.secret).toMatch(/^whsec_/);
  // Sealed at rest: the value shown once is nowhere in the row.
  expect(JSON.stringify(added)).not.toContain(e.res.body.secret);
  expect(e.diff.added("audit_logs")).toEqual([expect.objectContaining({ action: "webhook_secret.create" })]);
  // The team may hold only a few at once: the matrix's own creations must not use up the bound.
  await e.db.deleteFrom("webhook_secrets").where("id", "=", e.res.body.id).execute();
}

function webhookSecretDeleted(e: EffectContext) {
  expect(e.diff.removed("webhook_secrets").map((r) => r["id"])).toEqual([e.f.webhookSecretId]);
  expect(e.diff.added("audit_logs")).toEqual([expect.objectContaining({ action: "webhook_secret.delete" })]);
}

function secretDeleted(e: EffectContext) {
  expect(e.diff.removed("secrets").map((r) => r["name"])).toEqual([e.f.secretName]);
  expect(e.diff.added("audit_logs")).toEqual([expect.objectContaining({ action: "secret.delete" })]);
}

/** A value of its own per cell, so an allowed PATCH always changes the setting. */
const maxReplica = (c: Cell) => 2 + (c.n % 50);

function groupBody(c: Cell) {
  return {
    manage_access: { is_restricted: c.side.variant === "restricted", user_ids: [c.side.listedUserId] },
  };
}

function groupUpdated(e: EffectContext) {
  const [entry] = e.diff.added("audit_logs");
  expect(entry).toMatchObject({
    action: "environment_group.update",
    target: `environment_group:${e.side.team}/${SUBJECT}`,
  });
}

/** The expected answer of one cell, from the row's policy and exceptions. */
function expected(row: Row, who: Who, variant: Variant): Expect {
  const allowed = row.allowed ?? { status: 200 };
  const resolve = (e: Expect | "allowed") => (e === "allowed" ? allowed : e);
  const exception = row.except?.[who];
  if (exception !== undefined) return resolve(exception);
  const otherTeam: Expect | "allowed" =
    (row.scope ?? "team") === "own" ? "allowed" : { status: 404, code: row.notFound! };
  switch (row.policy) {
    case "public":
      return allowed;
    case "plane-only":
      return UNAUTHORIZED;
    case "org-admin":
      return who === "org_admin" ? allowed : FORBIDDEN;
    case "read":
    case "manage":
    case "key-admin":
      if (who === "invoke") return FORBIDDEN;
      if (who === "other_team") return resolve(otherTeam);
      return allowed;
    case "manage-environment":
      if (who === "invoke") return FORBIDDEN;
      if (who === "other_team") return resolve(otherTeam);
      if (variant === "restricted" && (who === "member" || who === "workspace")) return RESTRICTED;
      return allowed;
    case "team-admin":
      if (who === "invoke") return FORBIDDEN;
      if (who === "other_team") return resolve(otherTeam);
      return who === "team_admin" || who === "org_admin" ? allowed : FORBIDDEN;
  }
}

// —— the database, whole, before and after ——

type DbRow = Record<string, unknown>;
interface Table {
  name: string;
  columns: string[];
}
/** Each table as one JSON array of rows (arrays of column values), built by SQLite itself. */
type Dump = Map<string, string>;

async function readTables(db: Db): Promise<Table[]> {
  const names = await sql<{ name: string }>`
    select name from sqlite_master where type = 'table' and name not like 'sqlite_%' order by name
  `.execute(db);
  const tables: Table[] = [];
  for (const { name } of names.rows) {
    const columns = await sql<{ name: string }>`select name from pragma_table_info(${name})`.execute(db);
    tables.push({ name, columns: columns.rows.map((c) => c.name) });
  }
  return tables;
}

/** One query for the whole database, so comparing before and after costs little per cell. */
async function dump(db: Db, tables: readonly Table[]): Promise<Dump> {
  const parts = tables.map(
    (t) =>
      sql`(select json_group_array(json_array(${sql.join(t.columns.map((c) => sql.ref(c)))})) from ${sql.table(t.name)}) as ${sql.ref(t.name)}`,
  );
  const row = (await sql<Record<string, string>>`select ${sql.join(parts)}`.execute(db)).rows[0]!;
  return new Map(tables.map((t) => [t.name, row[t.name]!]));
}

interface Diff {
  /** Rows present after and not before (a changed row appears here with its new values). */
  added(table: string): DbRow[];
  removed(table: string): DbRow[];
  empty: boolean;
  /** Every added and removed row, for a failure message. */
  describe(): string;
}

function diff(tables: readonly Table[], before: Dump, after: Dump): Diff {
  const added = new Map<string, DbRow[]>();
  const removed = new Map<string, DbRow[]>();
  for (const t of tables) {
    if (before.get(t.name) === after.get(t.name)) continue;
    const rows = (d: Dump) =>
      (JSON.parse(d.get(t.name) ?? "[]") as unknown[][]).map((r) => JSON.stringify(r));
    const minus = (a: string[], b: string[]) => {
      const left = new Map<string, number>();
      for (const x of b) left.set(x, (left.get(x) ?? 0) + 1);
      return a.filter((x) => {
        const n = left.get(x) ?? 0;
        if (n === 0) return true;
        left.set(x, n - 1);
        return false;
      });
    };
    const object = (r: string) => {
      const values = JSON.parse(r) as unknown[];
      return Object.fromEntries(t.columns.map((c, i) => [c, values[i]]));
    };
    const [b, a] = [rows(before), rows(after)];
    added.set(t.name, minus(a, b).map(object));
    removed.set(t.name, minus(b, a).map(object));
  }
  return {
    added: (t) => added.get(t) ?? [],
    removed: (t) => removed.get(t) ?? [],
    empty: [...added.values(), ...removed.values()].every((l) => l.length === 0),
    describe: () =>
      tables
        .flatMap((t) => [
          ...(added.get(t.name) ?? []).map((r) => `+ ${t.name} ${JSON.stringify(r)}`),
          ...(removed.get(t.name) ?? []).map((r) => `- ${t.name} ${JSON.stringify(r)}`),
        ])
        .join("\n"),
  };
}

// —— the run ——

const label = (method: string, path: string) => `${method} ${path}`;

function fill(template: string, ids: Ids): string {
  return template.replace(/\{(\w+)\}/g, (_, name: string) => {
    const value = (ids as unknown as Record<string, string | undefined>)[name];
    if (value === undefined) throw new Error(`no value for {${name}} in ${template}`);
    return value;
  });
}

describe("security matrix: every route of /v1/spec × principal × restricted/unrestricted", () => {
  let db: TestDatabase;
  let control: RunningControl;
  let root: ApiClient;
  let spec: Array<{ method: string; path: string; raw: boolean }>;
  let archive: Buffer;
  let sha256: string;
  const sides = {} as Record<Variant, Side>;
  let otherTeam: { id: string; client: ApiClient };
  /** The installation's default team, where an org admin acts when a route names no team. */
  let defaultTeamId: string;
  const planeName = "fx-1";
  let planeCredential: string;
  /** Replica states the fixture plane reports, by deployment; everything else is READY. */
  const forced = new Map<string, "STARTING" | "FAILED">();
  let counter = 0;
  /** Fixtures in use, by variant and needs. */
  const fixtures = new Map<string, Fixture>();
  let tables: Table[];

  const store = () => control.ctx.store.db;

  async function asPlane(method: string, path: string, body?: unknown) {
    return root.as(null).call(method, path, body, { authorization: `Bearer ${planeCredential}` });
  }

  /** The fixture plane reports every replica it is given as READY, or as `forced`. */
  async function ready() {
    const snapshot = await asPlane("GET", `/v1/internal/planes/${planeName}/snapshot?wait=0`);
    expect(snapshot.status).toBe(200);
    const replicas = (snapshot.body.replicas as Array<{ id: string; deployment_id: string }>).map((r) => {
      const state = forced.get(r.deployment_id) ?? "READY";
      return {
        id: r.id,
        deployment_id: r.deployment_id,
        state,
        message: state === "FAILED" ? "load() failed" : null,
        restarts: 0,
      };
    });
    const report = await asPlane("POST", `/v1/internal/planes/${planeName}/report`, {
      revision: snapshot.body.revision,
      replicas,
      request_counts: [],
    });
    expect(report.status, JSON.stringify(report.body)).toBe(200);
  }

  /** A model of the side's team: production serves P, prod-eu serves E, F serves nothing; all ACTIVE. */
  async function build(side: Side, needs: readonly Need[], withModel: boolean): Promise<Fixture> {
    const n = ++counter;
    const admin = side.clients.team_admin;
    const f: Fixture = { model: "", P: "", E: "", F: "" };
    if (withModel) Object.assign(f, await buildModel(side, needs, n));
    if (needs.includes("pending_upload")) {
      f.pendingKey = (await admin.post("/v1/prepare_model_upload", NEW_MODEL_PUSH)).body.s3_key;
    }
    if (needs.includes("key_target")) {
      const key = await admin.post(`/v1/teams/${side.team}/api_keys`, {
        type: "WORKSPACE_INVOKE",
        name: `target-${n}`,
      });
      expect(key.status).toBe(200);
      f.keyPrefix = (key.body.api_key as string).split(".")[0]!;
    }
    if (needs.includes("secret_target")) {
      f.secretName = `target_${n}`;
      const res = await admin.post(`/v1/teams/${side.team}/secrets`, { name: f.secretName, value: "target" });
      expect(res.status, JSON.stringify(res.body)).toBe(200);
    }
    if (needs.includes("webhook_secret_target")) {
      const res = await admin.post(`/v1/teams/${side.team}/webhook_secrets`, {});
      expect(res.status, JSON.stringify(res.body)).toBe(200);
      f.webhookSecretId = res.body.id;
    }
    if (needs.includes("scratch_plane")) {
      f.plane = `scratch-${n}`;
      const res = await root.post("/v1/admin/planes", {
        name: f.plane,
        region: "us",
        ingress: ["127.0.0.1:9"],
        capacity: 0,
      });
      expect(res.status).toBe(200);
    }
    return f;
  }

  async function buildModel(side: Side, needs: readonly Need[], n: number): Promise<Fixture> {
    const admin = side.clients.team_admin;
    const push = async (model: string, env: string | null) => {
      const res = await admin.post(`/v1/models/${model}/deployments`, {
        source: {
          kind: "model_archive",
          s3_key: side.s3Key,
          deployment: { config: {}, ...(env === null ? {} : { environment_name: env }) },
        },
      });
      expect(res.status, JSON.stringify(res.body)).toBe(200);
      return res.body.deployment.id as string;
    };
    const created = await admin.post("/v1/models", {
      source: {
        kind: "model_archive",
        name: `fx-${n}`,
        s3_key: side.s3Key,
        deployment: { config: {}, environment_name: "production" },
      },
    });
    expect(created.status, JSON.stringify(created.body)).toBe(200);
    const model = created.body.model.id as string;
    const f: Fixture = { model, P: created.body.deployment.id, E: await push(model, SUBJECT), F: "" };
    f.F = await push(model, null);
    await ready();
    expect((await envRow(store(), model, "production"))?.current_deployment_id).toBe(f.P);
    expect((await envRow(store(), model, SUBJECT))?.current_deployment_id).toBe(f.E);
    for (const id of [f.P, f.E, f.F]) expect(await deploymentStatus(store(), id)).toBe("ACTIVE");

    if (needs.includes("in_flight")) {
      const C = await push(model, null);
      forced.set(C, "STARTING");
      await ready();
      const promoted = await admin.post(`/v1/models/${model}/environments/${SUBJECT}/promote`, {
        deployment_id: C,
      });
      expect(promoted.status, JSON.stringify(promoted.body)).toBe(200);
      f.C = C;
    }
    if (needs.includes("failed")) {
      forced.set(f.E, "FAILED");
      await ready();
      expect(await deploymentStatus(store(), f.E)).toBe("DEPLOY_FAILED");
    }
    if (needs.includes("inactive")) {
      const res = await admin.post(`/v1/models/${model}/deployments/${f.E}/deactivate`);
      expect(res.status).toBe(200);
    }
    return f;
  }

  async function makeSide(variant: Variant, name: string): Promise<Side> {
    const team = await root.post("/v1/admin/teams", { name });
    expect(team.status).toBe(200);
    const teamId = team.body.id as string;
    const user = async (email: string, role: "MEMBER" | "TEAM_ADMIN", isOrgAdmin = false) => {
      const res = await root.post("/v1/admin/users", {
        email,
        is_org_admin: isOrgAdmin,
        teams: [{ team_id: teamId, role }],
      });
      expect(res.status, JSON.stringify(res.body)).toBe(200);
      return { id: res.body.user.user_id as string, client: root.as(res.body.api_key) };
    };
    const listed = await user(`listed-${variant}@example.com`, "MEMBER");
    const member = await user(`member-${variant}@example.com`, "MEMBER");
    const teamAdmin = await user(`admin-${variant}@example.com`, "TEAM_ADMIN");
    const orgAdmin = await user(`org-${variant}@example.com`, "MEMBER", true);
    const key = async (type: string) => {
      const res = await teamAdmin.client.post(`/v1/teams/${teamId}/api_keys`, { type, name: type });
      expect(res.status).toBe(200);
      return root.as(res.body.api_key);
    };
    if (variant === "restricted") {
      for (const group of RESTRICTED_GROUPS) {
        const res = await teamAdmin.client.patch(`/v1/teams/${teamId}/environment_groups/${group}`, {
          manage_access: { is_restricted: true, user_ids: [listed.id] },
        });
        expect(res.status, JSON.stringify(res.body)).toBe(200);
      }
    }
    return {
      variant,
      team: teamId,
      listedUserId: listed.id,
      memberUserId: member.id,
      s3Key: await teamAdmin.client.upload(archive),
      clients: {
        listed: listed.client,
        member: member.client,
        team_admin: teamAdmin.client,
        org_admin: orgAdmin.client,
        workspace: await key("WORKSPACE_MANAGE_ALL"),
        invoke: await key("WORKSPACE_INVOKE"),
        other_team: null as unknown as ApiClient,
      },
    };
  }

  beforeAll(async () => {
    db = await createTestDatabase("sqlite");
    // No plane is ever judged down here: a re-placement in the middle of a cell would change the database
    // under the "unchanged" check.
    control = await startControl({
      dataDir: join(db.dir, "control"),
      host: "127.0.0.1",
      port: 0,
      databaseUrl: null,
      domain: "meridian.test",
      publicUrl: null,
      planeTimeoutMs: 24 * 3600_000,
      // Nor does the autoscaler pass in the background (a new deployment's first replica count).
      autoscalerIntervalMs: 24 * 3600_000,
      logger: pino({ level: "silent" }),
    });
    root = new ApiClient(control.url, control.adminKey);
    tables = await readTables(store());
    archive = await packExample("hello-js");
    const plane = await root.post("/v1/admin/planes", {
      name: planeName,
      region: "us",
      ingress: ["127.0.0.1:1"],
      capacity: 100_000,
    });
    expect(plane.status).toBe(200);
    planeCredential = plane.body.credential;

    const raw = (await root.as(null).get("/v1/spec")).body as {
      paths: Record<string, Record<string, { requestBody?: { content: Record<string, unknown> } }>>;
    };
    spec = Object.entries(raw.paths).flatMap(([path, ops]) =>
      Object.entries(ops).map(([method, op]) => ({
        method: method.toUpperCase(),
        path,
        raw: op.requestBody?.content["application/gzip"] !== undefined,
      })),
    );

    sides.restricted = await makeSide("restricted", "Team R");
    sides.unrestricted = await makeSide("unrestricted", "Team U");
    const x = await root.post("/v1/admin/teams", { name: "Team X" });
    const xAdmin = await root.post("/v1/admin/users", {
      email: "admin-x@example.com",
      teams: [{ team_id: x.body.id, role: "TEAM_ADMIN" }],
    });
    otherTeam = { id: x.body.id, client: root.as(xAdmin.body.api_key) };
    for (const side of Object.values(sides)) side.clients.other_team = otherTeam.client;
    const teams = (await root.get("/v1/teams")).body.teams as Array<{ id: string; default: boolean }>;
    defaultTeamId = teams.find((t) => t.default)!.id;
    sha256 = (
      await store()
        .selectFrom("artifacts")
        .select("sha256")
        .where("state", "=", "STORED")
        .executeTakeFirstOrThrow()
    ).sha256!;
  });
  afterAll(async () => {
    await control?.stop();
    await db?.drop();
  });

  it("has exactly one row per route of /v1/spec (a new route fails here until its access is decided)", () => {
    const inSpec = spec.map((r) => label(r.method, r.path));
    expect(inSpec.length).toBeGreaterThan(50);
    const missing = inSpec.filter((r) => ROWS[r] === undefined);
    expect(missing, "routes of /v1/spec without a row in ROWS").toEqual([]);
    const stale = Object.keys(ROWS).filter((r) => !inSpec.includes(r) && !ROWS[r]!.notInSpec);
    expect(stale, "rows for routes that are not in /v1/spec").toEqual([]);
    for (const [route, row] of Object.entries(ROWS)) {
      if (row.notInSpec) expect(inSpec, route).not.toContain(route);
      if ((row.scope ?? "team") === "team" && !["public", "plane-only", "org-admin"].includes(row.policy)) {
        expect(row.notFound, `${route}: which 404 another team's key gets`).toBeDefined();
      }
      const allowedChanges = (row.allowed?.status ?? 200) < 300 && !row.readOnly;
      if (!route.startsWith("GET ") && allowedChanges && !["plane-only", "public"].includes(row.policy)) {
        expect(row.effect, `${route}: what an allowed change does`).toBeDefined();
      }
    }
  });

  it.each(Object.keys(ROWS))("%s", async (route) => {
    const row = ROWS[route]!;
    const [method, path] = route.split(" ") as [string, string];
    const raw = spec.find((r) => r.method === method && r.path === path)?.raw ?? false;
    const mutating = method !== "GET" && !row.readOnly;

    for (const variant of VARIANTS) {
      const side = sides[variant];
      const withModel = row.model !== false;
      const key = `${variant}:${withModel}:${[...(row.needs ?? [])].sort().join(",")}`;
      let before: Dump | null = null;
      for (const who of WHO) {
        // Refusals and reads change nothing (that is asserted), so they share a fixture; an allowed
        // change uses it up unless it only created something new.
        let f = fixtures.get(key);
        if (f === undefined) {
          f = await build(side, row.needs ?? [], withModel);
          before = null;
        }
        // Taken out while in use: a cell that fails leaves its fixture in an unknown state, so it goes.
        fixtures.delete(key);
        const cell: Cell = { who, side, f, n: ++counter };
        const ids: Ids = {
          team_id: side.team,
          model_id: f.model,
          deployment_id: f.E,
          env_name: SUBJECT,
          user_id: side.memberUserId,
          api_key_prefix: f.keyPrefix ?? "",
          key: f.pendingKey ?? "",
          name: f.plane ?? planeName,
          sha256,
          secret_name: f.secretName ?? "",
          replica_id: "",
          webhook_secret_id: f.webhookSecretId ?? "",
          ...row.ids?.(cell),
        };
        const client = side.clients[who];
        const url = fill(path, ids) + (path.startsWith("/v1/internal/") && method === "GET" ? "?wait=0" : "");
        const body = raw ? archive : (row.body?.(cell) ?? (method === "POST" ? {} : undefined));
        before ??= await dump(store(), tables);
        const answer = await client.call(
          method,
          url,
          body,
          raw ? { "content-type": "application/gzip" } : {},
        );
        const res = row.graphql ? asRestAnswer(answer) : answer;
        const want = expected(row, who, variant);
        const where = `${route} as ${who} (${variant}): ${JSON.stringify(res.body)?.slice(0, 400)}`;
        expect(res.status, where).toBe(want.status);
        if (want.code !== undefined) {
          expect(res.body?.error_code, where).toBe(want.code);
          expect(typeof res.body?.error, where).toBe("string");
        }
        const after = await dump(store(), tables);
        const d = diff(tables, before, after);
        if (mutating && res.status >= 200 && res.status < 300) {
          // An allowed change happened, was done by this principal, and did what the route says.
          expect(d.empty, `${where}: the database did not change`).toBe(false);
          const prefix = client.key!.split(".")[0];
          for (const entry of d.added("audit_logs")) expect(entry["actor_key_prefix"], where).toBe(prefix);
          await row.effect?.({
            ...cell,
            res,
            diff: d,
            db: store(),
            ownTeam: who === "other_team" ? otherTeam.id : who === "org_admin" ? defaultTeamId : side.team,
          });
          if (row.keepsFixture) fixtures.set(key, f);
          before = null;
        } else {
          // Refused (or a read): nothing anywhere changed — not what is served, not a promotion, not a
          // deployment, not the audit log.
          expect(d.empty, `${where}: changed\n${d.describe()}`).toBe(true);
          fixtures.set(key, f);
          before = after;
        }
      }
      if (row.policy === "public") {
        // Public means no key at all, too.
        expect((await root.as(null).get(path)).status, route).toBe(200);
      }
    }
  });

  // Each hole the matrix found (or that its cells cannot reach: state a fixture does not have), as the
  // attacker tries it: an unlisted member of team R, or R's WORKSPACE_MANAGE_ALL key.
  describe("the holes, as an attacker tries them", () => {
    const R = () => sides.restricted;
    const member = () => R().clients.member;

    async function pushAs(client: ApiClient, model: string, env: string | null, extra = {}) {
      return client.post(`/v1/models/${model}/deployments`, {
        source: {
          kind: "model_archive",
          s3_key: R().s3Key,
          deployment: { config: {}, ...(env === null ? {} : { environment_name: env }), ...extra },
        },
      });
    }

    /** Runs `attempt` and asserts it is refused for `environments` with nothing anywhere changed. */
    async function refused(attempt: () => Promise<Response>, environments: string[]) {
      const before = await dump(store(), tables);
      const res = await attempt();
      expect(res.status, JSON.stringify(res.body)).toBe(403);
      expect(res.body).toMatchObject({ error_code: "environment_restricted", detail: { environments } });
      const d = diff(tables, before, await dump(store(), tables));
      expect(d.empty, d.describe()).toBe(true);
      return res;
    }

    it("refuses an unlisted member's push into prod-eu (the issue's hole): prod-eu keeps serving E", async () => {
      const f = await build(R(), [], true);
      await refused(() => pushAs(member(), f.model, SUBJECT), [SUBJECT]);
      // Pushing a new model straight into the restricted environment is the same push.
      await refused(
        () =>
          member().post("/v1/models", {
            source: {
              kind: "model_archive",
              name: "sneaky",
              s3_key: R().s3Key,
              deployment: { config: {}, environment_name: SUBJECT },
            },
          }),
        [SUBJECT],
      );
      await refused(() => pushAs(R().clients.workspace, f.model, "production"), ["production"]);
      // The listed user's push is the candidate, and serves once ready.
      const listed = await pushAs(R().clients.listed, f.model, SUBJECT);
      expect(listed.status).toBe(200);
      await ready();
      expect((await envRow(store(), f.model, SUBJECT))?.current_deployment_id).toBe(
        listed.body.deployment.id,
      );
    });

    it("still lets a member push without an environment, a development deployment, and rename", async () => {
      const f = await build(R(), [], true);
      expect((await pushAs(member(), f.model, null)).status).toBe(200);
      expect((await pushAs(member(), f.model, null, { is_development: true })).status).toBe(200);
      expect((await pushAs(member(), f.model, null, { is_development: true })).status).toBe(200);
      const renamed = await member().patch(`/v1/models/${f.model}/deployments/${f.E}`, { name: "mine-now" });
      expect(renamed.status).toBe(200);
      // A copy of what prod-eu serves into an unrestricted environment leaves prod-eu as it was.
      expect((await member().post(`/v1/models/${f.model}/environments`, { name: "staging" })).status).toBe(
        200,
      );
      const copied = await member().post(`/v1/models/${f.model}/environments/staging/promote`, {
        deployment_id: f.E,
      });
      expect(copied.status, JSON.stringify(copied.body)).toBe(200);
      expect(copied.body.id).not.toBe(f.E);
      expect((await envRow(store(), f.model, SUBJECT))?.current_deployment_id).toBe(f.E);
    });

    it("refuses stopping, starting, retrying or deleting prod-eu's deployment through the deployment routes", async () => {
      const f = await build(R(), [], true);
      const base = `/v1/models/${f.model}/deployments/${f.E}`;
      await refused(() => member().post(`${base}/deactivate`), [SUBJECT]);
      await refused(() => R().clients.workspace.post(`${base}/deactivate`), [SUBJECT]);
      await refused(() => member().post(`${base}/activate`), [SUBJECT]);
      await refused(() => member().delete(base), [SUBJECT]);
      // Retry is refused whatever the deployment's state: the answer does not depend on it.
      await refused(() => member().post(`${base}/retry`), [SUBJECT]);
      forced.set(f.E, "FAILED");
      await ready();
      expect(await deploymentStatus(store(), f.E)).toBe("DEPLOY_FAILED");
      await refused(() => member().post(`${base}/retry`), [SUBJECT]);
      forced.delete(f.E);
    });

    it("refuses deleting a model that has restricted environments, naming each", async () => {
      const f = await build(R(), [], true);
      await refused(() => member().delete(`/v1/models/${f.model}`), ["prod-eu", "production"]);
      const res = await refused(
        () => R().clients.workspace.delete(`/v1/models/${f.model}`),
        ["prod-eu", "production"],
      );
      expect(res.body.error).toMatch(/workspace API key acts for no person/);
      expect((await R().clients.listed.delete(`/v1/models/${f.model}`)).status).toBe(200);
    });

    it("refuses deleting prod-eu's promotion candidate (403 before the 409 everyone gets)", async () => {
      const f = await build(R(), ["in_flight"], true);
      await refused(() => member().delete(`/v1/models/${f.model}/deployments/${f.C}`), [SUBJECT]);
      const admin = await R().clients.team_admin.delete(`/v1/models/${f.model}/deployments/${f.C}`);
      expect(admin.status).toBe(409);
      expect(admin.body.error_code).toBe("promotion_in_progress");
    });

    it("refuses waking prod-eu's stalled candidate, by activating it or by promoting it elsewhere", async () => {
      const f = await build(R(), ["in_flight"], true);
      // The listed user stops the candidate; the promotion stays in flight with nothing running.
      expect(
        (await R().clients.listed.post(`/v1/models/${f.model}/deployments/${f.C}/deactivate`)).status,
      ).toBe(200);
      expect(await deploymentStatus(store(), f.C!)).toBe("INACTIVE");
      await refused(() => member().post(`/v1/models/${f.model}/deployments/${f.C}/activate`), [SUBJECT]);
      expect((await member().post(`/v1/models/${f.model}/environments`, { name: "staging" })).status).toBe(
        200,
      );
      // Promoting it into staging would reuse it, wake it, and so complete prod-eu's promotion.
      await refused(
        () => member().post(`/v1/models/${f.model}/environments/staging/promote`, { deployment_id: f.C }),
        [SUBJECT],
      );
      expect((await envRow(store(), f.model, SUBJECT))?.current_deployment_id).toBe(f.E);
    });

    it("treats an environment that shares prod-eu's deployment as prod-eu while they share it", async () => {
      const f = await build(R(), [], true);
      const admin = R().clients.team_admin;
      expect((await admin.post(`/v1/models/${f.model}/environments`, { name: "staging" })).status).toBe(200);
      // G is the candidate of both (held starting), then serves both.
      const G = (await pushAs(admin, f.model, null)).body.deployment.id as string;
      forced.set(G, "STARTING");
      await ready();
      for (const env of [SUBJECT, "staging"]) {
        const res = await admin.post(`/v1/models/${f.model}/environments/${env}/promote`, {
          deployment_id: G,
        });
        expect(res.status, JSON.stringify(res.body)).toBe(200);
        expect(res.body.id).toBe(G);
      }
      const staging = `/v1/models/${f.model}/environments/staging`;
      const settings = { autoscaling_settings: { min_replica: 3, max_replica: 3 } };
      await refused(() => member().patch(staging, settings), [SUBJECT]);
      forced.delete(G);
      await ready();
      expect((await envRow(store(), f.model, "staging"))?.current_deployment_id).toBe(G);
      expect((await envRow(store(), f.model, SUBJECT))?.current_deployment_id).toBe(G);
      // More replicas for staging would be more replicas of what prod-eu serves; stopping it, none.
      await refused(() => member().patch(staging, settings), [SUBJECT]);
      await refused(() => member().post(`${staging}/deactivate`), [SUBJECT]);
      await refused(() => member().delete(staging), [SUBJECT]);
      expect((await R().clients.listed.patch(staging, settings)).status).toBe(200);
    });

    it("refuses an unlisted member's promotion dry run as it refuses the promotion, changing nothing", async () => {
      const f = await build(R(), ["in_flight"], true);
      const dry = { deployment_id: f.F, dry_run: true };
      for (const client of [member(), R().clients.workspace]) {
        await refused(
          () => client.post(`/v1/models/${f.model}/environments/${SUBJECT}/promote`, dry),
          [SUBJECT],
        );
        await refused(
          () => client.post(`/v1/models/${f.model}/deployments/${f.F}/promote`, { dry_run: true }),
          ["production"],
        );
      }
      // The listed user's dry run answers (prod-eu's promotion in flight blocks), and still changes nothing.
      const before = await dump(store(), tables);
      const listed = await R().clients.listed.post(
        `/v1/models/${f.model}/environments/${SUBJECT}/promote`,
        dry,
      );
      expect(listed.status, JSON.stringify(listed.body)).toBe(200);
      expect(listed.body).toMatchObject({
        outcome: "refused",
        in_flight_promotion: { candidate_deployment_id: f.C },
      });
      const d = diff(tables, before, await dump(store(), tables));
      expect(d.empty, d.describe()).toBe(true);
    });

    it("refuses a change of a restricted group by an unlisted member, whatever the fields", async () => {
      const path = `/v1/teams/${R().team}/environment_groups/${SUBJECT}`;
      await refused(() => member().patch(path, {}), [SUBJECT]);
      await refused(() => R().clients.workspace.patch(path, {}), [SUBJECT]);
      // Who manages it stays the team admins' to say, listed or not.
      const listed = await R().clients.listed.patch(path, {
        manage_access: { is_restricted: false },
      });
      expect(listed.status).toBe(403);
      expect(listed.body.error_code).toBe("forbidden");
      expect((await R().clients.listed.patch(path, {})).status).toBe(200);
      const group = await R().clients.listed.get(path);
      expect(group.body).toMatchObject({ manage_access: { is_restricted: true } });
    });
  });
});
