import os from "node:os";
import { createInterface } from "node:readline/promises";
import { Command } from "commander";
import { LifeboatError, isLifeboatError } from "../base/index.js";
import {
  type AgentConfig,
  type AgentStatus,
  DEFAULT_AGENT_CONFIG_DIR,
  type HostInfo,
  discoverBlockDevices,
  discoverHost,
  loadAgentConfig,
  refuseLaunchedCopy,
} from "../agent/index.js";
import {
  type ChosenDisk,
  checkDisk,
  currentStatus,
  deregisterInstalled,
  installAgent,
  removeInstallation,
  requestRescan,
  stopAgent,
} from "../agent/install.js";
import { parseFingerprint } from "../net/index.js";
import { type CliContext, parseIntOption, parseSize, requireOption } from "./context.js";
import { formatBytes, printJson, printLines } from "./output.js";
import { action } from "./action.js";
import { agentDisksCommand } from "./agent-disks.js";
import { agentUpgradeCommand } from "./agent-upgrade.js";
import { readCaFile, readTokenInput } from "./token-input.js";

const HOSTNAME = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

interface InstallOpts {
  endpoint?: string;
  tokenFile?: string;
  caFile?: string;
  caFingerprint?: string;
  devices?: string;
  diskImage?: string[];
  configDir: string;
  prompt: boolean;
  hostname?: string;
  blockSize: string;
}

const configDirOption = (c: Command) =>
  c.option("--config-dir <dir>", "the agent's configuration directory", DEFAULT_AGENT_CONFIG_DIR);

/** `lifeboat agent install|run|status|rescan|uninstall`: the agent on a source server. */
export function agentCommand(): Command {
  const agent = new Command("agent").description(
    "the agent on a source server: install, run, status, uninstall",
  );

  configDirOption(
    agent
      .command("install")
      .description("register this server with an install token and write the agent's configuration"),
  )
    .option("--endpoint <url>", "the control plane, https://host:port")
    .option(
      "--token-file <file>",
      "file holding the install token (else LIFEBOAT_TOKEN, else standard input)",
    )
    .option("--ca-file <file>", "the Lifeboat CA certificate (the server's D/ca.pem)")
    .option("--ca-fingerprint <sha256>", "SHA-256 fingerprint of the CA certificate, instead of --ca-file")
    .option("--devices <list>", "block devices to replicate, comma-separated (/dev/sdb,/dev/sdc)")
    .option("--disk-image <path>", "an image file to replicate (repeatable)", collect, undefined)
    .option("--no-prompt", "do not ask which disks: take every non-removable disk")
    .option("--hostname <name>", "the name this host registers with (default: its host name)")
    .option("--block-size <bytes>", "block size on the wire, a power of two from 16KiB to 16MiB", "65536")
    .action(action<InstallOpts>((ctx, o) => install(ctx, o)));

  configDirOption(agent.command("run").description("run the agent service in the foreground"))
    .option(
      "--failback-only",
      "never replicate; receive a failback and exit when it ends (0: ready; the failback boot environment)",
    )
    .action(
      action<{ configDir: string; failbackOnly?: boolean }>(async (ctx, o) => {
        // A launched copy of a protected server must never connect as that server.
        await refuseLaunchedCopy(o.configDir);
        const { runAgent } = await import("../agent/run-agent.js");
        const ready = await runAgent({
          configDir: o.configDir,
          logger: ctx.logger,
          failbackOnly: o.failbackOnly === true,
        });
        if (o.failbackOnly && !ready)
          throw new LifeboatError("FAILBACK_RECEIVE_ENDED", "the failback ended without becoming ready", {
            hint: "see `lifeboat failback show` on the recovery site",
            exitCode: 1,
          });
      }),
    );

  configDirOption(
    agent.command("status").description("what the agent is doing (STOPPED when it does not run)"),
  ).action(
    action<{ configDir: string }>(async (ctx, o) => {
      const config = await loadAgentConfig(o.configDir);
      const status = (await currentStatus(o.configDir)) ?? neverRan(config.serverId);
      if (ctx.json) printJson({ ...status, configDir: o.configDir });
      else printLines(statusLines(status));
    }),
  );

  configDirOption(
    agent.command("rescan").description("ask the agent to compare its disks with the replica again"),
  )
    .option("--disk <n>", "only this disk index (repeatable; default: every disk)", collect, undefined)
    .action(
      action<{ configDir: string; disk?: string[] }>(async (ctx, o) => {
        const config = await loadAgentConfig(o.configDir);
        const disks = o.disk === undefined ? null : o.disk.map((d) => parseIntOption(d, "--disk"));
        const known = config.disks.map((d) => d.index);
        const unknown = (disks ?? []).filter((d) => !known.includes(d));
        if (unknown.length)
          throw new LifeboatError(
            "USAGE",
            `no disk ${unknown.join(", ")}; this agent's disks are ${known.join(", ")}`,
            {
              hint: "see `lifeboat agent status` for the disk indexes",
              exitCode: 2,
            },
          );
        const r = await requestRescan(o.configDir, disks);
        if (ctx.json) printJson({ requested: true, disks, delivered: r.delivered });
        else
          printLines([
            r.file,
            r.delivered
              ? `rescan of ${disks === null ? "every disk" : `disk ${disks.join(", ")}`} requested from the running agent`
              : "no agent is running: the rescan runs when it next starts",
          ]);
      }),
    );

  configDirOption(
    agent
      .command("uninstall")
      .description("stop the agent, deregister this server and remove its configuration"),
  )
    .option("--keep-config", "remove only the private key; keep config.json and the state")
    .option("--force", "remove the local installation even when the server cannot be told")
    .action(action<UninstallOpts>((ctx, o) => uninstall(ctx, o)));
  agent.addCommand(agentDisksCommand());
  agent.addCommand(agentUpgradeCommand(DEFAULT_AGENT_CONFIG_DIR));
  return agent;
}

