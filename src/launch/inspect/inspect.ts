import { isLifeboatError } from "../../base/index.js";
import { type DiskLayout, ReaderPool, describeFs, readLayout } from "./disk-layout.js";
import { type ServerFilesystem, matchEntry } from "./fstab.js";
import type { ProfileName } from "./profiles.js";
import type { DiskReport, InspectReport, Problem } from "./report.js";
import { type SystemFacts, inspectSystem, looksLikeRoot } from "./system.js";
import { systemProblems } from "./verdicts.js";

export const NO_OS = "no operating system found on this disk";

/**
 * Inspects the disks of one server (raw images or block devices, in the order
 * the server sees them) for a launch on the platform of `profile`: partition
 * tables, filesystems, the installed system on them (OS release, kernels and
 * the drivers in each initramfs, boot loader, fstab across all the disks).
 * Reads only; an unreadable or damaged image gives problems in the report,
 * not an exception. Throws only for an image it cannot open at all
 * (LAUNCH_IMAGE_UNREADABLE).
 */
export async function inspectDisks(paths: string[], opts: { profile: ProfileName }): Promise<InspectReport> {
  const layouts: DiskLayout[] = [];
  for (const [i, p] of paths.entries()) layouts.push(await readLayout(p, i));
  const all = layouts.flatMap((l) => l.filesystems);
  const pool = new ReaderPool(layouts);
  try {
    const unreadable = new Map<ServerFilesystem, Problem>();
    const systems: SystemFacts[] = [];
    for (const fs of all) {
      if (!["ext2", "ext3", "ext4", "xfs"].includes(fs.type)) continue;
      let isRoot = false;
      try {
        isRoot = await looksLikeRoot(await pool.get(fs));
        if (isRoot) systems.push(await inspectSystem(fs, all, pool, paths));
      } catch (err) {
        // Whatever an image does to the tools reading it ends here as a problem, never as a crash.
        const e = isLifeboatError(err) ? err : null;
        unreadable.set(fs, {
          code: e?.code ?? "LAUNCH_FS_UNREADABLE",
          severity: isRoot ? "error" : "warning",
          message: `${isRoot ? "cannot inspect the installed system: " : ""}${e?.message ?? `cannot read ${describeFs(fs, paths[fs.disk]!)}: ${String(err)}`}`,
          remedy: e?.hint || "check the filesystem with fsck -n on a copy of the image",
        });
      }
    }
    const disks = layouts.map((l) => diskReport(l, systems, unreadable, all, opts.profile));
    const problems = disks.flatMap((d) => d.problems);
    if (systems.length === 0) {
      problems.push({
        code: "LAUNCH_NO_OS",
        severity: "error",
        message:
          paths.length === 1
            ? `${NO_OS} (${paths[0]})`
            : `no operating system found on any of the server's ${paths.length} disks`,
        remedy:
          "inspect the server's boot disk: check that the right disks were replicated and that the image is not empty or damaged",
      });
    }
    const ready = systems.length > 0 && !problems.some((p) => p.severity === "error");
    const errors = problems.filter((p) => p.severity === "error").length;
    const verdict = ready
      ? `ready to boot on profile ${opts.profile}`
      : systems.length === 0
        ? paths.length === 1
          ? NO_OS
          : "no operating system found on the server's disks"
        : `not ready for profile ${opts.profile}: ${errors} problem${errors === 1 ? "" : "s"}`;
    return { profile: opts.profile, ready, verdict, disks, problems };
  } finally {
    await pool.closeAll();
  }
}

function diskReport(
  l: DiskLayout,
  systems: SystemFacts[],
  unreadable: Map<ServerFilesystem, Problem>,
  all: ServerFilesystem[],
  profile: ProfileName,
): DiskReport {
  const mine = systems.filter((s) => s.root.disk === l.index);
  const problems = [...l.problems, ...l.filesystems.flatMap((f) => unreadable.get(f) ?? [])];
  for (const s of mine) {
    problems.push(...systemProblems(s, profile, describeFs(s.root, l.path)));
    const rootArg = s.bootloader?.rootArg;
    if (
      rootArg &&
      matchEntry({ spec: rootArg, mountPoint: "/", type: "auto", options: [] }, all).status === "unmatched"
    )
      problems.push({
        code: "LAUNCH_BOOT_ROOT_UNMATCHED",
        severity: "error",
        message: `the boot loader passes root=${rootArg}, which matches no filesystem on the server's disks`,
        remedy:
          "regenerate the boot loader configuration on the source server (update-grub, or grub2-mkconfig) and replicate again",
      });
  }
  const s = mine[0];
  const ready = s !== undefined && !problems.some((p) => p.severity === "error");
  const verdict = !s
    ? l.filesystems.length === 0
      ? `${NO_OS} (no partition table or filesystem recognised)`
      : `${NO_OS} (${l.filesystems.map((f) => f.type).join(", ")}: a data disk)`
    : ready
      ? `${s.os?.prettyName ?? s.os?.name ?? "Linux"}: ready to boot on profile ${profile}`
      : `${s.os?.prettyName ?? s.os?.name ?? "Linux"}: not ready for profile ${profile}`;
  return {
    index: l.index,
    path: l.path,
    sizeBytes: l.size,
    partitionTable: { type: l.table.type, ...(l.table.diskId ? { diskId: l.table.diskId } : {}) },
    partitions: l.table.partitions,
    filesystems: l.filesystems.map(({ partitionInfo: _p, disk: _d, ...f }) => ({
      ...f,
      root: mine.some((m) => m.root.offset === f.offset),
    })),
    os: s?.os ?? null,
    kernels: s?.kernels.map((k) => k.report) ?? [],
    bootloader: s?.bootloader ?? null,
    fstab: s?.fstab ?? null,
    verdict,
    ready,
    problems,
  };
}
