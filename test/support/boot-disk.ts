/**
 * A bootable "recovered" disk for the QEMU target's tests, built without
 * root or loop devices: an MBR-partitioned image whose partition 1 is an ext4
 * (mkfs.ext4 -d at an offset) holding a static busybox as /sbin/init, and a
 * small initramfs that loads the Debian kernel's virtio and ext4 modules,
 * mounts the root= partition and switch_roots into it, as a distribution's
 * initramfs does. So the disk under test is really the root filesystem.
 */
import { execFile } from "node:child_process";
import { promises as fs } from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import type { BootKernel } from "./boot-kernel.js";

const run = promisify(execFile);

const INIT_RAMFS = `#!/bin/busybox sh
B=/bin/busybox
$B mkdir -p /dev /proc /newroot
$B mount -t devtmpfs dev /dev
$B mount -t proc proc /proc
for m in $($B cat /modules.order); do $B insmod /modules/$m || echo "initramfs: insmod $m failed"; done
root=
for x in $($B cat /proc/cmdline); do case $x in root=*) root=\${x#root=} ;; esac; done
i=0
while [ ! -b "$root" ] && [ $i -lt 100 ]; do $B sleep 0.1; i=$((i+1)); done
if ! $B mount -t ext4 -o ro "$root" /newroot; then echo "initramfs: cannot mount root '$root'"; $B poweroff -f; fi
$B umount /proc
$B umount /dev
exec $B switch_root /newroot /sbin/init
`;

/**
 * The recovered system's init: says who it is on the serial console, then
 * powers off, or stays up when the kernel command line has lifeboat.stay.
 */
function rootInit(message: string): string {
  return `#!/bin/busybox sh
B=/bin/busybox
$B mount -t devtmpfs dev /dev
$B mount -t proc proc /proc
echo "${message} $($B cat /etc/hostname)" > /dev/ttyS0
case " $($B cat /proc/cmdline) " in *" lifeboat.stay "*) exec $B sleep 100000 ;; esac
$B poweroff -f
`;
}

/** Writes `work`/initrd.cpio (uncompressed newc) for `kernel`. */
export async function makeBootInitramfs(work: string, kernel: BootKernel, busybox: string): Promise<string> {
  const dir = path.join(work, "initramfs");
  await fs.mkdir(path.join(dir, "bin"), { recursive: true });
  await fs.mkdir(path.join(dir, "modules"));
  await fs.copyFile(busybox, path.join(dir, "bin/busybox"));
  await fs.chmod(path.join(dir, "bin/busybox"), 0o755);
  await fs.writeFile(path.join(dir, "init"), INIT_RAMFS, { mode: 0o755 });
  for (const m of kernel.modules) await fs.copyFile(m, path.join(dir, "modules", path.basename(m)));
  await fs.writeFile(
    path.join(dir, "modules.order"),
    kernel.modules.map((m) => path.basename(m)).join("\n") + "\n",
  );
  const out = path.join(work, "initrd.cpio");
  await run("sh", ["-c", 'cd "$1" && find . | cpio -o -H newc --quiet > "$2"', "sh", dir, out]);
  return out;
}

/**
 * Writes `work`/disk.img (`sizeMiB`, partition 1 from 1 MiB to the end, ext4)
 * whose init prints `message` and the hostname `hostname`, and powers off.
 */
export async function makeRecoveredDisk(
  work: string,
  busybox: string,
  opts: { message: string; hostname: string; sizeMiB?: number },
): Promise<{ path: string; sizeBytes: number }> {
  const root = path.join(work, "rootfs");
  for (const d of ["bin", "sbin", "etc", "dev", "proc", "sys", "tmp"])
    await fs.mkdir(path.join(root, d), { recursive: true });
  await fs.copyFile(busybox, path.join(root, "bin/busybox"));
  await fs.chmod(path.join(root, "bin/busybox"), 0o755);
  await fs.writeFile(path.join(root, "sbin/init"), rootInit(opts.message), { mode: 0o755 });
  await fs.writeFile(path.join(root, "etc/hostname"), `${opts.hostname}\n`);
  await fs.writeFile(path.join(root, "etc/fstab"), "/dev/vda1 / ext4 defaults 0 1\n");
  await fs.writeFile(
    path.join(root, "etc/os-release"),
    'ID=lifeboat-test\nPRETTY_NAME="Lifeboat boot test"\n',
  );
  const sizeMiB = opts.sizeMiB ?? 64;
  const disk = path.join(work, "disk.img");
  const fh = await fs.open(disk, "w");
  await fh.truncate(sizeMiB << 20);
  await fh.close();
  await run("sh", ["-c", 'echo "start=2048, type=83" | sfdisk -q "$1"', "sh", disk]);
  await run("mkfs.ext4", ["-q", "-F", "-E", `offset=${1 << 20}`, "-d", root, disk, `${sizeMiB - 1}M`]);
  return { path: disk, sizeBytes: sizeMiB << 20 };
}
