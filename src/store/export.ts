import { constants, promises as fs } from "node:fs";
import path from "node:path";
import { LifeboatError } from "../base/index.js";
import { LEAF_ENTRY_LEN, walkBlockMap } from "./block-map.js";
import { blockDeviceSizeBytes, deviceNumbers } from "./block-device.js";
import { HashThread } from "./hash-thread.js";
import { Limiter } from "./limiter.js";
import { OrderedHash, SharedBuffers } from "./ordered-hash.js";
import { stretchRange } from "./pack.js";
import type { Pit, PitDisk } from "./pit.js";
import type { Repository } from "./repository.js";
import {
  RUNS_PER_WORKER,
  RUN_RECORD_LEN,
  WorkerPool,
  runItems,
  runStretches,
  transferable,
} from "./worker-pool.js";

export interface ExportProgress {
  bytesDone: number;
  bytesTotal: number;
}

export interface ExportResult {
  path: string;
  sizeBytes: number;
  dataBytes: number;
  chunks: number;
  /** With the sha256 option: SHA-256 of the disk's bytes as written, hex. */
  sha256?: string;
}

export function pitDisk(pit: Pit, index: number): PitDisk {
  const disk = pit.disks.find((d) => d.index === index);
  if (!disk) {
    throw new LifeboatError("DISK_NOT_IN_PIT", `PIT ${pit.id} of ${pit.server} has no disk ${index}`, {
      hint: `disks of this PIT: ${pit.disks.map((d) => d.index).join(", ")} (indexes count from 0)`,
      exitCode: 2,
    });
  }
  return disk;
}

export interface ExportOptions {
  onProgress?: (p: ExportProgress) => void;
  /** Ranged reads in flight at once when the repository is not a local directory (default 32). */
  concurrency?: number;
  /** Replace an existing file, or write over a block device. */
  overwrite?: boolean;
  /**
   * Workers to decode with. Exports running at once (every disk of a PIT)
   * share one pool instead of starting a pool each; its owner closes it.
   * Default: a pool of the export's own, one worker per core.
   */
  pool?: WorkerPool;
  /** Also compute the SHA-256 of the whole disk as written (result.sha256), without reading it back. */
  sha256?: boolean;
  /** Stops the export between runs (the partial file is removed); it rejects with the signal's reason. */
  signal?: AbortSignal;
}

/** Bytes per run: a run is fetched, decoded, checked and written by one worker. */
const RUN_BYTES = 4 << 20;

/**
 * Writes one disk of a PIT to a file (sparse where zero) or a block device.
 * Every chunk is checked against its id. A file is written under a temporary
 * name and renamed only when complete and synced, so a failed export never
 * leaves something that looks like a finished image.
 *
 * The disk is cut into runs of consecutive chunks. The main thread walks the
 * block map and hands each run's leaf entries to a worker (worker-pool.ts,
 * RestoreRunRequest); the worker reads the chunk objects from their packs
 * (one read per stretch of neighbours; for a repository that is not a local
 * directory the main thread fetches them), decodes and checks each one into
 * its place in a reused buffer, and writes the run's non-zero stretches at
 * their offsets — or the whole run, zeros included, to a block device.
 */
