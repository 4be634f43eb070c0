/** The loop-disk test helper itself: the workload reaches the device, and cleanup leaves nothing behind. */
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { describe, it } from "node:test";
import { requireCapability } from "../support/capabilities.js";
import { seedFromEnv } from "../support/images.js";
import { createLoopDisk, runWorkload } from "../support/loop-disk.js";

void describe("loop-disk test support", () => {
  void it("runs a workload on a mounted ext4 and cleans up mount, loop device and files", async (t) => {
    if (!requireCapability(t, "root", "loop")) return;
    const disk = await createLoopDisk({ sizeMiB: 32 });
    try {
      assert.match(disk.device, /^\/dev\/loop\d+$/);
      const attached = `/sys/block/${disk.device.slice("/dev/".length)}/loop/backing_file`;
      assert.ok(readFileSync(attached, "utf8").startsWith(disk.image));
      assert.ok(readFileSync("/proc/self/mountinfo", "utf8").includes(` ${disk.mountPoint} `));
      const wl = await runWorkload(disk, { seed: seedFromEnv(), files: 4, overwrites: 8 });
      assert.equal(wl.files.length, 3, "one of four files was deleted before fstrim");
      assert.ok(wl.trimmed && !existsSync(wl.trimmed));
      for (const f of wl.files) assert.ok(existsSync(f));
    } finally {
      await disk.cleanup();
    }
    await disk.cleanup(); // idempotent
    assert.equal(readFileSync("/proc/self/mountinfo", "utf8").includes(` ${disk.mountPoint} `), false);
    const name = disk.device.slice("/dev/".length);
    const backing = `/sys/block/${name}/loop/backing_file`;
    // Detached, unless another test run has attached a new image to the same number since.
    assert.ok(
      !existsSync(backing) || !readFileSync(backing, "utf8").startsWith(disk.image),
      "the loop device is detached",
    );
    assert.equal(existsSync(disk.dir), false, "the directory is gone");
  });
});
