import type { Kysely, Migration } from "kysely";

/**
 * The first schema: every table in ../schema.ts. Written with kysely's schema
 * builder in types both dialects store alike (text, integer, bigint for
 * milliseconds and byte counts, double precision for lag), so the same
 * statements run on SQLite and PostgreSQL.
 *
 * Applied migrations are never edited: a change is a new migration.
 */
export const initial: Migration = {
  async up(db: Kysely<unknown>): Promise<void> {
    await db.schema
      .createTable("api_keys")
      .addColumn("id", "text", (c) => c.primaryKey().notNull())
      .addColumn("name", "text", (c) => c.notNull())
      .addColumn("role", "text", (c) => c.notNull())
      .addColumn("key_hash", "text", (c) => c.notNull().unique())
      .addColumn("created_at", "bigint", (c) => c.notNull())
      .addColumn("created_by", "text")
      .addColumn("revoked_at", "bigint")
      .addColumn("last_used_at", "bigint")
      .execute();

    await db.schema
      .createTable("install_tokens")
      .addColumn("id", "text", (c) => c.primaryKey().notNull())
      .addColumn("secret_hash", "text", (c) => c.notNull())
      .addColumn("role", "text", (c) => c.notNull())
      .addColumn("uses_allowed", "integer", (c) => c.notNull())
      .addColumn("uses_count", "integer", (c) => c.notNull().defaultTo(0))
      .addColumn("expires_at", "bigint", (c) => c.notNull())
      .addColumn("server_name", "text")
      .addColumn("created_by", "text", (c) => c.notNull())
      .addColumn("created_at", "bigint", (c) => c.notNull())
      .addColumn("revoked_at", "bigint")
      .execute();

    await db.schema
      .createTable("replicators")
      .addColumn("id", "text", (c) => c.primaryKey().notNull())
      .addColumn("name", "text", (c) => c.notNull().unique())
      .addColumn("address", "text", (c) => c.notNull())
      .addColumn("capacity_json", "text", (c) => c.notNull().defaultTo("{}"))
      .addColumn("state", "text", (c) => c.notNull())
      .addColumn("last_seen_at", "bigint")
      .addColumn("registered_at", "bigint", (c) => c.notNull())
      .addColumn("drained", "integer", (c) => c.notNull().defaultTo(0))
      .execute();

    await db.schema
      .createTable("servers")
      .addColumn("id", "text", (c) => c.primaryKey().notNull())
      .addColumn("name", "text", (c) => c.notNull().unique())
      .addColumn("hostname", "text")
      .addColumn("state", "text", (c) => c.notNull())
      .addColumn("lag_seconds", "double precision")
      .addColumn("backlog_bytes", "bigint")
      .addColumn("last_seen_at", "bigint")
      .addColumn("inventory_json", "text")
      .addColumn("replicator_id", "text", (c) => c.references("replicators.id").onDelete("set null"))
      .addColumn("token_id", "text", (c) => c.references("install_tokens.id").onDelete("set null"))
      .addColumn("registered_at", "bigint", (c) => c.notNull())
      .addColumn("decommissioned_at", "bigint")
      .execute();
    await db.schema.createIndex("servers_replicator_id").on("servers").column("replicator_id").execute();

    await db.schema
      .createTable("certificates")
      .addColumn("serial", "text", (c) => c.primaryKey().notNull())
      .addColumn("role", "text", (c) => c.notNull())
      .addColumn("subject_id", "text", (c) => c.notNull())
      .addColumn("public_key_fingerprint", "text", (c) => c.notNull())
      .addColumn("not_before", "bigint", (c) => c.notNull())
      .addColumn("not_after", "bigint", (c) => c.notNull())
      .addColumn("revoked_at", "bigint")
      .addColumn("token_id", "text", (c) => c.references("install_tokens.id").onDelete("set null"))
      .execute();
    await db.schema.createIndex("certificates_subject_id").on("certificates").column("subject_id").execute();

    await db.schema
      .createTable("registrations")
      .addColumn("token_id", "text", (c) => c.notNull().references("install_tokens.id").onDelete("cascade"))
      .addColumn("public_key_fingerprint", "text", (c) => c.notNull())
      .addColumn("subject_id", "text", (c) => c.notNull())
      .addColumn("certificate_serial", "text", (c) =>
        c.notNull().references("certificates.serial").onDelete("cascade"),
      )
      .addColumn("created_at", "bigint", (c) => c.notNull())
      .addPrimaryKeyConstraint("registrations_pk", ["token_id", "public_key_fingerprint"])
      .execute();

    await db.schema
      .createTable("settings")
      .addColumn("scope", "text", (c) => c.notNull())
      .addColumn("kind", "text", (c) => c.notNull())
      .addColumn("json", "text", (c) => c.notNull())
      .addColumn("updated_at", "bigint", (c) => c.notNull())
      .addColumn("updated_by", "text", (c) => c.notNull())
      .addPrimaryKeyConstraint("settings_pk", ["scope", "kind"])
      .execute();

    await db.schema
      .createTable("pits")
      .addColumn("id", "text", (c) => c.primaryKey().notNull())
      .addColumn("repository_id", "text", (c) => c.notNull())
      .addColumn("server_id", "text")
      .addColumn("server_name", "text", (c) => c.notNull())
      .addColumn("seq", "integer", (c) => c.notNull())
      .addColumn("time_ms", "bigint", (c) => c.notNull())
      .addColumn("consistency", "text", (c) => c.notNull())
      .addColumn("disks_json", "text", (c) => c.notNull())
      .addColumn("labels_json", "text", (c) => c.notNull().defaultTo("{}"))
      .execute();
    await db.schema.createIndex("pits_server_id_time").on("pits").columns(["server_id", "time_ms"]).execute();
    await db.schema
      .createIndex("pits_repository_server_time")
      .on("pits")
      .columns(["repository_id", "server_name", "time_ms"])
      .execute();

    await db.schema
      .createTable("jobs")
      .addColumn("id", "text", (c) => c.primaryKey().notNull())
      .addColumn("type", "text", (c) => c.notNull())
      .addColumn("state", "text", (c) => c.notNull())
      .addColumn("server_ids_json", "text", (c) => c.notNull())
      .addColumn("params_json", "text", (c) => c.notNull())
      .addColumn("result_json", "text")
      .addColumn("created_at", "bigint", (c) => c.notNull())
      .addColumn("created_by", "text", (c) => c.notNull())
      .addColumn("claimed_by", "text")
      .addColumn("claimed_at", "bigint")
      .addColumn("finished_at", "bigint")
      .execute();
    await db.schema.createIndex("jobs_state_created").on("jobs").columns(["state", "created_at"]).execute();

    await db.schema
      .createTable("job_log")
      .addColumn("job_id", "text", (c) => c.notNull().references("jobs.id").onDelete("cascade"))
      .addColumn("seq", "integer", (c) => c.notNull())
      .addColumn("at", "bigint", (c) => c.notNull())
      .addColumn("level", "text", (c) => c.notNull())
      .addColumn("message", "text", (c) => c.notNull())
      .addPrimaryKeyConstraint("job_log_pk", ["job_id", "seq"])
      .execute();

    await db.schema
      .createTable("events")
      .addColumn("seq", "bigint", (c) => c.primaryKey().notNull())
      .addColumn("at", "bigint", (c) => c.notNull())
      .addColumn("type", "text", (c) => c.notNull())
      .addColumn("server_id", "text")
      .addColumn("payload_json", "text", (c) => c.notNull())
      .execute();
    await db.schema.createIndex("events_server_seq").on("events").columns(["server_id", "seq"]).execute();

    await db.schema
      .createTable("audit_log")
      .addColumn("seq", "bigint", (c) => c.primaryKey().notNull())
      .addColumn("at", "bigint", (c) => c.notNull())
      .addColumn("actor", "text", (c) => c.notNull())
      .addColumn("action", "text", (c) => c.notNull())
      .addColumn("target", "text", (c) => c.notNull())
      .addColumn("source", "text", (c) => c.notNull())
      .addColumn("result", "text", (c) => c.notNull())
      .addColumn("details_json", "text", (c) => c.notNull())
      .addColumn("prev_hash", "text", (c) => c.notNull())
      .addColumn("hash", "text", (c) => c.notNull())
      .execute();

    await db.schema
      .createTable("leases")
      .addColumn("name", "text", (c) => c.primaryKey().notNull())
      .addColumn("holder", "text", (c) => c.notNull())
      .addColumn("expires_at", "bigint", (c) => c.notNull())
      .execute();
  },

  async down(db: Kysely<unknown>): Promise<void> {
    for (const table of [
      "leases",
      "audit_log",
      "events",
      "job_log",
      "jobs",
      "pits",
      "settings",
      "registrations",
      "certificates",
      "servers",
      "replicators",
      "install_tokens",
      "api_keys",
    ]) {
      await db.schema.dropTable(table).execute();
    }
  },
};
