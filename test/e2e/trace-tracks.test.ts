/**
 * Trace mode really tracks: on a bare loop device in CONTINUOUS, scattered
 * small writes, discards and write-zeroes each reach the replica, the agent
 * reads in proportion to what was written (whole 64 KiB blocks around each
 * write, never the disk: no hidden rescans), and a PIT taken once the writer
 * is quiet equals the device.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it, type TestContext } from "node:test";
import { Replication } from "../../src/agent/replication.js";
import { requireCapability } from "../support/capabilities.js";
import { type Site, startSite, agentSettings } from "../support/lifeboat-site.js";
import { loopDiskForTest } from "../support/loop-disk.js";
import { assertPitIsSnapshot, sleep, snapshotDevice, until } from "../support/pit-check.js";

const MiB = 1024 * 1024;

void describe("trace mode tracks every change", () => {
  let tmp = "";
  let site: Site;
  before(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), "lifeboat-tracks-"));
    site = await startSite(tmp);
  });
  after(async () => {
    await site?.close();
    await rm(tmp, { recursive: true, force: true });
  });

  /** A 64 MiB loop device of random bytes, replicated in trace mode until CONTINUOUS. */
  async function tracedDisk(t: TestContext, name: string, opts: { settleMs?: number } = {}) {
    const disk = await loopDiskForTest(t, { sizeMiB: 64, ext4: false });
    const dev = disk.device;
    spawnSync("dd", [`if=/dev/urandom`, `of=${dev}`, "bs=1M", "count=64", "oflag=direct", "status=none"]);
    const who = await site.register(`${name}1`);
    const rep = new Replication({
      serverId: who.serverId,
      hostname: `${name}1`,
      version: "test",
      disks: [{ index: 0, path: dev, kind: "device", id: `loop-${name}` }],
      blockSize: 65536,
      settings: agentSettings({ tracker: "trace" }),
      connect: () => site.connect(who),
      ...opts,
    });
    await rep.start();
    try {
      await until("initial sync", () => rep.status()?.state === "CONTINUOUS");
    } catch (err) {
      await rep.stop();
      throw err;
    }
    return { dev, who, rep };
  }

  void it(
    "writes, discards and write-zeroes reach the replica; reads follow writes",
    { timeout: 180_000 },
    async (t) => {
      if (!requireCapability(t, "root", "loop", "tracefs")) return;
      const { dev, who, rep } = await tracedDisk(t, "tracks");
      try {
        assert.equal(rep.tracker, "trace");
        const read0 = rep.counters.bytesRead;
        const rescans0 = rep.counters.rescans;
        // 200 scattered 4 KiB direct writes: 800 KiB in 200 different blocks.
        for (let i = 0; i < 200; i++)
          spawnSync("dd", [
            "if=/dev/urandom",
            `of=${dev}`,
            "bs=4k",
            "count=1",
            `seek=${(i * 79) % 16384}`,
            "oflag=direct",
            "conv=notrunc",
            "status=none",
          ]);
        // A discard and a write-zeroes of 1 MiB each.
        const discard = spawnSync("blkdiscard", ["-o", String(8 * MiB), "-l", String(MiB), dev], {
          encoding: "utf8",
        });
        assert.equal(discard.status, 0, discard.stderr);
        const zero = spawnSync("blkdiscard", ["-z", "-o", String(20 * MiB), "-l", String(MiB), dev], {
          encoding: "utf8",
        });
        assert.equal(zero.status, 0, zero.stderr);
        // Every change is traced within a poll of the trace buffers, then shipped.
        await until("shipped", () => {
          const s = rep.status();
          return s !== null && s.backlogBytes === 0 && rep.counters.bytesRead - read0 >= 200 * 4096 + 2 * MiB;
        });
        const read = rep.counters.bytesRead - read0;
        assert.equal(rep.counters.rescans, rescans0, "no rescan");
        // Each 4 KiB write costs at most its 64 KiB block; the two 1 MiB ranges their blocks.
        assert.ok(
          read <= 200 * 64 * 1024 + 2 * MiB + 256 * 1024,
          `read ${read} bytes for 2.8 MiB of changes`,
        );
        assert.ok(read >= 200 * 4096, `read ${read} bytes`);

        const frozen = path.join(tmp, "device.img");
        await snapshotDevice(dev, frozen);
        const point = await rep.requestPoint();
        assert.equal(point.consistency, "crash", "nothing wrote while the point was read");
        await assertPitIsSnapshot(site, who.serverName, point.pitId!, frozen, path.join(tmp, "pit.img"), {
          fsck: false,
        });
      } finally {
        await rep.stop();
      }
    },
  );

  void it(
    "a write after a quiet spell ships at once, without waiting for a batch to form",
    { timeout: 180_000 },
    async (t) => {
      if (!requireCapability(t, "root", "loop", "tracefs")) return;
      // Batches two minutes apart: a write that waited for the next one would wait that long.
      const { dev, rep } = await tracedDisk(t, "quiet", { settleMs: 120_000 });
      try {
        await until("caught up", () => rep.status()?.backlogBytes === 0);
        await sleep(1000);
        const sent0 = rep.counters.bytesSent;
        const start = Date.now();
        const dd = spawnSync(
          "dd",
          ["if=/dev/urandom", `of=${dev}`, "bs=4k", "count=1", "seek=777", "oflag=direct", "conv=notrunc"],
          { encoding: "utf8" },
        );
        assert.equal(dd.status, 0, dd.stderr);
        await until(
          "the write to be acknowledged",
          () => rep.counters.bytesSent > sent0 && rep.status()?.backlogBytes === 0,
          20_000,
        );
        t.diagnostic(`acknowledged ${Date.now() - start} ms after the write`);
      } finally {
        await rep.stop();
      }
    },
  );

  void it(
    "reads a backlog as fast as a bandwidth cap lets it through, not all ahead",
    { timeout: 180_000 },
    async (t) => {
      if (!requireCapability(t, "root", "loop", "tracefs")) return;
      const { dev, rep } = await tracedDisk(t, "capped");
      try {
        // 0.5 Mbit/s: some 15 patches of 4 KiB a second, each read as its 64 KiB block.
        rep.setBandwidth(0.5);
        const read0 = rep.counters.bytesRead;
        const sent0 = rep.counters.bytesSent;
        // 400 scattered 4 KiB writes, each in a block of its own: 25 MiB of blocks to read.
        const blocks = 400;
        for (let i = 0; i < blocks; i++)
          spawnSync("dd", [
            "if=/dev/urandom",
            `of=${dev}`,
            "bs=4k",
            "count=1",
            `seek=${i * 16 * 2 + 3}`,
            "oflag=direct",
            "conv=notrunc",
            "status=none",
          ]);
        await until("the backlog to ship", () => rep.counters.bytesSent > sent0);
        await sleep(3000);
        const read = rep.counters.bytesRead - read0;
        const sent = rep.counters.bytesSent - sent0;
        t.diagnostic(`under 0.5 Mbit/s: read ${read} B, sent ${sent} B`);
        assert.ok((rep.status()?.backlogBytes ?? 0) > 0, "the cap holds a backlog back");
        // Shipping reads a batch and the one after it; a batch is at most a second of the cap.
        assert.ok(read < 10 * MiB, `read ${read} B of the ${blocks * 64} KiB backlog in ~3 s at 62.5 kB/s`);
        assert.ok(read >= 64 * 1024, `it still reads: ${read} B`);

        // Lifting the cap ships the rest.
        rep.setBandwidth(0);
        await until(
          "caught up",
          () => rep.status()?.backlogBytes === 0 && rep.counters.bytesRead - read0 >= blocks * 65536,
        );
        assert.ok(rep.counters.bytesRead - read0 <= (blocks + 64) * 65536, "each block read about once");
      } finally {
        await rep.stop();
      }
    },
  );
});
