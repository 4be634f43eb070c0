/**
 * The operator's path end to end, every step a `lifeboat` command: install
 * the agent against a running server with an install token, run it as a
 * service on an ext4 loop device under a live workload, watch `agent
 * status`, take a PIT on demand with `pits create`, and check the PIT
 * (exported, fsck). Then kill -9 the agent, write while it is down, start it
 * again: a rescan sends only what changed and it returns to CONTINUOUS.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import type { AgentStatus } from "../../src/agent/index.js";
import { exportDisk, listPits } from "../../src/store/index.js";
import { requireCapability } from "../support/capabilities.js";
import { lifeboat, lifeboatService } from "../support/cli.js";
import { type Site, startSite } from "../support/lifeboat-site.js";
import { loopDiskForTest } from "../support/loop-disk.js";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

void describe("agent from the command line", () => {
  let tmp = "";
  let site: Site;
  before(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), "lifeboat-agent-cli-"));
    site = await startSite(tmp);
  });
  after(async () => {
    await site?.close();
    await rm(tmp, { recursive: true, force: true });
  });

  void it("install, run, status, pits create, kill -9 and resume", { timeout: 300_000 }, async (t) => {
    if (!requireCapability(t, "root", "loop", "tracefs", "fsfreeze")) return;
    const disk = await loopDiskForTest(t, { sizeMiB: 128 });
    const mp = disk.mountPoint!;
    spawnSync("sh", ["-c", `head -c 24M /dev/urandom > ${mp}/base && sync`]);
    const caFile = path.join(tmp, "ca.pem");
    await writeFile(caFile, site.caPem);
    const keyFile = path.join(tmp, "admin.key");
    await writeFile(keyFile, site.adminKey, { mode: 0o600 });
    const tokenFile = path.join(tmp, "token");
    const token = await site.api<{ token: string }>("/api/v1/tokens", {
      method: "POST",
      body: { role: "agent", uses: 1 },
    });
    await writeFile(tokenFile, token.token, { mode: 0o600 });
    const configDir = path.join(tmp, "agent");
    const client = ["--endpoint", site.url, "--ca-file", caFile];

    const install = await lifeboat([
      "agent",
      "install",
      ...client,
      "--token-file",
      tokenFile,
      "--devices",
      disk.device,
      "--config-dir",
      configDir,
      "--no-prompt",
      "--json",
    ]);
    assert.equal(install.code, 0, install.stderr);
    const installed = JSON.parse(install.stdout) as { serverId: string; serverName: string };

    const status = async (): Promise<AgentStatus & { configDir: string }> => {
      const r = await lifeboat(["agent", "status", "--config-dir", configDir, "--json"]);
      assert.equal(r.code, 0, r.stderr);
      return JSON.parse(r.stdout) as AgentStatus & { configDir: string };
    };
    const until = async (what: string, fn: (s: AgentStatus) => boolean, ms = 90_000) => {
      const end = Date.now() + ms;
      for (;;) {
        const s = await status();
        if (fn(s)) return s;
        if (Date.now() > end) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(s)}`);
        await sleep(250);
      }
    };
    const startAgent = () => lifeboatService(["agent", "run", "--config-dir", configDir]);

    let agent = startAgent();
    const workload = spawn(
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
    const stopped = new Promise((r) => workload.on("exit", r));
    try {
      const s1 = await until("CONTINUOUS", (s) => s.state === "CONTINUOUS");
      assert.equal(s1.tracker, "trace");
      assert.equal(s1.disks.length, 1);
      assert.ok(s1.connected);

      // A PIT on demand, from the operator's side.
      const pit = await lifeboat([
        "pits",
        "create",
        installed.serverName,
        ...client,
        "--api-key-file",
        keyFile,
        "--json",
        "--timeout",
        "2m",
      ]);
      assert.equal(pit.code, 0, pit.stderr + agent.log());
      const made = JSON.parse(pit.stdout) as {
        id: string;
        seq: number;
        takenAt: unknown;
        consistency: string;
        disks: unknown[];
      };
      assert.equal(made.consistency, "filesystem");
      assert.equal(made.disks.length, 1);
      assert.ok(made.id);
      const repo = await site.openRepo();
      try {
        const found = (await listPits(repo, { server: installed.serverName })).find((p) => p.id === made.id);
        assert.ok(found, "the PIT is in the repository");
        const out = path.join(tmp, "pit1.img");
        await exportDisk(repo, found, 0, out);
        const fsck = spawnSync("fsck.ext4", ["-n", "-f", out], { encoding: "utf8" });
        assert.equal(fsck.status, 0, fsck.stdout + fsck.stderr);
      } finally {
        await repo.close();
      }

      // kill -9, then 4 MiB written while the agent is down.
      agent.child.kill("SIGKILL");
      await agent.exited;
      spawnSync("sh", [
        "-c",
        `dd if=/dev/urandom of=${mp}/base bs=1M count=4 seek=8 conv=notrunc,fsync status=none`,
      ]);
      agent = startAgent();
      const s2 = await until(
        "rescan and CONTINUOUS",
        (s) => s.state === "CONTINUOUS" && s.counters.rescans >= 1 && s.pid === agent.child.pid,
      );
      // The rescan read the disk but sent only the changes (plus a reference per block already held).
      const blocks = disk.sizeBytes / 65536;
      assert.ok(
        s2.counters.bytesSent < 12 * 1024 * 1024 + blocks * 64,
        `after the restart the agent sent ${s2.counters.bytesSent} bytes`,
      );
      assert.ok(
        s2.counters.bytesRead >= disk.sizeBytes,
        `the rescan read the whole disk: ${JSON.stringify(s2)}`,
      );

      const pit2 = await lifeboat([
        "pits",
        "create",
        installed.serverName,
        ...client,
        "--api-key-file",
        keyFile,
        "--json",
        "--timeout",
        "2m",
      ]);
      assert.equal(pit2.code, 0, pit2.stderr + agent.log());
      assert.equal((JSON.parse(pit2.stdout) as { consistency: string }).consistency, "filesystem");
    } finally {
      workload.kill("SIGKILL");
      await stopped;
      agent.child.kill("SIGTERM");
      await agent.exited;
    }
    const final = await status();
    assert.equal(final.state, "STOPPED");
  });
});
