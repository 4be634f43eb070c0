/**
 * Consistency points: ship the backlog, run the pre-hook, freeze the disks'
 * filesystems, drain the trackers, take and read the dirty sets, thaw, run
 * the post-hook, send what was read and a POINT, and wait for the
 * replicator's PIT (docs/agent.md, "Consistency points"). The engine
 * (replication.ts) queues the requests and makes one point at a time, as a
 * step of its loop.
 *
 * The level recorded is the one reached, whatever was asked: a point below
 * the level asked for is still committed (the PIT is kept), then fails with
 * PIT_CONSISTENCY_TOO_LOW. A point made unsound by lost trace events is not
 * sent: it is made again after the rescan the loss asked for
 * (RETRY_AFTER_RESCAN).
 */
import { randomBytes } from "node:crypto";
import { type Clock, LifeboatError, type Logger } from "../base/index.js";
import type { ConsistencyLevel, PointDone, SequencedMessage } from "../wire/index.js";
import type { AgentSettings } from "./config.js";
import type { DirtySet } from "./dirty-set.js";
import type { DiskRun } from "./disk-run.js";
import { withFrozen } from "./freeze.js";
import { type MountedFilesystem, mountedFilesystems } from "./mounted-filesystems.js";
import { type ScanContext, scanDisk, stampOf } from "./scan.js";
import { type ReadRun, type ShipContext, readDirty, shipRuns, shipSettled, touchedBlocks } from "./ship.js";
import { within } from "./within.js";

export interface PointRequest {
  /** Scheduled points are thinned out by retention; others (on demand) are kept longer. Default "demand". */
  origin?: "scheduled" | "demand";
  /** Lowest level the caller accepts; a point that reaches less fails with PIT_CONSISTENCY_TOO_LOW. */
  consistency?: ConsistencyLevel;
  /**
   * For group PITs: called while frozen; resolves once every member is frozen
   * (proceed, with the group's time) or the group gave up.
   */
  barrier?(): Promise<{ proceed: boolean; takenAt?: number }>;
}

export interface PointResult {
  pointId: string;
  /** Undefined only when the replicator's answer was lost to a reconnect. */
  pitId: string | undefined;
  seq: number;
  takenAt: number;
  consistency: ConsistencyLevel;
  disks: { index: number; sizeBytes: number }[];
}

/** What makePoint uses of the replication engine. */
export interface PointContext {
  /** The engine's disks; a point reads and marks them all. */
  disks: DiskRun[];
  /** What the scan and shipping passes use of the engine (scan.ts, ship.ts). */
  passes: ScanContext & ShipContext;
  settings: Pick<AgentSettings, "preHook" | "postHook" | "freezeCapMs">;
  blockSize: number;
  clock: Clock;
  log: Logger;
  /** `traceLosses` is counted by the trackers: a change while the point is made means it may miss writes. */
  counters: { traceLosses: number };
  /** A number for the next point's id, never the same twice in one engine. */
  nextPointSeq(): number;
  /** The filesystems are frozen (true) until thawed (false): nothing may write to a file meanwhile. */
  setFrozen(frozen: boolean): void;
  /** Moves traced writes to the settled sets when a batching period has passed. */
  rotate(): void;
  /** Sends a message (throttled); `since` is the time of the oldest write it carries, null for now. */
  send(msg: SequencedMessage, since: number | null): Promise<number>;
  /** Resolves once the replicator acknowledged every message up to `seq` (AgentSession.whenAcked). */
  whenAcked(seq: number): Promise<void>;
  /** The replicator's POINT_DONE answers, by point id: makePoint adds its own and removes it once answered. */
  pointWaiters: Map<string, (done: PointDone) => void>;
  /**
   * The point was sent and acknowledged (its PIT made, unless `pitId` is
   * undefined): the engine records its progress and last PIT. Called also for
   * a point below the level asked for, which is kept.
   */
  committed(result: PointResult): void;
  /**
   * Runs while the filesystems are frozen, after the dirty blocks were read
   * (tests snapshot the device here). It must not write to a frozen filesystem.
   */
  whileFrozen?(point: { pointId: string; takenAt: number }): Promise<void>;
}

/** Thrown inside makePoint when lost trace events make the point unsound: it is made again after the rescan. */
export const RETRY_AFTER_RESCAN = new Error("retry the point after the rescan");
const LEVELS: ConsistencyLevel[] = ["none", "crash", "filesystem", "application"];

