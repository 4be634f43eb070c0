/**
 * inspect: launch readiness of a server's disk images. Words: a *boot
 * profile* is a target platform's set of drivers a kernel needs to find its
 * disk and network (kvm, xen, nitro, vmware, hyperv); a disk is *ready* for a
 * profile when its installed system has a boot loader configuration, an fstab
 * whose every entry matches a filesystem of the server's disks, and a default
 * kernel whose initramfs (or the kernel itself) holds those drivers.
 */
export { inspectDisks, NO_OS } from "./inspect.js";
export {
  BOOT_PROFILES,
  PROFILE_NAMES,
  isProfileName,
  checkProfile,
  type ProfileName,
  type ProfileVerdict,
} from "./profiles.js";
export { parseInitramfs, normalizeModule, type InitramfsInfo } from "./initramfs.js";
export { readPartitionTable, type Partition, type PartitionTable } from "./partitions.js";
export { probeFilesystem, type Filesystem, type FsType } from "./filesystems.js";
export { ImageFile } from "./image-file.js";
// For the agent's inventory of its live system (src/agent/boot-inventory.ts): the same
// kernel and initramfs reading, and the same verdicts, over a reader of the host's root.
export { inspectKernels, type KernelFacts } from "./kernels.js";
export { kernelProblem } from "./verdicts.js";
export { parseGrubConfig, parseBlsEntry, compareVersions } from "./grub.js";
export { parseOsRelease, type OsInfo } from "./os-release.js";
export { type FsReader, type DirEntry } from "./fs-reader.js";
export { DirectoryReader } from "./directory-reader.js";
export type {
  InspectReport,
  DiskReport,
  KernelReport,
  Problem,
  BootloaderReport,
  FstabReport,
} from "./report.js";
