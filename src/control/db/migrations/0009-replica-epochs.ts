import type { Kysely, Migration } from "kysely";

/**
 * Replica epochs: per server, which replicator last took its stream and the
 * epoch it writes the replica with (store/head.ts, "Fencing"). The epoch
 * rises whenever another replicator takes the stream.
 */
export const replicaEpochs: Migration = {
  async up(db: Kysely<unknown>): Promise<void> {
    await db.schema
      .createTable("replica_epochs")
      .addColumn("server_id", "text", (c) => c.primaryKey().notNull())
      .addColumn("holder", "text", (c) => c.notNull())
      .addColumn("epoch", "bigint", (c) => c.notNull())
      .addColumn("taken_at", "bigint", (c) => c.notNull())
      .execute();
  },

  async down(db: Kysely<unknown>): Promise<void> {
    await db.schema.dropTable("replica_epochs").execute();
  },
};
