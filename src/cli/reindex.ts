import { promises as fs } from "node:fs";
import Database from "better-sqlite3";
import { Kysely, SqliteDialect, sql } from "kysely";
import { type Repository, listPits } from "../store/index.js";

interface CatalogDb {
  pits: {
    id: string;
    repository_id: string;
    server: string;
    seq: number;
    time_ms: number;
    consistency: string;
    disks_json: string;
    labels_json: string;
  };
}

/**
 * Rebuilds the PIT catalog from the repository alone: the recovery site must
 * survive losing its control plane's database. The new catalog is built in a
 * temporary file and renamed over the old one, so readers never see half.
 */
export async function reindexCatalog(
  repo: Repository,
  dbFile: string,
): Promise<{ db: string; pits: number; servers: number }> {
  const pits = await listPits(repo);
  const tmp = `${dbFile}.${process.pid}.tmp`;
  await fs.rm(tmp, { force: true });
  const db = new Kysely<CatalogDb>({ dialect: new SqliteDialect({ database: new Database(tmp) }) });
  try {
    await db.schema
      .createTable("pits")
      .addColumn("id", "text", (c) => c.primaryKey())
      .addColumn("repository_id", "text", (c) => c.notNull())
      .addColumn("server", "text", (c) => c.notNull())
      .addColumn("seq", "integer", (c) => c.notNull())
      .addColumn("time_ms", "integer", (c) => c.notNull())
      .addColumn("consistency", "text", (c) => c.notNull())
      .addColumn("disks_json", "text", (c) => c.notNull())
      .addColumn("labels_json", "text", (c) => c.notNull())
      .execute();
    await db.schema.createIndex("pits_server_seq").on("pits").columns(["server", "seq"]).execute();
    await db.transaction().execute(async (tx) => {
      for (const p of pits) {
        await tx
          .insertInto("pits")
          .values({
            id: p.id,
            repository_id: repo.config.id,
            server: p.server,
            seq: p.seq,
            time_ms: p.timeMs,
            consistency: p.consistency,
            disks_json: JSON.stringify(p.disks),
            labels_json: JSON.stringify(p.labels),
          })
          .execute();
      }
    });
    await sql`PRAGMA wal_checkpoint`.execute(db);
  } finally {
    await db.destroy();
  }
  await fs.rename(tmp, dbFile);
  return { db: dbFile, pits: pits.length, servers: new Set(pits.map((p) => p.server)).size };
}
