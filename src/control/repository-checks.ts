import { type Clock, LifeboatError, type Logger } from "../base/index.js";
import { type Repository, type VerifyReport, repositoryStats, verifyRepository } from "../store/index.js";
import type { Kysely } from "kysely";
import { type Database, type Schema, appendEventIn, releaseLease, tryAcquireLease } from "./db/index.js";
import type { JobHandler } from "./job-runner.js";
import { type JobView, createJob, getJob } from "./jobs.js";

/**
 * The control plane's view of its repository: its size (repositoryStats,
 * refreshed now and then, never per scrape) and the result of the last
 * verify (run as a job of type "verify", on demand or on a schedule). Both
 * are kept in the repository_checks table, so /metrics and the API read
 * them from the database on any instance. A verify that finds damage
 * appends a `repository.damaged` event (and so reaches webhooks) in the
 * transaction that records its result, and fails its job with
 * REPOSITORY_DAMAGED.
 */
export const VERIFY_JOB = "verify";

export interface RepositoryStatsView {
  at: string;
  repositoryId: string;
  location: string;
  pits: number;
  objects: { packs: number; pages: number; trash: number; other: number };
  storedBytes: { packs: number; pages: number; trash: number; other: number; total: number };
  durationMs: number;
}

export interface DamageCounts {
  /** Damaged objects, all kinds. */
  objects: number;
  byKind: { chunk: number; pack: number; page: number; pit: number };
  /** PITs (and replica heads, as "head:SERVER") with at least one damaged range. */
  pits: number;
  /** Names of the servers whose PITs or replica are affected. */
  servers: string[];
}

export interface VerifyView {
  at: string;
  ok: boolean;
  readData: boolean;
  durationMs: number;
  pits: number;
  packs: number;
  pages: number;
  referencedChunks: number;
  bytesRead: number;
  transientErrors: number;
  damage: DamageCounts;
  /** The first damaged objects (at most DAMAGE_LISTED): `store verify` lists them all. */
  damaged: { object: string; kind: string; code: string; message: string }[];
  /** The job that ran it, when a job did. */
  jobId: string | null;
  /** When the data was last read in full (a verify with readData), this one or an earlier one. */
  lastReadDataAt: string | null;
}

const DAMAGE_LISTED = 20;

export interface RepositoryStatus {
  stats: RepositoryStatsView | null;
  verify: VerifyView | null;
}

/** The last stats and verify results recorded (null: never). */
export async function repositoryStatus(database: Database): Promise<RepositoryStatus> {
  const rows = await database.db.selectFrom("repository_checks").selectAll().execute();
  const of = (kind: string) => rows.find((r) => r.kind === kind);
  const stats = of("stats");
  const verify = of("verify");
  return {
    stats: stats ? (JSON.parse(stats.result_json) as RepositoryStatsView) : null,
    verify: verify ? (JSON.parse(verify.result_json) as VerifyView) : null,
  };
}

/** Reads the repository's listing (never chunk data) and records its size. */
export async function refreshRepositoryStats(
  database: Database,
  clock: Clock,
  repo: Repository,
): Promise<RepositoryStatsView> {
  const started = clock.now();
  const s = await repositoryStats(repo);
  const at = clock.now();
  const view: RepositoryStatsView = {
    at: new Date(at).toISOString(),
    repositoryId: s.repositoryId,
    location: s.location,
    pits: s.pits,
    objects: s.objects,
    storedBytes: s.storedBytes,
    durationMs: at - started,
  };
  await saveCheck(database, "stats", at, true, view.durationMs, view);
  return view;
}

export function damageCounts(report: VerifyReport): DamageCounts {
  const byKind = { chunk: 0, pack: 0, page: 0, pit: 0 };
  const pits = new Set<string>();
  const servers = new Set<string>();
  for (const d of report.damage) {
    byKind[d.kind]++;
    for (const a of d.affects) {
      pits.add(a.pit);
      servers.add(a.server);
    }
    // A PIT object that cannot be read affects itself; its name ends in the PIT id.
    if (d.kind === "pit") pits.add(d.object);
  }
  return { objects: report.damage.length, byKind, pits: pits.size, servers: [...servers].sort() };
}

