import type { Kysely, Migration } from "kysely";

/**
 * Failback and split-brain safety: `failbacks` pairs a recovered instance's
 * server (the source) with the original server (the target) and records how
 * far the target got; `disk_generations` holds each disk's generation id,
 * which changes at every recovery and failback. `servers.fenced` names why a
 * server's own agent may not replicate now ("failed-over", "receiving",
 * "failed-back"); `servers.recovery_job_id` links a recovered instance's
 * server to the recovery job it came from.
 */
export const failback: Migration = {
  async up(db: Kysely<unknown>): Promise<void> {
    await db.schema
      .createTable("failbacks")
      .addColumn("id", "text", (c) => c.primaryKey().notNull())
      .addColumn("job_id", "text", (c) => c.notNull())
      .addColumn("source_server_id", "text", (c) => c.notNull())
      .addColumn("target_server_id", "text", (c) => c.notNull())
      .addColumn("state", "text", (c) => c.notNull())
      .addColumn("disks_json", "text", (c) => c.notNull())
      .addColumn("pins_json", "text", (c) => c.notNull().defaultTo("{}"))
      .addColumn("progress_json", "text", (c) => c.notNull().defaultTo("{}"))
      .addColumn("cutover_pit_id", "text")
      .addColumn("error_code", "text")
      .addColumn("error_message", "text")
      .addColumn("created_at", "bigint", (c) => c.notNull())
      .addColumn("updated_at", "bigint", (c) => c.notNull())
      .addColumn("finished_at", "bigint")
      .execute();
    await db.schema.createIndex("failbacks_target").on("failbacks").column("target_server_id").execute();
    await db.schema
      .createTable("disk_generations")
      .addColumn("server_id", "text", (c) => c.notNull())
      .addColumn("disk_index", "integer", (c) => c.notNull())
      .addColumn("generation", "text", (c) => c.notNull())
      .addColumn("changed_at", "bigint", (c) => c.notNull())
      .addColumn("reason", "text", (c) => c.notNull())
      .addPrimaryKeyConstraint("disk_generations_pk", ["server_id", "disk_index"])
      .execute();
    await db.schema.alterTable("servers").addColumn("fenced", "text").execute();
    await db.schema.alterTable("servers").addColumn("recovery_job_id", "text").execute();
    await db.schema.alterTable("install_tokens").addColumn("recovery_job_id", "text").execute();
  },

  async down(db: Kysely<unknown>): Promise<void> {
    await db.schema.alterTable("install_tokens").dropColumn("recovery_job_id").execute();
    await db.schema.alterTable("servers").dropColumn("recovery_job_id").execute();
    await db.schema.alterTable("servers").dropColumn("fenced").execute();
    await db.schema.dropTable("disk_generations").execute();
    await db.schema.dropTable("failbacks").execute();
  },
};
