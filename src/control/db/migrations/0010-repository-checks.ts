import type { Kysely, Migration } from "kysely";

/**
 * What the control plane last learnt about its repository: one row per kind
 * of check ("stats": stored bytes and object counts; "verify": the last
 * `store verify` run), so that /metrics reads them instead of walking the
 * repository at every scrape, and every instance answers the same.
 */
export const repositoryChecks: Migration = {
  async up(db: Kysely<unknown>): Promise<void> {
    await db.schema
      .createTable("repository_checks")
      .addColumn("kind", "text", (c) => c.primaryKey().notNull())
      .addColumn("at", "bigint", (c) => c.notNull())
      .addColumn("ok", "integer", (c) => c.notNull())
      .addColumn("duration_ms", "bigint", (c) => c.notNull())
      .addColumn("result_json", "text", (c) => c.notNull())
      .execute();
  },

  async down(db: Kysely<unknown>): Promise<void> {
    await db.schema.dropTable("repository_checks").execute();
  },
};
