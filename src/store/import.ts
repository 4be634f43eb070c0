import path from "node:path";
import { LifeboatError } from "../base/index.js";
import { BlockMapBuilder, isZeroId, walkBlockMap } from "./block-map.js";
import { Limiter } from "./limiter.js";
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
  /** Object writes in flight (default 16). */
  writeConcurrency?: number;
}

/**
 * Ids already in the repository that a writer may skip storing: everything
 * the PITs it read reference, plus what it wrote itself (see locks.ts for why
 * nothing else may be trusted while GC runs).
 */
export interface KnownIds {
  chunks: Set<string>;
  pages: Set<string>;
}

export async function loadKnownIds(repo: Repository, pits: Pit[]): Promise<KnownIds> {
  const known: KnownIds = { chunks: new Set(), pages: new Set() };
  for (const pit of pits) {
    for (const d of pit.disks) {
      await walkBlockMap(
        repo,
        d,
        (_i, id) => void known.chunks.add(id.toString("latin1")),
        (id) => void known.pages.add(id.toString("latin1")),
      );
    }
  }
  return known;
}

/**
 * Reads whole disks sequentially and makes one PIT of them. Chunks the
 * repository already holds are not stored again; zero chunks are not stored.
 * Hashing, compression and encryption run on one worker thread per core.
 * The PIT is written only after every object it names is durable.
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
  const writes = new Limiter(opts.writeConcurrency ?? 16);
  const inflight: Promise<Buffer>[] = [];

  const drainOne = async () => {
    const ids = await inflight.shift()!;
    for (let i = 0; i < ids.length; i += 32) await builder.push(ids.subarray(i, i + 32));
  };

  const processBatch = async (buf: Buffer): Promise<Buffer> => {
    const length = buf.length; // the buffer moves to a worker
    const { batch, ids } = await pool.scan(buf, chunkSize);
    const toEncode: { index: number; id: Buffer }[] = [];
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
      known.chunks.add(key);
      toEncode.push({ index: i, id: Buffer.from(id) });
    }
    const root = repo.backend.properties.localRoot;
    const objects = await pool.encode(batch, toEncode, root);
    await Promise.all(
      objects.map((o) =>
        writes.run(async () => {
          if (o.data) await repo.backend.put(o.name, o.data); // else the worker stored it
          stats.newChunks++;
          stats.storedBytes += o.size;
        }),
      ),
    );
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
  return builder.finish();
}
