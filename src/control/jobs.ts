import { type Clock, LifeboatError } from "../base/index.js";
import type { Transaction } from "kysely";
import {
  type Database,
  type Job,
  type JobLogLine,
  type JobState,
  type JobType,
  type Schema,
  appendEventIn,
  lockForAppend,
} from "./db/index.js";
import { newId } from "./secrets.js";

/**
 * Jobs: drills, recoveries and failbacks, each with a step-by-step log.
 * Other domains create and advance them through these functions (the launch
 * code will); operators read them over the API. A log line's seq counts from
 * 1 within its job and is assigned under the job's row lock, so two writers
 * never take the same number. A job that reaches a finished state appends a
 * `job.finished` event in the same transaction.
 */
export const JOB_STATES = ["pending", "running", "succeeded", "failed", "terminated"] as const;
const FINISHED: ReadonlySet<string> = new Set(["succeeded", "failed", "terminated"]);

export interface NewJobInput {
  type: JobType;
  serverIds: string[];
  params?: Record<string, unknown>;
  /** The actor that asked for it ("apikey:key_...", "system"). */
  createdBy: string;
  /** The plan run this job is a wave of. */
  parentJobId?: string;
}

export interface JobView {
  id: string;
  type: string;
  state: string;
  serverIds: string[];
  params: Record<string, unknown>;
  result: unknown;
  createdAt: string;
  createdBy: string;
  updatedAt: string;
  finishedAt: string | null;
  parentJobId: string | null;
  /** When an operator asked to terminate it (the job ends "terminated" once its instance acted). */
  terminateRequestedAt: string | null;
}

export interface JobLogView {
  seq: number;
  at: string;
  level: string;
  message: string;
}

export async function createJob(database: Database, clock: Clock, input: NewJobInput): Promise<JobView> {
  const now = clock.now();
  const row: Job = {
    id: newId("job"),
    type: input.type,
    state: "pending",
    server_ids_json: JSON.stringify(input.serverIds),
    params_json: JSON.stringify(input.params ?? {}),
    result_json: null,
    created_at: now,
    created_by: input.createdBy,
    claimed_by: null,
    claimed_at: null,
    finished_at: null,
    updated_at: now,
    parent_job_id: input.parentJobId ?? null,
    terminate_requested_at: null,
  };
  await database.db.insertInto("jobs").values(row).execute();
  return jobView(row);
}

/**
 * Appends a log line and, when `state` is given, moves the job to it (a
 * finished job's state no longer changes: JOB_FINISHED). Returns the line.
 */
export async function logJobStep(
  database: Database,
  clock: Clock,
  jobId: string,
  line: {
    level?: JobLogLine["level"];
    message: string;
    state?: JobState;
    result?: unknown;
    /** Allows a finished job to become "terminated" (its outputs were removed). */
    fromFinished?: boolean;
    /** Only while this instance holds the job's claim (JOB_CLAIM_LOST otherwise): a run taken over records nothing. */
    claimedBy?: string;
  },
): Promise<JobLogView> {
  return database.db.transaction().execute(async (trx) => {
    // The events lock before the job's row lock: the order every writer keeps (db/events.ts).
    const finishing = line.state !== undefined && FINISHED.has(line.state);
    if (finishing) await lockForAppend(trx, database.dialect, "events");
    let q = trx
      .selectFrom("jobs")
      .select(["id", "type", "state", "server_ids_json", "claimed_by"])
      .where("id", "=", jobId);
    if (database.dialect === "postgres") q = q.forUpdate();
    const job = await q.executeTakeFirst();
    if (job === undefined)
      throw new LifeboatError("JOB_NOT_FOUND", `no job ${jobId}`, {
        hint: "list jobs with `lifeboat jobs list`",
      });
    if (line.claimedBy !== undefined && job.claimed_by !== line.claimedBy)
      throw new LifeboatError(
        "JOB_CLAIM_LOST",
        `job ${jobId} is now run by ${job.claimed_by ?? "no instance"}, not ${line.claimedBy}`,
        { hint: "nothing to do: the instance that took the job over finishes it" },
      );
    const now = clock.now();
    const reopen = line.fromFinished === true && line.state === "terminated";
    if (line.state !== undefined && line.state !== job.state && FINISHED.has(job.state) && !reopen) {
      throw new LifeboatError(
        "JOB_FINISHED",
        `job ${jobId} is already ${job.state}; its state no longer changes`,
        {
          hint: "start a new job",
        },
      );
    }
    const last = await trx
      .selectFrom("job_log")
      .select("seq")
      .where("job_id", "=", jobId)
      .orderBy("seq", "desc")
      .limit(1)
      .executeTakeFirst();
    const entry: JobLogLine = {
      job_id: jobId,
      seq: Number(last?.seq ?? 0) + 1,
      at: now,
      level: line.level ?? "info",
      message: line.message,
    };
    await trx.insertInto("job_log").values(entry).execute();
    await trx
      .updateTable("jobs")
      .set({
        updated_at: now,
        ...(line.state !== undefined ? { state: line.state } : {}),
        ...(line.state !== undefined && FINISHED.has(line.state) ? { finished_at: now } : {}),
        ...(line.result !== undefined ? { result_json: JSON.stringify(line.result) } : {}),
      })
      .where("id", "=", jobId)
      .execute();
    if (finishing && !FINISHED.has(job.state))
      await appendJobFinished(trx, database, clock, job, line.state!);
    return logView(entry);
  });
}