/** Makes a consistency point; resolves when its PIT is committed. */
export async function makePoint(req: PointRequest, ctx: PointContext): Promise<PointResult> {
  const lossesBefore = ctx.counters.traceLosses;
  const pointId = `${req.origin === "scheduled" ? "s" : "d"}${ctx.clock.now().toString(36)}${ctx.nextPointSeq().toString(36)}${randomBytes(2).toString("hex")}`;
  // Ship the backlog first, so that little is left to read while frozen.
  for (let i = 0; i < 3; i++) {
    ctx.rotate();
    if (!ctx.disks.some((d) => !d.settled.isEmpty)) break;
    await shipSettled(ctx.disks, ctx.passes);
  }
  const scanOnly = ctx.disks.filter((d) => !d.tracker);
  const read = await freezeAndRead(pointId, req, ctx);
  let level = read.level;
  // Image files (scan mode) are read whole; unchanged size and mtime over the pass make it a crash-consistent image.
  for (const d of scanOnly) {
    d.owed = "rescan";
    await scanDisk(d, ctx.passes);
    if ((await stampOf(d.cfg.path)) !== d.imageStamp) level = "none";
  }
  await shipRead(read, ctx);
  if (req.consistency && LEVELS.indexOf(level) < LEVELS.indexOf(req.consistency))
    ctx.log.warn({ wanted: req.consistency, reached: level }, "the point is less consistent than asked");
  const disks = ctx.disks.map((d) => ({ index: d.cfg.index, sizeBytes: d.size }));
  const done = new Promise<PointDone | undefined>((resolve) => {
    ctx.pointWaiters.set(pointId, resolve);
  });
  if (ctx.counters.traceLosses !== lossesBefore && ctx.disks.some((d) => d.owed)) throw RETRY_AFTER_RESCAN;
  const { takenAt } = read;
  const seq = await ctx.send({ type: "POINT", pointId, consistency: level, takenAt, disks }, takenAt);
  await ctx.whenAcked(seq);
  const answer = await within(done, 10_000);
  ctx.pointWaiters.delete(pointId);
  const result: PointResult = { pointId, pitId: answer?.pitId, seq, takenAt, consistency: level, disks };
  ctx.committed(result);
  ctx.log.info({ pointId, pitId: answer?.pitId, consistency: level }, "consistency point committed");
  if (req.consistency && LEVELS.indexOf(level) < LEVELS.indexOf(req.consistency))
    throw new LifeboatError(
      "PIT_CONSISTENCY_TOO_LOW",
      `the PIT ${answer?.pitId ?? pointId} is ${level}-consistent; ${req.consistency} was asked for`,
      { hint: "the PIT was kept; see the agent's log for why the freeze or hooks fell short" },
    );
  return result;
}

/** What a point took from the traced disks: their dirty sets, and those blocks as read at `takenAt`. */
interface PointRead {
  level: ConsistencyLevel;
  takenAt: number;
  /** The dirty set taken from each traced disk; merged back if the point fails before they are sent. */
  taken: Map<DiskRun, DirtySet>;
  runs: ReadRun[];
  /** Some of the dirty blocks were read while writes could land (no freeze, or the cap thawed early). */
  readUnfrozen: boolean;
}

/**
 * Runs the hooks around reading the traced disks' dirty blocks: frozen where
 * they hold mounted filesystems (up to the freeze cap), else while writes may
 * land; the level is what that reached.
 */
