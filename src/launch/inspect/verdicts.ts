import type { FstabMatch } from "./fstab.js";
import type { KernelFacts } from "./kernels.js";
import { type OsInfo, osFamily } from "./os-release.js";
import { BOOT_PROFILES, PROFILE_NAMES, type ProfileName } from "./profiles.js";
import type { Problem } from "./report.js";
import type { SystemFacts } from "./system.js";

/** The command that regenerates the initramfs of kernel `v` on this distribution. */
export function regenerateCommand(os: OsInfo | null, v: string): string {
  switch (osFamily(os)) {
    case "debian":
      return `update-initramfs -u -k ${v}`;
    case "redhat":
    case "suse":
      return `dracut -f --kver ${v}`;
    default:
      return `update-initramfs -u -k ${v} (Debian, Ubuntu) or dracut -f --kver ${v} (RHEL, SUSE)`;
  }
}

/** Where a distribution is told to put extra drivers into its initramfs. */
function addDriversHow(os: OsInfo | null, modules: string[]): string {
  const list = modules.join(" ");
  const deb = `list them in /etc/initramfs-tools/modules`;
  const dracut = `add add_drivers+=" ${list} " to /etc/dracut.conf.d/lifeboat.conf`;
  switch (osFamily(os)) {
    case "debian":
      return deb;
    case "redhat":
    case "suse":
      return dracut;
    default:
      return `${deb} (Debian, Ubuntu) or ${dracut} (RHEL, SUSE)`;
  }
}

/** The problem of one kernel on one profile: missing drivers, or an initramfs that could not be read. */
export function kernelProblem(k: KernelFacts, profile: ProfileName, os: OsInfo | null): Problem | null {
  const v = k.report.version;
  const severity = k.report.default ? "error" : "warning";
  const verdict = k.report.profiles[profile];
  if (k.initramfsProblem && !verdict.ready) return { ...k.initramfsProblem, severity };
  if (verdict.ready) return null;
  const missing = verdict.missing;
  const wanted = BOOT_PROFILES[profile].needs.flatMap((r) => r.anyOf);
  const installed = k.installed !== null && wanted.some((m) => k.installed!.has(m.replace(/-/g, "_")));
  const others = PROFILE_NAMES.filter((p) => p !== profile && k.report.profiles[p].ready);
  const fix = installed
    ? `the modules are installed under /lib/modules/${v}: ${addDriversHow(
        os,
        missing.map((m) => m.split(" or ")[0]!),
      )} and regenerate it with ${regenerateCommand(os, v)}`
    : `install the drivers and regenerate it with ${regenerateCommand(os, v)}`;
  return {
    code: "LAUNCH_DRIVERS_MISSING",
    severity,
    message: `the initramfs of kernel ${v} lacks ${missing.join(" and ")} (needed by profile ${profile}: ${BOOT_PROFILES[profile].description})`,
    remedy: `${fix}${others.length ? `, or launch with profile ${others.join(" or ")}` : ""}`,
  };
}

function fstabProblem(m: FstabMatch): Problem | null {
  const e = m.entry;
  const what = `the /etc/fstab entry ${e.spec} for ${e.mountPoint}`;
  switch (m.status) {
    case "matched":
      return null;
    case "device":
      return {
        code: "LAUNCH_FSTAB_DEVICE_NAME",
        severity: "warning",
        message: `${what} names a device; the target platform may name its disks differently (vda on virtio, xvda on Xen, nvme0n1 on Nitro)`,
        remedy: `use UUID= in /etc/fstab on the source server (blkid ${e.spec} shows it)`,
      };
    case "unverified":
      return {
        code: "LAUNCH_FSTAB_UNVERIFIED",
        severity: "warning",
        message: `${what} names a volume manager or RAID device, which inspect does not check`,
        remedy: "make sure every physical volume of it is among the server's replicated disks",
      };
    case "unmatched":
      return {
        code: "LAUNCH_FSTAB_UNMATCHED",
        severity: m.optional ? "warning" : "error",
        message: `${what} matches no filesystem on the server's disks${m.optional ? " (it is marked nofail or noauto)" : ""}`,
        remedy: `replicate the disk that holds it, or correct or remove the entry on the source server${m.optional ? "" : " (or mark it nofail)"}`,
      };
  }
}

/** Every problem of an installed system for the chosen profile, its own (file reads) included. */
export function systemProblems(s: SystemFacts, profile: ProfileName, describeRoot: string): Problem[] {
  const out = [...s.problems];
  if (s.kernels.length === 0)
    out.push({
      code: "LAUNCH_NO_KERNEL",
      severity: "error",
      message: `no kernel (vmlinuz-<version>) found in /boot of ${describeRoot}`,
      remedy: "install a kernel on the source server, or replicate the disk that holds /boot",
    });
  if (s.bootloader === null)
    out.push({
      code: "LAUNCH_NO_BOOTLOADER",
      severity: "error",
      message: `no boot loader configuration (grub/grub.cfg, grub2/grub.cfg, or EFI/*/grub.cfg on the EFI system partition) for ${describeRoot}`,
      remedy:
        "run update-grub (Debian, Ubuntu) or grub2-mkconfig -o /boot/grub2/grub.cfg (RHEL, SUSE) on the source server",
    });
  for (const k of s.kernels) {
    const p = kernelProblem(k, profile, s.os);
    if (p) out.push(p);
    else if (k.initramfsProblem) out.push({ ...k.initramfsProblem, severity: "warning" });
  }
  for (const m of s.fstab?.entries ?? []) {
    const p = fstabProblem(m);
    if (p) out.push(p);
  }
  return out;
}
