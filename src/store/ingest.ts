import { ZERO_ENTRY, entryId, isZeroId, leafEntry, walkBlockMap, type BlockMapRef } from "./block-map.js";
import { PackWriter } from "./pack.js";
import type { Pit } from "./pit.js";
import type { Repository } from "./repository.js";
import { WorkerPool } from "./worker-pool.js";

/**
 * Chunks and pages already in the repository that a writer may skip storing:
 * everything the PITs it read reference, plus what it wrote itself (see
 * locks.ts for why nothing else may be trusted while GC runs). Chunks map
 * their id (latin1) to their leaf entry, or, while this writer is still
 * storing them, to a promise of it.
 */
export interface KnownIds {
  chunks: Map<string, Buffer | Promise<Buffer>>;
  pages: Set<string>;
}

export async function loadKnownIds(repo: Repository, maps: (Pit | BlockMapRef[])[]): Promise<KnownIds> {
  const known: KnownIds = { chunks: new Map(), pages: new Set() };
  for (const m of maps) {
    for (const d of Array.isArray(m) ? m : m.disks) {
      await walkBlockMap(
        repo,
        d,
        (_i, e) => void known.chunks.set(entryId(e).toString("latin1"), Buffer.from(e)),
        (id) => {
          // A page seen before (PITs share most of their pages): its whole subtree is known already.
          const key = id.toString("latin1");
          if (known.pages.has(key)) return false;
          known.pages.add(key);
          return true;
        },
      );
    }
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
   * last may be short). The buffer moves to a worker: the caller must not
   * touch it again.
   */
  async run(buf: Buffer): Promise<Buffer[]> {
    const chunkSize = this.repo.config.chunkSize;
    const length = buf.length;
    const { batch, ids } = await this.pool.scan(buf, chunkSize);
    const { known, stats } = this;
    const toEncode: { index: number; id: Buffer; placed: Deferred<Buffer> }[] = [];
    for (let i = 0; i * 32 < ids.length; i++) {
      const id = ids.subarray(i * 32, i * 32 + 32);
      stats.chunks++;
      if (isZeroId(id)) {
        stats.zeroBytes += Math.min(chunkSize, length - i * chunkSize);
        continue;
      }
      const key = id.toString("latin1");
      if (known.chunks.has(key)) {
        stats.dedupChunks++;
        continue;
      }
      const placed = deferred<Buffer>();
      known.chunks.set(key, placed.promise);
      toEncode.push({ index: i, id: Buffer.from(id), placed });
    }
    try {
      const objects = await this.pool.encode(
        batch,
        toEncode.map(({ index, id }) => ({ index, id })),
      );
      for (const [k, o] of objects.entries()) {
        const { id, placed } = toEncode[k]!;
        const entry = leafEntry(id, await this.packs.add(id, o.data));
        known.chunks.set(id.toString("latin1"), entry);
        placed.resolve(entry);
        stats.newChunks++;
        stats.storedBytes += o.size;
      }
    } catch (err) {
      for (const t of toEncode) t.placed.reject(err);
      throw err;
    }
    // This run's own chunks are placed; chunks another run claimed first are placed by that run
    // (which never waits for this one before placing its own).
    const entries: Buffer[] = [];
    for (let i = 0; i * 32 < ids.length; i++) {
      const id = ids.subarray(i * 32, i * 32 + 32);
      if (isZeroId(id)) entries.push(ZERO_ENTRY);
      else {
        const e = known.chunks.get(id.toString("latin1"));
        if (!e) throw new Error("ingest: a chunk vanished from the known set");
        entries.push(await e);
      }
    }
    return entries;
  }

  /** Stores every pack still being filled; the entries returned so far are then valid (durable after a flush). */
  async finish(): Promise<void> {
    await this.packs.finish();
  }

  async close(): Promise<void> {
    await this.pool.close();
  }
}

interface Deferred<T> {
  promise: Promise<T>;
  resolve(v: T): void;
  reject(e: unknown): void;
}

function deferred<T>(): Deferred<T> {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  promise.catch(() => undefined); // the run that claimed it reports the failure
  return { promise, resolve, reject };
}
