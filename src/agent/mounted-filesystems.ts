/**
 * The filesystems mounted from a disk and its partitions, as a consistency
 * point must freeze them (from /proc/self/mountinfo and sysfs).
 */
import { promises as fs } from "node:fs";
import { LifeboatError } from "../base/index.js";
import { deviceNumbers, partitionNumbers } from "../store/block-device.js";

/** A filesystem mounted from a disk or one of its partitions. */
export interface MountedFilesystem {
  mountPoint: string;
  fsType: string;
  /** The mount source as mountinfo gives it (e.g. /dev/sdb1). */
  source: string;
  /** "major:minor" of the device the filesystem is on. */
  dev: string;
}

/** Decodes mountinfo's octal escapes (\040 for a space, ...). */
function unescape(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/** "major:minor" of a disk and of each of its partitions, from sysfs. */
export async function diskAndPartitionDevs(device: string): Promise<string[]> {
  let st;
  try {
    st = await fs.stat(device);
  } catch (err) {
    throw new LifeboatError("DISK_UNREADABLE", `cannot read disk ${device}: ${(err as Error).message}`, {
      hint: "check the path",
      cause: err,
    });
  }
  if (!st.isBlockDevice())
    throw new LifeboatError("DISK_UNREADABLE", `${device} is not a block device`, {
      hint: "filesystems are found on block devices; an image file has none mounted",
    });
  const { major, minor } = deviceNumbers(st.rdev);
  const devs = [`${major}:${minor}`];
  for (const p of await partitionNumbers(major, minor)) devs.push(`${p.major}:${p.minor}`);
  return devs;
}

/**
 * The writable filesystems mounted from `device` or its partitions, one
 * entry per filesystem (bind mounts of the same one are listed once, by the
 * mount of its root when there is one). Read-only ones are left out unless
 * `includeReadOnly`: they cannot change, so there is nothing to freeze (but a
 * disk about to be written must have none mounted at all).
 */
export async function mountedFilesystems(
  device: string,
  mountinfo?: string,
  includeReadOnly = false,
): Promise<MountedFilesystem[]> {
  const devs = new Set(await diskAndPartitionDevs(device));
  const text = mountinfo ?? (await fs.readFile("/proc/self/mountinfo", "utf8"));
  const byDev = new Map<string, MountedFilesystem & { root: string }>();
  for (const line of text.split("\n")) {
    const f = line.split(" ");
    const sep = f.indexOf("-", 6);
    if (sep < 0 || f.length < sep + 4) continue;
    const dev = f[2]!;
    if (!devs.has(dev)) continue;
    const superOpts = f[sep + 3]!.split(",");
    const mountOpts = f[5]!.split(",");
    if (!includeReadOnly && (superOpts.includes("ro") || mountOpts.includes("ro"))) continue;
    const entry = {
      mountPoint: unescape(f[4]!),
      fsType: f[sep + 1]!,
      source: unescape(f[sep + 2]!),
      dev,
      root: unescape(f[3]!),
    };
    const seen = byDev.get(dev);
    if (!seen || (seen.root !== "/" && entry.root === "/")) byDev.set(dev, entry);
  }
  return [...byDev.values()].map(({ root: _root, ...fsys }) => fsys);
}
