/**
 * Initial syncs and rescans: passes that read a whole disk and send what the
 * replica lacks (zero blocks as such, blocks the repository holds as
 * references, the rest compressed). The replication engine (replication.ts)
 * runs a pass a disk owes before anything else.
 */
import { promises as fs } from "node:fs";
import { type Clock, type Logger, isLifeboatError } from "../base/index.js";
import type { Block, BlocksMessage, SequencedMessage } from "../wire/index.js";
import type { BlockPool, PreparedBlock } from "./block-pool.js";
import { RUN_BLOCKS, blocksMessages, zeroHash } from "./blocks-messages.js";
import type { DiskRun } from "./disk-run.js";
import type { ByteRange } from "../store/disk-reader.js";

const PIPELINE = 3;
/** How often a rescan asks again which blocks the replicator holds while the link is down. */
const HAVE_RETRY_MS = 250;

/** What a pass uses of the replication engine. */
export interface ScanContext {
  blockSize: number;
  pool: BlockPool;
  clock: Clock;
  log: Logger;
  counters: { bytesRead: number; rescans: number };
  /** The engine is stopping: the pass reads no further. */
  stopping(): boolean;
  /** The replicator's cap on blocks per BLOCKS frame (WELCOME), once known. */
  maxBlocksPerFrame(): number | undefined;
  /** Which of `hashes` the replicator holds (AgentSession.have: rejects while the link is down). */
  have(hashes: Buffer[]): Promise<boolean[]>;
  /** Sends a message (throttled); `since` is the time of the oldest write it carries, null for now. */
  send(msg: SequencedMessage, since: number | null): Promise<number>;
  /** The disk owes a pass (again). */
  owe(d: DiskRun, kind: "initial" | "rescan"): void;
}

/**
 * Reads the whole disk in runs of 64 blocks, pipelined: while one run's
 * blocks are hashed and compressed in the workers and checked against the
 * repository (HAVE), the next is read. Zero blocks are skipped on an
 * initial sync (the replica starts empty) and sent as `zero` on a rescan;
 * blocks the repository holds go as references.
 */
export async function scanDisk(d: DiskRun, ctx: ScanContext): Promise<void> {
  const kind = d.owed!;
  d.owed = undefined;
  d.rescanAgain = false;
  d.pass = { kind, done: 0, started: ctx.clock.now() };
  d.sentPass = undefined;
  let lastSeq = 0;
  if (kind === "rescan") ctx.counters.rescans++;
  const bs = ctx.blockSize;
  const runBytes = bs * RUN_BLOCKS;
  if (!d.tracker) d.imageStamp = await stampOf(d.cfg.path);
  // The dirty sets stay as they are: a range dirty now may belong to a write still in flight,
  // which the pass could read before it lands; shipping it again afterwards costs little.
  ctx.log.info(
    { disk: d.cfg.path, kind, sizeBytes: d.size },
    `${kind === "initial" ? "initial sync" : "rescan"} started`,
  );
  const inflight: Promise<{ messages: BlocksMessage[]; prepared: PreparedBlock[] }>[] = [];
  const flush = async (): Promise<void> => {
    const { messages, prepared } = await inflight.shift()!;
    for (const m of messages) lastSeq = await ctx.send(m, null);
    ctx.pool.release(prepared); // the messages are encoded: their blocks are copied
  };
  const runs: ByteRange[] = [];
  for (let offset = 0; offset < d.size; offset += runBytes)
    runs.push({ offset, length: Math.min(runBytes, d.size - offset) });
  const stopped = new Error("stopping");
  try {
    // The reader keeps its next read in flight while a run is prepared and sent: the device and
    // the link work at once. Each piece it hands over is whole blocks (its buffers hold a power
    // of two of them), and prepare copies it before it returns, so its buffer is free at once.
    await d.reader
      .readRanges(runs, async (offset, data) => {
        if (ctx.stopping()) throw stopped;
        if (offset % bs !== 0)
          throw new Error(`internal: a read piece at ${offset} is not on a block boundary`);
        ctx.counters.bytesRead += data.length;
        inflight.push(prepareScanRun(d, offset, data, kind, ctx));
        inflight[inflight.length - 1]!.catch(() => undefined);
        d.pass!.done = offset + data.length;
        if (inflight.length >= PIPELINE) await flush();
      })
      .catch((err: unknown) => {
        if (err !== stopped) throw err;
      });
    while (inflight.length) await flush();
  } catch (err) {
    await Promise.allSettled(inflight);
    d.pass = undefined;
    ctx.owe(d, kind);
    throw err;
  }
  d.pass = undefined;
  if (lastSeq > 0) d.sentPass = { kind, seq: lastSeq };
  if (d.rescanAgain) ctx.owe(d, "rescan");
  ctx.log.info({ disk: d.cfg.path, kind }, `${kind === "initial" ? "initial sync" : "rescan"} done`);
}

async function prepareScanRun(
  d: DiskRun,
  offset: number,
  data: Buffer,
  kind: "initial" | "rescan",
  ctx: ScanContext,
): Promise<{ messages: BlocksMessage[]; prepared: PreparedBlock[] }> {
  const prepared = await ctx.pool.prepare(data, ctx.blockSize);
  const nonZero = prepared.filter((b) => b.encoding !== "zero");
  const inRepo = nonZero.length
    ? await held(
        nonZero.map((b) => b.sha256),
        ctx,
      )
    : [];
  const blocks: (Block | null)[] = [];
  let k = 0;
  for (const b of prepared) {
    if (b.encoding === "zero")
      blocks.push(kind === "initial" ? null : { encoding: "zero", sha256: zeroHash, data: Buffer.alloc(0) });
    else if (inRepo[k++]) blocks.push({ encoding: "ref", sha256: b.sha256, data: Buffer.alloc(0) });
    else blocks.push({ encoding: b.encoding, sha256: b.sha256, data: b.data });
  }
  // Runs of consecutive blocks to send; a skipped zero block splits them.
  const out: BlocksMessage[] = [];
  for (let i = 0; i < blocks.length;) {
    if (!blocks[i]) {
      i++;
      continue;
    }
    let j = i;
    while (j < blocks.length && blocks[j]) j++;
    out.push(
      ...blocksMessages(
        d.cfg.index,
        offset + i * ctx.blockSize,
        blocks.slice(i, j) as Block[],
        ctx.blockSize,
        ctx.maxBlocksPerFrame(),
      ),
    );
    i = j;
  }
  return { messages: out, prepared };
}

/**
 * Which of `hashes` the replicator holds. While the link is down this waits
 * for it rather than answering "none": a rescan during a cut would
 * otherwise fill the window with whole blocks the repository already has.
 */
async function held(hashes: Buffer[], ctx: ScanContext): Promise<boolean[]> {
  for (;;) {
    try {
      return await ctx.have(hashes);
    } catch (err) {
      if (ctx.stopping() || !(isLifeboatError(err) && err.code === "WIRE_CONNECTION_CLOSED"))
        return hashes.map(() => false); // send the blocks themselves; the replicator deduplicates them
      await ctx.clock.sleep(HAVE_RETRY_MS);
    }
  }
}

/** An image file's size and mtime: unchanged over a pass, the pass read a crash-consistent image. */
export async function stampOf(file: string): Promise<string> {
  const st = await fs.stat(file);
  return `${st.size}:${st.mtimeMs}`;
}
