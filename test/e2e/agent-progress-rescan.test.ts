/**
 * A real `agent run` (an image file in scan mode) reports its initial sync
 * live: its status (what `agent status --json` shows) has progress growing toward the disk's size
 * with a rate and an ETA. Then `agent rescan` puts it in RESCAN and back to
 * CONTINUOUS, sending only what changed, not the disk again. A bandwidth
 * cap from the replication settings keeps both passes long enough to watch.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtemp, open, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { agentPaths, readAgentStatus, type AgentStatus } from "../../src/agent/index.js";
import { lifeboat, lifeboatService } from "../support/cli.js";
import { type Site, startSite } from "../support/lifeboat-site.js";
import { sleep } from "../support/pit-check.js";

const MiB = 1 << 20;
const DISK_MIB = 32;
const CHANGED_MIB = 12;

void describe("agent progress and rescan", () => {
  let tmp = "";
  let site: Site;
  before(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), "lifeboat-agent-progress-"));
    site = await startSite(tmp);
  });
  after(async () => {
    await site?.close();
    await rm(tmp, { recursive: true, force: true });
  });

  void it(
    "reports initial-sync progress and ETA, then RESCAN without a resend",
    { timeout: 180_000 },
    async (t) => {
      const image = path.join(tmp, "disk.img");
      await writeFile(image, randomBytes(DISK_MIB * MiB));
      const caFile = path.join(tmp, "ca.pem");
      await writeFile(caFile, site.caPem);
      const tokenFile = path.join(tmp, "token");
      const token = await site.api<{ token: string }>("/api/v1/tokens", {
        method: "POST",
        body: { role: "agent", uses: 1 },
      });
      await writeFile(tokenFile, token.token, { mode: 0o600 });
      const configDir = path.join(tmp, "agent");
      const install = await lifeboat([
        "agent",
        "install",
        "--endpoint",
        site.url,
        "--ca-file",
        caFile,
        "--token-file",
        tokenFile,
        "--disk-image",
        image,
        "--config-dir",
        configDir,
        "--no-prompt",
        "--json",
      ]);
      assert.equal(install.code, 0, install.stderr);
      const { serverId } = JSON.parse(install.stdout) as { serverId: string };
      // 3 MB/s: the initial sync takes some 10 s, a rescan of the changes a few. In config.json
      // (the installation's default, in force from the start) and in the server's settings (which
      // the agent polls and which override it).
      const configFile = path.join(configDir, "config.json");
      const config = JSON.parse(await readFile(configFile, "utf8")) as {
        settings: { bandwidthMbps: number };
      };
      config.settings.bandwidthMbps = 24;
      await writeFile(configFile, JSON.stringify(config), { mode: 0o600 });
      await site.api(`/api/v1/servers/${serverId}/settings/replication`, {
        method: "PUT",
        body: { bandwidthMbps: 24 },
      });

      const statusFile = agentPaths(configDir).status;
      const cli = async (): Promise<AgentStatus> => {
        const r = await lifeboat(["agent", "status", "--config-dir", configDir, "--json"]);
        assert.equal(r.code, 0, r.stderr);
        return JSON.parse(r.stdout) as AgentStatus;
      };
      const agent = lifeboatService(["agent", "run", "--config-dir", configDir]);
      t.after(async () => {
        agent.child.kill("SIGTERM");
        await agent.exited;
      });
      /** Every status this agent wrote, as the test saw them. */
      const all: AgentStatus[] = [];
      /** Status file samples of this agent until `done` holds. */
      const watch = async (what: string, done: (s: AgentStatus) => boolean, ms: number) => {
        const seen: AgentStatus[] = [];
        const end = Date.now() + ms;
        for (;;) {
          const s = await readAgentStatus(statusFile);
          if (s && s.pid === agent.child.pid && s.updatedAt !== all.at(-1)?.updatedAt) {
            seen.push(s);
            all.push(s);
          }
          if (s && s.pid === agent.child.pid && done(s)) return seen;
          if (Date.now() > end)
            throw new Error(`timed out waiting for ${what}: ${JSON.stringify(s)}\n${agent.log()}`);
          await sleep(100);
        }
      };

      // Initial sync: progress in the status file that `agent status` reads.
      await watch("the initial sync", (s) => (s.disks[0]?.progress?.doneBytes ?? 0) > 0, 60_000);
      await watch("CONTINUOUS", (s) => s.state === "CONTINUOUS", 90_000);
      const progress = all.map((s) => s.disks[0]?.progress).filter((x) => x !== undefined);
      t.diagnostic(`initial sync progress: ${JSON.stringify(progress)}`);
      assert.ok(progress.length >= 2, `progress seen ${progress.length} times`);
      for (const x of progress) assert.equal(x.totalBytes, DISK_MIB * MiB);
      for (let i = 1; i < progress.length; i++)
        assert.ok(progress[i]!.doneBytes >= progress[i - 1]!.doneBytes, "doneBytes never goes back");
      assert.ok(progress.at(-1)!.doneBytes > progress[0]!.doneBytes, "doneBytes grows");
      const rated = progress.filter((x) => x.bytesPerSecond > 0 && typeof x.etaSeconds === "number");
      assert.ok(rated.length >= 1, "a rate and an ETA are reported");
      const synced = await cli();
      assert.equal(synced.state, "CONTINUOUS");
      assert.equal(synced.disks[0]?.progress, undefined, "no progress outside a pass");
      const full = synced.counters.bytesSent;
      assert.ok(full >= DISK_MIB * MiB * 0.9, `the initial sync sent ${full} bytes`);

      // Change 12 MiB of the image, then ask for a rescan.
      const f = await open(image, "r+");
      try {
        await f.write(randomBytes(CHANGED_MIB * MiB), 0, CHANGED_MIB * MiB, 8 * MiB);
      } finally {
        await f.close();
      }
      const rescan = await lifeboat(["agent", "rescan", "--config-dir", configDir, "--json"]);
      assert.equal(rescan.code, 0, rescan.stderr);
      assert.equal((JSON.parse(rescan.stdout) as { delivered: boolean }).delivered, true);
      const rescanned = await watch("RESCAN", (s) => s.state === "RESCAN", 30_000);
      t.diagnostic(`RESCAN after ${rescanned.length} status writes`);
      await watch(
        "CONTINUOUS after the rescan",
        (s) => s.state === "CONTINUOUS" && s.counters.rescans >= 1,
        60_000,
      );
      const end = await cli();
      assert.equal(end.state, "CONTINUOUS");
      const resent = end.counters.bytesSent - full;
      t.diagnostic(`the rescan sent ${resent} bytes for ${CHANGED_MIB} MiB changed`);
      assert.ok(resent >= CHANGED_MIB * MiB * 0.9, `the changes were sent: ${resent}`);
      assert.ok(resent < (CHANGED_MIB + 1) * MiB, `only the changes were sent: ${resent}`);
      assert.ok(end.counters.bytesRead >= 2 * DISK_MIB * MiB, "the rescan read the whole disk");
    },
  );
});
