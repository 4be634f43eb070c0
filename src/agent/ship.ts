/**
 * Reading dirty blocks and sending them: continuous shipping of a disk's
 * settled set (shipSettled), and the reads and sends of a consistency point
 * (readDirty and shipRuns, which point.ts calls while and after the
 * filesystems are frozen).
 *
 * A dirty block is read whole. A block of which less than half is dirty goes
 * as a patch of its dirty bytes, with the hash of the whole block as read,
 * which must equal the replica's copy plus the patch: a block that may hold
 * bytes outside its dirty ranges that the replica lacks (the trace marked it
 * again since the read, or a write to it is in flight) goes whole.
 */
import { createHash } from "node:crypto";
import { roundUp } from "../base/aligned.js";
import type { Clock } from "../base/index.js";
import type { SpareBuffers } from "../base/spare.js";
import type { Patch, SequencedMessage } from "../wire/index.js";
import type { BlockPool, PreparedBlock } from "./block-pool.js";
import { RUN_BLOCKS, blocksMessages, toWireBlock } from "./blocks-messages.js";
import { DirtySet } from "./dirty-set.js";
import type { DiskRun } from "./disk-run.js";

/** Blocks read from a disk, with the dirty byte ranges inside each. */
export interface ReadRun {
  disk: number;
  offset: number;
  data: Buffer;
  /** Per block of the run: dirty [start, end) pairs relative to the block, or "all". */
  dirty: ("all" | number[])[];
}

/** A run to read: its place on the disk instead of its bytes. */
type PlannedRun = Omit<ReadRun, "data"> & { length: number };

/**
 * Continuous shipping reads and ships the dirty runs in batches of at most
 * this many bytes (under a bandwidth cap, at most what the cap sends in a
 * second: a batch read far ahead of the link would wait in memory while its
 * blocks are written again). Two batches are in hand at a time, each with
 * the slabs its blocks are prepared in: at 16 MiB the agent's peak RSS in
 * the replication benchmark was about 50 MiB higher than at 4 MiB, for the
 * same sync time and lag...
 */
const SHIP_BATCH_BYTES = 4 * 1024 * 1024;
/** ...and runs. */
const SHIP_BATCH_RUNS = 512;

/** What shipping uses of the replication engine. */
export interface ShipContext {
  blockSize: number;
  pool: BlockPool;
  clock: Clock;
  counters: { bytesRead: number };
  /** The replicator's cap on blocks per BLOCKS frame (WELCOME), once known. */
  maxBlocksPerFrame(): number | undefined;
  /** Sends a message (throttled); `since` is the time of the oldest write it carries, null for now. */
  send(msg: SequencedMessage, since: number | null): Promise<number>;
  /** Dirty sets taken and not yet all sent: part of the backlog until they are. */
  shipping: Set<{ bytes: number; since: number | null }>;
  /** A disk's settled set was all sent. */
  progressed(): void;
  /** The bandwidth cap in bytes per second, 0 for none. */
  bytesPerSecond(): number;
  /**
   * Memory for continuous shipping's batches, kept for the next (two are in
   * use at a time: one read, one sent). A new buffer per read run instead
   * was half of the agent's allocations of 32 KiB and more in a replication
   * benchmark run (5 of 10.7 GB), each freed only by the collector.
   */
  batchBuffers: SpareBuffers;
}

/**
 * Ships every disk's settled set; returns how many runs of blocks were read.
 *
 * A block with a write in flight is not read with the others (planDirty):
 * once they are sent, the trace is drained (which reads the completions)
 * and such blocks are tried again, a few times, in the same pass. Put back
 * into the settled set, a block would carry the age of the whole set it came
 * from into the next, and under steady writes some block always is in
 * flight: the lag would only grow.
 */
export async function shipSettled(disks: DiskRun[], ctx: ShipContext): Promise<number> {
  let read = 0;
  for (const d of disks) {
    if (d.settled.isEmpty || d.owed) continue;
    const taken = d.settled.take();
    const shipping = { bytes: taken.dirtyBytes(), since: taken.dirtySince };
    ctx.shipping.add(shipping);
    let left: DirtySet | undefined = taken;
    try {
      for (let round = 0; left && !left.isEmpty; round++) {
        if (round > 0) {
          await d.tracker?.drain();
          if (round > 1) await ctx.clock.sleep(IN_FLIGHT_RETRY_MS);
        }
        const deferred = round < IN_FLIGHT_ROUNDS ? new DirtySet(taken.options) : d.settled;
        read += await shipSet(d, left, deferred, ctx, taken.dirtySince);
        left = deferred === d.settled ? undefined : deferred;
      }
    } catch (err) {
      d.settled.merge(taken);
      throw err;
    } finally {
      ctx.shipping.delete(shipping);
    }
    ctx.progressed();
  }
  return read;
}

