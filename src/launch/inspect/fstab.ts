import type { Filesystem } from "./filesystems.js";
import type { Partition } from "./partitions.js";

export interface FstabEntry {
  spec: string;
  mountPoint: string;
  type: string;
  options: string[];
}

/** A filesystem of the server, with where it lives. */
export interface ServerFilesystem extends Filesystem {
  disk: number;
  partitionInfo?: Partition;
}

export interface FstabMatch {
  entry: FstabEntry;
  /** matched: found by UUID/LABEL/PARTUUID/PARTLABEL; device: found by a device name, which the target may name differently; unverified: LVM or MD, not checked; unmatched. */
  status: "matched" | "device" | "unverified" | "unmatched";
  /** The disk index and partition (or whole disk) holding the match. */
  disk?: number;
  partition?: number;
  /** The entry need not mount for the system to boot (nofail or noauto). */
  optional: boolean;
}

const VIRTUAL = new Set([
  "proc",
  "sysfs",
  "tmpfs",
  "devpts",
  "devtmpfs",
  "securityfs",
  "cgroup",
  "cgroup2",
  "debugfs",
  "efivarfs",
  "hugetlbfs",
  "mqueue",
  "pstore",
  "bpf",
  "tracefs",
  "configfs",
  "fusectl",
  "binfmt_misc",
  "autofs",
  "overlay",
  "nfs",
  "nfs4",
  "cifs",
  "smbfs",
  "smb3",
  "glusterfs",
  "ceph",
  "9p",
  "sshfs",
  "fuse.sshfs",
  "davfs",
  "none",
]);
const MAX_ENTRIES = 1000;

export function parseFstab(text: string): FstabEntry[] {
  const out: FstabEntry[] = [];
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (!line || line.startsWith("#")) continue;
    const f = line.split(/\s+/);
    if (f.length < 2) continue;
    const unescape = (s: string) =>
      s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
    out.push({
      spec: unescape(f[0]!),
      mountPoint: unescape(f[1]!),
      type: f[2] ?? "auto",
      options: (f[3] ?? "defaults").split(","),
    });
    if (out.length >= MAX_ENTRIES) break;
  }
  return out;
}

/** Entries that name a local block device (not proc, tmpfs, network filesystems or bind mounts). */
export function needsDevice(e: FstabEntry): boolean {
  if (VIRTUAL.has(e.type) || e.type.startsWith("fuse")) return false;
  if (e.options.includes("bind") || e.options.includes("rbind")) return false;
  if (/^[^/]+:/.test(e.spec) || e.spec.startsWith("//")) return false;
  // A path outside /dev is a file on a mounted filesystem (a swap file, a loop-mounted image).
  if (e.spec.startsWith("/") && !e.spec.startsWith("/dev/")) return false;
  return !["none", "proc", "tmpfs", "sysfs", "devpts"].includes(e.spec);
}

/** Finds the filesystem (or swap area) of the server's disks that an fstab entry names. */
export function matchEntry(e: FstabEntry, fss: ServerFilesystem[]): FstabMatch {
  const optional = e.options.includes("nofail") || e.options.includes("noauto");
  const hit = (f: ServerFilesystem | undefined, status: FstabMatch["status"] = "matched"): FstabMatch =>
    f
      ? {
          entry: e,
          status,
          disk: f.disk,
          ...(f.partition !== undefined ? { partition: f.partition } : {}),
          optional,
        }
      : { entry: e, status: "unmatched", optional };
  const [key, value] = tagOf(e.spec);
  const eq = (a: string | undefined, b: string) => a !== undefined && a.toLowerCase() === b.toLowerCase();
  switch (key) {
    case "UUID":
      return hit(fss.find((f) => eq(f.uuid, value)));
    case "LABEL":
      return hit(fss.find((f) => f.label === value));
    case "PARTUUID":
      return hit(fss.find((f) => eq(f.partitionInfo?.partUuid, value)));
    case "PARTLABEL":
      return hit(fss.find((f) => f.partitionInfo?.name === value));
  }
  if (/^\/dev\/(mapper\/|md|dm-|[^/]+\/[^/]+$)/.test(e.spec))
    return { entry: e, status: "unverified", optional };
  const pos = devicePosition(e.spec);
  if (pos)
    return hit(
      fss.find((f) => f.disk === pos.disk && (f.partition ?? 0) === pos.partition),
      "device",
    );
  return { entry: e, status: "unmatched", optional };
}

function tagOf(spec: string): [string, string] {
  const m = /^(UUID|LABEL|PARTUUID|PARTLABEL)=("?)(.*)\2$/.exec(spec);
  if (m) return [m[1]!, m[3]!];
  const d = /^\/dev\/disk\/by-(uuid|label|partuuid|partlabel)\/(.+)$/.exec(spec);
  if (d) return [d[1]!.toUpperCase(), d[2]!.replace(/\\x20/g, " ")];
  return ["", spec];
}

/** /dev/sdb2, /dev/vda1, /dev/xvda, /dev/nvme1n1p3: the disk's position and the partition (0: whole disk). */
function devicePosition(spec: string): { disk: number; partition: number } | null {
  const sd = /^\/dev\/(?:sd|vd|xvd|hd)([a-z]+)(\d*)$/.exec(spec);
  if (sd) {
    let disk = 0;
    for (const c of sd[1]!) disk = disk * 26 + (c.charCodeAt(0) - 96);
    return { disk: disk - 1, partition: Number(sd[2] || 0) };
  }
  // On platforms with NVMe disks each disk is a controller of its own: nvme0n1, nvme1n1.
  const nv = /^\/dev\/nvme(\d+)n1(?:p(\d+))?$/.exec(spec);
  if (nv) return { disk: Number(nv[1]), partition: Number(nv[2] ?? 0) };
  return null;
}