/**
 * Runs `store verify` on the repository and records the result; damage
 * appends a `repository.damaged` event in the same transaction.
 */
export async function verifyAndRecord(
  database: Database,
  clock: Clock,
  repo: Repository,
  opts: { readData: boolean; jobId?: string; signal?: AbortSignal },
): Promise<VerifyView> {
  const started = clock.now();
  const report = await verifyRepository(repo, { readData: opts.readData });
  // Terminated or shut down meanwhile: the result is not recorded (a resumed job verifies again).
  opts.signal?.throwIfAborted();
  const at = clock.now();
  const previous = (await repositoryStatus(database)).verify;
  const view: VerifyView = {
    at: new Date(at).toISOString(),
    ok: report.ok,
    readData: report.readData,
    durationMs: at - started,
    pits: report.pits,
    packs: report.packs,
    pages: report.pages,
    referencedChunks: report.referencedChunks,
    bytesRead: report.bytesRead,
    transientErrors: report.transientErrors,
    damage: damageCounts(report),
    damaged: report.damage
      .slice(0, DAMAGE_LISTED)
      .map((d) => ({ object: d.object, kind: d.kind, code: d.code, message: d.message })),
    jobId: opts.jobId ?? null,
    lastReadDataAt: report.readData ? new Date(at).toISOString() : (previous?.lastReadDataAt ?? null),
  };
  await database.db.transaction().execute(async (trx) => {
    if (!report.ok) {
      await appendEventIn(
        trx,
        database.dialect,
        [
          {
            type: "repository.damaged",
            payload: {
              damagedObjects: view.damage.objects,
              byKind: view.damage.byKind,
              affectedPits: view.damage.pits,
              servers: view.damage.servers,
              readData: view.readData,
              jobId: view.jobId,
              objects: view.damaged
                .slice(0, 5)
                .map((d) => ({ object: d.object, kind: d.kind, code: d.code })),
            },
          },
        ],
        clock,
      );
    }
    await upsertCheck(trx, "verify", at, report.ok, view.durationMs, view);
  });
  return view;
}

async function saveCheck(
  database: Database,
  kind: "stats" | "verify",
  at: number,
  ok: boolean,
  durationMs: number,
  result: unknown,
): Promise<void> {
  await upsertCheck(database.db, kind, at, ok, durationMs, result);
}

async function upsertCheck(
  trx: Kysely<Schema>,
  kind: "stats" | "verify",
  at: number,
  ok: boolean,
  durationMs: number,
  result: unknown,
): Promise<void> {
  const values = {
    at,
    ok: ok ? (1 as const) : (0 as const),
    duration_ms: durationMs,
    result_json: JSON.stringify(result),
  };
  await trx
    .insertInto("repository_checks")
    .values({ kind, ...values })
    .onConflict((oc) => oc.column("kind").doUpdateSet(values))
    .execute();
}