interface UninstallOpts {
  configDir: string;
  keepConfig?: boolean;
  force?: boolean;
}

/**
 * Stops the agent, deregisters, removes D. The server is told first, so a
 * failure there leaves the installation as it was, unless --force, which
 * also removes an installation whose config.json is damaged.
 */
async function uninstall(ctx: CliContext, o: UninstallOpts): Promise<void> {
  let config: AgentConfig | undefined;
  try {
    config = await loadAgentConfig(o.configDir);
  } catch (err) {
    if (!(o.force && isLifeboatError(err, "AGENT_CONFIG_INVALID"))) throw err;
    warn(ctx, err, "the configuration is damaged; removing it without deregistering (--force)");
  }
  const stopped = await stopAgent(o.configDir);
  let deregistered = false;
  if (config !== undefined) {
    try {
      await deregisterInstalled(o.configDir, config);
      deregistered = true;
    } catch (err) {
      if (!o.force) throw withForceHint(err);
      warn(
        ctx,
        err,
        `server ${config.serverName} was not deregistered; removing the installation anyway (--force)`,
      );
    }
  }
  const removed = await removeInstallation(o.configDir, Boolean(o.keepConfig));
  const who = config === undefined ? "this server" : `server ${config.serverName} (${config.serverId})`;
  if (ctx.json)
    printJson({
      serverId: config?.serverId ?? null,
      serverName: config?.serverName ?? null,
      stoppedPid: stopped ?? null,
      deregistered,
      removed,
    });
  else
    printLines([
      ...(stopped !== undefined ? [`stopped agent (pid ${stopped})`] : []),
      deregistered
        ? `${who} decommissioned; its PITs stay on the server`
        : `${who} NOT deregistered: decommission it with \`lifeboat servers decommission --yes\``,
      `removed ${removed}`,
    ]);
}

function warn(ctx: CliContext, err: unknown, what: string): void {
  ctx.logger.warn({ err }, what);
  if (!ctx.json) process.stderr.write(`warning: ${what}: ${(err as Error).message}\n`);
}

function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

