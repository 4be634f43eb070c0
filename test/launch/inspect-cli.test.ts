import assert from "node:assert/strict";
import { promises as fs } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { runLifeboat } from "../support/cli.js";
import {
  BASE_TOOLS,
  DEBIAN_OS,
  grubFor,
  makeDisk,
  makeInitramfs,
  requires,
  writeRootTree,
} from "./fixtures.js";

const V = "6.1.0-13-amd64";
const UUID = "3f1c0a2e-5b6d-4e7f-8a9b-0c1d2e3f4a5b";

void describe("lifeboat inspect", requires({ tools: BASE_TOOLS }), () => {
  let home = "";
  let disk = "";
  before(async () => {
    home = await fs.mkdtemp(path.join(os.tmpdir(), "lifeboat-inspect-cli-"));
    const root = path.join(home, "root");
    await writeRootTree(root, {
      osRelease: DEBIAN_OS,
      fstab: `UUID=${UUID} / ext4 defaults 0 1\n`,
      kernels: [
        {
          version: V,
          initramfs: await makeInitramfs(home, {
            version: V,
            modules: ["virtio_blk.ko", "virtio_net.ko"],
            compression: "gzip",
            early: true,
          }),
        },
      ],
      grub: grubFor(V, UUID),
    });
    disk = path.join(home, "disk0.img");
    await makeDisk(disk, "gpt", [{ sizeMiB: 20, type: "linux", fs: "ext4", uuid: UUID, dir: root }]);
  });
  after(async () => {
    await fs.rm(home, { recursive: true, force: true });
  });

  void it("prints the report as JSON and exits 0 when ready for the default profile (kvm)", async () => {
    const r = await runLifeboat(["inspect", disk, "--json"], home);
    assert.equal(r.code, 0, r.stderr);
    const report = JSON.parse(r.stdout) as Record<string, unknown> & { disks: Record<string, unknown>[] };
    assert.equal(report.ready, true);
    assert.equal(report.profile, "kvm");
    const d = report.disks[0]!;
    for (const key of ["partitions", "filesystems", "os", "kernels", "bootloader", "fstab", "problems"])
      assert.ok(key in d, `disk has ${key}`);
    const kernels = d.kernels as {
      version: string;
      initramfs: { compression: string; moduleCount: number };
    }[];
    assert.equal(kernels[0]!.version, V);
    assert.equal(kernels[0]!.initramfs.compression, "none+gzip");
    assert.equal(kernels[0]!.initramfs.moduleCount, 2);
  });

  void it("exits 1 with the problems when not ready for the chosen profile", async () => {
    const r = await runLifeboat(["inspect", disk, "--profile", "hyperv", "--json"], home);
    assert.equal(r.code, 1, r.stderr);
    const report = JSON.parse(r.stdout) as {
      ready: boolean;
      problems: { code: string; message: string; remedy: string }[];
    };
    assert.equal(report.ready, false);
    assert.equal(report.problems[0]!.code, "LAUNCH_DRIVERS_MISSING");
    assert.match(report.problems[0]!.message, /lacks hv_storvsc and hv_netvsc/);
    assert.match(
      report.problems[0]!.remedy,
      /update-initramfs -u -k 6\.1\.0-13-amd64.*launch with profile kvm/,
    );
  });

  void it("prints a readable report without --json", async () => {
    const r = await runLifeboat(["inspect", disk, "--profile", "xen"], home);
    assert.equal(r.code, 1);
    assert.match(r.stdout, /kernel 6\.1\.0-13-amd64 \(default\).*xen: lacks xen-blkfront and xen-netfront/);
    assert.match(r.stdout, /NOT READY/);
  });

  void it("exits 1 with a clear verdict for a disk without an OS", async () => {
    const blank = path.join(home, "blank.img");
    await fs.writeFile(blank, Buffer.alloc(2 << 20));
    const r = await runLifeboat(["inspect", blank, "--json"], home);
    assert.equal(r.code, 1, r.stderr);
    const report = JSON.parse(r.stdout) as { ready: boolean; verdict: string };
    assert.equal(report.verdict, "no operating system found on this disk");
    assert.equal(r.stderr, "");
  });

  void it("exits 2 on usage errors, with the error as JSON on stderr", async () => {
    for (const args of [
      ["inspect"],
      ["inspect", disk, "--profile", "bochs"],
      ["inspect", "--server", "db1", "--pit", "latest"],
      ["inspect", path.join(home, "no-such.img")],
    ]) {
      const r = await runLifeboat([...args, "--json"], home);
      assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
      assert.equal(r.stdout, "");
      const err = JSON.parse(r.stderr) as { code: string; hint: string };
      assert.ok(["USAGE", "LAUNCH_IMAGE_UNREADABLE"].includes(err.code), err.code);
    }
  });
});
