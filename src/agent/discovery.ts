/**
 * Discovery: what the agent reports about its server — block devices from
 * /sys/block (sizes, partitions, mounts, filesystem types), the OS release
 * and the kernel. Everything comes from sysfs, procfs and a look at each
 * device's first 68 KiB; no external program runs.
 */
import { promises as fs } from "node:fs";
import os from "node:os";
import path from "node:path";

/** A filesystem mounted from a device. */
export interface MountEntry {
  mountPoint: string;
  fsType: string;
  readOnly: boolean;
}

export interface PartitionInfo {
  name: string;
  path: string;
  major: number;
  minor: number;
  /** Byte offset of the partition on its disk. */
  startBytes: number;
  sizeBytes: number;
  /** From the mount table, else recognised on the device; null when unknown. */
  fsType: string | null;
  mounts: MountEntry[];
}

export interface BlockDeviceInfo {
  name: string;
  /** /dev/<name> */
  path: string;
  major: number;
  minor: number;
  /** disk (hardware or virtio), loop, dm (device-mapper), md (software RAID), zram, other */
  kind: "disk" | "loop" | "dm" | "md" | "zram" | "other";
  sizeBytes: number;
  removable: boolean;
  readOnly: boolean;
  logicalBlockSize: number;
  /** A loop device's backing file, when it has one. */
  backingFile: string | null;
  fsType: string | null;
  mounts: MountEntry[];
  partitions: PartitionInfo[];
}

export interface HostInfo {
  hostname: string;
  /** uname -r */
  kernel: string;
  arch: string;
  /** From /etc/os-release (or /usr/lib/os-release); null fields when absent. */
  os: { id: string | null; versionId: string | null; prettyName: string | null };
}

export interface DiscoveryOptions {
  /** Where sysfs's block directory is (default /sys/block). */
  sysBlock?: string;
  /** Text of /proc/self/mountinfo (default: read it). */
  mountinfo?: string;
  /** Leave out devices of size 0 (detached loop devices, empty drives); default true. */
  skipEmpty?: boolean;
}

async function readText(p: string): Promise<string | null> {
  try {
    return (await fs.readFile(p, "utf8")).trim();
  } catch {
    return null;
  }
}

async function readNumber(p: string, fallback = 0): Promise<number> {
  const t = await readText(p);
  return t === null || t === "" ? fallback : Number(t);
}

function kindOf(name: string): BlockDeviceInfo["kind"] {
  if (name.startsWith("loop")) return "loop";
  if (name.startsWith("dm-")) return "dm";
  if (name.startsWith("md")) return "md";
  if (name.startsWith("zram")) return "zram";
  if (/^(sd|vd|xvd|nvme|hd|mmcblk)/.test(name)) return "disk";
  return "other";
}

/** Mounts by "major:minor", from mountinfo. */
function mountsByDev(mountinfo: string): Map<string, MountEntry[]> {
  const out = new Map<string, MountEntry[]>();
  for (const line of mountinfo.split("\n")) {
    const f = line.split(" ");
    const sep = f.indexOf("-", 6);
    if (sep < 0 || f.length < sep + 4) continue;
    const list = out.get(f[2]!) ?? [];
    list.push({
      mountPoint: f[4]!.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))),
      fsType: f[sep + 1]!,
      readOnly: f[5]!.split(",").includes("ro") || f[sep + 3]!.split(",").includes("ro"),
    });
    out.set(f[2]!, list);
  }
  return out;
}

/**
 * Recognises a few on-disk formats by their magic numbers: ext2/3/4, XFS,
 * btrfs, swap, LVM physical volume, Linux RAID (1.1/1.2 superblocks), a
 * partition table (MBR or GPT). Null when none matches or the device cannot be read.
 */
