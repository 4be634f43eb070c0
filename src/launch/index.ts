/**
 * launch: getting a server back from its disks. Words: to *materialize* a PIT
 * is to write its disks out of the repository as images (or onto block
 * devices), verified; *inspect* says whether those disks would boot on a
 * target platform (its *boot profile*) and what to do when they would not; a
 * *target* is what the disks are handed to (an image directory, block
 * devices, a qemu VM, the operator's command); the *drill report* records a
 * launch for auditors.
 */
export * from "./inspect/index.js";
export { type LaunchManifest, type MaterializedDisk, imagePath, materializePit } from "./materialize.js";
export { hashPrefix } from "./hash-file.js";
export { type DrillReport, writeDrillReport } from "./drill-report.js";
export {
  type LaunchLog,
  type ServerLaunchResult,
  type ServerLaunchSpec,
  launchServer,
} from "./launch-server.js";
export { TARGET_KINDS, type TargetKind, type TargetSettings } from "./run-target.js";
