import type { Kysely, Migration } from "kysely";

/**
 * Webhooks (each follows the events table from its own cursor, webhooks.ts)
 * and the RPO status of each server (rpo.ts), which remembers whether a
 * server's RPO was breached at the last check so that only transitions
 * become events.
 */
export const webhooks: Migration = {
  async up(db: Kysely<unknown>): Promise<void> {
    await db.schema
      .createTable("webhooks")
      .addColumn("id", "text", (c) => c.primaryKey().notNull())
      .addColumn("url", "text", (c) => c.notNull())
      .addColumn("event_types_json", "text", (c) => c.notNull())
      .addColumn("secret", "text", (c) => c.notNull())
      .addColumn("ca_pem", "text")
      .addColumn("created_at", "bigint", (c) => c.notNull())
      .addColumn("created_by", "text", (c) => c.notNull())
      .addColumn("cursor_seq", "bigint", (c) => c.notNull())
      .addColumn("failures", "integer", (c) => c.notNull().defaultTo(0))
      .addColumn("next_attempt_at", "bigint", (c) => c.notNull())
      .addColumn("last_delivered_at", "bigint")
      .addColumn("last_error", "text")
      .execute();
    await db.schema
      .createTable("rpo_status")
      .addColumn("server_id", "text", (c) =>
        c.primaryKey().notNull().references("servers.id").onDelete("cascade"),
      )
      .addColumn("breached", "integer", (c) => c.notNull())
      .addColumn("changed_at", "bigint", (c) => c.notNull())
      .execute();
  },

  async down(db: Kysely<unknown>): Promise<void> {
    await db.schema.dropTable("rpo_status").execute();
    await db.schema.dropTable("webhooks").execute();
  },
};
