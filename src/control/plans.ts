import { z } from "zod";
import { type Clock, LifeboatError } from "../base/index.js";
import { PROFILE_NAMES, TARGET_KINDS } from "../launch/index.js";
import type { Database, Plan } from "./db/index.js";
import { httpError } from "./http-error.js";
import type { JobHandler, JobRun } from "./job-runner.js";
import { type JobView, createJob, getJob, requestTerminate } from "./jobs.js";
import { createLaunchJob, serverByKey } from "./launch-job.js";
import { newId } from "./secrets.js";

/**
 * Recovery plans: servers launched together at one point in time, in waves
 * (databases before application servers); each wave starts when the one
 * before it succeeded. Running a plan is a job of type "plan" whose waves are
 * launch jobs (parent_job_id = the plan's job).
 */
const name = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, "letters, digits, '.', '_', '-'");
export const planOptionsSchema = z.strictObject({
  target: z.enum(TARGET_KINDS).optional(),
  profile: z.enum(PROFILE_NAMES).optional(),
  format: z.enum(["raw", "qcow2"]).optional(),
  convert: z.boolean().optional(),
  force: z.boolean().optional(),
});
export const planSchema = z.strictObject({
  name,
  description: z.string().max(4096).optional(),
  waves: z
    .array(z.strictObject({ name, servers: z.array(z.string().min(1).max(253)).min(1).max(64) }))
    .min(1)
    .max(32),
  options: planOptionsSchema.default({}),
});
export type PlanInput = z.infer<typeof planSchema>;

export const planRunSchema = z.strictObject({
  mode: z.enum(["drill", "recovery"]).default("drill"),
  /** The plan's point in time: a group PIT at or before it, else each server's latest PIT at or before it. */
  at: z.iso.datetime({ offset: true }).optional(),
});

export interface PlanView {
  id: string;
  name: string;
  description: string | null;
  waves: { name: string; servers: { id: string; name: string }[] }[];
  options: z.infer<typeof planOptionsSchema>;
  createdAt: string;
  createdBy: string;
  updatedAt: string;
}

/** Saves a plan (PLAN_EXISTS when the name is taken); servers are stored by id, each in one wave only. */
export async function createPlan(
  database: Database,
  clock: Clock,
  input: PlanInput,
  createdBy: string,
): Promise<PlanView> {
  const seen = new Set<string>();
  const waves: { name: string; servers: string[] }[] = [];
  for (const w of input.waves) {
    const ids: string[] = [];
    for (const key of w.servers) {
      const s = await serverByKey(database, key);
      if (seen.has(s.id))
        throw httpError(
          400,
          "PLAN_INVALID",
          `server ${s.name} is in more than one wave`,
          "put each server in one wave",
        );
      seen.add(s.id);
      ids.push(s.id);
    }
    waves.push({ name: w.name, servers: ids });
  }
  const existing = await database.db
    .selectFrom("plans")
    .select("id")
    .where("name", "=", input.name)
    .executeTakeFirst();
  if (existing)
    throw httpError(409, "PLAN_EXISTS", `a plan named ${input.name} exists`, "choose another name");
  const now = clock.now();
  const row: Plan = {
    id: newId("plan"),
    name: input.name,
    description: input.description ?? null,
    waves_json: JSON.stringify(waves),
    options_json: JSON.stringify(input.options),
    created_at: now,
    created_by: createdBy,
    updated_at: now,
  };
  await database.db.insertInto("plans").values(row).execute();
  return planView(database, row);
}

export async function findPlan(database: Database, key: string): Promise<Plan> {
  const row = await database.db
    .selectFrom("plans")
    .selectAll()
    .where((eb) => eb.or([eb("id", "=", key), eb("name", "=", key)]))
    .executeTakeFirst();
  if (!row) throw httpError(404, "PLAN_NOT_FOUND", `no plan ${key}`, "list plans with `lifeboat plans list`");
  return row;
}

export async function listPlans(database: Database): Promise<PlanView[]> {
  const rows = await database.db.selectFrom("plans").selectAll().orderBy("name").execute();
  return Promise.all(rows.map((r) => planView(database, r)));
}

export async function planView(database: Database, row: Plan): Promise<PlanView> {
  const waves = JSON.parse(row.waves_json) as { name: string; servers: string[] }[];
  const ids = waves.flatMap((w) => w.servers);
  const names = new Map(
    ids.length === 0
      ? []
      : (await database.db.selectFrom("servers").select(["id", "name"]).where("id", "in", ids).execute()).map(
          (s) => [s.id, s.name] as const,
        ),
  );
  const iso = (ms: number) => new Date(Number(ms)).toISOString();
  return {
    id: row.id,
    name: row.name,
    description: row.description,
    waves: waves.map((w) => ({
      name: w.name,
      servers: w.servers.map((id) => ({ id, name: names.get(id) ?? id })),
    })),
    options: JSON.parse(row.options_json) as PlanView["options"],
    createdAt: iso(row.created_at),
    createdBy: row.created_by,
    updatedAt: iso(row.updated_at),
  };
}

/**
 * Starts a plan: fixes its point in time and every server's PIT now (a
 * group PIT of the servers' consistency group when there is one at or
 * before the time, else each server's latest at or before it), then creates
 * the plan job. PIT_NOT_FOUND when a server has none.
 */
