import { Command, Option } from "commander";
import { LifeboatError } from "../base/index.js";
import { PROFILE_NAMES, TARGET_KINDS } from "../launch/index.js";
import { type ApiOpts, apiOptions, withApi } from "./api-client.js";
import { followJob, formatJobLine } from "./follow-job.js";
import { printJson, printLines } from "./output.js";
import { action } from "./store.js";

interface LaunchOpts extends ApiOpts {
  pit?: string;
  at?: string;
  drill?: boolean;
  recovery?: boolean;
  target?: string;
  profile?: string;
  format?: string;
  out?: string;
  device?: string[];
  convert?: boolean;
  force?: boolean;
  keepRunning?: boolean;
  detach?: boolean;
}

interface FinishedJob {
  job: { id: string; state: string; result: Record<string, unknown> | null } & Record<string, unknown>;
}

/**
 * `lifeboat launch SERVER...`: a drill (default) or a recovery from a PIT,
 * as a job on the control plane; follows it to its end (progress lines on
 * stderr) unless --detach. With --json prints `{job, outputs, readiness}`.
 * Exit 0 when the job succeeded, 1 when it failed or was terminated.
 */
export function launchCommand(): Command {
  return apiOptions(
    new Command("launch")
      .description("launch servers from a PIT: a drill (default) or a recovery (operator)")
      .argument("<servers...>", "ids or names")
      .option("--pit <id>", "the PIT: an id (one server) or latest", undefined)
      .option("--at <time>", "each server's latest PIT at or before this ISO time")
      .option("--drill", "a drill: the copy is isolated and removed by `jobs terminate` (default)")
      .option("--recovery", "a real recovery")
      .addOption(
        new Option("--target <target>", "where the disks go (default: the launch settings')").choices([
          ...TARGET_KINDS,
        ]),
      )
      .addOption(
        new Option("--profile <profile>", "boot profile to check (default: the launch settings')").choices([
          ...PROFILE_NAMES,
        ]),
      )
      .addOption(
        new Option("--format <format>", "image format of the image target").choices(["raw", "qcow2"]),
      )
      .option("--out <dir>", "launch root instead of the configured one (admin)")
      .option("--device <device...>", "block target: one device per disk, in disk order")
      .option(
        "--convert",
        "regenerate the copy's initramfs for the profile when its drivers are on disk but not in it",
      )
      .option("--force", "boot (qemu) even when the disks are not ready for the profile")
      .option("--keep-running", "qemu: leave the VM running after it booted")
      .option("--detach", "print the job id and return at once"),
  ).action(
    action<LaunchOpts>(async (ctx, o, cmd) => {
      if (o.drill && o.recovery)
        throw new LifeboatError("USAGE", "--drill and --recovery exclude each other", {
          hint: "choose one",
          exitCode: 2,
        });
      const body = {
        servers: cmd.args,
        mode: o.recovery ? "recovery" : "drill",
        ...(o.pit !== undefined ? { pit: o.pit } : {}),
        ...(o.at !== undefined ? { at: normalizeTime(o.at) } : {}),
        ...(o.target !== undefined ? { target: o.target } : {}),
        ...(o.profile !== undefined ? { profile: o.profile } : {}),
        ...(o.format !== undefined ? { format: o.format } : {}),
        ...(o.out !== undefined ? { out: o.out } : {}),
        ...(o.device !== undefined ? { devices: o.device } : {}),
        ...(o.convert ? { convert: true } : {}),
        ...(o.force ? { force: true } : {}),
        ...(o.keepRunning ? { keepRunning: true } : {}),
      };
      return withApi(ctx, o, async (api) => {
        const created = await api.call<FinishedJob>("/api/v1/launches", { method: "POST", body });
        const id = created.job.id;
        if (o.detach) {
          if (ctx.json) printJson(created);
          else printLines([id]);
          return 0;
        }
        if (!ctx.json) process.stderr.write(`job ${id}\n`);
        const state = await followJob(api, id, (l) => {
          if (!ctx.json) process.stderr.write(`${formatJobLine(l)}\n`);
        });
        const final = await api.call<FinishedJob>(`/api/v1/jobs/${encodeURIComponent(id)}`);
        const result = final.job.result ?? {};
        if (ctx.json)
          printJson({ job: final.job, outputs: result.outputs ?? null, readiness: result.readiness ?? null });
        else printLines(summary(final.job.state, result));
        return state === "succeeded" ? 0 : 1;
      });
    }),
  );
}

function normalizeTime(t: string): string {
  const ms = Date.parse(t);
  if (Number.isNaN(ms))
    throw new LifeboatError("USAGE", `--at ${JSON.stringify(t)} is not a time`, {
      hint: "an ISO time such as 2026-11-29T08:00:00Z",
      exitCode: 2,
    });
  return new Date(ms).toISOString();
}

function summary(state: string, result: Record<string, unknown>): string[] {
  const out: string[] = [`${state.toUpperCase()}`];
  const outputs = result.outputs as
    { servers?: { server: string; images: string[]; report: string; reportHtml: string }[] } | undefined;
  for (const s of outputs?.servers ?? []) {
    out.push(`${s.server}:`);
    for (const i of s.images) out.push(`  ${i}`);
    out.push(`  report: ${s.reportHtml}`);
  }
  const error = result.error as { code: string; message: string; hint?: string } | undefined;
  if (error)
    out.push(`error [${error.code}]: ${error.message}`, ...(error.hint ? [`  hint: ${error.hint}`] : []));
  return out;
}
