import { normalizeModule } from "./initramfs.js";

/**
 * Boot profiles: the drivers a kernel needs in its initramfs (or built in) to
 * find its root disk and its network on a target platform. Each requirement is
 * met by any one of its modules.
 */
export type ProfileName = "kvm" | "xen" | "nitro" | "vmware" | "hyperv";

export interface Requirement {
  role: "storage" | "network";
  anyOf: string[];
}

export const BOOT_PROFILES: Readonly<Record<ProfileName, { description: string; needs: Requirement[] }>> = {
  kvm: {
    description: "KVM/QEMU, OpenStack, Proxmox (virtio)",
    needs: [
      { role: "storage", anyOf: ["virtio_blk", "virtio_scsi"] },
      { role: "network", anyOf: ["virtio_net"] },
    ],
  },
  xen: {
    description: "Xen PV/PVHVM (older EC2 instance types, Citrix)",
    needs: [
      { role: "storage", anyOf: ["xen-blkfront"] },
      { role: "network", anyOf: ["xen-netfront"] },
    ],
  },
  nitro: {
    description: "AWS Nitro (NVMe disks, ENA network)",
    needs: [
      { role: "storage", anyOf: ["nvme"] },
      { role: "network", anyOf: ["ena"] },
    ],
  },
  vmware: {
    description: "VMware (paravirtual SCSI, vmxnet3)",
    needs: [
      { role: "storage", anyOf: ["vmw_pvscsi"] },
      { role: "network", anyOf: ["vmxnet3"] },
    ],
  },
  hyperv: {
    description: "Hyper-V and Azure (storvsc, netvsc)",
    needs: [
      { role: "storage", anyOf: ["hv_storvsc"] },
      { role: "network", anyOf: ["hv_netvsc"] },
    ],
  },
};

export const PROFILE_NAMES = Object.keys(BOOT_PROFILES) as ProfileName[];

export function isProfileName(s: string): s is ProfileName {
  return (PROFILE_NAMES as string[]).includes(s);
}

export interface ProfileVerdict {
  ready: boolean;
  /** One entry per unmet requirement: "virtio_blk or virtio_scsi". */
  missing: string[];
  /** Where each met requirement was found: module name -> "initramfs" | "builtin". */
  found: Record<string, "initramfs" | "builtin">;
}

/** Checks one kernel's drivers (initramfs modules and built-ins, normalised names) against a profile. */
export function checkProfile(
  profile: ProfileName,
  initramfs: ReadonlySet<string>,
  builtin: ReadonlySet<string>,
): ProfileVerdict {
  const missing: string[] = [];
  const found: Record<string, "initramfs" | "builtin"> = {};
  for (const req of BOOT_PROFILES[profile].needs) {
    const hit = req.anyOf.find((m) => builtin.has(normalizeModule(m)) || initramfs.has(normalizeModule(m)));
    if (hit === undefined) missing.push(req.anyOf.join(" or "));
    else found[hit] = builtin.has(normalizeModule(hit)) ? "builtin" : "initramfs";
  }
  return { ready: missing.length === 0, missing, found };
}
