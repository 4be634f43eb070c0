/**
 * The agent's building blocks composed as a consistency pass will use them:
 * trace → dirty set → freeze → take → O_DIRECT read of the dirty extents into
 * a replica. Under a live write workload (new files, overwrites, deletes,
 * fstrim), the replica must equal the device at each freeze.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { describe, it } from "node:test";
import {
  DirtySet,
  DiskReader,
  TraceTracker,
  mountedFilesystems,
  withFrozen,
  type TraceLoss,
  type TracedRange,
} from "../../src/agent/index.js";
import { requireCapability } from "../support/capabilities.js";
import { loopDiskForTest } from "../support/loop-disk.js";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Byte offsets of the 4 KiB blocks where two images differ. */
function differingBlocks(a: Buffer, b: Buffer): number[] {
  const out: number[] = [];
  for (let off = 0; off < a.length; off += 4096)
    if (!a.subarray(off, off + 4096).equals(b.subarray(off, off + 4096))) out.push(off);
  return out;
}

void describe("consistency pass", () => {
  // A timeout so that a hang fails the run instead of stalling it.
  void it(
    "a replica updated from traced dirty extents equals the device at every freeze",
    { timeout: 180_000 },
    async (t) => {
      if (!requireCapability(t, "root", "loop", "tracefs", "fsfreeze")) return;
      const disk = await loopDiskForTest(t, { sizeMiB: 64 });
      const mp = disk.mountPoint!;
      const set = new DirtySet({ diskSize: disk.sizeBytes, blockSize: 64 << 10 });
      const losses: TraceLoss[] = [];
      // What the trace delivered since the last take.
      let sinceTake: TracedRange[] = [];
      const tracker = await TraceTracker.start({
        device: disk.device,
        instanceName: `lifeboat-test-${process.pid}-${disk.minor}`,
        onRanges: (rs) =>
          rs.forEach((r) => {
            set.addSectors(r.sector, r.sectors);
            sinceTake.push(r);
          }),
        onLost: (l) => losses.push(l),
      });
      t.after(() => tracker.stop());
      const reader = await DiskReader.open(disk.device);
      t.after(() => reader.close());

      // Initial sync while the disk is live: writes during it are traced.
      const replica = await reader.read(0, reader.size);

      const workload = spawn(
        "sh",
        [
          "-c",
          `i=0; while :; do i=$((i % 24 + 1));
           dd if=/dev/urandom of=${mp}/f$i bs=16k count=$((i % 5 + 1)) conv=fsync status=none;
           dd if=/dev/urandom of=${mp}/f$(((i + 7) % 24 + 1)) bs=4k count=1 seek=$((i % 3)) conv=notrunc,fsync status=none 2>/dev/null;
           [ $((i % 6)) -eq 0 ] && rm -f ${mp}/f$(((i + 12) % 24 + 1)) && fstrim ${mp};
         done`,
        ],
        { stdio: "ignore" },
      );
      const stopped = new Promise((r) => workload.on("exit", r));
      const rounds = async () => {
        const filesystems = await mountedFilesystems(disk.device);
        let shippedBytes = 0;
        let trimmedWhileFrozen = 0;
        for (let round = 0; round < 4; round++) {
          await sleep(400);
          const res = await withFrozen(
            filesystems,
            async () => {
              await tracker.drain();
              const taken = set.take();
              sinceTake = [];
              await reader.readRanges(taken.extents(), (off, data) => {
                data.copy(replica, off);
                shippedBytes += data.length;
              });
              const device = await reader.read(0, reader.size);
              if (device.equals(replica)) return true;
              // A frozen ext4 still runs FITRIM: fstrim discards free blocks
              // while the freeze holds. Those blocks are free space, the trace
              // reports them, and the next pass ships them; any other
              // difference is a write the pass missed.
              await tracker.drain();
              const strays = differingBlocks(device, replica).filter(
                (off) =>
                  !sinceTake.some(
                    (r) =>
                      r.op === "discard" &&
                      r.sector * 512 <= off &&
                      off + 4096 <= (r.sector + r.sectors) * 512,
                  ),
              );
              if (strays.length) return `blocks at ${strays.slice(0, 8).join(", ")} differ`;
              trimmedWhileFrozen++;
              return true;
            },
            { capMs: 20_000 },
          );
          assert.equal(res.capHit, false);
          assert.equal(res.value, true, `round ${round}: the replica differs from the frozen device`);
        }
        assert.deepEqual(losses, []);
        assert.ok(shippedBytes > 0, "the workload wrote something");
        t.diagnostic(`rounds with discards while frozen: ${trimmedWhileFrozen}`);
        assert.ok(shippedBytes < 4 * disk.sizeBytes, `shipped ${shippedBytes} bytes`);
      };
      try {
        await rounds();
      } finally {
        // Before the after() hooks unmount the disk under it.
        workload.kill("SIGKILL");
        await stopped;
      }
    },
  );
});
