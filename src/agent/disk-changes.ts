/**
 * Disks that come and go while the agent runs.
 *
 * The service's DiskMonitor checks every `diskCheckSeconds` (default 10 s,
 * the cadence of the engine's size check) and whenever a replication step
 * failed:
 *
 *  1. config.json, which `agent disks add|remove` edit: its disk list is
 *     what the agent replicates (no restart, no signal needed);
 *  2. each configured disk's device (disk-probe.ts): one that is gone is
 *     *missing*: let go of at once (so the other disks go on), shown as
 *     MISSING in `agent status` and the heartbeat inventory, and retired
 *     (as `agent disks remove` would) once it stayed gone for
 *     `missingDiskGraceSeconds` (default 300). A disk that comes back before
 *     is replicated again after a rescan. The last disk is never retired;
 *  3. with `diskSelection: "all"`, the server's non-removable disks: one that
 *     is new is added to config.json, unless the operator removed it before.
 *
 * It then hands the engine the disks to replicate (Replication.changeDisks),
 * which applies them between two steps of its loop (applyDiskChange): what
 * was sent of a disk that leaves is acknowledged first (after the reconnect
 * the session resends what is not, and the replicator would refuse a block
 * of a disk its HELLO no longer names), its tracker stops and its reader
 * closes; a new disk is opened with its tracker and owes an initial sync;
 * then the session reconnects, and the new HELLO tells the replicator the
 * new set. The disks that stay keep their trackers and dirty sets: no
 * rescan, no resync.
 */
import { promises as fs } from "node:fs";
import { type Clock, LifeboatError, type Logger, isLifeboatError } from "../base/index.js";
import type { AgentSession } from "../wire/index.js";
import { type AgentConfig, type AgentDisk, agentPaths, loadAgentConfig } from "./config.js";
import { type DiskRun, closeDiskRun } from "./disk-run.js";
import { probeDisk } from "./disk-probe.js";
import { addDisks, checkNewDisk, editAgentConfig, retireDisk } from "./disk-set.js";
import { type BlockDeviceInfo, discoverBlockDevices } from "./discovery.js";
import type { DiskStatus } from "./status.js";

export const DEFAULT_DISK_CHECK_SECONDS = 10;
export const DEFAULT_MISSING_DISK_GRACE_SECONDS = 300;

export interface DiskChangeResult {
  /** Indexes opened, let go, and those that could not be opened (tried again at the next check). */
  added: number[];
  removed: number[];
  failed: number[];
}

export interface DiskChange {
  want: AgentDisk[];
  /** Disks the replica may hold an older copy of: they owe a rescan, not an initial sync. */
  rescan: Set<number>;
  resolve(r: DiskChangeResult): void;
  reject(err: unknown): void;
}

/** What applyDiskChange needs of the engine. */
export interface DiskChangeHost {
  /** The engine's disks, changed in place. */
  disks: DiskRun[];
  session: AgentSession;
  open(cfg: AgentDisk): Promise<DiskRun>;
  stopping(): boolean;
  clock: Clock;
  log: Logger;
}

/** Runs inside the engine's loop, between two steps: see the comment at the top. */
export async function applyDiskChange(
  change: Pick<DiskChange, "want" | "rescan">,
  host: DiskChangeHost,
): Promise<DiskChangeResult> {
  const wanted = new Set(change.want.map((d) => d.index));
  const gone = host.disks.filter((d) => !wanted.has(d.cfg.index));
  const fresh = change.want.filter((d) => !host.disks.some((x) => x.cfg.index === d.index));
  const result: DiskChangeResult = { added: [], removed: [], failed: [] };
  if (gone.length === 0 && fresh.length === 0) return result;
  if (gone.length > 0) await drain(host);
  for (const d of gone) {
    host.disks.splice(host.disks.indexOf(d), 1);
    await closeDiskRun(d);
    result.removed.push(d.cfg.index);
    host.log.warn({ disk: d.cfg.path, index: d.cfg.index }, "disk no longer replicated");
  }
  for (const cfg of fresh) {
    try {
      const run = await host.open(cfg);
      run.owed = change.rescan.has(cfg.index) ? "rescan" : "initial";
      host.disks.push(run);
      result.added.push(cfg.index);
      host.log.info(
        { disk: cfg.path, index: cfg.index, pass: run.owed, tracker: run.tracker ? "trace" : "scan" },
        "disk added to replication",
      );
    } catch (err) {
      result.failed.push(cfg.index);
      host.log.warn(
        { disk: cfg.path, index: cfg.index, err: String(err) },
        "cannot open a new disk; retrying later",
      );
    }
  }
  host.disks.sort((a, b) => a.cfg.index - b.cfg.index);
  if (result.added.length > 0 || result.removed.length > 0)
    host.session.reconnect("the set of disks changed");
  return result;
}

/**
 * Waits until every frame sent so far is acknowledged, across reconnects
 * (the link may be down for long); gives up only when the engine stops,
 * which it notices within 250 ms: the engine's stop waits for this step.
 */
