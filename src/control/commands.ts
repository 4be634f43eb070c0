import { setTimeout as delay } from "node:timers/promises";
import type { Clock } from "../base/index.js";
import {
  type CommandView,
  type ConsistencyLevel,
  FINISHED,
  type Outcome,
  PIT_KINDS,
  REDELIVER_AFTER_MS,
  commandView,
  finish,
  finishJob,
  newCommand,
  ownCommand,
} from "./command-rows.js";
import type { AgentCommand, AgentCommandState, Database, PitRow, Server } from "./db/index.js";
import { type GroupPitView, memberFinished, mustBeReleased } from "./group-pits.js";
import { httpError } from "./http-error.js";
import { createJob, logJobStep } from "./jobs.js";

/**
 * Commands for agents. Agents are outbound-only, so the control plane cannot
 * call them: it queues a command and the agent fetches it with a long poll
 * (GET /api/v1/agent/commands), then reports the outcome. A command moves
 * queued → delivered → (frozen, group PITs only) → done | failed | expired.
 *
 * - Only the command's server sees or completes it.
 * - A command delivered and not finished is delivered again after
 *   REDELIVER_AFTER_MS (the agent restarted and lost it); agents treat a
 *   command id they already ran as done.
 * - An unfinished command past its deadline is expired; the sweep runs
 *   lazily whenever commands are read, so no timer has to own it.
 * - A group PIT is one consistency point across the servers of a group: each
 *   member freezes, reports frozen, and waits at the barrier; when the last
 *   one froze, all proceed with one takenAt. If the barrier times out or a
 *   member fails first, the group PIT is aborted and every member's command
 *   fails with GROUP_PIT_ABORTED.
 *
 * Decisions (deadlines, redelivery) use the injected clock; waiting for
 * another request or process (the long poll, the barrier, the catalog) uses
 * real timers, because it waits for the world and not for the clock.
 */
/** A server by id or name, decommissioned or not. */
export async function findServer(database: Database, key: string): Promise<Server | undefined> {
  return database.db
    .selectFrom("servers")
    .selectAll()
    .where((eb) => eb.or([eb("id", "=", key), eb("name", "=", key)]))
    .executeTakeFirst();
}

function activeOrRefuse(server: Server): void {
  if (server.decommissioned_at !== null)
    throw httpError(
      409,
      "SERVER_DECOMMISSIONED",
      `server ${server.name} was decommissioned; it takes no commands`,
      "register the server again to protect it",
    );
}

/** Queues a make-pit command for `server` and a job that shows it. */
export async function requestPit(
  database: Database,
  clock: Clock,
  server: Server,
  input: { consistency?: ConsistencyLevel; createdBy: string },
): Promise<{ command: CommandView; jobId: string }> {
  activeOrRefuse(server);
  const params = input.consistency !== undefined ? { consistency: input.consistency } : {};
  const job = await createJob(database, clock, {
    type: "pit",
    serverIds: [server.id],
    params,
    createdBy: input.createdBy,
  });
  const row = newCommand(clock, server.id, "make-pit", params, { jobId: job.id });
  await database.db.insertInto("agent_commands").values(row).execute();
  await logJobStep(database, clock, job.id, {
    message: `PIT of server ${server.name} requested (command ${row.id}); waiting for its agent`,
    state: "running",
  });
  return { command: commandView(row), jobId: job.id };
}

/**
 * Expires unfinished commands past their deadline (of one server, or the
 * given ids), fails their jobs and aborts their group PITs. Safe from
 * several processes at once: each row changes state once.
 */
export async function sweepExpired(
  database: Database,
  clock: Clock,
  scope: { serverId?: string; ids?: string[] },
): Promise<void> {
  const now = clock.now();
  let q = database.db
    .selectFrom("agent_commands")
    .selectAll()
    .where("state", "not in", FINISHED)
    .where("deadline_at", "<", now);
  if (scope.serverId !== undefined) q = q.where("server_id", "=", scope.serverId);
  if (scope.ids !== undefined) {
    if (scope.ids.length === 0) return;
    q = q.where("id", "in", scope.ids);
  }
  for (const row of await q.execute()) {
    const error = {
      code: "COMMAND_EXPIRED",
      message: `command ${row.id} (${row.kind}) was not finished by its deadline`,
    };
    if (!(await finish(database, clock, row, "expired", null, error))) continue;
    if (row.group_pit_id !== null) await memberFinished(database, clock, row.group_pit_id, error);
    else await finishJob(database, clock, row.job_id, "failed", `${error.code}: ${error.message}`);
  }
}

