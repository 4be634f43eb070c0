import assert from "node:assert/strict";
import { promises as fs } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { ImageFile, inspectDisks, readPartitionTable } from "../../src/launch/index.js";
import { MountReader } from "../../src/launch/inspect/mount-reader.js";
import { BASE_TOOLS, makeDisk, makeInitramfs, requires, writeRootTree } from "./fixtures.js";

const V = "5.14.0-362.8.1.el9_3.x86_64";
const ROOT = "9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a";
const BOOT = "1a2b3c4d-5e6f-4a1b-8c2d-3e4f5a6b7c8d";
const ESP = "7E57-B007";

/**
 * A RHEL-like server as an EFI machine installs it: an EFI system partition
 * (vfat) holding grub.cfg, /boot on ext4 of its own, and the root on xfs.
 * Reading xfs and vfat needs a read-only loop mount, hence root.
 */
void describe(
  "inspect with xfs root, separate /boot and an EFI partition",
  requires({ tools: [...BASE_TOOLS, "mkfs.xfs", "mkfs.vfat", "mcopy", "losetup"], root: true }),
  () => {
    let work = "";
    let disk = "";
    before(async () => {
      work = await fs.mkdtemp(path.join(os.tmpdir(), "lifeboat-inspect-loop-"));
      const root = path.join(work, "root");
      const boot = path.join(work, "boot");
      const esp = path.join(work, "esp");
      const ird = await makeInitramfs(work, {
        version: V,
        modules: ["virtio_blk.ko.xz", "virtio_net.ko.xz", "xfs.ko.xz"],
        compression: "zstd",
        early: true,
      });
      await writeRootTree(root, {
        osRelease:
          'NAME="Red Hat Enterprise Linux"\nVERSION_ID="9.3"\nID="rhel"\nID_LIKE="fedora"\nPRETTY_NAME="Red Hat Enterprise Linux 9.3 (Plow)"\n',
        osReleaseLink: true,
        fstab: [
          `UUID=${ROOT} / xfs defaults 0 0`,
          `UUID=${BOOT} /boot ext4 defaults 1 2`,
          `UUID=${ESP} /boot/efi vfat umask=0077 0 2`,
          "",
        ].join("\n"),
        kernels: [{ version: V, builtin: ["kernel/drivers/nvme/host/nvme.ko"] }],
      });
      // Links that would leave the filesystem if a reader followed them on the host.
      await fs.symlink("../../../../../../../etc/hostname", path.join(root, "etc/escape-rel"));
      await fs.symlink("/etc/hostname", path.join(root, "etc/escape-abs"));
      await fs.symlink("/etc/loop-b", path.join(root, "etc/loop-a"));
      await fs.symlink("/etc/loop-a", path.join(root, "etc/loop-b"));
      await fs.writeFile(path.join(root, "etc/hostname-inside"), "inside\n");
      await fs.symlink("../../../../etc/hostname-inside", path.join(root, "etc/inside"));
      // /boot's contents live on the boot partition; the root keeps an empty mount point.
      await fs.mkdir(boot, { recursive: true });
      await fs.writeFile(path.join(boot, `vmlinuz-${V}`), Buffer.alloc(4096, 1));
      await fs.writeFile(path.join(boot, `initramfs-${V}.img`), ird);
      await fs.mkdir(path.join(esp, "EFI/redhat"), { recursive: true });
      await fs.writeFile(
        path.join(esp, "EFI/redhat/grub.cfg"),
        `menuentry 'RHEL' {\n  linuxefi /vmlinuz-${V} root=UUID=${ROOT} ro\n  initrdefi /initramfs-${V}.img\n}\n`,
      );
      disk = path.join(work, "disk.img");
      await makeDisk(disk, "gpt", [
        { sizeMiB: 8, type: "esp", fs: "vfat", uuid: ESP, dir: esp },
        { sizeMiB: 16, type: "linux", fs: "ext4", uuid: BOOT, dir: boot },
        { sizeMiB: 64, type: "linux", fs: "xfs", uuid: ROOT, label: "root", dir: root },
      ]);
    });
    after(async () => {
      await fs.rm(work, { recursive: true, force: true });
    });

    void it("reads the xfs root, the kernels on /boot and grub.cfg on the EFI partition", async () => {
      const r = await inspectDisks([disk], { profile: "kvm" });
      assert.equal(r.ready, true, JSON.stringify(r.problems, null, 1));
      const d = r.disks[0]!;
      assert.deepEqual(
        d.filesystems.map((f) => [f.type, f.uuid, f.root]),
        [
          ["vfat", ESP, false],
          ["ext4", BOOT, false],
          ["xfs", ROOT, true],
        ],
      );
      assert.equal(d.filesystems[2]!.label, "root");
      assert.equal(d.os?.prettyName, "Red Hat Enterprise Linux 9.3 (Plow)");
      assert.equal(d.kernels[0]!.path, `/vmlinuz-${V}`);
      assert.equal(d.kernels[0]!.initramfs?.path, `/initramfs-${V}.img`);
      assert.equal(d.kernels[0]!.builtinModules, 1);
      assert.deepEqual(
        d.bootloader && [d.bootloader.config, d.bootloader.firmware, d.bootloader.on.partition],
        ["/EFI/redhat/grub.cfg", "efi", 1],
      );
      assert.deepEqual(
        d.fstab?.entries.map((e) => [e.entry.mountPoint, e.status, e.partition]),
        [
          ["/", "matched", 3],
          ["/boot", "matched", 2],
          ["/boot/efi", "matched", 1],
        ],
      );
    });

    void it("nitro: nvme built in, ena missing; the remedy uses dracut", async () => {
      const r = await inspectDisks([disk], { profile: "nitro" });
      assert.equal(r.ready, false);
      const k = r.disks[0]!.kernels[0]!;
      assert.deepEqual(k.profiles.nitro.missing, ["ena"]);
      assert.deepEqual(k.profiles.nitro.found, { nvme: "builtin" });
      assert.match(r.problems[0]!.remedy, new RegExp(`dracut -f --kver ${V.replace(/\./g, "\\.")}`));
    });

    void it("follows links only inside the xfs filesystem", async () => {
      const img = await ImageFile.open(disk);
      const t = await readPartitionTable(img);
      await img.close();
      const p = t.partitions[2]!;
      const reader = await MountReader.open(disk, { type: "xfs", offset: p.start, size: p.size }, "root");
      try {
        assert.equal(await reader.readFile("/etc/escape-rel", 1024), null);
        assert.equal(await reader.readFile("/etc/escape-abs", 1024), null);
        assert.equal(await reader.readFile("/etc/loop-a", 1024), null);
        assert.equal((await reader.readFile("/etc/inside", 1024))?.toString(), "inside\n");
        assert.equal((await reader.readFile("/etc/os-release", 1024))?.toString().includes("rhel"), true);
        await assert.rejects(reader.readFile("/etc/fstab", 10), /more than the 10 bytes/);
      } finally {
        await reader.close();
      }
    });

    void it("leaves no mount or loop device behind", async () => {
      await inspectDisks([disk], { profile: "kvm" });
      const mounts = await fs.readFile("/proc/self/mounts", "utf8");
      assert.doesNotMatch(mounts, /lifeboat-inspect-/);
    });
  },
);
