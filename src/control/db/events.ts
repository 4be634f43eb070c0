import type { Clock } from "../../base/index.js";
import { lockForAppend } from "./append-lock.js";
import type { Database } from "./database.js";
import type { EventRow } from "./schema.js";

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
  return database.db.transaction().execute(async (trx) => {
    await lockForAppend(trx, database.dialect, "events");
    const last = await trx
      .selectFrom("events")
      .select("seq")
      .orderBy("seq", "desc")
      .limit(1)
      .executeTakeFirst();
    const row: EventRow = {
      seq: (last?.seq ?? 0) + 1,
      at: clock.now(),
      type: event.type,
      server_id: event.serverId ?? null,
      payload_json: JSON.stringify(event.payload ?? {}),
    };
    await trx.insertInto("events").values(row).execute();
    return row;
  });
}
