import type { Kysely, Migration } from "kysely";

/**
 * Launches: a job can be a wave of a recovery plan (parent_job_id), an
 * operator can ask for a job to be terminated while it runs or after a drill
 * finished (terminate_requested_at; the instance that ran it removes what it
 * made), and recovery plans are saved.
 */
export const launch: Migration = {
  async up(db: Kysely<unknown>): Promise<void> {
    await db.schema.alterTable("jobs").addColumn("parent_job_id", "text").execute();
    await db.schema.alterTable("jobs").addColumn("terminate_requested_at", "bigint").execute();
    await db.schema.createIndex("jobs_state").on("jobs").column("state").execute();
    await db.schema
      .createTable("plans")
      .addColumn("id", "text", (c) => c.primaryKey().notNull())
      .addColumn("name", "text", (c) => c.notNull().unique())
      .addColumn("description", "text")
      .addColumn("waves_json", "text", (c) => c.notNull())
      .addColumn("options_json", "text", (c) => c.notNull())
      .addColumn("created_at", "bigint", (c) => c.notNull())
      .addColumn("created_by", "text", (c) => c.notNull())
      .addColumn("updated_at", "bigint", (c) => c.notNull())
      .execute();
  },

  async down(db: Kysely<unknown>): Promise<void> {
    await db.schema.dropTable("plans").execute();
    await db.schema.dropIndex("jobs_state").execute();
    await db.schema.alterTable("jobs").dropColumn("terminate_requested_at").execute();
    await db.schema.alterTable("jobs").dropColumn("parent_job_id").execute();
  },
};
