import { isLifeboatError } from "../../base/index.js";
import type { FsReader } from "./fs-reader.js";
import { compareVersions } from "./grub.js";
import { modulesListed, parseInitramfs } from "./initramfs.js";
import { PROFILE_NAMES, type ProfileName, type ProfileVerdict, checkProfile } from "./profiles.js";
import type { KernelReport, Problem } from "./report.js";

/** An initramfs bigger than this is refused rather than read. */
export const MAX_INITRAMFS = 512 << 20;
const MAX_MODULE_LIST = 16 << 20;
const KERNEL = /^(?:vmlinuz|vmlinux|bzImage|Image|kernel)-(.+)$/;
const NOT_A_KERNEL = /\.(?:hmac|sig|old|bak)$/;

/** The names distributions give the initramfs of kernel `v`, most common first. */
export function initramfsNames(v: string): string[] {
  return [`initrd.img-${v}`, `initramfs-${v}.img`, `initrd-${v}`, `initramfs-${v}`, `initrd-${v}.img`];
}

/** A kernel with what inspect learnt about it; the sets stay out of the JSON report. */
export interface KernelFacts {
  report: KernelReport;
  initramfsModules: Set<string>;
  builtin: Set<string>;
  /** Modules installed for it under /lib/modules (modules.dep); null when unknown. */
  installed: Set<string> | null;
  /** Why its initramfs could not be used, when it could not. */
  initramfsProblem?: Problem;
}

/**
 * Finds the kernels in the boot directory (`bootDir` on `boot`, "/boot" on
 * the root filesystem or "/" on a separate /boot filesystem), and for each
 * its initramfs (unpacked and listed) and modules.builtin (from the root
 * filesystem's /lib/modules/<version>/). A damaged initramfs is a problem of
 * that kernel, not a failure of the inspection.
 */
export async function inspectKernels(
  boot: FsReader,
  bootDir: string,
  root: FsReader,
): Promise<KernelFacts[]> {
  const listing = (await boot.list(bootDir)) ?? [];
  const files = new Map(
    listing.filter((e) => e.kind === "file" || e.kind === "symlink").map((e) => [e.name, e]),
  );
  const versions = [...files.keys()]
    .filter((n) => !NOT_A_KERNEL.test(n))
    .map((n) => KERNEL.exec(n)?.[1])
    .filter((v): v is string => v !== undefined && !v.includes("/"));
  const unique = [...new Set(versions)].sort((a, b) => compareVersions(b, a));
  const out: KernelFacts[] = [];
  for (const version of unique) {
    const kernelName = [...files.keys()].find((n) => KERNEL.exec(n)?.[1] === version)!;
    out.push(await inspectKernel(boot, bootDir, root, version, kernelName, files));
  }
  return out;
}

async function inspectKernel(
  boot: FsReader,
  bootDir: string,
  root: FsReader,
  version: string,
  kernelName: string,
  files: Map<string, { size: number }>,
): Promise<KernelFacts> {
  const join = (n: string) => (bootDir === "/" ? `/${n}` : `${bootDir}/${n}`);
  const builtinText = await readFirst(root, moduleFile(version, "modules.builtin"));
  const depText = await readFirst(root, moduleFile(version, "modules.dep"));
  const builtin = new Set(builtinText === null ? [] : modulesListed(builtinText));
  const installed = depText === null ? null : new Set(modulesListed(depText));
  const initramfsModules = new Set<string>();
  let initramfsProblem: Problem | undefined;
  let initramfs: KernelReport["initramfs"] = null;
  const name = initramfsNames(version).find((n) => files.has(n));
  if (name === undefined) {
    initramfsProblem = {
      code: "LAUNCH_NO_INITRAMFS",
      severity: "error",
      message: `kernel ${version} has no initramfs in ${bootDir} (looked for ${initramfsNames(version).join(", ")})`,
      remedy: `generate one: update-initramfs -c -k ${version} (Debian, Ubuntu) or dracut -f --kver ${version} (RHEL, SUSE)`,
    };
  } else {
    const path = join(name);
    try {
      const data = await boot.readFile(path, MAX_INITRAMFS);
      if (data === null) throw new Error(`${path} is not a regular file`);
      const info = await parseInitramfs(data);
      info.modules.forEach((m) => initramfsModules.add(m));
      info.builtin.forEach((m) => builtin.add(m));
      initramfs = {
        path,
        sizeBytes: data.length,
        compression: info.segments.join("+"),
        segments: info.segments,
        moduleCount: info.modules.length,
      };
    } catch (err) {
      if (!isLifeboatError(err) && !(err instanceof Error)) throw err;
      initramfsProblem = {
        code: isLifeboatError(err) ? err.code : "LAUNCH_INITRAMFS_CORRUPT",
        severity: "error",
        message: `the initramfs of kernel ${version} (${path}) cannot be read: ${err.message}`,
        remedy: isLifeboatError(err) && err.hint ? err.hint : "regenerate the initramfs on the source server",
      };
      initramfs = {
        path,
        sizeBytes: files.get(name)?.size ?? 0,
        compression: "unknown",
        segments: [],
        moduleCount: 0,
      };
    }
  }
  const profiles = Object.fromEntries(
    PROFILE_NAMES.map((p) => [p, checkProfile(p, initramfsModules, builtin)]),
  ) as Record<ProfileName, ProfileVerdict>;
  return {
    report: {
      version,
      path: join(kernelName),
      default: false,
      initramfs,
      builtinModules: builtinText === null ? null : builtin.size,
      profiles,
    },
    initramfsModules,
    builtin,
    installed,
    ...(initramfsProblem ? { initramfsProblem } : {}),
  };
}

function moduleFile(version: string, file: string): string[] {
  return [`/lib/modules/${version}/${file}`, `/usr/lib/modules/${version}/${file}`];
}

async function readFirst(fs: FsReader, paths: string[]): Promise<string | null> {
  for (const p of paths) {
    try {
      const b = await fs.readFile(p, MAX_MODULE_LIST);
      if (b !== null) return b.toString("utf8");
    } catch (err) {
      if (!isLifeboatError(err)) throw err;
    }
  }
  return null;
}
