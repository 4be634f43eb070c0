/**
 * The agent's configuration directory (`--config-dir D`, default
 * /etc/lifeboat/agent), written by `agent install` and read by `agent run`:
 *
 *   D/config.json   this file's AgentConfig (0600)
 *   D/agent.key     the agent's private key (0600)
 *   D/agent.pem     its client certificate, issued at registration
 *   D/ca.pem        the Lifeboat CA it trusts
 *   D/state/        run-time state (0700): status.json, the dirty sets
 *                   (disk-N.dirty), the wire resume token (session.json)
 *
 * The directory itself is 0700. Every file is replaced atomically.
 *
 * In a launched copy of a protected server (a drill or a recovery), the
 * launch replaces config.json with a *launched-copy marker* and removes the
 * key, the certificate and the state: the copy must never connect as the
 * server it was copied from. An agent that finds the marker refuses to run
 * (AGENT_LAUNCHED_COPY).
 */
import { promises as fs } from "node:fs";
import path from "node:path";
import { z } from "zod";
import { LifeboatError, writeFileAtomic } from "../base/index.js";

export const DEFAULT_AGENT_CONFIG_DIR = "/etc/lifeboat/agent";
export const AGENT_CONFIG_VERSION = 1;

const diskSchema = z.object({
  /** Index on the wire and in PITs; stable for the life of the disk. */
  index: z.number().int().min(0).max(255),
  /** A block device or an image file. */
  path: z.string().min(1),
  kind: z.enum(["device", "image"]),
  /** Stable id (by-id name, serial or the path). */
  id: z.string().min(1).max(256),
});
export type AgentDisk = z.infer<typeof diskSchema>;

/**
 * A disk the agent no longer replicates (`agent disks remove`, or gone for
 * longer than the grace period). Its index is never given to another disk,
 * so the PITs that hold it keep meaning what they meant.
 */
const retiredDiskSchema = diskSchema.extend({
  /** When it was retired, ISO 8601. */
  retiredAt: z.string(),
  /** "removed": by the operator; "missing": its device was gone for the grace period. */
  reason: z.enum(["removed", "missing"]),
});
export type RetiredDisk = z.infer<typeof retiredDiskSchema>;

const settingsSchema = z.object({
  /** Seconds between scheduled consistency points (0: only on demand). */
  pitIntervalSeconds: z.number().int().min(0).default(600),
  /** Hard cap on how long filesystems stay frozen. */
  freezeCapMs: z.number().int().min(100).max(60_000).default(2000),
  /** Lag above this is BACKLOG instead of CONTINUOUS. */
  lagThresholdSeconds: z.number().min(0).default(30),
  /** Nothing shipped for this long while there is a backlog: STALLED. */
  stallSeconds: z.number().min(1).default(300),
  /** Bandwidth cap in Mbit/s (0: none). */
  bandwidthMbps: z.number().min(0).default(0),
  /** Commands run before the freeze and after the thaw (argv, no shell); both or neither. */
  preHook: z.array(z.string()).min(1).optional(),
  postHook: z.array(z.string()).min(1).optional(),
  /** Per-CPU trace buffer in KiB (default: the kernel's). */
  traceBufferKb: z.number().int().min(4).optional(),
  /** "auto": trace where the disk is a block device and tracefs works, else scan. */
  tracker: z.enum(["auto", "trace", "scan"]).default("auto"),
  /** Seconds between checks of the disks: config.json's list, missing devices, new disks (default 10). */
  diskCheckSeconds: z.number().min(0.1).max(3600).optional(),
  /** A configured disk whose device stays gone this long is retired (default 300). */
  missingDiskGraceSeconds: z.number().min(0).optional(),
});
export type AgentSettings = z.infer<typeof settingsSchema>;

export const agentConfigSchema = z
  .object({
    version: z.literal(AGENT_CONFIG_VERSION),
    /** The control plane, https://host:port. */
    endpoint: z.string().url(),
    /** Where replication data goes, host:port; defaults to the endpoint's. */
    dataAddress: z.string().optional(),
    serverId: z.string().min(1),
    serverName: z.string().min(1),
    hostname: z.string().min(1),
    /** Block size on the wire; the repository's chunk size. */
    blockSize: z.number().int().default(65536),
    disks: z.array(diskSchema).max(256),
    /**
     * "all": installed without a disk list, the running agent adds new
     * non-removable disks itself; "listed": only the disks named (and those
     * added with `agent disks add`). Configurations written before this field
     * are "listed".
     */
    diskSelection: z.enum(["all", "listed"]).default("listed"),
    /** Disks no longer replicated; their indexes stay taken. */
    retiredDisks: z.array(retiredDiskSchema).max(256).default([]),
    settings: settingsSchema.prefault({}),
    /** The root directory whose /boot the boot inventory reads (default "/"; tests give a tree). */
    bootRoot: z.string().startsWith("/").optional(),
  })
  .superRefine((c, ctx) => {
    const seen = new Set<number>();
    for (const d of [...c.disks, ...c.retiredDisks]) {
      if (seen.has(d.index))
        ctx.addIssue({ code: "custom", path: ["disks"], message: `disk index ${d.index} is used twice` });
      seen.add(d.index);
    }
  });
export type AgentConfig = z.infer<typeof agentConfigSchema>;

export interface AgentPaths {
  dir: string;
  config: string;
  key: string;
  cert: string;
  ca: string;
  state: string;
  status: string;
  session: string;
  dirty(index: number): string;
  /** Held while config.json is read, changed and written back (disk-set.ts). */
  configLock: string;
}