async function drain(host: DiskChangeHost): Promise<void> {
  for (;;) {
    if (host.stopping())
      throw new LifeboatError("AGENT_STOPPING", "the agent is stopping", {
        hint: "the change of disks is applied at the next start",
      });
    const { session } = host;
    if (session.inFlight.frames === 0) return;
    // A rejection (the stream was reset and renumbered) only means: look again.
    const acked = session.whenAcked(session.lastAcked + session.inFlight.frames).catch(() => undefined);
    await Promise.race([acked, host.clock.sleep(250)]);
  }
}

/** What the monitor needs of the engine. */
export interface DiskEngine {
  readonly diskIndexes: number[];
  changeDisks(want: AgentDisk[], rescan: number[]): Promise<DiskChangeResult>;
}

export interface DiskMonitorOptions {
  configDir: string;
  /** The configuration the agent started with. */
  config: AgentConfig;
  /** The engine when it replicates (not while receiving a failback or fenced). */
  engine(): DiskEngine | undefined;
  /** config.json changed (its disk list, a retirement, a disk found): the service's copy follows. */
  onConfig?(config: AgentConfig): void;
  /** The disks replicated or missing changed (the service sends a heartbeat with the new inventory). */
  onChange?(): void;
  /** The server's block devices (default discoverBlockDevices; tests narrow it). */
  discover?(): Promise<BlockDeviceInfo[]>;
  clock: Clock;
  logger: Logger;
}

interface Missing {
  disk: AgentDisk;
  since: number;
  reason: string;
}

export class DiskMonitor {
  private config: AgentConfig;
  private readonly missing = new Map<number, Missing>();
  private readonly loopFlags = new Map<string, boolean>();
  /** Disks the replica may hold: configured at start, or replicated since. */
  private readonly known: Set<number>;
  /** Paths "all" mode found and could not add, logged once each. */
  private readonly skipped = new Set<string>();
  private readonly cleaned = new Set<number>();
  /** The last disk is missing and cannot be retired: logged once. */
  private lastDiskLogged = false;
  /** config.json could not be read at the last check: logged once. */
  private unreadable = false;
  private ticking: Promise<void> | undefined;
  private lastTick = 0;
  private readonly log: Logger;

  constructor(private readonly opts: DiskMonitorOptions) {
    this.config = opts.config;
    this.known = new Set(opts.config.disks.map((d) => d.index));
    this.log = opts.logger;
  }

  get intervalMs(): number {
    return (this.config.settings.diskCheckSeconds ?? DEFAULT_DISK_CHECK_SECONDS) * 1000;
  }

  private get graceMs(): number {
    return (this.config.settings.missingDiskGraceSeconds ?? DEFAULT_MISSING_DISK_GRACE_SECONDS) * 1000;
  }

  /** Probes the configured disks once, before the engine starts: it opens only those present. */
  async probeAtStart(): Promise<void> {
    await this.probe(this.config);
  }

  /** The configured disks that are not missing: what the engine should replicate. */
  wanted(): AgentDisk[] {
    return this.config.disks.filter((d) => !this.missing.has(d.index));
  }

  /** The missing disks, as `agent status` shows them. */
  missingStatus(): DiskStatus[] {
    return [...this.missing.values()].map((m): DiskStatus => ({
      index: m.disk.index,
      path: m.disk.path,
      sizeBytes: 0,
      state: "MISSING",
      dirtyBytes: 0,
      missingSince: m.since,
      missingReason: m.reason,
    }));
  }

  /** A check now, unless one ran in the last second (after a failed step). */
  soon(): void {
    if (this.opts.clock.now() - this.lastTick >= 1000) void this.tick();
  }

  /** Resolves when no check runs. */
  idle(): Promise<void> {
    return this.ticking ?? Promise.resolve();
  }

  /** One check (see the top of the file); a check already running is joined. */
  tick(): Promise<void> {
    this.ticking ??= this.check()
      .catch((err: unknown) => this.log.warn({ err: String(err) }, "disk check failed"))
      .finally(() => (this.ticking = undefined));
    return this.ticking;
  }

  private async check(): Promise<void> {
    this.lastTick = this.opts.clock.now();
    let config = this.config;
    try {
      config = await loadAgentConfig(this.opts.configDir);
      this.unreadable = false;
    } catch (err) {
      if (!this.unreadable)
        this.log.warn({ err: String(err) }, "cannot read config.json; keeping the disks as they are");
      this.unreadable = true;
    }
    const missingBefore = [...this.missing.keys()].join();
    await this.probe(config);
    config = await this.retireExpired(config);
    if (config.diskSelection === "all") config = await this.adoptNew(config);
    const disksOf = (c: AgentConfig) => JSON.stringify([c.disks, c.retiredDisks, c.diskSelection]);
    const changed = disksOf(config) !== disksOf(this.config);
    this.config = config;
    if (changed) this.opts.onConfig?.(config);
    await this.cleanRetired(config);
    if ([...this.missing.keys()].join() !== missingBefore) this.opts.onChange?.();
    const engine = this.opts.engine();
    if (!engine) return;
    const want = this.wanted();
    const running = engine.diskIndexes;
    if (want.length === running.length && want.every((d) => running.includes(d.index))) return;
    const r = await engine.changeDisks(
      want,
      want.filter((d) => this.known.has(d.index)).map((d) => d.index),
    );
    for (const i of r.added) this.known.add(i);
    if (r.added.length > 0 || r.removed.length > 0) this.opts.onChange?.();
  }

