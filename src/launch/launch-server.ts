import { promises as fs } from "node:fs";
import { type Clock, LifeboatError, isLifeboatError } from "../base/index.js";
import type { Pit, Repository } from "../store/index.js";
import { type DrillReport, type ReportCheck, type ReportStep, writeDrillReport } from "./drill-report.js";
import { type InspectReport, type ProfileName, inspectDisks } from "./inspect/index.js";
import { type MaterializedDisk, materializePit } from "./materialize.js";
import { recordLaunchedHashes, runTarget, type TargetKind, type TargetSettings } from "./run-target.js";
import { checkBlockDevices } from "./targets/index.js";

/** Everything one server's launch needs, resolved by the job (settings, PIT, directory). */
export interface ServerLaunchSpec extends TargetSettings {
  jobId: string;
  jobType: "drill" | "recovery";
  server: { id: string; name: string };
  pit: Pit;
  /** OUT/<server>/<job-id>: images, manifest, report, serial log. */
  dir: string;
  target: TargetKind;
  profile: ProfileName;
  /** Block target: one device per disk. */
  devices: string[];
  /** When the job started (the recovery time counts from here). */
  startedAtMs: number;
}

export interface ServerLaunchResult {
  ok: boolean;
  images: string[];
  manifest: string | null;
  report: { json: string; html: string };
  readiness: InspectReport | null;
  error: { code: string; message: string; hint: string } | null;
  /** What the target left running (a qemu VM with keepRunning), for terminate. */
  running: { qemuPid?: number };
}

export type LaunchLog = (message: string, level?: "info" | "warn" | "error") => void;

/**
 * Launches one server from a PIT: materialize every disk (verified), inspect
 * the copy for the target's boot profile, hand the disks to the target, run
 * the post-launch checks, and write the drill report — also when a step
 * fails (the report says which and why). Never throws for a failed step;
 * rethrows an abort (terminate, shutdown) after writing the report.
 */
