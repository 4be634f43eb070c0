/**
 * The agent follows the control plane's replication settings: read once
 * before the first connection, then polled every `settingsIntervalMs`
 * (sooner after a lost connection). What changed applies live: the
 * replicator's data address (from the next connection), the bandwidth cap,
 * the PIT interval (the scheduled PITs are kept here) and the mode. They
 * override the installation's defaults in config.json.
 */
import type { Clock, Logger } from "../base/index.js";
import { type AgentConfig, dataAddressOf, parseAddress } from "./config.js";
import type { AgentMode, ControlClient } from "./control-client.js";
import { pendingFailback } from "./failback-receiver.js";
import type { ModeSwitch } from "./mode-switch.js";
import { pause } from "./pause.js";

export interface SettingsFollowerOptions {
  control: ControlClient;
  /** The running agent's configuration; its bandwidth setting follows the control plane's at start. */
  config: AgentConfig;
  /** Where the wire connects, changed in place; a change applies from the next connection. */
  data: { host: string; port: number };
  /** The mode the settings name is applied; the cap and the scheduled PITs go to its engine. */
  modes: Pick<ModeSwitch, "apply" | "replication" | "running">;
  /** How often the settings are read. */
  intervalMs: number;
  /** Aborted when the agent stops: the poll ends, its wait at once. */
  signal: AbortSignal;
  log: Logger;
  clock: Clock;
}

export class SettingsFollower {
  private pitTimer: NodeJS.Timeout | undefined;
  private pitSeconds = 0;
  /** Ends the poll's wait early (wake). */
  private wakePoll: (() => void) | undefined;
  private lastWake = 0;

  constructor(private readonly opts: SettingsFollowerOptions) {}

  /**
   * The replicator this server is assigned to (its data address), the
   * site's bandwidth cap and what the control plane wants of the agent, read
   * before the first connection; a failback being received when the agent
   * stopped goes on (the control plane confirms it at once). Undefined when
   * the control plane cannot be reached and no failback was under way: the
   * agent replicates to the configured data address.
   */
  async atStart(stateDir: string): Promise<AgentMode | undefined> {
    const { config, log } = this.opts;
    let mode: AgentMode | undefined;
    try {
      const s = await this.opts.control.settings();
      if (s.dataAddress) Object.assign(this.opts.data, parseAddress(s.dataAddress));
      mode = s.mode;
      // The site's bandwidth cap holds from the first block, not from the first settings poll.
      const mbps = s.replication.bandwidthMbps ?? 0;
      config.settings = { ...config.settings, bandwidthMbps: mbps };
      this.opts.modes.replication.setBandwidth(mbps);
    } catch (err) {
      log.warn(
        { err: String(err) },
        "cannot read the replication settings; using the configured data address",
      );
    }
    const receiving = await pendingFailback(stateDir);
    if (!mode && receiving) mode = { mode: "receive", failbackId: receiving };
    return mode;
  }

  /** (Re)starts the scheduled PITs: every `seconds` (0: none). */
  schedulePits(seconds: number): void {
    this.stopPits();
    this.pitSeconds = seconds;
    if (seconds <= 0) return;
    this.pitTimer = setInterval(() => {
      const engine = this.opts.modes.running();
      if (!engine) return;
      engine
        .requestPoint({ origin: "scheduled" })
        .catch((err: unknown) => this.opts.log.warn({ err: String(err) }, "scheduled PIT failed"));
    }, seconds * 1000);
    this.pitTimer.unref();
  }

  /** Stops the scheduled PITs. */
  stopPits(): void {
    if (this.pitTimer) clearInterval(this.pitTimer);
    this.pitTimer = undefined;
  }

  /** Polls the settings and applies what changed, until the agent stops. */
  async follow(): Promise<void> {
    const { control, config, data, modes, signal, log } = this.opts;
    let bandwidth = config.settings.bandwidthMbps;
    while (!signal.aborted) {
      try {
        const { replication: r, dataAddress, mode } = await control.settings();
        if (mode) await modes.apply(mode);
        const address = dataAddress ? parseAddress(dataAddress) : dataAddressOf(config);
        if (address.host !== data.host || address.port !== data.port) {
          log.info({ dataAddress: `${address.host}:${address.port}` }, "replicator address set");
          data.host = address.host;
          data.port = address.port;
        }
        const mbps = r.bandwidthMbps ?? 0;
        if (mbps !== bandwidth) {
          modes.replication.setBandwidth(mbps);
          log.info({ mbps }, "bandwidth cap set");
          bandwidth = mbps;
        }
        const seconds = r.pitIntervalMinutes * 60;
        if (seconds !== this.pitSeconds) {
          this.schedulePits(seconds);
          log.info({ seconds }, "PIT interval set");
        }
      } catch (err) {
        if (!signal.aborted) log.warn({ err: String(err) }, "cannot read the replication settings");
      }
      await pause(this.opts.intervalMs, signal, (wake) => (this.wakePoll = wake));
      this.wakePoll = undefined;
    }
  }

  /**
   * Reads the settings soon instead of at the next poll (at most once a
   * second): after a lost connection the server may have a new replicator.
   */
  wake(): void {
    const now = this.opts.clock.now();
    if (now - this.lastWake < 1000) return;
    this.lastWake = now;
    this.wakePoll?.();
  }
}
