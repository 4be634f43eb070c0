import os from "node:os";
import { type Clock, type Logger, isLifeboatError } from "../base/index.js";
import type { Database, Job } from "./db/index.js";
import { logJobStep } from "./jobs.js";
import { newId } from "./secrets.js";

/** What a job type's handler gets: its row, a log, a signal that fires on terminate or shutdown. */
export interface JobRun {
  job: Job;
  /** True when an earlier claimant stopped (crashed) while running it: resume, or redo, safely. */
  resumed: boolean;
  log(message: string, level?: "info" | "warn" | "error"): Promise<void>;
  signal: AbortSignal;
  /** Why the signal fired: an operator's terminate, or this instance shutting down. */
  readonly stopReason: "terminate" | "shutdown" | undefined;
}

export interface JobHandler {
  /** Runs the job to its end; returns the job's result (stored). Throws to fail it. */
  run(run: JobRun): Promise<unknown>;
  /** Removes what a finished job made (terminate of a finished drill), on the instance that ran it. */
  cleanup?(job: Job, log: JobRun["log"]): Promise<void>;
}

/**
 * A claim not renewed for this long is taken over by another instance (its
 * claimant died). The default; config.json's jobClaimTimeoutSeconds changes it.
 */
export const CLAIM_TIMEOUT_MS = 60_000;
/** Claims are renewed this often, or at a third of a shorter claim timeout. */
const RENEW_MS = 10_000;
const POLL_MS = 1000;

/**
 * Runs jobs on the control-plane instance that claims them. Jobs are rows
 * (jobs.ts); an instance claims a pending one with a conditional update (so
 * two instances never both run it), renews its claim while it runs, and
 * takes over a running job whose claim went stale — the handler is told it
 * resumes. An operator's terminate request (jobs.terminate_requested_at)
 * aborts a running job here, or has the handler remove what a finished
 * drill left behind.
 */
export class JobRunner {
  /** "host:pid:random": the host part says where a job's files are (cleanup runs on that host). */
  readonly instance = `${os.hostname()}:${process.pid}:${newId("run").slice(4, 12)}`;
  private readonly running = new Map<
    string,
    { type: string; abort: AbortController; reason?: "terminate" | "shutdown"; done: Promise<void> }
  >();
  private timer: NodeJS.Timeout | undefined;
  private ticking: Promise<void> = Promise.resolve();
  private closed = false;

  constructor(
    private readonly deps: {
      database: Database;
      clock: Clock;
      logger: Logger;
      handlers: Record<string, JobHandler>;
      /** Jobs run at once on this instance. */
      concurrency?: number;
      /**
       * Job types that only wait for jobs of their own (a plan waits for its
       * waves): they do not take one of the `concurrency` places, so that
       * plans can never hold every place while their waves wait for one.
       */
      waitsOnOthers?: string[];
      /** A claim not renewed for this long is taken over (default CLAIM_TIMEOUT_MS). */
      claimTimeoutMs?: number;
    },
  ) {
    this.claimTimeoutMs = deps.claimTimeoutMs ?? CLAIM_TIMEOUT_MS;
    this.renewMs = Math.min(RENEW_MS, Math.floor(this.claimTimeoutMs / 3));
  }

  private readonly claimTimeoutMs: number;
  private readonly renewMs: number;

  start(): void {
    this.timer = setInterval(() => this.poke(), POLL_MS);
    this.timer.unref();
    this.poke();
  }

  /** Looks for work now (after a job was created here) rather than at the next poll. */
  poke(): void {
    if (this.closed) return;
    this.ticking = this.ticking.then(() =>
      this.tick().catch((err: unknown) => this.deps.logger.error({ err }, "the job runner's pass failed")),
    );
  }

