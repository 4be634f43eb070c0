import path from "node:path";
import { LifeboatError } from "../base/index.js";
import { BlockMapBuilder } from "./block-map.js";
import { DiskReader } from "./disk-reader.js";
import { acquireLock } from "./locks.js";
import {
  type ConsistencyLevel,
  type Pit,
  type PitDisk,
  listPits,
  validateServerName,
  writePit,
} from "./pit.js";
import { ChunkIngest, type KnownIdsOptions, loadKnownIds } from "./ingest.js";
import type { Repository } from "./repository.js";

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
  /** Runs in flight through the workers; each is `batchBytes` of memory (default 4). */
  readAhead?: number;
  batchBytes?: number;
  /** Pack stores in flight (default 2); each holds up to `packBytes` of memory. */
  writeConcurrency?: number;
  /** Target pack size (default 16 MiB). */
  packBytes?: number;
  /** Memory for the set of chunks and pages already stored, and where it spills beyond that. */
  known?: KnownIdsOptions;
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
  const sources: DiskReader[] = [];
  try {
    for (const p of opts.disks)
      sources.push(await DiskReader.open(p, readerOptions(opts, repo.config.chunkSize)));
  } catch (err) {
    await Promise.all(sources.map((s) => s.close()));
    throw err;
  }
  const lock = await acquireLock(repo, "writer", `import ${opts.server}`);
  lock.keepAlive();
  let ingest: ChunkIngest | undefined;
  let bytesRead = 0;
  try {
    const known = await loadKnownIds(repo, await listPits(repo, { damaged: [] }), opts.known);
    try {
      ingest = new ChunkIngest(repo, known, {
        fullPacks: true,
        ...(opts.packBytes ? { packBytes: opts.packBytes } : {}),
        ...(opts.writeConcurrency ? { writeConcurrency: opts.writeConcurrency } : {}),
      });
    } catch (err) {
      known.close();
      throw err;
    }
    const disks: PitDisk[] = [];
    for (const [index, src] of sources.entries()) {
      const ref = await importOne(ingest, src, index, opts);
      bytesRead += src.size;
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
    return { pit, stats: { bytesRead, ...ingest.stats, packs: ingest.packs.packs } };
  } finally {
    await ingest?.close();
    await Promise.all(sources.map((s) => s.close()));
    await lock.release();
  }
}

/**
 * Each disk is read in runs of whole chunks (`batchBytes`, rounded), bypassing
 * the page cache where it can, two reads in flight (each run is copied out at
 * once: more buffers only cost memory).
 */
function readerOptions(opts: ImportOptions, chunkSize: number): { chunkSize: number; depth: number } {
  const run = Math.max(chunkSize, Math.floor((opts.batchBytes ?? 4 << 20) / chunkSize) * chunkSize);
  return { chunkSize: run, depth: 2 };
}

async function importOne(ingest: ChunkIngest, src: DiskReader, index: number, opts: ImportOptions) {
  const { repo } = ingest;
  const chunkSize = repo.config.chunkSize;
  const chunkCount = Math.ceil(src.size / chunkSize);
  const builder = new BlockMapBuilder(repo, chunkCount, ingest.known.pages);
  // Runs are whole chunks (the reader's buffers are rounded up to its alignment: at least a run).
  const runBytes = readerOptions(opts, chunkSize).chunkSize;
  const readAhead = opts.readAhead ?? 4;
  // Each run resolves to the leaf entries of its chunks, in order.
  const inflight: Promise<Buffer[]>[] = [];
  const drainOne = async () => {
    for (const entry of await inflight.shift()!) await builder.push(entry);
  };
  const ranges = [];
  for (let offset = 0; offset < src.size; offset += runBytes)
    ranges.push({ offset, length: Math.min(runBytes, src.size - offset) });
  // The reader's buffers are aligned for O_DIRECT and cannot move to a worker: each run is copied
  // into a buffer that can (one the workers gave back, so nothing is allocated per run).
  await src.readRanges(ranges, async (offset, data) => {
    while (inflight.length >= readAhead) await drainOne();
    const buf = ingest.takeBuffer(data.length);
    data.copy(buf);
    const p = ingest.run(buf);
    p.catch(() => undefined); // awaited in order by drainOne; this only avoids an unhandled rejection meanwhile
    inflight.push(p);
    opts.onProgress?.({ disk: index, path: src.path, bytesDone: offset + data.length, bytesTotal: src.size });
  });
  while (inflight.length > 0) await drainOne();
  await ingest.finish();
  return builder.finish();
}
