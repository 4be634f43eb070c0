import { type Kysely, type MigrationResult, Migrator } from "kysely";
import { LifeboatError } from "../../base/index.js";
import type { Database } from "./database.js";
import type { Schema } from "./schema.js";
import { MIGRATIONS } from "./migrations/index.js";

/** kysely's bookkeeping table: one row per migration the database has run. */
const MIGRATION_TABLE = "kysely_migration";

export interface MigrationStatus {
  /** Migrations this build knows and the database has run. */
  applied: string[];
  /** Migrations this build knows and the database has not run yet. */
  pending: string[];
  /** Migrations the database has run that this build does not know: the database is newer. */
  unknown: string[];
}

/** What the database has run, against what this build knows. Reads only. */
export async function migrationStatus(database: Database): Promise<MigrationStatus> {
  const known = Object.keys(MIGRATIONS).sort();
  const ran = await executedMigrations(database.db);
  return {
    applied: known.filter((n) => ran.includes(n)),
    pending: known.filter((n) => !ran.includes(n)),
    unknown: ran.filter((n) => !known.includes(n)).sort(),
  };
}

/**
 * Brings the schema to the newest version this build knows and returns the
 * names it applied (empty when there was nothing to do). Safe to call from
 * several processes at once: on PostgreSQL kysely's Migrator holds an
 * advisory lock and runs the pending migrations in one transaction; on
 * SQLite they run in one BEGIN IMMEDIATE transaction (see sqlite.ts).
 *
 * A database migrated by a newer Lifeboat (it has run migrations this build
 * does not know) is refused with DB_SCHEMA_TOO_NEW and left untouched; any
 * other failure is DB_MIGRATION_FAILED and, the migrations being
 * transactional, leaves the schema as it was.
 */
export async function migrateToLatest(database: Database): Promise<string[]> {
  const status = await migrationStatus(database);
  if (status.unknown.length > 0) throw tooNew(database, status.unknown);
  const migrator = new Migrator({
    db: database.db,
    provider: { getMigrations: () => Promise.resolve({ ...MIGRATIONS }) },
    migrationTableName: MIGRATION_TABLE,
  });
  const { error, results } = await migrator.migrateToLatest();
  if (error !== undefined) {
    const message = error instanceof Error ? error.message : JSON.stringify(error);
    // Another process with a newer build migrated between our check and our run.
    if (/previously executed migration .* is missing/.test(message)) {
      const again = await migrationStatus(database);
      throw tooNew(database, again.unknown);
    }
    const failed = results?.find((r: MigrationResult) => r.status === "Error")?.migrationName;
    throw new LifeboatError(
      "DB_MIGRATION_FAILED",
      `${failed === undefined ? "preparing the migration" : `migration ${failed}`} failed on ${database.location}: ${message}`,
      {
        hint: "the schema was left as it was; fix the cause (disk full, permissions, a locked database) and start again",
        cause: error,
      },
    );
  }
  return (results ?? []).filter((r) => r.status === "Success").map((r) => r.migrationName);
}

function tooNew(database: Database, unknown: string[]): LifeboatError {
  return new LifeboatError(
    "DB_SCHEMA_TOO_NEW",
    `${database.location} was migrated by a newer Lifeboat (it has run ${unknown.join(", ")}, which this version does not know)`,
    {
      hint: "run the Lifeboat version that last migrated this database or a newer one; do not downgrade a shared database",
    },
  );
}

async function executedMigrations(db: Kysely<Schema>): Promise<string[]> {
  const tables = await db.introspection.getTables({ withInternalKyselyTables: true });
  if (!tables.some((t) => t.name === MIGRATION_TABLE)) return [];
  const rows = await db
    .withTables<{ [MIGRATION_TABLE]: { name: string } }>()
    .selectFrom(MIGRATION_TABLE)
    .select("name")
    .execute();
  return rows.map((r) => r.name);
}
