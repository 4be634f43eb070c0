import { promises as fs } from "node:fs";
import path from "node:path";
import { z } from "zod";
import { type Clock, LifeboatError } from "../base/index.js";
import {
  PROFILE_NAMES,
  type ProfileName,
  type ServerLaunchResult,
  TARGET_KINDS,
  isProfileName,
  launchServer,
} from "../launch/index.js";
import { type Repository, readPit } from "../store/index.js";
import type { Database, Job, Server } from "./db/index.js";
import { fenceAfterRecovery } from "./generations.js";
import { httpError } from "./http-error.js";
import type { JobHandler, JobRun } from "./job-runner.js";
import { type JobView, createJob } from "./jobs.js";
import { type LaunchSettings, effectiveSettings } from "./settings.js";

/** A launch request (POST /api/v1/launches, `lifeboat launch`); also what a launch job keeps as params. */
export const launchRequestSchema = z.strictObject({
  servers: z.array(z.string().min(1).max(253)).min(1).max(64),
  mode: z.enum(["drill", "recovery"]).default("drill"),
  /** "latest" (default) or a PIT id (one server only). */
  pit: z.string().min(1).max(64).optional(),
  /** Each server's latest PIT at or before this time. */
  at: z.iso.datetime({ offset: true }).optional(),
  target: z.enum(TARGET_KINDS).optional(),
  profile: z.enum(PROFILE_NAMES).optional(),
  format: z.enum(["raw", "qcow2"]).optional(),
  /** Admins only: the launch root instead of the configured one. */
  out: z.string().min(1).max(4096).optional(),
  devices: z.array(z.string().min(1).max(4096)).max(64).optional(),
  convert: z.boolean().optional(),
  force: z.boolean().optional(),
  keepRunning: z.boolean().optional(),
});
export type LaunchRequest = z.infer<typeof launchRequestSchema>;

/** What a launch job stores: the request with every server's PIT fixed when it was created. */
export interface LaunchParams extends Omit<LaunchRequest, "servers"> {
  pits: Record<string, string>;
}

export interface LaunchDeps {
  database: Database;
  clock: Clock;
  repo: () => Promise<Repository>;
  /** D/launches unless configured. */
  launchRoot: string;
}

/**
 * Creates a launch job: the servers exist and are not decommissioned, each
 * gets its PIT now (latest, the given id, or the latest at or before `at`)
 * so the job launches what the operator saw, and `out` needs an admin.
 */
export async function createLaunchJob(
  database: Database,
  clock: Clock,
  input: LaunchRequest,
  actor: { name: string; admin: boolean },
  parentJobId?: string,
  fixedPits?: Record<string, string>,
): Promise<JobView> {
  if (input.out !== undefined && !actor.admin)
    throw httpError(
      403,
      "AUTH_FORBIDDEN",
      "only an admin may choose where a launch writes (out)",
      "leave out unset: the configured launch root is used",
    );
  if (input.pit !== undefined && input.pit !== "latest" && input.servers.length > 1)
    throw httpError(
      400,
      "LAUNCH_PIT_AMBIGUOUS",
      "a PIT id names one server's PIT; several servers were given",
      "use --at TIME for several servers, or a recovery plan",
    );
  if (input.pit !== undefined && input.at !== undefined)
    throw httpError(
      400,
      "LAUNCH_PIT_AMBIGUOUS",
      "give either a PIT or a time, not both",
      "use --pit ID or --at TIME",
    );
  const servers: Server[] = [];
  for (const key of input.servers) {
    const s = await serverByKey(database, key);
    if (!servers.some((x) => x.id === s.id)) servers.push(s);
  }
  const pits: Record<string, string> = {};
  for (const s of servers) pits[s.id] = fixedPits?.[s.id] ?? (await choosePit(database, s, input));
  const { servers: _s, ...rest } = input;
  const params: LaunchParams = { ...rest, pits };
  return createJob(database, clock, {
    type: input.mode,
    serverIds: servers.map((s) => s.id),
    params: params as unknown as Record<string, unknown>,
    createdBy: actor.name,
    ...(parentJobId !== undefined ? { parentJobId } : {}),
  });
}

