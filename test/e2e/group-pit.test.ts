/**
 * A group PIT of two servers: two agents (AgentService in process, each
 * installed into its own configuration directory against a running server)
 * replicate an ext4 loop device each under a live workload, are put in one
 * consistency group, and the operator asks for one PIT of the group. Both
 * PITs carry one takenAt, both filesystems were frozen at one time (each
 * agent's whileFrozen hook waits, while frozen, to see the other's begin),
 * and each PIT is the device as frozen and passes fsck.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it, type TestContext } from "node:test";
import { loadAgentConfig, saveAgentConfig } from "../../src/agent/config.js";
import { checkDisk, installAgent } from "../../src/agent/install.js";
import { AgentService } from "../../src/agent/service.js";
import { createLogger } from "../../src/base/index.js";
import { requireCapability } from "../support/capabilities.js";
import { type Site, startSite } from "../support/lifeboat-site.js";
import { type LoopDisk, loopDiskForTest } from "../support/loop-disk.js";
import { assertPitIsSnapshot, findPit, sleep, snapshotDevice, until } from "../support/pit-check.js";

interface GroupPit {
  id: string;
  group: string;
  state: string;
  takenAt: string | null;
  members: {
    serverId: string;
    state: string;
    result?: { pitId?: string; takenAt?: number | string; consistency?: string } | null;
    error?: unknown;
  }[];
}

interface Member {
  name: string;
  disk: LoopDisk;
  serverId: string;
  serverName: string;
  svc: AgentService;
  frozenImage: string;
  /** When its whileFrozen hook began and ended (ms). */
  frozen?: { start: number; end: number };
  workload: ChildProcess;
  stopped: Promise<unknown>;
}

void describe("group PIT of two agents", () => {
  let tmp = "";
  let site: Site;
  before(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), "lifeboat-group-pit-"));
    site = await startSite(tmp);
  });
  after(async () => {
    await site?.close();
    await rm(tmp, { recursive: true, force: true });
  });

  void it(
    "one takenAt, overlapping freezes, both PITs equal the frozen devices and pass fsck",
    { timeout: 300_000 },
    async (t) => {
      if (!requireCapability(t, "root", "loop", "tracefs", "fsfreeze")) return;
      const members: Member[] = [];
      t.after(async () => {
        for (const m of members) {
          m.workload.kill("SIGKILL");
          await m.stopped;
          await m.svc.stop();
        }
      });
      for (const name of ["grp-a", "grp-b"]) members.push(await startMember(t, name, members));
      const [a, b] = members as [Member, Member];

      await until(
        "both agents in CONTINUOUS",
        () => members.every((m) => m.svc.replication.status()?.state === "CONTINUOUS"),
        120_000,
      );
      for (const m of members)
        await site.api(`/api/v1/servers/${m.serverId}`, { method: "PATCH", body: { group: "g-faults" } });
      await sleep(1000);

      const asked = await site.api<{ groupPitId: string }>("/api/v1/groups/g-faults/pits", {
        method: "POST",
        // The default barrier (1.5 s from the first member's freeze) is tight for two agents
        // and a server sharing two test CPUs; what is tested is that they freeze together.
        body: { barrierTimeoutMs: 10_000 },
      });
      let g: GroupPit | undefined;
      await until(
        "the group PIT to be done",
        async () => {
          g = await site.api<GroupPit>(`/api/v1/group-pits/${asked.groupPitId}`);
          assert.ok(!["failed", "aborted"].includes(g.state), JSON.stringify(g));
          return g.state === "done";
        },
        120_000,
        () => g,
      );
      const done = g!;
      assert.ok(done.takenAt, "the group PIT has a takenAt");
      assert.equal(done.members.length, 2);

      // Both froze within one window: each hook waited, frozen, for the other's to begin.
      assert.ok(a.frozen && b.frozen, "both agents froze");
      const overlapStart = Math.max(a.frozen.start, b.frozen.start);
      const overlapEnd = Math.min(a.frozen.end, b.frozen.end);
      assert.ok(
        overlapStart < overlapEnd,
        `the freezes overlap: a ${JSON.stringify(a.frozen)}, b ${JSON.stringify(b.frozen)}`,
      );

      const takenAts = new Set<number>();
      for (const m of members) {
        const r = done.members.find((x) => x.serverId === m.serverId);
        assert.ok(r?.result?.pitId, `${m.name} reported its PIT: ${JSON.stringify(r)}`);
        assert.equal(r.result.consistency, "filesystem");
        const pit = await findPit(site, m.serverName, r.result.pitId);
        takenAts.add(pit.timeMs);
        const reported = r.result.takenAt;
        if (reported !== undefined)
          takenAts.add(typeof reported === "string" ? Date.parse(reported) : reported);
        await assertPitIsSnapshot(
          site,
          m.serverName,
          r.result.pitId,
          m.frozenImage,
          path.join(tmp, `${m.name}.img`),
        );
      }
      takenAts.add(Date.parse(done.takenAt));
      assert.equal(takenAts.size, 1, `one takenAt for the group: ${[...takenAts].join(",")}`);
    },
  );

  async function startMember(t: TestContext, name: string, all: Member[]): Promise<Member> {
    const disk = await loopDiskForTest(t, { sizeMiB: 96 });
    const mp = disk.mountPoint!;
    spawnSync("sh", ["-c", `head -c 16M /dev/urandom > ${mp}/base && sync`]);
    const token = await site.api<{ token: string }>("/api/v1/tokens", {
      method: "POST",
      body: { role: "agent", uses: 1 },
    });
    const configDir = path.join(tmp, `agent-${name}`);
    const installed = await installAgent({
      configDir,
      endpoint: site.url,
      token: token.token,
      caPem: site.caPem,
      hostname: name,
      blockSize: 64 * 1024,
      disks: [await checkDisk(disk.device, "device")],
      inventory: {},
    });
    // Room under the freeze cap for the hook's snapshot and wait; no scheduled PITs.
    const config = await loadAgentConfig(configDir);
    await saveAgentConfig(configDir, {
      ...config,
      settings: { ...config.settings, freezeCapMs: 15_000, pitIntervalSeconds: 0 },
    });
    const m = { name, disk, frozenImage: path.join(tmp, `${name}-frozen.img`) } as Member;
    m.serverId = installed.serverId;
    m.serverName = installed.serverName;
    m.svc = await AgentService.start({
      configDir,
      logger: createLogger(process.env.LIFEBOAT_TEST_LOG ?? "silent", name),
      whileFrozen: async () => {
        // Published at once, so that the other member's hook sees it.
        const frozen = { start: Date.now(), end: Number.POSITIVE_INFINITY };
        m.frozen = frozen;
        await snapshotDevice(disk.device, m.frozenImage);
        // Still frozen: wait (bounded, well under the freeze cap) for the other member's freeze to begin.
        const give = Date.now() + 3000;
        while (Date.now() < give && !all.some((o) => o !== m && o.frozen)) await sleep(20);
        frozen.end = Date.now();
      },
    });
    m.workload = spawn(
      "sh",
      [
        "-c",
        `i=0; while :; do i=$((i % 16 + 1));
         dd if=/dev/urandom of=${mp}/f$i bs=16k count=$((i % 4 + 1)) conv=fsync status=none;
         dd if=/dev/urandom of=${mp}/base bs=4k count=1 seek=$((i * 53)) conv=notrunc,fsync status=none;
         sleep 0.1;
       done`,
      ],
      { stdio: "ignore" },
    );
    m.stopped = new Promise((r) => m.workload.on("exit", r));
    return m;
  }
});
