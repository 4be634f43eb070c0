import { promises as fs, type Stats } from "node:fs";
import { LifeboatError } from "../base/index.js";

/** A block device's numbers, from a stat's `rdev` (glibc's encoding of dev_t). */
export function deviceNumbers(rdev: number): { major: number; minor: number } {
  const major = Math.floor(rdev / 256) & 0xfff;
  const minor = (rdev & 0xff) | ((Math.floor(rdev / 4096) & 0xfff00) >>> 0);
  return { major, minor };
}

/** The kernel's internal dev_t (`major << 20 | minor`), as trace events print it. */
export function kernelDev(major: number, minor: number): number {
  return major * 2 ** 20 + minor;
}

/** The sysfs directory of a block device (/sys/dev/block/M:m, a link into /sys/devices). */
export function sysfsDir(major: number, minor: number): string {
  return `/sys/dev/block/${major}:${minor}`;
}

/** The device numbers of a disk's partitions, from sysfs (none for a partition or an unpartitioned disk). */
export async function partitionNumbers(
  major: number,
  minor: number,
): Promise<{ major: number; minor: number }[]> {
  const dir = sysfsDir(major, minor);
  const out: { major: number; minor: number }[] = [];
  for (const name of await fs.readdir(dir).catch(() => [] as string[])) {
    const isPartition = await fs
      .access(`${dir}/${name}/partition`)
      .then(() => true)
      .catch(() => false);
    const dev = isPartition ? await fs.readFile(`${dir}/${name}/dev`, "utf8").catch(() => null) : null;
    const m = dev ? /^(\d+):(\d+)/.exec(dev.trim()) : null;
    if (m) out.push({ major: Number(m[1]), minor: Number(m[2]) });
  }
  return out;
}

/** Size in bytes from sysfs, which counts 512-byte sectors whatever the device's block size. */
export async function blockDeviceSizeBytes(major: number, minor: number): Promise<number> {
  const text = await fs.readFile(`${sysfsDir(major, minor)}/size`, "utf8");
  return Number(text.trim()) * 512;
}

/**
 * The logical block size (the unit O_DIRECT offsets and lengths must be
 * multiples of). A partition has no queue/ of its own: its parent's holds it.
 */
export async function logicalBlockSize(major: number, minor: number): Promise<number> {
  for (const rel of ["queue/logical_block_size", "../queue/logical_block_size"]) {
    try {
      return Number((await fs.readFile(`${sysfsDir(major, minor)}/${rel}`, "utf8")).trim());
    } catch {
      // try the parent
    }
  }
  return 512;
}

/** stat() of a disk path, as a LifeboatError naming the path when it fails. */
export async function statDisk(path: string): Promise<Stats> {
  try {
    return await fs.stat(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why =
      code === "ENOENT"
        ? "no such file or device"
        : code === "EACCES"
          ? "permission denied"
          : (code ?? (err as Error).message);
    throw new LifeboatError("DISK_UNREADABLE", `cannot read disk ${path}: ${why}`, {
      hint: "check the path; block devices need root",
      cause: err,
      exitCode: code === "ENOENT" ? 2 : 1,
    });
  }
}
