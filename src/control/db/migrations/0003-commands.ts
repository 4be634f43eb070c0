import type { Kysely, Migration } from "kysely";

/**
 * Commands for agents (outbound-only: an agent fetches them by long poll)
 * and group PITs (one consistency point across the servers of a consistency
 * group); servers.group_name puts a server in at most one group.
 */
export const commands: Migration = {
  async up(db: Kysely<unknown>): Promise<void> {
    await db.schema.alterTable("servers").addColumn("group_name", "text").execute();
    await db.schema.createIndex("servers_group_name").on("servers").column("group_name").execute();

    await db.schema
      .createTable("group_pits")
      .addColumn("id", "text", (c) => c.primaryKey().notNull())
      .addColumn("group_name", "text", (c) => c.notNull())
      .addColumn("state", "text", (c) => c.notNull())
      .addColumn("taken_at", "bigint")
      .addColumn("barrier_timeout_ms", "integer", (c) => c.notNull())
      .addColumn("job_id", "text", (c) => c.notNull())
      .addColumn("created_at", "bigint", (c) => c.notNull())
      .addColumn("updated_at", "bigint", (c) => c.notNull())
      .execute();

    await db.schema
      .createTable("agent_commands")
      .addColumn("id", "text", (c) => c.primaryKey().notNull())
      .addColumn("server_id", "text", (c) => c.notNull().references("servers.id").onDelete("cascade"))
      .addColumn("kind", "text", (c) => c.notNull())
      .addColumn("params_json", "text", (c) => c.notNull())
      .addColumn("state", "text", (c) => c.notNull())
      .addColumn("created_at", "bigint", (c) => c.notNull())
      .addColumn("updated_at", "bigint", (c) => c.notNull())
      .addColumn("delivered_at", "bigint")
      .addColumn("deadline_at", "bigint", (c) => c.notNull())
      .addColumn("result_json", "text")
      .addColumn("error_code", "text")
      .addColumn("error_message", "text")
      .addColumn("group_pit_id", "text", (c) => c.references("group_pits.id").onDelete("cascade"))
      .addColumn("job_id", "text")
      .execute();
    await db.schema
      .createIndex("agent_commands_server_state")
      .on("agent_commands")
      .columns(["server_id", "state"])
      .execute();
    await db.schema
      .createIndex("agent_commands_group_pit_id")
      .on("agent_commands")
      .column("group_pit_id")
      .execute();
  },

  async down(db: Kysely<unknown>): Promise<void> {
    await db.schema.dropTable("agent_commands").execute();
    await db.schema.dropTable("group_pits").execute();
    await db.schema.dropIndex("servers_group_name").execute();
    await db.schema.alterTable("servers").dropColumn("group_name").execute();
  },
};
