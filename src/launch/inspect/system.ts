import { isLifeboatError } from "../../base/index.js";
import { type ReaderPool, describeFs } from "./disk-layout.js";
import type { FsReader } from "./fs-reader.js";
import { type ServerFilesystem, matchEntry, needsDevice, parseFstab } from "./fstab.js";
import { type GrubConfig, compareVersions, parseBlsEntry, parseGrubConfig } from "./grub.js";
import { type KernelFacts, inspectKernels } from "./kernels.js";
import { type OsInfo, parseOsRelease } from "./os-release.js";
import type { BootloaderReport, FstabReport, Problem } from "./report.js";

const MAX_SMALL = 1 << 20;
const MAX_GRUB = 4 << 20;
const KERNEL_FILE = /^(?:vmlinuz|vmlinux|bzImage|Image|kernel)-(.+)$/;

/** What inspect learnt about one installed system, rooted at `root`. */
export interface SystemFacts {
  root: ServerFilesystem;
  os: OsInfo | null;
  fstab: FstabReport | null;
  kernels: KernelFacts[];
  bootloader: BootloaderReport | null;
  problems: Problem[];
}

/** Reads a file, treating "cannot read" like "absent" but keeping the reason as a warning. */
async function readText(r: FsReader, path: string, max: number, problems: Problem[]): Promise<string | null> {
  try {
    return (await r.readFile(path, max))?.toString("utf8") ?? null;
  } catch (err) {
    if (!isLifeboatError(err)) throw err;
    problems.push({ code: err.code, severity: "warning", message: err.message, remedy: err.hint });
    return null;
  }
}

/** True when `r` holds an installed Linux system (an /etc with os-release or fstab). */
export async function looksLikeRoot(r: FsReader): Promise<boolean> {
  const etc = await r.list("/etc");
  return etc !== null && etc.some((e) => e.name === "os-release" || e.name === "fstab");
}

export async function inspectSystem(
  root: ServerFilesystem,
  all: ServerFilesystem[],
  pool: ReaderPool,
  diskPaths: string[],
): Promise<SystemFacts> {
  const problems: Problem[] = [];
  const rr = await pool.get(root);
  const osText =
    (await readText(rr, "/etc/os-release", 64 << 10, problems)) ??
    (await readText(rr, "/usr/lib/os-release", 64 << 10, problems));
  const os = osText === null ? null : parseOsRelease(osText);
  const fstabText = await readText(rr, "/etc/fstab", MAX_SMALL, problems);
  const entries = fstabText === null ? [] : parseFstab(fstabText);
  const fstab: FstabReport | null =
    fstabText === null
      ? null
      : { path: "/etc/fstab", entries: entries.filter(needsDevice).map((e) => matchEntry(e, all)) };
  if (fstab === null)
    problems.push({
      code: "LAUNCH_FSTAB_MISSING",
      severity: "warning",
      message: `${describeFs(root, diskPaths[root.disk]!)} has no /etc/fstab`,
      remedy:
        "nothing to do if the system mounts its filesystems otherwise (systemd mount units); else restore /etc/fstab",
    });
  const mounted = (mp: string): ServerFilesystem | undefined => {
    const m = fstab?.entries.find((x) => x.entry.mountPoint === mp && x.disk !== undefined);
    return m ? all.find((f) => f.disk === m.disk && f.partition === m.partition) : undefined;
  };

  // /boot: a filesystem of its own when fstab mounts one there, else the root's /boot.
  const bootFs = mounted("/boot") ?? root;
  const bootDir = bootFs === root ? "/boot" : "/";
  let kernels: KernelFacts[] = [];
  let boot: FsReader | null = null;
  try {
    boot = await pool.get(bootFs);
    kernels = await inspectKernels(boot, bootDir, rr);
  } catch (err) {
    if (!isLifeboatError(err)) throw err;
    problems.push({
      code: err.code,
      severity: "error",
      message: `cannot read /boot: ${err.message}`,
      remedy: err.hint,
    });
  }

  const esp =
    mounted("/boot/efi") ??
    mounted("/efi") ??
    all.find((f) => f.disk === root.disk && f.type === "vfat" && f.partitionInfo?.esp);
  const bootloader = boot ? await findGrub(boot, bootDir, bootFs, esp, pool, problems) : null;
  if (bootloader && kernels.length > 0) {
    const named =
      bootloader.defaultKernel && kernels.find((k) => k.report.version === bootloader.defaultKernel);
    (named || kernels[0]!).report.default = true;
  } else if (kernels.length > 0) kernels[0]!.report.default = true;
  if (bootloader?.blscfg && boot) {
    const bls = await blsDefault(boot, bootDir, problems);
    if (bls) {
      bootloader.defaultKernel = bls.version;
      if (bls.rootArg) bootloader.rootArg = bls.rootArg;
      for (const k of kernels) k.report.default = k.report.version === bls.version;
    }
  }
  return { root, os, fstab, kernels, bootloader, problems };
}

