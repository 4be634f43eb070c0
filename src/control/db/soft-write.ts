import { type Kysely, sql } from "kysely";
import type { Database } from "./database.js";
import type { Schema } from "./schema.js";

/**
 * Runs writes that a database crash may forget without harm: a heartbeat's
 * last-seen time, lag and backlog, a lag-chart sample. The next heartbeat,
 * seconds later, writes them again.
 *
 * On PostgreSQL they run in one transaction that commits without waiting for
 * its WAL record to reach the disk (synchronous_commit off for that
 * transaction only). A crash may lose the last fraction of a second of such
 * commits, whole, never half of one, and no other write is affected: every
 * other transaction still waits for its flush, and one that commits after a
 * soft one flushes it too. At hundreds of heartbeats a second this keeps a
 * slow fsync from holding every heartbeat behind it. SQLite (WAL,
 * synchronous NORMAL) already commits without an fsync: `fn` runs as is.
 */
export async function softWrite<T>(database: Database, fn: (db: Kysely<Schema>) => Promise<T>): Promise<T> {
  if (database.dialect !== "postgres") return fn(database.db);
  return database.db.transaction().execute(async (trx) => {
    await sql`SET LOCAL synchronous_commit TO OFF`.execute(trx);
    return fn(trx);
  });
}
