/**
 * The applier's writes of whole chunks (applier.ts): runs of chunks with
 * their bytes (writeChunks), and chunks the replica already holds, named by
 * id (writeKnownChunk). Each takes a slot, is encoded on a worker (a run
 * through the chunk ingest; a single chunk shares a run with others,
 * ChunkWrites.encodeChunk), and takes effect in the applier's chain, in the
 * order issued.
 *
 * A run's buffer moves to a worker, so a copy of its last few chunks is kept
 * (`kept`) for the patches that may follow; a patch to an earlier chunk of
 * the run reads the chunk back by its entry.
 */
import { LifeboatError } from "../base/index.js";
import type { ChunkFrames, ChunkIngest, Repository } from "../store/index.js";
import { Limiter } from "../store/limiter.js";
import { type ChunkWrites, RECENT_CHUNKS_OF_A_RUN, type TrackedDisk, lazily } from "./chunk-writes.js";

/**
 * Single whole chunks written at once (scattered writes, apart from runs):
 * each waits a few milliseconds to share a worker run with others (like
 * patches), so the four run slots would throttle them.
 */
const SINGLES_IN_FLIGHT = 64;

export class RunWrites {
  /** Chunk runs and known-chunk writes in flight (`maxInFlight`). */
  private readonly slots: Limiter;
  /** Single whole chunks in flight (write), apart from runs: each waits a little to share a run. */
  private readonly singles = new Limiter(SINGLES_IN_FLIGHT);

  /**
   * `recentChunks`: settled chunks kept in each disk's `contents` (ChunkWrites).
   * `usable`: the disk a write goes to; throws if the applier failed or has no such disk.
   * `enqueue`: runs a step in the applier's chain after the steps before it, `always` either way.
   */
  constructor(
    private readonly repo: Repository,
    private readonly ingest: ChunkIngest,
    private readonly writes: ChunkWrites,
    private readonly recentChunks: number,
    maxInFlight: number,
    private readonly usable: (diskIndex: number) => TrackedDisk,
    private readonly enqueue: (step: () => Promise<void>, always: () => void) => void,
  ) {
    this.slots = new Limiter(maxInFlight);
  }

  /** Writes whole chunks at a chunk-aligned offset (ReplicaApplier.writeChunks says what must hold). */
  async write(
    diskIndex: number,
    offset: number,
    data: Uint8Array,
    opts: { owned?: boolean; frames?: ChunkFrames } = {},
  ): Promise<void> {
    const disk = this.usable(diskIndex);
    const cs = this.repo.config.chunkSize;
    const end = offset + data.length;
    if (offset % cs !== 0 || (end % cs !== 0 && end !== disk.meta.sizeBytes) || end > disk.meta.sizeBytes) {
      throw new LifeboatError(
        "REPLICA_BAD_WRITE",
        `a write of ${data.length} bytes at ${offset} is not whole chunks of disk ${diskIndex}`,
        { hint: "the sender must write whole chunks here; send partial chunks as byte ranges" },
      );
    }
    if (data.length === 0) return;
    const inflate = opts.frames?.inflate ?? 0;
    const single = data.length === cs && inflate === 0;
    const slots = single ? this.singles : this.slots;
    await slots.acquire();
    const kept = this.keptOf(data, cs, inflate);
    const keptFrom = data.length - kept.length;
    const length = data.length; // `data` may be `own`, detached once it moves
    const first = offset / cs;
    const count = Math.ceil(length / cs);
    let entries: Promise<Buffer[]>;
    if (single) {
      // A single chunk (a scattered write) joins the run of others that arrive within a few
      // milliseconds: two worker round trips per chunk cost the main thread more than compressing
      // it again (its frame, if it came with one, is not used then).
      entries = this.writes.encodeChunk(keptFrom === 0 ? kept : Buffer.from(data)).then((e) => [e]);
    } else {
      let own: Buffer; // moves to a worker
      if (opts.owned && Buffer.isBuffer(data) && data.byteOffset === 0) own = data;
      else {
        own = Buffer.allocUnsafeSlow(data.length);
        own.set(data);
      }
      entries = this.ingest.run(own, opts.frames);
    }
    entries.catch(() => undefined); // handled in the chain below
    const versions: number[] = new Array<number>(count);
    for (let i = 0; i < count; i++) {
      const at = i * cs;
      versions[i] = this.writes.track(
        disk,
        first + i,
        at >= keptFrom
          ? lazily(() => Promise.resolve(kept.subarray(at - keptFrom, Math.min(at + cs, length) - keptFrom)))
          : lazily(async () => this.writes.readByEntry(disk, first + i, (await entries)[i]!)),
      );
    }
    this.enqueue(
      async () => {
        for (const [i, e] of (await entries).entries()) {
          if (this.writes.settled(disk, first + i, versions[i]!, i * cs >= keptFrom))
            disk.pending.set(first + i, e);
        }
      },
      () => slots.release(),
    );
  }

  /**
   * A copy of the last few chunks of a run (the run's buffer is transferred),
   * for patches that may follow. `inflate`: the run's first chunks that a
   * worker decompresses; none of them may be among the kept ones.
   */
  private keptOf(data: Uint8Array, cs: number, inflate: number): Buffer {
    const keep = Math.min(this.recentChunks, RECENT_CHUNKS_OF_A_RUN, Math.ceil(data.length / cs)) * cs;
    if (inflate > Math.ceil(Math.max(0, data.length - keep) / cs)) {
      throw new Error(`internal: ${inflate} chunks of a run are left to a worker, ${keep / cs} kept`);
    }
    return Buffer.from(data.subarray(Math.max(0, data.length - keep)));
  }

  /** Writes a chunk as a copy of one the replica holds (ReplicaApplier.writeKnownChunk). */
  async writeKnown(diskIndex: number, offset: number, id: Uint8Array): Promise<void> {
    const disk = this.usable(diskIndex);
    const cs = this.repo.config.chunkSize;
    if (offset % cs !== 0 || offset >= disk.meta.sizeBytes) {
      throw new LifeboatError(
        "REPLICA_BAD_WRITE",
        `a chunk reference at ${offset} is not at a chunk of disk ${diskIndex}`,
        { hint: "the sender must refer to whole chunks" },
      );
    }
    const known = this.ingest.known.chunks.get(id);
    if (!known) {
      throw new LifeboatError(
        "REPLICA_UNKNOWN_CHUNK",
        `the sender referred to chunk ${Buffer.from(id).toString("hex")}, which this replica does not hold`,
        { hint: "the sender must send the chunk's bytes; it resends them after reconnecting" },
      );
    }
    await this.slots.acquire();
    const index = offset / cs;
    const v = this.writes.track(
      disk,
      index,
      lazily(async () => this.writes.readByEntry(disk, index, Buffer.from(await known))),
    );
    this.enqueue(
      async () => {
        const entry = Buffer.from(await known);
        if (this.writes.settled(disk, index, v, false)) disk.pending.set(index, entry);
      },
      () => this.slots.release(),
    );
  }
}