  /** Updates `missing` from a probe of each configured disk. */
  private async probe(config: AgentConfig): Promise<void> {
    const now = this.opts.clock.now();
    for (const i of this.missing.keys()) if (!config.disks.some((d) => d.index === i)) this.missing.delete(i);
    for (const disk of config.disks) {
      const p = await probeDisk(disk, this.loopFlags);
      const was = this.missing.get(disk.index);
      if (p.state === "missing") {
        if (!was) {
          this.missing.set(disk.index, { disk, since: now, reason: p.reason });
          this.log.warn(
            { disk: disk.path, index: disk.index, reason: p.reason, graceSeconds: this.graceMs / 1000 },
            "disk missing; it is retired if it stays gone",
          );
        }
      } else if (was) {
        // "unknown" counts as present: a transient error never takes a disk away.
        this.missing.delete(disk.index);
        this.log.info({ disk: disk.path, index: disk.index }, "missing disk is back; rescanning it");
      }
    }
  }

  private async retireExpired(config: AgentConfig): Promise<AgentConfig> {
    const now = this.opts.clock.now();
    const expired = [...this.missing.values()].filter((m) => now - m.since >= this.graceMs);
    if (expired.length === 0) return config;
    try {
      const out = await editAgentConfig(
        this.opts.configDir,
        (c) => {
          let next = c;
          const retired: number[] = [];
          for (const m of expired) {
            if (!next.disks.some((d) => d.index === m.disk.index)) continue;
            try {
              next = retireDisk(next, m.disk.index, "missing", now).config;
              retired.push(m.disk.index);
            } catch (err) {
              if (!isLifeboatError(err, "AGENT_DISK_LAST")) throw err;
              if (!this.lastDiskLogged)
                this.log.warn({ disk: m.disk.path }, "the only disk is missing; it stays configured");
              this.lastDiskLogged = true;
            }
          }
          return { config: next, result: retired };
        },
        this.opts.clock,
      );
      for (const i of out.result) {
        const m = this.missing.get(i)!;
        this.missing.delete(i);
        this.log.warn(
          { disk: m.disk.path, index: i, missingSince: new Date(m.since).toISOString() },
          "missing disk retired; its PITs stay",
        );
      }
      return out.config;
    } catch (err) {
      this.log.warn({ err: String(err) }, "cannot retire a missing disk; trying again");
      return config;
    }
  }

  /** "all" mode: adds the non-removable disks not configured yet (nor removed by the operator). */
  private async adoptNew(config: AgentConfig): Promise<AgentConfig> {
    let devices: BlockDeviceInfo[];
    try {
      devices = await (this.opts.discover ?? discoverBlockDevices)();
    } catch (err) {
      this.log.warn({ err: String(err) }, "disk discovery failed");
      return config;
    }
    const removed = (p: string) => config.retiredDisks.some((r) => r.reason === "removed" && r.path === p);
    const fresh = devices.filter(
      (d) =>
        d.kind === "disk" &&
        !d.removable &&
        !d.readOnly &&
        d.sizeBytes > 0 &&
        !config.disks.some((c) => c.path === d.path) &&
        !removed(d.path) &&
        !this.skipped.has(d.path),
    );
    if (fresh.length === 0) return config;
    try {
      const out = await editAgentConfig(
        this.opts.configDir,
        async (c) => {
          let next = c;
          const added: AgentDisk[] = [];
          for (const d of fresh) {
            try {
              const chosen = await checkNewDisk(next, this.opts.configDir, d.path, { devices });
              const r = addDisks(next, [chosen]);
              next = r.config;
              added.push(...r.added);
            } catch (err) {
              this.skipped.add(d.path);
              this.log.info({ disk: d.path, err: String(err) }, "new disk found; not added");
            }
          }
          return { config: next, result: added };
        },
        this.opts.clock,
      );
      for (const d of out.result)
        this.log.info({ disk: d.path, index: d.index }, "new disk found; replicating it");
      return out.config;
    } catch (err) {
      this.log.warn({ err: String(err) }, "cannot add the new disks to config.json; trying again");
      return config;
    }
  }

  /** Removes the dirty-set files of retired disks. */
  private async cleanRetired(config: AgentConfig): Promise<void> {
    const p = agentPaths(this.opts.configDir);
    for (const r of config.retiredDisks) {
      if (this.cleaned.has(r.index)) continue;
      await fs.rm(p.dirty(r.index), { force: true }).catch(() => undefined);
      this.cleaned.add(r.index);
    }
  }
}
