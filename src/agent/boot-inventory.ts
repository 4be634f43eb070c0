/**
 * The boot inventory: whether this server, as it is now, would boot on each
 * boot profile's platform. It reads the live system under a root directory
 * ("/", or a generated tree in tests) with the code `lifeboat inspect` uses on
 * disk images (kernels in /boot, each one's initramfs unpacked and listed,
 * modules.builtin, modules.dep) and judges it with the same verdicts, so the
 * console shows, before anyone needs a launch, what inspect would say of the
 * next PIT. fstab is not checked here: matching it needs the replicated disks.
 *
 * The result travels in the heartbeat as `inventory.boot`; its shape is
 * documented in docs/launch-readiness.md ("Readiness before disaster").
 */
import { isLifeboatError } from "../base/index.js";
import {
  BOOT_PROFILES,
  type FsReader,
  type KernelFacts,
  type OsInfo,
  PROFILE_NAMES,
  type ProfileName,
  type Problem,
  DirectoryReader,
  compareVersions,
  inspectKernels,
  kernelProblem,
  normalizeModule,
  parseBlsEntry,
  parseGrubConfig,
  parseOsRelease,
} from "../launch/inspect/index.js";

export const BOOT_INVENTORY_VERSION = 1;

export interface BootInventory {
  version: typeof BOOT_INVENTORY_VERSION;
  /** When the system was last read (ISO 8601); refreshed hourly while nothing changes. */
  checkedAt: string;
  os: OsInfo | null;
  bootloader: BootLoaderFacts | null;
  /** Newest first: the MAX_KERNELS newest, and the default one. */
  kernels: BootKernel[];
  /** The verdict for every profile, as inspect would give it for the default kernel. */
  profiles: Record<ProfileName, BootProfileVerdict>;
}

export interface BootLoaderFacts {
  type: "grub2";
  /** The configuration read, a path on this system. */
  config: string;
  blscfg: boolean;
  /** The kernel version the configuration boots by default, when it says. */
  defaultKernel?: string;
}

export interface BootKernel {
  version: string;
  path: string;
  /** The one the boot loader starts (its default entry when readable, else the newest). */
  default: boolean;
  initramfs: {
    path: string;
    sizeBytes: number;
    compression: string;
    moduleCount: number;
    /** The profiles' drivers it holds (normalised names), not every module. */
    drivers: string[];
  } | null;
  /** Whether /lib/modules/<version>/modules.builtin was found. */
  modulesBuiltin: boolean;
  /** The profiles' drivers built into the kernel. */
  builtinDrivers: string[];
  /** Why the initramfs could not be used, when it could not. */
  problem?: Problem;
  profiles: Record<ProfileName, { ready: boolean; missing: string[]; remedy?: string }>;
}

export interface BootProfileVerdict {
  ready: boolean;
  verdict: string;
  /** Errors make it not ready; warnings do not. */
  problems: Problem[];
}

/** Every driver some profile asks for, normalised: the only module names the inventory keeps. */
const PROFILE_DRIVERS = new Set(
  PROFILE_NAMES.flatMap((p) => BOOT_PROFILES[p].needs.flatMap((r) => r.anyOf.map(normalizeModule))),
);
const KERNEL_FILE = /^(?:vmlinuz|vmlinux|bzImage|Image|kernel)-(.+)$/;
const MAX_TEXT = 4 << 20;
const MAX_BLS_ENTRIES = 200;
/** The newest kernels reported and judged (the default one always is). */
export const MAX_KERNELS = 8;
const THIS_SYSTEM = "this system";

/** Reads the system under `root` and judges it for every profile. Never throws for what it finds. */
export async function collectBootInventory(opts: { root: string; now: number }): Promise<BootInventory> {
  const r = new DirectoryReader(opts.root, "the live system");
  const problems: Problem[] = [];
  const osText =
    (await readText(r, "/etc/os-release", problems)) ?? (await readText(r, "/usr/lib/os-release", problems));
  const os = osText === null ? null : parseOsRelease(osText);
  let kernels: KernelFacts[] = [];
  try {
    kernels = await inspectKernels(r, "/boot", r);
  } catch (err) {
    if (!isLifeboatError(err)) throw err;
    problems.push({
      code: err.code,
      severity: "error",
      message: `cannot read /boot: ${err.message}`,
      remedy: err.hint,
    });
  }
  const bootloader = await findBootloader(r, problems);
  const chosen = kernels.find((k) => k.report.version === bootloader?.defaultKernel) ?? kernels[0];
  if (chosen) chosen.report.default = true;
  // A server that kept every kernel it ever had still sends a heartbeat of a few kilobytes.
  kernels = kernels.filter((k, i) => i < MAX_KERNELS || k.report.default);
  const profiles = Object.fromEntries(
    PROFILE_NAMES.map((p) => [p, judge(p, os, kernels, bootloader, problems)]),
  ) as Record<ProfileName, BootProfileVerdict>;
  return {
    version: BOOT_INVENTORY_VERSION,
    checkedAt: new Date(opts.now).toISOString(),
    os,
    bootloader,
    kernels: kernels.map((k) => kernelOf(k, os)),
    profiles,
  };
}