export async function exportDisk(
  repo: Repository,
  pit: Pit,
  index: number,
  out: string,
  opts: ExportOptions = {},
): Promise<ExportResult> {
  const disk = pitDisk(pit, index);
  const st = await fs.stat(out).catch(() => undefined);
  const toDevice = st?.isBlockDevice() ?? false;
  if (st && !toDevice && !st.isFile()) {
    throw new LifeboatError("EXPORT_BAD_TARGET", `${out} is neither a file nor a block device`, {
      hint: "give a path for a new image file, or a block device",
      exitCode: 2,
    });
  }
  if (st && !opts.overwrite) {
    throw new LifeboatError("EXPORT_TARGET_EXISTS", `${out} exists; export would overwrite it`, {
      hint: "choose a new path, or add --force to overwrite it (all data on it is replaced)",
      exitCode: 2,
    });
  }
  const target = toDevice ? out : `${out}.lifeboat-partial`;
  const fh = await fs.open(target, toDevice ? "r+" : "w", 0o600);
  // Writes of whole pages bypass the page cache where the filesystem allows it (not tmpfs).
  const direct = await fs.open(target, constants.O_WRONLY | constants.O_DIRECT).catch(() => undefined);
  const pool = opts.pool ?? new WorkerPool(repo.keys, repo.config.compression.level);
  const root = repo.backend.properties.localRoot;
  const fetches = new Limiter(opts.concurrency ?? 32);
  const runs = new Limiter(RUNS_PER_WORKER * pool.size);
  const result: ExportResult = { path: out, sizeBytes: disk.sizeBytes, dataBytes: 0, chunks: 0 };
  const tasks = new Set<Promise<void>>();
  let failure: Error | undefined;
  // The disk's hash runs on a thread of its own, fed in disk order from the main thread.
  const hashThread = opts.sha256
    ? new HashThread((err) => {
        failure ??= err;
        hashBuffers?.fail(err);
      })
    : undefined;
  const hash = hashThread ? new OrderedHash(hashThread) : undefined;
  const cs = disk.chunkSize;
  const perRun = Math.max(1, Math.floor(RUN_BYTES / cs));
  // With sha256, each run's chunks come back through one of these (taken in disk order, given back once
  // hashed): as many runs again as are in flight may wait for the hash, so that a hash running behind
  // (it is one thread) does not hold up the workers at once; no more (2 cores: 16 × 4 MiB per disk).
  const hashBuffers = hash ? new SharedBuffers(2 * RUNS_PER_WORKER * pool.size + 4, perRun * cs) : undefined;
  let done = 0;

  const restoreRun = async (first: number, records: Buffer, count: number, copy?: SharedArrayBuffer) => {
    const length = Math.min(perRun * cs, disk.sizeBytes - first * cs);
    const entries = transferable(records.subarray(0, count * RUN_RECORD_LEN));
    const items = runItems(new Uint8Array(entries));
    let stretches: ArrayBuffer[] | undefined;
    if (!root) {
      // One ranged read per stretch of neighbouring chunk objects, in the order the worker expects.
      stretches = await Promise.all(
        runStretches(items, 0).map((group) =>
          fetches.run(async () => transferable(await repo.getObject(group[0]!.pack, stretchRange(group)))),
        ),
      );
    }
    const run = {
      fd: fh.fd,
      ...(direct ? { directFd: direct.fd } : {}),
      position: first * cs,
      length,
      chunkSize: cs,
      entries,
      fill: toDevice,
      ...(copy ? { hashCopy: copy } : {}),
    };
    await pool.restoreRun(root ? { ...run, root } : { ...run, stretches });
    if (hash) hashRun(hash, first * cs, length, cs, items, copy, () => hashBuffers!.give(copy!));
    result.chunks += items.length;
    result.dataBytes += items.reduce((n, it) => n + Math.min(cs, length - it.slot * cs), 0);
    done += length;
    opts.onProgress?.({ bytesDone: done, bytesTotal: disk.sizeBytes });
  };

  const dispatch = async (first: number, records: Buffer, count: number) => {
    if (failure) throw failure;
    opts.signal?.throwIfAborted();
    const copy = count > 0 ? await hashBuffers?.take() : undefined;
    await runs.waitForSlot();
    const task = runs
      .run(() => restoreRun(first, records, count, copy))
      .catch((err: unknown) => {
        failure ??= chunkError(err, pit, disk, first, records, count);
        hashBuffers?.fail(failure);
      })
      .finally(() => tasks.delete(task));
    tasks.add(task);
  };

  try {
    if (toDevice) {
      const { major, minor } = deviceNumbers(st!.rdev);
      const size = (await fh.stat()).size || (await blockDeviceSizeBytes(major, minor));
      if (size < disk.sizeBytes) {
        throw new LifeboatError(
          "EXPORT_TARGET_TOO_SMALL",
          `${out} holds ${size} bytes, the disk needs ${disk.sizeBytes}`,
          {
            exitCode: 2,
          },
        );
      }
    } else {
      await fh.truncate(disk.sizeBytes);
    }
    // The run being collected: one record (slot, leaf entry) per stored chunk.
    let runStart = 0;
    let records = Buffer.alloc(perRun * RUN_RECORD_LEN);
    let count = 0;
    const flushUntil = async (index: number) => {
      // Dispatch every run before the one holding `index` (empty runs matter only on devices).
      while (index >= runStart + perRun) {
        if (count > 0 || toDevice) {
          await dispatch(runStart, records, count);
          records = Buffer.alloc(perRun * RUN_RECORD_LEN);
        } else hash?.zeros(runStart * cs, Math.min(perRun * cs, disk.sizeBytes - runStart * cs));
        count = 0;
        runStart += perRun;
      }
    };
    await walkBlockMap(repo, disk, async (i, entry) => {
      await flushUntil(i);
      const at = count++ * RUN_RECORD_LEN;
      records.writeUInt32LE(i - runStart, at);
      records.set(entry.subarray(0, LEAF_ENTRY_LEN), at + 4);
    });
    await flushUntil(disk.chunkCount);
    if (count > 0 || (toDevice && runStart < disk.chunkCount)) await dispatch(runStart, records, count);
    else if (runStart < disk.chunkCount) hash?.zeros(runStart * cs, disk.sizeBytes - runStart * cs);
    await Promise.all(tasks);
    if (failure) throw failure;
    opts.signal?.throwIfAborted();
    if (hash) result.sha256 = await hash.digest(disk.sizeBytes);
    await direct?.close();
    await fh.sync();
    await fh.close();
    if (!toDevice) {
      await fs.rename(target, out);
      await syncDir(path.dirname(out));
    }
    return result;
  } catch (err) {
    await Promise.all(tasks);
    await direct?.close().catch(() => undefined);
    await fh.close().catch(() => undefined);
    if (!toDevice) await fs.rm(target, { force: true });
    throw err;
  } finally {
    await hashThread?.close();
    if (!opts.pool) await pool.close();
  }
}

