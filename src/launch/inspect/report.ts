import type { Compression } from "./decompress.js";
import type { Filesystem } from "./filesystems.js";
import type { FstabMatch } from "./fstab.js";
import type { OsInfo } from "./os-release.js";
import type { Partition, PartitionTable } from "./partitions.js";
import type { ProfileName, ProfileVerdict } from "./profiles.js";

/**
 * The inspect report: what was found on a server's disks and whether they
 * would boot on the chosen profile's platform. This is the `--json` shape
 * (docs/launch-readiness.md); fields are only ever added.
 */
export interface Problem {
  /** Stable, listed in docs/errors.md. */
  code: string;
  /** "error" makes the server not ready; "warning" is worth knowing but does not stop a boot. */
  severity: "error" | "warning";
  message: string;
  /** What the operator can do about it. */
  remedy: string;
}

export interface InitramfsReport {
  path: string;
  sizeBytes: number;
  /** The segments' compressions joined with "+", e.g. "none+zstd" for an early microcode archive. */
  compression: string;
  segments: Compression[];
  moduleCount: number;
}

export interface KernelReport {
  version: string;
  path: string;
  /** The kernel the boot loader starts by default (its first entry, else the newest). */
  default: boolean;
  initramfs: InitramfsReport | null;
  /** Modules built into the kernel (modules.builtin); null when that file was not found. */
  builtinModules: number | null;
  profiles: Record<ProfileName, ProfileVerdict>;
}

export interface BootloaderReport {
  type: "grub2";
  /** Where the configuration was found: filesystem-relative path and the filesystem's place. */
  config: string;
  on: { disk: number; partition?: number; fsType: string };
  firmware: "bios" | "efi" | "bios+efi" | "unknown";
  blscfg: boolean;
  defaultKernel?: string;
  rootArg?: string;
}

export interface FstabReport {
  path: string;
  entries: FstabMatch[];
}

export interface FilesystemReport extends Filesystem {
  /** Whether this is the root filesystem of an installed system. */
  root: boolean;
}

export interface DiskReport {
  index: number;
  path: string;
  sizeBytes: number;
  partitionTable: Omit<PartitionTable, "partitions" | "warnings">;
  partitions: Partition[];
  filesystems: FilesystemReport[];
  os: OsInfo | null;
  kernels: KernelReport[];
  bootloader: BootloaderReport | null;
  fstab: FstabReport | null;
  /** One line for an operator: what this disk is and whether it is ready. */
  verdict: string;
  ready: boolean;
  problems: Problem[];
}

export interface InspectReport {
  profile: ProfileName;
  ready: boolean;
  verdict: string;
  disks: DiskReport[];
  /** Every problem of every disk, and those of the server as a whole. */
  problems: Problem[];
}
