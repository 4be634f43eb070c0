import assert from "node:assert/strict";
import { it } from "node:test";
import { ManualClock, LifeboatError, silentLogger } from "../../src/base/index.js";
import type { Database } from "../../src/control/db/index.js";
import { CLAIM_TIMEOUT_MS, type JobHandler, type JobRun, JobRunner } from "../../src/control/job-runner.js";
import { createJob, getJob, logJobStep, requestTerminate } from "../../src/control/jobs.js";
import { forEachDatabase } from "../support/databases.js";
import { T0 } from "./helpers.js";

/** A handler whose runs the test releases by hand, recording what each run was told. */
function gatedHandler() {
  const runs: { run: JobRun; release: (v?: unknown) => void; fail: (e: Error) => void }[] = [];
  const cleaned: string[] = [];
  const handler: JobHandler = {
    run: (run) =>
      new Promise((resolve, reject) => {
        runs.push({ run, release: resolve, fail: reject });
        run.signal.addEventListener("abort", () => reject(run.signal.reason as Error));
      }),
    cleanup: (job) => {
      cleaned.push(job.id);
      return Promise.resolve();
    },
  };
  return { handler, runs, cleaned };
}

async function until(what: string, check: () => boolean | Promise<boolean>): Promise<void> {
  for (let i = 0; i < 400; i++) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error(`timed out waiting for ${what}`);
}

const state = async (db: Database, id: string) => (await getJob(db, id))!.job.state;