/** A server by id or name (SERVER_NOT_FOUND, 404). */
export async function serverByKey(database: Database, key: string): Promise<Server> {
  const s = await database.db
    .selectFrom("servers")
    .selectAll()
    .where((eb) => eb.or([eb("id", "=", key), eb("name", "=", key)]))
    .executeTakeFirst();
  if (!s)
    throw httpError(404, "SERVER_NOT_FOUND", `no server ${key}`, "list servers with `lifeboat servers list`");
  return s;
}

async function choosePit(database: Database, server: Server, input: LaunchRequest): Promise<string> {
  let q = database.db
    .selectFrom("pits")
    .select(["id", "server_id", "time_ms"])
    .where("server_id", "=", server.id)
    .orderBy("time_ms", "desc")
    .orderBy("seq", "desc")
    .limit(1);
  if (input.pit !== undefined && input.pit !== "latest") {
    const row = await database.db
      .selectFrom("pits")
      .select(["id", "server_id"])
      .where("id", "=", input.pit)
      .executeTakeFirst();
    if (!row || row.server_id !== server.id)
      throw httpError(
        404,
        "PIT_NOT_FOUND",
        `server ${server.name} has no PIT ${input.pit}`,
        `list its PITs with \`lifeboat pits list --server ${server.name}\``,
      );
    return row.id;
  }
  if (input.at !== undefined) q = q.where("time_ms", "<=", Date.parse(input.at));
  const row = await q.executeTakeFirst();
  if (!row)
    throw httpError(
      404,
      "PIT_NOT_FOUND",
      `server ${server.name} has no PIT${input.at !== undefined ? ` at or before ${input.at}` : ""}`,
      "wait for its initial sync to finish, or take one with `lifeboat pits create`",
    );
  return row.id;
}

interface LaunchOutcome {
  server: { id: string; name: string };
  dir: string;
  r: ServerLaunchResult;
}

/** The job directory of one server: ROOT/<server>/<job-id>. */
export function launchDir(root: string, serverName: string, jobId: string): string {
  return path.join(root, serverName, jobId);
}

/**
 * Runs drill and recovery jobs: every server of the job at once, each
 * launched from its PIT (launch/launch-server.ts). The job's result is what
 * `lifeboat launch --json` prints: outputs (images, manifests, reports) and
 * readiness. It fails when any server's launch failed; a terminated drill's
 * job directories are removed.
 */