/** Rounds of shipSettled for blocks with writes in flight; what is still in flight after them waits for the next pass. */
const IN_FLIGHT_ROUNDS = 4;
const IN_FLIGHT_RETRY_MS = 20;

/**
 * Reads and sends the dirty blocks of `set` but those with a write in flight,
 * which go to `deferred`; returns how many runs were read.
 */
async function shipSet(
  d: DiskRun,
  set: DirtySet,
  deferred: DirtySet,
  ctx: ShipContext,
  since: number | null,
): Promise<number> {
  // In batches, each read while the one before is shipped: the device and the link work at
  // once, and memory holds two batches, however large the set.
  const cap = ctx.bytesPerSecond();
  const batchBytes = cap > 0 ? Math.min(SHIP_BATCH_BYTES, Math.max(ctx.blockSize, cap)) : SHIP_BATCH_BYTES;
  const batches = batchRuns(planDirty(d, set, ctx, deferred), batchBytes);
  const memory = batches.map(() => undefined as ArrayBuffer | undefined);
  const read = (k: number): Promise<ReadRun[]> => {
    const bytes = batches[k]!.reduce((n, r) => n + r.length, 0);
    // A new buffer holds a whole batch, however full this one is, so that it serves every later one.
    memory[k] = ctx.batchBuffers.take(bytes, roundUp(Math.max(bytes, batchBytes), BATCH_BUFFER_STEP));
    return readRuns(d, batches[k]!, ctx, memory[k]);
  };
  let reading = batches.length ? read(0) : undefined;
  try {
    for (let k = 0; k < batches.length; k++) {
      const runs = await reading!;
      reading = k + 1 < batches.length ? read(k + 1) : undefined;
      reading?.catch(() => undefined); // awaited in the next round, or below after a failure
      // A patch carries the hash of the block as read, which must equal the replica's copy plus
      // the patch. A write the read saw but this set does not hold breaks that: blocks that the
      // trace marked again since the take (drained now, so every write done before the read is
      // in) go whole.
      await d.tracker?.drain();
      const touched = touchedBlocks([d.fresh, d.settled], ctx.blockSize);
      const now = ctx.clock.now();
      await shipRuns(
        runs,
        since,
        ctx,
        (_disk, offset) =>
          touched.has(offset / ctx.blockSize) || d.inFlight.overlaps(offset, ctx.blockSize, now),
      );
      // Sent: every whole block was copied to a worker's slab, every patch out of the block.
      ctx.batchBuffers.giveBack(memory[k]!);
    }
  } catch (err) {
    await reading?.catch(() => undefined); // the reader is free again before anything else reads
    throw err;
  }
  return batches.reduce((n, b) => n + b.length, 0);
}

/** New batch buffers are a multiple of this, so that one serves batches of other sizes. */
const BATCH_BUFFER_STEP = 1 << 20;

/** Reads the whole blocks that hold `set`'s dirty bytes (planDirty, then readRuns). */
export async function readDirty(d: DiskRun, set: DirtySet, ctx: ShipContext): Promise<ReadRun[]> {
  return readRuns(d, planDirty(d, set, ctx), ctx);
}

/**
 * The runs of consecutive whole blocks that hold `set`'s dirty bytes, to
 * read (readRuns). With `deferTo`, a block with a write still in flight is
 * left out: its dirty bytes go to that set, to be read later (a read now
 * could return the bytes from before the write).
 */
