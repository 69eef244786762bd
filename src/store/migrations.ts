// The one set of migrations for both stores, applied at start by Kysely's Migrator (which takes a lock on
// both dialects, so several control replicas on one PostgreSQL may start at once). Never edit a shipped
// migration: add a new one.

import { type Kysely, type Migration, type MigrationProvider, sql } from "kysely";

export type Dialect = "sqlite" | "postgres";

function migrations(dialect: Dialect): Record<string, Migration> {
  const autoId = dialect === "postgres" ? "serial" : "integer";
  return {
    "0001_initial": {
      async up(db: Kysely<unknown>) {
        await db.schema
          .createTable("meta")
          .addColumn("key", "text", (c) => c.primaryKey())
          .addColumn("value", "text", (c) => c.notNull())
          .execute();
        await db.schema
          .createTable("revision")
          .addColumn("id", "integer", (c) => c.primaryKey())
          .addColumn("value", "integer", (c) => c.notNull())
          .execute();
        await db
          .insertInto("revision" as never)
          .values({ id: 1, value: 1 } as never)
          .execute();

        await db.schema
          .createTable("teams")
          .addColumn("id", "text", (c) => c.primaryKey())
          .addColumn("name", "text", (c) => c.notNull().unique())
          .addColumn("is_default", "integer", (c) => c.notNull().defaultTo(0))
          .addColumn("created_at", "text", (c) => c.notNull())
          .execute();
        await db.schema
          .createTable("users")
          .addColumn("id", "text", (c) => c.primaryKey())
          .addColumn("email", "text", (c) => c.unique())
          .addColumn("name", "text")
          .addColumn("is_org_admin", "integer", (c) => c.notNull().defaultTo(0))
          .addColumn("created_at", "text", (c) => c.notNull())
          .execute();
        await db.schema
          .createTable("team_members")
          .addColumn("team_id", "text", (c) => c.notNull().references("teams.id").onDelete("cascade"))
          .addColumn("user_id", "text", (c) => c.notNull().references("users.id").onDelete("cascade"))
          .addColumn("role", "text", (c) => c.notNull())
          .addPrimaryKeyConstraint("team_members_pk", ["team_id", "user_id"])
          .execute();
        await db.schema
          .createTable("api_keys")
          .addColumn("prefix", "text", (c) => c.primaryKey())
          .addColumn("hash", "text", (c) => c.notNull().unique())
          .addColumn("name", "text")
          .addColumn("category", "text", (c) => c.notNull())
          .addColumn("team_id", "text", (c) => c.notNull().references("teams.id").onDelete("cascade"))
          .addColumn("user_id", "text", (c) => c.references("users.id").onDelete("cascade"))
          .addColumn("model_ids", "text")
          .addColumn("created_at", "text", (c) => c.notNull())
          .execute();

        await db.schema
          .createTable("regions")
          .addColumn("slug", "text", (c) => c.primaryKey())
          .addColumn("display_name", "text", (c) => c.notNull())
          .addColumn("created_at", "text", (c) => c.notNull())
          .execute();
        await db.schema
          .createTable("planes")
          .addColumn("name", "text", (c) => c.primaryKey())
          .addColumn("region", "text", (c) => c.notNull().references("regions.slug"))
          .addColumn("ingress", "text", (c) => c.notNull())
          .addColumn("capacity", "integer", (c) => c.notNull())
          .addColumn("global_ingress", "integer", (c) => c.notNull().defaultTo(0))
          .addColumn("credential_hash", "text", (c) => c.notNull().unique())
          .addColumn("created_at", "text", (c) => c.notNull())
          .addColumn("last_seen_at", "text")
          .addColumn("applied_revision", "integer", (c) => c.notNull().defaultTo(0))
          .execute();

        await db.schema
          .createTable("artifacts")
          .addColumn("key", "text", (c) => c.primaryKey())
          .addColumn("sha256", "text")
          .addColumn("size", "integer")
          .addColumn("state", "text", (c) => c.notNull())
          .addColumn("team_id", "text", (c) => c.notNull())
          .addColumn("created_at", "text", (c) => c.notNull())
          .execute();

        await db.schema
          .createTable("models")
          .addColumn("id", "text", (c) => c.primaryKey())
          .addColumn("team_id", "text", (c) => c.notNull().references("teams.id"))
          .addColumn("name", "text", (c) => c.notNull())
          .addColumn("created_at", "text", (c) => c.notNull())
          .addUniqueConstraint("models_team_name", ["team_id", "name"])
          .execute();
        await db.schema
          .createTable("deployments")
          .addColumn("id", "text", (c) => c.primaryKey())
          .addColumn("model_id", "text", (c) => c.notNull().references("models.id").onDelete("cascade"))
          .addColumn("name", "text", (c) => c.notNull())
          .addColumn("status", "text", (c) => c.notNull())
          .addColumn("status_message", "text")
          .addColumn("is_development", "integer", (c) => c.notNull().defaultTo(0))
          .addColumn("artifact_key", "text", (c) => c.notNull())
          .addColumn("config", "text", (c) => c.notNull())
          .addColumn("region", "text")
          .addColumn("copied_from", "text")
          .addColumn("autoscaling", "text", (c) => c.notNull())
          .addColumn("labels", "text")
          .addColumn("created_at", "text", (c) => c.notNull())
          .addColumn("updated_at", "text", (c) => c.notNull())
          .execute();
        await db.schema.createIndex("deployments_model").on("deployments").column("model_id").execute();
        await db.schema
          .createTable("environments")
          .addColumn("model_id", "text", (c) => c.notNull().references("models.id").onDelete("cascade"))
          .addColumn("name", "text", (c) => c.notNull())
          .addColumn("current_deployment_id", "text")
          .addColumn("autoscaling", "text", (c) => c.notNull())
          .addColumn("promotion_settings", "text", (c) => c.notNull())
          .addColumn("created_at", "text", (c) => c.notNull())
          .addPrimaryKeyConstraint("environments_pk", ["model_id", "name"])
          .execute();
        await db.schema.createIndex("environments_name").on("environments").column("name").execute();
        await db.schema
          .createTable("environment_groups")
          .addColumn("team_id", "text", (c) => c.notNull().references("teams.id").onDelete("cascade"))
          .addColumn("name", "text", (c) => c.notNull())
          .addColumn("is_restricted", "integer", (c) => c.notNull().defaultTo(0))
          .addColumn("manage_users", "text", (c) => c.notNull())
          .addColumn("region", "text", (c) => c.references("regions.slug"))
          .addColumn("standard_endpoint_policy", "text", (c) => c.notNull())
          .addColumn("created_at", "text", (c) => c.notNull())
          .addColumn("updated_at", "text", (c) => c.notNull())
          .addPrimaryKeyConstraint("environment_groups_pk", ["team_id", "name"])
          .execute();
        await db.schema
          .createTable("promotions")
          .addColumn("id", "text", (c) => c.primaryKey())
          .addColumn("model_id", "text", (c) => c.notNull().references("models.id").onDelete("cascade"))
          .addColumn("environment", "text", (c) => c.notNull())
          .addColumn("source_deployment_id", "text", (c) => c.notNull())
          .addColumn("candidate_deployment_id", "text", (c) => c.notNull())
          .addColumn("previous_deployment_id", "text")
          .addColumn("reason", "text", (c) => c.notNull())
          .addColumn("status", "text", (c) => c.notNull())
          .addColumn("active", "integer", (c) => c.notNull())
          .addColumn("error_message", "text")
          .addColumn("cleanup_strategy", "text", (c) => c.notNull())
          .addColumn("created_by", "text")
          .addColumn("created_at", "text", (c) => c.notNull())
          .addColumn("updated_at", "text", (c) => c.notNull())
          .execute();
        // One promotion at a time per environment, enforced by the database itself (DESIGN.md §2.5).
        await db.schema
          .createIndex("promotions_one_active")
          .on("promotions")
          .columns(["model_id", "environment"])
          .unique()
          .where(sql.ref("active"), "=", 1)
          .execute();
        await db.schema
          .createTable("replicas")
          .addColumn("id", "text", (c) => c.primaryKey())
          .addColumn("deployment_id", "text", (c) =>
            c.notNull().references("deployments.id").onDelete("cascade"),
          )
          .addColumn("plane", "text", (c) => c.notNull().references("planes.name"))
          .addColumn("state", "text", (c) => c.notNull())
          .addColumn("message", "text")
          .addColumn("restarts", "integer", (c) => c.notNull().defaultTo(0))
          .addColumn("created_at", "text", (c) => c.notNull())
          .addColumn("updated_at", "text", (c) => c.notNull())
          .execute();
        await db.schema.createIndex("replicas_deployment").on("replicas").column("deployment_id").execute();
        await db.schema.createIndex("replicas_plane").on("replicas").column("plane").execute();
        await db.schema
          .createTable("audit_logs")
          .addColumn("id", autoId, (c) =>
            dialect === "sqlite" ? c.primaryKey().autoIncrement() : c.primaryKey(),
          )
          .addColumn("at", "text", (c) => c.notNull())
          .addColumn("team_id", "text")
          .addColumn("model_id", "text")
          .addColumn("actor_user_id", "text")
          .addColumn("actor_key_prefix", "text")
          .addColumn("action", "text", (c) => c.notNull())
          .addColumn("target", "text", (c) => c.notNull())
          .addColumn("before", "text")
          .addColumn("after", "text")
          .execute();
        await db.schema
          .createIndex("audit_logs_model")
          .on("audit_logs")
          .columns(["model_id", "id"])
          .execute();
        await db.schema
          .createTable("request_counts")
          .addColumn("plane", "text", (c) => c.notNull())
          .addColumn("model_id", "text", (c) => c.notNull())
          .addColumn("environment", "text", (c) => c.notNull())
          .addColumn("status_class", "text", (c) => c.notNull())
          .addColumn("count", "integer", (c) => c.notNull())
          .addPrimaryKeyConstraint("request_counts_pk", ["plane", "model_id", "environment", "status_class"])
          .execute();
      },
    },
    "0002_plane_admin_url": {
      async up(db: Kysely<unknown>) {
        // Where the control plane fetches a plane's replica logs on demand (reported by the plane).
        await db.schema.alterTable("planes").addColumn("admin_url", "text").execute();
      },
    },
    "0003_artifact_chunks": {
      async up(db: Kysely<unknown>) {
        // Model packages kept in the database itself, so several control replicas share them.
        await db.schema
          .createTable("artifact_chunks")
          .addColumn("blob", "text", (c) => c.notNull())
          .addColumn("seq", "integer", (c) => c.notNull())
          .addColumn("data", dialect === "postgres" ? "bytea" : "blob", (c) => c.notNull())
          .addColumn("created_at", "text", (c) => c.notNull())
          .addPrimaryKeyConstraint("artifact_chunks_pk", ["blob", "seq"])
          .execute();
      },
    },
    "0003_egress_sandbox": {
      async up(db: Kysely<unknown>) {
        // The egress policy of an environment group, and the one a deployment's replicas were started
        // under (a replica's network namespace is fixed for its life). Everything before ran with network.
        // SQLite adds one column per ALTER TABLE.
        await db.schema
          .alterTable("environment_groups")
          .addColumn("egress", "text", (c) => c.notNull().defaultTo("allow"))
          .execute();
        await db.schema
          .alterTable("deployments")
          .addColumn("egress", "text", (c) => c.notNull().defaultTo("allow"))
          .execute();
        // How each plane runs its replicas, as it last reported it; null until it reports one.
        await db.schema.alterTable("planes").addColumn("sandbox_mode", "text").execute();
        await db.schema.alterTable("planes").addColumn("sandbox_detail", "text").execute();
      },
    },
    "0005_s3_uploads": {
      async up(db: Kysely<unknown>) {
        // Upload credentials issued by prepare_model_upload for the S3-compatible endpoint: one key each.
        await db.schema
          .createTable("s3_credentials")
          .addColumn("access_key_id", "text", (c) => c.primaryKey())
          .addColumn("secret_access_key", "text", (c) => c.notNull())
          .addColumn("session_token_hash", "text", (c) => c.notNull())
          .addColumn("artifact_key", "text", (c) =>
            c.notNull().references("artifacts.key").onDelete("cascade"),
          )
          .addColumn("team_id", "text", (c) => c.notNull())
          .addColumn("region", "text", (c) => c.notNull())
          .addColumn("expires_at", "text", (c) => c.notNull())
          .addColumn("created_at", "text", (c) => c.notNull())
          .execute();
        await db.schema
          .createTable("s3_multipart_uploads")
          .addColumn("upload_id", "text", (c) => c.primaryKey())
          .addColumn("access_key_id", "text", (c) => c.notNull())
          .addColumn("artifact_key", "text", (c) => c.notNull().unique())
          .addColumn("state", "text", (c) => c.notNull())
          .addColumn("checksum_algorithm", "text")
          .addColumn("expires_at", "text", (c) => c.notNull())
          .addColumn("created_at", "text", (c) => c.notNull())
          .addColumn("updated_at", "text", (c) => c.notNull())
          .execute();
        await db.schema
          .createTable("s3_parts")
          .addColumn("upload_id", "text", (c) =>
            c.notNull().references("s3_multipart_uploads.upload_id").onDelete("cascade"),
          )
          .addColumn("part_number", "integer", (c) => c.notNull())
          .addColumn("ref", "text", (c) => c.notNull())
          .addColumn("size", "integer", (c) => c.notNull())
          .addColumn("md5", "text", (c) => c.notNull())
          .addColumn("checksums", "text", (c) => c.notNull())
          .addColumn("created_at", "text", (c) => c.notNull())
          .addPrimaryKeyConstraint("s3_parts_pk", ["upload_id", "part_number"])
          .execute();
        // Staged part bytes when model packages live in the database, so every control replica reads them.
        await db.schema
          .createTable("s3_part_chunks")
          .addColumn("ref", "text", (c) => c.notNull())
          .addColumn("seq", "integer", (c) => c.notNull())
          .addColumn("upload_id", "text", (c) => c.notNull())
          .addColumn("data", dialect === "postgres" ? "bytea" : "blob", (c) => c.notNull())
          .addColumn("created_at", "text", (c) => c.notNull())
          .addPrimaryKeyConstraint("s3_part_chunks_pk", ["ref", "seq"])
          .execute();
        await db.schema
          .createIndex("s3_part_chunks_upload")
          .on("s3_part_chunks")
          .column("upload_id")
          .execute();
      },
    },
    "0006_secrets": {
      async up(db: Kysely<unknown>) {
        // Team secrets, sealed with a key kept outside the database (src/lib/secret-box.ts): `key_id` names
        // the key, `sealed` is nonce ‖ ciphertext ‖ tag in base64. A value is never stored in the clear.
        await db.schema
          .createTable("secrets")
          .addColumn("id", "text", (c) => c.primaryKey())
          .addColumn("team_id", "text", (c) => c.notNull().references("teams.id").onDelete("cascade"))
          .addColumn("name", "text", (c) => c.notNull())
          .addColumn("key_id", "text", (c) => c.notNull())
          .addColumn("sealed", "text", (c) => c.notNull())
          .addColumn("created_at", "text", (c) => c.notNull())
          .addColumn("updated_at", "text", (c) => c.notNull())
          .addUniqueConstraint("secrets_team_name", ["team_id", "name"])
          .execute();
        await db.schema.createIndex("secrets_key_id").on("secrets").column("key_id").execute();
      },
    },
    "0004_plane_keys": {
      async up(db: Kysely<unknown>) {
        // Each plane's own Ed25519 keys replace the installation-wide hop secret (issue 10 item 4). No
        // foreign key to planes: a deleted plane's keys stay, for the receipts it signed (issue 14).
        await db.schema
          .createTable("plane_keys")
          .addColumn("plane", "text", (c) => c.notNull())
          .addColumn("key_id", "text", (c) => c.notNull())
          .addColumn("public_key", "text", (c) => c.notNull())
          .addColumn("credential_hash", "text", (c) => c.notNull())
          .addColumn("first_seen_at", "text", (c) => c.notNull())
          .addColumn("retired_at", "text")
          .addPrimaryKeyConstraint("plane_keys_pk", ["plane", "key_id"])
          .execute();
        // The shared secret goes; the control plane's own key is created at start (src/control/keys.ts).
        await db
          .deleteFrom("meta" as never)
          .where("key" as never, "=", "hop_secret" as never)
          .execute();
      },
    },
    "0007_key_regions": {
      async up(db: Kysely<unknown>) {
        // Region-bound API keys: a JSON array of region slugs the key may call inference in; null (every
        // key from before) is every region.
        await db.schema.alterTable("api_keys").addColumn("regions", "text").execute();
      },
    },
    "0008_plane_key_directory": {
      async up(db: Kysely<unknown>) {
        // The key directory (issue 14): each key keeps the region it was registered in (a deleted plane's
        // keys stay listed, and a name may be registered again elsewhere), and the time it may first have
        // signed, which the plane reports (before: when the control plane first saw it).
        await db.schema.alterTable("plane_keys").addColumn("region", "text").execute();
        await db.schema.alterTable("plane_keys").addColumn("valid_from", "text").execute();
        await sql`update plane_keys set region = (select region from planes where planes.name = plane_keys.plane), valid_from = first_seen_at`.execute(
          db,
        );
        // Keys of planes deleted before now were never retired; their plane has not signed since.
        await sql`update plane_keys set retired_at = ${new Date().toISOString()} where region is null and retired_at is null`.execute(
          db,
        );
      },
    },
    "0009_autoscaling": {
      async up(db: Kysely<unknown>) {
        // Issue 12. Request backpressure (RequestBackpressureSettingsV1 as JSON; null: no policy) on
        // environments and deployments; the autoscaler's replica count per deployment (null: no decision
        // yet, the scheduler keeps max(1, min_replica)); and each plane's latest load report per deployment
        // (aggregates only: counts and times, never a request), so any control replica can decide.
        await db.schema.alterTable("environments").addColumn("backpressure", "text").execute();
        await db.schema.alterTable("deployments").addColumn("backpressure", "text").execute();
        await db.schema.alterTable("deployments").addColumn("desired_replicas", "integer").execute();
        await db.schema
          .createTable("plane_loads")
          .addColumn("plane", "text", (c) => c.notNull())
          .addColumn("deployment_id", "text", (c) => c.notNull())
          // The plane's counter epoch (when its ingress started): a new one restarts the counters.
          .addColumn("epoch", "text", (c) => c.notNull())
          .addColumn("in_flight", "integer", (c) => c.notNull())
          // The integral of requests in flight, request·ms: grows without bound, hence 64 bits on PG.
          .addColumn("request_ms", dialect === "postgres" ? "bigint" : "integer", (c) => c.notNull())
          .addColumn("last_request_at", "text")
          .addColumn("reported_at", "text", (c) => c.notNull())
          .addPrimaryKeyConstraint("plane_loads_pk", ["plane", "deployment_id"])
          .execute();
        // A deployment runs under the settings of the environment it serves, now kept on its own row too.
        await sql`update deployments set autoscaling = (select e.autoscaling from environments e where e.current_deployment_id = deployments.id order by e.name limit 1) where exists (select 1 from environments e where e.current_deployment_id = deployments.id)`.execute(
          db,
        );
        await db.schema
          .createIndex("plane_loads_deployment")
          .on("plane_loads")
          .column("deployment_id")
          .execute();
      },
    },
    "0010_async": {
      async up(db: Kysely<unknown>) {
        // Team webhook secrets for async inference, sealed as team secrets are (src/lib/secret-box.ts).
        // Nothing of an async request itself is ever stored here: requests live on their region's planes.
        await db.schema
          .createTable("webhook_secrets")
          .addColumn("id", "text", (c) => c.primaryKey())
          .addColumn("team_id", "text", (c) => c.notNull().references("teams.id").onDelete("cascade"))
          .addColumn("key_id", "text", (c) => c.notNull())
          .addColumn("sealed", "text", (c) => c.notNull())
          .addColumn("created_at", "text", (c) => c.notNull())
          .execute();
        await db.schema.createIndex("webhook_secrets_team").on("webhook_secrets").column("team_id").execute();
      },
    },
  };
}

export function migrationProvider(dialect: Dialect): MigrationProvider {
  return { getMigrations: async () => migrations(dialect) };
}
