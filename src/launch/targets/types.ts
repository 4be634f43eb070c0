/**
 * What a launch job hands to a target, and what a target answers. A *target*
 * is where the materialized disks of a PIT go to run: block devices the
 * operator named, an operator's command, or a local QEMU virtual machine.
 */

/** Facts about the launch a target may pass on (the command target's environment). */
export interface LaunchFacts {
  jobId: string;
  jobType: "drill" | "recovery";
  server: { id: string; name: string };
  pit: { id: string; timeMs: number; consistency: string };
}

/** One materialized disk: a raw image file or a block device, in the server's disk order. */
export interface LaunchedDisk {
  index: number;
  path: string;
  sizeBytes: number;
}

export type TargetLog = (level: "info" | "warn" | "error", message: string) => void;

export interface TargetRun {
  facts: LaunchFacts;
  disks: LaunchedDisk[];
  /** job's directory for this server, for logs */
  workDir: string;
  log: TargetLog;
  signal: AbortSignal;
}

export interface TargetOutcome {
  ok: boolean;
  /** one line for the operator */
  message: string;
  details: Record<string, unknown>;
}