async function install(ctx: CliContext, o: InstallOpts): Promise<void> {
  const endpoint = requireOption(o.endpoint, "--endpoint");
  if (!/^https:\/\/[^/]+\/?$/.test(endpoint))
    throw new LifeboatError("USAGE", `--endpoint ${endpoint} is not https://HOST:PORT`, {
      hint: "Lifeboat speaks TLS only; give the control plane's address, without a path",
      exitCode: 2,
    });
  if (o.caFile === undefined && o.caFingerprint === undefined)
    throw new LifeboatError("USAGE", "give --ca-file or --ca-fingerprint", {
      hint: "the agent trusts only the Lifeboat CA: its file (the server's D/ca.pem) or its SHA-256 fingerprint",
      exitCode: 2,
    });
  if (o.devices !== undefined && o.diskImage !== undefined)
    throw new LifeboatError("USAGE", "give --devices or --disk-image, not both", { exitCode: 2 });
  const blockSize = parseSize(o.blockSize, "--block-size");
  if (blockSize < 16384 || blockSize > 16 << 20 || (blockSize & (blockSize - 1)) !== 0)
    throw new LifeboatError("USAGE", `--block-size ${o.blockSize}: give a power of two from 16KiB to 16MiB`, {
      exitCode: 2,
    });
  // Every flag is checked before the token is read or anything is sent.
  if (o.caFingerprint !== undefined) parseFingerprint(o.caFingerprint);
  const caPem = o.caFile === undefined ? undefined : await readCaFile(o.caFile);
  const token = await readToken(o.tokenFile);
  const host = await discoverHost().catch((err: unknown) => {
    ctx.logger.warn({ err }, "host discovery failed; registering without it");
    return undefined;
  });
  const hostname = o.hostname ?? host?.hostname ?? os.hostname();
  if (!HOSTNAME.test(hostname) || hostname.length > 253)
    throw new LifeboatError("USAGE", `host name ${JSON.stringify(hostname)} cannot be registered`, {
      hint: "give --hostname with letters, digits, '.', '_' and '-'",
      exitCode: 2,
    });
  const { disks, selection } = await chooseDisks(ctx, o);
  const r = await installAgent({
    configDir: o.configDir,
    endpoint,
    token,
    ...(caPem !== undefined ? { caPem } : {}),
    ...(o.caFingerprint !== undefined ? { caFingerprint: o.caFingerprint } : {}),
    hostname,
    blockSize,
    disks,
    diskSelection: selection,
    inventory: inventoryOf(host, disks),
    logger: ctx.logger,
  });
  if (ctx.json)
    printJson({ serverId: r.serverId, serverName: r.serverName, configDir: r.configDir, disks: r.disks });
  else printLines([...r.written, `server ${r.serverName} (${r.serverId})`]);
}

function inventoryOf(host: HostInfo | undefined, disks: ChosenDisk[]): Record<string, unknown> {
  return { ...(host ?? {}), disks: disks.map((d, index) => ({ index, ...d })) };
}

/** The install token; standard input is read when it is not a terminal. */
async function readToken(tokenFile: string | undefined): Promise<string> {
  const token = await readTokenInput(tokenFile, () => !process.stdin.isTTY);
  if (!token)
    throw new LifeboatError("USAGE", "no install token", {
      hint: "give --token-file F, set LIFEBOAT_TOKEN, or pipe the token to standard input (never on the command line)",
      exitCode: 2,
    });
  return token;
}

/**
 * --devices, --disk-image, or the discovered disks (asking on a terminal
 * unless --no-prompt). `selection` is "all" when no list was given nor
 * chosen: the running agent then adds disks that appear later.
 */
