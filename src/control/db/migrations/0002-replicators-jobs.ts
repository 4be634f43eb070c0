import type { Kysely, Migration } from "kysely";

/**
 * Replicators can be decommissioned like servers and remember the token they
 * registered with; jobs record when they last changed; the heartbeat sweeper
 * finds silent servers by last_seen_at without reading the whole table.
 */
export const replicatorsJobs: Migration = {
  async up(db: Kysely<unknown>): Promise<void> {
    await db.schema.alterTable("replicators").addColumn("decommissioned_at", "bigint").execute();
    await db.schema.alterTable("replicators").addColumn("token_id", "text").execute();
    await db.schema.alterTable("jobs").addColumn("updated_at", "bigint").execute();
    await db.schema.createIndex("servers_last_seen_at").on("servers").column("last_seen_at").execute();
    await db.schema.createIndex("jobs_created_at").on("jobs").column("created_at").execute();
  },

  async down(db: Kysely<unknown>): Promise<void> {
    await db.schema.dropIndex("jobs_created_at").execute();
    await db.schema.dropIndex("servers_last_seen_at").execute();
    await db.schema.alterTable("jobs").dropColumn("updated_at").execute();
    await db.schema.alterTable("replicators").dropColumn("token_id").execute();
    await db.schema.alterTable("replicators").dropColumn("decommissioned_at").execute();
  },
};
