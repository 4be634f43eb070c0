import type { Kysely, Migration } from "kysely";

/**
 * The web console: its sign-in sessions (only a hash of the cookie value is
 * stored, with the API key it stands for and an expiry) and the lag history
 * its charts draw (one sample per server a minute at most, pruned after a day).
 */
export const consoleTables: Migration = {
  async up(db: Kysely<unknown>): Promise<void> {
    await db.schema
      .createTable("console_sessions")
      .addColumn("token_hash", "text", (c) => c.primaryKey().notNull())
      .addColumn("api_key_id", "text", (c) => c.notNull().references("api_keys.id").onDelete("cascade"))
      .addColumn("created_at", "bigint", (c) => c.notNull())
      .addColumn("expires_at", "bigint", (c) => c.notNull())
      .addColumn("source", "text", (c) => c.notNull())
      .execute();
    await db.schema
      .createIndex("console_sessions_expires_at")
      .on("console_sessions")
      .column("expires_at")
      .execute();
    await db.schema
      .createTable("lag_samples")
      .addColumn("server_id", "text", (c) => c.notNull().references("servers.id").onDelete("cascade"))
      .addColumn("at", "bigint", (c) => c.notNull())
      .addColumn("lag_seconds", "double precision")
      .addColumn("backlog_bytes", "bigint")
      .addPrimaryKeyConstraint("lag_samples_pk", ["server_id", "at"])
      .execute();
  },

  async down(db: Kysely<unknown>): Promise<void> {
    await db.schema.dropTable("lag_samples").execute();
    await db.schema.dropIndex("console_sessions_expires_at").execute();
    await db.schema.dropTable("console_sessions").execute();
  },
};
