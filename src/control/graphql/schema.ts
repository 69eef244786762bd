// The GraphQL schema the truss CLI talks to (its operations: docs/truss-cli.md), with its resolvers. Types
// and argument types are the ones the CLI's documents declare (`scalar JSONString`, arguments nullable but
// `name`, `s3_key`, `config` and `model_id`), since graphql-js checks variables against them. What the
// fields do is in ./operations.ts; the push arguments are checked in ./push.ts.

import {
  GraphQLBoolean,
  GraphQLEnumType,
  GraphQLError,
  type GraphQLFieldConfig,
  type GraphQLFieldConfigArgumentMap,
  GraphQLInt,
  GraphQLList,
  GraphQLNonNull,
  GraphQLObjectType,
  type GraphQLOutputType,
  GraphQLScalarType,
  GraphQLSchema,
  GraphQLString,
  Kind,
} from "graphql";
import type { DeploymentStatus } from "../../core/domain.ts";
import type { DeploymentRow, ModelRow, TeamRow } from "../../store/schema.ts";
import { INSTANCE_TYPE } from "../views.ts";
import * as op from "./operations.ts";
import { pushPayload, type TrussPushArgs, validateTrussConfig } from "./push.ts";

/** What every resolver is given: the request's scope, and keys to add to root answers after execution. */
export interface GraphqlContext {
  scope: op.RequestScope;
  /**
   * Keys added to a root field's object in the answer after execution, by response key (its alias, or its
   * name): graphql-js returns only selected fields, and the CLI passes every key of the credentials answer
   * to boto3, which needs two that the CLI never selects.
   */
  extras: Map<string, Record<string, unknown>>;
}

interface VersionSource {
  model: ModelRow;
  deployment: DeploymentRow;
}

type Field<S, A = Record<string, never>> = GraphQLFieldConfig<S, GraphqlContext, A>;

type ModelsArgs = { all?: boolean | null; team_id?: string | null; chainlets_only?: boolean | null };
type ModelArgs = { id?: string | null; name?: string | null };
type ValidationArgs = { truss_user_env?: string | null; config?: string | null };
type NewModelArgs = TrussPushArgs & { name: string; version_name?: string | null; team_id?: string | null };
type NewVersionArgs = TrussPushArgs & { model_id: string; name?: string | null };
type DraftArgs = TrussPushArgs & { name: string; team_id?: string | null };

const nonNull = (t: GraphQLOutputType) => new GraphQLNonNull(t);
const listOf = (t: GraphQLOutputType) => new GraphQLNonNull(new GraphQLList(new GraphQLNonNull(t)));

function parseJsonString(value: unknown): unknown {
  if (typeof value !== "string") throw new GraphQLError("JSONString takes a string holding JSON.");
  try {
    return JSON.parse(value);
  } catch {
    throw new GraphQLError("JSONString takes a string holding JSON; this one is not valid JSON.");
  }
}

