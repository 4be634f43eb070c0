/**
 * The block target's safety checks on real loop devices: a mounted disk, a
 * mounted partition, an active swap area, a device opened exclusively, a
 * read-only one and a too small one are refused with their codes; a free
 * device large enough passes.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { constants, promises as fs } from "node:fs";
import path from "node:path";
import { describe, it, type TestContext } from "node:test";
import { promisify } from "node:util";
import { isLifeboatError } from "../../src/base/index.js";
import { checkBlockDevices } from "../../src/launch/targets/index.js";
import { requireCapability, skipUnless } from "../support/capabilities.js";
import { loopDiskForTest } from "../support/loop-disk.js";

const run = promisify(execFile);
const MiB = 1 << 20;

function rejectsWith(code: string, text: RegExp) {
  return (err: unknown) => {
    assert.ok(isLifeboatError(err, code), `expected ${code}, got ${String(err)}`);
    assert.match(err.message, text);
    assert.ok(err.hint.length > 0);
    return true;
  };
}

/** A loop device over an image with an MBR table (losetup -P), partition 1 ext4 and mounted. */
async function partitionedLoop(
  t: TestContext,
): Promise<{ device: string; partition: string; mnt: string } | null> {
  const disk = await loopDiskForTest(t, { sizeMiB: 32, ext4: false });
  await run("losetup", ["-d", disk.device]);
  await run("sh", ["-c", 'echo "start=2048, type=83" | sfdisk -q "$1"', "sh", disk.image]);
  const device = (await run("losetup", ["-f", "--show", "-P", disk.image])).stdout.trim();
  const mnt = path.join(disk.dir, "part-mnt");
  t.after(async () => {
    await run("umount", [mnt]).catch(() => undefined);
    await run("losetup", ["-d", device]).catch(() => undefined);
  });
  const partition = `${device}p1`;
  const sysfs = `/sys/class/block/${path.basename(device)}/${path.basename(partition)}`;
  for (let i = 0; i < 5 && !(await fs.stat(sysfs).catch(() => null)); i++)
    await new Promise((r) => setTimeout(r, 100));
  if (!(await fs.stat(sysfs).catch(() => null))) return null;
  if (!(await fs.stat(partition).catch(() => null))?.isBlockDevice()) return null;
  await run("mkfs.ext4", ["-q", "-F", partition]);
  await fs.mkdir(mnt);
  await run("mount", [partition, mnt]);
  return { device, partition, mnt };
}

void describe("block devices: checks before writing", skipUnless("loop"), () => {
  void it("accepts free devices at least as large as their disks", async (t) => {
    if (!requireCapability(t, "loop")) return;
    const a = await loopDiskForTest(t, { sizeMiB: 16, ext4: false });
    const b = await loopDiskForTest(t, { sizeMiB: 32, ext4: false });
    await checkBlockDevices([a.device, b.device], [16 * MiB, 20 * MiB]);
  });

  void it("wants one device per disk, each named once", async (t) => {
    if (!requireCapability(t, "loop")) return;
    const a = await loopDiskForTest(t, { sizeMiB: 16, ext4: false });
    await assert.rejects(
      checkBlockDevices([a.device], [MiB, MiB]),
      rejectsWith("LAUNCH_DEVICE_COUNT", /2 disk\(s\) but 1 device/),
    );
    await assert.rejects(
      checkBlockDevices([a.device, a.device], [MiB, MiB]),
      rejectsWith("LAUNCH_DEVICE_COUNT", /disk 1: .* same device as .* disk 0/),
    );
  });

  void it("refuses what is not a block device", async (t) => {
    if (!requireCapability(t, "loop")) return;
    const a = await loopDiskForTest(t, { sizeMiB: 16, ext4: false });
    await assert.rejects(
      checkBlockDevices([a.image], [MiB]),
      rejectsWith("LAUNCH_NOT_BLOCK_DEVICE", /disk 0: .* is not a block device/),
    );
    await assert.rejects(
      checkBlockDevices([path.join(a.dir, "absent")], [MiB]),
      rejectsWith("LAUNCH_NOT_BLOCK_DEVICE", /cannot be read \(ENOENT\)/),
    );
  });

  void it("refuses a device too small for its disk, naming both sizes", async (t) => {
    if (!requireCapability(t, "loop")) return;
    const a = await loopDiskForTest(t, { sizeMiB: 16, ext4: false });
    const b = await loopDiskForTest(t, { sizeMiB: 8, ext4: false });
    await assert.rejects(
      checkBlockDevices([a.device, b.device], [16 * MiB, 8 * MiB + 512]),
      rejectsWith(
        "LAUNCH_DEVICE_TOO_SMALL",
        new RegExp(
          `disk 1: ${b.device} holds 8.00 MiB \\(8388608 bytes\\) but the disk is 8.00 MiB \\(8389120 bytes\\)`,
        ),
      ),
    );
  });

  void it("refuses a mounted device, naming the mount point", async (t) => {
    if (!requireCapability(t, "loop")) return;
    const a = await loopDiskForTest(t, { sizeMiB: 16 });
    await assert.rejects(
      checkBlockDevices([a.device], [MiB]),
      rejectsWith("LAUNCH_DEVICE_IN_USE", new RegExp(`${a.device} is mounted at ${a.mountPoint}`)),
    );
  });

  void it("refuses a device with a mounted partition", async (t) => {
    if (!requireCapability(t, "loop")) return;
    const p = await partitionedLoop(t);
    // A kernel built without partition table support (some microVM kernels) makes no
    // partitions; that is the kernel, not a missing package, so it skips even under
    // LIFEBOAT_TEST_STRICT.
    if (p === null)
      return t.skip("the kernel made no partition for a loop device with an MBR table (losetup -P)");
    await assert.rejects(
      checkBlockDevices([p.device], [MiB]),
      rejectsWith(
        "LAUNCH_DEVICE_IN_USE",
        new RegExp(`${p.device} has partition ${path.basename(p.partition)} mounted at ${p.mnt}`),
      ),
    );
  });

  void it("refuses an active swap area", async (t) => {
    if (!requireCapability(t, "loop")) return;
    const a = await loopDiskForTest(t, { sizeMiB: 16, ext4: false });
    await run("mkswap", ["-q", a.device]);
    await run("swapon", [a.device]);
    try {
      await assert.rejects(
        checkBlockDevices([a.device], [MiB]),
        rejectsWith("LAUNCH_DEVICE_IN_USE", /is an active swap area/),
      );
    } finally {
      await run("swapoff", [a.device]);
    }
  });

  void it("refuses a device another program holds open exclusively", async (t) => {
    if (!requireCapability(t, "loop")) return;
    const a = await loopDiskForTest(t, { sizeMiB: 16, ext4: false });
    const fh = await fs.open(a.device, constants.O_RDONLY | constants.O_EXCL);
    try {
      await assert.rejects(
        checkBlockDevices([a.device], [MiB]),
        rejectsWith("LAUNCH_DEVICE_IN_USE", /in use by another program/),
      );
    } finally {
      await fh.close();
    }
    await checkBlockDevices([a.device], [MiB]);
  });

  void it("refuses a read-only device", async (t) => {
    if (!requireCapability(t, "loop")) return;
    const a = await loopDiskForTest(t, { sizeMiB: 16, ext4: false });
    await run("blockdev", ["--setro", a.device]);
    t.after(() => run("blockdev", ["--setrw", a.device]).catch(() => undefined));
    await assert.rejects(
      checkBlockDevices([a.device], [MiB]),
      rejectsWith("LAUNCH_DEVICE_READ_ONLY", /is read-only/),
    );
  });
});
