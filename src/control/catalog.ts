import type { Insertable } from "kysely";
import type { Pit, Repository } from "../store/index.js";
import { listPits } from "../store/index.js";
import { type Clock, systemClock } from "../base/index.js";
import { type Database, type Schema, appendEventIn, lockForAppend } from "./db/index.js";

function pitRow(repositoryId: string, serverId: string | null, p: Pit): Insertable<Schema["pits"]> {
  return {
    id: p.id,
    repository_id: repositoryId,
    server_id: serverId,
    server_name: p.server,
    seq: p.seq,
    time_ms: p.timeMs,
    consistency: p.consistency,
    disks_json: JSON.stringify(p.disks),
    labels_json: JSON.stringify(p.labels),
  };
}

/**
 * Adds one PIT the replicator just made to the catalog (nothing if it is
 * there already) and, when it was new, a `pit.created` event in the same
 * transaction.
 */
export async function recordPit(
  database: Database,
  repositoryId: string,
  serverId: string,
  pit: Pit,
  clock: Clock = systemClock,
): Promise<void> {
  await database.db.transaction().execute(async (trx) => {
    await lockForAppend(trx, database.dialect, "events");
    const added = await trx
      .insertInto("pits")
      .values(pitRow(repositoryId, serverId, pit))
      .onConflict((oc) => oc.column("id").doNothing())
      .executeTakeFirst();
    if (Number(added.numInsertedOrUpdatedRows ?? 0n) === 0) return;
    await appendEventIn(
      trx,
      database.dialect,
      [
        {
          type: "pit.created",
          serverId,
          payload: {
            pitId: pit.id,
            time: new Date(pit.timeMs).toISOString(),
            consistency: pit.consistency,
            disks: pit.disks.length,
          },
        },
      ],
      clock,
    );
  });
}

/**
 * Rebuilds the control plane's PIT catalog from the repository alone — the
 * recovery site must survive losing its database. In one transaction the
 * repository's rows are replaced, so readers see the old catalog or the new
 * one. PITs are matched to registered servers by name.
 */
export async function rebuildPitCatalog(
  database: Database,
  repo: Repository,
): Promise<{ pits: number; servers: number; repositoryId: string }> {
  const pits = await listPits(repo, { damaged: [] });
  const repositoryId = repo.config.id;
  await database.db.transaction().execute(async (tx) => {
    const servers = await tx.selectFrom("servers").select(["id", "name"]).execute();
    const byName = new Map(servers.map((s) => [s.name, s.id]));
    await tx.deleteFrom("pits").where("repository_id", "=", repositoryId).execute();
    for (const p of pits) {
      // A replicator may record a PIT meanwhile (recordPit): the row is then there already, and the same.
      await tx
        .insertInto("pits")
        .values(pitRow(repositoryId, byName.get(p.server) ?? null, p))
        .onConflict((oc) => oc.column("id").doNothing())
        .execute();
    }
  });
  return { pits: pits.length, servers: new Set(pits.map((p) => p.server)).size, repositoryId };
}