async function chooseDisks(
  ctx: CliContext,
  o: InstallOpts,
): Promise<{ disks: ChosenDisk[]; selection: "all" | "listed" }> {
  if (o.diskImage !== undefined) return { disks: await checkAll(o.diskImage, "image"), selection: "listed" };
  if (o.devices !== undefined)
    return {
      disks: await checkAll(
        o.devices
          .split(",")
          .map((s) => s.trim())
          .filter(Boolean),
        "device",
      ),
      selection: "listed",
    };
  let selection: "all" | "listed" = "all";
  const found = (
    await discoverBlockDevices().catch((err: unknown) => {
      ctx.logger.warn({ err }, "block device discovery failed");
      return [];
    })
  ).filter((d) => d.kind === "disk" && !d.readOnly);
  let chosen = found.filter((d) => !d.removable);
  if (o.prompt && process.stdin.isTTY && found.length > 0) {
    const lines = found.map(
      (d, i) =>
        `  ${i + 1}) ${d.path}  ${formatBytes(d.sizeBytes)}${d.removable ? "  removable" : ""}${
          d.mounts.length || d.partitions.some((p) => p.mounts.length) ? "  mounted" : ""
        }`,
    );
    process.stderr.write(`disks on this server:\n${lines.join("\n")}\n`);
    const rl = createInterface({ input: process.stdin, output: process.stderr });
    try {
      const answer = (
        await rl.question("replicate which (numbers, comma-separated; empty: all non-removable)? ")
      ).trim();
      if (answer !== "") selection = "listed";
      if (answer !== "")
        chosen = answer.split(",").map((s) => {
          const n = Number(s.trim());
          const d = Number.isInteger(n) ? found[n - 1] : undefined;
          if (d === undefined)
            throw new LifeboatError("USAGE", `no disk number ${s.trim()}`, {
              hint: "answer with the numbers listed",
              exitCode: 2,
            });
          return d;
        });
    } finally {
      rl.close();
    }
  }
  if (chosen.length === 0)
    throw new LifeboatError("AGENT_NO_DISKS", "no disk to replicate: none given and none found", {
      hint: "give --devices /dev/sdb,... or --disk-image PATH",
      exitCode: 2,
    });
  return { disks: await checkAll([...new Set(chosen.map((d) => d.path))], "device"), selection };
}

async function checkAll(paths: string[], kind: ChosenDisk["kind"]): Promise<ChosenDisk[]> {
  const out: ChosenDisk[] = [];
  for (const p of paths) out.push(await checkDisk(p, kind));
  if (new Set(out.map((d) => d.path)).size !== out.length)
    throw new LifeboatError("AGENT_DISK_INVALID", "the same disk is named twice", { exitCode: 2 });
  if (out.length === 0)
    throw new LifeboatError("AGENT_NO_DISKS", "no disk to replicate was given", { exitCode: 2 });
  return out;
}

function withForceHint(err: unknown): unknown {
  if (!(err instanceof LifeboatError)) return err;
  return new LifeboatError(err.code, `cannot deregister this server: ${err.message}`, {
    hint: `${err.hint ? `${err.hint} ` : ""}Nothing was removed; \`lifeboat agent uninstall --force\` removes the local installation anyway (then decommission the server with \`lifeboat servers decommission\`).`,
    cause: err,
    retryable: err.retryable,
    exitCode: err.exitCode,
  });
}

function neverRan(serverId: string): AgentStatus {
  return {
    state: "STOPPED",
    tracker: "scan",
    lagSeconds: 0,
    backlogBytes: 0,
    disks: [],
    serverId,
    pid: 0,
    updatedAt: 0,
    connected: false,
    counters: { bytesRead: 0, bytesSent: 0, blocksSent: 0, rescans: 0, traceLosses: 0 },
  };
}

function statusLines(s: AgentStatus): string[] {
  const row = (k: string, v: string) => `${k.padEnd(10)} ${v}`;
  const lines = [
    row("state", s.state),
    row("tracker", s.tracker),
    row("lag", `${s.lagSeconds.toFixed(0)}s`),
    row("backlog", formatBytes(s.backlogBytes)),
    row("connected", s.connected ? "yes" : "no"),
    row(
      "last PIT",
      s.lastPit
        ? `${s.lastPit.pitId} ${new Date(s.lastPit.takenAt).toISOString()} ${s.lastPit.consistency}`
        : "-",
    ),
  ];
  if (s.updatedAt > 0) lines.push(row("updated", new Date(s.updatedAt).toISOString()));
  if (s.lastError) lines.push(row("error", `[${s.lastError.code}] ${s.lastError.message}`));
  for (const d of s.disks) {
    const progress = d.progress
      ? `  ${((100 * d.progress.doneBytes) / Math.max(1, d.progress.totalBytes)).toFixed(1)}%${
          d.progress.etaSeconds !== null ? ` ETA ${d.progress.etaSeconds.toFixed(0)}s` : ""
        }`
      : "";
    const missing =
      d.missingSince !== undefined
        ? `  since ${new Date(d.missingSince).toISOString()} (${d.missingReason ?? "gone"})`
        : "";
    lines.push(
      `disk ${d.index}  ${d.path}  ${d.state}${progress}${missing}  dirty ${formatBytes(d.dirtyBytes)}`,
    );
  }
  return lines;
}
