import type { LifeboatError } from "../base/index.js";
import { encodeMessage } from "./codec.js";
import { protocolError, streamReset } from "./errors.js";
import { type FrameType, HEADER_BYTES, payloadCrc } from "./frame.js";
import type { SequencedMessage } from "./messages.js";
import { PayloadArena } from "./payload-arena.js";
import { PayloadPool } from "./payload-pool.js";

/** How much may be sent and not yet acknowledged. */
export interface WindowLimits {
  frames: number;
  bytes: number;
}

/** A sequenced frame kept until it is acknowledged. */
export interface OutgoingFrame {
  seq: number;
  type: FrameType;
  payload: Buffer;
  /** payloadCrc(payload), computed once however often the frame is sent. */
  crc: number;
  /**
   * The HEADER_BYTES before `payload` in its buffer are the frame's, so that
   * header and payload go out as one write (TLS copies a frame written in
   * two pieces into a new buffer first).
   */
  headroom: boolean;
}

/**
 * Spare payload buffers are kept up to about a window's bytes (and half as
 * much again for the large frames' buffers, rounded up to a MiB each; small
 * frames are carved from arena blocks of a MiB): an acknowledgement frees a
 * checkpoint's worth of frames at once, and the next frames need as many
 * again. Keeping 4 arena blocks made 307 new ones in one replication
 * benchmark run, and 4 or 8 large buffers made 310 to 423; a fixed 16 large
 * ones held 80 MiB through workloads of small frames.
 */
const ARENA_BLOCK_BYTES = 1 << 20;

/** Writes one frame to the current connection; `resent` is set on frames sent again after a reconnect. */
export type FrameWriter = (frame: OutgoingFrame, resent: boolean) => void;

interface Waiter {
  frame: Omit<OutgoingFrame, "seq">;
  resolve(seq: number): void;
  reject(err: unknown): void;
}

/**
 * The sending half of a reliable stream, independent of any socket. It numbers
 * sequenced messages 1, 2, 3, ..., keeps each until an ACK covers it, and
 * never holds more than the window: `send` waits (backpressure) until an ACK
 * makes room, in the order sends were called. A message larger than the
 * whole window's bytes is let through alone, once the window is empty.
 *
 * Connections come and go: `attach(writer, lastAcked)` binds a new one and
 * resends every kept frame after the receiver's lastAcked, so a reconnect
 * sends again at most one window; `detach()` keeps the frames for the next.
 */
export class ReliableSender {
  private readonly kept: OutgoingFrame[] = [];
  private keptBytes = 0;
  private nextSeq = 1;
  private acked = 0;
  private readonly waiters: Waiter[] = [];
  private readonly ackWaiters = new Map<number, { resolve(): void; reject(err: unknown): void }[]>();
  private writer: FrameWriter | undefined;
  private failure: LifeboatError | undefined;
  /** Frames and bytes sent again after reconnects, for tests and metrics. */
  resentFrames = 0;
  resentBytes = 0;
  /** Payloads are encoded into these (large ones, then small ones), and come back once acknowledged. */
  private readonly payloads: PayloadPool;
  private readonly arena: PayloadArena;
  private readonly alloc = (size: number): Buffer =>
    this.payloads.take(size, HEADER_BYTES) ?? this.arena.take(size, HEADER_BYTES) ?? Buffer.allocUnsafe(size);

  constructor(private limits: WindowLimits) {
    this.payloads = PayloadPool.forWindow(limits.bytes);
    this.arena = new PayloadArena(Math.ceil(limits.bytes / ARENA_BLOCK_BYTES), ARENA_BLOCK_BYTES);
  }

  /** Highest acknowledged sequence number. */
  get lastAcked(): number {
    return this.acked;
  }

  /** Highest sequence number handed out (0 before the first send). */
  get lastSeq(): number {
    return this.nextSeq - 1;
  }

  get inFlight(): { frames: number; bytes: number } {
    return { frames: this.kept.length, bytes: this.keptBytes };
  }

  /** Narrows (or widens) the window; takes effect for the next sends. */
  setLimits(limits: WindowLimits): void {
    this.limits = limits;
    this.pump();
  }