export async function launchServer(
  repo: Repository,
  spec: ServerLaunchSpec,
  log: LaunchLog,
  clock: Clock,
  signal: AbortSignal,
): Promise<ServerLaunchResult> {
  const steps: ReportStep[] = [];
  const checks: ReportCheck[] = [];
  const changes: string[] = [];
  const name = spec.server.name;
  let disks: MaterializedDisk[] = [];
  let manifest: string | null = null;
  let readiness: InspectReport | null = null;
  let error: ServerLaunchResult["error"] = null;
  let recoverySeconds: number | null = null;
  const running: ServerLaunchResult["running"] = {};
  /** Images that replaced the raw ones (qcow2). */
  const converted: string[] = [];
  /** Disks the preparation of the copy changed. */
  const prepared: MaterializedDisk[] = [];

  const step = async (stepName: string, body: () => Promise<string>): Promise<void> => {
    const t0 = clock.now();
    log(`${name}: ${stepName}`);
    try {
      const message = await body();
      steps.push(stepRecord(stepName, t0, clock.now(), true, message));
      if (message) log(`${name}: ${stepName}: ${message}`);
    } catch (err) {
      const e = asError(err);
      steps.push(stepRecord(stepName, t0, clock.now(), false, e.message));
      throw e;
    }
  };

  await fs.mkdir(spec.dir, { recursive: true, mode: 0o700 });
  try {
    if (spec.target === "block")
      await step("check block devices", async () => {
        await checkBlockDevices(
          spec.devices,
          spec.pit.disks.map((d) => d.sizeBytes),
        );
        return `${spec.devices.join(", ")}: present, large enough, not in use`;
      });
    await step("materialize", async () => {
      const total = spec.pit.disks.reduce((n, d) => n + d.sizeBytes, 0);
      let shown = 0;
      const r = await materializePit(repo, spec.pit, spec.dir, spec.jobId, {
        ...(spec.target === "block" ? { devices: spec.devices } : {}),
        signal,
        log: (m) => log(`${name}: ${m}`),
        onProgress: (p) => {
          const pct = Math.floor((100 * p.bytesDone) / Math.max(1, p.bytesTotal));
          if (pct >= shown + 25 && pct < 100) {
            shown = pct - (pct % 25);
            log(`${name}: materialized ${shown}% of ${total} bytes`);
          }
        },
      });
      disks = r.disks;
      manifest = r.manifestPath;
      checks.push({
        name: "every chunk verified against its id",
        ok: true,
        message: `${disks.length} disk(s), ${disks.reduce((n, d) => n + d.dataBytes, 0)} bytes of data`,
      });
      checks.push({ name: "manifest written with each disk's SHA-256", ok: true, message: r.manifestPath });
      return `${disks.length} disk(s) of PIT ${spec.pit.id} (${spec.pit.time}, ${spec.pit.consistency})`;
    });
    signal.throwIfAborted();
    await step(`inspect (profile ${spec.profile})`, async () => {
      readiness = await inspectDisks(
        disks.map((d) => d.path),
        { profile: spec.profile },
      );
      for (const p of readiness.problems)
        log(
          `${name}: ${p.severity} [${p.code}] ${p.message} — fix: ${p.remedy}`,
          p.severity === "error" ? "warn" : "info",
        );
      checks.push({
        name: `launch readiness for ${spec.profile}`,
        ok: readiness.ready,
        message: readiness.verdict,
      });
      return readiness.verdict;
    });
    signal.throwIfAborted();
    const outcome = await runTarget(spec, disks, readiness!, {
      log: (m, level) => log(`${name}: ${m}`, level),
      signal,
      step,
      changes,
      checks,
      images: converted,
      prepared,
    });
    readiness = outcome.readiness;
    if (outcome.qemuPid !== undefined) running.qemuPid = outcome.qemuPid;
    recoverySeconds = (clock.now() - spec.startedAtMs) / 1000;
    if (prepared.length > 0 && spec.format === "raw")
      await step("record the launched disks' hashes", async () => {
        await recordLaunchedHashes(spec.dir, prepared, signal);
        return `launchedSha256 of disk ${prepared.map((d) => d.index).join(", ")} in the manifest`;
      });
  } catch (err) {
    const e = asError(err);
    error = {
      code: isLifeboatError(e) ? e.code : "LAUNCH_FAILED",
      message: e.message,
      hint: isLifeboatError(e) ? e.hint : "",
    };
    log(`${name}: failed: ${e.message}`, "error");
  }
  const aborted = signal.aborted;
  const report: DrillReport = {
    format: 1,
    jobId: spec.jobId,
    jobType: spec.jobType,
    server: spec.server,
    pit: {
      id: spec.pit.id,
      time: spec.pit.time,
      ageSeconds: Math.max(0, (spec.startedAtMs - spec.pit.timeMs) / 1000),
      consistency: spec.pit.consistency,
    },
    target: spec.target,
    profile: spec.profile,
    readiness: readiness
      ? {
          ready: readiness.ready,
          verdict: readiness.verdict,
          problems: readiness.problems,
        }
      : null,
    steps,
    checks,
    recoverySeconds: error ? null : recoverySeconds,
    outcome: aborted ? "terminated" : error ? "failed" : "succeeded",
    error: error ? { code: error.code, message: error.message } : null,
    outputs: { images: converted.length > 0 ? converted : disks.map((d) => d.path), manifest },
    changes,
    startedAt: new Date(spec.startedAtMs).toISOString(),
    finishedAt: new Date(clock.now()).toISOString(),
  };
  const paths = await writeDrillReport(spec.dir, report);
  if (aborted) throw signal.reason instanceof Error ? signal.reason : new Error("aborted");
  return {
    ok: error === null,
    images: report.outputs.images,
    manifest,
    report: paths,
    readiness,
    error,
    running,
  };
}

function stepRecord(name: string, t0: number, t1: number, ok: boolean, message: string): ReportStep {
  return { name, startedAt: new Date(t0).toISOString(), seconds: (t1 - t0) / 1000, ok, message };
}

function asError(err: unknown): Error {
  return err instanceof Error ? err : new LifeboatError("LAUNCH_FAILED", String(err));
}
