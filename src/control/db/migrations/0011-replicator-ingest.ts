import type { Kysely, Migration } from "kysely";

/**
 * What each separate replicator last reported ingesting (bytes received and
 * stored, streams held), from its heartbeats: one row per replicator, so
 * that /metrics on any control-plane instance exports it.
 */
export const replicatorIngest: Migration = {
  async up(db: Kysely<unknown>): Promise<void> {
    await db.schema
      .createTable("replicator_ingest")
      .addColumn("replicator_id", "text", (c) =>
        c.primaryKey().notNull().references("replicators.id").onDelete("cascade"),
      )
      .addColumn("started_at", "bigint", (c) => c.notNull())
      .addColumn("received_bytes", "bigint", (c) => c.notNull())
      .addColumn("stored_bytes", "bigint", (c) => c.notNull())
      .addColumn("sessions", "integer", (c) => c.notNull())
      // {server name: bytes applied since started_at}
      .addColumn("servers_json", "text", (c) => c.notNull().defaultTo("{}"))
      .addColumn("reported_at", "bigint", (c) => c.notNull())
      .execute();
  },

  async down(db: Kysely<unknown>): Promise<void> {
    await db.schema.dropTable("replicator_ingest").execute();
  },
};
