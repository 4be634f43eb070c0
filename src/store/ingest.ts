import { roundUp } from "../base/aligned.js";
import { SpareBuffers } from "../base/spare.js";
import { ZERO_ENTRY, isZeroId, leafEntry, walkBlockMap, type BlockMapRef } from "./block-map.js";
import { type ChunkClaim, KnownIds, type KnownIdsOptions } from "./known-index.js";
import { OBJECT_OVERHEAD } from "./codec.js";
import { PackWriter } from "./pack.js";
import type { Pit } from "./pit.js";
import type { Repository } from "./repository.js";
import { type ChunkFrames, WorkerPool } from "./worker-pool.js";

export { KnownIds, type KnownIdsOptions } from "./known-index.js";

/**
 * The known set of a writer that read `maps` (PITs, or a head's disks):
 * every chunk and page they reference. Pages shared by several maps are read
 * once (a page seen before: its whole subtree is known already).
 */
export async function loadKnownIds(
  repo: Repository,
  maps: (Pit | BlockMapRef[])[],
  opts: KnownIdsOptions = {},
): Promise<KnownIds> {
  const known = new KnownIds(opts);
  try {
    for (const m of maps) {
      for (const d of Array.isArray(m) ? m : m.disks) {
        await walkBlockMap(
          repo,
          d,
          (_i, e) => known.chunks.add(e),
          (id) => {
            if (known.pages.hasId(id)) return false;
            known.pages.addId(id);
            return true;
          },
        );
      }
    }
  } catch (err) {
    known.close();
    throw err;
  }
  return known;
}

/** Run buffers kept for reuse: enough for an import's reads in flight and a few more. */
const MAX_SPARE_BUFFERS = 8;

export interface IngestStats {
  /** Chunks seen, and the bytes of those that were all zero. */
  chunks: number;
  zeroBytes: number;
  newChunks: number;
  dedupChunks: number;
  /** Encoded bytes of new chunks. */
  storedBytes: number;
}

export const emptyIngestStats = (): IngestStats => ({
  chunks: 0,
  zeroBytes: 0,
  newChunks: 0,
  dedupChunks: 0,
  storedBytes: 0,
});

/**
 * Turns runs of whole chunks into leaf entries: hashing, zero detection,
 * compression and encryption on one worker thread per core, chunks the
 * writer already knows skipped, new ones stored in packs. Several runs may be
 * in flight at once; each resolves to its entries in order. Import and the
 * replicator both write through it.
 */
export class ChunkIngest {
  readonly pool: WorkerPool;
  readonly packs: PackWriter;
  readonly stats = emptyIngestStats();
  /** Run buffers back from the workers (takeBuffer). */
  private readonly runBuffers = new SpareBuffers(MAX_SPARE_BUFFERS);
  /** ChunkFrames buffers back from the workers (takeFramesBuffer). */
  private readonly framesBuffers = new SpareBuffers(MAX_SPARE_BUFFERS);

  constructor(
    readonly repo: Repository,
    readonly known: KnownIds,
    opts: { packBytes?: number; writeConcurrency?: number; fullPacks?: boolean } = {},
  ) {
    this.pool = new WorkerPool(repo.keys, repo.config.compression.level);
    this.packs = new PackWriter(repo, opts.packBytes, opts.writeConcurrency ?? 2, opts.fullPacks ?? false);
  }

  /**
   * The leaf entries of the chunks in `buf` (consecutive chunks of a disk; the
   * last may be short). The buffer moves to a worker: the caller must not
   * touch it again; so do `frames` (compressed forms of some of the chunks,
   * stored as they are: ChunkFrames).
   */
  async run(buf: Buffer, frames?: ChunkFrames): Promise<Buffer[]> {
    const chunkSize = this.repo.config.chunkSize;
    const length = buf.length;
    const { batch, ids } = await this.pool.scan(buf, chunkSize, frames);
    const { known, stats } = this;
    const n = ids.length / 32;
    // Per chunk: its entry, or a promise of it (a chunk a run is storing, this one included).
    const entries: (Buffer | Promise<Buffer>)[] = new Array<Buffer>(n);
    const toEncode: { index: number; id: Buffer; claim: ChunkClaim }[] = [];
    for (let i = 0; i < n; i++) {
      const id = ids.subarray(i * 32, i * 32 + 32);
      stats.chunks++;
      if (isZeroId(id)) {
        stats.zeroBytes += Math.min(chunkSize, length - i * chunkSize);
        entries[i] = ZERO_ENTRY;
        continue;
      }
      const e = known.chunks.get(id);
      if (e !== undefined) {
        stats.dedupChunks++;
        entries[i] = e;
        continue;
      }
      const claim = known.chunks.claim(id);
      entries[i] = claim.promise;
      toEncode.push({ index: i, id: Buffer.from(id), claim });
    }
    try {
      const {
        objects,
        buffer,
        frames: framesBack,
      } = await this.pool.encode(
        batch,
        toEncode.map(({ index }) => index),
      );
      for (const [k, o] of objects.entries()) {
        const { index, id, claim } = toEncode[k]!;
        const entry = leafEntry(id, await this.packs.add(id, o.data));
        claim.resolve(entry);
        entries[index] = entry;
        stats.newChunks++;
        stats.storedBytes += o.size;
      }
      this.runBuffers.giveBack(buffer); // every object was copied into its pack
      if (framesBack) this.framesBuffers.giveBack(framesBack);
    } catch (err) {
      for (const t of toEncode) t.claim.reject(err);
      throw err;
    }
    // This run's own chunks are placed; chunks another run claimed first are placed by that run
    // (which never waits for this one before placing its own).
    const out: Buffer[] = new Array<Buffer>(n);
    for (let i = 0; i < n; i++) {
      const e = entries[i]!;
      out[i] = e instanceof Promise ? await e : e;
    }
    return out;
  }

  /**
   * A buffer for a run of `length` bytes, to fill and pass to `run`: one that
   * came back from a worker when one is large enough, so that reading a disk
   * allocates nothing per run (fresh memory for every run costs page faults,
   * and freed large blocks fragment the allocator's heaps). Its spare room
   * (OBJECT_OVERHEAD per chunk) lets the run's encoded chunks come back in it.
   */
  takeBuffer(length: number): Buffer {
    const room = length + Math.ceil(length / this.repo.config.chunkSize) * OBJECT_OVERHEAD;
    return Buffer.from(this.runBuffers.take(room, roundUp(room, 1 << 20)), 0, length);
  }

  /**
   * A buffer for a run's ChunkFrames of `length` bytes: one that came back
   * from a worker when one is large enough (the replicator copies every
   * received frame into one, and fresh memory per run costs page faults and,
   * counted against the heap, a full garbage collection every few dozen
   * megabytes). Sizes are rounded up to whole MiB so that buffers fit
   * later runs.
   */
  takeFramesBuffer(length: number): Buffer {
    return Buffer.from(this.framesBuffers.take(length, roundUp(length, 1 << 20)), 0, length);
  }

  /** Stores every pack still being filled; the entries returned so far are then valid (durable after a flush). */
  async finish(): Promise<void> {
    await this.packs.finish();
  }

  /** Stops the workers and frees the known set (which the ingest owns from its construction). */
  async close(): Promise<void> {
    await this.pool.close();
    this.known.close();
  }
}