/**
 * Hands a restored run to the hash in order: each stretch of consecutive
 * chunks from the shared buffer the worker copied them to, the places
 * between as zeros; `release` once the last stretch was hashed.
 */
function hashRun(
  hash: OrderedHash,
  position: number,
  length: number,
  cs: number,
  items: { slot: number }[],
  copy: SharedArrayBuffer | undefined,
  release: () => void,
): void {
  const slots = items.map((it) => it.slot).sort((a, b) => a - b);
  if (!copy || slots.length === 0) {
    hash.zeros(position, length);
    return;
  }
  let at = 0;
  for (let i = 0; i < slots.length;) {
    let j = i + 1;
    while (j < slots.length && slots[j] === slots[j - 1]! + 1) j++;
    const from = slots[i]! * cs;
    const to = Math.min(length, (slots[j - 1]! + 1) * cs);
    if (from > at) hash.zeros(position + at, from - at);
    const last = j === slots.length;
    hash.put(position + from, new Uint8Array(copy, from, to - from), last ? release : undefined);
    at = to;
    i = j;
  }
  if (at < length) hash.zeros(position + at, length - at);
}

/** Makes a rename in `dir` durable. */
async function syncDir(dir: string): Promise<void> {
  const d = await fs.open(dir, "r");
  try {
    await d.sync();
  } finally {
    await d.close();
  }
}

function chunkError(
  err: unknown,
  pit: Pit,
  disk: PitDisk,
  first: number,
  records: Buffer,
  count: number,
): Error {
  if (!(err instanceof LifeboatError)) return err instanceof Error ? err : new Error(String(err));
  const slot = (err as { slot?: number }).slot ?? (count > 0 ? records.readUInt32LE(0) : 0);
  const i = first + slot;
  const off = i * disk.chunkSize;
  const end = Math.min(disk.sizeBytes, off + disk.chunkSize);
  return new LifeboatError(
    err.code,
    `disk ${disk.index} of PIT ${pit.id} (${pit.server}), chunk ${i} at bytes ${off}-${end - 1}: ${err.message}`,
    { hint: err.hint || "run `lifeboat store verify --read-data`", cause: err },
  );
}
