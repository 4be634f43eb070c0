import { EventEmitter } from "node:events";
import { setTimeout as delay } from "node:timers/promises";
import { type Clock, isLifeboatError } from "../base/index.js";
import type {
  AgentCommand,
  AgentCommandKind,
  AgentCommandState,
  Database,
  GroupPit,
  PitRow,
  Server,
} from "./db/index.js";
import { httpError } from "./http-error.js";
import { createJob, logJobStep } from "./jobs.js";
import { newId } from "./secrets.js";

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
export const COMMAND_DEADLINE_MS = 10 * 60_000;
export const REDELIVER_AFTER_MS = 60_000;
export const DEFAULT_BARRIER_TIMEOUT_MS = 1500;
export const CONSISTENCY_LEVELS = ["application", "filesystem", "crash", "none"] as const;
export type ConsistencyLevel = (typeof CONSISTENCY_LEVELS)[number];
export const GROUP_NAME = /^[a-z0-9][a-z0-9-]{0,62}$/;

const FINISHED: readonly AgentCommandState[] = ["done", "failed", "expired"];
const PIT_KINDS: ReadonlySet<AgentCommandKind> = new Set(["make-pit", "group-pit"]);

export interface CommandView {
  id: string;
  serverId: string;
  kind: AgentCommandKind;
  params: Record<string, unknown>;
  state: AgentCommandState;
  createdAt: string;
  updatedAt: string;
  deadlineAt: string;
  result: Record<string, unknown> | null;
  error: { code: string; message: string } | null;
  groupPitId: string | null;
  jobId: string | null;
}

export interface GroupPitView {
  id: string;
  group: string;
  state: string;
  takenAt: string | null;
  jobId: string;
  createdAt: string;
  members: {
    serverId: string;
    commandId: string;
    state: string;
    result: Record<string, unknown> | null;
    error: { code: string; message: string } | null;
  }[];
}

export type Outcome =
  { ok: true; result: Record<string, unknown> } | { ok: false; code: string; message: string };

/**
 * Wakes waiters in this process: a long poll when a command for its server
 * is created, a barrier when a member of its group PIT froze or failed.
 * Waiters re-check the database as well, which covers other processes.
 */
export class CommandNotifier {
  private readonly emitter = new EventEmitter().setMaxListeners(0);
  private closed = false;

  notify(key: string): void {
    this.emitter.emit(key);
  }

