import { promises as fs } from "node:fs";
import { isLifeboatError } from "../base/index.js";
import path from "node:path";
import { LifeboatError, writeFileAtomic } from "../base/index.js";
import type { ReportCheck } from "./drill-report.js";
import { prepareLaunchedCopy } from "./copy/index.js";
import { type InspectReport, inspectDisks } from "./inspect/index.js";
import { hashPrefix } from "./hash-file.js";
import { type LaunchManifest, type MaterializedDisk } from "./materialize.js";
import type { ServerLaunchSpec } from "./launch-server.js";
import {
  type TargetOutcome,
  type TargetRun,
  convertToQcow2,
  runCommandTarget,
  runQemuTarget,
} from "./targets/index.js";

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
    accel: "auto" | "kvm" | "tcg";
    keepRunning: boolean;
    /** Direct kernel boot, for disks without a boot loader. */
    kernel: string | null;
    initrd: string | null;
    append: string | null;
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
  /** Output files beyond the raw images (qcow2 images replace them). */
  images: string[];
  /** Disks that preparing the copy changed (their launched hash is recorded after the target). */
  prepared: MaterializedDisk[];
}

/**
 * After materialize and inspect: hands the disks to the target, then runs
 * the post-launch checks. Throws to fail the launch. The qemu target refuses
 * disks that are not ready for the profile unless forced; the image target
 * only reports readiness.
 */
export async function runTarget(
  spec: ServerLaunchSpec,
  disks: MaterializedDisk[],
  inspected: InspectReport,
  ctx: TargetContext,
): Promise<{ qemuPid?: number; readiness: InspectReport }> {
  let readiness = inspected;
  const run: TargetRun = {
    facts: {
      jobId: spec.jobId,
      jobType: spec.jobType,
      server: spec.server,
      pit: { id: spec.pit.id, timeMs: spec.pit.timeMs, consistency: spec.pit.consistency },
    },
    disks: disks.map((d) => ({ index: d.index, path: d.path, sizeBytes: d.sizeBytes })),
    workDir: spec.dir,
    log: (level, message) => ctx.log(message, level),
    signal: ctx.signal,
  };
  readiness = await prepareCopy(spec, disks, readiness, ctx);
  let qemuPid: number | undefined;
  switch (spec.target) {
    case "image":
      await ctx.step("target image", async () => {
        if (spec.format !== "qcow2") return "raw images and manifest in place";
        await toQcow2(spec.dir, disks, ctx);
        return `qcow2 images: ${ctx.images.map((p) => path.basename(p)).join(", ")}`;
      });
      break;
    case "block":
      await ctx.step("target block", () =>
        Promise.resolve(`written to ${disks.map((d) => d.path).join(", ")}`),
      );
      break;
    case "qemu":
      if (!readiness.ready && !spec.force)
        throw new LifeboatError("LAUNCH_NOT_READY", `not booting: ${readiness.verdict}`, {
          hint:
            readiness.problems.find((p) => p.severity === "error")?.remedy ??
            "fix the problems inspect reports, or launch with --force",
        });
      await ctx.step("target qemu", async () => {
        const q = spec.qemu;
        const outcome = await runQemuTarget(run, {
          successPattern: q.successPattern,
          timeoutSeconds: q.timeoutSeconds,
          memoryMiB: q.memoryMiB,
          network: q.network,
          accel: q.accel,
          keepRunning: q.keepRunning,
          ...(q.kernel ? { kernel: q.kernel } : {}),
          ...(q.initrd ? { initrd: q.initrd } : {}),
          ...(q.append ? { append: q.append } : {}),
        });
        ctx.checks.push({
          name: "booted: the success pattern appeared on the serial console",
          ok: outcome.ok,
          message: outcome.message,
        });
        failUnless(
          outcome,
          "LAUNCH_BOOT_FAILED",
          "read serial.log in the job directory; raise bootTimeoutSeconds for a slow boot",
        );
        if (typeof outcome.details.pid === "number") qemuPid = outcome.details.pid;
        return outcome.message;
      });
      break;
    case "command":
      await ctx.step("target command", async () => {
        if (spec.command === null)
          throw new LifeboatError("LAUNCH_NO_COMMAND", "the command target has no command", {
            hint: "set the launch settings' command: lifeboat settings set --server SERVER --kind launch command=/path/to/program",
          });
        const outcome = await runCommandTarget(run, {
          command: spec.command.path,
          timeoutSeconds: spec.command.timeoutSeconds,
        });
        ctx.checks.push({ name: `command ${spec.command.path}`, ok: outcome.ok, message: outcome.message });
        failUnless(outcome, "LAUNCH_COMMAND_FAILED", "the command's output is in the job's log");
        return outcome.message;
      });
      break;
  }
  for (const check of spec.postLaunchChecks) {
    await ctx.step(`check ${check}`, async () => {
      const outcome = await runCommandTarget(run, {
        command: check,
        timeoutSeconds: spec.command?.timeoutSeconds ?? 600,
      });
      ctx.checks.push({ name: `post-launch check ${check}`, ok: outcome.ok, message: outcome.message });
      failUnless(outcome, "LAUNCH_CHECK_FAILED", "the check's output is in the job's log");
      return outcome.message;
    });
  }
  return qemuPid === undefined ? { readiness } : { qemuPid, readiness };
}

