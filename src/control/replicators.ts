import { sql } from "kysely";
import { type Clock, LifeboatError, type Logger, silentLogger } from "../base/index.js";
import { type Repository, readPit } from "../store/index.js";
import { recordPit } from "./catalog.js";
import { applyRetention } from "./retention.js";
import { type Database, appendEventIn, lockForAppend } from "./db/index.js";
import { OVERRIDE_SCHEMAS } from "./settings.js";

/**
 * Replicators and the servers assigned to them. A server's replicator is its
 * replicatorId setting when that is set (its own override, even to null:
 * the control plane's embedded replicator; or a replicator named in the
 * template); otherwise the replicator pool's choice (replicator-pool.ts), or
 * none (the embedded replicator). Read here on every call rather than copied
 * into the servers table, so no control-plane process can hold a stale copy.
 */
export async function assignments(database: Database): Promise<Map<string, string | null>> {
  const explicit = await explicitAssignments(database);
  const pool = await database.db
    .selectFrom("pool_assignments")
    .select(["server_id", "replicator_id"])
    .execute();
  const pooled = new Map(pool.map((r) => [r.server_id, r.replicator_id]));
  const servers = await database.db
    .selectFrom("servers")
    .select("id")
    .where("decommissioned_at", "is", null)
    .execute();
  return new Map(
    servers.map((s) => [s.id, explicit.has(s.id) ? explicit.get(s.id)! : (pooled.get(s.id) ?? null)]),
  );
}

/** Servers whose replicatorId setting decides their replicator (value: that setting), as assignments() reads it. */
export async function explicitAssignments(database: Database): Promise<Map<string, string | null>> {
  const rows = await database.db
    .selectFrom("settings")
    .select(["scope", "json"])
    .where("kind", "=", "replication")
    .execute();
  const replicatorOf = (json: string): { set: boolean; value: string | null } => {
    const parsed = OVERRIDE_SCHEMAS.replication.safeParse(JSON.parse(json));
    if (!parsed.success || !("replicatorId" in parsed.data)) return { set: false, value: null };
    return { set: true, value: parsed.data.replicatorId ?? null };
  };
  const byScope = new Map(rows.map((r) => [r.scope, replicatorOf(r.json)]));
  const template = byScope.get("default")?.value ?? null;
  const servers = await database.db
    .selectFrom("servers")
    .select("id")
    .where("decommissioned_at", "is", null)
    .execute();
  const out = new Map<string, string | null>();
  for (const s of servers) {
    const own = byScope.get(s.id);
    if (own?.set) out.set(s.id, own.value);
    else if (template !== null) out.set(s.id, template);
  }
  return out;
}

/** Ids of the (not decommissioned) servers assigned to `replicatorId`, sorted. */
export async function assignedServerIds(database: Database, replicatorId: string): Promise<string[]> {
  const all = await assignments(database);
  return [...all]
    .filter(([, r]) => r === replicatorId)
    .map(([s]) => s)
    .sort();
}

/**
 * The epoch `holder` (a replicator id, or `control-plane:INSTANCE` for an
 * embedded replicator) writes `serverId`'s replica with (store/head.ts,
 * "Fencing"). A holder that was the last to take the stream keeps its epoch;
 * any other gets a new one, above the last one and above `headEpoch` (the
 * highest epoch the repository's head has: a control database restored from
 * an older backup must not hand out an epoch the repository has passed).
 * Each step is one atomic statement, so two takers never get one epoch.
 * Undefined when another holder took it meanwhile. The caller checks first
 * that the server is assigned to the holder.
 */
export async function takeReplicaEpoch(
  database: Database,
  clock: Clock,
  serverId: string,
  holder: string,
  headEpoch: number,
): Promise<number | undefined> {
  const now = clock.now();
  const created = await database.db
    .insertInto("replica_epochs")
    .values({ server_id: serverId, holder, epoch: headEpoch + 1, taken_at: now })
    .onConflict((oc) => oc.column("server_id").doNothing())
    .returning("epoch")
    .executeTakeFirst();
  if (created) return Number(created.epoch);
  const raised = await database.db
    .updateTable("replica_epochs")
    .set({
      holder,
      taken_at: now,
      epoch: sql<number>`(case when epoch < ${headEpoch} then ${headEpoch} else epoch end) + 1`,
    })
    .where("server_id", "=", serverId)
    .where((eb) => eb.or([eb("holder", "<>", holder), eb("epoch", "<", headEpoch)]))
    .returning("epoch")
    .executeTakeFirst();
  if (raised) return Number(raised.epoch);
  const kept = await database.db
    .selectFrom("replica_epochs")
    .select("epoch")
    .where("server_id", "=", serverId)
    .where("holder", "=", holder)
    .executeTakeFirst();
  return kept ? Number(kept.epoch) : undefined;
}

export interface ReplicatorReport {
  state?: string;
  address?: string;
  capacity?: Record<string, unknown>;
  /** What a separate replicator ingested since it started (its process), for /metrics. */
  ingest?: ReplicatorIngest;
  /** PITs it made that the catalog may not hold yet (recordReplicatorPits). */
  pits?: { serverId: string; pitId: string }[];
}

export interface ReplicatorIngest {
  /** When its counters started (its process start): they restart from 0 with it. */
  startedAt: string;
  /** Bytes of block data received from agents and applied (as sent: compressed, no references). */
  receivedBytes: number;
  /** Bytes of new chunks written to the repository. */
  storedBytes: number;
  /** Replication streams it holds now. */
  sessions: number;
  /** receivedBytes by server name. */
  servers?: Record<string, number>;
}

