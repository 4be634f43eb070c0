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
  const target = await openTarget(out, disk, opts.overwrite ?? false);
  const pool = opts.pool ?? new WorkerPool(repo.keys, repo.config.compression.level);
  const runs = new RunRestorer(repo, pit, disk, target, pool, opts);
  try {
    await walkRuns(repo, disk, runs.perRun, target.toDevice, runs);
    const result = await runs.finish();
    await target.commit();
    return result;
  } catch (err) {
    await runs.settle();
    await target.abort();
    throw err;
  } finally {
    await runs.close();
    if (!opts.pool) await pool.close();
  }
}

/** Where an export writes: a block device, or a new file under a temporary name until it is complete. */
interface ExportTarget {
  /** The final path. */
  path: string;
  toDevice: boolean;
  fh: fs.FileHandle;
  /** The same file opened with O_DIRECT, where the filesystem allows it. */
  direct: fs.FileHandle | undefined;
  /** Syncs and closes; a file is renamed to its final name, durably. */
  commit(): Promise<void>;
  /** Closes; a file is removed. */
  abort(): Promise<void>;
}

/** Checks `out` (a new file, or with `overwrite` an existing file or a block device large enough) and opens it. */
async function openTarget(out: string, disk: PitDisk, overwrite: boolean): Promise<ExportTarget> {
  const st = await fs.stat(out).catch(() => undefined);
  const toDevice = st?.isBlockDevice() ?? false;
  if (st && !toDevice && !st.isFile()) {
    throw new LifeboatError("EXPORT_BAD_TARGET", `${out} is neither a file nor a block device`, {
      hint: "give a path for a new image file, or a block device",
      exitCode: 2,
    });
  }
  if (st && !overwrite) {
    throw new LifeboatError("EXPORT_TARGET_EXISTS", `${out} exists; export would overwrite it`, {
      hint: "choose a new path, or add --force to overwrite it (all data on it is replaced)",
      exitCode: 2,
    });
  }
  const file = toDevice ? out : `${out}.lifeboat-partial`;
  const fh = await fs.open(file, toDevice ? "r+" : "w", 0o600);
  // Writes of whole pages bypass the page cache where the filesystem allows it (not tmpfs).
  const direct = await fs.open(file, constants.O_WRONLY | constants.O_DIRECT).catch(() => undefined);
  const target: ExportTarget = {
    path: out,
    toDevice,
    fh,
    direct,
    async commit() {
      await direct?.close();
      await fh.sync();
      await fh.close();
      if (!toDevice) {
        await fs.rename(file, out);
        await syncDir(path.dirname(out));
      }
    },
    async abort() {
      await direct?.close().catch(() => undefined);
      await fh.close().catch(() => undefined);
      if (!toDevice) await fs.rm(file, { force: true });
    },
  };
  try {
    if (!toDevice) await fh.truncate(disk.sizeBytes);
    else {
      const { major, minor } = deviceNumbers(st!.rdev);
      const size = (await fh.stat()).size || (await blockDeviceSizeBytes(major, minor));
      if (size < disk.sizeBytes) {
        throw new LifeboatError(
          "EXPORT_TARGET_TOO_SMALL",
          `${out} holds ${size} bytes, the disk needs ${disk.sizeBytes}`,
          { exitCode: 2 },
        );
      }
    }
  } catch (err) {
    await target.abort();
    throw err;
  }
  return target;
}

/** What walkRuns hands its runs to. */
interface RunSink {
  /** A run of chunks from `first`, with one record (slot, leaf entry) per stored chunk; `records` is the sink's. */
  run(first: number, records: Buffer, count: number): Promise<void>;
  /** A range of the disk that holds no stored chunk, and was not given as a run. */
  zeros(position: number, length: number): void;
}

/**
 * Walks a disk's block map in runs of `perRun` chunks: every run that holds a
 * stored chunk goes to `sink.run` (every run, with `everyRun`: a device's
 * zeros must be written too), the others to `sink.zeros`.
 */
