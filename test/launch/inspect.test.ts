import assert from "node:assert/strict";
import { promises as fs } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { isLifeboatError } from "../../src/base/index.js";
import { type InspectReport, inspectDisks } from "../../src/launch/index.js";
import { DebugfsReader } from "../../src/launch/inspect/debugfs-reader.js";
import {
  BASE_TOOLS,
  DEBIAN_OS,
  type InitramfsSpec,
  type RootSpec,
  grubFor,
  makeDisk,
  makeInitramfs,
  requires,
  writeRootTree,
} from "./fixtures.js";

const V = "6.1.0-13-amd64";
const ROOT_UUID = "0e6a2f5c-1111-4222-8333-944455556666";
const VIRTIO = ["virtio_blk.ko", "virtio_scsi.ko", "virtio_net.ko", "ext4.ko"];

const codes = (r: InspectReport) => r.problems.filter((p) => p.severity === "error").map((p) => p.code);

void describe("inspect on ext4 disks", requires({ tools: BASE_TOOLS }), () => {
  let work = "";
  let n = 0;
  before(async () => {
    work = await fs.mkdtemp(path.join(os.tmpdir(), "lifeboat-inspect-"));
  });
  after(async () => {
    await fs.rm(work, { recursive: true, force: true });
  });

  /** A one-disk server with an ext4 root built from `spec` (defaults: Debian, kernel V with virtio drivers). */
  async function server(
    table: "gpt" | "mbr" | "none",
    spec: Partial<RootSpec> = {},
    ird: Partial<InitramfsSpec> = {},
  ): Promise<string> {
    const dir = path.join(work, `root-${++n}`);
    const initramfs = await makeInitramfs(work, {
      version: V,
      modules: VIRTIO,
      compression: "zstd",
      early: true,
      ...ird,
    });
    await writeRootTree(dir, {
      osRelease: DEBIAN_OS,
      fstab: `UUID=${ROOT_UUID} / ext4 errors=remount-ro 0 1\nproc /proc proc defaults 0 0\n`,
      kernels: [{ version: V, initramfs, builtin: ["kernel/fs/ext4/ext4.ko"] }],
      grub: grubFor(V, ROOT_UUID),
      ...spec,
    });
    const file = path.join(work, `disk-${n}.img`);
    await makeDisk(file, table, [{ sizeMiB: 24, type: "linux", fs: "ext4", uuid: ROOT_UUID, dir }]);
    return file;
  }

  for (const table of ["mbr", "gpt", "none"] as const) {
    void it(`a ${table === "none" ? "unpartitioned" : table.toUpperCase()} disk with virtio drivers is ready for kvm`, async () => {
      const r = await inspectDisks([await server(table)], { profile: "kvm" });
      assert.equal(r.ready, true, JSON.stringify(r.problems));
      const d = r.disks[0]!;
      assert.equal(d.partitionTable.type, table);
      assert.equal(d.filesystems.length, 1);
      assert.equal(d.filesystems[0]!.type, "ext4");
      assert.equal(d.filesystems[0]!.uuid, ROOT_UUID);
      assert.equal(d.filesystems[0]!.root, true);
      if (table !== "none") assert.equal(d.partitions[0]!.start, 1 << 20);
      assert.equal(d.os?.id, "debian");
      assert.equal(d.os?.versionId, "12");
      assert.equal(d.kernels.length, 1);
      const k = d.kernels[0]!;
      assert.equal(k.version, V);
      assert.equal(k.default, true);
      assert.equal(k.initramfs?.path, `/boot/initrd.img-${V}`);
      assert.equal(k.initramfs?.compression, "none+zstd");
      assert.equal(k.initramfs?.moduleCount, 4);
      assert.equal(k.profiles.kvm.ready, true);
      assert.equal(k.profiles.xen.ready, false);
      assert.equal(d.bootloader?.config, "/boot/grub/grub.cfg");
      assert.equal(d.bootloader?.defaultKernel, V);
      assert.equal(d.fstab?.entries.length, 1);
      assert.equal(d.fstab?.entries[0]!.status, "matched");
    });
  }

  void it("reports the missing xen drivers with the remedy, and names kvm as a profile that works", async () => {
    const r = await inspectDisks([await server("gpt")], { profile: "xen" });
    assert.equal(r.ready, false);
    const p = r.problems.find((x) => x.code === "LAUNCH_DRIVERS_MISSING");
    assert.ok(p, JSON.stringify(r.problems));
    assert.equal(p.severity, "error");
    assert.match(p.message, new RegExp(`initramfs of kernel ${V} lacks xen-blkfront and xen-netfront`));
    assert.match(p.remedy, new RegExp(`update-initramfs -u -k ${V}`));
    assert.match(p.remedy, /launch with profile kvm/);
    assert.deepEqual(r.disks[0]!.kernels[0]!.profiles.xen.missing, ["xen-blkfront", "xen-netfront"]);
  });

  void it("says the modules are installed but not in the initramfs when modules.dep lists them", async () => {
    const initramfs = await makeInitramfs(work, { version: V, modules: VIRTIO, compression: "gzip" });
    const file = await server("gpt", {
      osRelease: 'NAME="SLES"\nVERSION_ID="15.5"\nID="sles"\nID_LIKE="suse"\n',
      kernels: [
        {
          version: V,
          initramfs,
          initramfsName: `initrd-${V}`,
          dep: ["kernel/drivers/block/xen-blkfront.ko.zst", "kernel/drivers/net/xen-netfront.ko.zst"],
        },
      ],
    });
    const r = await inspectDisks([file], { profile: "xen" });
    const p = r.problems.find((x) => x.code === "LAUNCH_DRIVERS_MISSING")!;
    assert.match(p.remedy, /installed under \/lib\/modules/);
    assert.match(p.remedy, /add_drivers\+=" xen-blkfront xen-netfront "/);
    assert.match(p.remedy, new RegExp(`dracut -f --kver ${V}`));
    assert.equal(r.disks[0]!.kernels[0]!.initramfs?.path, `/boot/initrd-${V}`);
  });

  void it("counts modules.builtin as present", async () => {
    const file = await server("mbr", {}, { modules: ["virtio_blk.ko"] });
    assert.equal((await inspectDisks([file], { profile: "kvm" })).ready, false, "virtio_net is missing");
    const withBuiltin = await server("mbr", {
      kernels: [
        {
          version: V,
          initramfs: await makeInitramfs(work, { version: V, modules: ["virtio_blk.ko"], compression: "xz" }),
          builtin: ["kernel/drivers/net/virtio_net.ko"],
        },
      ],
    });
    const r = await inspectDisks([withBuiltin], { profile: "kvm" });
    assert.equal(r.ready, true, JSON.stringify(r.problems));
    assert.deepEqual(r.disks[0]!.kernels[0]!.profiles.kvm.found, {
      virtio_blk: "initramfs",
      virtio_net: "builtin",
    });
  });

  void it("finds RHEL's initramfs-<ver>.img through an os-release link (lz4)", async () => {
    const initramfs = await makeInitramfs(work, {
      version: V,
      modules: VIRTIO,
      compression: "lz4-legacy",
      early: true,
    });
    const file = await server("gpt", {
      osRelease: 'NAME="Red Hat Enterprise Linux"\nVERSION_ID="9.3"\nID="rhel"\nID_LIKE="fedora"\n',
      osReleaseLink: true,
      kernels: [{ version: V, initramfs, initramfsName: `initramfs-${V}.img` }],
      grubPath: "boot/grub2/grub.cfg",
    });
    const r = await inspectDisks([file], { profile: "nitro" });
    assert.equal(r.disks[0]!.os?.id, "rhel");
    assert.equal(r.disks[0]!.kernels[0]!.initramfs?.compression, "none+lz4-legacy");
    assert.equal(r.disks[0]!.bootloader?.config, "/boot/grub2/grub.cfg");
    const p = r.problems.find((x) => x.code === "LAUNCH_DRIVERS_MISSING")!;
    assert.match(p.message, /lacks nvme and ena/);
    assert.match(p.remedy, new RegExp(`dracut -f --kver ${V}`));
  });

  void it("with blscfg the newest kernel of /boot/loader/entries is the default", async () => {
    const old = "5.14.0-70.13.1.el9_0.x86_64";
    const dir = path.join(work, "bls");
    const ird = (v: string, modules: string[]) =>
      makeInitramfs(work, { version: v, modules, compression: "xz" });
    await writeRootTree(dir, {
      osRelease: 'NAME="Rocky Linux"\nVERSION_ID="9.3"\nID="rocky"\nID_LIKE="rhel centos fedora"\n',
      fstab: `UUID=${ROOT_UUID} / ext4 defaults 0 1\n`,
      kernels: [
        { version: V, initramfs: await ird(V, ["ext4.ko"]), initramfsName: `initramfs-${V}.img` },
        { version: old, initramfs: await ird(old, VIRTIO), initramfsName: `initramfs-${old}.img` },
      ],
      grub: "set default_kernelopts=ro\ninsmod blscfg\nblscfg\n",
      grubPath: "boot/grub2/grub.cfg",
    });
    await fs.mkdir(path.join(dir, "boot/loader/entries"), { recursive: true });
    for (const v of [V, old])
      await fs.writeFile(
        path.join(dir, `boot/loader/entries/abc-${v}.conf`),
        `title Rocky ${v}\nversion ${v}\nlinux /vmlinuz-${v}\ninitrd /initramfs-${v}.img\noptions root=UUID=${ROOT_UUID} ro\n`,
      );
    const file = path.join(work, "bls.img");
    await makeDisk(file, "gpt", [{ sizeMiB: 24, type: "linux", fs: "ext4", uuid: ROOT_UUID, dir }]);
    const r = await inspectDisks([file], { profile: "kvm" });
    const d = r.disks[0]!;
    assert.equal(d.bootloader?.blscfg, true);
    assert.equal(d.bootloader?.defaultKernel, V);
    assert.equal(d.bootloader?.rootArg, `UUID=${ROOT_UUID}`);
    assert.deepEqual(
      d.kernels.map((k) => [k.version, k.default]),
      [
        [V, true],
        [old, false],
      ],
    );
    // The default kernel lacks virtio; the older one has it, which does not make the server ready.
    assert.equal(r.ready, false);
    const p = r.problems.find((x) => x.severity === "error")!;
    assert.equal(p.code, "LAUNCH_DRIVERS_MISSING");
    assert.match(p.remedy, new RegExp(`dracut -f --kver ${V.replace(/\./g, "\\.")}`));
  });

  void it("a corrupt initramfs is a problem of its kernel, not a crash", async () => {
    const good = await makeInitramfs(work, { version: V, modules: VIRTIO, compression: "gzip" });
    const file = await server("gpt", {
      kernels: [{ version: V, initramfs: good.subarray(0, good.length - 50) }],
    });
    const r = await inspectDisks([file], { profile: "kvm" });
    assert.equal(r.ready, false);
    assert.deepEqual(codes(r), ["LAUNCH_INITRAMFS_CORRUPT"]);
    assert.match(r.problems[0]!.message, new RegExp(`initramfs of kernel ${V}`));
    assert.equal(r.disks[0]!.kernels[0]!.initramfs?.compression, "unknown");
  });

  void it("an fstab entry that matches no filesystem makes the disk not ready; nofail makes it a warning", async () => {
    const fstab = `UUID=${ROOT_UUID} / ext4 defaults 0 1\nUUID=deadbeef-0000-4000-8000-000000000000 /srv ext4 defaults 0 2\nLABEL=backup /backup xfs nofail 0 2\n`;
    const r = await inspectDisks([await server("mbr", { fstab })], { profile: "kvm" });
    assert.equal(r.ready, false);
    assert.deepEqual(codes(r), ["LAUNCH_FSTAB_UNMATCHED"]);
    assert.match(
      r.problems.find((p) => p.severity === "error")!.message,
      /UUID=deadbeef-0000-4000-8000-000000000000 for \/srv/,
    );
    const warn = r.problems.find((p) => p.severity === "warning" && p.code === "LAUNCH_FSTAB_UNMATCHED");
    assert.match(warn!.message, /LABEL=backup/);
  });

  void it("checks fstab across the server's disks", async () => {
    const dataUuid = "7a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
    const fstab = `UUID=${ROOT_UUID} / ext4 defaults 0 1\nUUID=${dataUuid} /srv ext4 defaults 0 2\nLABEL=swap0 none swap sw 0 0\n`;
    const boot = await server("gpt", { fstab });
    const data = path.join(work, "data.img");
    await makeDisk(data, "gpt", [
      { sizeMiB: 16, type: "linux", fs: "ext4", uuid: dataUuid },
      { sizeMiB: 8, type: "swap", fs: "swap", label: "swap0" },
    ]);
    assert.deepEqual(codes(await inspectDisks([boot], { profile: "kvm" })), [
      "LAUNCH_FSTAB_UNMATCHED",
      "LAUNCH_FSTAB_UNMATCHED",
    ]);
    const r = await inspectDisks([boot, data], { profile: "kvm" });
    assert.equal(r.ready, true, JSON.stringify(r.problems));
    const entries = r.disks[0]!.fstab!.entries;
    assert.deepEqual(
      entries.map((e) => [e.entry.mountPoint, e.status, e.disk, e.partition]),
      [
        ["/", "matched", 0, 1],
        ["/srv", "matched", 1, 1],
        ["none", "matched", 1, 2],
      ],
    );
    assert.equal(r.disks[1]!.os, null);
    assert.match(r.disks[1]!.verdict, /no operating system found on this disk \(ext4, swap: a data disk\)/);
    assert.deepEqual(
      r.disks[1]!.filesystems.map((f) => f.type),
      ["ext4", "swap"],
    );
  });

  void it(
    "finds grub.cfg on the EFI system partition; fstab by PARTUUID matches, a device name is a warning",
    requires({ tools: ["mkfs.vfat", "mcopy"] }),
    async () => {
      const dir = path.join(work, "efi-root");
      const esp = path.join(work, "efi-esp");
      const espPart = "0b1c2d3e-4f50-4617-8829-3a4b5c6d7e8f";
      await writeRootTree(dir, {
        osRelease: DEBIAN_OS,
        fstab: `UUID=${ROOT_UUID} / ext4 defaults 0 1\nPARTUUID=${espPart} /boot/efi vfat umask=0077 0 1\n/dev/sda2 /mnt/again ext4 defaults 0 2\n`,
        kernels: [
          {
            version: V,
            initramfs: await makeInitramfs(work, { version: V, modules: VIRTIO, compression: "gzip" }),
          },
        ],
        grub: null,
      });
      await fs.mkdir(path.join(esp, "EFI/debian"), { recursive: true });
      await fs.writeFile(path.join(esp, "EFI/debian/grub.cfg"), grubFor(V, ROOT_UUID));
      const file = path.join(work, "efi.img");
      await makeDisk(file, "gpt", [
        { sizeMiB: 8, type: "esp", fs: "vfat", uuid: "A1B2-C3D4", dir: esp, partUuid: espPart },
        { sizeMiB: 24, type: "linux", fs: "ext4", uuid: ROOT_UUID, dir },
      ]);
      const r = await inspectDisks([file], { profile: "kvm" });
      const d = r.disks[0]!;
      assert.deepEqual(
        d.filesystems.map((f) => [f.type, f.uuid]),
        [
          ["vfat", "A1B2-C3D4"],
          ["ext4", ROOT_UUID],
        ],
      );
      assert.equal(d.partitions[0]!.esp, true);
      assert.equal(d.bootloader?.config, "/EFI/debian/grub.cfg");
      assert.equal(d.bootloader?.firmware, "efi");
      assert.equal(d.bootloader?.on.fsType, "vfat");
      assert.equal(r.ready, true, JSON.stringify(r.problems));
      assert.deepEqual(
        d.fstab?.entries.map((e) => [e.entry.mountPoint, e.status, e.partition]),
        [
          ["/", "matched", 2],
          ["/boot/efi", "matched", 1],
          ["/mnt/again", "device", 2],
        ],
      );
      assert.equal(r.problems.find((p) => p.code === "LAUNCH_FSTAB_DEVICE_NAME")?.severity, "warning");
    },
  );

  void it("a missing boot loader configuration makes the disk not ready", async () => {
    const r = await inspectDisks([await server("gpt", { grub: null })], { profile: "kvm" });
    assert.equal(r.ready, false);
    assert.deepEqual(codes(r), ["LAUNCH_NO_BOOTLOADER"]);
    assert.match(r.problems[0]!.remedy, /update-grub/);
  });

  void it("a root= the boot loader passes must match a filesystem", async () => {
    const r = await inspectDisks(
      [await server("gpt", { grub: grubFor(V, "11111111-2222-4333-8444-555555555555") })],
      {
        profile: "kvm",
      },
    );
    assert.deepEqual(codes(r), ["LAUNCH_BOOT_ROOT_UNMATCHED"]);
  });

  void it("the boot loader's first entry is the default kernel; an older kernel's problem is a warning", async () => {
    const old = "5.10.0-26-amd64";
    const initramfs = await makeInitramfs(work, { version: V, modules: VIRTIO, compression: "zstd" });
    const oldIrd = await makeInitramfs(work, { version: old, modules: ["ext4.ko"], compression: "gzip" });
    const r = await inspectDisks(
      [
        await server("gpt", {
          kernels: [
            { version: V, initramfs },
            { version: old, initramfs: oldIrd },
          ],
        }),
      ],
      { profile: "kvm" },
    );
    assert.equal(r.ready, true, JSON.stringify(r.problems));
    assert.deepEqual(
      r.disks[0]!.kernels.map((k) => [k.version, k.default]),
      [
        [V, true],
        [old, false],
      ],
    );
    const w = r.problems.find((p) => p.code === "LAUNCH_DRIVERS_MISSING");
    assert.equal(w?.severity, "warning");
    assert.match(w.message, new RegExp(old));
  });

  void it("a disk without an OS, garbage, and an empty disk get a clear verdict", async () => {
    const empty = path.join(work, "empty.img");
    await makeDisk(empty, "gpt", [{ sizeMiB: 16, type: "linux", fs: "ext4" }]);
    const garbage = path.join(work, "garbage.img");
    const g = Buffer.alloc(4 << 20);
    for (let i = 0; i < g.length; i++) g[i] = (Math.imul(i, 2654435761) >>> 13) & 0xff;
    await fs.writeFile(garbage, g);
    const zeros = path.join(work, "zeros.img");
    await fs.writeFile(zeros, "");
    await fs.truncate(zeros, 8 << 20);
    for (const file of [empty, garbage, zeros]) {
      const r = await inspectDisks([file], { profile: "kvm" });
      assert.equal(r.ready, false);
      assert.equal(r.verdict, "no operating system found on this disk");
      assert.deepEqual(codes(r), ["LAUNCH_NO_OS"]);
      assert.match(r.disks[0]!.verdict, /^no operating system found on this disk/);
    }
  });

  void it("debugfs follows links only inside the ext4 filesystem, and bounds what it reads", async () => {
    const dir = path.join(work, "links");
    await writeRootTree(dir, { osRelease: DEBIAN_OS });
    await fs.symlink("../../../../../../../etc/hostname", path.join(dir, "etc/escape-rel"));
    await fs.symlink("/etc/hostname", path.join(dir, "etc/escape-abs"));
    await fs.symlink("/etc/loop-b", path.join(dir, "etc/loop-a"));
    await fs.symlink("/etc/loop-a", path.join(dir, "etc/loop-b"));
    await fs.symlink("../../../etc/os-release", path.join(dir, "etc/inside"));
    const file = path.join(work, "links.img");
    await makeDisk(file, "mbr", [{ sizeMiB: 16, type: "linux", fs: "ext4", dir }]);
    const reader = await DebugfsReader.open(file, 1 << 20, "root");
    assert.equal(await reader.readFile("/etc/escape-rel", 1024), null);
    assert.equal(await reader.readFile("/etc/escape-abs", 1024), null);
    assert.equal(await reader.readFile("/etc/loop-a", 1024), null);
    assert.equal((await reader.readFile("/etc/inside", 1024))?.toString(), DEBIAN_OS);
    assert.equal((await reader.readFile("/lib/../etc/os-release", 1024))?.toString(), DEBIAN_OS);
    await assert.rejects(reader.readFile("/etc/os-release", 10), (err) =>
      isLifeboatError(err, "LAUNCH_FILE_TOO_LARGE"),
    );
    assert.deepEqual((await reader.list("/etc"))?.map((e) => e.name).sort(), [
      "escape-abs",
      "escape-rel",
      "inside",
      "loop-a",
      "loop-b",
      "os-release",
    ]);
  });

  void it("a damaged primary GPT is read from its backup, with a warning", async () => {
    const file = await server("gpt");
    const fh = await fs.open(file, "r+");
    await fh.write(Buffer.alloc(512, 0xff), 0, 512, 512 * 2); // the primary entry array
    await fh.close();
    const r = await inspectDisks([file], { profile: "kvm" });
    assert.equal(r.ready, true, JSON.stringify(r.problems));
    const w = r.problems.find((p) => p.code === "LAUNCH_PARTITION_TABLE_DAMAGED");
    assert.match(w!.message, /backup GPT/);
  });
});
