/**
 * Changing the agent's disk list in config.json: `agent disks add|remove`
 * and the running agent's own changes (disk-changes.ts) go through here.
 *
 * Indexes are never reused: a new disk gets one more than the highest index
 * ever given (configured or retired), so a PIT's disk N always means the
 * same disk. A retired disk stays listed in `retiredDisks` with when and why.
 *
 * Edits are read-modify-write under D/config.lock (created exclusively; one
 * older than 30 s is a crashed holder's and is taken over), and config.json
 * is replaced atomically.
 */
import { promises as fs } from "node:fs";
import path from "node:path";
import { type Clock, LifeboatError, systemClock } from "../base/index.js";
import { deviceNumbers } from "../store/block-device.js";
import {
  type AgentConfig,
  type AgentDisk,
  type RetiredDisk,
  agentPaths,
  loadAgentConfig,
  saveAgentConfig,
} from "./config.js";
import { type BlockDeviceInfo, discoverBlockDevices } from "./discovery.js";
import { type ChosenDisk, checkDisk } from "./install.js";

/** Disk indexes go on the wire as one byte. */
export const MAX_DISK_INDEX = 255;
const LOCK_STALE_MS = 30_000;
const LOCK_WAIT_MS = 10_000;

/** The index the next disk gets: one more than any index ever given. */
export function nextDiskIndex(config: Pick<AgentConfig, "disks" | "retiredDisks">): number {
  const used = [...config.disks, ...config.retiredDisks].map((d) => d.index);
  const next = used.length === 0 ? 0 : Math.max(...used) + 1;
  if (next > MAX_DISK_INDEX)
    throw new LifeboatError(
      "AGENT_DISK_INDEXES_EXHAUSTED",
      `every disk index up to ${MAX_DISK_INDEX} was given; indexes of retired disks are not reused`,
      { hint: "uninstall the agent and install it again (its PITs stay on the server)" },
    );
  return next;
}

/** `config` with `disks` added under new indexes, in order. */
export function addDisks(
  config: AgentConfig,
  disks: Pick<ChosenDisk, "path" | "kind" | "id">[],
): { config: AgentConfig; added: AgentDisk[] } {
  let c = config;
  const added: AgentDisk[] = [];
  for (const d of disks) {
    const disk: AgentDisk = { index: nextDiskIndex(c), path: d.path, kind: d.kind, id: d.id };
    c = { ...c, disks: [...c.disks, disk] };
    added.push(disk);
  }
  return { config: c, added };
}

/**
 * The configured disk named by `which`: an index (digits) or a path.
 * AGENT_DISK_NOT_FOUND otherwise (saying so when it was retired).
 */
export function findDisk(config: AgentConfig, which: string): AgentDisk {
  const byIndex = /^\d+$/.test(which);
  const abs = byIndex ? "" : path.resolve(which);
  const match = (d: AgentDisk) => (byIndex ? d.index === Number(which) : d.path === abs);
  const found = config.disks.find(match);
  if (found) return found;
  const retired = config.retiredDisks.filter(match).at(-1);
  const list = config.disks.map((d) => `${d.index} (${d.path})`).join(", ");
  throw new LifeboatError(
    "AGENT_DISK_NOT_FOUND",
    retired
      ? `disk ${retired.index} (${retired.path}) was retired ${retired.retiredAt} (${retired.reason})`
      : `no configured disk ${byIndex ? which : abs}; the disks are ${list || "none"}`,
    { hint: "see `lifeboat agent disks list`", exitCode: 2 },
  );
}

/**
 * `config` without disk `index`, which is listed as retired. Refuses the
 * last disk (AGENT_DISK_LAST): an agent replicates at least one.
 */