async function freezeAndRead(pointId: string, req: PointRequest, ctx: PointContext): Promise<PointRead> {
  const s = ctx.settings;
  const filesystems: MountedFilesystem[] = [];
  for (const d of ctx.disks) if (d.tracker) filesystems.push(...(await mountedFilesystems(d.cfg.path)));
  const hooksRan = s.preHook ? await runHook(s.preHook, "pre", ctx.log) : false;
  const c: PointRead = {
    level: "crash",
    takenAt: ctx.clock.now(),
    taken: new Map(),
    runs: [],
    readUnfrozen: false,
  };
  const atBarrier = async (): Promise<boolean> => {
    if (!req.barrier) {
      c.takenAt = ctx.clock.now();
      return true;
    }
    const b = await req.barrier();
    if (b.proceed && b.takenAt !== undefined) c.takenAt = b.takenAt;
    return b.proceed;
  };
  try {
    if (filesystems.length) {
      ctx.setFrozen(true);
      let proceed = true;
      const r = await withFrozen(
        filesystems,
        async () => {
          proceed = await atBarrier();
          if (!proceed) return;
          c.runs = await readTaken(ctx, c.taken);
          await ctx.whileFrozen?.({ pointId, takenAt: c.takenAt });
        },
        { capMs: s.freezeCapMs, logger: ctx.log },
      ).finally(() => ctx.setFrozen(false));
      if (!proceed) throw groupAborted();
      if (r.capHit) {
        // Thawed before the read was done: what was read may mix times. Crash-consistent only if nothing was written.
        await drainTrackers(ctx);
        c.level = ctx.disks.every((d) => d.fresh.isEmpty) ? "crash" : "none";
        c.readUnfrozen = true;
        ctx.log.warn({ frozenMs: r.frozenMs, level: c.level }, "freeze cap reached");
      } else c.level = hooksRan ? "application" : "filesystem";
    } else {
      if (!(await atBarrier())) throw groupAborted();
      c.runs = await readTaken(ctx, c.taken);
      // Crash-consistent only if the trace saw no write while the dirty set was read.
      await drainTrackers(ctx);
      c.level = ctx.disks.filter((d) => d.tracker).every((d) => d.fresh.isEmpty) ? "crash" : "none";
      c.readUnfrozen = true;
      if (hooksRan && c.level === "crash") c.level = "application";
    }
  } catch (err) {
    for (const [d, set] of c.taken) d.settled.merge(set);
    throw err;
  } finally {
    if (s.postHook) await runHook(s.postHook, "post", ctx.log);
  }
  return c;
}

/** Takes every traced disk's dirty set (into `taken`) and reads its blocks. */
async function readTaken(ctx: PointContext, taken: Map<DiskRun, DirtySet>): Promise<ReadRun[]> {
  const now = ctx.clock.now();
  for (const d of ctx.disks) {
    if (!d.tracker) continue;
    await d.tracker.drain();
    const set = d.settled.take();
    set.merge(d.fresh.take());
    taken.set(d, set);
    // Unfrozen, a write may still be in flight: the read may return the bytes from before it
    // (a state the disk held, so the point keeps them), but the replica must get the write
    // too: its ranges stay dirty for continuous shipping. Frozen, nothing is in flight.
    if (d.inFlight.size > 0)
      for (const e of set.extents())
        if (d.inFlight.overlaps(e.offset, e.length, now))
          d.settled.add(e.offset, e.length, set.dirtySince ?? now);
  }
  const runs: ReadRun[] = [];
  for (const [d, set] of taken) runs.push(...(await readDirty(d, set, ctx.passes)));
  return runs;
}

/** Reads every traced write so far into the disks' fresh sets. */
async function drainTrackers(ctx: PointContext): Promise<void> {
  await Promise.all(ctx.disks.map((d) => d.tracker?.drain() ?? Promise.resolve()));
}

/** Sends what the point read; on failure its dirty sets go back to be shipped again. */
async function shipRead(c: PointRead, ctx: PointContext): Promise<void> {
  // A block written during an unfrozen read may hold bytes outside its dirty ranges that the
  // replica lacks: a patch of it would not match the hash of the block as read, so it goes whole.
  const writtenDuringRead = new Map<number, Set<number>>();
  if (c.readUnfrozen)
    for (const d of ctx.disks)
      if (!d.fresh.isEmpty) writtenDuringRead.set(d.cfg.index, touchedBlocks([d.fresh], ctx.blockSize));
  try {
    await shipRuns(
      c.runs,
      c.takenAt,
      ctx.passes,
      (disk, offset) => writtenDuringRead.get(disk)?.has(offset / ctx.blockSize) ?? false,
    );
  } catch (err) {
    for (const [d, set] of c.taken) d.settled.merge(set);
    throw err;
  }
}

/** Runs an operator hook (argv, no shell, 60 s cap); true when it succeeded. */
async function runHook(argv: string[], which: "pre" | "post", log: Logger): Promise<boolean> {
  const { execFile } = await import("node:child_process");
  return new Promise((resolve) => {
    execFile(argv[0]!, argv.slice(1), { timeout: 60_000 }, (err, _stdout, stderr) => {
      if (err)
        log.warn({ hook: which, err: err.message, stderr: stderr.slice(0, 2000) }, `${which}-hook failed`);
      resolve(!err);
    });
  });
}

function groupAborted(): LifeboatError {
  return new LifeboatError("GROUP_PIT_ABORTED", "the consistency group did not freeze in time", {
    hint: "check that every server of the group is connected (lifeboat servers list)",
  });
}