/** The job handler of "verify" jobs (params: {readData}). */
export function verifyJobHandler(deps: {
  database: Database;
  clock: Clock;
  repo: () => Promise<Repository>;
}): JobHandler {
  return {
    async run(run) {
      const { job } = run;
      const log = (message: string, level?: "info" | "warn" | "error") => run.log(message, level);
      const params = JSON.parse(job.params_json) as { readData?: unknown };
      const readData = params.readData === true;
      const repo = await deps.repo();
      await log(
        readData
          ? "verifying the repository: its structure and every referenced chunk's data"
          : "verifying the repository's structure (PITs, pages, packs); chunk data is not read",
      );
      const v = await untilAborted(
        verifyAndRecord(deps.database, deps.clock, repo, { readData, jobId: job.id, signal: run.signal }),
        run.signal,
      );
      await log(
        `${v.pits} PITs, ${v.packs} packs, ${v.pages} pages; ${v.referencedChunks} chunks referenced` +
          (readData ? `, ${v.bytesRead} bytes read` : "") +
          ` in ${(v.durationMs / 1000).toFixed(1)} s`,
      );
      if (v.transientErrors > 0)
        await log(
          `${v.transientErrors} read(s) failed once and then succeeded (transient, not damage)`,
          "warn",
        );
      for (const d of v.damaged)
        await log(`DAMAGED ${d.kind} ${d.object} [${d.code}]: ${d.message}`, "error");
      if (v.damage.objects > v.damaged.length)
        await log(`... and ${v.damage.objects - v.damaged.length} more damaged object(s)`, "error");
      // The size changes with every PIT; a verify is a good moment to refresh it.
      await refreshRepositoryStats(deps.database, deps.clock, repo).catch(() => undefined);
      if (!v.ok) {
        const err = new LifeboatError(
          "REPOSITORY_DAMAGED",
          `verify found ${v.damage.objects} damaged object(s) affecting ${v.damage.pits} PIT(s) of ${v.damage.servers.length} server(s)`,
          {
            hint: "run `lifeboat store verify --read-data` on the server for every damaged object and the byte ranges it affects (docs/errors.md)",
          },
        );
        throw Object.assign(err, { result: v });
      }
      await log("no damage found");
      return v;
    },
  };
}

/**
 * `work`, or a rejection as soon as `signal` fires: a verify of a large
 * repository takes hours and cannot be stopped midway, and neither an
 * operator's terminate nor a shutdown should wait for it. The verify then
 * ends on its own (or fails once the repository is closed) and records
 * nothing.
 */
function untilAborted<T>(work: Promise<T>, signal: AbortSignal): Promise<T> {
  work.catch(() => undefined);
  if (signal.aborted) return Promise.reject(signal.reason as Error);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason as Error);
    signal.addEventListener("abort", onAbort, { once: true });
    work.then(
      (v) => {
        signal.removeEventListener("abort", onAbort);
        resolve(v);
      },
      (err: Error) => {
        signal.removeEventListener("abort", onAbort);
        reject(err);
      },
    );
  });
}

/**
 * Asks for a verify: a pending or running verify job is returned as it is
 * (one at a time is enough), else a new one is created.
 */
export async function requestVerify(
  database: Database,
  clock: Clock,
  opts: { readData: boolean; createdBy: string },
): Promise<{ job: JobView; created: boolean }> {
  const current = await database.db
    .selectFrom("jobs")
    .select("id")
    .where("type", "=", VERIFY_JOB)
    .where("state", "in", ["pending", "running"])
    .orderBy("created_at", "asc")
    .executeTakeFirst();
  if (current !== undefined) {
    const found = await getJob(database, current.id);
    if (found !== undefined) return { job: found.job, created: false };
  }
  const job = await createJob(database, clock, {
    type: VERIFY_JOB,
    serverIds: [],
    params: { readData: opts.readData },
    createdBy: opts.createdBy,
  });
  return { job, created: true };
}

export interface RepositoryCheckSchedule {
  /** Stats older than this are refreshed (default 15 minutes). */
  statsEveryMs?: number;
  /** A verify is asked for when the last one is older than this (default 24 hours). */
  verifyEveryMs?: number;
  /** That verify reads every chunk when the last full read is older than this (default 7 days). */
  readDataEveryMs?: number;
  /** How often the schedule is looked at (default 1 minute). */
  tickMs?: number;
}

export const REPOSITORY_CHECKS_LEASE = "repository-checks";
const DEFAULTS = {
  statsEveryMs: 15 * 60_000,
  verifyEveryMs: 24 * 3_600_000,
  readDataEveryMs: 7 * 24 * 3_600_000,
  tickMs: 60_000,
};

/**
 * One tick of the schedule: refreshes stale stats, and asks for a verify
 * job when the last one is too old (reading the data when the last full
 * read is). Returns what it did.
 */