function planDirty(d: DiskRun, set: DirtySet, ctx: ShipContext, deferTo?: DirtySet): PlannedRun[] {
  const bs = ctx.blockSize;
  const now = ctx.clock.now();
  // Block index → dirty pairs inside it.
  const blocks = new Map<number, "all" | number[]>();
  for (const e of set.extents()) {
    const end = e.offset + e.length;
    for (let b = Math.floor(e.offset / bs); b * bs < end; b++) {
      const s = Math.max(e.offset, b * bs) - b * bs;
      const t = Math.min(end, Math.min((b + 1) * bs, d.size)) - b * bs;
      const blockLen = Math.min(bs, d.size - b * bs);
      const prev = blocks.get(b);
      if (prev === "all") continue;
      if (s === 0 && t >= blockLen) blocks.set(b, "all");
      else blocks.set(b, [...(prev ?? []), s, t]);
    }
  }
  if (deferTo && d.inFlight.size > 0) {
    for (const [b, dirty] of blocks) {
      if (!d.inFlight.overlaps(b * bs, Math.min(bs, d.size - b * bs), now)) continue;
      blocks.delete(b);
      if (dirty === "all") deferTo.add(b * bs, bs, set.dirtySince ?? now);
      else
        for (let k = 0; k < dirty.length; k += 2)
          deferTo.add(b * bs + dirty[k]!, dirty[k + 1]! - dirty[k]!, set.dirtySince ?? now);
    }
  }
  const order = [...blocks.keys()].sort((a, b) => a - b);
  const runs: PlannedRun[] = [];
  for (let i = 0; i < order.length;) {
    let j = i + 1;
    while (j < order.length && order[j] === order[j - 1]! + 1 && j - i < RUN_BLOCKS) j++;
    const offset = order[i]! * bs;
    runs.push({
      disk: d.cfg.index,
      offset,
      length: Math.min((order[j - 1]! + 1) * bs, d.size) - offset,
      dirty: order.slice(i, j).map((b) => blocks.get(b)!),
    });
    i = j;
  }
  return runs;
}

/** Planned runs in batches of at most `maxBytes` and SHIP_BATCH_RUNS (a larger run is a batch alone). */
function batchRuns(runs: PlannedRun[], maxBytes: number): PlannedRun[][] {
  const out: PlannedRun[][] = [];
  let bytes = 0;
  for (const run of runs) {
    const last = out.at(-1);
    if (last && last.length < SHIP_BATCH_RUNS && bytes + run.length <= maxBytes) {
      last.push(run);
      bytes += run.length;
    } else {
      out.push([run]);
      bytes = run.length;
    }
  }
  return out;
}

/**
 * Reads planned runs in one pass over the disk: the reader keeps a read in
 * flight while the last one is copied (runs scattered over the disk are
 * small, and read one at a time each would wait for the device in turn).
 * The runs' bytes go one after another into `memory` when given (large
 * enough for them all), else into a buffer of their own.
 */
async function readRuns(
  d: DiskRun,
  planned: PlannedRun[],
  ctx: ShipContext,
  memory?: ArrayBuffer,
): Promise<ReadRun[]> {
  let at = 0;
  const runs: ReadRun[] = planned.map(({ length, ...run }) => ({
    ...run,
    data: memory ? Buffer.from(memory, (at += length) - length, length) : Buffer.allocUnsafe(length),
  }));
  let r = 0;
  await d.reader.readRanges(
    planned.map(({ offset, length }) => ({ offset, length })),
    (offset, data) => {
      while (offset >= runs[r]!.offset + runs[r]!.data.length) r++;
      data.copy(runs[r]!.data, offset - runs[r]!.offset);
    },
  );
  for (const run of runs) ctx.counters.bytesRead += run.data.length;
  return runs;
}

/** Whole blocks that go to a worker as one job at most (the groups in a job need not be consecutive)... */
const PREPARE_JOB_BYTES = 1 << 20;
/** ...and jobs started ahead of the one being sent (bounds memory when a point ships a large set). */
const PREPARE_JOBS_AHEAD = 8;

/** A group of consecutive whole blocks in a prepare job, or a patch, in the order they are sent. */
type ShipItem =
  { disk: number; offset: number; job: number; from: number; count: number } | { patch: SequencedMessage };

/**
 * Sends read runs: a block of which less than half is dirty goes as a
 * patch of its dirty bytes (with the whole block's hash, so the replicator
 * can tell if its copy differed), the others whole. The whole blocks of
 * scattered writes are prepared on the workers many at once, in jobs of
 * several groups, not a worker round trip per group; what is sent keeps the
 * order of the runs.
 */
