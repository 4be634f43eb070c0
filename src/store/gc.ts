import { LifeboatError } from "../base/index.js";
import type { ObjectInfo } from "./backend.js";
import { entryLocation, walkBlockMap } from "./block-map.js";
import { Limiter } from "./limiter.js";
import { type LockRecord, acquireLock, breakStaleLocks, isStale, listLocks } from "./locks.js";
import { PREFIX, packName, trashName } from "./names.js";
import { listHeads } from "./head.js";
import { type Pit, listPits } from "./pit.js";
import type { Repository } from "./repository.js";

/**
 * Garbage collection that is safe while writers run, in two steps: an
 * unreferenced pack or page is first moved to the trash, and deleted for
 * good only by a later run. A pack is unreferenced when no PIT references
 * any chunk in it; a pack some of whose chunks are still used is kept whole.
 *
 * The danger is a writer that references a pack GC is removing: it learned
 * of a chunk in it from a PIT that has since been forgotten, or wrote it
 * before GC listed it. Moving rather than deleting makes that harmless: readers fall
 * back to the trash (Repository.getObject), and every run puts back whatever a
 * PIT references. A trashed object is deleted only when no PIT references it
 * and every live writer started after it was trashed. Such a writer cannot
 * know the object from a PIT: forgetting PITs happens under the GC lock and
 * first puts back everything any PIT references (`restoreReferenced`), so a
 * PIT it read that named the object would still exist and the object would be
 * referenced. Nor can it know it from its own writes: anything it wrote lives
 * under the object's own name, not in the trash.
 *
 * A run:
 *  1. lists packs, pages and the trash, then the live writer locks, then the
 *     PITs and replicas' heads, and marks what they reach (an unreadable PIT or page stops the
 *     run: when reachability is unknown nothing may be removed);
 *  2. puts back trashed objects that are referenced;
 *  3. deletes trashed objects that are unreferenced, whose originals were gone
 *     more than the safety margin ago (the end of the run that trashed them),
 *     and every live writer started after that;
 *  4. moves to the trash unreferenced objects written before the safety margin
 *     and before every live writer started.
 * Every step is idempotent, so a run interrupted anywhere converges when
 * repeated. Objects of a writer still running are never touched.
 */
export interface GcOptions {
  dryRun?: boolean;
  /** Margin for clock differences between hosts and the backend (default one minute). */
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
  /** Unreferenced objects moved to the trash by this run. */
  trashed: number;
  /** Trashed objects a PIT references again, put back. */
  restored: number;
  /** Trashed objects deleted for good, and their bytes. */
  deleted: number;
  deletedBytes: number;
  /** Objects left in the trash for a later run, and why. */
  inTrash: number;
  waitingReason: string | null;
  staleLocksBroken: number;
  temporariesRemoved: number;
}

export const DEFAULT_SAFETY_MARGIN_MS = 60_000;

/**
 * When each run's trashing began and ended: an object copied to the trash
 * early in a run that stalled before deleting the originals was still in use
 * until the run's end, and a writer that started in between may have stored
 * it again (so its deletion waits for writers younger than the end).
 */
const ROUNDS = `${PREFIX.gcState}rounds`;
interface Round {
  startMs: number;
  completedMs: number;
}

async function readRounds(repo: Repository): Promise<Round[]> {
  try {
    return (await repo.getMeta<{ rounds: Round[] }>(ROUNDS)).rounds;
  } catch {
    return []; // absent or unreadable: every trashed object counts as trashed now
  }
}

interface Marked {
  pits: Pit[];
  reachable: Set<string>;
  live: Map<string, ObjectInfo>;
  trash: Map<string, ObjectInfo>; // keyed by the original name
}

/** Lists objects, then writer locks, then PITs (this order matters, see above), and marks. */
async function mark(repo: Repository, staleLockMs?: number): Promise<Marked & { writers: LockRecord[] }> {
  const live = new Map<string, ObjectInfo>();
  const trash = new Map<string, ObjectInfo>();
  for (const prefix of [PREFIX.packs, PREFIX.pages])
    for await (const o of repo.backend.list(prefix)) live.set(o.name, o);
  for await (const o of repo.backend.list(PREFIX.trash)) trash.set(o.name.slice(PREFIX.trash.length), o);
  const writers = (await listLocks(repo)).filter(
    (l) => l.kind === "writer" && !isStale(repo, l, staleLockMs),
  );
  const pits = await listPits(repo);
  const reachable = new Set<string>();
  // Replicas' heads are roots too (head.ts); a head is described like a PIT for the messages below.
  const roots = [
    ...pits.map((p) => ({ what: `PIT ${p.id}`, disks: p.disks })),
    ...(await listHeads(repo)).map((h) => ({ what: `the replica head of ${h.server}`, disks: h.disks })),
  ];
  for (const pit of roots) {
    for (const disk of pit.disks) {
      try {
        await walkBlockMap(
          repo,
          disk,
          (_i, e) => void reachable.add(packName(entryLocation(e).pack)),
          (id) => {
            // A page reached before: everything under it is reachable already.
            const name = repo.pageName(id);
            if (reachable.has(name)) return false;
            reachable.add(name);
            return true;
          },
        );
      } catch (err) {
        throw new LifeboatError(
          "STORE_GC_ABORTED",
          `garbage collection stopped: disk ${disk.index} of ${pit.what} cannot be read; nothing was removed`,
          { hint: "run `lifeboat store verify` and repair or forget the damaged PIT first", cause: err },
        );
      }
    }
  }
  return { pits, reachable, live, trash, writers };
}