/** inspect's verdict for one profile, less what needs the replicated disks (fstab, root=). */
function judge(
  profile: ProfileName,
  os: OsInfo | null,
  kernels: KernelFacts[],
  bootloader: BootLoaderFacts | null,
  readProblems: Problem[],
): BootProfileVerdict {
  const problems = [...readProblems];
  if (kernels.length === 0)
    problems.push({
      code: "LAUNCH_NO_KERNEL",
      severity: "error",
      message: `no kernel (vmlinuz-<version>) found in /boot of ${THIS_SYSTEM}`,
      remedy: "install a kernel, or mount /boot",
    });
  if (bootloader === null)
    problems.push({
      code: "LAUNCH_NO_BOOTLOADER",
      severity: "error",
      message: `no boot loader configuration (/boot/grub/grub.cfg, /boot/grub2/grub.cfg, or EFI/*/grub.cfg under /boot/efi) on ${THIS_SYSTEM}`,
      remedy: "run update-grub (Debian, Ubuntu) or grub2-mkconfig -o /boot/grub2/grub.cfg (RHEL, SUSE)",
    });
  for (const k of kernels) {
    const p = kernelProblem(k, profile, os);
    if (p) problems.push(p);
    else if (k.initramfsProblem) problems.push({ ...k.initramfsProblem, severity: "warning" });
  }
  const errors = problems.filter((p) => p.severity === "error").length;
  const ready = errors === 0;
  const def = kernels.find((k) => k.report.default);
  return {
    ready,
    verdict: ready
      ? `ready to boot on profile ${profile}${def ? ` (kernel ${def.report.version})` : ""}`
      : `not ready for profile ${profile}: ${errors} problem${errors === 1 ? "" : "s"}`,
    problems,
  };
}

function kernelOf(k: KernelFacts, os: OsInfo | null): BootKernel {
  const rep = k.report;
  const initramfs = rep.initramfs;
  return {
    version: rep.version,
    path: rep.path,
    default: rep.default,
    initramfs: initramfs && {
      path: initramfs.path,
      sizeBytes: initramfs.sizeBytes,
      compression: initramfs.compression,
      moduleCount: initramfs.moduleCount,
      drivers: [...k.initramfsModules].filter((m) => PROFILE_DRIVERS.has(m)).sort(),
    },
    modulesBuiltin: rep.builtinModules !== null,
    builtinDrivers: [...k.builtin].filter((m) => PROFILE_DRIVERS.has(m)).sort(),
    ...(k.initramfsProblem ? { problem: k.initramfsProblem } : {}),
    profiles: Object.fromEntries(
      PROFILE_NAMES.map((p) => {
        const v = rep.profiles[p];
        const remedy = v.ready ? undefined : kernelProblem(k, p, os)?.remedy;
        return [p, { ready: v.ready, missing: v.missing, ...(remedy ? { remedy } : {}) }];
      }),
    ) as BootKernel["profiles"],
  };
}

/**
 * The GRUB 2 configuration as inspect finds it on a disk, here on the live
 * system: /boot/grub, /boot/grub2, then the EFI system partition mounted at
 * /boot/efi or /efi. The default kernel is the first `linux` line's, or with
 * blscfg the newest Boot Loader Specification entry's.
 */
async function findBootloader(r: FsReader, problems: Problem[]): Promise<BootLoaderFacts | null> {
  const candidates = ["/boot/grub/grub.cfg", "/boot/grub2/grub.cfg"];
  for (const esp of ["/boot/efi", "/efi"])
    for (const d of (await r.list(`${esp}/EFI`)) ?? [])
      if (d.kind === "dir") candidates.push(`${esp}/EFI/${d.name}/grub.cfg`);
  const found: { path: string; cfg: ReturnType<typeof parseGrubConfig> }[] = [];
  for (const p of candidates) {
    const t = await readText(r, p, problems);
    if (t !== null) found.push({ path: p, cfg: parseGrubConfig(t) });
  }
  const main = found.find((f) => f.cfg.kernels.length > 0 || f.cfg.blscfg) ?? found[0];
  if (!main) return null;
  const first = main.cfg.kernels[0];
  let defaultKernel = first ? KERNEL_FILE.exec(first)?.[1] : undefined;
  if (main.cfg.blscfg) defaultKernel = (await newestBlsKernel(r, problems)) ?? defaultKernel;
  return {
    type: "grub2",
    config: main.path,
    blscfg: main.cfg.blscfg,
    ...(defaultKernel ? { defaultKernel } : {}),
  };
}

/** With blscfg, GRUB boots the entry of the newest kernel (rescue entries aside). */
async function newestBlsKernel(r: FsReader, problems: Problem[]): Promise<string | undefined> {
  const dir = "/boot/loader/entries";
  const entries = ((await r.list(dir)) ?? [])
    .filter((e) => e.kind === "file" && e.name.endsWith(".conf"))
    .slice(0, MAX_BLS_ENTRIES);
  let best: string | undefined;
  for (const e of entries) {
    const t = await readText(r, `${dir}/${e.name}`, problems);
    const kernel = t === null ? undefined : parseBlsEntry(t).kernel;
    const version = kernel ? KERNEL_FILE.exec(kernel)?.[1] : undefined;
    if (!version || version.includes("rescue")) continue;
    if (best === undefined || compareVersions(version, best) > 0) best = version;
  }
  return best;
}

/** A file's text, or null when it is absent; a read that fails is a warning, not a stop. */
async function readText(r: FsReader, p: string, problems: Problem[]): Promise<string | null> {
  try {
    return (await r.readFile(p, MAX_TEXT))?.toString("utf8") ?? null;
  } catch (err) {
    if (!isLifeboatError(err)) throw err;
    problems.push({ code: err.code, severity: "warning", message: err.message, remedy: err.hint });
    return null;
  }
}
