/**
 * targets: where a launch puts a PIT's materialized disks. The *block*
 * target writes them onto the operator's block devices (checkBlockDevices
 * says whether that is safe before anything is written); the *command*
 * target hands them to the operator's program; the *QEMU* target boots them
 * in a local virtual machine and calls it a success when a pattern appears
 * on the serial console.
 */
export type { LaunchFacts, LaunchedDisk, TargetLog, TargetRun, TargetOutcome } from "./types.js";
export { checkBlockDevices } from "./block-devices.js";
export { runCommandTarget, type CommandTargetOptions } from "./command-target.js";
export { commandEnv } from "./command-env.js";
export { runQemuTarget, type QemuTargetOptions } from "./qemu-target.js";
export { stopQemu } from "./qemu-stop.js";
export { convertToQcow2 } from "./qcow2.js";