export function launchHandler(deps: LaunchDeps): JobHandler {
  return {
    async run(run: JobRun) {
      const { job } = run;
      const params = JSON.parse(job.params_json) as LaunchParams;
      const serverIds = JSON.parse(job.server_ids_json) as string[];
      const repo = await deps.repo();
      const dirs: string[] = [];
      // Every server's launch runs to its end (or its abort) before the job ends: none is left
      // writing into a directory a terminate removes.
      const launches = Promise.allSettled(
        serverIds.map(async (id) => {
          const server = await deps.database.db
            .selectFrom("servers")
            .select(["id", "name"])
            .where("id", "=", id)
            .executeTakeFirstOrThrow();
          const { settings } = await effectiveSettings(deps.database, id, "launch");
          const s = settings as unknown as LaunchSettings;
          const pit = await readPit(repo, params.pits[id]!);
          const profile = chooseProfile(params.profile, s.bootProfile);
          const target = params.target ?? s.target;
          const root = params.out ?? s.outputDir ?? deps.launchRoot;
          const dir = launchDir(root, server.name, job.id);
          dirs.push(dir);
          await run.log(
            `${server.name}: PIT ${pit.id} of ${pit.time} (${pit.consistency}) to target ${target}, profile ${profile}, in ${dir}`,
          );
          const logs: Promise<void>[] = [];
          const r = await launchServer(
            repo,
            {
              jobId: job.id,
              jobType: job.type === "recovery" ? "recovery" : "drill",
              server,
              pit,
              dir,
              target,
              profile,
              devices: params.devices ?? s.blockDevices,
              startedAtMs: Number(job.claimed_at ?? job.created_at),
              format: params.format ?? "raw",
              convert: params.convert ?? false,
              force: params.force ?? false,
              hostname: s.hostname ?? (job.type === "drill" ? `${server.name}-drill` : undefined),
              addresses: s.addressMap,
              qemu: {
                successPattern: s.successPattern,
                timeoutSeconds: s.bootTimeoutSeconds,
                memoryMiB: s.qemuMemoryMiB,
                network: s.qemuNetwork,
                accel: s.qemuAccel,
                kernel: s.qemuKernel,
                initrd: s.qemuInitrd,
                append: s.qemuAppend,
                keepRunning: params.keepRunning ?? job.type === "recovery",
              },
              command:
                s.command === null ? null : { path: s.command, timeoutSeconds: s.commandTimeoutSeconds },
              postLaunchChecks: s.postLaunchChecks,
            },
            (message, level) => void logs.push(run.log(message, level)),
            deps.clock,
            run.signal,
          ).finally(() => Promise.all(logs));
          return { server, dir, r };
        }),
      );
      const settled = await launches;
      const rejected = settled.find((x) => x.status === "rejected");
      if (rejected) {
        if (run.stopReason === "terminate" && job.type === "drill")
          for (const dir of dirs) {
            await fs.rm(dir, { recursive: true, force: true });
            await run.log(`removed ${dir}`);
          }
        throw rejected.reason;
      }
      const results = settled.map((x) => (x as PromiseFulfilledResult<LaunchOutcome>).value);
      const result = launchResult(results);
      const failed = results.filter((x) => !x.r.ok);
      if (failed.length > 0) {
        const first = failed[0]!;
        throw Object.assign(
          new LifeboatError(
            first.r.error?.code ?? "LAUNCH_FAILED",
            failed.length === 1
              ? `${first.server.name}: ${first.r.error?.message ?? "failed"}`
              : `${failed.length} of ${results.length} servers failed; ${first.server.name}: ${first.r.error?.message}`,
            { hint: first.r.error?.hint ?? "" },
          ),
          { result },
        );
      }
      // A recovery moved the servers' data to the recovered instances: fence the originals (generations.ts).
      if (job.type === "recovery")
        for (const { server } of results) {
          const pit = await readPit(repo, params.pits[server.id]!);
          await fenceAfterRecovery(
            deps.database,
            deps.clock,
            server.id,
            job.id,
            pit.disks.map((d) => d.index),
          );
          await run.log(
            `${server.name}: fenced — its disks have new generations, and its old agent is refused if it comes back (fail back with \`lifeboat failback start ${job.id}\`)`,
          );
        }
      return result;
    },
    async cleanup(job: Job, log) {
      await removeJobOutputs(deps, job, log);
    },
  };
}

function chooseProfile(requested: ProfileName | undefined, configured: string): ProfileName {
  if (requested !== undefined) return requested;
  return isProfileName(configured) ? configured : "kvm";
}

function launchResult(
  results: { server: { id: string; name: string }; dir: string; r: ServerLaunchResult }[],
) {
  return {
    outputs: {
      images: results.flatMap((x) => x.r.images),
      manifest: results[0]?.r.manifest ?? null,
      report: results[0]?.r.report.json ?? null,
      servers: results.map((x) => ({
        server: x.server.name,
        dir: x.dir,
        images: x.r.images,
        manifest: x.r.manifest,
        report: x.r.report.json,
        reportHtml: x.r.report.html,
        ...(x.r.running.qemuPid !== undefined ? { qemuPid: x.r.running.qemuPid } : {}),
      })),
    },
    readiness: {
      ready: results.every((x) => x.r.readiness?.ready === true),
      servers: Object.fromEntries(
        results.map((x) => [
          x.server.name,
          x.r.readiness
            ? {
                profile: x.r.readiness.profile,
                ready: x.r.readiness.ready,
                verdict: x.r.readiness.verdict,
                problems: x.r.readiness.problems,
              }
            : null,
        ]),
      ),
    },
  };
}

/** Terminate of a drill: stop what it left running, remove its job directories. */
async function removeJobOutputs(deps: LaunchDeps, job: Job, log: JobRun["log"]): Promise<void> {
  const result =
    job.result_json === null
      ? null
      : (JSON.parse(job.result_json) as Partial<ReturnType<typeof launchResult>>);
  for (const s of result?.outputs?.servers ?? []) {
    if (s.qemuPid !== undefined) {
      try {
        process.kill(s.qemuPid, "SIGTERM");
        await log(`${s.server}: stopped the VM (pid ${s.qemuPid})`);
      } catch {
        /* already gone */
      }
    }
    if (path.basename(s.dir) !== job.id) continue; // only ever a directory this job made
    await fs.rm(s.dir, { recursive: true, force: true });
    await log(`${s.server}: removed ${s.dir}`);
  }
}
