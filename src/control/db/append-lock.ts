import { sql, type Transaction } from "kysely";
import type { Dialect } from "./database.js";
import type { Schema } from "./schema.js";

/** Logs whose next sequence number is "last + 1" and must never fork. */
export type AppendLog = "audit_log" | "events";

/** First key of PostgreSQL's two-key advisory locks: Lifeboat's own space ("LB" in ASCII). */
const LOCK_SPACE = 0x4c42;
const LOCK_KEYS: Record<AppendLog, number> = { audit_log: 1, events: 2 };

/**
 * Serializes appends to one log across every connection and process, for the
 * rest of the transaction `trx`. Call it first in the transaction, before
 * reading the log's last row.
 *
 * PostgreSQL: pg_advisory_xact_lock, released at commit or rollback. It works
 * on an empty table too (SELECT ... FOR UPDATE would have no row to lock), and
 * because the default isolation is READ COMMITTED, the read that follows sees
 * the row the previous holder committed.
 *
 * SQLite: nothing to do. Every transaction begins IMMEDIATE (sqlite.ts): it
 * holds the database's write lock from its first statement, and within one
 * process kysely runs one transaction at a time on the one connection.
 */
export async function lockForAppend(
  trx: Transaction<Schema>,
  dialect: Dialect,
  log: AppendLog,
): Promise<void> {
  if (dialect === "postgres") {
    await sql`select pg_advisory_xact_lock(${sql.lit(LOCK_SPACE)}, ${sql.lit(LOCK_KEYS[log])})`.execute(trx);
  }
}