/**
 * The commands the agent of `serverId` should run now, marked delivered:
 * every queued one, and those delivered more than REDELIVER_AFTER_MS ago and
 * not finished. Two polls racing for one command: one of them gets it.
 */
export async function takeCommands(
  database: Database,
  clock: Clock,
  serverId: string,
): Promise<AgentCommand[]> {
  await sweepExpired(database, clock, { serverId });
  const now = clock.now();
  const rows = await database.db
    .selectFrom("agent_commands")
    .selectAll()
    .where("server_id", "=", serverId)
    .where((eb) =>
      eb.or([
        eb("state", "=", "queued"),
        eb.and([
          eb("state", "in", ["delivered", "frozen"]),
          eb("delivered_at", "<=", now - REDELIVER_AFTER_MS),
        ]),
      ]),
    )
    .orderBy("created_at")
    .orderBy("id")
    .execute();
  const taken: AgentCommand[] = [];
  for (const row of rows) {
    const state: AgentCommandState = row.state === "queued" ? "delivered" : row.state;
    let u = database.db
      .updateTable("agent_commands")
      .set({ state, delivered_at: now, updated_at: now })
      .where("id", "=", row.id)
      .where("state", "=", row.state);
    u =
      row.delivered_at === null
        ? u.where("delivered_at", "is", null)
        : u.where("delivered_at", "=", row.delivered_at);
    if (Number((await u.executeTakeFirst()).numUpdatedRows) === 1)
      taken.push({ ...row, state, delivered_at: now });
  }
  return taken;
}

const RANK: Record<string, number> = { none: 0, crash: 1, filesystem: 2, application: 3 };

/**
 * The agent of `serverId` reports the outcome of command `id`. For a PIT the
 * result names the PIT (pitId); the PIT's seq, time, consistency and disks
 * are taken from the catalog, waiting up to `catalogWaitMs` for the
 * replicator to record it, else from what the agent reported (marked
 * `cataloged: false`). Reporting the same outcome again answers the same;
 * another outcome of a finished command is 409 COMMAND_FINISHED.
 */
export async function completeCommand(
  database: Database,
  clock: Clock,
  serverId: string,
  id: string,
  outcome: Outcome,
  opts: { catalogWaitMs?: number } = {},
): Promise<CommandView> {
  await sweepExpired(database, clock, { ids: [id] });
  const row = await ownCommand(database, serverId, id);
  if (FINISHED.includes(row.state)) return sameOutcome(row, outcome);
  let result: Record<string, unknown> | null = null;
  let error: { code: string; message: string } | null = null;
  if (!outcome.ok) error = { code: outcome.code, message: outcome.message };
  else if (PIT_KINDS.has(row.kind)) {
    if (row.group_pit_id !== null) await mustBeReleased(database, row.group_pit_id);
    const pitId = outcome.result.pitId;
    if (typeof pitId !== "string" || pitId === "")
      throw httpError(400, "REQUEST_INVALID", "body.result.pitId: a PIT command's result names its PIT", "");
    const pit = await lookupPit(database, pitId, opts.catalogWaitMs ?? 3000);
    if (pit !== undefined && pit.server_id !== null && pit.server_id !== serverId)
      throw httpError(
        403,
        "AUTH_FORBIDDEN",
        `PIT ${pitId} is not this server's`,
        "report the PIT the agent made",
      );
    result = pit !== undefined ? pitResult(pit) : { ...reported(outcome.result), pitId, cataloged: false };
    const wanted = (JSON.parse(row.params_json) as { consistency?: string }).consistency;
    const got = typeof result.consistency === "string" ? result.consistency : undefined;
    if (wanted !== undefined && got !== undefined && (RANK[got] ?? 0) < (RANK[wanted] ?? 0))
      error = {
        code: "PIT_CONSISTENCY_TOO_LOW",
        message: `PIT ${pitId} is ${got}-consistent; ${wanted} was asked for`,
      };
  } else result = outcome.result;
  const state: AgentCommandState = error === null ? "done" : "failed";
  if (!(await finish(database, clock, row, state, result, error))) {
    const again = await ownCommand(database, serverId, id);
    return sameOutcome(again, outcome);
  }
  const done = { ...row, state, result_json: result === null ? null : JSON.stringify(result) };
  if (row.group_pit_id !== null) await memberFinished(database, clock, row.group_pit_id, error);
  else if (error !== null)
    await finishJob(database, clock, row.job_id, "failed", `${error.code}: ${error.message}`);
  else
    await finishJob(
      database,
      clock,
      row.job_id,
      "succeeded",
      PIT_KINDS.has(row.kind) ? `PIT ${String(result?.pitId)} made` : `${row.kind} done`,
      result,
    );
  return commandView({
    ...done,
    error_code: error?.code ?? null,
    error_message: error?.message ?? null,
  });
}

