/**
 * The agent's two loops against the control plane: heartbeats, which carry
 * its state, lag, backlog and disk inventory (and the boot inventory,
 * boot-watcher.ts, when it changed), every `heartbeatSeconds` the control
 * plane answers or at once when there is something new to report; and a
 * long poll for commands (PITs on demand, group PITs, rescans, bandwidth,
 * failback), each run on its own (commands.ts). Both run until the agent
 * stops and never throw: a failed round is logged and the next one tries
 * again.
 */
import { LifeboatError, type Logger } from "../base/index.js";
import type { BootWatcher } from "./boot-watcher.js";
import { runCommand } from "./commands.js";
import type { AgentCommand, AgentMode, ControlClient } from "./control-client.js";
import { pause } from "./pause.js";
import type { Replication } from "./replication.js";
import type { AgentStatus } from "./status.js";

/** What the control plane answers to a heartbeat body it will never take (http-error.ts). */
const REFUSED_BODY = new Set(["REQUEST_INVALID", "REQUEST_TOO_LARGE"]);

/** What the loops need of the running agent. */
export interface ControlLoopsHost {
  control: ControlClient;
  boot: BootWatcher;
  /** Aborted when the agent stops: the loops end, a wait or a long poll at once. */
  signal: AbortSignal;
  /** What a heartbeat reports; undefined (while filesystems are frozen): no heartbeat this round. */
  status(): AgentStatus | undefined;
  /** The engine commands act on (a fresh one after receive mode or a fence). */
  replication(): Replication;
  /** Switches the agent between replicating, receiving a failback and fenced. */
  applyMode(mode: AgentMode): Promise<void>;
  log: Logger;
}

export class ControlLoops {
  /** Ends the heartbeat loop's wait early (heartbeatNow). */
  private wakeHeartbeat: (() => void) | undefined;

  constructor(private readonly host: ControlLoopsHost) {}

  /** Sends a heartbeat now instead of at the next period (a new boot inventory, a change of disks). */
  heartbeatNow(): void {
    this.wakeHeartbeat?.();
  }

  async heartbeats(): Promise<void> {
    const { control, boot, signal, log } = this.host;
    let every = 15;
    while (!signal.aborted) {
      const s = this.host.status();
      if (s) {
        // The boot inventory only when it changed: heartbeats stay small.
        const inventory = boot.pending();
        try {
          const r = await control.heartbeat({
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
              ...(inventory ? { boot: inventory } : {}),
            },
          });
          if (inventory) boot.sent(inventory);
          every = r.heartbeatSeconds;
        } catch (err) {
          if (!signal.aborted) log.warn({ err: String(err) }, "heartbeat failed");
          // Refused for good (a 4xx): the inventory must not keep every later heartbeat out.
          if (inventory && err instanceof LifeboatError && REFUSED_BODY.has(err.code)) {
            boot.sent(inventory);
            log.warn({ code: err.code }, "the control plane refused the boot inventory; not sent again");
          }
        }
      }
      await pause(every * 1000, signal, (wake) => (this.wakeHeartbeat = wake));
      this.wakeHeartbeat = undefined;
    }
  }

  async commands(): Promise<void> {
    const { control, signal, log } = this.host;
    while (!signal.aborted) {
      let list: AgentCommand[];
      try {
        list = await control.nextCommands({ waitSeconds: 25, signal });
      } catch (err) {
        if (signal.aborted) return;
        log.warn({ err: String(err) }, "cannot fetch commands; retrying");
        await pause(5000, signal);
        continue;
      }
      // Each runs on its own: a PIT waits for the engine, a rescan does not.
      for (const c of list) {
        void runCommand(c, {
          control,
          replication: this.host.replication(),
          applyMode: (m) => this.host.applyMode(m),
          log,
        });
      }
    }
  }
}
