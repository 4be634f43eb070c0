/**
 * Lost trace events: with a per-CPU trace buffer of a few KiB, a burst of
 * small direct writes overruns it. The agent must notice (traceLosses), fall
 * back to a rescan of the disk, and the next PIT must still equal the device
 * as it was while frozen: no write may be lost with the events.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { Replication } from "../../src/agent/replication.js";
import { createLogger } from "../../src/base/index.js";
import { requireCapability } from "../support/capabilities.js";
import { type Site, startSite, agentSettings } from "../support/lifeboat-site.js";
import { loopDiskForTest } from "../support/loop-disk.js";
import { assertPitIsSnapshot, snapshotDevice, until } from "../support/pit-check.js";

void describe("trace buffer overrun", () => {
  let tmp = "";
  let site: Site;
  before(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), "lifeboat-trace-overrun-"));
    site = await startSite(tmp);
  });
  after(async () => {
    await site?.close();
    await rm(tmp, { recursive: true, force: true });
  });

  void it(
    "a burst overruns a tiny trace buffer: losses counted, a rescan runs, the PIT equals the frozen device",
    { timeout: 300_000 },
    async (t) => {
      if (!requireCapability(t, "root", "loop", "tracefs", "fsfreeze")) return;
      const disk = await loopDiskForTest(t, { sizeMiB: 128 });
      const mp = disk.mountPoint!;
      spawnSync("sh", ["-c", `head -c 24M /dev/urandom > ${mp}/base && sync`]);
      const who = await site.register("overrun-1");
      const frozenImage = path.join(tmp, "frozen.img");
      const rep = new Replication({
        serverId: who.serverId,
        hostname: "overrun-1",
        version: "test",
        disks: [{ index: 0, path: disk.device, kind: "device", id: "loop-overrun" }],
        blockSize: 64 * 1024,
        settings: agentSettings({ freezeCapMs: 15_000, tracker: "trace", traceBufferKb: 4 }),
        connect: () => site.connect(who),
        logger: createLogger(process.env.LIFEBOAT_TEST_LOG ?? "silent", "agent"),
        whileFrozen: () => snapshotDevice(disk.device, frozenImage),
      });
      await rep.start();
      let burst: ChildProcess | undefined;
      let burstDone: Promise<unknown> = Promise.resolve();
      try {
        assert.equal(rep.tracker, "trace");
        await until("initial sync", () => rep.status()?.state === "CONTINUOUS", 120_000);
        const losses = rep.counters.traceLosses;
        const rescans = rep.counters.rescans;

        // 4 KiB direct writes, each its own bio: far more events than a few KiB of buffer hold between reads.
        burst = spawn(
          "sh",
          [
            "-c",
            `dd if=/dev/urandom of=${mp}/burst bs=4k count=12000 oflag=direct status=none &&
             dd if=/dev/urandom of=${mp}/base bs=4k count=3000 seek=1000 oflag=direct conv=notrunc status=none &&
             sync`,
          ],
          { stdio: "ignore" },
        );
        const child = burst;
        burstDone = new Promise((r) => child.on("exit", r));
        await until("lost trace events", () => rep.counters.traceLosses > losses, 30_000);
        // Asked for while events are being lost: the point must not be made from an incomplete dirty set.
        const during = rep.requestPoint();
        during.catch(() => undefined); // awaited below; a failure before then must not go unhandled
        assert.equal(await burstDone, 0, "the burst ran");
        const first = await during;
        assert.ok(rep.counters.rescans > rescans, `a rescan ran: ${JSON.stringify(rep.counters)}`);
        assert.equal(first.consistency, "filesystem");
        assert.ok(first.pitId, "the replicator named the PIT");
        await assertPitIsSnapshot(site, who.serverName, first.pitId, frozenImage, path.join(tmp, "pit.img"));

        await until(
          "the agent back in CONTINUOUS",
          () => rep.status()?.state === "CONTINUOUS",
          120_000,
          () => rep.status(),
        );
        const point = await rep.requestPoint();
        assert.equal(point.consistency, "filesystem");
        assert.ok(point.pitId, "the replicator named the PIT");
        await assertPitIsSnapshot(site, who.serverName, point.pitId, frozenImage, path.join(tmp, "pit.img"));
      } finally {
        burst?.kill("SIGKILL");
        await burstDone;
        await rep.stop();
      }
    },
  );
});