function sameOutcome(row: AgentCommand, outcome: Outcome): CommandView {
  const stored = row.result_json === null ? null : (JSON.parse(row.result_json) as Record<string, unknown>);
  const same = outcome.ok
    ? row.state === "done" && (stored?.pitId === undefined || stored.pitId === outcome.result.pitId)
    : row.state === "failed" && row.error_code === outcome.code;
  if (same) return commandView(row);
  throw httpError(
    409,
    "COMMAND_FINISHED",
    `command ${row.id} is already ${row.state}${row.error_code !== null ? ` (${row.error_code})` : ""}`,
    "drop the command; the control plane has recorded its end",
  );
}

/** What an agent may report about its PIT beyond its id, when the catalog does not have it yet. */
function reported(r: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  if (typeof r.seq === "number") out.seq = r.seq;
  if (typeof r.takenAt === "number") out.takenAt = new Date(r.takenAt).toISOString();
  if (typeof r.takenAt === "string") out.takenAt = r.takenAt;
  if (typeof r.consistency === "string" && r.consistency in RANK) out.consistency = r.consistency;
  if (Array.isArray(r.disks)) out.disks = r.disks;
  return out;
}

async function lookupPit(database: Database, pitId: string, waitMs: number): Promise<PitRow | undefined> {
  const until = Date.now() + waitMs;
  for (;;) {
    const pit = await database.db.selectFrom("pits").selectAll().where("id", "=", pitId).executeTakeFirst();
    if (pit !== undefined || Date.now() >= until) return pit;
    await delay(Math.min(250, Math.max(1, until - Date.now())));
  }
}

function pitResult(p: PitRow): Record<string, unknown> {
  return {
    pitId: p.id,
    seq: Number(p.seq),
    takenAt: new Date(Number(p.time_ms)).toISOString(),
    consistency: p.consistency,
    disks: JSON.parse(p.disks_json) as unknown[],
  };
}

export async function getCommand(
  database: Database,
  clock: Clock,
  id: string,
): Promise<CommandView | undefined> {
  await sweepExpired(database, clock, { ids: [id] });
  const row = await database.db
    .selectFrom("agent_commands")
    .selectAll()
    .where("id", "=", id)
    .executeTakeFirst();
  return row === undefined ? undefined : withCatalog(database, commandView(row));
}

/** A result kept from the agent's report (`cataloged: false`) shows the catalog's PIT once it is there. */
async function withCatalog(database: Database, view: CommandView): Promise<CommandView> {
  const r = view.result;
  if (r?.cataloged !== false || typeof r.pitId !== "string") return view;
  const pit = await lookupPit(database, r.pitId, 0);
  return pit === undefined ? view : { ...view, result: pitResult(pit) };
}

export async function getGroupPit(
  database: Database,
  clock: Clock,
  id: string,
): Promise<GroupPitView | undefined> {
  const ids = (
    await database.db.selectFrom("agent_commands").select("id").where("group_pit_id", "=", id).execute()
  ).map((r) => r.id);
  await sweepExpired(database, clock, { ids });
  const g = await database.db.selectFrom("group_pits").selectAll().where("id", "=", id).executeTakeFirst();
  if (g === undefined) return undefined;
  const members = await database.db
    .selectFrom("agent_commands")
    .selectAll()
    .where("group_pit_id", "=", id)
    .orderBy("server_id")
    .execute();
  return {
    id: g.id,
    group: g.group_name,
    state: g.state,
    takenAt: g.taken_at === null ? null : new Date(Number(g.taken_at)).toISOString(),
    jobId: g.job_id,
    createdAt: new Date(Number(g.created_at)).toISOString(),
    members: await Promise.all(
      members.map(async (m) => {
        const v = await withCatalog(database, commandView(m));
        return { serverId: v.serverId, commandId: v.id, state: v.state, result: v.result, error: v.error };
      }),
    ),
  };
}
