/**
 * The bandwidth cap from the control plane's replication settings: a real
 * agent service (an image file in scan mode) against a real site ships at
 * most the cap while one is set, and removing the cap takes effect at the
 * next settings poll, without a restart.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { agentPaths, readAgentStatus, type AgentStatus } from "../../src/agent/index.js";
import { AgentService } from "../../src/agent/service.js";
import { checkDisk, installAgent } from "../../src/agent/install.js";
import { createLogger } from "../../src/base/index.js";
import { type Site, startSite } from "../support/lifeboat-site.js";
import { sleep, until } from "../support/pit-check.js";

const MiB = 1 << 20;
const DISK_MIB = 32;
const CAP_MBPS = 8; // 1 MB/s
const CAP_BYTES = (CAP_MBPS * 1_000_000) / 8;

void describe("bandwidth cap", () => {
  let tmp = "";
  let site: Site;
  before(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), "lifeboat-bandwidth-"));
    site = await startSite(tmp);
  });
  after(async () => {
    await site?.close();
    await rm(tmp, { recursive: true, force: true });
  });

  void it("caps what the agent ships, and a live change lifts it", { timeout: 120_000 }, async (t) => {
    const image = path.join(tmp, "disk.img");
    await writeFile(image, randomBytes(DISK_MIB * MiB));
    const token = await site.api<{ token: string }>("/api/v1/tokens", {
      method: "POST",
      body: { role: "agent", uses: 1 },
    });
    const configDir = path.join(tmp, "agent");
    const installed = await installAgent({
      configDir,
      endpoint: site.url,
      token: token.token,
      caPem: site.caPem,
      hostname: "bandwidth-1",
      blockSize: 65536,
      disks: [await checkDisk(image, "image")],
      inventory: {},
    });
    const setCap = (mbps: number | null) =>
      site.api(`/api/v1/servers/${installed.serverId}/settings/replication`, {
        method: "PUT",
        body: { bandwidthMbps: mbps },
      });
    await setCap(CAP_MBPS);

    const statusFile = agentPaths(configDir).status;
    let last: AgentStatus | null = null;
    const status = async (): Promise<AgentStatus> => {
      last = await readAgentStatus(statusFile);
      assert.ok(last);
      return last;
    };
    const svc = await AgentService.start({
      configDir,
      settingsIntervalMs: 200,
      statusIntervalMs: 200,
      logger: createLogger(process.env.LIFEBOAT_TEST_LOG ?? "silent", "agent"),
    });
    t.after(() => svc.stop());

    // Past the first second (its credit) of the initial sync: measure over several seconds.
    await until("the initial sync ships", async () => (await status()).counters.bytesSent > 2 * MiB, 30_000);
    const s0 = await status();
    await sleep(6000);
    const s1 = await status();
    assert.equal(s1.state, "INITIAL_SYNC", "still syncing under the cap");
    const seconds = (s1.updatedAt - s0.updatedAt) / 1000;
    const sent = s1.counters.bytesSent - s0.counters.bytesSent;
    t.diagnostic(`capped at ${CAP_BYTES} B/s: ${Math.round(sent / seconds)} B/s over ${seconds} s`);
    // At most the cap, plus one second of credit and one frame (64 blocks of 64 KiB) ahead.
    assert.ok(sent <= CAP_BYTES * seconds + CAP_BYTES + 4.2 * MiB, `sent ${sent} B in ${seconds} s`);
    assert.ok(sent >= CAP_BYTES * seconds * 0.4, `it still ships: ${sent} B in ${seconds} s`);

    // Lifting the cap: the rest (some 20 s at the cap) goes at once.
    const remaining = DISK_MIB * MiB - s1.counters.bytesSent;
    assert.ok(remaining / CAP_BYTES > 10, `${remaining} B left`);
    const lifted = Date.now();
    await setCap(null);
    await until(
      "the initial sync ends",
      async () => (await status()).state === "CONTINUOUS",
      ((remaining / CAP_BYTES) * 1000) / 2,
      () => last,
    );
    t.diagnostic(`${remaining} B after the cap was lifted in ${Date.now() - lifted} ms`);
  });
});
