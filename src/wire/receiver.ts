import { protocolError } from "./errors.js";
import type { SequencedMessage } from "./messages.js";
import type { WindowLimits } from "./sender.js";

/**
 * Applies a stream's sequenced messages. `apply` resolves once the message is
 * durable; only then does its sequence number count as applied and get
 * acknowledged. It is called in sequence order: one message at a time, or,
 * for a pipelined receiver, as each message arrives, without waiting for the
 * ones before it to become durable (the application keeps them in order and
 * makes many durable at once).
 */
export type ApplyFn = (msg: SequencedMessage, seq: number) => Promise<void>;

export interface ReceiverConnection {
  /** Sends a cumulative ACK for `seq`. */
  ack(seq: number): void;
  /** The application could not make a message durable: close this connection with `err`. */
  fail(err: unknown): void;
}

/**
 * The receiving half of a reliable stream, independent of any socket; it
 * outlives connections so a reconnect resumes where the last one stopped.
 *
 * Each sequence number is applied exactly once and in order: a frame at or
 * below the last one queued is a duplicate (dropped; if already applied, the
 * ACK is repeated so a sender that missed it moves on); a frame beyond the
 * next expected is a gap, which a correct sender never makes, so it is a
 * protocol error. Frames wait in a queue while earlier ones are applied; the
 * queue never holds more than the window the receiver announced, so a peer
 * that ignores the window is refused rather than buffered.
 *
 * ACKs are cumulative and coalesced: one when the queue runs empty; while
 * it does not, one once the messages that became durable together have been
 * taken (a checkpoint makes hundreds durable at once: the ACK goes at the
 * end of that turn of the event loop, not after the next ones), and at the
 * latest one every quarter window (of frames or of bytes). Under a steady
 * stream the queue never runs empty, and a sender whose frames waited for
 * the quarter window ran its window full of frames long durable.
 */
export class ReliableReceiver {
  private applied: number;
  private queued: number;
  private readonly queue: {
    seq: number;
    msg: SequencedMessage;
    size: number;
    /** Pipelined: the apply already started. */
    done?: Promise<void>;
  }[] = [];
  private readonly pipelined: boolean;
  private queuedBytes = 0;
  private conn: ReceiverConnection | undefined;
  private running: Promise<void> | undefined;
  private sinceAck = 0;
  private bytesSinceAck = 0;
  /** An ACK of what is applied by the end of this turn of the event loop (drain). */
  private ackSoon: NodeJS.Immediate | undefined;
  private readonly ackEvery: number;
  private readonly ackEveryBytes: number;

  constructor(
    private readonly apply: ApplyFn,
    private readonly window: WindowLimits,
    opts: { lastApplied?: number; ackEvery?: number; pipelined?: boolean } = {},
  ) {
    this.pipelined = opts.pipelined ?? false;
    this.applied = opts.lastApplied ?? 0;
    this.queued = this.applied;
    this.ackEvery = opts.ackEvery ?? Math.max(1, Math.floor(window.frames / 4));
    this.ackEveryBytes = Math.max(1, Math.floor(window.bytes / 4));
  }

  /** Highest sequence number applied (durable). */
  get lastApplied(): number {
    return this.applied;
  }

  /** Frames and bytes waiting to be applied: never more than the window. */
  get backlog(): { frames: number; bytes: number } {
    return { frames: this.queue.length, bytes: this.queuedBytes };
  }

  /** Binds a connection: frames it carries continue after lastApplied. Waits for idle() first. */
  attach(conn: ReceiverConnection): void {
    if (this.running) throw new Error("attach while a message is still being applied; await idle() first");
    this.conn = conn;
    this.queued = this.applied;
  }

  /** Unbinds the connection and drops what it queued and did not apply (the sender resends it). */
  detach(conn?: ReceiverConnection): void {
    if (conn && conn !== this.conn) return;
    this.conn = undefined;
    if (this.ackSoon) clearImmediate(this.ackSoon);
    this.ackSoon = undefined;
    this.queue.length = 0;
    this.queuedBytes = 0;
    this.queued = this.applied;
  }

  /** Resolves when no message is being applied. */
  async idle(): Promise<void> {
    while (this.running) await this.running;
  }

  /**
   * Takes a sequenced frame from the attached connection. Returns whether it
   * was new; throws WIRE_PROTOCOL on a gap or when the sender overruns the window.
   */
  accept(seq: number, msg: SequencedMessage, size: number): boolean {
    if (seq <= this.queued) {
      if (seq <= this.applied) this.conn?.ack(this.applied);
      return false;
    }
    if (seq !== this.queued + 1) {
      throw protocolError(
        `seq ${seq} arrived after ${this.queued}: frames ${this.queued + 1} to ${seq - 1} are missing`,
      );
    }
    if (this.queue.length + 1 > this.window.frames || this.queuedBytes + size > this.window.bytes) {
      throw protocolError(
        `the sender overran the window (${this.window.frames} frames, ${this.window.bytes} bytes) at seq ${seq}`,
      );
    }
    if (this.pipelined) {
      const done = this.apply(msg, seq);
      done.catch(() => undefined); // awaited in order by drain
      this.queue.push({ seq, msg, size, done });
    } else this.queue.push({ seq, msg, size });
    this.queuedBytes += size;
    this.queued = seq;
    this.running ??= this.drain().finally(() => (this.running = undefined));
    return true;
  }

  private async drain(): Promise<void> {
    while (this.queue.length > 0) {
      const next = this.queue[0]!;
      const conn = this.conn;
      try {
        await (next.done ?? this.apply(next.msg, next.seq));
      } catch (err) {
        // Not durable: nothing counts as applied; the connection closes and the sender resends.
        this.detach(conn);
        conn?.fail(err);
        return;
      }
      // The queue may have been dropped meanwhile (the connection died); the message is durable all the same.
      this.applied = next.seq;
      if (this.queue[0] === next) {
        this.queue.shift();
        this.queuedBytes -= next.size;
      }
      this.sinceAck++;
      this.bytesSinceAck += next.size;
      if (!this.conn) continue;
      if (
        this.queue.length === 0 ||
        this.sinceAck >= this.ackEvery ||
        this.bytesSinceAck >= this.ackEveryBytes
      ) {
        this.sendAck();
      } else {
        // Messages made durable together resolve in one turn; the next may wait a whole checkpoint.
        this.ackSoon ??= setImmediate(() => {
          this.ackSoon = undefined;
          if (this.sinceAck > 0) this.sendAck();
        });
      }
    }
  }

  private sendAck(): void {
    if (this.ackSoon) clearImmediate(this.ackSoon);
    this.ackSoon = undefined;
    this.sinceAck = 0;
    this.bytesSinceAck = 0;
    this.conn?.ack(this.applied);
  }
}
