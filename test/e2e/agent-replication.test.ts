/**
 * The agent's replication engine against a real server (control plane and
 * embedded replicator) on an ext4 loop device under a live write workload:
 * initial sync, continuous shipping of traced writes, and a consistency
 * point whose PIT equals the device as it was while frozen and passes fsck.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { DiskReader } from "../../src/agent/index.js";
import { createLogger } from "../../src/base/index.js";
import { Replication } from "../../src/agent/replication.js";
import { exportDisk, listPits } from "../../src/store/index.js";
import { requireCapability } from "../support/capabilities.js";
import { loopDiskForTest } from "../support/loop-disk.js";
import { type Site, startSite } from "../support/lifeboat-site.js";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const settings = {
  pitIntervalSeconds: 0,
  // The test reads the whole 128 MiB device while frozen (its reference image): room for a loaded machine.
  freezeCapMs: 15_000,
  lagThresholdSeconds: 30,
  stallSeconds: 300,
  bandwidthMbps: 0,
  tracker: "auto" as const,
};

async function until(what: string, fn: () => boolean | Promise<boolean>, ms = 60_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await fn())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

void describe("agent replication end to end", () => {
  let tmp = "";
  let site: Site;
  before(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), "lifeboat-agent-e2e-"));
    site = await startSite(tmp);
  });
  after(async () => {
    await site?.close();
    await rm(tmp, { recursive: true, force: true });
  });

  void it(
    "initial sync, continuous writes and a frozen point: the PIT is the device at freeze time",
    { timeout: 240_000 },
    async (t) => {
      if (!requireCapability(t, "root", "loop", "tracefs", "fsfreeze")) return;
      const disk = await loopDiskForTest(t, { sizeMiB: 128 });
      const mp = disk.mountPoint!;
      // Something to sync before the agent starts.
      spawnSync("sh", ["-c", `head -c 40M /dev/urandom > ${mp}/base && sync`]);
      const who = await site.register("e2e-db1");
      const frozenImage = path.join(tmp, "frozen.img");
      const rep = new Replication({
        serverId: who.serverId,
        hostname: "e2e-db1",
        version: "test",
        disks: [{ index: 0, path: disk.device, kind: "device", id: "loop-e2e" }],
        blockSize: 64 * 1024,
        settings,
        connect: () => site.connect(who),
        logger: createLogger(process.env.LIFEBOAT_TEST_LOG ?? "silent", "agent"),
        whileFrozen: async () => {
          // The device as it is while frozen, read past the page cache.
          const r = await DiskReader.open(disk.device);
          try {
            const { writeFile } = await import("node:fs/promises");
            await writeFile(frozenImage, await r.read(0, r.size));
          } finally {
            await r.close();
          }
        },
      });
      await rep.start();
      assert.equal(rep.tracker, "trace");

      const workload = spawn(
        "sh",
        [
          "-c",
          `i=0; while :; do i=$((i % 24 + 1));
           dd if=/dev/urandom of=${mp}/f$i bs=16k count=$((i % 5 + 1)) conv=fsync status=none;
           dd if=/dev/urandom of=${mp}/base bs=4k count=1 seek=$((i * 37)) conv=notrunc,fsync status=none;
           [ $((i % 6)) -eq 0 ] && rm -f ${mp}/f$(((i + 12) % 24 + 1)) && fstrim ${mp};
           sleep 0.05;
         done`,
        ],
        { stdio: "ignore" },
      );
      const stopped = new Promise((r) => workload.on("exit", r));
      try {
        await until("initial sync", () => rep.status()?.state === "CONTINUOUS");
        const afterSync = rep.counters.bytesSent;
        // Continuous writes are shipped (within a bound a loaded machine meets, not a fixed sleep).
        await until("continuous writes are shipped", () => rep.counters.bytesSent > afterSync, 30_000);
        await sleep(1000);
        const s = rep.status()!;
        assert.equal(s.tracker, "trace");
        // Shipping keeps up: the lag stays under the BACKLOG threshold (a generous bound on a busy machine).
        assert.ok(s.lagSeconds < settings.lagThresholdSeconds, `lag ${s.lagSeconds}s`);

        const point = await rep.requestPoint();
        assert.equal(point.consistency, "filesystem");
        assert.ok(point.pitId, "the replicator named the PIT");
        const repo = await site.openRepo();
        try {
          const pits = await listPits(repo, { server: who.serverName });
          const pit = pits.find((p) => p.id === point.pitId);
          assert.ok(pit, "the PIT is in the repository");
          assert.equal(pit.consistency, "filesystem");
          const out = path.join(tmp, "pit.img");
          await exportDisk(repo, pit, 0, out);
          const [got, want] = await Promise.all([readFile(out), readFile(frozenImage)]);
          assert.equal(got.length, want.length);
          assert.ok(got.equals(want), "the PIT is byte-identical to the device while frozen");
          const fsck = spawnSync("fsck.ext4", ["-n", "-f", out], { encoding: "utf8" });
          assert.equal(fsck.status, 0, fsck.stdout + fsck.stderr);
        } finally {
          await repo.close();
        }

        // Retention thins out scheduled PITs and keeps the one taken on demand. Three scheduled PITs
        // within seconds: at least two share a ten-minute bucket, so at least one is forgotten.
        const scheduled = [];
        for (let i = 0; i < 3; i++) scheduled.push(await rep.requestPoint({ origin: "scheduled" }));
        const catalogIds = async () =>
          (await site.api<{ pits: { id: string }[] }>(`/api/v1/pits?server=${who.serverId}`)).pits
            .map((p) => p.id)
            .sort();
        let left: string[] = [];
        await until(
          "retention",
          async () => {
            const repo2 = await site.openRepo();
            try {
              left = (await listPits(repo2, { server: who.serverName })).map((p) => p.id).sort();
            } finally {
              await repo2.close();
            }
            return left.length <= 3 && JSON.stringify(await catalogIds()) === JSON.stringify(left);
          },
          60_000,
        );
        assert.ok(left.includes(point.pitId), "the PIT taken on demand is kept");
        assert.ok(left.includes(scheduled[2]!.pitId!), "the newest scheduled PIT is kept");
        assert.ok(
          scheduled.some((p) => !left.includes(p.pitId!)),
          "a scheduled PIT was thinned out",
        );
      } finally {
        workload.kill("SIGKILL");
        await stopped;
        await rep.stop();
      }
    },
  );
});