/** Puts back trashed objects that a PIT references; returns how many. */
async function restoreReferenced(repo: Repository, m: Marked, dryRun: boolean): Promise<number> {
  const limiter = new Limiter(16);
  const back = [...m.trash.keys()].filter((name) => m.reachable.has(name));
  if (!dryRun) {
    await Promise.all(
      back.map((name) =>
        limiter.run(async () => {
          if (!m.live.has(name)) await repo.backend.put(name, await repo.backend.get(trashName(name)));
        }),
      ),
    );
    await repo.flush(); // the copies are durable before the trash goes
    await Promise.all(back.map((name) => limiter.run(() => repo.backend.delete(trashName(name)))));
  }
  for (const name of back) m.trash.delete(name);
  return back.length;
}

export async function collectGarbage(repo: Repository, opts: GcOptions = {}): Promise<GcReport> {
  const margin = opts.safetyMarginMs ?? DEFAULT_SAFETY_MARGIN_MS;
  const dryRun = Boolean(opts.dryRun);
  const lock = dryRun ? undefined : await acquireLock(repo, "gc", "gc");
  lock?.keepAlive();
  try {
    const staleLocksBroken = dryRun ? 0 : (await breakStaleLocks(repo, opts.staleLockMs)).length;
    const round = repo.clock.now();
    const m = await mark(repo, opts.staleLockMs);
    const oldestWriter = Math.min(Infinity, ...m.writers.map((w) => w.createdMs));
    const restored = await restoreReferenced(repo, m, dryRun);

    const rounds = await readRounds(repo);
    // When the original was gone: the end of the round that trashed it, as recorded; unknown
    // (a run that stopped half way) counts as now, which only delays the deletion.
    const goneAt = (t: ObjectInfo) =>
      rounds.find((r) => r.startMs - margin <= t.mtimeMs && t.mtimeMs <= r.completedMs + margin)
        ?.completedMs ?? round;
    const doomed = [...m.trash].filter(([name, t]) => {
      const gone = goneAt(t);
      // A trashed object whose original is back in place is re-trashed below instead.
      return (
        !m.reachable.has(name) && !m.live.has(name) && gone < round - margin && gone + margin < oldestWriter
      );
    });
    const toTrash = [...m.live.values()].filter(
      (o) => !m.reachable.has(o.name) && o.mtimeMs < Math.min(round - margin, oldestWriter),
    );
    const limiter = new Limiter(16);
    if (!dryRun) {
      await Promise.all(doomed.map(([name]) => limiter.run(() => repo.backend.delete(trashName(name)))));
      await Promise.all(
        toTrash.map((o) =>
          limiter.run(async () => repo.backend.put(trashName(o.name), await repo.backend.get(o.name))),
        ),
      );
      await repo.flush(); // the trash copies are durable before the originals go
      await Promise.all(toTrash.map((o) => limiter.run(() => repo.backend.delete(o.name))));
      // This run's record also covers trash that no recorded run explains (a run that died half
      // way): those originals were gone by now at the latest, so a later run may delete them.
      const unexplained = [...m.trash.values()].filter((t) => goneAt(t) === round).map((t) => t.mtimeMs);
      const startMs = Math.min(round, ...unexplained);
      const oldestTrash = Math.min(round, ...[...m.trash.values()].map((t) => t.mtimeMs));
      const kept = rounds.filter((r) => r.completedMs + margin >= oldestTrash - margin);
      await repo.putMeta(ROUNDS, {
        rounds: [...kept, { startMs, completedMs: repo.clock.now() }].slice(-100),
      });
    }
    const temporariesRemoved =
      !dryRun && repo.backend.sweepTemporaries
        ? await repo.backend.sweepTemporaries(round - (opts.temporaryAgeMs ?? 3_600_000))
        : 0;
    const stillTrashed = new Set(m.trash.keys());
    for (const [name] of doomed) stillTrashed.delete(name);
    for (const o of toTrash) stillTrashed.add(o.name);
    const inTrash = stillTrashed.size;
    return {
      dryRun,
      pits: m.pits.length,
      objects: m.live.size,
      reachable: m.reachable.size,
      trashed: toTrash.length,
      restored,
      deleted: doomed.length,
      deletedBytes: doomed.reduce((n, [, t]) => n + t.size, 0),
      inTrash,
      waitingReason:
        inTrash === 0
          ? null
          : m.writers.length > 0
            ? `${inTrash} object(s) stay in the trash until the ${m.writers.length} running writer(s) finish and a later run`
            : `${inTrash} object(s) stay in the trash for at least the safety margin (${margin} ms); a later run deletes them`,
      staleLocksBroken,
      temporariesRemoved,
    };
  } finally {
    await lock?.release();
  }
}

/**
 * Puts back every trashed object that a PIT references. Forgetting PITs calls
 * it, under the GC lock, after choosing what to forget and before deleting
 * (the invariant the deletion rule above relies on).
 */
export async function restoreAllReferenced(repo: Repository): Promise<number> {
  return restoreReferenced(repo, await mark(repo), false);
}