export async function listJobs(
  database: Database,
  filter: { serverId?: string; state?: string; limit?: number } = {},
): Promise<JobView[]> {
  let q = database.db.selectFrom("jobs").selectAll().orderBy("created_at", "desc").orderBy("id");
  if (filter.state !== undefined) q = q.where("state", "=", filter.state);
  const rows = (await q.execute()).map(jobView);
  const matching =
    filter.serverId === undefined ? rows : rows.filter((j) => j.serverIds.includes(filter.serverId!));
  return matching.slice(0, filter.limit ?? 1000);
}

export async function getJob(
  database: Database,
  jobId: string,
): Promise<{ job: JobView; log: JobLogView[] } | undefined> {
  const row = await database.db.selectFrom("jobs").selectAll().where("id", "=", jobId).executeTakeFirst();
  if (row === undefined) return undefined;
  const log = await database.db
    .selectFrom("job_log")
    .selectAll()
    .where("job_id", "=", jobId)
    .orderBy("seq")
    .execute();
  return { job: jobView(row), log: log.map(logView) };
}

function jobView(j: Job): JobView {
  const iso = (ms: number | null) => (ms === null ? null : new Date(Number(ms)).toISOString());
  return {
    id: j.id,
    type: j.type,
    state: j.state,
    serverIds: JSON.parse(j.server_ids_json) as string[],
    params: JSON.parse(j.params_json) as Record<string, unknown>,
    result: j.result_json === null ? null : (JSON.parse(j.result_json) as unknown),
    createdAt: iso(j.created_at)!,
    createdBy: j.created_by,
    updatedAt: iso(j.updated_at ?? j.created_at)!,
    finishedAt: iso(j.finished_at),
    parentJobId: j.parent_job_id ?? null,
    terminateRequestedAt: iso(j.terminate_requested_at ?? null),
  };
}

function logView(l: JobLogLine): JobLogView {
  return { seq: Number(l.seq), at: new Date(Number(l.at)).toISOString(), level: l.level, message: l.message };
}

/** Log lines after `afterSeq` (the follow of `jobs logs --follow`). */
export async function jobLogAfter(
  database: Database,
  jobId: string,
  afterSeq: number,
): Promise<JobLogView[]> {
  const rows = await database.db
    .selectFrom("job_log")
    .selectAll()
    .where("job_id", "=", jobId)
    .where("seq", ">", afterSeq)
    .orderBy("seq")
    .limit(1000)
    .execute();
  return rows.map(logView);
}

/**
 * An operator's terminate: a pending job ends at once; a running job, or a
 * finished drill whose outputs are still there, gets a request the instance
 * that ran it acts on (JobRunner). A finished recovery is the recovered
 * server itself and is not removed (JOB_FINISHED).
 */
export async function requestTerminate(database: Database, clock: Clock, jobId: string): Promise<JobView> {
  const row = await database.db.selectFrom("jobs").selectAll().where("id", "=", jobId).executeTakeFirst();
  if (row === undefined)
    throw new LifeboatError("JOB_NOT_FOUND", `no job ${jobId}`, {
      hint: "list jobs with `lifeboat jobs list`",
    });
  if (row.state === "terminated") return jobView(row);
  if (FINISHED.has(row.state) && row.type !== "drill")
    throw new LifeboatError(
      "JOB_FINISHED",
      `job ${jobId} (${row.type}) is already ${row.state}; only a drill's outputs are removed by terminate`,
      {
        hint: "a recovery's outputs are the recovered server: remove them by hand when they are no longer needed",
      },
    );
  const now = clock.now();
  await database.db
    .updateTable("jobs")
    .set({ terminate_requested_at: now, updated_at: now })
    .where("id", "=", jobId)
    .where("terminate_requested_at", "is", null)
    .execute();
  if (row.state === "pending") {
    const still = await database.db.transaction().execute(async (trx) => {
      await lockForAppend(trx, database.dialect, "events");
      const r = await trx
        .updateTable("jobs")
        .set({ state: "terminated", finished_at: now, updated_at: now })
        .where("id", "=", jobId)
        .where("state", "=", "pending")
        .executeTakeFirst();
      if (Number(r.numUpdatedRows) === 1) await appendJobFinished(trx, database, clock, row, "terminated");
      return r;
    });
    if (Number(still.numUpdatedRows) === 1)
      await logJobStep(database, clock, jobId, { message: "terminated by an operator before it started" });
  } else {
    await logJobStep(database, clock, jobId, { message: "an operator asked to terminate it" });
  }
  return (await getJob(database, jobId))!.job;
}

/** The `job.finished` event, in the transaction that finished the job (which holds the events lock). */
async function appendJobFinished(
  trx: Transaction<Schema>,
  database: Database,
  clock: Clock,
  job: Pick<Job, "id" | "type" | "server_ids_json">,
  state: string,
): Promise<void> {
  const serverIds = JSON.parse(job.server_ids_json) as string[];
  await appendEventIn(
    trx,
    database.dialect,
    [
      {
        type: "job.finished",
        serverId: serverIds.length === 1 ? serverIds[0] : null,
        payload: { jobId: job.id, type: job.type, state, serverIds },
      },
    ],
    clock,
  );
}
