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
 */
import { promises as fs } from "node:fs";
import path from "node:path";
import {
  type Clock,
  LifeboatError,
  type Logger,
  silentLogger,
  systemClock,
  writeFileAtomic,
} from "../base/index.js";
import { assertPrivateFile, proxyFromEnvironment } from "../net/index.js";
import { connectWire } from "../wire/index.js";
import { BootWatcher } from "./boot-watcher.js";
import { type AgentConfig, agentPaths, dataAddressOf, loadAgentConfig, parseAddress } from "./config.js";
import { runCommand } from "./commands.js";
import { type AgentCommand, type AgentMode, ControlClient } from "./control-client.js";
import { DiskMonitor } from "./disk-changes.js";
import type { BlockDeviceInfo } from "./discovery.js";
import { FailbackReceiver, pendingFailback } from "./failback-receiver.js";
import { Replication, type ReplicationOptions } from "./replication.js";
import { type DiskGeneration, readGenerations, readSessionToken } from "./state-files.js";
import { type AgentStatus, startingStatus, writeAgentStatus } from "./status.js";

export const AGENT_VERSION = "0.1.0";

/** What the control plane answers to a heartbeat body it will never take (http-error.ts). */
const REFUSED_BODY = new Set(["REQUEST_INVALID", "REQUEST_TOO_LARGE"]);

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
  private stopping = false;
  private readonly timers: NodeJS.Timeout[] = [];
  private readonly abort = new AbortController();
  private loops: Promise<unknown>[] = [];
  private statusWrite: Promise<void> = Promise.resolve();
  private savedToken: string | undefined;
  private pitTimer: NodeJS.Timeout | undefined;
  private pitSeconds = 0;
  /** Ends the heartbeat loop's wait early (a new boot inventory to send). */
  private wakeHeartbeat: (() => void) | undefined;
  private readonly boot: BootWatcher;
  /** What the control plane wants (failback.ts): replicate, receive a failback, or stay fenced. */
  private mode: "replicate" | "receive" | "fenced" = "replicate";
  private fenceReason = "";
  /** Whether `replication` was started (and not stopped since). */
  private replicating = false;
  private receiver: FailbackReceiver | undefined;
  private modeChain: Promise<void> = Promise.resolve();
  /** Ends the settings poll's wait early (wakeSettings). */
  private settingsWake: (() => void) | undefined;
  private lastSettingsWake = 0;
  /** The disks' generation ids (D/state/generations.json), named in every HELLO. */
  private generations: DiskGeneration[] = [];
  /** Disks that come and go (disk-changes.ts); set in start(). */
  private disks!: DiskMonitor;
  /** Makes a fresh engine (after receive mode or a fence, the old one is stopped). */
  private makeReplication: () => Promise<Replication> = () => Promise.resolve(this.replication);

  private constructor(
    readonly config: AgentConfig,
    public replication: Replication,
    private readonly control: ControlClient,
    private readonly opts: AgentServiceOptions,
    private readonly log: Logger,
    private readonly clock: Clock,
    /** Where the wire connects; a change applies from the next connection. */
    private readonly data: { host: string; port: number },
  ) {
    this.boot = new BootWatcher({
      root: config.bootRoot ?? "/",
      clock,
      logger: log,
      onChange: () => this.wakeHeartbeat?.(),
    });
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
      engine: () => (ref.svc?.replicating ? ref.svc.replication : undefined),
      // The running agent's copy follows config.json's disks (a failback receives onto them).
      onConfig: (c) =>
        Object.assign(config, {
          disks: c.disks,
          retiredDisks: c.retiredDisks,
          diskSelection: c.diskSelection,
        }),
      // The control plane's inventory follows at once, not at the next heartbeat.
      onChange: () => ref.svc?.wakeHeartbeat?.(),
      ...(opts.discoverDisks ? { discover: opts.discoverDisks } : {}),
      clock,
      logger: log,
    });
    // A configured disk that is gone at start is missing, not a reason not to start.
    await disks.probeAtStart();
    const engine = (): Promise<Replication> =>
      newEngine({ config, disks, data, creds, ref, opts, clock, log, sessionFile: p.session });
    const replication = await engine();
    const svc = new AgentService(config, replication, control, opts, log, clock, data);
    ref.svc = svc;
    svc.disks = disks;
    svc.makeReplication = engine;
    svc.generations = await readGenerations(path.join(p.state, "generations.json"));
    await writeAgentStatus(p.status, startingStatus(config.serverId, clock.now()));
    try {
      await svc.begin(await svc.modeAtStart(p.state));
    } catch (err) {
      await control.close();
      throw err;
    }
    log.info(
      { serverId: config.serverId, disks: config.disks.length, tracker: replication.tracker },
      "agent started",
    );
    svc.every(opts.statusIntervalMs ?? 1000, () => svc.writeStatus());
    svc.schedulePits(config.settings.pitIntervalSeconds);
    svc.every(3600_000, () => void svc.renew(creds));
    svc.loops = [svc.heartbeats(), svc.commands(), svc.followSettings(), svc.boot.check()];
    svc.every(opts.bootCheckIntervalMs ?? 60_000, () => void svc.boot.check());
    svc.every(disks.intervalMs, () => void disks.tick());
    await svc.readRescanRequest();
    return svc;
  }

  /**
   * The replicator this server is assigned to (its data address), the
   * site's bandwidth cap and what the control plane wants of the agent, read
   * before the first connection; a failback being received when the agent
   * stopped goes on (the control plane confirms it at once). Undefined when
   * the control plane cannot be reached and no failback was under way: the
   * agent replicates to the configured data address.
   */
  private async modeAtStart(stateDir: string): Promise<AgentMode | undefined> {
    let mode: AgentMode | undefined;
    try {
      const s = await this.control.settings();
      if (s.dataAddress) Object.assign(this.data, parseAddress(s.dataAddress));
      mode = s.mode;
      // The site's bandwidth cap holds from the first block, not from the first settings poll.
      const mbps = s.replication.bandwidthMbps ?? 0;
      this.config.settings = { ...this.config.settings, bandwidthMbps: mbps };
      this.replication.setBandwidth(mbps);
    } catch (err) {
      this.log.warn(
        { err: String(err) },
        "cannot read the replication settings; using the configured data address",
      );
    }
    const receiving = await pendingFailback(stateDir);
    if (!mode && receiving) mode = { mode: "receive", failbackId: receiving };
    return mode;
  }

  /** Enters the mode the control plane asked for at start: replicating unless it said otherwise. */
  private async begin(mode: AgentMode | undefined): Promise<void> {
    if (mode && mode.mode !== "replicate") await this.applyMode(mode);
    else if (this.opts.failbackOnly) this.log.info({}, "failback only: waiting for a failback to receive");
    else {
      await this.adoptGenerations(mode?.generations);
      await this.replication.start();
      this.replicating = true;
    }
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
    this.stopping = true;
    for (const t of this.timers) clearInterval(t);
    if (this.pitTimer) clearInterval(this.pitTimer);
    this.abort.abort();
    await this.boot.close();
    await this.modeChain;
    await this.receiver?.stop();
    if (this.replicating) await this.replication.stop();
    // After the engine: a check waiting on it (a disk change) ends once it stopped.
    await this.disks.idle();
    await Promise.allSettled(this.loops);
    await this.statusWrite;
    const s = this.replication.status();
    if (s)
      await writeAgentStatus(agentPaths(this.opts.configDir).status, {
        ...s,
        state: "STOPPED",
        connected: false,
      });
    await this.control.close();
    this.log.info({}, "agent stopped");
  }

  /** (Re)starts the scheduled PITs: every `seconds` (0: none). */
  private schedulePits(seconds: number): void {
    if (this.pitTimer) clearInterval(this.pitTimer);
    this.pitTimer = undefined;
    this.pitSeconds = seconds;
    if (seconds <= 0) return;
    this.pitTimer = setInterval(() => {
      if (!this.replicating) return;
      this.replication
        .requestPoint({ origin: "scheduled" })
        .catch((err: unknown) => this.log.warn({ err: String(err) }, "scheduled PIT failed"));
    }, seconds * 1000);
    this.pitTimer.unref();
  }

  /**
   * Polls the control plane's replication settings and applies what changed
   * live: the bandwidth cap and the PIT interval. They override the
   * installation's defaults in config.json.
   */
  private async followSettings(): Promise<void> {
    let bandwidth = this.config.settings.bandwidthMbps;
    while (!this.stopping) {
      try {
        const { replication: r, dataAddress, mode } = await this.control.settings();
        if (mode) await this.applyMode(mode);
        const address = dataAddress ? parseAddress(dataAddress) : dataAddressOf(this.config);
        if (address.host !== this.data.host || address.port !== this.data.port) {
          this.log.info({ dataAddress: `${address.host}:${address.port}` }, "replicator address set");
          this.data.host = address.host;
          this.data.port = address.port;
        }
        const mbps = r.bandwidthMbps ?? 0;
        if (mbps !== bandwidth) {
          this.replication.setBandwidth(mbps);
          this.log.info({ mbps }, "bandwidth cap set");
          bandwidth = mbps;
        }
        const seconds = r.pitIntervalMinutes * 60;
        if (seconds !== this.pitSeconds) {
          this.schedulePits(seconds);
          this.log.info({ seconds }, "PIT interval set");
        }
      } catch (err) {
        if (!this.stopping) this.log.warn({ err: String(err) }, "cannot read the replication settings");
      }
      await this.sleep(this.opts.settingsIntervalMs ?? 30_000, (wake) => (this.settingsWake = wake));
      this.settingsWake = undefined;
    }
  }

  private every(ms: number, fn: () => void): void {
    const t = setInterval(fn, ms);
    t.unref();
    this.timers.push(t);
  }

  /** What `agent status` shows (undefined while filesystems are frozen). */
  status(): AgentStatus | undefined {
    return this.currentStatus();
  }

  /** The engine's status (with the missing disks) while replicating; otherwise what receive mode or the fence says. */
  private currentStatus(): AgentStatus | undefined {
    if (this.replicating) {
      const s = this.replication.status();
      if (!s) return undefined;
      const missing = this.disks.missingStatus();
      if (missing.length) s.disks = [...s.disks, ...missing].sort((a, b) => a.index - b.index);
      return s;
    }
    return {
      state: this.mode === "receive" ? "RECEIVING" : "FENCED",
      tracker: "scan",
      lagSeconds: 0,
      backlogBytes: 0,
      disks: [],
      serverId: this.config.serverId,
      pid: process.pid,
      updatedAt: this.clock.now(),
      connected: false,
      counters: { bytesRead: 0, bytesSent: 0, blocksSent: 0, rescans: 0, traceLosses: 0 },
      ...(this.mode === "receive" && this.receiver
        ? { failback: { status: this.receiver.status, ...this.receiver.counters } }
        : {}),
      ...(this.mode === "fenced" ? { fence: this.fenceReason } : {}),
    };
  }

  /**
   * Switches to what the control plane wants, one switch at a time:
   * replicate (starting a fresh engine if the last one was stopped), receive
   * a failback (the engine stops first: a disk being written is not a
   * source), or stay fenced (no engine, no receiver).
   */
  applyMode(m: AgentMode): Promise<void> {
    const next = this.modeChain.then(() => this.switchMode(m));
    this.modeChain = next.catch(() => undefined);
    return next;
  }

  private async switchMode(m: AgentMode): Promise<void> {
    if (this.stopping) return;
    if (m.mode === "replicate") {
      if (this.receiver) {
        await this.receiver.stop();
        this.receiver = undefined;
      }
      await this.adoptGenerations(m.generations);
      if (this.replicating || this.opts.failbackOnly) return;
      this.mode = "replicate";
      this.log.info({}, "replicating");
      this.replication = await this.makeReplication();
      try {
        await this.replication.start();
        this.replicating = true;
      } catch (err) {
        this.log.error({ err: String(err) }, "cannot start replicating; the next settings poll tries again");
      }
      return;
    }
    if (this.replicating) {
      this.replicating = false;
      await this.replication.stop();
    }
    if (m.mode === "fenced") {
      if (this.receiver) {
        await this.receiver.stop();
        this.receiver = undefined;
      }
      if (this.mode !== "fenced" || this.fenceReason !== m.reason)
        this.log.warn(
          { reason: m.reason },
          "fenced by the control plane: not replicating (the server's data lives elsewhere; see `lifeboat failback`)",
        );
      this.mode = "fenced";
      this.fenceReason = m.reason;
      return;
    }
    this.mode = "receive";
    if (this.receiver?.failbackId === m.failbackId) return;
    await this.receiver?.stop();
    const p = agentPaths(this.opts.configDir);
    this.log.info({ failbackId: m.failbackId }, "receiving a failback onto this server's disks");
    const receiver = new FailbackReceiver({
      failbackId: m.failbackId,
      control: this.control,
      disks: this.config.disks,
      stateDir: p.state,
      log: this.log,
      clock: this.clock,
      ...(this.opts.failbackBatchChunks ? { batchChunks: this.opts.failbackBatchChunks } : {}),
      onEnd: async (end) => {
        if (end.state === "ready" && end.generations) await this.saveGenerations(end.generations);
        if (this.opts.onFailbackEnd) return this.opts.onFailbackEnd(end.state);
        // Re-read the mode off the receiver's own loop (switching stops the receiver, which waits for that loop).
        setImmediate(() => {
          this.control
            .settings()
            .then(({ mode }) => (mode ? this.applyMode(mode) : undefined))
            .catch((err: unknown) =>
              this.log.warn({ err: String(err) }, "cannot read the mode after the failback"),
            );
        });
      },
    });
    this.receiver = receiver;
    receiver.start();
  }

  /** The disks' generation ids, for the engine's HELLO (they change with a failback). */
  currentGenerations(): DiskGeneration[] {
    return this.generations;
  }

  /** Keeps the control plane's generations when the agent has none yet (a failback's replace them: saveGenerations). */
  async adoptGenerations(g: DiskGeneration[] | undefined): Promise<void> {
    if (!g || g.length === 0 || this.generations.length > 0) return;
    await this.saveGenerations(g);
  }

  private async saveGenerations(g: DiskGeneration[]): Promise<void> {
    const file = path.join(agentPaths(this.opts.configDir).state, "generations.json");
    await writeFileAtomic(file, `${JSON.stringify(g)}\n`, { mode: 0o600 });
    this.generations = g;
  }

  private writeStatus(): void {
    const s = this.currentStatus();
    if (!s || this.stopping) return;
    const token = this.replicating ? this.replication.session.resumeToken : undefined;
    const p = agentPaths(this.opts.configDir);
    this.statusWrite = this.statusWrite
      .then(async () => {
        await writeAgentStatus(p.status, s);
        if (token && token !== this.savedToken) {
          await writeFileAtomic(p.session, `${JSON.stringify({ resumeToken: token })}\n`, { mode: 0o600 });
          this.savedToken = token;
        }
      })
      .catch((err: unknown) => this.log.warn({ err: String(err) }, "cannot write the status file"));
  }

  /** Waits `ms`, or less when stopping or when the `wakeable` handle it hands out is called. */
  private async sleep(ms: number, wakeable?: (wake: () => void) => void): Promise<void> {
    if (this.stopping) return;
    await new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(t);
        this.abort.signal.removeEventListener("abort", done);
        resolve();
      };
      const t = setTimeout(done, ms);
      this.abort.signal.addEventListener("abort", done);
      wakeable?.(done);
    });
  }

  /**
   * Reads the settings soon instead of at the next poll (at most once a
   * second): after a lost connection the server may have a new replicator.
   */
  wakeSettings(): void {
    const now = this.clock.now();
    if (now - this.lastSettingsWake < 1000) return;
    this.lastSettingsWake = now;
    this.settingsWake?.();
  }

  private async heartbeats(): Promise<void> {
    let every = 15;
    while (!this.stopping) {
      const s = this.currentStatus();
      if (s) {
        // The boot inventory only when it changed: heartbeats stay small.
        const boot = this.boot.pending();
        try {
          const r = await this.control.heartbeat({
            state: s.state,
            lagSeconds: s.lagSeconds,
            backlogBytes: s.backlogBytes,
            inventory: {
              disks: s.disks.map((d) => ({
                index: d.index,
                path: d.path,
                sizeBytes: d.sizeBytes,
                state: d.state,
                // Initial sync and rescan progress, for the console's disks table.
                ...(d.progress ? { progress: d.progress } : {}),
                ...(d.missingSince !== undefined ? { missingSince: d.missingSince } : {}),
              })),
              tracker: s.tracker,
              ...(boot ? { boot } : {}),
            },
          });
          if (boot) this.boot.sent(boot);
          every = r.heartbeatSeconds;
        } catch (err) {
          if (!this.stopping) this.log.warn({ err: String(err) }, "heartbeat failed");
          // Refused for good (a 4xx): the inventory must not keep every later heartbeat out.
          if (boot && err instanceof LifeboatError && REFUSED_BODY.has(err.code)) {
            this.boot.sent(boot);
            this.log.warn({ code: err.code }, "the control plane refused the boot inventory; not sent again");
          }
        }
      }
      await this.heartbeatPause(every * 1000);
    }
  }

  /** Waits `ms`, or less when stopping or when a new boot inventory is to be sent. */
  private heartbeatPause(ms: number): Promise<void> {
    if (this.stopping) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(t);
        this.abort.signal.removeEventListener("abort", done);
        this.wakeHeartbeat = undefined;
        resolve();
      };
      const t = setTimeout(done, ms);
      this.abort.signal.addEventListener("abort", done);
      this.wakeHeartbeat = done;
    });
  }

  private async commands(): Promise<void> {
    while (!this.stopping) {
      let list: AgentCommand[];
      try {
        list = await this.control.nextCommands({ waitSeconds: 25, signal: this.abort.signal });
      } catch (err) {
        if (this.stopping) return;
        this.log.warn({ err: String(err) }, "cannot fetch commands; retrying");
        await this.sleep(5000);
        continue;
      }
      // Each runs on its own: a PIT waits for the engine, a rescan does not.
      for (const c of list) {
        void runCommand(c, {
          control: this.control,
          replication: this.replication,
          applyMode: (m) => this.applyMode(m),
          log: this.log,
        });
      }
    }
  }

  /** Renews the client certificate when it is due; the next wire connection presents the new one. */
  private async renew(identity: { certPem: string }): Promise<void> {
    try {
      const pem = await this.control.renewIfDue();
      if (!pem) return;
      await writeFileAtomic(agentPaths(this.opts.configDir).cert, pem, { mode: 0o600 });
      identity.certPem = pem;
      this.log.info({}, "client certificate renewed");
    } catch (err) {
      this.log.warn({ err: String(err) }, "certificate renewal failed; retrying in an hour");
    }
  }
}