async function findGrub(
  boot: FsReader,
  bootDir: string,
  bootFs: ServerFilesystem,
  esp: ServerFilesystem | undefined,
  pool: ReaderPool,
  problems: Problem[],
): Promise<BootloaderReport | null> {
  const prefix = bootDir === "/" ? "" : bootDir;
  const found: { path: string; fs: ServerFilesystem; cfg: GrubConfig }[] = [];
  for (const p of [`${prefix}/grub/grub.cfg`, `${prefix}/grub2/grub.cfg`]) {
    const t = await readText(boot, p, MAX_GRUB, problems);
    if (t !== null) found.push({ path: p, fs: bootFs, cfg: parseGrubConfig(t) });
  }
  if (esp) {
    try {
      const er = await pool.get(esp);
      for (const d of (await er.list("/EFI")) ?? []) {
        if (d.kind !== "dir" || d.name.includes("/")) continue;
        const t = await readText(er, `/EFI/${d.name}/grub.cfg`, MAX_GRUB, problems);
        if (t !== null) found.push({ path: `/EFI/${d.name}/grub.cfg`, fs: esp, cfg: parseGrubConfig(t) });
      }
    } catch (err) {
      if (!isLifeboatError(err)) throw err;
      problems.push({ code: err.code, severity: "warning", message: err.message, remedy: err.hint });
    }
  }
  if (found.length === 0) return null;
  const main = found.find((f) => f.cfg.kernels.length > 0 || f.cfg.blscfg) ?? found[0]!;
  const table = bootFs.partitionInfo ? "partitioned" : "none";
  const firmware: BootloaderReport["firmware"] =
    esp && found.some((f) => f.fs === esp)
      ? main.fs === esp || table === "none"
        ? "efi"
        : "bios+efi"
      : table === "none"
        ? "unknown"
        : "bios";
  const first = main.cfg.kernels[0];
  const defaultKernel = first ? KERNEL_FILE.exec(first)?.[1] : undefined;
  return {
    type: "grub2",
    config: main.path,
    on: {
      disk: main.fs.disk,
      ...(main.fs.partition !== undefined ? { partition: main.fs.partition } : {}),
      fsType: main.fs.type,
    },
    firmware,
    blscfg: main.cfg.blscfg,
    ...(defaultKernel ? { defaultKernel } : {}),
    ...(main.cfg.rootArg ? { rootArg: main.cfg.rootArg } : {}),
  };
}

/** With blscfg, GRUB boots the entry of the newest kernel first. */
async function blsDefault(
  boot: FsReader,
  bootDir: string,
  problems: Problem[],
): Promise<{ version: string; rootArg?: string } | null> {
  const dir = `${bootDir === "/" ? "" : bootDir}/loader/entries`;
  const entries = ((await boot.list(dir)) ?? [])
    .filter((e) => e.kind === "file" && e.name.endsWith(".conf"))
    .slice(0, 200);
  let best: { version: string; rootArg?: string } | null = null;
  for (const e of entries) {
    const t = await readText(boot, `${dir}/${e.name}`, 64 << 10, problems);
    const bls = t === null ? {} : parseBlsEntry(t);
    const version = bls.kernel ? KERNEL_FILE.exec(bls.kernel)?.[1] : undefined;
    if (!version || version.includes("rescue")) continue;
    if (!best || compareVersions(version, best.version) > 0)
      best = { version, ...(bls.rootArg ? { rootArg: bls.rootArg } : {}) };
  }
  return best;
}
