import type { Clock } from "../base/index.js";
import type { Database } from "./db/index.js";
import { bootProfiles, readinessOf } from "./readiness.js";
import { assignments } from "./replicators.js";
import { rpoTargets } from "./rpo.js";
import { BUILTIN_SETTINGS } from "./settings.js";

/**
 * One row of the console's Servers page: what an operator scans a thousand
 * of at a glance. Built with a fixed number of queries, whatever the count.
 *
 * RPO: a server meets its recovery point objective while its newest PIT is at
 * most its effective `rpoMinutes` old (rpo.ts, the same rule as /metrics and
 * the RPO events).
 */
export interface ServerOverview {
  id: string;
  name: string;
  state: string;
  online: boolean;
  lagSeconds: number | null;
  backlogBytes: number | null;
  lastSeenAt: string | null;
  lastPit: { id: string; time: string; ageSeconds: number; consistency: string } | null;
  rpo: { targetSeconds: number; met: boolean };
  readiness: { profile: string; ready: boolean; verdict: string; problems: number } | null;
  replicator: { id: string; name: string } | null;
  group: string | null;
}

export async function serverOverview(
  database: Database,
  clock: Clock,
  heartbeatTimeoutSeconds: number,
): Promise<ServerOverview[]> {
  const now = clock.now();
  const db = database.db;
  const rows = await db
    .selectFrom("servers")
    .select([
      "id",
      "name",
      "state",
      "lag_seconds",
      "backlog_bytes",
      "last_seen_at",
      "inventory_json",
      "group_name",
    ])
    .where("decommissioned_at", "is", null)
    .orderBy("name")
    .execute();
  const newest = await db
    .selectFrom("pits as p")
    .innerJoin(
      (eb) =>
        eb
          .selectFrom("pits")
          .select(["server_id", (e) => e.fn.max("time_ms").as("t")])
          .where("server_id", "is not", null)
          .groupBy("server_id")
          .as("m"),
      (join) => join.onRef("m.server_id", "=", "p.server_id").onRef("m.t", "=", "p.time_ms"),
    )
    .select(["p.id", "p.server_id", "p.time_ms", "p.consistency"])
    .execute();
  const lastPit = new Map(newest.map((p) => [p.server_id!, p]));
  const assigned = await assignments(database);
  const replicatorNames = new Map(
    (await db.selectFrom("replicators").select(["id", "name"]).execute()).map((r) => [r.id, r.name]),
  );
  const profiles = await bootProfiles(
    database,
    rows.map((r) => r.id),
  );
  const targets = await rpoTargets(database);
  return rows.map((s) => {
    const lastSeen = s.last_seen_at === null ? null : Number(s.last_seen_at);
    const pit = lastPit.get(s.id);
    const targetSeconds = targets.get(s.id) ?? BUILTIN_SETTINGS.replication.rpoMinutes * 60;
    const ageSeconds = pit ? Math.max(0, (now - Number(pit.time_ms)) / 1000) : null;
    const inventory = s.inventory_json === null ? null : (JSON.parse(s.inventory_json) as unknown);
    const r = readinessOf(inventory, profiles.get(s.id)!);
    const replicatorId = assigned.get(s.id) ?? null;
    return {
      id: s.id,
      name: s.name,
      state: s.state,
      online: lastSeen !== null && now - lastSeen <= heartbeatTimeoutSeconds * 1000,
      lagSeconds: s.lag_seconds === null ? null : Number(s.lag_seconds),
      backlogBytes: s.backlog_bytes === null ? null : Number(s.backlog_bytes),
      lastSeenAt: lastSeen === null ? null : new Date(lastSeen).toISOString(),
      lastPit: pit
        ? {
            id: pit.id,
            time: new Date(Number(pit.time_ms)).toISOString(),
            ageSeconds: Math.round(ageSeconds!),
            consistency: pit.consistency,
          }
        : null,
      rpo: { targetSeconds, met: ageSeconds !== null && ageSeconds <= targetSeconds },
      readiness: r
        ? { profile: r.profile, ready: r.ready, verdict: r.verdict, problems: r.problems.length }
        : null,
      replicator: replicatorId
        ? { id: replicatorId, name: replicatorNames.get(replicatorId) ?? replicatorId }
        : null,
      group: s.group_name ?? null,
    };
  });
}
