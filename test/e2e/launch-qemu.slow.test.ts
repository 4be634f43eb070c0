/**
 * A drill to the qemu target, end to end: a recovered-style disk (MBR, ext4
 * root whose init prints its hostname on the serial console) imported as a
 * server's PIT, launched through the API with the launch settings of the
 * qemu target (TCG, direct kernel boot), prepared as a launched copy (the
 * drill hostname), booted, and seen to print the drill's hostname. Needs
 * qemu, a static busybox and Debian's kernel package (test/support/boot-kernel.ts).
 */
import assert from "node:assert/strict";
import { promises as fs } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { recordPit } from "../../src/control/catalog.js";
import { loadConfig } from "../../src/control/config.js";
import { openDatabase } from "../../src/control/db/index.js";
import { importDisks } from "../../src/store/index.js";
import { makeBootInitramfs, makeRecoveredDisk } from "../support/boot-disk.js";
import { debianKernel, staticBusybox } from "../support/boot-kernel.js";
import { missingCapabilities, strictCapabilities } from "../support/capabilities.js";
import { type Site, startSite } from "../support/lifeboat-site.js";

interface JobView {
  id: string;
  state: string;
  result: Record<string, unknown> | null;
}

void describe("drill to the qemu target", () => {
  let work = "";
  let site: Site | undefined;
  let why = "";

  before(async () => {
    work = await fs.mkdtemp(path.join(os.tmpdir(), "lifeboat-launch-qemu-"));
    const missing = missingCapabilities("qemu", "root", "loop");
    const kernel = missing ? missing : await debianKernel();
    if (typeof kernel === "string") return void (why = kernel);
    const busybox = await staticBusybox();
    const initrd = await makeBootInitramfs(work, kernel, busybox);
    const disk = await makeRecoveredDisk(work, busybox, { message: "LIFEBOAT-BOOTED", hostname: "web-1" });
    site = await startSite(work);
    const who = await site.register("web-1");
    const repo = await site.openRepo();
    const database = await openDatabase(
      (await loadConfig(path.join(site.dataDir, "config.json"))).databaseUrl,
    );
    try {
      const { pit } = await importDisks(repo, { server: who.serverName, disks: [disk.path] });
      await recordPit(database, repo.config.id, who.serverId, pit);
    } finally {
      await database.close();
      await repo.close();
    }
    await site.api("/api/v1/servers/web-1/settings/launch", {
      method: "PUT",
      body: {
        target: "qemu",
        qemuAccel: "tcg",
        qemuMemoryMiB: 256,
        qemuKernel: kernel.vmlinuz,
        qemuInitrd: initrd,
        qemuAppend: "console=ttyS0 quiet panic=-1 root=/dev/vda1",
        successPattern: "^LIFEBOAT-BOOTED web-1-drill$",
        bootTimeoutSeconds: 180,
      },
    });
  });
  after(async () => {
    await site?.close();
    await fs.rm(work, { recursive: true, force: true });
  });

  void it("boots the launched copy under TCG and sees it come up under the drill's hostname", async (t) => {
    if (!site) {
      if (strictCapabilities) throw new Error(`LIFEBOAT_TEST_STRICT=1 and no bootable guest: ${why}`);
      return t.skip(why);
    }
    // No boot loader or kernel on this disk (direct kernel boot): not ready, so it takes --force.
    const refused = await site.api<{ job: JobView }>("/api/v1/launches", {
      method: "POST",
      body: { servers: ["web-1"] },
    });
    const r1 = await waitJob(site, refused.job.id);
    assert.equal(r1.state, "failed");
    assert.equal((r1.result as { error: { code: string } }).error.code, "LAUNCH_NOT_READY");

    const { job } = await site.api<{ job: JobView }>("/api/v1/launches", {
      method: "POST",
      body: { servers: ["web-1"], force: true },
    });
    const done = await waitJob(site, job.id);
    assert.equal(done.state, "succeeded", JSON.stringify(done.result));
    const dir = path.join(site.dataDir, "launches", "web-1", job.id);
    assert.match(await fs.readFile(path.join(dir, "serial.log"), "utf8"), /^LIFEBOAT-BOOTED web-1-drill$/m);
    const report = JSON.parse(await fs.readFile(path.join(dir, "report.json"), "utf8")) as {
      target: string;
      recoverySeconds: number;
      checks: { name: string; ok: boolean }[];
      changes: string[];
    };
    assert.equal(report.target, "qemu");
    assert.ok(report.recoverySeconds > 0);
    assert.ok(report.checks.some((c) => /booted/.test(c.name) && c.ok));
    assert.ok(
      report.changes.some((c) => /hostname/.test(c)),
      JSON.stringify(report.changes),
    );
  });
});

async function waitJob(site: Site, id: string): Promise<JobView> {
  for (let i = 0; i < 2400; i++) {
    const { job } = await site.api<{ job: JobView }>(`/api/v1/jobs/${id}`);
    if (["succeeded", "failed", "terminated"].includes(job.state)) return job;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`job ${id} did not finish`);
}
