import { promises as fs } from "node:fs";
import { LifeboatError } from "../base/index.js";
import { walkBlockMap } from "./block-map.js";
import { Limiter } from "./limiter.js";
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

/**
 * Writes one disk of a PIT to a file (sparse where zero) or a block device.
 * Every chunk is checked against its id. A file is written under a temporary
 * name and renamed only when complete and synced, so a failed export never
 * leaves something that looks like a finished image.
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
  const limiter = new Limiter(opts.concurrency ?? 8);
  const result: ExportResult = { path: out, sizeBytes: disk.sizeBytes, dataBytes: 0, chunks: 0 };
  const tasks = new Set<Promise<void>>();
  let failure: Error | undefined;
  let zeroFrom = 0; // on a device, zero chunks must be written explicitly
  const zeros = toDevice ? Buffer.alloc(disk.chunkSize) : Buffer.alloc(0);
  const writeZeros = async (from: number, to: number) => {
    for (let i = from; i < to; i++) {
      const off = i * disk.chunkSize;
      await fh.write(zeros, 0, Math.min(disk.chunkSize, disk.sizeBytes - off), off);
    }
  };
  try {
    if (toDevice) {
      const size =
        (await fh.stat()).size || (await import("./disk-source.js").then((m) => m.blockDeviceSize(st!.rdev)));
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
    await walkBlockMap(repo, disk, async (i, id) => {
      if (failure) throw failure;
      if (toDevice && i > zeroFrom) await writeZeros(zeroFrom, i);
      zeroFrom = i + 1;
      await limiter.waitForSlot();
      const task = limiter
        .run(async () => {
          const name = repo.chunkName(id);
          const off = i * disk.chunkSize;
          try {
            const plain = await pool.decode(name, id, await repo.getObject(name));
            await fh.write(plain, 0, plain.length, off);
            result.dataBytes += plain.length;
            result.chunks++;
            opts.onProgress?.({ bytesDone: off + plain.length, bytesTotal: disk.sizeBytes });
          } catch (err) {
            failure ??= chunkError(err, pit, disk, i, off);
          }
        })
        .finally(() => tasks.delete(task));
      tasks.add(task);
    });
    await Promise.all(tasks);
    if (failure) throw failure;
    if (toDevice) await writeZeros(zeroFrom, disk.chunkCount);
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

function chunkError(err: unknown, pit: Pit, disk: PitDisk, i: number, off: number): Error {
  if (!(err instanceof LifeboatError)) return err instanceof Error ? err : new Error(String(err));
  const end = Math.min(disk.sizeBytes, off + disk.chunkSize);
  return new LifeboatError(
    err.code,
    `disk ${disk.index} of PIT ${pit.id} (${pit.server}), chunk ${i} at bytes ${off}-${end - 1}: ${err.message}`,
    { hint: err.hint || "run `lifeboat store verify --read-data`", cause: err },
  );
}