/** Built once per app. Every field resolver receives a `GraphqlContext`. */
export function trussSchema(): GraphQLSchema {
  const STRING = new GraphQLNonNull(GraphQLString);
  const BOOLEAN = new GraphQLNonNull(GraphQLBoolean);

  /** A JSON document sent as a string (Graphene's JSONString): parsed into its value, printed back. */
  const JSONString = new GraphQLScalarType<unknown, string>({
    name: "JSONString",
    description: "A JSON document, sent as a string.",
    serialize: (value) => JSON.stringify(value),
    parseValue: (value) => parseJsonString(value),
    parseLiteral: (ast) => parseJsonString(ast.kind === Kind.STRING ? ast.value : undefined),
  });

  const ModelOrigin = new GraphQLEnumType({
    name: "ModelOrigin",
    values: { BASETEN: { value: "BASETEN" }, CHAINS: { value: "CHAINS" } },
  });

  const Team = new GraphQLObjectType<TeamRow, GraphqlContext>({
    name: "Team",
    fields: {
      id: { type: STRING },
      name: { type: STRING },
      default: { type: BOOLEAN, resolve: (t) => t.is_default === 1 },
    },
  });

  const InstanceType = new GraphQLObjectType<{ name: string }, GraphqlContext>({
    name: "InstanceType",
    fields: { name: { type: STRING } },
  });

  const DeploymentStatusType = new GraphQLObjectType<{ status: string }, GraphqlContext>({
    name: "DeploymentStatus",
    fields: { status: { type: STRING } },
  });

  /** The model a version belongs to (Baseten's "oracle"). */
  const Oracle = new GraphQLObjectType<ModelRow, GraphqlContext>({
    name: "Oracle",
    fields: {
      id: { type: STRING },
      name: { type: STRING },
      hostname: { type: STRING, resolve: (m, _a, g) => g.scope.hostname(m.id) },
    },
  });

  /** A deployment (Baseten's "model version"). */
  const ModelVersion = new GraphQLObjectType<VersionSource, GraphqlContext>({
    name: "ModelVersion",
    fields: {
      id: { type: STRING, resolve: (v) => v.deployment.id },
      // Deployments have names, not semantic versions; truss hashes and signatures are truss's own (for
      // `truss watch` patches), which Meridian does not compute. Null is "none", as the types allow.
      semver: { type: GraphQLString, resolve: () => null },
      truss_hash: { type: GraphQLString, resolve: () => null },
      truss_signature: { type: GraphQLString, resolve: () => null },
      is_draft: { type: BOOLEAN, resolve: (v) => v.deployment.is_development === 1 },
      is_primary: {
        type: BOOLEAN,
        resolve: async (v, _a, g) => {
          const primary = op.primaryVersion(
            await g.scope.deploymentsOf(v.model.id),
            await g.scope.productionOf(v.model.id),
          );
          // The CLI reads is_primary to find the published primary; the development fallback is not one.
          return primary?.id === v.deployment.id && v.deployment.is_development === 0;
        },
      },
      current_model_deployment_status: {
        type: DeploymentStatusType,
        resolve: (v) => ({ status: op.GRAPHQL_STATUS[v.deployment.status as DeploymentStatus] }),
      },
      oracle: { type: nonNull(Oracle), resolve: (v) => v.model },
      // An object, never null: the CLI reads `instance_type["name"]`.
      instance_type: { type: nonNull(InstanceType), resolve: () => ({ name: INSTANCE_TYPE.name }) },
    },
  });

  const Model = new GraphQLObjectType<ModelRow, GraphqlContext>({
    name: "Model",
    fields: {
      id: { type: STRING },
      name: { type: STRING },
      hostname: { type: STRING, resolve: (m, _a, g) => g.scope.hostname(m.id) },
      team: { type: nonNull(Team), resolve: (m, _a, g) => g.scope.team(m.team_id) },
      versions: {
        type: listOf(ModelVersion),
        resolve: async (m, _a, g): Promise<VersionSource[]> =>
          (await g.scope.deploymentsOf(m.id)).map((deployment) => ({ model: m, deployment })),
      },
      primary_version: {
        type: ModelVersion,
        resolve: async (m, _a, g): Promise<VersionSource | null> => {
          const d = op.primaryVersion(await g.scope.deploymentsOf(m.id), await g.scope.productionOf(m.id));
          return d ? { model: m, deployment: d } : null;
        },
      },
    },
  });

  const Validation = new GraphQLObjectType<{ success: boolean; details: string }, GraphqlContext>({
    name: "Validation",
    fields: { success: { type: BOOLEAN }, details: { type: GraphQLString } },
  });

  const UploadCredentials = new GraphQLObjectType<Record<string, string>, GraphqlContext>({
    name: "UploadCredentials",
    fields: {
      s3_bucket: { type: STRING },
      s3_key: { type: STRING },
      aws_access_key_id: { type: STRING },
      aws_secret_access_key: { type: STRING },
      aws_session_token: { type: STRING },
    },
  });

  const CreatedVersion = new GraphQLObjectType<VersionSource, GraphqlContext>({
    name: "CreatedVersion",
    fields: { model_version: { type: nonNull(ModelVersion), resolve: (v) => v } },
  });

  const Organization = new GraphQLObjectType<{ id: string; workspace_name: string }, GraphqlContext>({
    name: "Organization",
    fields: { id: { type: STRING }, workspace_name: { type: STRING } },
  });

  const User = new GraphQLObjectType<{ email: string | null }, GraphqlContext>({
    name: "User",
    fields: { email: { type: GraphQLString } },
  });

  const teams: Field<unknown> = {
    type: listOf(Team),
    resolve: (_s, _a, g) => op.visibleTeams(g.scope),
  };
  const models: Field<unknown, ModelsArgs> = {
    type: listOf(Model),
    args: {
      all: { type: GraphQLBoolean },
      team_id: { type: GraphQLString },
      chainlets_only: { type: GraphQLBoolean },
    },
    // `all: true` and no arguments both list every model the caller sees. Meridian has no chains, so
    // `chainlets_only: true` lists none (after the same checks).
    resolve: async (_s, a, g) => {
      const found = await op.visibleModels(g.scope, a.team_id ?? null);
      return a.chainlets_only ? [] : found;
    },
  };
  const model: Field<unknown, ModelArgs> = {
    type: Model,
    args: { id: { type: GraphQLString }, name: { type: GraphQLString } },
    resolve: (_s, a, g) => op.findModel(g.scope, a.id, a.name),
  };
  const modelVersion: Field<unknown, { id?: string | null }> = {
    type: ModelVersion,
    args: { id: { type: GraphQLString } },
    resolve: (_s, a, g) => op.findVersion(g.scope, a.id),
  };
  const trussValidation: Field<unknown, ValidationArgs> = {
    type: nonNull(Validation),
    args: { truss_user_env: { type: GraphQLString }, config: { type: GraphQLString } },
    resolve: (_s, a, g) => {
      op.requireRead(g.scope);
      const v = validateTrussConfig(a.config);
      // `details` is a JSON string: the CLI reads it with json.loads.
      return { success: v.success, details: JSON.stringify({ errors: v.errors, warnings: v.warnings }) };
    },
  };
  const uploadCredentials: Field<unknown> = {
    type: nonNull(UploadCredentials),
    resolve: async (_s, _a, g, info) => {
      const issued = await op.uploadCredentials(g.scope);
      // At the root, the path's key is the field's response key: its alias when it has one.
      g.extras.set(String(info.path.key), issued.boto3);
      return issued.answer;
    },
  };

  /** Arguments of every push mutation (the CLI sends the `$…` ones as variables). */
  const pushArgs: GraphQLFieldConfigArgumentMap = {
    s3_key: { type: STRING },
    config: { type: STRING },
    truss_user_env: { type: GraphQLString },
    deploy_timeout_minutes: { type: GraphQLInt },
    user_deploy_metadata: { type: JSONString },
    raw_config: { type: GraphQLString },
  };
  const createModelFromTruss: Field<unknown, NewModelArgs> = {
    type: nonNull(CreatedVersion),
    args: {
      name: { type: STRING },
      ...pushArgs,
      semver_bump: { type: GraphQLString },
      allow_truss_download: { type: GraphQLBoolean },
      version_name: { type: GraphQLString },
      model_origin: { type: ModelOrigin },
      environment_name: { type: GraphQLString },
      team_id: { type: GraphQLString },
    },
    resolve: (_s, a, g) =>
      op.createModelFromTruss(
        g.scope,
        a,
        pushPayload(a, { kind: "new_model", deployment_name: a.version_name }),
      ),
  };
  const createVersionFromTruss: Field<unknown, NewVersionArgs> = {
    type: nonNull(CreatedVersion),
    args: {
      model_id: { type: STRING },
      ...pushArgs,
      semver_bump: { type: GraphQLString },
      scale_down_old_production: { type: GraphQLBoolean },
      preserve_env_instance_type: { type: GraphQLBoolean },
      name: { type: GraphQLString },
      environment_name: { type: GraphQLString },
    },
    resolve: (_s, a, g) =>
      op.createVersionFromTruss(g.scope, a, pushPayload(a, { kind: "new_version", deployment_name: a.name })),
  };
  const deployDraftTruss: Field<unknown, DraftArgs> = {
    type: nonNull(CreatedVersion),
    args: {
      name: { type: STRING },
      ...pushArgs,
      allow_truss_download: { type: GraphQLBoolean },
      model_origin: { type: ModelOrigin },
      team_id: { type: GraphQLString },
    },
    resolve: (_s, a, g) => op.deployDraftTruss(g.scope, a, pushPayload(a, { kind: "development" })),
  };

  return new GraphQLSchema({
    query: new GraphQLObjectType<unknown, GraphqlContext>({
      name: "Query",
      fields: {
        teams,
        models: models,
        model: model,
        model_version: modelVersion,
        truss_validation: trussValidation,
        model_s3_upload_credentials: uploadCredentials,
        organization: { type: nonNull(Organization), resolve: (_s, _a, g) => op.organization(g.scope) },
        user: { type: nonNull(User), resolve: (_s, _a, g) => op.user(g.scope) },
      },
    }),
    mutation: new GraphQLObjectType<unknown, GraphqlContext>({
      name: "Mutation",
      fields: {
        create_model_from_truss: createModelFromTruss,
        create_model_version_from_truss: createVersionFromTruss,
        deploy_draft_truss: deployDraftTruss,
      },
    }),
  });
}
