/**
 * Disks added and removed while the agent runs (agent/disk-changes.ts),
 * on loop devices against a real site:
 *
 *  - `agent disks add` of a second disk: it is synced alone (the first is
 *    neither rescanned nor sent again), the next PIT holds both, byte for
 *    byte as they were while frozen; `agent disks remove` of the first: the
 *    next PIT holds only the second, and the earlier PIT still exports the
 *    first, after garbage collection too;
 *  - "all disks" mode: a new disk is found and replicated; `losetup -d` of
 *    it makes it MISSING (the other disk goes on replicating), and after the
 *    grace period it is retired.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { type TestContext, after, before, describe, it } from "node:test";
import {
  type AgentStatus,
  DiskReader,
  discoverBlockDevices,
  loadAgentConfig,
  saveAgentConfig,
} from "../../src/agent/index.js";
import { AgentService } from "../../src/agent/service.js";
import { createLogger } from "../../src/base/index.js";
import { type Pit, collectGarbage, exportDisk, listPits } from "../../src/store/index.js";
import { requireCapability } from "../support/capabilities.js";
import { lifeboat } from "../support/cli.js";
import { type Site, startSite } from "../support/lifeboat-site.js";
import { loopDiskForTest } from "../support/loop-disk.js";
import { until } from "../support/pit-check.js";
import { installTestAgent } from "../support/site-actions.js";

const MiB = 1 << 20;

async function readDevice(device: string): Promise<Buffer> {
  const r = await DiskReader.open(device);
  try {
    return await r.read(0, r.size);
  } finally {
    await r.close();
  }
}

void describe("disks added and removed while the agent runs", () => {
  let tmp = "";
  let site: Site;
  before(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), "lifeboat-disks-e2e-"));
    site = await startSite(tmp);
  });
  after(async () => {
    await site?.close();
    await rm(tmp, { recursive: true, force: true });
  });

  /**
   * Starts an agent that snapshots `tracked` devices while frozen and answers
   * SIGUSR2 like `agent run`. The test stops it (before its loop disks go).
   */
  async function startAgent(
    t: TestContext,
    configDir: string,
    tracked: string[],
    extra: Partial<Parameters<typeof AgentService.start>[0]> = {},
  ) {
    const frozen = new Map<string, Buffer>();
    const svc = await AgentService.start({
      configDir,
      logger: createLogger(process.env.LIFEBOAT_TEST_LOG ?? "silent", "agent"),
      whileFrozen: async () => {
        for (const d of tracked) frozen.set(d, await readDevice(d));
      },
      ...extra,
    });
    const onUsr2 = () => svc.checkDisks();
    process.on("SIGUSR2", onUsr2);
    const stop = async () => {
      process.off("SIGUSR2", onUsr2);
      await svc.stop();
    };
    t.after(stop);
    const status = (): AgentStatus | undefined => svc.status();
    return { svc, frozen, status, stop };
  }

  const pitOf = async (serverName: string, id: string | undefined) => {
    const repo = await site.openRepo();
    try {
      const pit = (await listPits(repo, { server: serverName })).find((p) => p.id === id);
      assert.ok(pit, `PIT ${id}`);
      return pit;
    } finally {
      await repo.close();
    }
  };
  const exported = async (pit: Pit, disk: number) => {
    const repo = await site.openRepo();
    const out = path.join(tmp, `out-${pit.id}-${disk}.img`);
    try {
      await exportDisk(repo, pit, disk, out);
      return await readFile(out);
    } finally {
      await repo.close();
      await rm(out, { force: true });
    }
  };

  void it(
    "agent disks add syncs only the new disk; remove leaves it in earlier PITs only",
    { timeout: 120_000 },
    async (t) => {
      if (!requireCapability(t, "root", "loop", "tracefs", "fsfreeze")) return;
      const a = await loopDiskForTest(t, { sizeMiB: 48 });
      spawnSync("sh", ["-c", `head -c 20M /dev/urandom > ${a.mountPoint}/base && sync`]);
      const agent = await installTestAgent(site, { dir: tmp, name: "disks1", device: a.device });
      const config = await loadAgentConfig(agent.configDir);
      await saveAgentConfig(agent.configDir, {
        ...config,
        settings: { ...config.settings, diskCheckSeconds: 0.5 },
      });
      const tracked = [a.device];
      const { svc, frozen, status, stop } = await startAgent(t, agent.configDir, tracked);
      try {
        const continuous = (indexes: number[]) => () => {
          const s = status();
          return (
            s?.state === "CONTINUOUS" &&
            JSON.stringify(s.disks.map((d) => [d.index, d.state])) ===
              JSON.stringify(indexes.map((i) => [i, "CONTINUOUS"]))
          );
        };
        await until("disk 0 synced", continuous([0]), 60_000, status);

        const b = await loopDiskForTest(t, { sizeMiB: 48 });
        spawnSync("sh", ["-c", `head -c 12M /dev/urandom > ${b.mountPoint}/data && sync`]);
        const sentBefore = svc.replication.counters.bytesSent;
        const rescansBefore = svc.replication.counters.rescans;
        const add = await lifeboat([
          "agent",
          "disks",
          "add",
          b.device,
          "--config-dir",
          agent.configDir,
          "--json",
        ]);
        assert.equal(add.code, 0, add.stderr);
        const added = JSON.parse(add.stdout) as { added: { index: number }[]; running: boolean };
        assert.equal(added.added[0]!.index, 1);
        assert.equal(added.running, true, "the running agent was told");
        tracked.push(b.device);
        await until("disk 1 synced", continuous([0, 1]), 60_000, status);
        // Only the new disk went over the wire: its 12 MiB of random data and some metadata,
        // not the 20 MiB of disk 0 again.
        const sent = svc.replication.counters.bytesSent - sentBefore;
        t.diagnostic(`sent ${sent} bytes for the new disk (12 MiB of data on it, 20 MiB on the other)`);
        assert.ok(sent > 11 * MiB && sent < 18 * MiB, `sent ${sent} bytes for the new disk`);
        assert.equal(svc.replication.counters.rescans, rescansBefore, "disk 0 was not rescanned");

        spawnSync("sh", ["-c", `head -c 1M /dev/urandom > ${a.mountPoint}/more && sync`]);
        const p2 = await svc.replication.requestPoint();
        assert.equal(p2.consistency, "filesystem");
        const pit2 = await pitOf(agent.serverName, p2.pitId);
        assert.deepEqual(
          pit2.disks.map((d) => d.index),
          [0, 1],
        );
        const atP2 = new Map(frozen);
        assert.ok((await exported(pit2, 0)).equals(atP2.get(a.device)!), "disk 0 at the PIT");
        assert.ok((await exported(pit2, 1)).equals(atP2.get(b.device)!), "disk 1 at the PIT");

        const remove = await lifeboat([
          "agent",
          "disks",
          "remove",
          a.device,
          "--config-dir",
          agent.configDir,
        ]);
        assert.equal(remove.code, 0, remove.stderr);
        tracked.splice(0, 1);
        await until("disk 0 let go", continuous([1]), 30_000, status);
        spawnSync("sh", ["-c", `head -c 1M /dev/urandom > ${b.mountPoint}/more && sync`]);
        const p3 = await svc.replication.requestPoint();
        const pit3 = await pitOf(agent.serverName, p3.pitId);
        assert.deepEqual(
          pit3.disks.map((d) => d.index),
          [1],
        );
        assert.ok((await exported(pit3, 1)).equals(frozen.get(b.device)!), "disk 1 at the later PIT");

        // The earlier PIT keeps the removed disk, through garbage collection.
        const repo = await site.openRepo();
        try {
          await collectGarbage(repo, { safetyMarginMs: 0 });
          await collectGarbage(repo, { safetyMarginMs: 0 });
        } finally {
          await repo.close();
        }
        assert.ok((await exported(pit2, 0)).equals(atP2.get(a.device)!), "disk 0 in the earlier PIT");

        // The control plane's inventory follows (a heartbeat goes at once).
        let shown: unknown;
        await until(
          "the inventory shows disk 1 only",
          async () => {
            const s = await site.api<{ inventory: { disks?: { index: number }[] } | null }>(
              `/api/v1/servers/${agent.serverId}`,
            );
            shown = s.inventory?.disks?.map((d) => d.index);
            return JSON.stringify(shown) === "[1]";
          },
          15_000,
          () => shown,
        );
      } finally {
        await stop();
      }
    },
  );

  void it(
    "all-disks mode adds a new disk; a detached one is MISSING, then retired, the other replicates on",
    { timeout: 120_000 },
    async (t) => {
      if (!requireCapability(t, "root", "loop", "tracefs", "fsfreeze")) return;
      const b = await loopDiskForTest(t, { sizeMiB: 32 });
      const a = await loopDiskForTest(t, { sizeMiB: 16, ext4: false });
      spawnSync("dd", [
        "if=/dev/urandom",
        `of=${a.device}`,
        "bs=1M",
        "count=4",
        "oflag=direct",
        "status=none",
      ]);
      const agent = await installTestAgent(site, { dir: tmp, name: "disks2", device: b.device });
      const config = await loadAgentConfig(agent.configDir);
      await saveAgentConfig(agent.configDir, {
        ...config,
        diskSelection: "all",
        settings: { ...config.settings, diskCheckSeconds: 0.5, missingDiskGraceSeconds: 3 },
      });
      // The machine's other disks are not this test's: "all" means these two, seen as disks.
      let detached = false;
      const ours = () => (detached ? [b.device] : [a.device, b.device]);
      const discoverDisks = async () =>
        (await discoverBlockDevices())
          .filter((d) => ours().includes(d.path))
          .map((d) => ({ ...d, kind: "disk" as const }));
      const tracked = [b.device];
      const { svc, frozen, status, stop } = await startAgent(t, agent.configDir, tracked, { discoverDisks });
      try {
        const states = () => JSON.stringify(status()?.disks.map((d) => [d.index, d.state]));

        await until(
          "the new disk is found and synced",
          () => status()?.state === "CONTINUOUS" && states() === '[[0,"CONTINUOUS"],[1,"CONTINUOUS"]]',
          60_000,
          states,
        );
        const found = await loadAgentConfig(agent.configDir);
        assert.deepEqual(
          found.disks.map((d) => [d.index, d.path]),
          [
            [0, b.device],
            [1, a.device],
          ],
        );

        detached = true;
        const losetup = spawnSync("losetup", ["-d", a.device], { encoding: "utf8" });
        assert.equal(losetup.status, 0, losetup.stderr);
        await until(
          "disk 1 is missing",
          () => states() === '[[0,"CONTINUOUS"],[1,"MISSING"]]',
          20_000,
          states,
        );
        const missing = status()!.disks.find((d) => d.index === 1)!;
        assert.ok(missing.missingSince! > 0);
        assert.match(missing.missingReason!, /detach|size 0|does not exist/);

        // Disk 0 goes on: a PIT holds it alone, as it was while frozen.
        spawnSync("sh", ["-c", `head -c 2M /dev/urandom > ${b.mountPoint}/after && sync`]);
        const p = await svc.replication.requestPoint();
        const pit = await pitOf(agent.serverName, p.pitId);
        assert.deepEqual(
          pit.disks.map((d) => d.index),
          [0],
        );
        assert.ok((await exported(pit, 0)).equals(frozen.get(b.device)!), "disk 0 at the PIT");

        await until("disk 1 is retired", () => states() === '[[0,"CONTINUOUS"]]', 20_000, states);
        const after = await loadAgentConfig(agent.configDir);
        assert.deepEqual(
          after.disks.map((d) => d.index),
          [0],
        );
        assert.deepEqual(
          after.retiredDisks.map((d) => [d.index, d.path, d.reason]),
          [[1, a.device, "missing"]],
        );
      } finally {
        await stop();
      }
    },
  );
});
