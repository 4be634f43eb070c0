/**
 * Whether a configured disk is still there. Only unambiguous signs count as
 * gone: the path no longer exists, a device whose sysfs entry is gone or
 * reads as size 0, an open refused with ENXIO, ENODEV or ENOMEDIUM, an image
 * file of size 0. Any other error (EIO, EACCES, a timeout) says nothing:
 * a disk is never declared missing because of a read error that may pass.
 *
 * Loop devices: `losetup -d` of a device that someone (this agent) holds
 * open only marks it to be detached when the last holder closes it (the
 * kernel's autoclear flag). A loop device whose autoclear flag turned on
 * while the agent watched it is therefore reported gone, so that the agent
 * lets go of it and the detach the operator asked for happens.
 */
import { promises as fs } from "node:fs";
import { deviceNumbers, sysfsDir } from "../store/block-device.js";
import type { AgentDisk } from "./config.js";

export type DiskPresence =
  | { state: "present"; sizeBytes: number }
  | { state: "missing"; reason: string }
  /** Could not tell (a transient error): treated as present. */
  | { state: "unknown"; reason: string };

const GONE_ON_OPEN = new Set(["ENXIO", "ENODEV", "ENOMEDIUM"]);

/**
 * Probes `disk`. `loopFlags` remembers each loop device's autoclear flag
 * between probes (by path); pass the same map every time.
 */
export async function probeDisk(disk: AgentDisk, loopFlags: Map<string, boolean>): Promise<DiskPresence> {
  let st;
  try {
    st = await fs.stat(disk.path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? "";
    if (code === "ENOENT" || code === "ENOTDIR")
      return { state: "missing", reason: `${disk.path} does not exist` };
    if (GONE_ON_OPEN.has(code)) return { state: "missing", reason: `${disk.path}: ${code}` };
    return { state: "unknown", reason: `${disk.path}: ${code || (err as Error).message}` };
  }
  if (disk.kind === "image") {
    if (!st.isFile()) return { state: "missing", reason: `${disk.path} is no longer a regular file` };
    return st.size === 0
      ? { state: "missing", reason: `${disk.path} is empty` }
      : { state: "present", sizeBytes: st.size };
  }
  if (!st.isBlockDevice()) return { state: "missing", reason: `${disk.path} is no longer a block device` };
  const { major, minor } = deviceNumbers(st.rdev);
  const dir = sysfsDir(major, minor);
  let sectors: string;
  try {
    sectors = (await fs.readFile(`${dir}/size`, "utf8")).trim();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? "";
    if (code === "ENOENT") return { state: "missing", reason: `${disk.path}: no device ${major}:${minor}` };
    return { state: "unknown", reason: `${disk.path}: sysfs: ${code || (err as Error).message}` };
  }
  const sizeBytes = Number(sectors) * 512;
  if (sizeBytes === 0) return { state: "missing", reason: `${disk.path} has size 0 (detached or no medium)` };
  const autoclear = await fs.readFile(`${dir}/loop/autoclear`, "utf8").then(
    (t) => t.trim() === "1",
    () => undefined,
  );
  if (autoclear !== undefined) {
    const before = loopFlags.get(disk.path);
    if (autoclear && before === false)
      return { state: "missing", reason: `${disk.path}: detach requested (losetup -d)` };
    loopFlags.set(disk.path, autoclear);
  } else loopFlags.delete(disk.path);
  try {
    const fh = await fs.open(disk.path, "r");
    await fh.close();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? "";
    if (GONE_ON_OPEN.has(code)) return { state: "missing", reason: `${disk.path}: ${code}` };
    return { state: "unknown", reason: `${disk.path}: ${code || (err as Error).message}` };
  }
  return { state: "present", sizeBytes };
}
