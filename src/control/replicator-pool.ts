import type { Clock } from "../base/index.js";
import { type Database, appendEventIn } from "./db/index.js";
import { explicitAssignments } from "./replicators.js";

/**
 * The replicator pool. A server whose replicatorId setting is unset sends its
 * data to a replicator the pool chooses: among the separate replicators that
 * are up (heartbeating, not DISCONNECTED), not drained and not
 * decommissioned, the one with the least load for its capacity (load: the
 * disks of the servers it serves; capacity: `maxDisks` from its heartbeat,
 * else 256). A server keeps its replicator while that one stays up and
 * undrained, so a replicator that joins takes new servers and the ones whose
 * replicator failed, without moving healthy streams. With no replicator up,
 * a server has no pool assignment and sends to the control plane's embedded
 * replicator (if it runs one). Every replicator writes the same repository,
 * so a server that moves resumes from its last acknowledged point there.
 *
 * balancePool() runs on one control-plane instance at a time (a lease, in
 * start.ts); each move is one transaction with its event.
 */
export interface PoolMove {
  serverId: string;
  from: string | null;
  to: string | null;
  reason: string;
}

const DEFAULT_MAX_DISKS = 256;

interface Candidate {
  id: string;
  load: number;
  capacity: number;
}

export async function balancePool(
  database: Database,
  clock: Clock,
  opts: { heartbeatTimeoutMs: number },
): Promise<PoolMove[]> {
  const now = clock.now();
  const reps = await database.db
    .selectFrom("replicators")
    .select(["id", "state", "last_seen_at", "drained", "decommissioned_at", "capacity_json"])
    .execute();
  const why = new Map<string, string>();
  const live = new Map<string, Candidate>();
  for (const r of reps) {
    if (r.decommissioned_at !== null) why.set(r.id, "replicator decommissioned");
    else if (r.drained === 1) why.set(r.id, "replicator drained");
    else if (
      r.state === "DISCONNECTED" ||
      r.last_seen_at === null ||
      now - r.last_seen_at > opts.heartbeatTimeoutMs
    )
      why.set(r.id, "replicator disconnected");
    else live.set(r.id, { id: r.id, load: 0, capacity: maxDisks(r.capacity_json) });
  }
  const servers = await database.db
    .selectFrom("servers")
    .select(["id", "inventory_json"])
    .where("decommissioned_at", "is", null)
    .orderBy("registered_at")
    .execute();
  const explicit = await explicitAssignments(database);
  const pool = new Map(
    (await database.db.selectFrom("pool_assignments").select(["server_id", "replicator_id"]).execute()).map(
      (r) => [r.server_id, r.replicator_id],
    ),
  );
  const disksOf = new Map(servers.map((s) => [s.id, diskCount(s.inventory_json)]));
  // Load as it stands: explicit assignments and pool assignments to live replicators.
  for (const s of servers) {
    const rep = explicit.has(s.id) ? explicit.get(s.id) : pool.get(s.id);
    const c = rep ? live.get(rep) : undefined;
    if (c) c.load += disksOf.get(s.id)!;
  }
  const moves: PoolMove[] = [];
  const homeless: typeof servers = [];
  for (const s of servers) {
    if (explicit.has(s.id)) {
      if (pool.has(s.id))
        await writeMove(
          database,
          clock,
          { serverId: s.id, from: pool.get(s.id)!, to: null, reason: "replicatorId set" },
          false,
        );
      continue;
    }
    const current = pool.get(s.id) ?? null;
    if (current === null || !live.has(current)) homeless.push(s);
  }
  // Largest first: placing the big ones while there is room keeps the loads even.
  homeless.sort((a, b) => disksOf.get(b.id)! - disksOf.get(a.id)!);
  for (const s of homeless) {
    const current = pool.get(s.id) ?? null;
    const disks = disksOf.get(s.id)!;
    const best = [...live.values()]
      .filter((c) => c.load + disks <= c.capacity || c.load === 0)
      .sort((a, b) => a.load / a.capacity - b.load / b.capacity || a.id.localeCompare(b.id))[0];
    const to = best?.id ?? null;
    if (to === current) continue;
    if (best) best.load += disks;
    const reason = current === null ? "no replicator assigned" : (why.get(current) ?? "replicator removed");
    const move = { serverId: s.id, from: current, to, reason };
    await writeMove(database, clock, move, true);
    moves.push(move);
  }
  return moves;
}

async function writeMove(database: Database, clock: Clock, m: PoolMove, event: boolean): Promise<void> {
  await database.db.transaction().execute(async (trx) => {
    // The event first: appendEventIn takes the events lock before any row is touched (db/events.ts).
    if (event)
      await appendEventIn(
        trx,
        database.dialect,
        [
          {
            type: "server.reassigned",
            serverId: m.serverId,
            payload: { from: m.from, to: m.to, reason: m.reason },
          },
        ],
        clock,
      );
    if (m.to === null) await trx.deleteFrom("pool_assignments").where("server_id", "=", m.serverId).execute();
    else
      await trx
        .insertInto("pool_assignments")
        .values({ server_id: m.serverId, replicator_id: m.to, assigned_at: clock.now(), reason: m.reason })
        .onConflict((oc) =>
          oc
            .column("server_id")
            .doUpdateSet({ replicator_id: m.to!, assigned_at: clock.now(), reason: m.reason }),
        )
        .execute();
  });
}

function maxDisks(capacityJson: string): number {
  try {
    const v = (JSON.parse(capacityJson) as { maxDisks?: unknown }).maxDisks;
    return typeof v === "number" && v > 0 ? v : DEFAULT_MAX_DISKS;
  } catch {
    return DEFAULT_MAX_DISKS;
  }
}

function diskCount(inventoryJson: string | null): number {
  if (!inventoryJson) return 1;
  try {
    const disks = (JSON.parse(inventoryJson) as { disks?: unknown[] }).disks;
    return Array.isArray(disks) && disks.length > 0 ? disks.length : 1;
  } catch {
    return 1;
  }
}
