/**
 * The agent's boot inventory over generated root trees: real initramfs
 * archives (cpio and the real compressors), /lib/modules, grub.cfg. The
 * verdicts are inspect's; these check that the live-system reading feeds them
 * right (default kernel, built-in drivers, remedies) and that the watcher
 * collects again only when something it reads changed.
 */
import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { ManualClock } from "../../src/base/index.js";
import { type BootInventory, collectBootInventory } from "../../src/agent/boot-inventory.js";
import { BootWatcher } from "../../src/agent/boot-watcher.js";
import { DEBIAN_OS, grubFor, makeInitramfs, requires, writeRootTree } from "../launch/fixtures.js";

const V = "6.1.0-13-amd64";
const OLD = "6.1.0-10-amd64";
const UUID = "0d3c56f4-9a77-4a3b-8f5e-1f2a3b4c5d6e";
const T0 = Date.parse("2026-11-29T10:00:00Z");

void describe("boot inventory of a live system", requires({ tools: ["cpio", "gzip", "zstd"] }), () => {
  let tmp = "";
  let n = 0;
  before(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), "lifeboat-boot-inv-"));
  });
  after(async () => {
    await rm(tmp, { recursive: true, force: true });
  });
  const newRoot = () => path.join(tmp, `root-${n++}`);

  void it("a virtio initramfs: ready for kvm; xen reports the missing drivers with the remedy", async () => {
    const root = newRoot();
    const initramfs = await makeInitramfs(tmp, {
      version: V,
      modules: ["virtio_blk.ko", "virtio_net.ko.xz", "ext4.ko", "crc32c_generic.ko"],
      compression: "zstd",
      early: true,
    });
    await writeRootTree(root, {
      osRelease: DEBIAN_OS,
      kernels: [{ version: V, initramfs, builtin: ["kernel/fs/ext4/ext4.ko"] }],
      grub: grubFor(V, UUID),
    });
    const inv = await collectBootInventory({ root, now: T0 });
    assert.equal(inv.checkedAt, "2026-11-29T10:00:00.000Z");
    assert.equal(inv.os?.id, "debian");
    assert.deepEqual(inv.bootloader, {
      type: "grub2",
      config: "/boot/grub/grub.cfg",
      blscfg: false,
      defaultKernel: V,
    });
    assert.equal(inv.kernels.length, 1);
    const k = inv.kernels[0]!;
    assert.equal(k.version, V);
    assert.equal(k.path, `/boot/vmlinuz-${V}`);
    assert.equal(k.default, true);
    assert.equal(k.modulesBuiltin, true);
    assert.deepEqual(k.builtinDrivers, [], "only the profiles' drivers are kept");
    assert.equal(k.initramfs?.path, `/boot/initrd.img-${V}`);
    assert.equal(k.initramfs?.compression, "none+zstd");
    assert.equal(k.initramfs?.moduleCount, 4);
    assert.deepEqual(k.initramfs?.drivers, ["virtio_blk", "virtio_net"]);
    assert.deepEqual(k.profiles.kvm, { ready: true, missing: [] });
    assert.equal(k.profiles.xen.ready, false);
    assert.deepEqual(k.profiles.xen.missing, ["xen-blkfront", "xen-netfront"]);

    assert.equal(inv.profiles.kvm.ready, true);
    assert.equal(inv.profiles.kvm.verdict, `ready to boot on profile kvm (kernel ${V})`);
    assert.deepEqual(inv.profiles.kvm.problems, []);
    const xen = inv.profiles.xen;
    assert.equal(xen.ready, false);
    assert.equal(xen.verdict, "not ready for profile xen: 1 problem");
    assert.equal(xen.problems.length, 1);
    const p = xen.problems[0]!;
    assert.equal(p.code, "LAUNCH_DRIVERS_MISSING");
    assert.equal(p.severity, "error");
    assert.match(p.message, /lacks xen-blkfront and xen-netfront/);
    assert.match(p.remedy, new RegExp(`update-initramfs -u -k ${V}`));
    assert.match(p.remedy, /or launch with profile kvm$/);
    assert.equal(k.profiles.xen.remedy, p.remedy);
    // Small enough for a heartbeat.
    assert.ok(JSON.stringify(inv).length < 8192, `${JSON.stringify(inv).length} bytes`);
  });

  void it("drivers built into the kernel count; the grub default is the kernel judged", async () => {
    const root = newRoot();
    const plain = await makeInitramfs(tmp, { version: V, modules: ["ext4.ko"], compression: "gzip" });
    const old = await makeInitramfs(tmp, { version: OLD, modules: ["ext4.ko"], compression: "gzip" });
    await writeRootTree(root, {
      osRelease: DEBIAN_OS,
      kernels: [
        // The newer kernel has neither built in nor in its initramfs; modules.dep says they are installed.
        { version: V, initramfs: plain, dep: ["kernel/drivers/block/xen-blkfront.ko"] },
        {
          version: OLD,
          initramfs: old,
          builtin: ["kernel/drivers/block/xen-blkfront.ko", "kernel/drivers/net/xen-netfront.ko"],
        },
      ],
      grub: grubFor(OLD, UUID),
    });
    const inv = await collectBootInventory({ root, now: T0 });
    assert.deepEqual(
      inv.kernels.map((k) => [k.version, k.default]),
      [
        [V, false],
        [OLD, true],
      ],
    );
    const oldK = inv.kernels[1]!;
    assert.deepEqual(oldK.builtinDrivers, ["xen_blkfront", "xen_netfront"]);
    assert.deepEqual(oldK.initramfs?.drivers, []);
    assert.equal(oldK.initramfs?.compression, "gzip");
    assert.equal(oldK.profiles.xen.ready, true);
    assert.equal(inv.kernels[0]!.modulesBuiltin, false);
    // Ready: the default kernel has them; the other kernel's lack is a warning with its own remedy.
    assert.equal(inv.profiles.xen.ready, true);
    const warn = inv.profiles.xen.problems;
    assert.equal(warn.length, 1);
    assert.equal(warn[0]!.severity, "warning");
    assert.match(
      warn[0]!.remedy,
      /installed under \/lib\/modules\/6\.1\.0-13-amd64: list them in \/etc\/initramfs-tools\/modules/,
    );
    assert.equal(inv.profiles.kvm.ready, false);
  });

  void it("no boot loader configuration: the newest kernel is the default, and nothing is ready", async () => {
    const root = newRoot();
    const a = await makeInitramfs(tmp, {
      version: V,
      modules: ["virtio_blk.ko", "virtio_net.ko"],
      compression: "gzip",
    });
    await writeRootTree(root, {
      osRelease: null,
      kernels: [{ version: OLD }, { version: V, initramfs: a }],
    });
    const inv = await collectBootInventory({ root, now: T0 });
    assert.equal(inv.os, null);
    assert.equal(inv.bootloader, null);
    assert.deepEqual(
      inv.kernels.map((k) => [k.version, k.default, k.problem?.code]),
      [
        [V, true, undefined],
        [OLD, false, "LAUNCH_NO_INITRAMFS"],
      ],
    );
    assert.equal(inv.profiles.kvm.ready, false);
    assert.deepEqual(
      inv.profiles.kvm.problems.map((p) => [p.code, p.severity]),
      [
        ["LAUNCH_NO_BOOTLOADER", "error"],
        ["LAUNCH_NO_INITRAMFS", "warning"],
      ],
    );
    // An empty root: no kernel either, and still an answer, not an exception.
    const empty = await collectBootInventory({ root: path.join(tmp, "nothing-here"), now: T0 });
    assert.deepEqual(
      empty.profiles.nitro.problems.map((p) => p.code),
      ["LAUNCH_NO_KERNEL", "LAUNCH_NO_BOOTLOADER"],
    );
  });

  void it("the watcher collects again only when /boot changes, renews hourly, and sends once", async () => {
    const root = newRoot();
    const a = await makeInitramfs(tmp, {
      version: V,
      modules: ["virtio_blk.ko", "virtio_net.ko"],
      compression: "gzip",
    });
    await writeRootTree(root, {
      osRelease: DEBIAN_OS,
      kernels: [{ version: V, initramfs: a }],
      grub: grubFor(V, UUID),
    });
    const clock = new ManualClock(T0);
    let collected = 0;
    let changes = 0;
    const w = new BootWatcher({
      root,
      clock,
      onChange: () => changes++,
      collect: (r, now) => {
        collected++;
        return collectBootInventory({ root: r, now });
      },
    });
    try {
      await w.check();
      assert.equal(collected, 1);
      assert.equal(changes, 1);
      const first = w.pending()!;
      assert.equal(first.profiles.kvm.ready, true);
      w.sent(first);
      assert.equal(w.pending(), undefined, "sent once");

      clock.advance(59 * 60_000);
      await w.check();
      assert.equal(collected, 1, "nothing changed: not read again");
      assert.equal(w.pending(), undefined);
      clock.advance(60_000);
      await w.check();
      assert.equal(collected, 1);
      const renewed = w.pending()!;
      assert.equal(renewed.checkedAt, new Date(T0 + 3600_000).toISOString(), "an hour on: checkedAt renewed");
      w.sent(renewed);

      // A regenerated initramfs (without virtio_net) is a change.
      const b = await makeInitramfs(tmp, { version: V, modules: ["virtio_blk.ko"], compression: "gzip" });
      await writeFile(path.join(root, "boot", `initrd.img-${V}.new`), b);
      const { rename } = await import("node:fs/promises");
      await rename(
        path.join(root, "boot", `initrd.img-${V}.new`),
        path.join(root, "boot", `initrd.img-${V}`),
      );
      await w.check();
      assert.equal(collected, 2);
      const now = w.pending() as BootInventory;
      assert.equal(now.profiles.kvm.ready, false);
      assert.match(now.profiles.kvm.problems[0]!.message, /lacks virtio_net/);
    } finally {
      await w.close();
    }
  });

  void it("in a worker thread, as the agent runs it", async () => {
    const root = newRoot();
    const a = await makeInitramfs(tmp, { version: V, modules: ["nvme.ko", "ena.ko"], compression: "zstd" });
    await writeRootTree(root, {
      osRelease: DEBIAN_OS,
      kernels: [{ version: V, initramfs: a }],
      grub: grubFor(V, UUID),
    });
    const w = new BootWatcher({ root, clock: new ManualClock(T0) });
    try {
      await w.check();
      const inv = w.pending();
      assert.ok(inv, "collected");
      assert.equal(inv.profiles.nitro.ready, true);
      assert.deepEqual(inv.kernels[0]!.initramfs?.drivers, ["ena", "nvme"]);
    } finally {
      await w.close();
    }
  });
});
