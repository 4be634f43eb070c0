/**
 * Readiness before disaster, end to end: an agent whose boot root is a
 * generated system (a Debian kernel whose initramfs has the virtio drivers
 * only) reports its boot inventory in a heartbeat, and the control plane
 * says the server would boot on kvm and not on xen, with the remedy, through
 * the API and `lifeboat servers show`.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { installAgent } from "../../src/agent/install.js";
import { loadAgentConfig, saveAgentConfig } from "../../src/agent/index.js";
import { AgentService } from "../../src/agent/service.js";
import { runLifeboat } from "../support/cli.js";
import { type Site, startSite } from "../support/lifeboat-site.js";
import { DEBIAN_OS, grubFor, makeInitramfs, requires, writeRootTree } from "../launch/fixtures.js";

const V = "6.1.0-13-amd64";
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Readiness {
  profile: string;
  ready: boolean;
  verdict: string;
  problems: { code: string; severity: string; message: string; remedy: string }[];
  checkedAt: string;
  source: string;
}

void describe("readiness before disaster", requires({ tools: ["cpio", "zstd"] }), () => {
  let tmp = "";
  let site: Site;
  before(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), "lifeboat-readiness-e2e-"));
    site = await startSite(tmp);
  });
  after(async () => {
    await site?.close();
    await rm(tmp, { recursive: true, force: true });
  });

  void it(
    "the agent's boot inventory says ready for kvm, not for xen, with the remedy",
    { timeout: 60_000 },
    async () => {
      const bootRoot = path.join(tmp, "root");
      const initramfs = await makeInitramfs(tmp, {
        version: V,
        modules: ["virtio_blk.ko", "virtio_net.ko", "ext4.ko"],
        compression: "zstd",
        early: true,
      });
      await writeRootTree(bootRoot, {
        osRelease: DEBIAN_OS,
        kernels: [{ version: V, initramfs, dep: ["kernel/drivers/block/virtio_blk.ko"] }],
        grub: grubFor(V, "0d3c56f4-9a77-4a3b-8f5e-1f2a3b4c5d6e"),
      });
      const image = path.join(tmp, "disk.img");
      await writeFile(image, Buffer.alloc(1 << 20));
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
        hostname: "db7",
        blockSize: 65536,
        disks: [{ path: image, kind: "image", id: image, sizeBytes: 1 << 20 }],
        inventory: {},
      });
      await saveAgentConfig(configDir, { ...(await loadAgentConfig(configDir)), bootRoot });
      const id = installed.serverId;
      const readiness = async () =>
        (
          await site.api<{ readiness: Readiness | null; inventory: Record<string, unknown> }>(
            `/api/v1/servers/${id}`,
          )
        ).readiness;

      const svc = await AgentService.start({ configDir });
      try {
        let kvm: Readiness | null = null;
        for (let i = 0; i < 300 && kvm === null; i++) {
          kvm = await readiness();
          if (kvm === null) await sleep(100);
        }
        assert.ok(kvm, "the agent reported its boot inventory");
        assert.equal(kvm.profile, "kvm", "the built-in profile");
        assert.equal(kvm.ready, true, JSON.stringify(kvm));
        assert.equal(kvm.verdict, `ready to boot on profile kvm (kernel ${V})`);
        assert.equal(kvm.source, "agent");

        await site.api(`/api/v1/servers/${id}/settings/launch`, {
          method: "PUT",
          body: { bootProfile: "xen" },
        });
        const xen = (await readiness())!;
        assert.equal(xen.profile, "xen");
        assert.equal(xen.ready, false);
        assert.equal(xen.problems.length, 1);
        assert.equal(xen.problems[0]!.code, "LAUNCH_DRIVERS_MISSING");
        assert.match(xen.problems[0]!.message, /lacks xen-blkfront and xen-netfront/);
        assert.match(
          xen.problems[0]!.remedy,
          new RegExp(`update-initramfs -u -k ${V}, or launch with profile kvm$`),
        );

        // The CLI: a readiness line with the problem and its remedy (the READY column of `servers
        // list`: test/cli/servers-readiness.test.ts).
        const keyFile = path.join(site.dataDir, "admin-api.key");
        assert.ok(existsSync(keyFile));
        const api = [
          "--endpoint",
          site.url,
          "--ca-file",
          path.join(site.dataDir, "ca.pem"),
          "--api-key-file",
          keyFile,
        ];
        const show = await runLifeboat(["servers", "show", installed.serverName, ...api], tmp);
        assert.equal(show.code, 0, show.stderr);
        assert.match(
          show.stdout,
          /^readiness: not ready for profile xen: 1 problem \(checked .* by the agent\)$/m,
        );
        assert.match(
          show.stdout,
          /^ {2}error LAUNCH_DRIVERS_MISSING: the initramfs of kernel 6\.1\.0-13-amd64 lacks/m,
        );
        assert.match(
          show.stdout,
          /^ {4}remedy: install the drivers and regenerate it with update-initramfs/m,
        );
      } finally {
        await svc.stop();
      }
    },
  );
});
