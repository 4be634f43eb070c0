import type { Transaction } from "kysely";
import type { Clock } from "../../base/index.js";
import { lockForAppend } from "./append-lock.js";
import type { Database, Dialect } from "./database.js";
import type { EventRow, Schema } from "./schema.js";

export interface NewEvent {
  type: string;
  serverId?: string | null;
  /** Stored as JSON text; must not hold secrets. */
  payload?: unknown;
}

/**
 * Appends an event with seq = last + 1, under the append lock, so seq grows
 * in commit order with no gaps: a watcher reading `seq > lastSeen` in order
 * never skips an event that commits late (as it could with a PostgreSQL
 * sequence, where a lower number can commit after a higher one is read).
 */
export async function appendEvent(database: Database, event: NewEvent, clock: Clock): Promise<EventRow> {
  return database.db
    .transaction()
    .execute((trx) => appendEventIn(trx, database.dialect, [event], clock).then((rows) => rows[0]!));
}

/**
 * Appends events inside the caller's transaction `trx`, so they commit (or
 * roll back) with the change they describe. Takes the events append lock
 * first: callers that also lock rows must call this before, or take the lock
 * with lockForAppend(trx, dialect, "events") before touching rows, so that
 * every writer takes the two in the same order (no deadlock).
 */
export async function appendEventIn(
  trx: Transaction<Schema>,
  dialect: Dialect,
  events: readonly NewEvent[],
  clock: Clock,
): Promise<EventRow[]> {
  await lockForAppend(trx, dialect, "events");
  if (events.length === 0) return [];
  const last = await trx
    .selectFrom("events")
    .select("seq")
    .orderBy("seq", "desc")
    .limit(1)
    .executeTakeFirst();
  let seq = Number(last?.seq ?? 0);
  const rows: EventRow[] = events.map((event) => ({
    seq: ++seq,
    at: clock.now(),
    type: event.type,
    server_id: event.serverId ?? null,
    payload_json: JSON.stringify(event.payload ?? {}),
  }));
  // In slices: one statement's parameters are bounded (SQLite 32766, PostgreSQL 65535).
  for (let i = 0; i < rows.length; i += 500)
    await trx
      .insertInto("events")
      .values(rows.slice(i, i + 500))
      .execute();
  return rows;
}
