/**
 * Safety checks before the block target writes a server's disks onto the
 * operator's devices: writing onto a mounted filesystem, an active swap area
 * or a device under LVM or RAID would destroy live data, and a device smaller
 * than its disk would lose the disk's tail. Nothing is written here.
 */
import { constants, promises as fs } from "node:fs";
import { LifeboatError } from "../../base/index.js";
import {
  type KernelBlockDevice,
  devnoOf,
  holdersOf,
  isReadOnly,
  kernelName,
  mounts,
  partitionsOf,
  sizeOf,
  swaps,
} from "./block-sysfs.js";

/**
 * Checks that `devices[i]` can receive disk i (of `sizes[i]` bytes): one
 * device per disk, each a block device named once, writable, not mounted
 * (itself or a partition), not an active swap area, not held by a stacked
 * device and not opened exclusively by anyone, and at least as large as its
 * disk. Throws the first problem found, in disk order.
 */
export async function checkBlockDevices(devices: string[], sizes: number[]): Promise<void> {
  if (devices.length !== sizes.length)
    throw new LifeboatError(
      "LAUNCH_DEVICE_COUNT",
      `the server has ${sizes.length} disk(s) but ${devices.length} device(s) were given`,
      {
        hint: "give one block device per disk, in the server's disk order (disk 0 first)",
        exitCode: 2,
      },
    );
  const seen = new Map<string, number>();
  const swapList = await swaps();
  const mountList = await mounts();
  for (const [i, device] of devices.entries()) {
    const dev = await resolve(i, device);
    const twice = seen.get(dev.devno);
    if (twice !== undefined)
      throw new LifeboatError(
        "LAUNCH_DEVICE_COUNT",
        `disk ${i}: ${device} is the same device as the one given for disk ${twice}`,
        { hint: "give a different block device for each disk", exitCode: 2 },
      );
    seen.set(dev.devno, i);
    const parts = await partitionsOf(dev.name);
    const all = [dev, ...parts];
    checkNotMounted(i, device, all, mountList);
    await checkNotSwap(i, device, all, swapList);
    await checkNotHeld(i, device, all);
    await checkNotBusy(i, device);
    if (await isReadOnly(dev.name))
      throw new LifeboatError("LAUNCH_DEVICE_READ_ONLY", `disk ${i}: ${device} is read-only`, {
        hint: "make it writable (blockdev --setrw, or the storage's own setting) or give another device",
      });
    const have = await sizeOf(dev.name);
    const need = sizes[i]!;
    if (have < need)
      throw new LifeboatError(
        "LAUNCH_DEVICE_TOO_SMALL",
        `disk ${i}: ${device} holds ${bytes(have)} but the disk is ${bytes(need)}`,
        { hint: `give a device of at least ${need} bytes for disk ${i}`, exitCode: 2 },
      );
  }
}

async function resolve(i: number, device: string): Promise<KernelBlockDevice> {
  let st;
  try {
    st = await fs.stat(device);
  } catch (err) {
    throw notBlock(i, device, `cannot be read (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
  }
  if (!st.isBlockDevice()) throw notBlock(i, device, "is not a block device");
  const devno = devnoOf(st.rdev);
  const name = await kernelName(devno);
  if (name === null) throw notBlock(i, device, `is device ${devno}, which the kernel does not list`);
  return { name, devno };
}

function checkNotMounted(
  i: number,
  device: string,
  all: KernelBlockDevice[],
  mountList: Awaited<ReturnType<typeof mounts>>,
): void {
  for (const d of all) {
    const m = mountList.find((x) => x.devno === d.devno || x.source === `/dev/${d.name}`);
    if (m)
      throw inUse(
        i,
        device,
        `${d === all[0] ? "is" : `has partition ${d.name}`} mounted at ${m.mountPoint}`,
        `unmount it (umount ${m.mountPoint}) or give another device`,
      );
  }
}

async function checkNotSwap(i: number, device: string, all: KernelBlockDevice[], swapList: string[]) {
  for (const file of swapList) {
    let devno: string | null = null;
    try {
      const st = await fs.stat(file);
      if (st.isBlockDevice()) devno = devnoOf(st.rdev);
    } catch {
      // a swap file that vanished, or a path we cannot stat
    }
    const d = all.find((x) => x.devno === devno || file === `/dev/${x.name}`);
    if (d)
      throw inUse(
        i,
        device,
        `${d === all[0] ? "is" : `has partition ${d.name} as`} an active swap area`,
        `turn it off (swapoff ${file}) or give another device`,
      );
  }
}

async function checkNotHeld(i: number, device: string, all: KernelBlockDevice[]): Promise<void> {
  for (const d of all) {
    const holders = await holdersOf(d.name);
    if (holders.length)
      throw inUse(
        i,
        device,
        `${d === all[0] ? "is" : `has partition ${d.name}`} held by ${holders.join(", ")} (LVM, RAID or device-mapper)`,
        "deactivate what uses it (vgchange -an, mdadm --stop, dmsetup remove) or give another device",
      );
  }
}

/** The kernel's own test: an exclusive open fails with EBUSY while anything has the device claimed. */
async function checkNotBusy(i: number, device: string): Promise<void> {
  let fh;
  try {
    fh = await fs.open(device, constants.O_RDONLY | constants.O_EXCL);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "EBUSY")
      throw inUse(
        i,
        device,
        "is in use by another program",
        "find it with lsof or fuser -v, or give another device",
      );
    throw notBlock(i, device, `cannot be opened (${code ?? String(err)})`);
  }
  await fh.close();
}

function inUse(i: number, device: string, what: string, hint: string): LifeboatError {
  return new LifeboatError("LAUNCH_DEVICE_IN_USE", `disk ${i}: ${device} ${what}`, { hint });
}

function notBlock(i: number, device: string, what: string): LifeboatError {
  return new LifeboatError("LAUNCH_NOT_BLOCK_DEVICE", `disk ${i}: ${device} ${what}`, {
    hint: "give the path of a block device (lsblk lists them), one per disk",
    exitCode: 2,
  });
}

function bytes(n: number): string {
  const units = ["bytes", "KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${n} bytes` : `${v.toFixed(v < 10 ? 2 : 1)} ${units[u]} (${n} bytes)`;
}
