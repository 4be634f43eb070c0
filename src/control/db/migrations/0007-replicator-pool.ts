import type { Kysely, Migration } from "kysely";

/**
 * The replicator pool: where a server without a replicatorId setting sends
 * its data. The pool's balancer writes these rows (one per server); an
 * explicit replicatorId setting wins over them.
 */
export const replicatorPool: Migration = {
  async up(db: Kysely<unknown>): Promise<void> {
    await db.schema
      .createTable("pool_assignments")
      .addColumn("server_id", "text", (c) => c.primaryKey().notNull())
      .addColumn("replicator_id", "text", (c) => c.notNull())
      .addColumn("assigned_at", "bigint", (c) => c.notNull())
      .addColumn("reason", "text", (c) => c.notNull())
      .execute();
    await db.schema
      .createIndex("pool_assignments_replicator")
      .on("pool_assignments")
      .column("replicator_id")
      .execute();
  },

  async down(db: Kysely<unknown>): Promise<void> {
    await db.schema.dropTable("pool_assignments").execute();
  },
};