export async function repositoryCheckTick(
  database: Database,
  clock: Clock,
  repo: () => Promise<Repository>,
  schedule: RepositoryCheckSchedule = {},
): Promise<{ stats: boolean; verifyJob: string | null }> {
  const s = { ...DEFAULTS, ...schedule };
  const now = clock.now();
  const rows = await database.db
    .selectFrom("repository_checks")
    .select(["kind", "at", "result_json"])
    .execute();
  const stats = rows.find((r) => r.kind === "stats");
  let refreshed = false;
  if (stats === undefined || now - Number(stats.at) >= s.statsEveryMs) {
    await refreshRepositoryStats(database, clock, await repo());
    refreshed = true;
  }
  const verify = rows.find((r) => r.kind === "verify");
  // Never verified: count from the oldest PIT in the catalog (none: nothing to verify yet).
  const since =
    verify !== undefined
      ? Number(verify.at)
      : await database.db
          .selectFrom("pits")
          .select((eb) => eb.fn.min("time_ms").as("t"))
          .executeTakeFirst()
          .then((r) => (r?.t === null || r?.t === undefined ? now : Number(r.t)));
  if (now - since < s.verifyEveryMs) return { stats: refreshed, verifyJob: null };
  // Not again while one asked for earlier (by the schedule or an operator) waits or runs.
  const lastAsked = await database.db
    .selectFrom("jobs")
    .select(["id", "state", "created_at"])
    .where("type", "=", VERIFY_JOB)
    .orderBy("created_at", "desc")
    .limit(1)
    .executeTakeFirst();
  if (lastAsked !== undefined && (lastAsked.state === "pending" || lastAsked.state === "running"))
    return { stats: refreshed, verifyJob: null };
  // A verify that failed to run (not one that found damage: that one is recorded) waits a cycle too.
  if (lastAsked !== undefined && now - Number(lastAsked.created_at) < s.verifyEveryMs)
    return { stats: refreshed, verifyJob: null };
  const lastRead = verify ? (JSON.parse(verify.result_json) as VerifyView).lastReadDataAt : null;
  const readData = lastRead === null || now - Date.parse(lastRead) >= s.readDataEveryMs;
  const { job } = await requestVerify(database, clock, { readData, createdBy: "system" });
  return { stats: refreshed, verifyJob: job.id };
}

/** Runs repositoryCheckTick every tickMs on one instance at a time (lease REPOSITORY_CHECKS_LEASE). */
export function startRepositoryChecks(opts: {
  database: Database;
  clock: Clock;
  logger: Logger;
  instance: string;
  repo: () => Promise<Repository>;
  schedule?: RepositoryCheckSchedule;
  /** Called after a tick created a verify job (the job runner's poke). */
  onJob?: () => void;
}): { close(): Promise<void> } {
  const tickMs = opts.schedule?.tickMs ?? DEFAULTS.tickMs;
  let held = false;
  let running: Promise<unknown> = Promise.resolve();
  const run = async () => {
    held = await tryAcquireLease(
      opts.database.db,
      REPOSITORY_CHECKS_LEASE,
      opts.instance,
      tickMs * 3,
      opts.clock,
    );
    if (!held) return;
    const r = await repositoryCheckTick(opts.database, opts.clock, opts.repo, opts.schedule);
    if (r.verifyJob !== null) {
      opts.logger.info({ job: r.verifyJob }, "scheduled repository verify");
      opts.onJob?.();
    }
  };
  const tick = () => {
    running = running
      .then(run)
      .catch((err: unknown) => opts.logger.error({ err }, "the repository check failed"));
  };
  const first = setTimeout(tick, Math.min(tickMs, 5000));
  const timer = setInterval(tick, tickMs);
  first.unref();
  timer.unref();
  return {
    async close() {
      clearTimeout(first);
      clearInterval(timer);
      await running;
      if (held)
        await releaseLease(opts.database.db, REPOSITORY_CHECKS_LEASE, opts.instance).catch(() => false);
    },
  };
}
