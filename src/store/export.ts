import { promises as fs } from "node:fs";
import { LifeboatError } from "../base/index.js";
import { entryId, entryLocation, walkBlockMap } from "./block-map.js";
import { blockDeviceSize } from "./disk-source.js";
import { Limiter } from "./limiter.js";
import { packName } from "./names.js";
import { packStretches } from "./pack.js";
import type { Pit, PitDisk } from "./pit.js";
import type { Repository } from "./repository.js";
import { WorkerPool } from "./worker-pool.js";

export interface ExportProgress {
  bytesDone: number;
  bytesTotal: number;
}

export interface ExportResult {
  path: string;
  sizeBytes: number;
  dataBytes: number;
  chunks: number;
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

/** Chunks per run: a run is fetched, decoded by one worker and written together. */
const RUN_BYTES = 4 << 20;

/**
 * Writes one disk of a PIT to a file (sparse where zero) or a block device.
 * Every chunk is checked against its id. A file is written under a temporary
 * name and renamed only when complete and synced, so a failed export never
 * leaves something that looks like a finished image.
 *
 * The disk is cut into runs of consecutive chunks; for each run the chunk
 * objects are read from their packs (one read per stretch of neighbours), one
 * worker decodes and checks them into a single buffer, and the non-zero
 * stretches are written at their offsets.
 */
export async function exportDisk(
  repo: Repository,
  pit: Pit,
  index: number,
  out: string,
  opts: { onProgress?: (p: ExportProgress) => void; concurrency?: number; overwrite?: boolean } = {},
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
  const pool = new WorkerPool(repo.keys, repo.config.compression.level);
  const fetches = new Limiter(opts.concurrency ?? 32);
  const runs = new Limiter(4);
  const result: ExportResult = { path: out, sizeBytes: disk.sizeBytes, dataBytes: 0, chunks: 0 };
  const tasks = new Set<Promise<void>>();
  let failure: Error | undefined;
  const cs = disk.chunkSize;
  const perRun = Math.max(1, Math.floor(RUN_BYTES / cs));
  let done = 0;

  const writeRun = async (first: number, items: { slot: number; entry: Buffer }[]) => {
    const count = Math.min(perRun, disk.chunkCount - first);
    const length = Math.min(count * cs, disk.sizeBytes - first * cs);
    const root = repo.backend.properties.localRoot;
    const located = items.map((it) => {
      const id = entryId(it.entry);
      const loc = entryLocation(it.entry);
      return {
        slot: it.slot,
        id,
        name: repo.chunkName(id),
        pack: packName(loc.pack),
        offset: loc.offset,
        length: loc.length,
      };
    });
    let plain: Buffer;
    if (root) plain = await pool.readRun(root, length, cs, located);
    else {
      // One ranged read per stretch of neighbouring chunks, then cut into chunk objects.
      const fetched = await Promise.all(
        packStretches(located).map((group) =>
          fetches.run(async () => {
            const first = group[0]!;
            const last = group[group.length - 1]!;
            const data = await repo.getObject(first.pack, {
              offset: first.offset,
              length: last.offset + last.length - first.offset,
            });
            return group.map((it) => {
              const at = it.offset - first.offset;
              return { slot: it.slot, id: it.id, name: it.name, data: data.subarray(at, at + it.length) };
            });
          }),
        ),
      );
      plain = await pool.decodeRun(length, cs, fetched.flat());
    }
    if (toDevice) await fh.write(plain, 0, length, first * cs);
    else {
      // Only the stretches that hold data: zero chunks stay holes.
      let s = 0;
      while (s < items.length) {
        let e = s;
        while (e + 1 < items.length && items[e + 1]!.slot === items[e]!.slot + 1) e++;
        const from = items[s]!.slot * cs;
        const to = Math.min(length, (items[e]!.slot + 1) * cs);
        await fh.write(plain, from, to - from, first * cs + from);
        s = e + 1;
      }
    }
    result.chunks += items.length;
    result.dataBytes += items.reduce((n, it) => n + Math.min(cs, length - it.slot * cs), 0);
    done += length;
    opts.onProgress?.({ bytesDone: done, bytesTotal: disk.sizeBytes });
  };

  const dispatch = async (first: number, items: { slot: number; entry: Buffer }[]) => {
    if (failure) throw failure;
    await runs.waitForSlot();
    const task = runs
      .run(() => writeRun(first, items))
      .catch((err: unknown) => {
        failure ??= chunkError(err, pit, disk, first, items);
      })
      .finally(() => tasks.delete(task));
    tasks.add(task);
  };

  try {
    if (toDevice) {
      const size = (await fh.stat()).size || (await blockDeviceSize(st!.rdev));
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
    let runStart = 0;
    let items: { slot: number; entry: Buffer }[] = [];
    const flushUntil = async (index: number) => {
      // Dispatch every run before the one holding `index` (empty runs matter only on devices).
      while (index >= runStart + perRun) {
        if (items.length > 0 || toDevice) await dispatch(runStart, items);
        items = [];
        runStart += perRun;
      }
    };
    await walkBlockMap(repo, disk, async (i, entry) => {
      await flushUntil(i);
      items.push({ slot: i - runStart, entry: Buffer.from(entry) });
    });
    await flushUntil(disk.chunkCount);
    if (items.length > 0 || (toDevice && runStart < disk.chunkCount)) await dispatch(runStart, items);
    await Promise.all(tasks);
    if (failure) throw failure;
    await fh.sync();
    await fh.close();
    if (!toDevice) await fs.rename(target, out);
    return result;
  } catch (err) {
    await Promise.all(tasks);
    await fh.close().catch(() => undefined);
    if (!toDevice) await fs.rm(target, { force: true });
    throw err;
  } finally {
    await pool.close();
  }
}

function chunkError(err: unknown, pit: Pit, disk: PitDisk, first: number, items: { slot: number }[]): Error {
  if (!(err instanceof LifeboatError)) return err instanceof Error ? err : new Error(String(err));
  const slot = (err as { slot?: number }).slot ?? items[0]?.slot ?? 0;
  const i = first + slot;
  const off = i * disk.chunkSize;
  const end = Math.min(disk.sizeBytes, off + disk.chunkSize);
  return new LifeboatError(
    err.code,
    `disk ${disk.index} of PIT ${pit.id} (${pit.server}), chunk ${i} at bytes ${off}-${end - 1}: ${err.message}`,
    { hint: err.hint || "run `lifeboat store verify --read-data`", cause: err },
  );
}
