/**
 * The agent's sending side (replication.ts): messages go out under the
 * bandwidth cap, each remembered with the oldest write it carries until the
 * replicator acknowledges it. With the dirty sets taken for shipping and not
 * yet sent (`shipping`), that is the part of the backlog and of the lag that
 * has left the disks' dirty sets.
 */
import type { Clock } from "../base/index.js";
import type { AgentSession, SequencedMessage } from "../wire/index.js";
import { BandwidthCap } from "./bandwidth-cap.js";
import { earliest } from "./status.js";

/** The agent's counters that sending moves. */
export interface SendCounters {
  bytesSent: number;
  blocksSent: number;
}

export class Sender {
  /** Sent and not yet acknowledged: the oldest write each message carries. */
  private readonly outstanding: { seq: number; since: number }[] = [];
  /** Dirty sets taken and not yet all sent: part of the backlog until they are. */
  readonly shipping = new Set<{ bytes: number; since: number | null }>();
  readonly bandwidth: BandwidthCap;
  /** When the replicator last acknowledged something (or had nothing left to acknowledge), or a pass moved on. */
  lastProgress = 0;

  /** `session`: the wire session, once the agent has started. */
  constructor(
    private readonly clock: Clock,
    bandwidthMbps: number,
    private readonly counters: SendCounters,
    private readonly session: () => AgentSession,
  ) {
    this.bandwidth = new BandwidthCap(clock, bandwidthMbps);
  }

  /**
   * Sends a message once the cap lets its bytes through; `since` is the
   * oldest write it carries (now when null). Resolves to its sequence number.
   */
  async send(msg: SequencedMessage, since: number | null): Promise<number> {
    const bytes =
      msg.type !== "BLOCKS"
        ? 256
        : msg.kind === "patch"
          ? msg.patches.reduce((n, p) => n + p.data.length + 8, 40)
          : msg.blocks.reduce((n, b) => n + b.data.length + 34, 16);
    await this.bandwidth.take(bytes);
    const seq = await this.session().send(msg);
    this.counters.bytesSent += bytes;
    if (msg.type === "BLOCKS" && msg.kind === "blocks") this.counters.blocksSent += msg.blocks.length;
    this.outstanding.push({ seq, since: since ?? this.clock.now() });
    return seq;
  }

  /** Forgets the messages the replicator has acknowledged; progress when any went or none is left. */
  ackProgress(): void {
    const session = this.session();
    let moved = false;
    while (this.outstanding.length && this.outstanding[0]!.seq <= session.lastAcked) {
      this.outstanding.shift();
      moved = true;
    }
    if (moved || session.inFlight.frames === 0) this.progressed();
  }

  progressed(): void {
    this.lastProgress = this.clock.now();
  }

  /** The replicator lost the stream: what it had not acknowledged is gone (the disks are rescanned). */
  forgetOutstanding(): void {
    this.outstanding.length = 0;
  }

  /** Bytes taken for shipping or in flight, and the oldest write among them (null: none). */
  backlog(): { bytes: number; oldest: number | null } {
    this.ackProgress();
    let bytes = this.session().inFlight.bytes;
    let oldest: number | null = this.outstanding[0]?.since ?? null;
    for (const x of this.shipping) {
      bytes += x.bytes;
      oldest = earliest(oldest, x.since);
    }
    return { bytes, oldest };
  }

  /** Nothing taken for shipping, nothing sent and not yet acknowledged. */
  get idle(): boolean {
    return this.shipping.size === 0 && this.session().inFlight.frames === 0;
  }
}