export function agentPaths(dir: string): AgentPaths {
  const state = path.join(dir, "state");
  return {
    dir,
    config: path.join(dir, "config.json"),
    key: path.join(dir, "agent.key"),
    cert: path.join(dir, "agent.pem"),
    ca: path.join(dir, "ca.pem"),
    state,
    status: path.join(state, "status.json"),
    session: path.join(state, "session.json"),
    dirty: (index) => path.join(state, `disk-${index}.dirty`),
    configLock: path.join(dir, "config.lock"),
  };
}

/**
 * What a launch leaves in D/config.json of a launched copy: who it is a copy
 * of and which job made it. Nothing secret.
 */
export const launchedCopyMarkerSchema = z.object({
  launchedCopy: z.object({
    /** The protected server the copy was made from (its name, else its id). */
    server: z.string().min(1),
    serverId: z.string().optional(),
    jobId: z.string().min(1),
    jobType: z.enum(["drill", "recovery"]),
    /** When the launch prepared the copy, ISO 8601. */
    at: z.string(),
  }),
});
export type LaunchedCopyMarker = z.infer<typeof launchedCopyMarkerSchema>["launchedCopy"];

/** The text of a launched-copy marker (config.json of a launched copy). */
export function launchedCopyMarkerText(m: LaunchedCopyMarker): string {
  const note =
    "This machine is a launched copy of a server protected by Lifeboat. Its agent identity was removed; the agent refuses to run here. To protect this machine, remove this directory and install the agent afresh with a new token.";
  return `${JSON.stringify({ launchedCopy: m, note }, null, 2)}\n`;
}

function launchedCopyError(dir: string, raw: unknown): LifeboatError | null {
  if (raw === null || typeof raw !== "object" || !("launchedCopy" in raw)) return null;
  const parsed = launchedCopyMarkerSchema.safeParse(raw);
  const m = parsed.success ? parsed.data.launchedCopy : null;
  const what = m
    ? `this machine is a launched copy of ${m.server} (${m.jobType} job ${m.jobId}, ${m.at})`
    : "this machine is a launched copy of a protected server";
  return new LifeboatError("AGENT_LAUNCHED_COPY", `${what}: the agent does not run on a copy`, {
    hint: `install the agent afresh with a new token to protect it: remove ${dir} (it holds no secret) and run \`lifeboat agent install\``,
  });
}

/** Throws AGENT_LAUNCHED_COPY when D/config.json is a launched-copy marker; anything else is left to loadAgentConfig. */
export async function refuseLaunchedCopy(dir: string): Promise<void> {
  let raw: unknown;
  try {
    raw = JSON.parse(await fs.readFile(agentPaths(dir).config, "utf8"));
  } catch {
    return;
  }
  const err = launchedCopyError(dir, raw);
  if (err) throw err;
}

/**
 * Reads and checks D/config.json; AGENT_NOT_INSTALLED when it is missing,
 * AGENT_CONFIG_INVALID when it is wrong, AGENT_LAUNCHED_COPY when it is the
 * marker a launch leaves in a copy.
 */
export async function loadAgentConfig(dir: string): Promise<AgentConfig> {
  const file = agentPaths(dir).config;
  let text: string;
  try {
    text = await fs.readFile(file, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT")
      throw new LifeboatError("AGENT_NOT_INSTALLED", `no agent configuration at ${file}`, {
        hint: "run `lifeboat agent install` first, or give the --config-dir it used",
        cause: err,
      });
    throw new LifeboatError("AGENT_CONFIG_INVALID", `cannot read ${file}: ${(err as Error).message}`, {
      hint: "run as root (the file is 0600)",
      cause: err,
    });
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new LifeboatError("AGENT_CONFIG_INVALID", `${file} is not JSON: ${(err as Error).message}`, {
      hint: "restore the file, or uninstall and install the agent again",
      cause: err,
    });
  }
  const copy = launchedCopyError(dir, raw);
  if (copy) throw copy;
  const parsed = agentConfigSchema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw new LifeboatError(
      "AGENT_CONFIG_INVALID",
      `${file}: ${issue.path.join(".") || "(top)"}: ${issue.message}`,
      { hint: "fix the field, or uninstall and install the agent again" },
    );
  }
  return parsed.data;
}

/** Writes D/config.json atomically (0600), creating D and D/state (0700) if needed. */
export async function saveAgentConfig(dir: string, config: AgentConfig): Promise<void> {
  const p = agentPaths(dir);
  await fs.mkdir(p.state, { recursive: true, mode: 0o700 });
  await fs.chmod(dir, 0o700);
  await writeFileAtomic(p.config, `${JSON.stringify(agentConfigSchema.parse(config), null, 2)}\n`);
}

/** host and port of the replicator: the configured data address, else the endpoint's. */
export function dataAddressOf(config: AgentConfig): { host: string; port: number } {
  if (config.dataAddress) return parseAddress(config.dataAddress);
  const u = new URL(config.endpoint);
  return { host: u.hostname.replace(/^\[|\]$/g, ""), port: Number(u.port || 443) };
}

/** `host:port` or `[v6]:port`. */
export function parseAddress(address: string): { host: string; port: number } {
  const m = /^\[?(.*?)\]?:(\d+)$/.exec(address);
  if (!m)
    throw new LifeboatError("AGENT_CONFIG_INVALID", `data address ${address} is not host:port`, {
      hint: "fix dataAddress in config.json (or the replicator's registered address)",
    });
  return { host: m[1]!, port: Number(m[2]) };
}
