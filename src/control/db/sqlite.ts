import SQLite from "better-sqlite3";
import {
  CompiledQuery,
  type DatabaseConnection,
  type DialectAdapter,
  type Driver,
  Kysely,
  SqliteAdapter,
  type SqliteDatabase,
  SqliteDialect,
  type SqliteDialectConfig,
  SqliteDriver,
} from "kysely";
import { LifeboatError, type Logger } from "../../base/index.js";
import type { Schema } from "./schema.js";

/**
 * SQLite through better-sqlite3: one connection per Database, which kysely
 * guards with a mutex, so one process never runs two transactions at once.
 *
 * Settings, and why:
 * - journal_mode=WAL: readers do not block the writer nor the writer readers,
 *   so `lifeboat audit verify` or a backup can read while the server writes.
 *   (WAL needs a local filesystem: not NFS or SMB.)
 * - synchronous=NORMAL: in WAL mode a commit is not fsynced, only checkpoints
 *   are. The database cannot be corrupted by a crash or power loss, and an
 *   application crash loses nothing; a power loss can lose the last commits
 *   since the last checkpoint. That suits this state (heartbeats, lag, job
 *   steps arrive again; the PIT catalog is rebuilt from the repository), and it
 *   saves an fsync on every heartbeat. It can also undo the last audit records
 *   or a token use: run PostgreSQL where that matters.
 * - foreign_keys=ON: SQLite leaves them off unless each connection asks.
 * - busy_timeout=5000: when another process (the CLI, a backup) holds the
 *   write lock, wait up to 5 s instead of failing at once with SQLITE_BUSY.
 *   better-sqlite3 is synchronous, so that wait blocks this process's event
 *   loop: open one Database per process and share it.
 *
 * Every transaction starts with BEGIN IMMEDIATE (below), taking the write
 * lock at its start: a transaction that reads and then writes (the audit
 * chain, leases, counters) cannot be overtaken by another process between its
 * read and its write, and never fails with SQLITE_BUSY half-way.
 */
export function openSqlite(file: string, display: string, logger: Logger): Kysely<Schema> {
  let handle: SQLite.Database;
  try {
    handle = new SQLite(file, { fileMustExist: false });
  } catch (err) {
    throw openFailed(display, err);
  }
  try {
    if (file !== ":memory:") {
      const mode = handle.pragma("journal_mode = WAL", { simple: true });
      if (mode !== "wal") logger.warn({ database: display, mode }, "SQLite WAL mode unavailable");
    }
    handle.pragma("synchronous = NORMAL");
    handle.pragma("foreign_keys = ON");
    handle.pragma("busy_timeout = 5000");
  } catch (err) {
    handle.close();
    throw openFailed(display, err);
  }
  return new Kysely<Schema>({
    dialect: new ImmediateSqliteDialect({ database: withStatementCache(handle) }),
  });
}

/**
 * kysely prepares every query it runs, and better-sqlite3 compiles SQL on
 * every prepare() (measured: the largest cost of a heartbeat after TLS).
 * A statement can be run again and again, and one connection never runs two
 * at once (kysely's mutex), so the last few hundred distinct SQL texts keep
 * theirs. SQLite re-prepares a statement by itself after a schema change.
 */
function withStatementCache(handle: SQLite.Database, max = 256): SqliteDatabase {
  const cache = new Map<string, SQLite.Statement>();
  return {
    close: () => handle.close(),
    prepare(sql: string) {
      let statement = cache.get(sql);
      if (statement === undefined) {
        statement = handle.prepare(sql);
        if (cache.size >= max) cache.delete(cache.keys().next().value!);
        cache.set(sql, statement);
      }
      return statement;
    },
  };
}

function openFailed(display: string, err: unknown): LifeboatError {
  const code = (err as { code?: unknown }).code;
  const message = err instanceof Error ? err.message : String(err);
  if (code === "SQLITE_NOTADB" || code === "SQLITE_CORRUPT") {
    return new LifeboatError("DB_NOT_A_DATABASE", `${display} is not a SQLite database (${message})`, {
      hint: "point the database URL at the control plane's database file, or restore it from a backup",
      cause: err,
    });
  }
  const busy = code === "SQLITE_BUSY" || code === "SQLITE_LOCKED";
  return new LifeboatError("DB_UNREACHABLE", `cannot open ${display}: ${message}`, {
    hint: busy
      ? "another process holds the database locked; wait for it or stop it"
      : "check that the directory exists and that this user may read and write it and the file",
    cause: err,
    retryable: busy,
  });
}

/** SqliteDialect whose transactions begin IMMEDIATE and whose migrations run in one transaction. */
class ImmediateSqliteDialect extends SqliteDialect {
  constructor(private readonly settings: SqliteDialectConfig) {
    super(settings);
  }
  override createDriver(): Driver {
    return new ImmediateSqliteDriver(this.settings);
  }
  override createAdapter(): DialectAdapter {
    return new TransactionalDdlSqliteAdapter();
  }
}

class ImmediateSqliteDriver extends SqliteDriver {
  override async beginTransaction(connection: DatabaseConnection): Promise<void> {
    await connection.executeQuery(CompiledQuery.raw("begin immediate"));
  }
}

/**
 * SQLite runs DDL inside transactions, but kysely's adapter says it does not,
 * so its Migrator would run each statement on its own and two processes
 * migrating at once could both create a table. Saying it does makes the
 * Migrator run all pending migrations in one (IMMEDIATE) transaction: atomic,
 * and serialized with any other process by SQLite's write lock.
 */
class TransactionalDdlSqliteAdapter extends SqliteAdapter {
  override get supportsTransactionalDdl(): boolean {
    return true;
  }
}
