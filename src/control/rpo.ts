import type { Clock, Logger } from "../base/index.js";
import { type Database, appendEventIn, lockForAppend, releaseLease, tryAcquireLease } from "./db/index.js";
import { BUILTIN_SETTINGS, parseOverride } from "./settings.js";

/**
 * The recovery point objective of each server: its newest PIT may be at most
 * `rpoMinutes` old (a replication setting). A server with no PIT yet counts
 * from its registration: until it has one, there is nothing to recover to.
 */
export interface RpoStatus {
  serverId: string;
  name: string;
  rpoSeconds: number;
  /** The newest PIT's time (ms), or null. */
  lastPitAt: number | null;
  /** Seconds since the newest PIT (or, without one, since registration). */
  ageSeconds: number;
  breached: boolean;
}

/** Every active server's RPO target in seconds, from the settings rows read once. */
export async function rpoTargets(database: Database): Promise<Map<string, number>> {
  const rows = await database.db
    .selectFrom("settings")
    .select(["scope", "json"])
    .where("kind", "=", "replication")
    .execute();
  const minutes = new Map<string, number>();
  for (const r of rows) {
    const v = parseOverride("replication", r.json).rpoMinutes;
    if (typeof v === "number") minutes.set(r.scope, v);
  }
  const fallback = minutes.get("default") ?? BUILTIN_SETTINGS.replication.rpoMinutes;
  const servers = await database.db
    .selectFrom("servers")
    .select("id")
    .where("decommissioned_at", "is", null)
    .execute();
  return new Map(servers.map((s) => [s.id, (minutes.get(s.id) ?? fallback) * 60]));
}

/** The newest PIT time and the PIT count of every server that has PITs in the catalog. */
export async function pitSummary(
  database: Database,
): Promise<Map<string, { lastAt: number; count: number }>> {
  const rows = await database.db
    .selectFrom("pits")
    .select((eb) => ["server_id", eb.fn.max("time_ms").as("last_at"), eb.fn.countAll().as("n")])
    .where("server_id", "is not", null)
    .groupBy("server_id")
    .execute();
  return new Map(rows.map((r) => [r.server_id!, { lastAt: Number(r.last_at), count: Number(r.n) }]));
}

export async function rpoStatuses(database: Database, clock: Clock): Promise<RpoStatus[]> {
  const [targets, pits, servers] = await Promise.all([
    rpoTargets(database),
    pitSummary(database),
    database.db
      .selectFrom("servers")
      .select(["id", "name", "registered_at"])
      .where("decommissioned_at", "is", null)
      .orderBy("name")
      .execute(),
  ]);
  const now = clock.now();
  return servers.map((s) => {
    const rpoSeconds = targets.get(s.id) ?? BUILTIN_SETTINGS.replication.rpoMinutes * 60;
    const lastPitAt = pits.get(s.id)?.lastAt ?? null;
    const ageSeconds = Math.max(0, (now - (lastPitAt ?? Number(s.registered_at))) / 1000);
    return {
      serverId: s.id,
      name: s.name,
      rpoSeconds,
      lastPitAt,
      ageSeconds,
      breached: ageSeconds > rpoSeconds,
    };
  });
}

/**
 * One RPO check: compares every server's status with the one stored at the
 * last check (rpo_status) and, on a change only, stores the new one and
 * appends `server.rpo_breached` or `server.rpo_met`, in one transaction
 * under the events lock, so two checkers at once cannot both record a
 * transition. A server never seen breached has nothing to "meet". start.ts
 * runs it on one instance at a time (lease "rpo-check").
 */
export async function checkRpo(
  database: Database,
  clock: Clock,
): Promise<{ breached: string[]; met: string[] }> {
  const statuses = await rpoStatuses(database, clock);
  return database.db.transaction().execute(async (trx) => {
    await lockForAppend(trx, database.dialect, "events");
    const stored = new Map(
      (await trx.selectFrom("rpo_status").select(["server_id", "breached"]).execute()).map((r) => [
        r.server_id,
        Number(r.breached) === 1,
      ]),
    );
    const changed = statuses.filter((s) => s.breached !== (stored.get(s.serverId) ?? false));
    const now = clock.now();
    for (const s of changed)
      await trx
        .insertInto("rpo_status")
        .values({ server_id: s.serverId, breached: s.breached ? 1 : 0, changed_at: now })
        .onConflict((oc) =>
          oc.column("server_id").doUpdateSet({ breached: s.breached ? 1 : 0, changed_at: now }),
        )
        .execute();
    await appendEventIn(
      trx,
      database.dialect,
      changed.map((s) => ({
        type: s.breached ? "server.rpo_breached" : "server.rpo_met",
        serverId: s.serverId,
        payload: {
          rpoSeconds: s.rpoSeconds,
          lastPitAt: s.lastPitAt === null ? null : new Date(s.lastPitAt).toISOString(),
          ageSeconds: Math.round(s.ageSeconds),
        },
      })),
      clock,
    );
    return {
      breached: changed.filter((s) => s.breached).map((s) => s.serverId),
      met: changed.filter((s) => !s.breached).map((s) => s.serverId),
    };
  });
}

export interface RpoChecks {
  close(): Promise<void>;
}

const RPO_LEASE = "rpo-check";

/**
 * Runs checkRpo 5 s after start and then every `everyMs` (default 60 s) on
 * whichever instance holds the lease "rpo-check" (held for three periods,
 * renewed at each), so that several control-plane instances on one database
 * check once, not once each.
 */
export function startRpoChecks(opts: {
  database: Database;
  clock: Clock;
  logger: Logger;
  instance: string;
  everyMs?: number;
}): RpoChecks {
  const everyMs = opts.everyMs ?? 60_000;
  let held = false;
  let running: Promise<unknown> = Promise.resolve();
  const run = async () => {
    held = await tryAcquireLease(opts.database.db, RPO_LEASE, opts.instance, everyMs * 3, opts.clock);
    if (!held) return;
    const r = await checkRpo(opts.database, opts.clock);
    if (r.breached.length > 0) opts.logger.warn({ servers: r.breached }, "RPO breached");
    if (r.met.length > 0) opts.logger.info({ servers: r.met }, "RPO met again");
  };
  const tick = () => {
    running = running.then(run).catch((err: unknown) => opts.logger.error({ err }, "the RPO check failed"));
  };
  const first = setTimeout(tick, Math.min(everyMs, 5000));
  const timer = setInterval(tick, everyMs);
  first.unref();
  timer.unref();
  return {
    async close() {
      clearTimeout(first);
      clearInterval(timer);
      await running;
      if (held) await releaseLease(opts.database.db, RPO_LEASE, opts.instance).catch(() => false);
    },
  };
}
