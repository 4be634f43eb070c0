import { type Clock, LifeboatError, systemClock } from "../../base/index.js";
import type { DiskReport, InspectReport, ProfileName } from "../inspect/index.js";
import { type AddressMapping, checkMappingOptions } from "./address-map.js";
import { removeAgentIdentity } from "./agent-identity.js";
import { ChangeLog } from "./change-log.js";
import { type CopyFilesystem, CopyMounts, assertCanMount } from "./copy-mounts.js";
import { type Converted, convertInitramfs } from "./convert.js";
import { mapNetwork } from "./network-mapping.js";

export interface PrepareCopyOptions {
  jobId: string;
  jobType: "drill" | "recovery";
  /** New hostname for the copy (drill default chosen by the job, e.g. "<name>-drill"); undefined: keep. */
  hostname?: string;
  /** Address mapping: every occurrence of `from` in the network configuration becomes `to`. */
  addresses?: AddressMapping[];
  /** Regenerate the initramfs of the copy for this boot profile when its modules are on disk but not in the initramfs (--convert). */
  convert?: ProfileName;
  log: (level: "info" | "warn" | "error", message: string) => void;
  /** The protected server, for the launched-copy marker; default: what the copy's agent configuration names. */
  server?: { name: string; id?: string };
  /** Where the private mount directory is made (default: the system's temporary directory). */
  tmpDir?: string;
  /** Stops the preparation (mounts are still undone). */
  signal?: AbortSignal;
  clock?: Clock;
}

export interface PreparedCopy {
  /** One line per change made to the copy, as logged. */
  changes: string[];
  converted: Converted[];
}

/** One installed system of the copy: its root and the fstab filesystems on the server's disks, parents first. */
interface InstalledSystem {
  filesystems: CopyFilesystem[];
  /** The disk report whose kernels and fstab belong to this root. */
  disk: DiskReport;
  /** False for a second root on the same disk: inspect reported kernels for the first only. */
  primary: boolean;
}

const MOUNTABLE = new Set(["ext2", "ext3", "ext4", "xfs", "vfat"]);
/**
 * What a preparation reads or writes lives on these (besides the root): the
 * kernels and initramfs, /usr/lib/modules and the initramfs tools, /var/tmp
 * where they work. Data filesystems (a database's volumes) are left alone:
 * mounting them would only replay their journals and cost time.
 */
const NEEDED = new Set(["/boot", "/boot/efi", "/efi", "/usr", "/var", "/var/tmp"]);

/**
 * Makes a launched copy safe and fit to boot before it goes to a target,
 * working on the materialized images (never the repository): removes the
 * protected server's agent identity and leaves the launched-copy marker,
 * renames the host and maps its addresses, and with `convert` regenerates
 * initramfs images for the target's boot profile. Each change is one log line
 * and one entry of `changes`. Needs root (loop devices); the copy's
 * filesystems are always unmounted and detached before it returns or throws.
 * Disks without an installed system are left alone (a warning, no error).
 */
export async function prepareLaunchedCopy(
  disks: string[],
  report: InspectReport,
  opts: PrepareCopyOptions,
): Promise<PreparedCopy> {
  const log = new ChangeLog(opts.log);
  const addresses = opts.addresses ?? [];
  checkMappingOptions(opts.hostname, addresses);
  const systems = installedSystems(disks, report);
  if (systems.length === 0) {
    log.warn(
      "no installed system on the copy's disks: nothing to prepare (no agent identity removed, no host name or address changed)",
    );
    return { changes: [], converted: [] };
  }
  assertCanMount();
  const clock = opts.clock ?? systemClock;
  const converted: Converted[] = [];
  for (const s of systems) {
    opts.signal?.throwIfAborted();
    const mounts = await CopyMounts.create(opts.tmpDir, opts.signal);
    let problems: string[] = [];
    try {
      await mountSystem(mounts, s, log);
      await removeAgentIdentity(mounts.tree, log, {
        jobId: opts.jobId,
        jobType: opts.jobType,
        at: new Date(clock.now()),
        server: opts.server,
      });
      opts.signal?.throwIfAborted();
      await mapNetwork(mounts.tree, log, { hostname: opts.hostname, addresses });
      if (opts.convert !== undefined && s.primary)
        converted.push(
          ...(await convertInitramfs(mounts, log, s.disk.kernels, opts.convert, {
            clock,
            signal: opts.signal,
          })),
        );
    } finally {
      problems = await mounts.close();
      for (const p of problems) log.warn(`cleaning up: ${p}`);
    }
    // A copy still mounted somewhere must not go to a target (only reached when the work above succeeded).
    const stuck = problems.filter((p) => !p.startsWith("cannot remove"));
    if (stuck.length)
      throw new LifeboatError(
        "LAUNCH_COPY_UNMOUNT_FAILED",
        `the copy's filesystems could not all be released: ${stuck.join("; ")}`,
        {
          hint: "check what holds them (fuser -vm on the mount point, losetup -a) and release it before the disks are used",
        },
      );
  }
  return { changes: log.changes, converted };
}

function installedSystems(disks: string[], report: InspectReport): InstalledSystem[] {
  const out: InstalledSystem[] = [];
  const imageOf = (i: number) => disks[i] ?? report.disks[i]?.path ?? "";
  for (const d of report.disks) {
    d.filesystems
      .filter((f) => f.root)
      .forEach((root, n) => {
        const fss: CopyFilesystem[] = [
          { ...pick(root), image: imageOf(d.index), disk: d.index, mountPoint: "/" },
        ];
        if (n === 0)
          for (const e of d.fstab?.entries ?? []) {
            const mp = e.entry.mountPoint;
            if (e.disk === undefined || (e.status !== "matched" && e.status !== "device")) continue;
            if (!NEEDED.has(mp.replace(/\/+$/, "")) || e.entry.options.includes("noauto")) continue;
            const f = report.disks[e.disk]?.filesystems.find((x) => x.partition === e.partition);
            if (!f || !MOUNTABLE.has(f.type)) continue;
            // The same filesystem twice (a second loop device of it) is never mounted.
            if (fss.some((x) => x.disk === e.disk && x.offset === f.offset)) continue;
            fss.push({ ...pick(f), image: imageOf(e.disk), disk: e.disk, mountPoint: mp });
          }
        const depth = (p: string) => p.split("/").filter(Boolean).length;
        out.push({
          filesystems: fss.sort((a, b) => depth(a.mountPoint) - depth(b.mountPoint)),
          disk: d,
          primary: n === 0,
        });
      });
  }
  return out;
}

function pick(f: { offset: number; size: number; type: string; partition?: number }) {
  return { offset: f.offset, size: f.size, type: f.type, partition: f.partition };
}

async function mountSystem(mounts: CopyMounts, s: InstalledSystem, log: ChangeLog): Promise<void> {
  for (const f of s.filesystems) {
    const where = `disk ${f.disk}${f.partition === undefined ? "" : ` partition ${f.partition}`}`;
    if (await mounts.mount(f))
      log.info(`mounted the copy's ${f.mountPoint} (${f.type} on ${where}) read-write`);
    else
      log.warn(`the copy has no directory ${f.mountPoint} to mount ${f.type} on ${where} on; left unmounted`);
  }
}
