/**
 * `lifeboat agent disks list|add|remove`: the agent's disk list, changed on
 * the source server itself (root: config.json is 0600). A running agent
 * takes a change without a restart (src/agent/disk-changes.ts): it is
 * signalled at once, and checks config.json every `diskCheckSeconds` anyway.
 */
import { promises as fs } from "node:fs";
import { Command } from "commander";
import {
  type AgentConfig,
  type AgentStatus,
  DEFAULT_AGENT_CONFIG_DIR,
  agentPaths,
  loadAgentConfig,
} from "../agent/index.js";
import { addDisks, checkNewDisk, editAgentConfig, findDisk, retireDisk } from "../agent/index.js";
import { currentStatus, notifyAgent } from "../agent/install.js";
import type { ChosenDisk } from "../agent/install.js";
import { action } from "./action.js";
import { formatBytes, printJson, printLines } from "./output.js";

interface Opts {
  configDir: string;
}

const withConfigDir = (c: Command) =>
  c.option("--config-dir <dir>", "the agent's configuration directory", DEFAULT_AGENT_CONFIG_DIR);

export function agentDisksCommand(): Command {
  const disks = new Command("disks").description(
    "the disks this agent replicates: list, add, remove (a running agent follows at once)",
  );

  withConfigDir(disks.command("list").description("configured and retired disks, with their state")).action(
    action<Opts>(async (ctx, o) => {
      const config = await loadAgentConfig(o.configDir);
      const status = await currentStatus(o.configDir);
      const running = status !== null && status.state !== "STOPPED";
      const stateOf = (index: number) =>
        running ? (status?.disks.find((d) => d.index === index)?.state ?? "PENDING") : "STOPPED";
      if (ctx.json) {
        printJson({
          diskSelection: config.diskSelection,
          running,
          disks: config.disks.map((d) => ({ ...d, state: stateOf(d.index) })),
          retired: config.retiredDisks,
        });
        return;
      }
      printLines([
        `selection ${config.diskSelection === "all" ? "all (new disks are added)" : "listed"}`,
        ...config.disks.map(
          (d) => `disk ${d.index}  ${d.path}  ${d.kind}  ${stateOf(d.index)}${missingNote(status, d.index)}`,
        ),
        ...config.retiredDisks.map((d) => `disk ${d.index}  ${d.path}  retired ${d.retiredAt} (${d.reason})`),
      ]);
    }),
  );

  withConfigDir(
    disks
      .command("add")
      .description("replicate more disks: each gets the next free index and an initial sync")
      .argument("<path...>", "block devices or image files"),
  ).action(
    action<Opts>(async (ctx, o, cmd) => {
      const paths = cmd.args;
      const { result: added } = await editAgentConfig(o.configDir, async (config) => {
        // All or nothing: each is checked against the configuration with those before it added.
        let next: AgentConfig = config;
        const chosen: ChosenDisk[] = [];
        for (const p of paths) {
          const c = await checkNewDisk(next, o.configDir, p);
          next = addDisks(next, [c]).config;
          chosen.push(c);
        }
        const r = addDisks(config, chosen);
        return {
          config: r.config,
          result: r.added.map((d, i) => ({ ...d, sizeBytes: chosen[i]!.sizeBytes })),
        };
      });
      const delivered = await notifyAgent(o.configDir);
      if (ctx.json) printJson({ added, running: delivered });
      else
        printLines([
          ...added.map((d) => `added disk ${d.index}  ${d.path}  ${d.kind}  ${formatBytes(d.sizeBytes)}`),
          delivered
            ? "the running agent starts its initial sync now"
            : "no agent is running: the disk is replicated when it starts",
        ]);
    }),
  );

  withConfigDir(
    disks
      .command("remove")
      .description("stop replicating a disk; its index stays retired and its PITs stay")
      .argument("<disk>", "the disk's path or index"),
  ).action(
    action<Opts>(async (ctx, o, cmd) => {
      const which = cmd.args[0]!;
      const { result: retired } = await editAgentConfig(o.configDir, (config) => {
        const disk = findDisk(config, which);
        const r = retireDisk(config, disk.index, "removed", Date.now());
        return { config: r.config, result: r.retired };
      });
      await fs.rm(agentPaths(o.configDir).dirty(retired.index), { force: true });
      const delivered = await notifyAgent(o.configDir);
      if (ctx.json) printJson({ removed: retired, running: delivered });
      else
        printLines([
          `removed disk ${retired.index}  ${retired.path}: no longer replicated; the PITs that hold it stay`,
          ...(delivered ? ["the running agent lets go of it now"] : []),
        ]);
    }),
  );
  return disks;
}

function missingNote(status: AgentStatus | null, index: number): string {
  const d = status?.disks.find((x) => x.index === index);
  if (d?.state !== "MISSING" || d.missingSince === undefined) return "";
  return `  since ${new Date(d.missingSince).toISOString()}: ${d.missingReason ?? "gone"}`;
}
