import type { Kysely } from "kysely";
import type { Clock } from "../../base/index.js";
import type { Lease, Schema } from "./schema.js";

/**
 * Leases: a named right to do some work (retention, a scheduler tick, a job
 * sweep) on one control-plane instance at a time, held until `expires_at`.
 *
 * Contract:
 * - tryAcquireLease() succeeds if the lease is free, expired (expires_at <=
 *   now), or already held by `holder` (a renewal); it then holds it until now
 *   + ttlMs. Of any number of concurrent callers for a free lease, exactly one
 *   succeeds: it is one INSERT ... ON CONFLICT DO UPDATE ... WHERE, atomic on
 *   PostgreSQL (the conflicting row is locked and the WHERE re-checked on its
 *   latest version) and on SQLite (one writer at a time).
 * - A holder must renew well before ttlMs has passed, and must stop the work
 *   when a renewal fails: the lease is then someone else's.
 * - Times come from each instance's clock: instances' clocks must agree to
 *   well within ttlMs (NTP), or an instance may take over a live lease early.
 *
 * `db` may be a transaction.
 */
export async function tryAcquireLease(
  db: Kysely<Schema>,
  name: string,
  holder: string,
  ttlMs: number,
  clock: Clock,
): Promise<boolean> {
  if (!(ttlMs > 0)) throw new RangeError(`lease ttl must be positive, got ${ttlMs}`);
  const now = clock.now();
  const row = await db
    .insertInto("leases")
    .values({ name, holder, expires_at: now + ttlMs })
    .onConflict((oc) =>
      oc
        .column("name")
        .doUpdateSet((eb) => ({
          holder: eb.ref("excluded.holder"),
          expires_at: eb.ref("excluded.expires_at"),
        }))
        .where((eb) => eb.or([eb("leases.holder", "=", holder), eb("leases.expires_at", "<=", now)])),
    )
    .returning("holder")
    .executeTakeFirst();
  return row?.holder === holder;
}

/** Gives the lease up if `holder` has it; returns whether it did. */
export async function releaseLease(db: Kysely<Schema>, name: string, holder: string): Promise<boolean> {
  const res = await db
    .deleteFrom("leases")
    .where("name", "=", name)
    .where("holder", "=", holder)
    .executeTakeFirst();
  return res.numDeletedRows > 0n;
}

/** The lease's row if it is held now (not expired), else undefined. */
export async function currentLease(
  db: Kysely<Schema>,
  name: string,
  clock: Clock,
): Promise<Lease | undefined> {
  return db
    .selectFrom("leases")
    .selectAll()
    .where("name", "=", name)
    .where("expires_at", ">", clock.now())
    .executeTakeFirst();
}
