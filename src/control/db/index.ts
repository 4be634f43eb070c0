/**
 * control/db: the control plane's state in SQLite (one process, the default)
 * or PostgreSQL (several control-plane processes on one database), through
 * one kysely schema, one set of migrations and one set of queries.
 *
 * Words: a Database is an open connection (SQLite) or pool (PostgreSQL); a
 * migration is a named, versioned schema change; a lease is a time-limited
 * right of one instance to do a piece of work; the append lock serializes
 * writers of a log whose next seq is last + 1.
 */
export { type Database, type Dialect, type OpenDatabaseOptions, openDatabase } from "./database.js";
export { type MigrationStatus, migrateToLatest, migrationStatus } from "./migrate.js";
export { MIGRATIONS } from "./migrations/index.js";
export { currentLease, releaseLease, tryAcquireLease } from "./leases.js";
export { type AppendLog, lockForAppend } from "./append-lock.js";
export { softWrite } from "./soft-write.js";
export { type NewEvent, appendEvent, appendEventIn } from "./events.js";
export { parseDatabaseUrl, redactUrl } from "./url.js";
export type * from "./schema.js";
