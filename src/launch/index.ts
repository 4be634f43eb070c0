/**
 * launch: getting a server back from its disks. So far: inspect, which says
 * whether a server's disk images would boot on a target platform (its *boot
 * profile*) and what to do when they would not.
 */
export * from "./inspect/index.js";