/** A replicator's heartbeat; false when it is unknown or decommissioned. */
export async function recordReplicatorHeartbeat(
  database: Database,
  clock: Clock,
  replicatorId: string,
  report: ReplicatorReport,
): Promise<boolean> {
  const r = await database.db
    .updateTable("replicators")
    .set({
      last_seen_at: clock.now(),
      state: report.state ?? "ACTIVE",
      ...(report.address !== undefined ? { address: report.address } : {}),
      ...(report.capacity !== undefined ? { capacity_json: JSON.stringify(report.capacity) } : {}),
    })
    .where("id", "=", replicatorId)
    .where("decommissioned_at", "is", null)
    .executeTakeFirst();
  if (Number(r.numUpdatedRows) === 0) return false;
  const i = report.ingest;
  if (i !== undefined) {
    const row = {
      started_at: Number.isNaN(Date.parse(i.startedAt)) ? clock.now() : Date.parse(i.startedAt),
      received_bytes: i.receivedBytes,
      stored_bytes: i.storedBytes,
      sessions: i.sessions,
      servers_json: JSON.stringify(i.servers ?? {}),
      reported_at: clock.now(),
    };
    await database.db
      .insertInto("replicator_ingest")
      .values({ replicator_id: replicatorId, ...row })
      .onConflict((oc) => oc.column("replicator_id").doUpdateSet(row))
      .execute();
  }
  return true;
}

/**
 * Adds the PITs a separate replicator reports having made to the catalog,
 * each with its `pit.created` event (once: a PIT the catalog holds already
 * adds nothing). Each PIT is read from the repository, so the catalog holds
 * what the repository holds, whatever the report says. Returns the ids the
 * replicator may forget: recorded now or before, or never to be recorded
 * (no such server, no such PIT, a PIT of another server). A PIT whose read
 * failed otherwise (the repository unreachable) is not among them: the
 * replicator reports it again with its next heartbeat.
 */
export async function recordReplicatorPits(
  database: Database,
  clock: Clock,
  repo: (() => Promise<Repository>) | undefined,
  reports: readonly { serverId: string; pitId: string }[],
  log: Pick<Logger, "warn"> = silentLogger,
): Promise<string[]> {
  if (repo === undefined || reports.length === 0) return [];
  const servers = new Map(
    (
      await database.db
        .selectFrom("servers")
        .select(["id", "name"])
        .where(
          "id",
          "in",
          reports.map((r) => r.serverId),
        )
        .execute()
    ).map((s) => [s.id, s.name]),
  );
  const repository = await repo();
  const handled: string[] = [];
  const recorded = new Map<string, string>();
  for (const { serverId, pitId } of reports) {
    const name = servers.get(serverId);
    if (name === undefined) {
      handled.push(pitId);
      continue;
    }
    try {
      const pit = await readPit(repository, pitId);
      if (pit.server !== name) {
        log.warn(
          { pit: pitId, serverId, pitServer: pit.server },
          "a replicator reported a PIT of another server",
        );
      } else {
        await recordPit(database, repository.config.id, serverId, pit, clock);
        recorded.set(serverId, name);
      }
      handled.push(pitId);
    } catch (err) {
      if (err instanceof LifeboatError && err.code === "PIT_NOT_FOUND") {
        log.warn({ pit: pitId, serverId }, "a replicator reported a PIT the repository does not hold");
        handled.push(pitId);
      } else {
        log.warn({ pit: pitId, err: String(err) }, "cannot add a replicator's PIT to the catalog yet");
      }
    }
  }
  // As for the embedded replicator's PITs: the server's retention policy, once per server.
  for (const [serverId, name] of recorded)
    await applyRetention(database, repository, serverId, name).catch((err: unknown) =>
      log.warn({ serverId, err: String(err) }, "cannot apply the retention policy after a replicator's PIT"),
    );
  return handled;
}

/**
 * Decommissions a server or a replicator: marks the row, revokes every
 * certificate of that identity and appends an event, in one transaction.
 * Returns the row's id and name, or undefined when `key` (id or name) names
 * nothing that is still active.
 */
export async function decommission(
  database: Database,
  clock: Clock,
  kind: "server" | "replicator",
  key: string,
): Promise<{ id: string; name: string; revoked: number } | undefined> {
  const table = kind === "server" ? "servers" : "replicators";
  return database.db.transaction().execute(async (trx) => {
    await lockForAppend(trx, database.dialect, "events");
    const row = await trx
      .selectFrom(table)
      .select(["id", "name"])
      .where((eb) => eb.or([eb("id", "=", key), eb("name", "=", key)]))
      .where("decommissioned_at", "is", null)
      .executeTakeFirst();
    if (row === undefined) return undefined;
    const now = clock.now();
    await trx
      .updateTable(table)
      .set({ decommissioned_at: now, state: "DECOMMISSIONED" })
      .where("id", "=", row.id)
      .execute();
    const revoked = await trx
      .updateTable("certificates")
      .set({ revoked_at: now })
      .where("role", "=", kind === "server" ? "agent" : "replicator")
      .where("subject_id", "=", row.id)
      .where("revoked_at", "is", null)
      .executeTakeFirst();
    await appendEventIn(
      trx,
      database.dialect,
      [
        {
          type: `${kind}.decommissioned`,
          serverId: kind === "server" ? row.id : null,
          payload: kind === "server" ? { name: row.name } : { replicatorId: row.id, name: row.name },
        },
      ],
      clock,
    );
    return { id: row.id, name: row.name, revoked: Number(revoked.numUpdatedRows) };
  });
}
