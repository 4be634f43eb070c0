import type { Kysely } from "kysely";
import type { Clock } from "../base/index.js";
import type { Database, Schema } from "./db/index.js";

/**
 * A server's lag over the last hours, for the console's chart. Heartbeats
 * come every few seconds; a sample is kept at most once a minute per server
 * (a read on the primary key's index, then an insert: two control-plane
 * processes may rarely both write one, which the chart does not mind), and samples older than LAG_HISTORY_HOURS are pruned when the server
 * writes its next one.
 */
export const LAG_SAMPLE_EVERY_MS = 60_000;
export const LAG_HISTORY_HOURS = 26;

export interface LagSample {
  at: number;
  lagSeconds: number | null;
  backlogBytes: number | null;
}

/** Records a sample for `serverId` unless it has one younger than a minute. */
export async function recordLagSample(
  db: Kysely<Schema>,
  clock: Clock,
  serverId: string,
  report: { lagSeconds?: number; backlogBytes?: number },
): Promise<void> {
  if (report.lagSeconds === undefined && report.backlogBytes === undefined) return;
  const now = clock.now();
  const recent = await db
    .selectFrom("lag_samples")
    .select("at")
    .where("server_id", "=", serverId)
    .where("at", ">", now - LAG_SAMPLE_EVERY_MS)
    .executeTakeFirst();
  if (recent !== undefined) return;
  await db
    .insertInto("lag_samples")
    .values({
      server_id: serverId,
      at: now,
      lag_seconds: report.lagSeconds ?? null,
      backlog_bytes: report.backlogBytes ?? null,
    })
    .onConflict((oc) => oc.doNothing())
    .execute();
  await db
    .deleteFrom("lag_samples")
    .where("server_id", "=", serverId)
    .where("at", "<", now - LAG_HISTORY_HOURS * 3600_000)
    .execute();
}

/** The samples of `serverId` from the last `hours`, oldest first. */
export async function lagHistory(
  database: Database,
  clock: Clock,
  serverId: string,
  hours: number,
): Promise<LagSample[]> {
  const rows = await database.db
    .selectFrom("lag_samples")
    .select(["at", "lag_seconds", "backlog_bytes"])
    .where("server_id", "=", serverId)
    .where("at", ">=", clock.now() - hours * 3600_000)
    .orderBy("at")
    .execute();
  return rows.map((r) => ({
    at: Number(r.at),
    lagSeconds: r.lag_seconds === null ? null : Number(r.lag_seconds),
    backlogBytes: r.backlog_bytes === null ? null : Number(r.backlog_bytes),
  }));
}
