/**
 * A cut link between agent and replicator under a live workload: while the
 * link is down the agent says so (not connected, lag and backlog growing;
 * BACKLOG or STALLED on a long cut); once it is back the backlog drains
 * without a full resync, and the next PIT is the device as it was frozen.
 * The link runs through a TCP proxy that drops connections (short cut) or
 * swallows every byte (long cut: only heartbeats and timeouts notice).
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import type { AgentState } from "../../src/agent/index.js";
import { Replication } from "../../src/agent/replication.js";
import { createLogger } from "../../src/base/index.js";
import { connectWire } from "../../src/wire/index.js";
import { requireCapability } from "../support/capabilities.js";
import { type CutMode, startFaultProxy } from "../support/fault-proxy.js";
import { type Site, startSite } from "../support/lifeboat-site.js";
import { loopDiskForTest } from "../support/loop-disk.js";
import { assertPitIsSnapshot, sleep, snapshotDevice, until } from "../support/pit-check.js";

const settings = {
  pitIntervalSeconds: 0,
  // The test reads the whole device while frozen (its reference image): room for a loaded machine.
  freezeCapMs: 15_000,
  lagThresholdSeconds: 5,
  stallSeconds: 20,
  bandwidthMbps: 0,
  tracker: "trace" as const,
};

/** Files rewritten and deleted, scattered overwrites; no fstrim (a discard of all free space would dwarf the rest). */
function startWorkload(mp: string): { child: ChildProcess; stopped: Promise<unknown> } {
  const child = spawn(
    "sh",
    [
      "-c",
      `i=0; while :; do i=$((i % 24 + 1));
       dd if=/dev/urandom of=${mp}/f$i bs=16k count=$((i % 5 + 1)) conv=fsync status=none;
       dd if=/dev/urandom of=${mp}/base bs=4k count=1 seek=$((i * 37)) conv=notrunc,fsync status=none;
       [ $((i % 6)) -eq 0 ] && rm -f ${mp}/f$(((i + 12) % 24 + 1));
       sleep 0.05;
     done`,
    ],
    { stdio: "ignore" },
  );
  return { child, stopped: new Promise((r) => child.on("exit", r)) };
}

void describe("link cut between agent and replicator", () => {
  let tmp = "";
  let site: Site;
  before(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), "lifeboat-link-cut-"));
    site = await startSite(tmp);
  });
  after(async () => {
    await site?.close();
    await rm(tmp, { recursive: true, force: true });
  });

  void it(
    "10 s and 2 min cuts: reported while down, drained after, no resync, PIT equals the frozen device",
    { timeout: 600_000 },
    async (t) => {
      if (!requireCapability(t, "root", "loop", "tracefs", "fsfreeze")) return;
      const disk = await loopDiskForTest(t, { sizeMiB: 128 });
      const mp = disk.mountPoint!;
      spawnSync("sh", ["-c", `head -c 40M /dev/urandom > ${mp}/base && sync`]);
      const who = await site.register("link-cut-1");
      const proxy = await startFaultProxy({ host: "127.0.0.1", port: site.port });
      t.after(() => proxy.close());
      const frozenImage = path.join(tmp, "frozen.img");
      const rep = new Replication({
        serverId: who.serverId,
        hostname: "link-cut-1",
        version: "test",
        disks: [{ index: 0, path: disk.device, kind: "device", id: "loop-link-cut" }],
        blockSize: 64 * 1024,
        settings,
        // The server's certificate names 127.0.0.1, which is where the proxy listens too.
        connect: () =>
          connectWire({
            host: "127.0.0.1",
            port: proxy.port,
            caPem: site.caPem,
            certPem: who.certPem,
            keyPem: who.keyPem,
          }),
        logger: createLogger(process.env.LIFEBOAT_TEST_LOG ?? "silent", "agent"),
        whileFrozen: () => snapshotDevice(disk.device, frozenImage),
      });
      await rep.start();
      const workload = startWorkload(mp);
      try {
        await until("initial sync", () => rep.status()?.state === "CONTINUOUS", 120_000);
        await sleep(2000);

        const cut = async (ms: number, mode: CutMode): Promise<void> => {
          const before = rep.status()!;
          assert.equal(before.connected, true);
          const rescans = rep.counters.rescans;
          const read0 = rep.counters.bytesRead;
          const sent0 = rep.counters.bytesSent;
          const seen = new Set<AgentState>();
          proxy.cut(mode);
          const cutAt = Date.now();
          let first: { lag: number; backlog: number } | undefined;
          let last = before;
          while (Date.now() - cutAt < ms) {
            await sleep(500);
            const s = rep.status();
            if (!s) continue; // frozen: nothing here freezes, but status() may say so
            seen.add(s.state);
            last = s;
            first ??= { lag: s.lagSeconds, backlog: s.backlogBytes };
          }
          assert.equal(last.connected, false, `not connected after a ${ms / 1000} s cut`);
          assert.ok(first, "status while cut");
          assert.ok(
            last.lagSeconds >= (ms / 1000) * 0.6 && last.lagSeconds > first.lag,
            `lag grows while cut: ${first.lag} s then ${last.lagSeconds} s`,
          );
          assert.ok(
            last.backlogBytes > first.backlog,
            `backlog grows while cut: ${first.backlog} then ${last.backlogBytes} bytes`,
          );
          if (ms >= 60_000)
            assert.ok(
              seen.has("BACKLOG") || seen.has("STALLED"),
              `BACKLOG or STALLED during a long cut; saw ${[...seen].join(",")}`,
            );
          assert.ok(!seen.has("RESCAN"), `no rescan while cut; saw ${[...seen].join(",")}`);

          proxy.restore();
          await until(
            "the backlog to drain after the cut",
            () => {
              const s = rep.status();
              return !!s && s.connected && s.backlogBytes < 4 << 20 && s.lagSeconds < 5;
            },
            120_000,
            () => rep.status(),
          );
          assert.equal(rep.counters.rescans, rescans, "no rescan after the cut");
          const read = rep.counters.bytesRead - read0;
          const sent = rep.counters.bytesSent - sent0;
          // No rescan is the guard against a full pass (above); reads follow the writes made meanwhile
          // (a whole block per small write), so they only get a loose bound.
          assert.ok(read < 4 * disk.sizeBytes, `read ${read} bytes`);
          // Sent bytes follow the writes made while cut (their rate depends on the machine).
          assert.ok(sent < disk.sizeBytes, `sent ${sent} bytes`);
          const s = rep.status()!;
          assert.equal(s.state, "CONTINUOUS", JSON.stringify(s));

          const point = await rep.requestPoint();
          assert.equal(point.consistency, "filesystem");
          assert.ok(point.pitId, "the replicator named the PIT");
          await assertPitIsSnapshot(
            site,
            who.serverName,
            point.pitId,
            frozenImage,
            path.join(tmp, "pit.img"),
          );
          assert.equal(rep.counters.rescans, rescans, "no rescan up to the PIT");
        };

        await cut(10_000, "drop");
        await cut(120_000, "blackhole");
      } finally {
        workload.child.kill("SIGKILL");
        await workload.stopped;
        await rep.stop();
      }
    },
  );
});
