import { type RawBuilder, sql } from "kysely";
import type { Clock } from "../base/index.js";
import { type Database, type Dialect, appendEventIn, lockForAppend, softWrite } from "./db/index.js";
import { recordLagSample } from "./lag-history.js";

/**
 * Heartbeats and the DISCONNECTED sweep.
 *
 * A heartbeat that repeats the server's state is one UPDATE (and, once a
 * minute, a lag sample), committed without waiting for the disk
 * (db/soft-write.ts: the next heartbeat repeats it), and is not audited: at a few hundred heartbeats a second the audit chain would hold
 * little else. A heartbeat that changes the state takes the events lock,
 * updates the row and appends a `server.state` event in one transaction; the
 * route audits it. Refused heartbeats are audited by the app.
 *
 * The sweep marks every server silent for longer than the timeout as
 * DISCONNECTED with one conditional UPDATE (state <> 'DISCONNECTED' AND
 * last_seen_at < cutoff) and appends its events in the same transaction, so
 * any number of control-plane processes may sweep at once: a row changes
 * once, and only the transaction that changed it writes its event. Writers
 * take the events lock before any row lock, always in that order.
 *
 * The inventory replaces the stored one, except its `boot` part (the boot
 * inventory, readiness.ts): agents send it only when it changed, so an
 * inventory without `boot` keeps the stored `boot`, in the same UPDATE.
 */
export interface HeartbeatReport {
  state: string;
  lagSeconds?: number;
  backlogBytes?: number;
  inventory?: Record<string, unknown>;
}

export interface HeartbeatOutcome {
  /** False: no such server, or decommissioned. */
  found: boolean;
  /** The state before, when this heartbeat changed it. */
  previousState?: string;
}

export async function recordHeartbeat(
  database: Database,
  clock: Clock,
  serverId: string,
  report: HeartbeatReport,
): Promise<HeartbeatOutcome> {
  const now = clock.now();
  const values = {
    last_seen_at: now,
    ...(report.lagSeconds !== undefined ? { lag_seconds: report.lagSeconds } : {}),
    ...(report.backlogBytes !== undefined ? { backlog_bytes: report.backlogBytes } : {}),
    ...(report.inventory !== undefined
      ? { inventory_json: inventoryValue(database.dialect, report.inventory) }
      : {}),
  };
  // Repeating the state: nothing here needs to survive a database crash (soft-write.ts).
  const same = await softWrite(database, async (db) => {
    const r = await db
      .updateTable("servers")
      .set(values)
      .where("id", "=", serverId)
      .where("state", "=", report.state)
      .where("decommissioned_at", "is", null)
      .executeTakeFirst();
    if (Number(r.numUpdatedRows) === 0) return false;
    // The console's lag chart (lag-history.ts): a sample a minute at most; a change of state waits for the next.
    await recordLagSample(db, clock, serverId, report);
    return true;
  });
  if (same) return { found: true };
  return database.db.transaction().execute(async (trx) => {
    await lockForAppend(trx, database.dialect, "events");
    const row = await trx
      .selectFrom("servers")
      .select("state")
      .where("id", "=", serverId)
      .where("decommissioned_at", "is", null)
      .executeTakeFirst();
    if (row === undefined) return { found: false };
    await trx
      .updateTable("servers")
      .set({ ...values, state: report.state })
      .where("id", "=", serverId)
      .execute();
    if (row.state === report.state) return { found: true };
    await appendEventIn(
      trx,
      database.dialect,
      [{ type: "server.state", serverId, payload: { from: row.state, to: report.state } }],
      clock,
    );
    return { found: true, previousState: row.state };
  });
}

/** The new inventory_json: `inventory` as given, with the stored `boot` when it has none. */
function inventoryValue(dialect: Dialect, inventory: Record<string, unknown>): string | RawBuilder<string> {
  const json = JSON.stringify(inventory);
  if (Object.hasOwn(inventory, "boot")) return json;
  // The column only ever holds JSON this file wrote.
  return dialect === "sqlite"
    ? sql<string>`CASE WHEN json_type(inventory_json, '$.boot') IN ('object', 'array')
        THEN json_set(${json}, '$.boot', json(json_extract(inventory_json, '$.boot')))
        ELSE ${json} END`
    : sql<string>`CASE WHEN jsonb_typeof(inventory_json::jsonb -> 'boot') IN ('object', 'array')
        THEN (${json}::jsonb || jsonb_build_object('boot', inventory_json::jsonb -> 'boot'))::text
        ELSE ${json} END`;
}

export interface SweepResult {
  servers: string[];
  replicators: string[];
}

/**
 * Marks servers and replicators not heard from for `timeoutMs` as
 * DISCONNECTED, one event each (`server.disconnected`,
 * `replicator.disconnected`). Safe to run from several processes at once.
 */
export async function sweepDisconnected(
  database: Database,
  clock: Clock,
  timeoutMs: number,
): Promise<SweepResult> {
  const cutoff = clock.now() - timeoutMs;
  return database.db.transaction().execute(async (trx) => {
    await lockForAppend(trx, database.dialect, "events");
    const servers = await trx
      .updateTable("servers")
      .set({ state: "DISCONNECTED" })
      .where("state", "<>", "DISCONNECTED")
      .where("last_seen_at", "<", cutoff)
      .where("decommissioned_at", "is", null)
      .returning(["id", "last_seen_at"])
      .execute();
    const replicators = await trx
      .updateTable("replicators")
      .set({ state: "DISCONNECTED" })
      .where("state", "<>", "DISCONNECTED")
      .where("last_seen_at", "<", cutoff)
      .where("decommissioned_at", "is", null)
      .returning(["id", "last_seen_at"])
      .execute();
    const payload = (lastSeen: number | null) => ({
      lastSeenAt: lastSeen === null ? null : new Date(Number(lastSeen)).toISOString(),
      timeoutSeconds: timeoutMs / 1000,
    });
    await appendEventIn(
      trx,
      database.dialect,
      [
        ...servers.map((s) => ({
          type: "server.disconnected",
          serverId: s.id,
          payload: payload(s.last_seen_at),
        })),
        ...replicators.map((r) => ({
          type: "replicator.disconnected",
          payload: { replicatorId: r.id, ...payload(r.last_seen_at) },
        })),
      ],
      clock,
    );
    return { servers: servers.map((s) => s.id).sort(), replicators: replicators.map((r) => r.id).sort() };
  });
}
