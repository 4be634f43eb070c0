/**
 * What the agent is doing, as the control plane wants it (failback.ts at
 * the control plane): replicating, receiving a failback onto its own disks,
 * or fenced (its server's data lives elsewhere: no engine, no receiver).
 * The mode comes from the settings at start, from each settings poll and
 * from a failback command; the switch owns the replication engine and the
 * failback receiver, and says what the agent's status is in each mode.
 */
import type { Clock, Logger } from "../base/index.js";
import type { AgentConfig } from "./config.js";
import type { AgentMode, ControlClient } from "./control-client.js";
import type { DiskMonitor } from "./disk-changes.js";
import type { DiskGenerations } from "./disk-generations.js";
import { FailbackReceiver } from "./failback-receiver.js";
import type { Replication } from "./replication.js";
import type { AgentStatus } from "./status.js";

export interface ModeSwitchOptions {
  control: ControlClient;
  /** The running agent's configuration: a failback is received onto its disks as they are then. */
  config: AgentConfig;
  /** Its missing disks are part of the status while replicating. */
  disks: DiskMonitor;
  generations: DiskGenerations;
  /** The engine made at start. */
  replication: Replication;
  /** Makes a fresh engine (after receive mode or a fence, the old one is stopped). */
  makeReplication: () => Promise<Replication>;
  /** D/state, where a failback being received keeps its progress. */
  stateDir: string;
  /** The failback boot environment: never replicate, only receive a failback. */
  failbackOnly?: boolean;
  /** Chunks a failback compare covers per request. */
  failbackBatchChunks?: number;
  /** Hears how a failback ended; without it the mode is read again from the control plane. */
  onFailbackEnd?: (state: string) => void;
  /** Aborted when the agent stops: no switch starts after that. */
  signal: AbortSignal;
  log: Logger;
  clock: Clock;
}

export class ModeSwitch {
  private mode: "replicate" | "receive" | "fenced" = "replicate";
  private fenceReason = "";
  private engine: Replication;
  /** Whether `engine` was started (and not stopped since). */
  private replicating = false;
  private receiver: FailbackReceiver | undefined;
  private chain: Promise<void> = Promise.resolve();

  constructor(private readonly opts: ModeSwitchOptions) {
    this.engine = opts.replication;
  }

  /** The engine: the one replicating, or the last one (stopped while receiving or fenced). */
  get replication(): Replication {
    return this.engine;
  }

  /** The engine while it replicates (not while receiving a failback or fenced). */
  running(): Replication | undefined {
    return this.replicating ? this.engine : undefined;
  }

  /** Enters the mode the control plane asked for at start: replicating unless it said otherwise. */
  async begin(mode: AgentMode | undefined): Promise<void> {
    if (mode && mode.mode !== "replicate") await this.apply(mode);
    else if (this.opts.failbackOnly)
      this.opts.log.info({}, "failback only: waiting for a failback to receive");
    else {
      await this.opts.generations.adopt(mode?.generations);
      await this.engine.start();
      this.replicating = true;
    }
  }

  /**
   * Switches to what the control plane wants, one switch at a time:
   * replicate (starting a fresh engine if the last one was stopped), receive
   * a failback (the engine stops first: a disk being written is not a
   * source), or stay fenced (no engine, no receiver).
   */
  apply(m: AgentMode): Promise<void> {
    const next = this.chain.then(() => this.switchTo(m));
    this.chain = next.catch(() => undefined);
    return next;
  }

  /** Waits for a switch under way, then stops the receiver and the engine. */
  async stop(): Promise<void> {
    await this.chain;
    await this.receiver?.stop();
    if (this.replicating) await this.engine.stop();
  }

  /** The engine's status (with the missing disks) while replicating; otherwise what receive mode or the fence says. */
  status(): AgentStatus | undefined {
    if (this.replicating) {
      const s = this.engine.status();
      if (!s) return undefined;
      const missing = this.opts.disks.missingStatus();
      if (missing.length) s.disks = [...s.disks, ...missing].sort((a, b) => a.index - b.index);
      return s;
    }
    return {
      state: this.mode === "receive" ? "RECEIVING" : "FENCED",
      tracker: "scan",
      lagSeconds: 0,
      backlogBytes: 0,
      disks: [],
      serverId: this.opts.config.serverId,
      pid: process.pid,
      updatedAt: this.opts.clock.now(),
      connected: false,
      counters: { bytesRead: 0, bytesSent: 0, blocksSent: 0, rescans: 0, traceLosses: 0 },
      ...(this.mode === "receive" && this.receiver
        ? { failback: { status: this.receiver.status, ...this.receiver.counters } }
        : {}),
      ...(this.mode === "fenced" ? { fence: this.fenceReason } : {}),
    };
  }

  private async switchTo(m: AgentMode): Promise<void> {
    if (this.opts.signal.aborted) return;
    if (m.mode === "replicate") {
      await this.stopReceiver();
      await this.opts.generations.adopt(m.generations);
      if (this.replicating || this.opts.failbackOnly) return;
      this.mode = "replicate";
      this.opts.log.info({}, "replicating");
      this.engine = await this.opts.makeReplication();
      try {
        await this.engine.start();
        this.replicating = true;
      } catch (err) {
        this.opts.log.error(
          { err: String(err) },
          "cannot start replicating; the next settings poll tries again",
        );
      }
      return;
    }
    if (this.replicating) {
      this.replicating = false;
      await this.engine.stop();
    }
    if (m.mode === "fenced") {
      await this.stopReceiver();
      if (this.mode !== "fenced" || this.fenceReason !== m.reason)
        this.opts.log.warn(
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
    this.receive(m.failbackId);
  }

  private async stopReceiver(): Promise<void> {
    if (this.receiver) {
      await this.receiver.stop();
      this.receiver = undefined;
    }
  }

  /** Starts receiving failback `failbackId` onto the configured disks. */
  private receive(failbackId: string): void {
    const { control, log } = this.opts;
    log.info({ failbackId }, "receiving a failback onto this server's disks");
    const receiver = new FailbackReceiver({
      failbackId,
      control,
      disks: this.opts.config.disks,
      stateDir: this.opts.stateDir,
      log,
      clock: this.opts.clock,
      ...(this.opts.failbackBatchChunks ? { batchChunks: this.opts.failbackBatchChunks } : {}),
      onEnd: async (end) => {
        if (end.state === "ready" && end.generations) await this.opts.generations.save(end.generations);
        if (this.opts.onFailbackEnd) return this.opts.onFailbackEnd(end.state);
        // Re-read the mode off the receiver's own loop (switching stops the receiver, which waits for that loop).
        setImmediate(() => {
          control
            .settings()
            .then(({ mode }) => (mode ? this.apply(mode) : undefined))
            .catch((err: unknown) =>
              log.warn({ err: String(err) }, "cannot read the mode after the failback"),
            );
        });
      },
    });
    this.receiver = receiver;
    receiver.start();
  }
}
