import { LifeboatError } from "../base/index.js";
import type { ReportCheck } from "./drill-report.js";
import type { InspectReport } from "./inspect/index.js";
import type { MaterializedDisk } from "./materialize.js";

export const TARGET_KINDS = ["image", "block", "qemu", "command"] as const;
export type TargetKind = (typeof TARGET_KINDS)[number];

/** The launch settings a target reads (control/settings.ts holds them per server). */
export interface TargetSettings {
  format: "raw" | "qcow2";
  convert: boolean;
  force: boolean;
  hostname: string | undefined;
  addresses: { from: string; to: string }[];
  qemu: {
    successPattern: string;
    timeoutSeconds: number;
    memoryMiB: number;
    network: "none" | "user";
    keepRunning: boolean;
  };
  command: { path: string; timeoutSeconds: number } | null;
  postLaunchChecks: string[];
}

export interface TargetContext {
  log: (message: string, level?: "info" | "warn" | "error") => void;
  signal: AbortSignal;
  step: (name: string, body: () => Promise<string>) => Promise<void>;
  /** Changes made inside the launched copy, for the report. */
  changes: string[];
  checks: ReportCheck[];
}

/**
 * After materialize and inspect: prepares the launched copy and hands its
 * disks to the target. Throws to fail the launch.
 */
export async function runTarget(
  spec: TargetSettings & { target: TargetKind },
  disks: MaterializedDisk[],
  readiness: InspectReport,
  ctx: TargetContext,
): Promise<{ qemuPid?: number }> {
  void disks;
  void readiness;
  if (spec.target !== "image")
    throw new LifeboatError(
      "LAUNCH_TARGET_UNAVAILABLE",
      `target ${spec.target} is not available in this build`,
      {
        hint: "launch with --target image",
      },
    );
  await ctx.step("target image", () => Promise.resolve("images and manifest in place"));
  return {};
}