export async function shipRuns(
  runs: ReadRun[],
  since: number | null,
  ctx: ShipContext,
  mustBeWhole?: (disk: number, offset: number) => boolean,
): Promise<void> {
  const bs = ctx.blockSize;
  const items: ShipItem[] = [];
  const jobs: Buffer[][] = [];
  let jobBytes = 0;
  let jobBlocks = 0;
  const addWhole = (run: ReadRun, from: number, to: number): void => {
    // A long stretch goes in pieces of at most a job: the slabs jobs take stay small and alike.
    const most = Math.max(1, Math.floor(PREPARE_JOB_BYTES / bs));
    for (let start = from; start < to; start += most) addPiece(run, start, Math.min(to, start + most));
  };
  const addPiece = (run: ReadRun, start: number, end: number): void => {
    const slice = run.data.subarray(start * bs, Math.min(end * bs, run.data.length));
    if (!jobs.length || (jobBytes > 0 && jobBytes + slice.length > PREPARE_JOB_BYTES)) {
      jobs.push([]);
      jobBytes = 0;
      jobBlocks = 0;
    }
    items.push({
      disk: run.disk,
      offset: run.offset + start * bs,
      job: jobs.length - 1,
      from: jobBlocks,
      count: end - start,
    });
    jobs.at(-1)!.push(slice);
    jobBlocks += end - start;
    // A disk's short last block must end its job: a job is whole blocks but for its last.
    jobBytes = slice.length % bs === 0 ? jobBytes + slice.length : Infinity;
  };
  for (const run of runs) {
    let wholeStart = -1;
    for (let i = 0; i < run.dirty.length; i++) {
      const dirty = run.dirty[i]!;
      const block = run.data.subarray(i * bs, Math.min((i + 1) * bs, run.data.length));
      const pairs = dirty === "all" ? null : mergePairs(dirty);
      const dirtyBytes = pairs
        ? pairs.reduce((n, _, k) => (k % 2 ? n + pairs[k]! - pairs[k - 1]! : n), 0)
        : block.length;
      // An all-zero block goes whole (as `zero`): the replica stores it as no chunk at all.
      if (
        !pairs ||
        dirtyBytes * 2 >= block.length ||
        isZero(block) ||
        mustBeWhole?.(run.disk, run.offset + i * bs)
      ) {
        if (wholeStart < 0) wholeStart = i;
        continue;
      }
      if (wholeStart >= 0) addWhole(run, wholeStart, i);
      wholeStart = -1;
      const patches: Patch[] = [];
      // Views of the run, not copies: sending encodes the message, and the run outlives the sends.
      for (let k = 0; k < pairs.length; k += 2)
        patches.push({ at: pairs[k]!, data: block.subarray(pairs[k], pairs[k + 1]) });
      const sha256 = createHash("sha256").update(block).digest();
      items.push({
        patch: {
          type: "BLOCKS",
          disk: run.disk,
          offset: run.offset + i * bs,
          kind: "patch",
          sha256,
          patches,
        },
      });
    }
    if (wholeStart >= 0) addWhole(run, wholeStart, run.dirty.length);
  }
  // A job's blocks are let go once its last group is sent: memory holds the jobs ahead, not all.
  const lastItem: number[] = [];
  items.forEach((it, i) => {
    if (!("patch" in it)) lastItem[it.job] = i;
  });
  const prepared: (Promise<PreparedBlock[]> | undefined)[] = [];
  const startJobs = (upTo: number): void => {
    while (prepared.length < Math.min(jobs.length, upTo)) {
      const p = ctx.pool.prepare(jobs[prepared.length]!, bs);
      p.catch(() => undefined); // awaited in order below; one not reached after a failed send is dropped
      prepared.push(p);
    }
  };
  for (const [i, it] of items.entries()) {
    if ("patch" in it) {
      await ctx.send(it.patch, since);
      continue;
    }
    startJobs(it.job + 1 + PREPARE_JOBS_AHEAD);
    const job = await prepared[it.job]!;
    const blocks = job.slice(it.from, it.from + it.count).map(toWireBlock);
    const last = lastItem[it.job] === i;
    if (last) prepared[it.job] = undefined;
    for (const m of blocksMessages(it.disk, it.offset, blocks, bs, ctx.maxBlocksPerFrame()))
      await ctx.send(m, since);
    if (last) ctx.pool.release(job); // every message of the job is encoded: their blocks are copied
  }
}

/** Indexes of the blocks that hold a dirty byte of any of `sets`. */
export function touchedBlocks(sets: DirtySet[], blockSize: number): Set<number> {
  const out = new Set<number>();
  for (const set of sets)
    for (const e of set.extents())
      for (let b = Math.floor(e.offset / blockSize); b * blockSize < e.offset + e.length; b++) out.add(b);
  return out;
}

/** Sorts and merges [start, end) pairs. */
function mergePairs(pairs: number[]): number[] {
  const list: [number, number][] = [];
  for (let i = 0; i < pairs.length; i += 2) list.push([pairs[i]!, pairs[i + 1]!]);
  list.sort((a, b) => a[0] - b[0]);
  const out: number[] = [];
  for (const [s, e] of list) {
    if (out.length && s <= out[out.length - 1]!) out[out.length - 1] = Math.max(out[out.length - 1]!, e);
    else out.push(s, e);
  }
  return out;
}

const zeros = Buffer.alloc(1 << 20);
function isZero(b: Buffer): boolean {
  return b.length <= zeros.length && b.equals(zeros.subarray(0, b.length));
}
