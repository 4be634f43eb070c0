import type { Clock } from "../base/index.js";
import type { Database, GroupPit } from "./db/index.js";
import {
  type ConsistencyLevel,
  DEFAULT_BARRIER_TIMEOUT_MS,
  finish,
  finishJob,
  newCommand,
  ownCommand,
} from "./command-rows.js";
import { httpError } from "./http-error.js";
import { createJob, logJobStep } from "./jobs.js";
import { newId } from "./secrets.js";

/**
 * Group PITs: one consistency point across the servers of a consistency
 * group. Each member's agent gets a group-pit command, freezes, reports
 * frozen and waits at the barrier; when the last member froze the group PIT
 * is released with one takenAt for all. If the barrier times out, or a
 * member fails or expires first, the group PIT is aborted: every unfinished
 * member's command fails with GROUP_PIT_ABORTED. Every move is a
 * conditional update (state = what it was), so requests racing in one or
 * several control-plane processes agree on one outcome.
 */
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

/** A member makes its PIT only after the barrier released the group (never on its own time). */
export async function mustBeReleased(database: Database, groupPitId: string): Promise<void> {
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

/** A member of a group PIT finished: abort the group (failed before release), fail it, or finish it. */
export async function memberFinished(
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
