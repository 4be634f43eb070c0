/**
 * `lifeboat agent run`: the long-running agent. It reads the configuration
 * directory that `agent install` wrote, runs the replication engine against
 * the replicator (over the wire, on the control plane's port unless the
 * configuration names another data address), and keeps three loops beside
 * it: heartbeats with state, lag, backlog and inventory to the control plane
 * (the boot inventory, boot-watcher.ts, when it changed); a long
 * poll for commands (PITs on demand, group PITs, rescans, bandwidth); and the
 * status file that `agent status` reads, written about once a second except
 * while filesystems are frozen. Scheduled PITs run every
 * `pitIntervalSeconds`. SIGUSR2 (sent by `agent rescan` and `agent disks`)
 * makes it read D/state/rescan-request.json and check its disks at once
 * (they are checked every `diskCheckSeconds` anyway: disk-changes.ts).
 *
 * This file starts the parts and stops them; each lives in a file of its
 * own: the mode (replicating, receiving a failback or fenced) and the engine
 * it owns in mode-switch.ts, the settings poll and the scheduled PITs in
 * settings-follower.ts, heartbeats and the command poll in control-loops.ts,
 * the status file in status-writer.ts, the engine's making in new-engine.ts.
 */
import { promises as fs } from "node:fs";
import path from "node:path";
import { type Clock, type Logger, silentLogger, systemClock } from "../base/index.js";
import { BootWatcher } from "./boot-watcher.js";
import { type AgentConfig, agentPaths, dataAddressOf, loadAgentConfig } from "./config.js";
import { type AgentMode, ControlClient } from "./control-client.js";
import { ControlLoops } from "./control-loops.js";
import { type AgentCredentials, readCredentials, renewCertificate } from "./credentials.js";
import { DiskMonitor } from "./disk-changes.js";
import { DiskGenerations } from "./disk-generations.js";
import type { BlockDeviceInfo } from "./discovery.js";
import { ModeSwitch } from "./mode-switch.js";
import { newEngine } from "./new-engine.js";
import type { Replication, ReplicationOptions } from "./replication.js";
import { SettingsFollower } from "./settings-follower.js";
import type { DiskGeneration } from "./state-files.js";
import { type AgentStatus, startingStatus, writeAgentStatus } from "./status.js";
import { StatusWriter } from "./status-writer.js";

export interface AgentServiceOptions {
  configDir: string;
  logger?: Logger;
  clock?: Clock;
  /** Passed to the engine (tests snapshot the device while frozen). */
  whileFrozen?: ReplicationOptions["whileFrozen"];
  /** How often the control plane's replication settings are read (default 30 s). */
  settingsIntervalMs?: number;
  /** Status file period (default 1000 ms). */
  statusIntervalMs?: number;
  /** How often /boot is checked for changes (default 60 s; boot-watcher.ts). */
  bootCheckIntervalMs?: number;
  /** Chunks a failback compare covers per request (default 128; tests make it small). */
  failbackBatchChunks?: number;
  /**
   * The failback boot environment (bundle/failback-image.ts): never replicate,
   * only receive a failback; `onFailbackEnd` hears how it ended.
   */
  failbackOnly?: boolean;
  onFailbackEnd?: (state: string) => void;
  /** The block devices "all disks" mode picks new disks from (default: discovery; tests narrow it). */
  discoverDisks?: () => Promise<BlockDeviceInfo[]>;
}

export class AgentService {
  private readonly timers: NodeJS.Timeout[] = [];
  /** Aborted when the agent stops: every loop ends, and every wait. */
  private readonly abort = new AbortController();
  private loops: Promise<unknown>[] = [];
  private readonly boot: BootWatcher;
  /** Replicating, receiving a failback or fenced (mode-switch.ts): it owns the engine. */
  private readonly modes: ModeSwitch;
  /** The control plane's replication settings, followed live (settings-follower.ts). */
  private readonly settings: SettingsFollower;
  /** Heartbeats and the command poll (control-loops.ts). */
  private readonly controlLoops: ControlLoops;
  private readonly statusFile: StatusWriter;

