/**
 * agent: what runs on a source server. Words: a *disk* is a block device or
 * image file being replicated; a *dirty range* is a byte range written,
 * discarded or zeroed since it was last read; the *tracker* learns dirty
 * ranges from the kernel's block trace events; a *freeze* holds a disk's
 * filesystems still while a consistency point is read.
 */
export { DiskReader, type ByteRange, type OpenDiskOptions } from "../store/disk-reader.js";
export { deviceNumbers, kernelDev, blockDeviceSizeBytes } from "../store/block-device.js";
export {
  TraceTracker,
  type TraceTrackerOptions,
  type TracedRange,
  type TracedOp,
  type TraceLoss,
} from "./trace.js";
export { DirtySet, type DirtySetOptions } from "./dirty-set.js";
export {
  loadDirtySet,
  saveDirtySet,
  encodeDirtySet,
  decodeDirtySet,
  type LoadedDirtySet,
  type DirtySetFileStatus,
} from "./dirty-set-file.js";
export { withFrozen, type FreezeOptions, type FreezeResult } from "./freeze.js";
export { mountedFilesystems, diskAndPartitionDevs, type MountedFilesystem } from "./mounted-filesystems.js";
export {
  discoverBlockDevices,
  discoverHost,
  parseOsRelease,
  sniffFormat,
  type BlockDeviceInfo,
  type PartitionInfo,
  type MountEntry,
  type HostInfo,
  type DiscoveryOptions,
} from "./discovery.js";
export {
  DEFAULT_AGENT_CONFIG_DIR,
  AGENT_CONFIG_VERSION,
  agentConfigSchema,
  agentPaths,
  loadAgentConfig,
  saveAgentConfig,
  refuseLaunchedCopy,
  launchedCopyMarkerText,
  type LaunchedCopyMarker,
  type AgentConfig,
  type AgentDisk,
  type AgentPaths,
  type AgentSettings,
  type RetiredDisk,
} from "./config.js";
export {
  addDisks,
  checkNewDisk,
  editAgentConfig,
  findDisk,
  nextDiskIndex,
  retireDisk,
  MAX_DISK_INDEX,
} from "./disk-set.js";
export { probeDisk, type DiskPresence } from "./disk-probe.js";
export {
  readAgentStatus,
  writeAgentStatus,
  type AgentState,
  type AgentStatus,
  type DiskStatus,
} from "./status.js";
