import path from "node:path";
import { migrateToLatest, openDatabase, rebuildPitCatalog } from "../control/index.js";
import type { Repository } from "../store/index.js";

/**
 * `store reindex`: rebuilds the PIT catalog of a control-plane database
 * (SQLite file or postgres:// URL; created and migrated if new) from the
 * repository alone.
 */
export async function reindexCatalog(
  repo: Repository,
  db: string,
): Promise<{ db: string; pits: number; servers: number }> {
  const url =
    db.startsWith("postgres://") || db.startsWith("postgresql://") || db.startsWith("sqlite:")
      ? db
      : path.resolve(db);
  const database = await openDatabase(url);
  try {
    await migrateToLatest(database);
    const r = await rebuildPitCatalog(database, repo);
    return { db: database.location, pits: r.pits, servers: r.servers };
  } finally {
    await database.close();
  }
}
