import type { Kysely } from "kysely";
import { type Logger, silentLogger } from "../../base/index.js";
import { openPostgres } from "./postgres.js";
import type { Schema } from "./schema.js";
import { openSqlite } from "./sqlite.js";
import { parseDatabaseUrl } from "./url.js";

export type Dialect = "sqlite" | "postgres";

/**
 * An open control-plane database. Queries go through `db`; code that must
 * differ by dialect (a lock statement) asks `dialect`. The same migrations and
 * queries serve both.
 */
export interface Database {
  readonly db: Kysely<Schema>;
  readonly dialect: Dialect;
  /** The URL with any password removed: safe for logs and messages. */
  readonly location: string;
  /** Closes the connection or pool. Idempotent. */
  close(): Promise<void>;
}

export interface OpenDatabaseOptions {
  logger?: Logger;
  /** PostgreSQL: connections in this process's pool (default 10). */
  poolMax?: number;
  /** PostgreSQL: how long to wait for a connection, at open and later (default 10 000 ms). */
  connectTimeoutMs?: number;
}

/**
 * Opens (SQLite: creates if missing) the database at `url` and checks that it
 * answers. Does not migrate: call migrateToLatest().
 *
 * Errors: DB_BAD_URL (not a URL we understand), DB_UNREACHABLE (cannot open
 * the file / reach the server; retryable), DB_AUTH_FAILED, DB_NOT_FOUND (the
 * PostgreSQL database does not exist), DB_NOT_A_DATABASE (a file that is not
 * SQLite). No message contains the password.
 */
export async function openDatabase(url: string, opts: OpenDatabaseOptions = {}): Promise<Database> {
  const logger = opts.logger ?? silentLogger;
  const where = parseDatabaseUrl(url);
  const db =
    where.dialect === "sqlite"
      ? openSqlite(where.file, where.display, logger)
      : await openPostgres(where.connectionString, where.display, where.password, logger, {
          poolMax: opts.poolMax ?? 10,
          connectTimeoutMs: opts.connectTimeoutMs ?? 10_000,
        });
  let closing: Promise<void> | undefined;
  return {
    db,
    dialect: where.dialect,
    location: where.display,
    close: () => (closing ??= db.destroy()),
  };
}