/**
 * Makes the launched copy safe to boot (copy/): the agent identity replaced
 * by a marker, the host renamed and addresses mapped, and with --convert the
 * initramfs regenerated (then inspected again). The manifest keeps each
 * disk's PIT hash and gains `launchedSha256` for a disk the preparation
 * changed. Without root only the image target goes on, with a warning that
 * the copy still carries the server's identity.
 */
async function prepareCopy(
  spec: ServerLaunchSpec,
  disks: MaterializedDisk[],
  readiness: InspectReport,
  ctx: TargetContext,
): Promise<InspectReport> {
  let after = readiness;
  await ctx.step("prepare the launched copy", async () => {
    const before = await Promise.all(disks.map((d) => fs.stat(d.path).then((st) => st.mtimeMs)));
    let prepared;
    try {
      prepared = await prepareLaunchedCopy(
        disks.map((d) => d.path),
        readiness,
        {
          jobId: spec.jobId,
          jobType: spec.jobType,
          ...(spec.hostname !== undefined ? { hostname: spec.hostname } : {}),
          addresses: spec.addresses,
          ...(spec.convert ? { convert: spec.profile } : {}),
          server: { name: spec.server.name, id: spec.server.id },
          log: (level, message) => ctx.log(message, level),
          signal: ctx.signal,
        },
      );
    } catch (err) {
      if (spec.target === "image" && isLifeboatError(err) && err.code === "LAUNCH_COPY_NEEDS_ROOT") {
        ctx.log(
          `the copy was not prepared (${err.message}): it still carries the server's agent identity and network settings; do not boot it where it can reach production`,
          "warn",
        );
        ctx.checks.push({
          name: "launched copy prepared (identity removed, network mapped)",
          ok: false,
          message: err.message,
        });
        return "skipped: needs root";
      }
      throw err;
    }
    ctx.changes.push(...prepared.changes);
    ctx.checks.push({
      name: "launched copy prepared (identity removed, network mapped)",
      ok: true,
      message: `${prepared.changes.length} change(s)`,
    });
    const changed = [];
    for (const [i, d] of disks.entries()) if ((await fs.stat(d.path)).mtimeMs !== before[i]) changed.push(d);
    // A VM or the operator's command may write to the disks: their launched hash is taken now.
    // The image and block targets leave them as they are: it waits until after the recovery time.
    if (spec.target === "qemu" || spec.target === "command")
      await recordLaunchedHashes(spec.dir, changed, ctx.signal);
    else ctx.prepared.push(...changed);
    if (prepared.converted.length > 0) {
      after = await inspectDisks(
        disks.map((d) => d.path),
        { profile: spec.profile },
      );
      ctx.checks.push({
        name: `launch readiness for ${spec.profile} after conversion`,
        ok: after.ready,
        message: after.verdict,
      });
    }
    return `${prepared.changes.length} change(s)${prepared.converted.length > 0 ? `; initramfs regenerated for ${prepared.converted.map((c) => c.kernel).join(", ")}` : ""}`;
  });
  return after;
}

/**
 * Adds launchedSha256 to the manifest for the disks the preparation changed
 * (read back and hashed: the job does it after the target succeeded, so the
 * recovery time does not include it).
 */
export async function recordLaunchedHashes(
  dir: string,
  changed: MaterializedDisk[],
  signal: AbortSignal,
): Promise<void> {
  if (changed.length === 0) return;
  const manifestPath = path.join(dir, "manifest.json");
  const manifest = JSON.parse(await fs.readFile(manifestPath, "utf8")) as LaunchManifest;
  for (const d of changed) {
    const m = manifest.disks.find((x) => x.index === d.index);
    if (m) m.launchedSha256 = await hashPrefix(d.path, d.sizeBytes, signal);
  }
  await writeFileAtomic(manifestPath, `${JSON.stringify(manifest, null, 2)}\n`, { mode: 0o600 });
}

function failUnless(outcome: TargetOutcome, code: string, hint: string): void {
  if (!outcome.ok) throw new LifeboatError(code, outcome.message, { hint });
}

/** qcow2 images replace the raw ones; the manifest names them and keeps the raw content's SHA-256. */
async function toQcow2(dir: string, disks: MaterializedDisk[], ctx: TargetContext): Promise<void> {
  const manifestPath = path.join(dir, "manifest.json");
  const manifest = JSON.parse(await fs.readFile(manifestPath, "utf8")) as LaunchManifest & {
    disks: (LaunchManifest["disks"][number] & { format?: string; fileSizeBytes?: number })[];
  };
  for (const d of disks) {
    const q = await convertToQcow2(d.path);
    await fs.rm(d.path, { force: true });
    ctx.images.push(q.path);
    const m = manifest.disks.find((x) => x.index === d.index);
    if (m) Object.assign(m, { file: path.basename(q.path), format: "qcow2", fileSizeBytes: q.sizeBytes });
  }
  await writeFileAtomic(manifestPath, `${JSON.stringify(manifest, null, 2)}\n`, { mode: 0o600 });
}