/** The agent's key (checked 0600), certificate and the CA it trusts, from the configuration directory. */
async function readCredentials(
  p: ReturnType<typeof agentPaths>,
): Promise<{ keyPem: string; certPem: string; caPem: string }> {
  await assertPrivateFile(p.key, "agent private key");
  const [keyPem, certPem, caPem] = await Promise.all([
    fs.readFile(p.key, "utf8"),
    fs.readFile(p.cert, "utf8"),
    fs.readFile(p.ca, "utf8"),
  ]);
  return { keyPem, certPem, caPem };
}

/**
 * A replication engine for the configured disks, resuming the last wire
 * session. Made at start and again after receive mode or a fence. The
 * certificate is read from `creds` at each connection (renew replaces it).
 */
async function newEngine(o: {
  config: AgentConfig;
  disks: DiskMonitor;
  data: { host: string; port: number };
  creds: { keyPem: string; certPem: string; caPem: string };
  ref: { svc?: AgentService };
  opts: AgentServiceOptions;
  clock: Clock;
  log: Logger;
  sessionFile: string;
}): Promise<Replication> {
  const { config, disks, data, creds, ref, clock } = o;
  const resumeToken = await readSessionToken(o.sessionFile);
  return new Replication({
    ...(resumeToken ? { resumeToken } : {}),
    generations: () => ref.svc?.currentGenerations(),
    // The replicator went away: it may have been replaced (pool failover), so read the settings now.
    onDisconnect: () => ref.svc?.wakeSettings(),
    serverId: config.serverId,
    hostname: config.hostname,
    version: AGENT_VERSION,
    disks: disks.wanted(),
    blockSize: config.blockSize,
    settings: config.settings,
    // Sizes and the disk set are checked at the same cadence.
    sizeCheckMs: disks.intervalMs,
    onStepFailed: () => disks.soon(),
    // Through the HTTPS proxy of the environment (HTTPS_PROXY, NO_PROXY) when one applies, like the API.
    connect: () => {
      const proxy = proxyFromEnvironment(data.host, data.port);
      return connectWire({
        host: data.host,
        port: data.port,
        caPem: creds.caPem,
        certPem: creds.certPem,
        keyPem: creds.keyPem,
        clock,
        ...(proxy ? { proxy } : {}),
      });
    },
    ...(o.opts.whileFrozen ? { whileFrozen: o.opts.whileFrozen } : {}),
    clock,
    logger: o.log,
  });
}