export async function sniffFormat(devicePath: string): Promise<string | null> {
  let fh: fs.FileHandle | undefined;
  try {
    fh = await fs.open(devicePath, "r");
    const b = Buffer.alloc(68 << 10);
    const { bytesRead } = await fh.read(b, 0, b.length, 0);
    const at = (off: number, s: string) =>
      bytesRead >= off + s.length && b.toString("latin1", off, off + s.length) === s;
    if (at(0, "XFSB")) return "xfs";
    if (bytesRead >= 1082 && b.readUInt16LE(1080) === 0xef53) {
      const compat = b.readUInt32LE(1116);
      const incompat = b.readUInt32LE(1120);
      if (incompat & 0x2c0) return "ext4"; // extents, 64bit or flex_bg
      return compat & 0x4 ? "ext3" : "ext2"; // has_journal
    }
    if (at(65600, "_BHRfS_M")) return "btrfs";
    if (at(4086, "SWAPSPACE2")) return "swap";
    if (at(512 + 24, "LVM2 001") || at(512, "LABELONE")) return "LVM2_member";
    if (bytesRead >= 4100 && b.readUInt32LE(4096) === 0xa92b4efc) return "linux_raid_member";
    if (at(512, "EFI PART")) return "gpt";
    if (bytesRead >= 512 && b[510] === 0x55 && b[511] === 0xaa) return "dos";
    return null;
  } catch {
    return null;
  } finally {
    await fh?.close();
  }
}

/** The server's block devices, each with its partitions and mounts, sorted by name. */
export async function discoverBlockDevices(opts: DiscoveryOptions = {}): Promise<BlockDeviceInfo[]> {
  const sysBlock = opts.sysBlock ?? "/sys/block";
  const mounts = mountsByDev(opts.mountinfo ?? (await fs.readFile("/proc/self/mountinfo", "utf8")));
  const out: BlockDeviceInfo[] = [];
  for (const name of (await fs.readdir(sysBlock)).sort()) {
    const dir = path.join(sysBlock, name);
    const dev = await readText(path.join(dir, "dev"));
    if (!dev) continue;
    const sizeBytes = (await readNumber(path.join(dir, "size"))) * 512;
    if (sizeBytes === 0 && (opts.skipEmpty ?? true)) continue;
    const [major, minor] = dev.split(":").map(Number) as [number, number];
    const partitions: PartitionInfo[] = [];
    for (const sub of (await fs.readdir(dir)).sort()) {
      if ((await readText(path.join(dir, sub, "partition"))) === null) continue;
      const pdev = (await readText(path.join(dir, sub, "dev"))) ?? "0:0";
      const [pmaj, pmin] = pdev.split(":").map(Number) as [number, number];
      const pm = mounts.get(pdev) ?? [];
      partitions.push({
        name: sub,
        path: `/dev/${sub}`,
        major: pmaj,
        minor: pmin,
        startBytes: (await readNumber(path.join(dir, sub, "start"))) * 512,
        sizeBytes: (await readNumber(path.join(dir, sub, "size"))) * 512,
        fsType: pm[0]?.fsType ?? (await sniffFormat(`/dev/${sub}`)),
        mounts: pm,
      });
    }
    const dm = mounts.get(dev) ?? [];
    out.push({
      name,
      path: `/dev/${name}`,
      major,
      minor,
      kind: kindOf(name),
      sizeBytes,
      removable: (await readNumber(path.join(dir, "removable"))) === 1,
      readOnly: (await readNumber(path.join(dir, "ro"))) === 1,
      logicalBlockSize: await readNumber(path.join(dir, "queue", "logical_block_size"), 512),
      backingFile: await readText(path.join(dir, "loop", "backing_file")),
      fsType: dm[0]?.fsType ?? (sizeBytes > 0 ? await sniffFormat(`/dev/${name}`) : null),
      mounts: dm,
      partitions,
    });
  }
  return out;
}

/** Parses os-release text (KEY=value lines, values optionally quoted). */
export function parseOsRelease(text: string): HostInfo["os"] {
  const kv = new Map<string, string>();
  for (const line of text.split("\n")) {
    const m = /^([A-Z_][A-Z0-9_]*)=(.*)$/.exec(line.trim());
    if (!m) continue;
    let v = m[2]!;
    if (/^(".*"|'.*')$/.test(v)) v = v.slice(1, -1).replace(/\\(["\\$`])/g, "$1");
    kv.set(m[1]!, v);
  }
  return {
    id: kv.get("ID") ?? null,
    versionId: kv.get("VERSION_ID") ?? null,
    prettyName: kv.get("PRETTY_NAME") ?? null,
  };
}

/** Host name, kernel release, architecture and OS release. */
export async function discoverHost(): Promise<HostInfo> {
  const text = (await readText("/etc/os-release")) ?? (await readText("/usr/lib/os-release")) ?? "";
  return { hostname: os.hostname(), kernel: os.release(), arch: os.arch(), os: parseOsRelease(text) };
}
