import { promises as fs } from "node:fs";
import { LifeboatError } from "../base/index.js";

/** A raw image file or block device opened for sequential reading, with its size. */
export interface DiskSource {
  path: string;
  size: number;
  isBlockDevice: boolean;
  handle: fs.FileHandle;
}

export async function openDiskSource(path: string): Promise<DiskSource> {
  let handle: fs.FileHandle;
  try {
    handle = await fs.open(path, "r");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new LifeboatError(
      "DISK_UNREADABLE",
      `cannot read disk ${path}: ${code === "ENOENT" ? "no such file or device" : code === "EACCES" ? "permission denied" : (err as Error).message}`,
      { hint: "check the path; block devices need root", cause: err, exitCode: code === "ENOENT" ? 2 : 1 },
    );
  }
  try {
    const st = await handle.stat();
    if (st.isFile()) return { path, size: st.size, isBlockDevice: false, handle };
    if (st.isBlockDevice())
      return { path, size: await blockDeviceSize(st.rdev), isBlockDevice: true, handle };
    throw new LifeboatError("DISK_UNREADABLE", `${path} is neither a file nor a block device`, {
      hint: "give a raw image file or a block device",
      exitCode: 2,
    });
  } catch (err) {
    await handle.close();
    throw err;
  }
}

/** A block device's size from sysfs (in 512-byte sectors whatever the logical block size). */
export async function blockDeviceSize(rdev: number): Promise<number> {
  const major = Math.floor(rdev / 256) & 0xfff;
  const minor = (rdev & 0xff) | ((Math.floor(rdev / 4096) & 0xfff00) >>> 0);
  const text = await fs.readFile(`/sys/dev/block/${major}:${minor}/size`, "utf8");
  return Number(text.trim()) * 512;
}
