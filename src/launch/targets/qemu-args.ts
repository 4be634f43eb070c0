/**
 * The qemu-system-x86_64 command line of the QEMU target. No display, no
 * monitor, no default devices; the serial console goes to a file the target
 * follows; the disks are virtio-blk in index order, raw, the first one
 * bootable; the network is absent unless user-mode networking is asked for,
 * and then restricted (no route out of the guest).
 */
import type { LaunchedDisk } from "./types.js";

export type Accel = "kvm" | "tcg";

export interface QemuMachine {
  accel: Accel;
  memoryMiB: number;
  cpus: number;
  disks: LaunchedDisk[];
  serialLog: string;
  network: "none" | "user";
  name: string;
  kernel?: string;
  initrd?: string;
  append?: string;
}

export function qemuArgs(m: QemuMachine): string[] {
  const args = [
    "-name",
    opt(m.name),
    "-accel",
    m.accel,
    // KVM passes the host's CPU through; TCG emulates every feature it has, so
    // that systems built for x86-64-v2 or later still boot.
    "-cpu",
    m.accel === "kvm" ? "host" : "max",
    "-m",
    String(m.memoryMiB),
    "-smp",
    String(m.cpus),
    "-nodefaults",
    "-display",
    "none",
    "-vga",
    "std",
    "-monitor",
    "none",
    "-no-reboot",
    "-chardev",
    `file,id=serial0,path=${opt(m.serialLog)}`,
    "-serial",
    "chardev:serial0",
  ];
  const disks = [...m.disks].sort((a, b) => a.index - b.index);
  for (const [n, d] of disks.entries()) {
    args.push("-drive", `file=${opt(d.path)},format=raw,if=none,id=disk${d.index}`);
    // The firmware boots the first disk; a direct kernel boot takes boot index 0 itself.
    const boot = n === 0 && !m.kernel ? ",bootindex=0" : "";
    args.push("-device", `virtio-blk-pci,drive=disk${d.index}${boot}`);
  }
  args.push("-nic", m.network === "user" ? "user,model=virtio-net-pci,restrict=on" : "none");
  if (m.kernel) args.push("-kernel", m.kernel);
  if (m.initrd) args.push("-initrd", m.initrd);
  if (m.append) args.push("-append", m.append);
  return args;
}

/** A value inside a QEMU option string: commas are doubled. */
function opt(value: string): string {
  return value.replace(/,/g, ",,");
}