export function retireDisk(
  config: AgentConfig,
  index: number,
  reason: RetiredDisk["reason"],
  at: number,
): { config: AgentConfig; retired: RetiredDisk } {
  const disk = findDisk(config, String(index));
  if (config.disks.length === 1)
    throw new LifeboatError("AGENT_DISK_LAST", `disk ${disk.index} (${disk.path}) is the agent's only disk`, {
      hint: "add the disk that replaces it first, or stop protecting the server with `lifeboat agent uninstall` (its PITs stay)",
      exitCode: 2,
    });
  const retired: RetiredDisk = { ...disk, retiredAt: new Date(at).toISOString(), reason };
  return {
    config: {
      ...config,
      disks: config.disks.filter((d) => d.index !== index),
      retiredDisks: [...config.retiredDisks, retired],
    },
    retired,
  };
}

export interface CheckNewDiskOptions {
  /** The server's block devices (default: discovered now). */
  devices?: BlockDeviceInfo[];
}

/**
 * Checks that `p` can be added to `config`: a block device or a regular
 * file (AGENT_DISK_INVALID otherwise, or when it cannot be opened or is
 * empty), not a disk already configured under any name (same path, id,
 * device numbers, or a loop device over a configured image:
 * AGENT_DISK_ALREADY_CONFIGURED), not a partition of a configured disk nor a
 * disk with a configured partition (AGENT_DISK_OVERLAPS), and not where the
 * agent keeps its own configuration and state (AGENT_DISK_IS_STATE).
 */
