import type { Database, EventRow } from "./db/index.js";

/**
 * Events: what changed, for consoles, the /api/v1/events stream and
 * webhooks. Writers append rows with appendEvent/appendEventIn (db/events.ts)
 * in the transaction of the change they describe; seq grows in commit order
 * with no gaps, so a reader that asks for "seq > last seen" misses nothing
 * and a follower's cursor is one number.
 *
 * The types, and their payloads (docs/metrics-and-events.md):
 * - server.state            {from, to} (a STALLED server is `to: "STALLED"`)
 * - server.disconnected     {lastSeenAt, timeoutSeconds}
 * - server.decommissioned   {name}
 * - server.rpo_breached     {rpoSeconds, lastPitAt, ageSeconds}
 * - server.rpo_met          {rpoSeconds, lastPitAt, ageSeconds}
 * - pit.created             {pitId, time, consistency, disks}
 * - job.finished            {jobId, type, state, serverIds}
 * - replicator.disconnected {replicatorId, lastSeenAt, timeoutSeconds}
 * - replicator.decommissioned {replicatorId, name}
 * - server.failed_over      {jobId}: a recovery fenced the server (generations.ts)
 * - server.split_brain      {fenced} or {disk, claimed, current}: a fenced or stale source was refused
 * - failback.started        {failbackId, source}
 * - failback.ready          {failbackId, pitId}: the original server's disks equal the cut-over PIT
 * - repository.damaged      {damagedObjects, byKind, affectedPits, servers, readData, jobId, objects}
 * - server.purged           {name, pitsForgotten}: an admin purged a decommissioned server (purge.ts)
 */
export const EVENT_TYPES = [
  "server.state",
  "server.disconnected",
  "server.decommissioned",
  "server.rpo_breached",
  "server.rpo_met",
  "pit.created",
  "job.finished",
  "replicator.disconnected",
  "replicator.decommissioned",
  "server.failed_over",
  "server.split_brain",
  "failback.started",
  "failback.ready",
  "repository.damaged",
  "server.purged",
] as const;

export interface EventView {
  seq: number;
  at: string;
  type: string;
  serverId: string | null;
  /** The server's name, when the event is about a server still in the table. */
  server: string | null;
  payload: Record<string, unknown>;
}

export interface EventFilter {
  /** Events after this seq, oldest first. */
  after?: number;
  /** Without `after`: the newest events before this seq (still returned oldest first). */
  before?: number;
  limit?: number;
  serverId?: string;
  types?: readonly string[];
}

export const EVENTS_PAGE_MAX = 1000;

/**
 * A page of events, always in seq order. With `after`, the first `limit`
 * events after it (a follower's next page); otherwise the newest `limit`
 * events (before `before`, when given): a console's latest page.
 */
export async function listEvents(database: Database, filter: EventFilter = {}): Promise<EventView[]> {
  const limit = Math.min(filter.limit ?? 100, EVENTS_PAGE_MAX);
  let q = database.db
    .selectFrom("events")
    .leftJoin("servers", "servers.id", "events.server_id")
    .select([
      "events.seq",
      "events.at",
      "events.type",
      "events.server_id",
      "events.payload_json",
      "servers.name as server_name",
    ]);
  if (filter.serverId !== undefined) q = q.where("events.server_id", "=", filter.serverId);
  if (filter.types !== undefined && filter.types.length > 0) q = q.where("events.type", "in", filter.types);
  if (filter.after !== undefined) {
    q = q.where("events.seq", ">", filter.after).orderBy("events.seq", "asc");
  } else {
    if (filter.before !== undefined) q = q.where("events.seq", "<", filter.before);
    q = q.orderBy("events.seq", "desc");
  }
  const rows = await q.limit(limit).execute();
  if (filter.after === undefined) rows.reverse();
  return rows.map((r) =>
    eventView(
      { seq: r.seq, at: r.at, type: r.type, server_id: r.server_id, payload_json: r.payload_json },
      r.server_name,
    ),
  );
}

/** The highest seq written so far (0 when there is none). */
export async function latestEventSeq(database: Database): Promise<number> {
  const row = await database.db
    .selectFrom("events")
    .select("seq")
    .orderBy("seq", "desc")
    .limit(1)
    .executeTakeFirst();
  return Number(row?.seq ?? 0);
}

export function eventView(row: EventRow, serverName: string | null): EventView {
  return {
    seq: Number(row.seq),
    at: new Date(Number(row.at)).toISOString(),
    type: row.type,
    serverId: row.server_id,
    server: serverName,
    payload: JSON.parse(row.payload_json) as Record<string, unknown>,
  };
}

/** Whether an event of `type` is one `types` asks for ("*" is every type). */
export function matchesTypes(types: readonly string[], type: string): boolean {
  return types.includes("*") || types.includes(type);
}