async function walkRuns(
  repo: Repository,
  disk: PitDisk,
  perRun: number,
  everyRun: boolean,
  sink: RunSink,
): Promise<void> {
  const cs = disk.chunkSize;
  let runStart = 0;
  let records = Buffer.alloc(perRun * RUN_RECORD_LEN);
  let count = 0;
  const flushUntil = async (index: number) => {
    // Hand on every run before the one holding `index`.
    while (index >= runStart + perRun) {
      if (count > 0 || everyRun) {
        await sink.run(runStart, records, count);
        records = Buffer.alloc(perRun * RUN_RECORD_LEN);
      } else sink.zeros(runStart * cs, Math.min(perRun * cs, disk.sizeBytes - runStart * cs));
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
  if (count > 0 || (everyRun && runStart < disk.chunkCount)) await sink.run(runStart, records, count);
  else if (runStart < disk.chunkCount) sink.zeros(runStart * cs, disk.sizeBytes - runStart * cs);
}

/**
 * Restores the runs walkRuns hands it on the worker pool, several at once,
 * and feeds the disk's hash (with the sha256 option) in disk order.
 */
class RunRestorer implements RunSink {
  /** Chunks per run. */
  readonly perRun: number;
  private readonly root: string | undefined;
  private readonly fetches: Limiter;
  private readonly runs: Limiter;
  private readonly result: ExportResult;
  private readonly tasks = new Set<Promise<void>>();
  private failure: Error | undefined;
  private readonly hashThread: HashThread | undefined;
  private readonly hash: OrderedHash | undefined;
  /**
   * With sha256, each run's chunks come back through one of these (taken in
   * disk order, given back once hashed): as many runs again as are in flight
   * may wait for the hash, so that a hash running behind (it is one thread)
   * does not hold up the workers at once; no more (2 cores: 16 × 4 MiB per
   * disk).
   */
  private readonly hashBuffers: SharedBuffers | undefined;
  private done = 0;

  constructor(
    private readonly repo: Repository,
    private readonly pit: Pit,
    private readonly disk: PitDisk,
    private readonly target: ExportTarget,
    private readonly pool: WorkerPool,
    private readonly opts: ExportOptions,
  ) {
    this.perRun = Math.max(1, Math.floor(RUN_BYTES / disk.chunkSize));
    this.root = repo.backend.properties.localRoot;
    this.fetches = new Limiter(opts.concurrency ?? 32);
    this.runs = new Limiter(RUNS_PER_WORKER * pool.size);
    this.result = { path: target.path, sizeBytes: disk.sizeBytes, dataBytes: 0, chunks: 0 };
    // The disk's hash runs on a thread of its own, fed in disk order from the main thread.
    this.hashThread = opts.sha256 ? new HashThread((err) => this.fail(err)) : undefined;
    this.hash = this.hashThread ? new OrderedHash(this.hashThread) : undefined;
    this.hashBuffers = this.hash
      ? new SharedBuffers(2 * RUNS_PER_WORKER * pool.size + 4, this.perRun * disk.chunkSize)
      : undefined;
  }

  async run(first: number, records: Buffer, count: number): Promise<void> {
    if (this.failure) throw this.failure;
    this.opts.signal?.throwIfAborted();
    const copy = count > 0 ? await this.hashBuffers?.take() : undefined;
    await this.runs.waitForSlot();
    const task = this.runs
      .run(() => this.restore(first, records, count, copy))
      .catch((err: unknown) => this.fail(chunkError(err, this.pit, this.disk, first, records, count)))
      .finally(() => this.tasks.delete(task));
    this.tasks.add(task);
  }

  zeros(position: number, length: number): void {
    this.hash?.zeros(position, length);
  }

  /** Waits for every run; the result, with the disk's hash. */
  async finish(): Promise<ExportResult> {
    await this.settle();
    if (this.failure) throw this.failure;
    this.opts.signal?.throwIfAborted();
    if (this.hash) this.result.sha256 = await this.hash.digest(this.disk.sizeBytes);
    return this.result;
  }

  /** Waits for the runs in flight (after a failure: nothing writes to the target any more). */
  async settle(): Promise<void> {
    await Promise.all(this.tasks);
  }

  async close(): Promise<void> {
    await this.hashThread?.close();
  }

  private fail(err: Error): void {
    this.failure ??= err;
    this.hashBuffers?.fail(this.failure);
  }

  private async restore(first: number, records: Buffer, count: number, copy?: SharedArrayBuffer) {
    const { disk, repo, root, target } = this;
    const cs = disk.chunkSize;
    const length = Math.min(this.perRun * cs, disk.sizeBytes - first * cs);
    const entries = transferable(records.subarray(0, count * RUN_RECORD_LEN));
    const items = runItems(new Uint8Array(entries));
    let stretches: ArrayBuffer[] | undefined;
    if (!root) {
      // One ranged read per stretch of neighbouring chunk objects, in the order the worker expects.
      stretches = await Promise.all(
        runStretches(items, 0).map((group) =>
          this.fetches.run(async () =>
            transferable(await repo.getObject(group[0]!.pack, stretchRange(group))),
          ),
        ),
      );
    }
    const run = {
      fd: target.fh.fd,
      ...(target.direct ? { directFd: target.direct.fd } : {}),
      position: first * cs,
      length,
      chunkSize: cs,
      entries,
      fill: target.toDevice,
      ...(copy ? { hashCopy: copy } : {}),
    };
    await this.pool.restoreRun(root ? { ...run, root } : { ...run, stretches });
    if (this.hash)
      hashRun(this.hash, first * cs, length, cs, items, copy, () => this.hashBuffers!.give(copy!));
    this.result.chunks += items.length;
    this.result.dataBytes += items.reduce((n, it) => n + Math.min(cs, length - it.slot * cs), 0);
    this.done += length;
    this.opts.onProgress?.({ bytesDone: this.done, bytesTotal: disk.sizeBytes });
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
