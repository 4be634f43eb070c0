import { ZERO_ENTRY, isZeroId, leafEntry, walkBlockMap, type BlockMapRef } from "./block-map.js";
import { type ChunkClaim, KnownIds, type KnownIdsOptions } from "./known-index.js";
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

  constructor(
    readonly repo: Repository,
    readonly known: KnownIds,
    opts: { packBytes?: number; writeConcurrency?: number } = {},
  ) {
    this.pool = new WorkerPool(repo.keys, repo.config.compression.level);
    this.packs = new PackWriter(repo, opts.packBytes, opts.writeConcurrency ?? 2);
  }

  /**
   * The leaf entries of the chunks in `buf` (consecutive chunks of a disk; the
   * last may be short). The buffer goes to a worker (takeBuffer's without a
   * copy): the caller must not touch it again. `frames`: compressed forms of
   * some of the chunks, stored as they are (ChunkFrames).
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
      const { objects, done } = await this.pool.encode(
        batch,
        toEncode.map(({ index }) => index),
      );
      try {
        for (const [k, o] of objects.entries()) {
          const { index, id, claim } = toEncode[k]!;
          const entry = leafEntry(id, await this.packs.add(id, o.data));
          claim.resolve(entry);
          entries[index] = entry;
          stats.newChunks++;
          stats.storedBytes += o.size;
        }
      } finally {
        done(); // every object was copied into its pack (or will not be)
      }
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
   * A buffer for a run of `length` bytes, to fill and pass to `run` (with
   * `framesBytes` of ChunkFrames at most): a slab of the worker pool's, so
   * that reading a disk allocates nothing per run (fresh memory for every
   * run costs page faults and garbage collections, and freed large blocks
   * fragment the allocator's heaps).
   */
  takeBuffer(length: number, framesBytes = 0): Buffer {
    return this.pool.runBuffer(length, this.repo.config.chunkSize, framesBytes);
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