export async function checkNewDisk(
  config: AgentConfig,
  configDir: string,
  p: string,
  opts: CheckNewDiskOptions = {},
): Promise<ChosenDisk> {
  const abs = path.resolve(p);
  const st = await fs.stat(abs).catch(() => null);
  const chosen = await checkDisk(abs, st?.isFile() ? "image" : "device");
  try {
    const fh = await fs.open(chosen.path, "r");
    await fh.close();
  } catch (err) {
    throw new LifeboatError(
      "AGENT_DISK_INVALID",
      `disk ${chosen.path} cannot be opened: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
      { hint: "run as root; a device must be attached (size above 0)", cause: err, exitCode: 2 },
    );
  }
  if (chosen.sizeBytes === 0)
    throw new LifeboatError("AGENT_DISK_INVALID", `disk ${chosen.path} is empty (size 0)`, {
      hint: "attach the device or give a non-empty image file",
      exitCode: 2,
    });
  const dir = path.resolve(configDir);
  if (chosen.path === dir || chosen.path.startsWith(`${dir}/`)) throw isState(chosen.path, dir);
  const same = config.disks.find((d) => d.path === chosen.path || d.id === chosen.id);
  if (same) throw alreadyConfigured(chosen.path, same);
  if (chosen.kind === "image") {
    // An image that a configured loop device reads.
    const devices = opts.devices ?? (await discoverBlockDevices().catch(() => []));
    const real = await fs.realpath(chosen.path);
    for (const d of config.disks) {
      const loop = await infoOf(d, devices);
      if (loop?.whole.backingFile && (await fs.realpath(loop.whole.backingFile).catch(() => "")) === real)
        throw alreadyConfigured(chosen.path, d);
    }
    return chosen;
  }
  const devices = opts.devices ?? (await discoverBlockDevices());
  const me = await infoOf(chosen, devices);
  for (const d of config.disks) {
    if (d.kind === "image") {
      if (me?.whole.backingFile && me.part === null) {
        const [a, b] = await Promise.all([
          fs.realpath(me.whole.backingFile).catch(() => me.whole.backingFile),
          fs.realpath(d.path).catch(() => d.path),
        ]);
        if (a === b) throw alreadyConfigured(chosen.path, d);
      }
      continue;
    }
    const other = await infoOf(d, devices);
    if (!me || !other) continue;
    if (me.major === other.major && me.minor === other.minor) throw alreadyConfigured(chosen.path, d);
    // Two partitions of one disk do not overlap; a disk and one of its partitions do.
    if (me.whole === other.whole && (me.part === null) !== (other.part === null))
      throw new LifeboatError(
        "AGENT_DISK_OVERLAPS",
        `disk ${chosen.path} ${me.part ? "is a partition of" : "holds"} ${d.path}, which disk ${d.index} replicates`,
        {
          hint: "replicate either the whole disk or its partitions, not both; `lifeboat agent disks list` shows the disks",
          exitCode: 2,
        },
      );
  }
  if (me) {
    const mounts = me.part
      ? (me.whole.partitions.find((x) => x.name === me.part)?.mounts ?? [])
      : [...me.whole.mounts, ...me.whole.partitions.flatMap((x) => x.mounts)];
    const state = agentPaths(dir).state;
    const m = mounts.find((x) => x.mountPoint === dir || x.mountPoint === state);
    if (m) throw isState(`${chosen.path} (mounted on ${m.mountPoint})`, dir);
  }
  return chosen;
}

/** Where a configured or chosen device sits among `devices`: its whole disk, and its partition if it is one. */
async function infoOf(
  d: { path: string },
  devices: BlockDeviceInfo[],
): Promise<{ major: number; minor: number; whole: BlockDeviceInfo; part: string | null } | null> {
  const st = await fs.stat(d.path).catch(() => null);
  if (!st?.isBlockDevice()) return null;
  const { major, minor } = deviceNumbers(st.rdev);
  for (const whole of devices) {
    if (whole.major === major && whole.minor === minor) return { major, minor, whole, part: null };
    const part = whole.partitions.find((x) => x.major === major && x.minor === minor);
    if (part) return { major, minor, whole, part: part.name };
  }
  return null;
}

function alreadyConfigured(p: string, d: AgentDisk): LifeboatError {
  return new LifeboatError(
    "AGENT_DISK_ALREADY_CONFIGURED",
    `disk ${p} is already replicated as disk ${d.index} (${d.path})`,
    { hint: "see `lifeboat agent disks list`", exitCode: 2 },
  );
}

function isState(what: string, dir: string): LifeboatError {
  return new LifeboatError(
    "AGENT_DISK_IS_STATE",
    `disk ${what} holds the agent's own configuration and state (${dir})`,
    { hint: "the agent does not replicate its own state directory; choose another disk", exitCode: 2 },
  );
}

/**
 * Reads config.json, applies `edit` and writes the result back atomically,
 * all under D/config.lock. `edit` may throw, or return the configuration
 * it was given: nothing is written then.
 */
export async function editAgentConfig<T>(
  configDir: string,
  edit: (
    config: AgentConfig,
  ) => Promise<{ config: AgentConfig; result: T }> | { config: AgentConfig; result: T },
  clock: Clock = systemClock,
): Promise<{ config: AgentConfig; result: T }> {
  const lock = agentPaths(configDir).configLock;
  await takeLock(lock, clock);
  try {
    const before = await loadAgentConfig(configDir);
    const out = await edit(before);
    if (out.config !== before) await saveAgentConfig(configDir, out.config);
    return out;
  } finally {
    await fs.rm(lock, { force: true });
  }
}

async function takeLock(lock: string, clock: Clock): Promise<void> {
  const deadline = clock.now() + LOCK_WAIT_MS;
  for (;;) {
    try {
      const fh = await fs.open(lock, "wx", 0o600);
      await fh.writeFile(`${process.pid}\n`);
      await fh.close();
      return;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
    }
    const st = await fs.stat(lock).catch(() => null);
    if (st && clock.now() - st.mtimeMs > LOCK_STALE_MS) {
      await fs.rm(lock, { force: true });
      continue;
    }
    if (clock.now() >= deadline)
      throw new LifeboatError("AGENT_CONFIG_LOCKED", `${lock} is held by another change of config.json`, {
        hint: `try again; if no \`lifeboat agent\` command runs, remove ${lock}`,
      });
    await clock.sleep(50);
  }
}
