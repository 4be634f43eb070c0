import { Command } from "commander";
import { LifeboatError } from "../base/index.js";
import { type InspectReport, PROFILE_NAMES, inspectDisks, isProfileName } from "../launch/index.js";
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
    .option("--server <server>", "inspect a server's PIT from the repository (needs --pit)")
    .option("--pit <id>", "the PIT to inspect with --server")
    .action(
      action<{ profile: string; server?: string; pit?: string }>(async (ctx, o, cmd) => {
        const images = cmd.args;
        if (o.server !== undefined || o.pit !== undefined)
          throw new LifeboatError("USAGE", "inspect --server/--pit is not available yet", {
            hint: "export the PIT's disks with `lifeboat store export` and inspect the image files",
            exitCode: 2,
          });
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
