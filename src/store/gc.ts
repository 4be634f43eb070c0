import { LifeboatError } from "../base/index.js";
import type { ObjectInfo } from "./backend.js";
import { walkBlockMap } from "./block-map.js";
import { Limiter } from "./limiter.js";
import { type RepositoryLock, acquireLock, breakStaleLocks, isStale, listLocks } from "./locks.js";
import { PREFIX } from "./names.js";
import { listPits } from "./pit.js";
import type { Repository } from "./repository.js";

/**
 * Garbage collection: mark and sweep that is safe while writers run.
 *
 * The danger is a writer that skips storing a chunk because it believes the
 * repository has it, while GC deletes that chunk as unreferenced. Writers
 * therefore trust only chunks named by PITs they read after their lock's
 * `knownSince`, or chunks they wrote themselves since (locks.ts). PITs are
 * forgotten only under the GC lock, and forgetting discards the candidate
 * list, so between two GC runs the set of PITs only grows.
 *
 * A run at time T:
 *  1. lists every chunk and page, then the live writer locks, then the PITs,
 *     and marks what the PITs reach (an unreadable page aborts the run:
 *     reachability unknown means nothing may be deleted);
 *  2. deletes an unreferenced object X when, for the round R in which X was
 *     found unreferenced (the previous run, or this one), X was last written
 *     before R minus the safety margin and every live writer learned what
 *     exists after R. Such a writer cannot know X from a PIT (none references
 *     X since R, and PITs only grew) nor from its own writes (X is older);
 *  3. records what is still unreferenced as the next run's candidates.
 * With no writer running, one run deletes everything unreferenced and old
 * enough; under continuous replication the second run does. Deleting is
 * idempotent, so a run interrupted at any point converges when repeated.
 */
export interface GcOptions {
  dryRun?: boolean;
  /** Objects written less than this long before a round are kept (clock skew between hosts and backend). */
  safetyMarginMs?: number;
  staleLockMs?: number;
  /** Temporary files of interrupted writes older than this are removed. */
  temporaryAgeMs?: number;
}

export interface GcReport {
  dryRun: boolean;
  pits: number;
  objects: number;
  reachable: number;
  unreferenced: number;
  deleted: number;
  deletedBytes: number;
  /** Unreferenced objects kept for now, and why. */
  kept: number;
  keptReason: string | null;
  staleLocksBroken: number;
  temporariesRemoved: number;
}

interface Candidates {
  createdMs: number;
  names: string[];
}

const CANDIDATES = `${PREFIX.gc}candidates`;
export const DEFAULT_SAFETY_MARGIN_MS = 60_000;

export async function collectGarbage(repo: Repository, opts: GcOptions = {}): Promise<GcReport> {
  const margin = opts.safetyMarginMs ?? DEFAULT_SAFETY_MARGIN_MS;
  const lock = opts.dryRun ? undefined : await acquireLock(repo, "gc", "gc");
  lock?.keepAlive();
  try {
    const report: GcReport = {
      dryRun: Boolean(opts.dryRun),
      pits: 0,
      objects: 0,
      reachable: 0,
      unreferenced: 0,
      deleted: 0,
      deletedBytes: 0,
      kept: 0,
      keptReason: null,
      staleLocksBroken: opts.dryRun ? 0 : (await breakStaleLocks(repo, opts.staleLockMs)).length,
      temporariesRemoved: 0,
    };
    const round = repo.clock.now();
    const objects: ObjectInfo[] = [];
    for (const prefix of [PREFIX.chunks, PREFIX.pages])
      for await (const o of repo.backend.list(prefix)) objects.push(o);
    report.objects = objects.length;
    const writers = (await listLocks(repo)).filter(
      (l) => l.kind === "writer" && !isStale(repo, l, opts.staleLockMs),
    );
    const oldestKnowledge = Math.min(Infinity, ...writers.map((w) => w.knownSince));
    const reachable = await markReachable(repo, report);
    const previous = await readCandidates(repo);

    const unreferenced = objects.filter((o) => !reachable.has(o.name));
    report.unreferenced = unreferenced.length;
    const prevNames = previous && previous.createdMs <= round ? new Set(previous.names) : new Set<string>();
    const deletable = (o: ObjectInfo, roundMs: number) =>
      o.mtimeMs < roundMs - margin && oldestKnowledge > roundMs;
    const doomed = unreferenced.filter(
      (o) =>
        deletable(o, round) ||
        (previous !== undefined && prevNames.has(o.name) && deletable(o, previous.createdMs)),
    );
    const doomedSet = new Set(doomed);
    const survivors = unreferenced.filter((o) => !doomedSet.has(o));
    report.kept = survivors.length;
    if (survivors.length > 0) {
      report.keptReason =
        writers.length > 0
          ? `${writers.length} writer(s) running; unreferenced objects are deleted by the next run after they refresh`
          : `written within the safety margin (${margin} ms); deleted by a later run`;
    }
    if (!opts.dryRun) {
      const limiter = new Limiter(16);
      await Promise.all(doomed.map((o) => limiter.run(() => repo.backend.delete(o.name))));
      await repo.putMeta(CANDIDATES, {
        createdMs: round,
        names: survivors.map((o) => o.name),
      } satisfies Candidates);
      if (repo.backend.sweepTemporaries) {
        report.temporariesRemoved = await repo.backend.sweepTemporaries(
          round - (opts.temporaryAgeMs ?? 3_600_000),
        );
      }
    }
    report.deleted = doomed.length;
    report.deletedBytes = doomed.reduce((n, o) => n + o.size, 0);
    return report;
  } finally {
    await lock?.release();
  }
}

async function markReachable(repo: Repository, report: GcReport): Promise<Set<string>> {
  const reachable = new Set<string>();
  const pits = await listPits(repo);
  report.pits = pits.length;
  for (const pit of pits) {
    for (const disk of pit.disks) {
      try {
        await walkBlockMap(
          repo,
          disk,
          (_i, id) => void reachable.add(repo.chunkName(id)),
          (id) => void reachable.add(repo.pageName(id)),
        );
      } catch (err) {
        throw new LifeboatError(
          "STORE_GC_ABORTED",
          `garbage collection stopped: disk ${disk.index} of PIT ${pit.id} cannot be read; nothing was deleted`,
          { hint: "run `lifeboat store verify` and repair the repository first", cause: err },
        );
      }
    }
  }
  report.reachable = reachable.size;
  return reachable;
}

async function readCandidates(repo: Repository): Promise<Candidates | undefined> {
  try {
    return await repo.getMeta<Candidates>(CANDIDATES);
  } catch {
    return undefined; // absent or unreadable: start a new round
  }
}

/** Forgetting PITs happens under the GC lock and discards the candidate list (see above). */
export async function withGcLock<T>(
  repo: Repository,
  purpose: string,
  fn: (lock: RepositoryLock) => Promise<T>,
): Promise<T> {
  const lock = await acquireLock(repo, "gc", purpose);
  lock.keepAlive();
  try {
    const result = await fn(lock);
    await repo.backend.delete(CANDIDATES);
    return result;
  } finally {
    await lock.release();
  }
}