forEachDatabase("job runner", (open) => {
  void it("claims a pending job once, logs its start, stores the result; a failure keeps its code", async () => {
    const database = await open();
    const clock = new ManualClock(T0);
    const g = gatedHandler();
    const a = new JobRunner({ database, clock, logger: silentLogger, handlers: { drill: g.handler } });
    const b = new JobRunner({ database, clock, logger: silentLogger, handlers: { drill: g.handler } });
    try {
      const ok = await createJob(database, clock, { type: "drill", serverIds: [], createdBy: "test" });
      const bad = await createJob(database, clock, { type: "drill", serverIds: [], createdBy: "test" });
      const other = await createJob(database, clock, { type: "pit", serverIds: [], createdBy: "test" });
      a.poke();
      b.poke();
      await until("two runs", () => g.runs.length === 2);
      await new Promise((r) => setTimeout(r, 50));
      assert.equal(g.runs.length, 2, "each job runs once across two runners");
      assert.equal(await state(database, other.id), "pending", "a type without a handler is left alone");
      g.runs.find((r) => r.run.job.id === ok.id)!.release({ outputs: 1 });
      g.runs
        .find((r) => r.run.job.id === bad.id)!
        .fail(new LifeboatError("LAUNCH_NOT_READY", "not booting", { hint: "use --force" }));
      await until(
        "both end",
        async () =>
          (await state(database, bad.id)) === "failed" && (await state(database, ok.id)) === "succeeded",
      );
      assert.deepEqual((await getJob(database, ok.id))!.job.result, { outputs: 1 });
      const failed = (await getJob(database, bad.id))!;
      assert.deepEqual((failed.job.result as { error: unknown }).error, {
        code: "LAUNCH_NOT_READY",
        message: "not booting",
        hint: "use --force",
      });
      assert.match(failed.log.at(-1)!.message, /failed: not booting \(use --force\)/);
      assert.match(failed.log[0]!.message, /^started on /);
    } finally {
      await a.close();
      await b.close();
      await database.close();
    }
  });

  void it("a plan waiting for its wave does not take the wave's place", async () => {
    const database = await open();
    const clock = new ManualClock(T0);
    const g = gatedHandler();
    let child = "";
    const plan: JobHandler = {
      async run() {
        child = (await createJob(database, clock, { type: "drill", serverIds: [], createdBy: "plan" })).id;
        runner.poke();
        await until("the wave ends", async () => (await state(database, child)) === "succeeded");
        return { wave: child };
      },
    };
    const runner = new JobRunner({
      database,
      clock,
      logger: silentLogger,
      handlers: { drill: g.handler, plan },
      concurrency: 1,
      waitsOnOthers: ["plan"],
    });
    try {
      const p = await createJob(database, clock, { type: "plan", serverIds: [], createdBy: "test" });
      runner.poke();
      await until("the wave runs", () => g.runs.length === 1);
      g.runs[0]!.release({});
      await until("the plan ends", async () => (await state(database, p.id)) === "succeeded");
    } finally {
      await runner.close();
      await database.close();
    }
  });

  void it("a job whose instance stopped is taken over after the claim timeout and told it resumes", async () => {
    const database = await open();
    const clock = new ManualClock(T0);
    const g = gatedHandler();
    const a = new JobRunner({ database, clock, logger: silentLogger, handlers: { drill: g.handler } });
    const b = new JobRunner({ database, clock, logger: silentLogger, handlers: { drill: g.handler } });
    try {
      const job = await createJob(database, clock, { type: "drill", serverIds: [], createdBy: "test" });
      a.poke();
      await until("a runs it", () => g.runs.length === 1);
      assert.equal(g.runs[0]!.run.resumed, false);
      await a.close(); // as a crash would: the job stays running and claimed
      assert.equal(await state(database, job.id), "running");
      clock.advance(CLAIM_TIMEOUT_MS / 2);
      b.poke();
      await new Promise((r) => setTimeout(r, 100));
      assert.equal(g.runs.length, 1, "a fresh claim is not taken over");
      clock.advance(CLAIM_TIMEOUT_MS);
      b.poke();
      await until("b resumes it", () => g.runs.length === 2);
      assert.equal(g.runs[1]!.run.resumed, true);
      g.runs[1]!.release({ done: true });
      await until("it ends", async () => (await state(database, job.id)) === "succeeded");
      assert.ok((await getJob(database, job.id))!.log.some((l) => /^resumed on /.test(l.message)));
    } finally {
      await b.close();
      await database.close();
    }
  });

  void it("a shorter claim timeout (jobClaimTimeoutSeconds): renewed at a third of it, taken over after it", async () => {
    const database = await open();
    const clock = new ManualClock(T0);
    const g = gatedHandler();
    const opts = {
      database,
      clock,
      logger: silentLogger,
      handlers: { drill: g.handler },
      claimTimeoutMs: 6000,
    };
    const a = new JobRunner(opts);
    const b = new JobRunner(opts);
    try {
      const job = await createJob(database, clock, { type: "drill", serverIds: [], createdBy: "test" });
      a.poke();
      await until("a runs it", () => g.runs.length === 1);
      // a renews its claim once it is a third of the timeout old: b never sees it stale.
      for (let i = 0; i < 4; i++) {
        clock.advance(2500);
        a.poke();
        const claimedAt = async () =>
          Number(
            (
              await database.db
                .selectFrom("jobs")
                .select("claimed_at")
                .where("id", "=", job.id)
                .executeTakeFirst()
            )?.claimed_at,
          );
        await until("a renews", async () => (await claimedAt()) === clock.now());
        b.poke();
      }
      await new Promise((r) => setTimeout(r, 100));
      assert.equal(g.runs.length, 1, "a renewed claim is not taken over");
      await a.close(); // as a crash would
      clock.advance(6001);
      b.poke();
      await until("b resumes it", () => g.runs.length === 2);
      assert.equal(g.runs[1]!.run.resumed, true);
      g.runs[1]!.release({});
      await until("it ends", async () => (await state(database, job.id)) === "succeeded");
    } finally {
      await b.close();
      await database.close();
    }
  });

  void it("an instance that stalled past the claim timeout stops its run and records nothing", async () => {
    const database = await open();
    const clock = new ManualClock(T0);
    const g = gatedHandler();
    const opts = {
      database,
      clock,
      logger: silentLogger,
      handlers: { drill: g.handler },
      claimTimeoutMs: 6000,
    };
    const a = new JobRunner(opts);
    const b = new JobRunner(opts);
    try {
      const job = await createJob(database, clock, { type: "drill", serverIds: [], createdBy: "test" });
      a.poke();
      await until("a runs it", () => g.runs.length === 1);
      // a stalls (no renewal) past the timeout; b takes the job over.
      clock.advance(6001);
      b.poke();
      await until("b resumes it", () => g.runs.length === 2);
      // a wakes up: its renewal finds the claim gone and its run stops without finishing the job.
      a.poke();
      await until("a's run is stopped", () => g.runs[0]!.run.signal.aborted);
      assert.equal(g.runs[0]!.run.stopReason, "shutdown");
      await a.idle();
      assert.equal(await state(database, job.id), "running", "a recorded no end");
      // Finishing a run whose claim is gone is refused.
      await assert.rejects(
        logJobStep(database, clock, job.id, {
          message: "succeeded",
          state: "succeeded",
          claimedBy: a.instance,
        }),
        (err) => err instanceof LifeboatError && err.code === "JOB_CLAIM_LOST",
      );
      g.runs[1]!.release({ by: "b" });
      await until("b ends it", async () => (await state(database, job.id)) === "succeeded");
      const { log } = (await getJob(database, job.id))!;
      assert.equal(log.filter((l) => l.message === "succeeded").length, 1, "finished exactly once");
    } finally {
      await a.close();
      await b.close();
      await database.close();
    }
  });

  void it("terminate: a pending job ends at once, a running one is aborted, a finished drill is cleaned up", async () => {
    const database = await open();
    const clock = new ManualClock(T0);
    const g = gatedHandler();
    const r = new JobRunner({
      database,
      clock,
      logger: silentLogger,
      handlers: { drill: g.handler, recovery: g.handler },
    });
    try {
      const pending = await createJob(database, clock, { type: "drill", serverIds: [], createdBy: "test" });
      await requestTerminate(database, clock, pending.id);
      assert.equal(await state(database, pending.id), "terminated");

      const running = await createJob(database, clock, { type: "drill", serverIds: [], createdBy: "test" });
      r.poke();
      await until("it runs", () => g.runs.some((x) => x.run.job.id === running.id));
      await requestTerminate(database, clock, running.id);
      r.poke();
      await until("terminated", async () => (await state(database, running.id)) === "terminated");
      assert.equal(g.runs.find((x) => x.run.job.id === running.id)!.run.stopReason, "terminate");

      const finished = await createJob(database, clock, { type: "drill", serverIds: [], createdBy: "test" });
      r.poke();
      await until("it runs", () => g.runs.some((x) => x.run.job.id === finished.id));
      g.runs.find((x) => x.run.job.id === finished.id)!.release({});
      await until("succeeded", async () => (await state(database, finished.id)) === "succeeded");
      await requestTerminate(database, clock, finished.id);
      r.poke();
      await until("cleaned up", async () => (await state(database, finished.id)) === "terminated");
      assert.deepEqual(g.cleaned, [finished.id]);

      const recovery = await createJob(database, clock, {
        type: "recovery",
        serverIds: [],
        createdBy: "test",
      });
      r.poke();
      await until("it runs", () => g.runs.some((x) => x.run.job.id === recovery.id));
      g.runs.find((x) => x.run.job.id === recovery.id)!.release({});
      await until("succeeded", async () => (await state(database, recovery.id)) === "succeeded");
      await assert.rejects(requestTerminate(database, clock, recovery.id), { code: "JOB_FINISHED" });
    } finally {
      await r.close();
      await database.close();
    }
  });
});