  /** Aborts the jobs running here (they stay claimed: another instance, or the next start, resumes them). */
  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.timer);
    await this.ticking;
    for (const r of this.running.values()) {
      r.reason ??= "shutdown";
      r.abort.abort(new Error("the control plane is shutting down"));
    }
    await Promise.all([...this.running.values()].map((r) => r.done));
  }

  /** Jobs running here that count against the concurrency. */
  private busy(): number {
    let n = 0;
    for (const r of this.running.values()) if (!this.deps.waitsOnOthers?.includes(r.type)) n++;
    return n;
  }

  /** Resolves when no job runs here (tests). */
  async idle(): Promise<void> {
    while (this.running.size > 0) await Promise.all([...this.running.values()].map((r) => r.done));
  }

  private async tick(): Promise<void> {
    const { database, clock } = this.deps;
    const now = clock.now();
    // Renew our claims; honour terminate requests of jobs running here.
    if (this.running.size > 0) {
      const rows = await database.db
        .selectFrom("jobs")
        .select(["id", "terminate_requested_at", "claimed_at", "claimed_by"])
        .where("id", "in", [...this.running.keys()])
        .execute();
      for (const j of rows) {
        const r = this.running.get(j.id);
        if (r && j.terminate_requested_at !== null && !r.abort.signal.aborted) {
          r.reason = "terminate";
          r.abort.abort(new Error("terminated by an operator"));
        }
        let mine = j.claimed_by === this.instance;
        if (mine && now - Number(j.claimed_at ?? 0) >= this.renewMs) {
          const renewed = await database.db
            .updateTable("jobs")
            .set({ claimed_at: now })
            .where("id", "=", j.id)
            .where("claimed_by", "=", this.instance)
            .executeTakeFirst();
          mine = Number(renewed.numUpdatedRows) === 1;
        }
        // Another instance took it over (this one stalled past the claim timeout): stop here.
        if (r && !mine && !r.abort.signal.aborted) {
          this.deps.logger.warn({ job: j.id }, "another instance took this job over; its run here stops");
          r.reason = "shutdown";
          r.abort.abort(new Error("another control-plane instance took the job over"));
        }
      }
    }
    await this.cleanupTerminated();
    if (this.closed) return;
    const room = (this.deps.concurrency ?? 4) - this.busy();
    const candidates = await database.db
      .selectFrom("jobs")
      .selectAll()
      .where("type", "in", Object.keys(this.deps.handlers))
      .where((eb) =>
        eb.or([
          eb("state", "=", "pending"),
          eb.and([eb("state", "=", "running"), eb("claimed_at", "<", now - this.claimTimeoutMs)]),
        ]),
      )
      .orderBy("created_at")
      .limit(Math.max(room, 1) * 2)
      .execute();
    for (const job of candidates) {
      if (this.running.has(job.id)) continue;
      if (this.busy() >= (this.deps.concurrency ?? 4) && !this.deps.waitsOnOthers?.includes(job.type))
        continue;
      if (!this.deps.handlers[job.type]) continue;
      const claimed = await database.db
        .updateTable("jobs")
        .set({ state: "running", claimed_by: this.instance, claimed_at: now, updated_at: now })
        .where("id", "=", job.id)
        .where("state", "=", job.state)
        .where((eb) =>
          job.claimed_at === null ? eb("claimed_at", "is", null) : eb("claimed_at", "=", job.claimed_at),
        )
        .executeTakeFirst();
      if (Number(claimed.numUpdatedRows) !== 1) continue;
      this.launch(
        { ...job, state: "running", claimed_by: this.instance, claimed_at: now },
        job.state === "running",
      );
    }
  }

  private launch(job: Job, resumed: boolean): void {
    const { database, clock, logger } = this.deps;
    const handler = this.deps.handlers[job.type]!;
    const abort = new AbortController();
    const entry: {
      type: string;
      abort: AbortController;
      reason?: "terminate" | "shutdown";
      done: Promise<void>;
    } = {
      type: job.type,
      abort,
      done: Promise.resolve(),
    };
    const log = async (message: string, level: "info" | "warn" | "error" = "info") => {
      await logJobStep(database, clock, job.id, { level, message });
    };
    entry.done = (async () => {
      if (job.terminate_requested_at !== null) {
        entry.reason = "terminate";
        abort.abort(new Error("terminated by an operator"));
      }
      try {
        await log(
          resumed
            ? `resumed on ${this.instance}: the instance that ran it stopped answering`
            : `started on ${this.instance}`,
        );
        const result = await handler.run({
          job,
          resumed,
          log,
          signal: abort.signal,
          get stopReason() {
            return entry.reason;
          },
        });
        if (abort.signal.aborted && entry.reason === "shutdown") return;
        await finish(database, clock, job.id, this.instance, {
          state: entry.reason === "terminate" ? "terminated" : "succeeded",
          message: entry.reason === "terminate" ? "terminated by an operator" : "succeeded",
          result,
        });
      } catch (err) {
        if (entry.reason === "shutdown") {
          logger.info({ job: job.id }, "job interrupted by shutdown; it resumes on the next claim");
          return;
        }
        if (isLifeboatError(err) && err.code === "JOB_CLAIM_LOST") {
          logger.warn({ job: job.id, err: err.message }, "the job was taken over; this run records nothing");
          return;
        }
        const e = err instanceof Error ? err : new Error(String(err));
        const code = isLifeboatError(e) ? e.code : "JOB_FAILED";
        const hint = isLifeboatError(e) ? e.hint : "";
        const partial = (e as { result?: unknown }).result;
        await finish(database, clock, job.id, this.instance, {
          state: entry.reason === "terminate" ? "terminated" : "failed",
          level: entry.reason === "terminate" ? "info" : "error",
          message:
            entry.reason === "terminate"
              ? "terminated by an operator"
              : `failed: ${e.message}${hint ? ` (${hint})` : ""}`,
          result: {
            ...(partial && typeof partial === "object" ? partial : {}),
            error: { code, message: e.message, hint },
          },
        }).catch((err2: unknown) => logger.error({ err: err2, job: job.id }, "cannot record the job's end"));
      } finally {
        this.running.delete(job.id);
      }
    })();
    this.running.set(job.id, entry);
  }

  /** Finished jobs this instance ran whose outputs an operator asked to remove. */
  private async cleanupTerminated(): Promise<void> {
    const { database, clock, logger } = this.deps;
    const rows = await database.db
      .selectFrom("jobs")
      .selectAll()
      .where("terminate_requested_at", "is not", null)
      .where("state", "in", ["succeeded", "failed"])
      .where("claimed_by", "like", `${os.hostname()}:%`)
      .execute();
    for (const job of rows) {
      const log = async (message: string, level: "info" | "warn" | "error" = "info") => {
        await logJobStep(database, clock, job.id, { level, message });
      };
      try {
        await this.deps.handlers[job.type]?.cleanup?.(job, log);
        await finish(database, clock, job.id, undefined, {
          state: "terminated",
          message: "terminated: outputs removed",
        });
      } catch (err) {
        logger.error({ err, job: job.id }, "cannot remove what the job made");
        await log(
          `cannot remove what the job made: ${err instanceof Error ? err.message : String(err)}`,
          "error",
        );
      }
    }
  }
}

async function finish(
  database: Database,
  clock: Clock,
  jobId: string,
  /** The instance that must still hold the claim (undefined: any). */
  claimedBy: string | undefined,
  end: { state: string; message: string; level?: "info" | "warn" | "error"; result?: unknown },
): Promise<void> {
  await logJobStep(database, clock, jobId, {
    ...(claimedBy !== undefined ? { claimedBy } : {}),
    level: end.level ?? "info",
    message: end.message,
    state: end.state,
    ...(end.result !== undefined ? { result: end.result } : {}),
    fromFinished: end.state === "terminated",
  });
}