  private constructor(
    readonly config: AgentConfig,
    private readonly control: ControlClient,
    private readonly opts: AgentServiceOptions,
    private readonly log: Logger,
    clock: Clock,
    /** Where the wire connects; a change applies from the next connection. */
    data: { host: string; port: number },
    /** Disks that come and go (disk-changes.ts). */
    private readonly disks: DiskMonitor,
    /** The disks' generation ids (D/state/generations.json), named in every HELLO. */
    private readonly generations: DiskGenerations,
    engine: { replication: Replication; make: () => Promise<Replication> },
  ) {
    const p = agentPaths(opts.configDir);
    const signal = this.abort.signal;
    this.boot = new BootWatcher({
      root: config.bootRoot ?? "/",
      clock,
      logger: log,
      onChange: () => this.controlLoops.heartbeatNow(),
    });
    this.modes = new ModeSwitch({
      control,
      config,
      disks,
      generations,
      replication: engine.replication,
      makeReplication: engine.make,
      stateDir: p.state,
      failbackOnly: opts.failbackOnly,
      failbackBatchChunks: opts.failbackBatchChunks,
      onFailbackEnd: opts.onFailbackEnd,
      signal,
      log,
      clock,
    });
    this.settings = new SettingsFollower({
      control,
      config,
      data,
      modes: this.modes,
      intervalMs: opts.settingsIntervalMs ?? 30_000,
      signal,
      log,
      clock,
    });
    this.controlLoops = new ControlLoops({
      control,
      boot: this.boot,
      signal,
      status: () => this.modes.status(),
      replication: () => this.modes.replication,
      applyMode: (m) => this.modes.apply(m),
      log,
    });
    this.statusFile = new StatusWriter(p, log);
  }

  static async start(opts: AgentServiceOptions): Promise<AgentService> {
    const log = opts.logger ?? silentLogger;
    const clock = opts.clock ?? systemClock;
    const config = await loadAgentConfig(opts.configDir);
    const p = agentPaths(opts.configDir);
    const creds = await readCredentials(p);
    await fs.mkdir(p.state, { recursive: true, mode: 0o700 });
    const data = dataAddressOf(config);
    const control = new ControlClient({ endpoint: config.endpoint, ...creds, clock, logger: log });
    const ref: { svc?: AgentService } = {};
    const disks = new DiskMonitor({
      configDir: opts.configDir,
      config,
      engine: () => ref.svc?.modes.running(),
      // The running agent's copy follows config.json's disks (a failback receives onto them).
      onConfig: (c) =>
        Object.assign(config, {
          disks: c.disks,
          retiredDisks: c.retiredDisks,
          diskSelection: c.diskSelection,
        }),
      // The control plane's inventory follows at once, not at the next heartbeat.
      onChange: () => ref.svc?.controlLoops.heartbeatNow(),
      ...(opts.discoverDisks ? { discover: opts.discoverDisks } : {}),
      clock,
      logger: log,
    });
    // A configured disk that is gone at start is missing, not a reason not to start.
    await disks.probeAtStart();
    const make = (): Promise<Replication> =>
      newEngine({
        config,
        disks,
        data,
        creds,
        sessionFile: p.session,
        generations: () => ref.svc?.currentGenerations(),
        // The replicator went away: it may have been replaced (pool failover), so read the settings now.
        onDisconnect: () => ref.svc?.wakeSettings(),
        whileFrozen: opts.whileFrozen,
        clock,
        log,
      });
    const replication = await make();
    const generations = await DiskGenerations.load(p.state);
    const svc = new AgentService(config, control, opts, log, clock, data, disks, generations, {
      replication,
      make,
    });
    ref.svc = svc;
    await writeAgentStatus(p.status, startingStatus(config.serverId, clock.now()));
    try {
      await svc.modes.begin(await svc.settings.atStart(p.state));
    } catch (err) {
      await control.close();
      throw err;
    }
    log.info(
      { serverId: config.serverId, disks: config.disks.length, tracker: replication.tracker },
      "agent started",
    );
    svc.run(creds);
    await svc.readRescanRequest();
    return svc;
  }

