/**
 * What the kernel says about a block device, read from /sys and /proc: its
 * partitions, size, holders, mounts and swap use. Devices are matched by
 * major:minor, never by name alone (/dev/disk/by-id links, renamed nodes).
 */
import { promises as fs } from "node:fs";
import path from "node:path";

const SYS_BLOCK = "/sys/class/block";

/** A block device as the kernel names it (loop3, sda, sda1) with its major:minor. */
export interface KernelBlockDevice {
  name: string;
  /** "major:minor" */
  devno: string;
}

export function devnoOf(rdev: number): string {
  // Linux dev_t as glibc encodes it (major 12 bits, minor 20 bits, split).
  const major = Number((BigInt(rdev) >> 8n) & 0xfffn) | Number((BigInt(rdev) >> 32n) & ~0xfffn);
  const minor = Number(BigInt(rdev) & 0xffn) | Number((BigInt(rdev) >> 12n) & ~0xffn);
  return `${major}:${minor}`;
}

/** The kernel's name for a device number (via /sys/dev/block/MAJ:MIN), or null when unknown. */
export async function kernelName(devno: string): Promise<string | null> {
  try {
    return path.basename(await fs.readlink(`/sys/dev/block/${devno}`));
  } catch {
    return null;
  }
}

/** The partitions of a whole device (entries of /sys/class/block/NAME holding a `partition` file). */
export async function partitionsOf(name: string): Promise<KernelBlockDevice[]> {
  const dir = path.join(SYS_BLOCK, name);
  const out: KernelBlockDevice[] = [];
  for (const entry of await fs.readdir(dir, { withFileTypes: true })) {
    if (!entry.isDirectory() && !entry.isSymbolicLink()) continue;
    const part = path.join(dir, entry.name);
    try {
      await fs.access(path.join(part, "partition"));
      out.push({ name: entry.name, devno: (await fs.readFile(path.join(part, "dev"), "utf8")).trim() });
    } catch {
      // not a partition (holders, queue, power, ...)
    }
  }
  return out;
}

/** Size in bytes: /sys/class/block/NAME/size counts 512-byte sectors whatever the logical block size. */
export async function sizeOf(name: string): Promise<number> {
  return Number((await fs.readFile(path.join(SYS_BLOCK, name, "size"), "utf8")).trim()) * 512;
}

export async function isReadOnly(name: string): Promise<boolean> {
  return (await fs.readFile(path.join(SYS_BLOCK, name, "ro"), "utf8")).trim() === "1";
}

/** Devices stacked on this one (device-mapper, MD RAID, bcache): names in its holders directory. */
export async function holdersOf(name: string): Promise<string[]> {
  try {
    return await fs.readdir(path.join(SYS_BLOCK, name, "holders"));
  } catch {
    return [];
  }
}

export interface MountUse {
  devno: string;
  source: string;
  mountPoint: string;
}

/**
 * Mounts in this process's namespace (/proc/self/mountinfo): field 3 is the
 * device number, field 5 the mount point, and after the " - " separator come
 * the filesystem type and the source. Octal escapes (\040) are decoded.
 */
export async function mounts(): Promise<MountUse[]> {
  const text = await fs.readFile("/proc/self/mountinfo", "utf8");
  const out: MountUse[] = [];
  for (const line of text.split("\n")) {
    const fields = line.split(" ");
    const sep = fields.indexOf("-");
    if (sep < 0 || fields.length < sep + 3) continue;
    out.push({ devno: fields[2]!, mountPoint: unescape(fields[4]!), source: unescape(fields[sep + 2]!) });
  }
  return out;
}

/** Active swap areas (/proc/swaps, first column), octal escapes decoded. */
export async function swaps(): Promise<string[]> {
  let text: string;
  try {
    text = await fs.readFile("/proc/swaps", "utf8");
  } catch {
    return [];
  }
  return text
    .split("\n")
    .slice(1)
    .map((l) => l.split(/\s+/)[0] ?? "")
    .filter((f) => f !== "")
    .map(unescape);
}

function unescape(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}
