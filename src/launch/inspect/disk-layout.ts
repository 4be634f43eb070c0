import { DebugfsReader } from "./debugfs-reader.js";
import { probeFilesystem } from "./filesystems.js";
import type { FsReader } from "./fs-reader.js";
import type { ServerFilesystem } from "./fstab.js";
import { ImageFile } from "./image-file.js";
import { MountReader } from "./mount-reader.js";
import { MtoolsReader } from "./mtools-reader.js";
import { type PartitionTable, readPartitionTable } from "./partitions.js";
import type { Problem } from "./report.js";

/** One disk of the server: its partition table and the filesystems found on it. */
export interface DiskLayout {
  index: number;
  path: string;
  size: number;
  table: PartitionTable;
  filesystems: ServerFilesystem[];
  problems: Problem[];
}

export async function readLayout(path: string, index: number): Promise<DiskLayout> {
  const img = await ImageFile.open(path);
  try {
    const table = await readPartitionTable(img);
    const problems: Problem[] = table.warnings.map((w) => ({
      code: "LAUNCH_PARTITION_TABLE_DAMAGED",
      severity: table.partitions.length === 0 ? "error" : "warning",
      message: `disk ${index} (${path}): ${w}`,
      remedy:
        "check the partition table on the source server (sgdisk -v, or fdisk -l); the source disk may be damaged",
    }));
    const filesystems: ServerFilesystem[] = [];
    if (table.type === "none") {
      const fs = await probeFilesystem(img, 0, img.size);
      if (fs) filesystems.push({ ...fs, offset: 0, size: img.size, disk: index });
    }
    for (const p of table.partitions) {
      if (p.typeName === "extended" || p.biosBoot) continue;
      if (p.start >= img.size) {
        problems.push({
          code: "LAUNCH_PARTITION_TABLE_DAMAGED",
          severity: "warning",
          message: `disk ${index} (${path}): partition ${p.number} starts past the end of the disk`,
          remedy: "the image may be truncated; materialize the PIT again",
        });
        continue;
      }
      const fs = await probeFilesystem(img, p.start, p.size);
      if (fs)
        filesystems.push({
          ...fs,
          offset: p.start,
          size: p.size,
          partition: p.number,
          partitionInfo: p,
          disk: index,
        });
    }
    return { index, path, size: img.size, table, filesystems, problems };
  } finally {
    await img.close();
  }
}

/** Opens each filesystem's reader once, remembers failures, and closes them all at the end. */
export class ReaderPool {
  private readonly open = new Map<ServerFilesystem, Promise<FsReader>>();

  constructor(private readonly disks: DiskLayout[]) {}

  /** The reader, or the LifeboatError saying why this filesystem cannot be read. */
  async get(fs: ServerFilesystem): Promise<FsReader> {
    let r = this.open.get(fs);
    if (!r) {
      const disk = this.disks[fs.disk]!;
      const label = describeFs(fs, disk.path);
      r = fs.type.startsWith("ext")
        ? DebugfsReader.open(disk.path, fs.offset, label)
        : fs.type === "vfat"
          ? MtoolsReader.open(disk.path, fs.offset, label)
          : fs.type === "xfs"
            ? MountReader.open(disk.path, fs, label)
            : Promise.reject(new Error(`${label}: ${fs.type} is not read by inspect`));
      r.catch(() => undefined);
      this.open.set(fs, r);
    }
    return r;
  }

  async closeAll(): Promise<void> {
    for (const r of this.open.values()) {
      const reader = await r.catch(() => null);
      await reader?.close().catch(() => undefined);
    }
    this.open.clear();
  }
}

export function describeFs(fs: ServerFilesystem, diskPath: string): string {
  const where = fs.partition === undefined ? "" : ` partition ${fs.partition}`;
  return `the ${fs.type} filesystem on disk ${fs.disk}${where} (${diskPath})`;
}
