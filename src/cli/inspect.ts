import { Command } from "commander";
import { LifeboatError } from "../base/index.js";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
// The config module alone, not the control plane's index: `inspect IMAGE` starts in a
// fraction of the time without its HTTP server and database drivers.
import { dataPaths, loadConfig } from "../control/config.js";
import {
  type InspectReport,
  PROFILE_NAMES,
  inspectDisks,
  isProfileName,
  materializePit,
} from "../launch/index.js";
import { resolvePit } from "../store/index.js";
import { type CliContext, withRepo } from "./context.js";
import { formatBytes, printJson, printLines } from "./output.js";
import { action } from "./store.js";

/**
 * `lifeboat inspect IMAGE...`: launch readiness of one server's disk images.
 * Exit 0 when ready for the profile, 1 when not, 2 on usage errors.
 */
export function inspectCommand(): Command {
  return new Command("inspect")
    .description("say whether a server's disk images would boot on a target platform, and what to fix")
    .argument("[images...]", "the server's disk images (or block devices), boot disk first")
    .option("--profile <name>", `boot profile of the target platform: ${PROFILE_NAMES.join(", ")}`, "kvm")
    .option("--server <server>", "inspect a server's PIT from the repository (with --pit)")
    .option("--pit <id>", "the PIT to inspect with --server: an id or latest", "latest")
    .option("--data-dir <dir>", "the control plane's data directory (its repository and key)")
    .option("--repo <location>", "repository: a directory or s3://bucket/prefix?endpoint=...")
    .option("--key-file <file>", "repository key")
    .action(
      action<InspectOpts>(async (ctx, o, cmd) => {
        const images = cmd.args;
        if (o.server !== undefined) {
          if (images.length > 0)
            throw new LifeboatError("USAGE", "give disk images or --server, not both", {
              hint: "lifeboat inspect --server S --pit P, or lifeboat inspect IMAGE...",
              exitCode: 2,
            });
          return inspectPit(ctx, o);
        }
        if (images.length === 0)
          throw new LifeboatError("USAGE", "give at least one disk image", {
            hint: "lifeboat inspect IMAGE... [--profile kvm]",
            exitCode: 2,
          });
        if (!isProfileName(o.profile))
          throw new LifeboatError("USAGE", `unknown profile ${JSON.stringify(o.profile)}`, {
            hint: `use one of ${PROFILE_NAMES.join(", ")}`,
            exitCode: 2,
          });
        const report = await inspectDisks(images, { profile: o.profile });
        if (ctx.json) printJson(report);
        else printLines(humanReport(report));
        return report.ready ? 0 : 1;
      }),
    );
}

interface InspectOpts {
  profile: string;
  server?: string;
  pit: string;
  dataDir?: string;
  repo?: string;
  keyFile?: string;
}

/**
 * `inspect --server S --pit P`: materializes the PIT's disks from the
 * repository into a private temporary directory, inspects them, removes them.
 */
async function inspectPit(ctx: CliContext, o: InspectOpts): Promise<number> {
  const profile = o.profile;
  if (!isProfileName(profile))
    throw new LifeboatError("USAGE", `unknown profile ${JSON.stringify(profile)}`, {
      hint: `use one of ${PROFILE_NAMES.join(", ")}`,
      exitCode: 2,
    });
  let repoOpts: { repo?: string; keyFile?: string } = o;
  if (o.dataDir !== undefined) {
    const config = await loadConfig(dataPaths(o.dataDir).config);
    repoOpts = { repo: o.repo ?? config.repository, keyFile: o.keyFile ?? dataPaths(o.dataDir).repoKey };
  }
  return withRepo(ctx, repoOpts, async (repo) => {
    const pit = await resolvePit(repo, o.pit, o.server);
    const tmp = await mkdtemp(path.join(os.tmpdir(), "lifeboat-inspect-"));
    try {
      const { disks } = await materializePit(repo, pit, tmp, `inspect-${pit.id}`);
      const report = await inspectDisks(
        disks.map((d) => d.path),
        { profile },
      );
      const out = {
        ...report,
        server: pit.server,
        pit: { id: pit.id, time: pit.time, consistency: pit.consistency },
      };
      if (ctx.json) printJson(out);
      else
        printLines([
          `${pit.server}, PIT ${pit.id} of ${pit.time} (${pit.consistency})`,
          ...humanReport(report),
        ]);
      return report.ready ? 0 : 1;
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
  });
}

function humanReport(r: InspectReport): string[] {
  const out: string[] = [];
  for (const d of r.disks) {
    out.push(
      `disk ${d.index}: ${d.path} (${formatBytes(d.sizeBytes)}, ${d.partitionTable.type} partition table)`,
    );
    for (const f of d.filesystems)
      out.push(
        `  ${f.partition === undefined ? "whole disk" : `partition ${f.partition}`}: ${f.type}${f.uuid ? ` UUID=${f.uuid}` : ""}${f.label ? ` LABEL=${f.label}` : ""}${f.root ? "  (root)" : ""}`,
      );
    if (d.os) out.push(`  os: ${d.os.prettyName ?? d.os.name}`);
    if (d.bootloader) out.push(`  boot loader: GRUB 2 (${d.bootloader.firmware}), ${d.bootloader.config}`);
    for (const k of d.kernels) {
      const v = k.profiles[r.profile];
      const ird = k.initramfs
        ? `${k.initramfs.path}, ${k.initramfs.compression}, ${k.initramfs.moduleCount} modules`
        : "no initramfs";
      out.push(
        `  kernel ${k.version}${k.default ? " (default)" : ""}: ${ird}; ${r.profile}: ${v.ready ? "ready" : `lacks ${v.missing.join(" and ")}`}`,
      );
    }
    out.push(`  verdict: ${d.verdict}`);
  }
  for (const p of r.problems) out.push(`${p.severity} [${p.code}]: ${p.message}`, `  fix: ${p.remedy}`);
  out.push(`${r.ready ? "READY" : "NOT READY"}: ${r.verdict}`);
  return out;
}