  /** Starts what runs beside the engine until stop: the loops, the scheduled PITs and the periodic checks. */
  private run(creds: AgentCredentials): void {
    const { opts, control, log } = this;
    this.every(opts.statusIntervalMs ?? 1000, () => this.writeStatus());
    this.settings.schedulePits(this.config.settings.pitIntervalSeconds);
    const certFile = agentPaths(opts.configDir).cert;
    this.every(3600_000, () => void renewCertificate(control, certFile, creds, log));
    this.loops = [
      this.controlLoops.heartbeats(),
      this.controlLoops.commands(),
      this.settings.follow(),
      this.boot.check(),
    ];
    this.every(opts.bootCheckIntervalMs ?? 60_000, () => void this.boot.check());
    this.every(this.disks.intervalMs, () => void this.disks.tick());
  }

  /** The engine: the one replicating, or the last one (stopped while receiving a failback or fenced). */
  get replication(): Replication {
    return this.modes.replication;
  }

  private get stopping(): boolean {
    return this.abort.signal.aborted;
  }

  /** Reads and removes D/state/rescan-request.json (written by `agent rescan`), and rescans. */
  async readRescanRequest(): Promise<void> {
    const file = path.join(agentPaths(this.opts.configDir).state, "rescan-request.json");
    let text: string;
    try {
      text = await fs.readFile(file, "utf8");
    } catch {
      return;
    }
    await fs.rm(file, { force: true });
    let disks: number[] | undefined;
    try {
      const parsed = JSON.parse(text) as { disks?: unknown };
      if (Array.isArray(parsed.disks)) disks = parsed.disks.filter((d): d is number => Number.isInteger(d));
    } catch {
      // a damaged request still means "rescan": everything
    }
    this.log.info({ disks: disks ?? "all" }, "rescan requested");
    this.replication.requestRescan(disks);
  }

  /** Checks the disks now (config.json's list, missing devices, new disks): disk-changes.ts. */
  checkDisks(): void {
    if (!this.stopping) void this.disks.tick();
  }

  async stop(): Promise<void> {
    if (this.stopping) return;
    for (const t of this.timers) clearInterval(t);
    this.settings.stopPits();
    this.abort.abort();
    await this.boot.close();
    await this.modes.stop();
    // After the engine: a check waiting on it (a disk change) ends once it stopped.
    await this.disks.idle();
    await Promise.allSettled(this.loops);
    await this.statusFile.stopped(this.replication);
    await this.control.close();
    this.log.info({}, "agent stopped");
  }

  private every(ms: number, fn: () => void): void {
    const t = setInterval(fn, ms);
    t.unref();
    this.timers.push(t);
  }

  /** What `agent status` shows (undefined while filesystems are frozen). */
  status(): AgentStatus | undefined {
    return this.modes.status();
  }

  /** Switches between replicating, receiving a failback and fenced, one switch at a time (mode-switch.ts). */
  applyMode(m: AgentMode): Promise<void> {
    return this.modes.apply(m);
  }

  /** The disks' generation ids, for the engine's HELLO (they change with a failback). */
  currentGenerations(): DiskGeneration[] {
    return this.generations.current();
  }

  /** Reads the settings soon instead of at the next poll (at most once a second; settings-follower.ts). */
  wakeSettings(): void {
    this.settings.wake();
  }

  private writeStatus(): void {
    const s = this.modes.status();
    if (!s || this.stopping) return;
    this.statusFile.write(s, this.modes.running()?.session.resumeToken);
  }
}
