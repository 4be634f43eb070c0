import path from "node:path";
import { LifeboatError } from "../base/index.js";
import { BlockMapBuilder, ZERO_ENTRY, entryId, isZeroId, leafEntry, walkBlockMap } from "./block-map.js";
import { openDiskSource } from "./disk-source.js";
import { acquireLock } from "./locks.js";
import {
  type ConsistencyLevel,
  type Pit,
  type PitDisk,
  listPits,
  validateServerName,
  writePit,
} from "./pit.js";
import { PackWriter } from "./pack.js";
import type { Repository } from "./repository.js";
import { WorkerPool } from "./worker-pool.js";

export interface ImportProgress {
  disk: number;
  path: string;
  bytesDone: number;
  bytesTotal: number;
}

export interface ImportStats {
  bytesRead: number;
  zeroBytes: number;
  chunks: number;
  newChunks: number;
  dedupChunks: number;
  storedBytes: number;
  packs: number;
}

export interface ImportOptions {
  server: string;
  disks: string[];
  consistency?: ConsistencyLevel;
  labels?: Record<string, string>;
  onProgress?: (p: ImportProgress) => void;
  /** Reads in flight; each is `batchBytes` of memory (default 4). */
  readAhead?: number;
  batchBytes?: number;
  /** Pack stores in flight (default 2); each holds up to `packBytes` of memory. */
  writeConcurrency?: number;
  /** Target pack size (default 16 MiB). */
  packBytes?: number;
}

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

export async function loadKnownIds(repo: Repository, pits: Pit[]): Promise<KnownIds> {
  const known: KnownIds = { chunks: new Map(), pages: new Set() };
  for (const pit of pits) {
    for (const d of pit.disks) {
      await walkBlockMap(
        repo,
        d,
        (_i, e) => void known.chunks.set(entryId(e).toString("latin1"), Buffer.from(e)),
        (id) => void known.pages.add(id.toString("latin1")),
      );
    }
  }
  return known;
}

/**
 * Reads whole disks sequentially and makes one PIT of them. Chunks the
 * repository already holds are not stored again; zero chunks are not stored.
 * Hashing, compression and encryption run on one worker thread per core;
 * new chunks go into packs (pack.ts). The PIT is written only after every
 * object it names is durable.
 */
export async function importDisks(
  repo: Repository,
  opts: ImportOptions,
): Promise<{ pit: Pit; stats: ImportStats }> {
  validateServerName(opts.server);
  if (opts.disks.length === 0) {
    throw new LifeboatError("USAGE", "no disk given", { hint: "give --disk PATH (repeatable)", exitCode: 2 });
  }
  const sources = [];
  try {
    for (const p of opts.disks) sources.push(await openDiskSource(p));
  } catch (err) {
    await Promise.all(sources.map((s) => s.handle.close()));
    throw err;
  }
  const lock = await acquireLock(repo, "writer", `import ${opts.server}`);
  lock.keepAlive();
  const pool = new WorkerPool(repo.keys, repo.config.compression.level);
  const stats: ImportStats = {
    bytesRead: 0,
    zeroBytes: 0,
    chunks: 0,
    newChunks: 0,
    dedupChunks: 0,
    storedBytes: 0,
    packs: 0,
  };
  try {
    const known = await loadKnownIds(repo, await listPits(repo, { damaged: [] }));
    const disks: PitDisk[] = [];
    for (const [index, src] of sources.entries()) {
      const ref = await importOne(repo, pool, src, index, known, stats, opts);
      disks.push({
        index,
        source: path.resolve(src.path),
        sizeBytes: src.size,
        chunkSize: repo.config.chunkSize,
        ...ref,
      });
    }
    const pit = await writePit(repo, {
      server: opts.server,
      timeMs: repo.clock.now(),
      consistency: opts.consistency ?? "none",
      disks,
      labels: { ...opts.labels, madeBy: opts.labels?.madeBy ?? "store import" },
    });
    return { pit, stats };
  } finally {
    await pool.close();
    await Promise.all(sources.map((s) => s.handle.close()));
    await lock.release();
  }
}

async function importOne(
  repo: Repository,
  pool: WorkerPool,
  src: Awaited<ReturnType<typeof openDiskSource>>,
  index: number,
  known: KnownIds,
  stats: ImportStats,
  opts: ImportOptions,
) {
  const chunkSize = repo.config.chunkSize;
  const chunkCount = Math.ceil(src.size / chunkSize);
  const builder = new BlockMapBuilder(repo, chunkCount, known.pages);
  const batchBytes = Math.max(chunkSize, Math.floor((opts.batchBytes ?? 4 << 20) / chunkSize) * chunkSize);
  const readAhead = opts.readAhead ?? 4;
  const packs = new PackWriter(repo, opts.packBytes, opts.writeConcurrency ?? 2);
  // Each batch resolves to the ids of its chunks, in order (zero chunks have the zero id).
  const inflight: Promise<Buffer>[] = [];

  const drainOne = async () => {
    const ids = await inflight.shift()!;
    for (let i = 0; i < ids.length; i += 32) {
      const id = ids.subarray(i, i + 32);
      if (isZeroId(id)) {
        await builder.push(ZERO_ENTRY);
        continue;
      }
      // Placed by now, or being placed by a batch that claimed it first (possibly a later one).
      const entry = known.chunks.get(id.toString("latin1"));
      if (!entry) throw new Error("import: a chunk is in no batch");
      await builder.push(await entry);
    }
  };

  const processBatch = async (buf: Buffer): Promise<Buffer> => {
    const length = buf.length; // the buffer moves to a worker
    const { batch, ids } = await pool.scan(buf, chunkSize);
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
      const objects = await pool.encode(
        batch,
        toEncode.map(({ index, id }) => ({ index, id })),
      );
      for (const [k, o] of objects.entries()) {
        const { id, placed } = toEncode[k]!;
        const entry = leafEntry(id, await packs.add(id, o.data));
        known.chunks.set(id.toString("latin1"), entry);
        placed.resolve(entry);
        stats.newChunks++;
        stats.storedBytes += o.size;
      }
    } catch (err) {
      for (const t of toEncode) t.placed.reject(err);
      throw err;
    }
    return ids;
  };

  for (let offset = 0; offset < src.size;) {
    while (inflight.length >= readAhead) await drainOne();
    const length = Math.min(batchBytes, src.size - offset);
    const buf = Buffer.allocUnsafeSlow(length);
    let got = 0;
    while (got < length) {
      const { bytesRead } = await src.handle.read(buf, got, length - got, offset + got);
      if (bytesRead === 0) {
        throw new LifeboatError(
          "DISK_UNREADABLE",
          `disk ${src.path} ended at byte ${offset + got}, expected ${src.size}`,
          {
            hint: "the disk shrank while it was read; retry",
          },
        );
      }
      got += bytesRead;
    }
    offset += length;
    stats.bytesRead += length;
    const p = processBatch(buf);
    p.catch(() => undefined); // awaited in order by drainOne; this only avoids an unhandled rejection meanwhile
    inflight.push(p);
    opts.onProgress?.({ disk: index, path: src.path, bytesDone: offset, bytesTotal: src.size });
  }
  while (inflight.length > 0) await drainOne();
  await packs.finish();
  stats.packs += packs.packs;
  return builder.finish();
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
  promise.catch(() => undefined); // the batch that claimed it reports the failure
  return { promise, resolve, reject };
}