export async function runPlan(
  database: Database,
  clock: Clock,
  plan: Plan,
  input: z.infer<typeof planRunSchema>,
  createdBy: string,
): Promise<JobView> {
  const waves = JSON.parse(plan.waves_json) as { name: string; servers: string[] }[];
  const serverIds = waves.flatMap((w) => w.servers);
  const at = input.at !== undefined ? Date.parse(input.at) : clock.now();
  const group = await groupPits(database, serverIds, at);
  const pits: Record<string, string> = {};
  for (const id of serverIds) {
    if (group?.pits[id]) {
      pits[id] = group.pits[id];
      continue;
    }
    const row = await database.db
      .selectFrom("pits")
      .select("id")
      .where("server_id", "=", id)
      .where("time_ms", "<=", at)
      .orderBy("time_ms", "desc")
      .orderBy("seq", "desc")
      .limit(1)
      .executeTakeFirst();
    if (!row) {
      const s = await serverByKey(database, id);
      throw httpError(
        404,
        "PIT_NOT_FOUND",
        `server ${s.name} has no PIT at or before ${new Date(at).toISOString()}`,
        "choose a later --at, or wait for the server's first PIT",
      );
    }
    pits[id] = row.id;
  }
  return createJob(database, clock, {
    type: "plan",
    serverIds,
    params: {
      planId: plan.id,
      planName: plan.name,
      mode: input.mode,
      at: new Date(at).toISOString(),
      groupPitId: group?.id ?? null,
      pits,
      waves,
      options: JSON.parse(plan.options_json) as unknown,
    },
    createdBy,
  });
}

/** The latest finished group PIT at or before `at` that holds every one of the servers, when they form one group. */
async function groupPits(
  database: Database,
  serverIds: string[],
  at: number,
): Promise<{ id: string; pits: Record<string, string> } | undefined> {
  const rows = await database.db
    .selectFrom("servers")
    .select(["id", "group_name"])
    .where("id", "in", serverIds)
    .execute();
  const groups = new Set(rows.map((r) => r.group_name));
  const group = [...groups][0];
  if (groups.size !== 1 || group === null || group === undefined) return undefined;
  const candidates = await database.db
    .selectFrom("group_pits")
    .select(["id"])
    .where("group_name", "=", group)
    .where("state", "=", "done")
    .where("taken_at", "<=", at)
    .orderBy("taken_at", "desc")
    .limit(20)
    .execute();
  for (const g of candidates) {
    const members = await database.db
      .selectFrom("agent_commands")
      .select(["server_id", "result_json"])
      .where("group_pit_id", "=", g.id)
      .execute();
    const pits: Record<string, string> = {};
    for (const m of members) {
      const pitId = (JSON.parse(m.result_json ?? "{}") as { pitId?: string }).pitId;
      if (pitId) pits[m.server_id] = pitId;
    }
    if (serverIds.every((id) => pits[id] !== undefined)) return { id: g.id, pits };
  }
  return undefined;
}

const WAIT_MS = 500;

/** Runs a plan job: each wave is a launch job; the next starts only when it succeeded. */
export function planHandler(deps: { database: Database; clock: Clock; poke: () => void }): JobHandler {
  return {
    async run(run: JobRun) {
      const { database, clock } = deps;
      const p = JSON.parse(run.job.params_json) as {
        planName: string;
        mode: "drill" | "recovery";
        at: string;
        groupPitId: string | null;
        pits: Record<string, string>;
        waves: { name: string; servers: string[] }[];
        options: z.infer<typeof planOptionsSchema>;
      };
      await run.log(
        `plan ${p.planName} at ${p.at}: ${p.groupPitId ? `group PIT ${p.groupPitId}` : "each server's latest PIT at or before that time"}; ${p.waves.length} wave(s)`,
      );
      const done: { name: string; jobId: string; state: string }[] = [];
      // A resumed plan finds the waves it started before (children of this job) and goes on from there.
      const children = await database.db
        .selectFrom("jobs")
        .select(["id", "state", "params_json"])
        .where("parent_job_id", "=", run.job.id)
        .orderBy("created_at")
        .execute();
      for (const [i, wave] of p.waves.entries()) {
        run.signal.throwIfAborted();
        let jobId = children[i]?.id;
        if (jobId === undefined) {
          const child = await createLaunchJob(
            database,
            clock,
            { servers: wave.servers, mode: p.mode, ...p.options },
            { name: `job:${run.job.id}`, admin: false },
            run.job.id,
            p.pits,
          );
          jobId = child.id;
          deps.poke();
        }
        await run.log(`wave ${i + 1} (${wave.name}): job ${jobId} launches ${wave.servers.length} server(s)`);
        const state = await waitFor(database, jobId, run, clock);
        done.push({ name: wave.name, jobId, state: state.state });
        if (state.state !== "succeeded") {
          const why =
            (state.result as { error?: { message?: string } } | null)?.error?.message ?? state.state;
          throw Object.assign(
            new LifeboatError(
              "PLAN_WAVE_FAILED",
              `wave ${i + 1} (${wave.name}) ${state.state}: ${why}; later waves were not started`,
              {
                hint: `read the wave's log with \`lifeboat jobs logs ${jobId}\`, fix the cause and run the plan again`,
              },
            ),
            { result: { waves: done } },
          );
        }
        await run.log(`wave ${i + 1} (${wave.name}) succeeded`);
      }
      return { waves: done, at: p.at, groupPitId: p.groupPitId, pits: p.pits };
    },
  };
}

async function waitFor(database: Database, jobId: string, run: JobRun, clock: Clock) {
  const signal = run.signal;
  for (;;) {
    const j = (await getJob(database, jobId))?.job;
    if (!j) throw new LifeboatError("JOB_NOT_FOUND", `the wave's job ${jobId} is gone`);
    if (["succeeded", "failed", "terminated"].includes(j.state)) return j;
    if (signal.aborted) {
      // Terminating the plan terminates its running wave; a shutdown leaves it to resume.
      if (run.stopReason === "terminate")
        await requestTerminate(database, clock, jobId).catch(() => undefined);
      signal.throwIfAborted();
    }
    await new Promise((r) => setTimeout(r, WAIT_MS));
  }
}