  /** Resolves after `ms`, on notify(key), on abort of `signal` or on close(), whichever is first. */
  async wait(key: string, ms: number, signal?: AbortSignal): Promise<void> {
    if (this.closed || signal?.aborted === true || ms <= 0) return;
    const stop = new AbortController();
    const wake = () => stop.abort();
    this.emitter.once(key, wake);
    this.emitter.once("close", wake);
    signal?.addEventListener("abort", wake, { once: true });
    try {
      await delay(ms, undefined, { signal: stop.signal }).catch(() => undefined);
    } finally {
      this.emitter.removeListener(key, wake);
      this.emitter.removeListener("close", wake);
      signal?.removeEventListener("abort", wake);
    }
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Wakes every waiter now and later ones at once: the app is closing. */
  close(): void {
    this.closed = true;
    this.emitter.emit("close");
  }
}

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

/** Queues one group-pit command for every active server of `group`, under one group PIT and job. */
export async function requestGroupPit(
  database: Database,
  clock: Clock,
  group: string,
  input: { consistency?: ConsistencyLevel; barrierTimeoutMs?: number; createdBy: string },
): Promise<{ groupPit: GroupPit; jobId: string; commands: { serverId: string; commandId: string }[] }> {
  const servers = await database.db
    .selectFrom("servers")
    .select(["id", "name"])
    .where("group_name", "=", group)
    .where("decommissioned_at", "is", null)
    .orderBy("name")
    .execute();
  if (servers.length === 0)
    throw httpError(
      404,
      "GROUP_EMPTY",
      `no active server is in consistency group ${group}`,
      "put servers in the group with `lifeboat servers group SERVER GROUP`",
    );
  const barrierTimeoutMs = input.barrierTimeoutMs ?? DEFAULT_BARRIER_TIMEOUT_MS;
  const job = await createJob(database, clock, {
    type: "group-pit",
    serverIds: servers.map((s) => s.id),
    params: { group, ...(input.consistency !== undefined ? { consistency: input.consistency } : {}) },
    createdBy: input.createdBy,
  });
  const now = clock.now();
  const groupPit: GroupPit = {
    id: newId("gpit"),
    group_name: group,
    state: "freezing",
    taken_at: null,
    barrier_timeout_ms: barrierTimeoutMs,
    job_id: job.id,
    created_at: now,
    updated_at: now,
  };
  const rows = servers.map((s) =>
    newCommand(
      clock,
      s.id,
      "group-pit",
      {
        groupPitId: groupPit.id,
        barrierTimeoutMs,
        ...(input.consistency !== undefined ? { consistency: input.consistency } : {}),
      },
      { jobId: job.id, groupPitId: groupPit.id },
    ),
  );
  await database.db.transaction().execute(async (trx) => {
    await trx.insertInto("group_pits").values(groupPit).execute();
    await trx.insertInto("agent_commands").values(rows).execute();
  });
  await logJobStep(database, clock, job.id, {
    message: `group PIT ${groupPit.id} of group ${group} requested from ${servers.map((s) => s.name).join(", ")}`,
    state: "running",
  });
  return {
    groupPit,
    jobId: job.id,
    commands: rows.map((r) => ({ serverId: r.server_id, commandId: r.id })),
  };
}

function newCommand(
  clock: Clock,
  serverId: string,
  kind: AgentCommandKind,
  params: Record<string, unknown>,
  links: { jobId?: string; groupPitId?: string },
): AgentCommand {
  const now = clock.now();
  return {
    id: newId("cmd"),
    server_id: serverId,
    kind,
    params_json: JSON.stringify(params),
    state: "queued",
    created_at: now,
    updated_at: now,
    delivered_at: null,
    deadline_at: now + COMMAND_DEADLINE_MS,
    result_json: null,
    error_code: null,
    error_message: null,
    group_pit_id: links.groupPitId ?? null,
    job_id: links.jobId ?? null,
  };
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

/** Moves an unfinished command to a finished state; false when it was already finished. */
async function finish(
  database: Database,
  clock: Clock,
  row: AgentCommand,
  state: AgentCommandState,
  result: Record<string, unknown> | null,
  error: { code: string; message: string } | null,
): Promise<boolean> {
  const r = await database.db
    .updateTable("agent_commands")
    .set({
      state,
      updated_at: clock.now(),
      result_json: result === null ? null : JSON.stringify(result),
      error_code: error?.code ?? null,
      error_message: error?.message ?? null,
    })
    .where("id", "=", row.id)
    .where("state", "not in", FINISHED)
    .executeTakeFirst();
  return Number(r.numUpdatedRows) === 1;
}

/** Logs the end of a job; a job someone else already finished stays as it is. */
async function finishJob(
  database: Database,
  clock: Clock,
  jobId: string | null,
  state: "succeeded" | "failed",
  message: string,
  result?: unknown,
): Promise<void> {
  if (jobId === null) return;
  try {
    await logJobStep(database, clock, jobId, {
      level: state === "failed" ? "error" : "info",
      message,
      state,
      ...(result !== undefined ? { result } : {}),
    });
  } catch (err) {
    if (!isLifeboatError(err, "JOB_FINISHED")) throw err;
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

/** A command of `serverId` (404 COMMAND_NOT_FOUND for another server's, as if it did not exist). */
async function ownCommand(database: Database, serverId: string, id: string): Promise<AgentCommand> {
  const row = await database.db
    .selectFrom("agent_commands")
    .selectAll()
    .where("id", "=", id)
    .executeTakeFirst();
  if (row === undefined || row.server_id !== serverId)
    throw httpError(404, "COMMAND_NOT_FOUND", `no command ${id} for this server`, "fetch commands again");
  return row;
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

/** A member makes its PIT only after the barrier released the group (never on its own time). */
async function mustBeReleased(database: Database, groupPitId: string): Promise<void> {
  const g = await database.db
    .selectFrom("group_pits")
    .select(["state"])
    .where("id", "=", groupPitId)
    .executeTakeFirst();
  if (g !== undefined && g.state !== "released" && g.state !== "done")
    throw httpError(
      409,
      "GROUP_PIT_NOT_RELEASED",
      `group PIT ${groupPitId} is ${g.state}: a member's PIT counts only after every member froze`,
      "report frozen first and make the PIT only when told to proceed",
    );
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

/** A member of a group PIT finished: abort the group (failed before release), fail it, or finish it. */
async function memberFinished(
  database: Database,
  clock: Clock,
  groupPitId: string,
  error: { code: string; message: string } | null,
): Promise<void> {
  if (error !== null) {
    const aborted = await abortGroupPit(database, clock, groupPitId, `${error.code}: ${error.message}`);
    if (aborted) return;
    const g = await database.db
      .updateTable("group_pits")
      .set({ state: "failed", updated_at: clock.now() })
      .where("id", "=", groupPitId)
      .where("state", "=", "released")
      .returning(["job_id"])
      .executeTakeFirst();
    if (g !== undefined)
      await finishJob(
        database,
        clock,
        g.job_id,
        "failed",
        `a member failed: ${error.code}: ${error.message}`,
      );
    return;
  }
  const members = await database.db
    .selectFrom("agent_commands")
    .select(["state", "result_json"])
    .where("group_pit_id", "=", groupPitId)
    .execute();
  if (!members.every((m) => m.state === "done")) return;
  const g = await database.db
    .updateTable("group_pits")
    .set({ state: "done", updated_at: clock.now() })
    .where("id", "=", groupPitId)
    .where("state", "=", "released")
    .returning(["job_id", "taken_at"])
    .executeTakeFirst();
  if (g !== undefined)
    await finishJob(database, clock, g.job_id, "succeeded", `group PIT ${groupPitId} made`, {
      groupPitId,
      pits: members.map((m) => JSON.parse(m.result_json ?? "null") as unknown),
    });
}

/**
 * Aborts a group PIT still at its barrier: every unfinished member fails
 * with GROUP_PIT_ABORTED and the job fails. False when the group PIT was no
 * longer freezing (released or already ended): then nothing changed.
 */
export async function abortGroupPit(
  database: Database,
  clock: Clock,
  groupPitId: string,
  reason: string,
): Promise<boolean> {
  const g = await database.db
    .updateTable("group_pits")
    .set({ state: "aborted", updated_at: clock.now() })
    .where("id", "=", groupPitId)
    .where("state", "=", "freezing")
    .returning(["job_id"])
    .executeTakeFirst();
  if (g === undefined) return false;
  const message = `group PIT ${groupPitId} aborted: ${reason}`;
  const members = await database.db
    .selectFrom("agent_commands")
    .selectAll()
    .where("group_pit_id", "=", groupPitId)
    .execute();
  for (const m of members)
    await finish(database, clock, m, "failed", null, { code: "GROUP_PIT_ABORTED", message });
  await finishJob(database, clock, g.job_id, "failed", `GROUP_PIT_ABORTED: ${message}`);
  return true;
}

export type BarrierState = { proceed: true; takenAt: number } | { proceed: false } | { waiting: true };

/**
 * The agent of `serverId` froze for group-pit command `id`: recorded, then
 * the barrier is checked (released when every member froze).
 */
export async function reportFrozen(
  database: Database,
  clock: Clock,
  serverId: string,
  id: string,
): Promise<{ groupPitId: string; timeoutMs: number; state: BarrierState }> {
  const row = await ownCommand(database, serverId, id);
  if (row.kind !== "group-pit" || row.group_pit_id === null)
    throw httpError(409, "COMMAND_NOT_GROUP_PIT", `command ${id} is a ${row.kind}, not a group-pit`, "");
  const groupPitId = row.group_pit_id;
  const timeoutMs =
    Number((JSON.parse(row.params_json) as { barrierTimeoutMs?: unknown }).barrierTimeoutMs) ||
    DEFAULT_BARRIER_TIMEOUT_MS;
  if (row.state === "delivered" || row.state === "queued")
    await database.db
      .updateTable("agent_commands")
      .set({ state: "frozen", updated_at: clock.now() })
      .where("id", "=", id)
      .where("state", "in", ["queued", "delivered"])
      .execute();
  return { groupPitId, timeoutMs, state: await checkBarrier(database, clock, groupPitId) };
}

/** Where the barrier of a group PIT stands; releases it when every member froze. */
export async function checkBarrier(
  database: Database,
  clock: Clock,
  groupPitId: string,
): Promise<BarrierState> {
  const g = await database.db
    .selectFrom("group_pits")
    .selectAll()
    .where("id", "=", groupPitId)
    .executeTakeFirst();
  if (g === undefined || g.state === "aborted" || g.state === "failed") return { proceed: false };
  if (g.taken_at !== null) return { proceed: true, takenAt: Number(g.taken_at) };
  const members = await database.db
    .selectFrom("agent_commands")
    .select("state")
    .where("group_pit_id", "=", groupPitId)
    .execute();
  if (!members.every((m) => m.state === "frozen")) return { waiting: true };
  const now = clock.now();
  await database.db
    .updateTable("group_pits")
    .set({ state: "released", taken_at: now, updated_at: now })
    .where("id", "=", groupPitId)
    .where("state", "=", "freezing")
    .execute();
  // Another request may have released (or aborted) it first: read what won.
  return checkBarrier(database, clock, groupPitId);
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
  return row === undefined ? undefined : commandView(row);
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
    members: members.map((m) => {
      const v = commandView(m);
      return { serverId: v.serverId, commandId: v.id, state: v.state, result: v.result, error: v.error };
    }),
  };
}

export function commandView(r: AgentCommand): CommandView {
  const iso = (ms: number) => new Date(Number(ms)).toISOString();
  return {
    id: r.id,
    serverId: r.server_id,
    kind: r.kind,
    params: JSON.parse(r.params_json) as Record<string, unknown>,
    state: r.state,
    createdAt: iso(r.created_at),
    updatedAt: iso(r.updated_at),
    deadlineAt: iso(r.deadline_at),
    result: r.result_json === null ? null : (JSON.parse(r.result_json) as Record<string, unknown>),
    error: r.error_code === null ? null : { code: r.error_code, message: r.error_message ?? "" },
    groupPitId: r.group_pit_id,
    jobId: r.job_id,
  };
}