  /**
   * Queues a sequenced message and writes it if connected; resolves with its
   * sequence number once it is inside the window (not when acknowledged: see
   * whenAcked). Rejects after close().
   */
  send(msg: SequencedMessage): Promise<number> {
    if (this.failure) return Promise.reject(this.failure);
    const { type, payload } = encodeMessage(msg, this.alloc);
    const headroom = this.payloads.lends(payload) || this.arena.lends(payload);
    const frame = { type, payload, crc: payloadCrc(payload), headroom };
    if (this.waiters.length === 0 && this.fits(payload.length)) return Promise.resolve(this.admit(frame));
    return new Promise((resolve, reject) => this.waiters.push({ frame, resolve, reject }));
  }

  /** Resolves once `seq` is acknowledged (at once if it already is). */
  whenAcked(seq: number): Promise<void> {
    if (seq <= this.acked) return Promise.resolve();
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      const list = this.ackWaiters.get(seq) ?? [];
      list.push({ resolve, reject });
      this.ackWaiters.set(seq, list);
    });
  }

  /** A cumulative ACK: everything up to `seq` is durable. Older ACKs are ignored; one beyond what was sent is a protocol error. */
  ack(seq: number): void {
    if (seq > this.lastSeq) throw protocolError(`ACK for seq ${seq}, but only ${this.lastSeq} were sent`);
    if (seq <= this.acked) return;
    while (this.kept.length > 0 && this.kept[0]!.seq <= seq) {
      const { payload } = this.kept.shift()!;
      this.keptBytes -= payload.length;
      // Acknowledged, so written out on some connection: the buffer is free for the next frames.
      this.payloads.release(payload);
      this.arena.release(payload);
    }
    this.acked = seq;
    for (const [s, list] of this.ackWaiters) {
      if (s <= seq) {
        this.ackWaiters.delete(s);
        for (const w of list) w.resolve();
      }
    }
    this.pump();
  }

  /**
   * A sender that has sent nothing (a restarted agent resuming a stream it
   * kept the token of) continues the stream's numbering after `lastAcked`.
   */
  continueAfter(lastAcked: number): void {
    if (this.nextSeq !== 1 || this.kept.length > 0) throw new Error("continueAfter() after frames were sent");
    this.nextSeq = lastAcked + 1;
    this.acked = lastAcked;
  }

  /**
   * Binds a connection whose receiver reported `lastAcked` (WELCOME), drops
   * what that covers and writes every frame after it again.
   */
  attach(writer: FrameWriter, lastAcked: number): void {
    if (lastAcked < this.acked) {
      throw protocolError(`the replicator resumes from seq ${lastAcked}, but had acknowledged ${this.acked}`);
    }
    this.ack(lastAcked);
    this.writer = writer;
    for (const f of this.kept) {
      this.resentFrames++;
      this.resentBytes += f.payload.length;
      writer(f, true);
    }
  }

  /**
   * For a receiver that does not know this stream (WELCOME with resumed
   * false): the kept frames are numbered again from 1, so the new stream
   * starts at 1 and still carries them. Call before attach(writer, 0).
   */
  restart(): void {
    this.kept.forEach((f, i) => (f.seq = i + 1));
    this.nextSeq = this.kept.length + 1;
    this.acked = 0;
    // An old number will never be acknowledged: the new stream reuses it for another frame.
    const err = streamReset();
    for (const list of this.ackWaiters.values()) for (const w of list) w.reject(err);
    this.ackWaiters.clear();
  }

  detach(): void {
    this.writer = undefined;
  }

  /** Fails every pending and later send and ack wait with `err`. */
  close(err: LifeboatError): void {
    this.failure ??= err;
    this.writer = undefined;
    for (const w of this.waiters.splice(0)) w.reject(err);
    for (const list of this.ackWaiters.values()) for (const w of list) w.reject(err);
    this.ackWaiters.clear();
  }

  private fits(size: number): boolean {
    if (this.kept.length === 0) return true;
    return this.kept.length < this.limits.frames && this.keptBytes + size <= this.limits.bytes;
  }

  private admit(frame: Omit<OutgoingFrame, "seq">): number {
    const f: OutgoingFrame = { ...frame, seq: this.nextSeq++ };
    this.kept.push(f);
    this.keptBytes += f.payload.length;
    this.writer?.(f, false);
    return f.seq;
  }

  private pump(): void {
    while (this.waiters.length > 0 && this.fits(this.waiters[0]!.frame.payload.length)) {
      const w = this.waiters.shift()!;
      w.resolve(this.admit(w.frame));
    }
  }
}
